//! ferric-agent as a process: standalone on a loop device running a real
//! clean step, and against Ferric's API looking itself up and heartbeating.
//! Needs root and loop devices for the first test, as CI has.

mod common;

use common::{has_partition_table, start_ferric, LoopDisk};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_agent(args: &[&str]) -> Agent {
    let child = Command::new(env!("CARGO_BIN_EXE_ferric-agent"))
        .env("FERRIC_AGENT_NO_POWER", "1")
        .args(["--cmdline", "/dev/null"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ferric-agent starts");
    Agent(child)
}

async fn wait_for_status(http: &reqwest::Client, base: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = http.get(format!("{base}/v1/status")).send().await {
            if resp.status().is_success() {
                return resp.json().await.unwrap();
            }
        }
        assert!(Instant::now() < deadline, "the agent never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn standalone_agent_cleans_a_loop_device() {
    let disk = LoopDisk::new(64 << 20);
    let status = Command::new("sgdisk")
        .args(["-n", "1:2048:0"])
        .arg(&disk.device)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(has_partition_table(&disk.device));

    let port = free_port();
    let device = disk.device.to_str().unwrap();
    let _agent = start_agent(&[
        "--standalone",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--include-loop-devices",
        "--device",
        device,
    ]);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let status = wait_for_status(&http, &base).await;
    assert!(status["version"]
        .as_str()
        .unwrap()
        .starts_with("ferric-agent"));

    let post = |body: Value| {
        let http = http.clone();
        let url = format!("{base}/v1/commands/?wait=true");
        async move {
            let resp = http.post(url).json(&body).send().await.unwrap();
            let code = resp.status().as_u16();
            (code, resp.json::<Value>().await.unwrap())
        }
    };
    let (code, steps) =
        post(json!({"name": "clean.get_clean_steps", "params": {"node": {}, "ports": []}})).await;
    assert_eq!(code, 200, "{steps}");
    let listed = &steps["command_result"]["clean_steps"]["GenericHardwareManager"];
    assert_eq!(listed[0]["step"], "erase_devices_metadata");
    assert_eq!(listed[0]["priority"], 99);

    let step = json!({"step": "erase_devices_metadata", "interface": "deploy", "priority": 99});
    let (code, done) = post(json!({"name": "clean.execute_clean_step",
                                   "params": {"step": step, "node": {}, "ports": [], "clean_version": {}}}))
        .await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["command_status"], "SUCCEEDED", "{done}");
    assert_eq!(
        done["command_result"]["clean_step"]["step"],
        "erase_devices_metadata"
    );
    assert!(
        !has_partition_table(&disk.device),
        "the partition table survived cleaning"
    );

    let (code, refused) = post(json!({"name": "deploy.execute_deploy_step", "params": {}})).await;
    assert!(code == 404 || code == 400, "{code} {refused}");
}

#[tokio::test]
async fn agent_looks_itself_up_and_heartbeats() {
    let (api_base, _dir) = start_ferric().await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let http = http.clone();
        let url = format!("{api_base}{path}");
        async move {
            let mut req = http
                .request(method, url)
                .header("X-OpenStack-Ironic-API-Version", "latest");
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
            resp.json::<Value>().await.unwrap_or(Value::Null)
        }
    };
    let node = call(
        reqwest::Method::POST,
        "/v1/nodes".into(),
        Some(json!({"driver": "fake-hardware", "automated_clean": false,
                    "driver_info": {"fake_wait": ["deploy"]}})),
    )
    .await;
    let uuid = node["uuid"].as_str().unwrap().to_string();
    call(
        reqwest::Method::POST,
        "/v1/ports".into(),
        Some(json!({"node_uuid": uuid, "address": "52:54:00:5e:00:01"})),
    )
    .await;

    let port = free_port();
    let _agent = start_agent(&[
        "--api-url",
        &api_base,
        "--mac",
        "52:54:00:5E:00:01",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--advertise-host",
        "127.0.0.1",
    ]);
    for verb in ["manage", "provide", "active"] {
        call(
            reqwest::Method::PUT,
            format!("/v1/nodes/{uuid}/states/provision"),
            Some(json!({"target": verb})),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    // The agent serves its API over TLS with a certificate it made, which
    // its heartbeat handed to the conductor.
    let expected = format!("https://127.0.0.1:{port}");
    let agent_ca = loop {
        let shown = call(reqwest::Method::GET, format!("/v1/nodes/{uuid}"), None).await;
        let dii = &shown["driver_internal_info"];
        if dii["agent_url"] == expected.as_str() {
            assert!(dii["agent_version"]
                .as_str()
                .unwrap()
                .starts_with("ferric-agent"));
            assert_eq!(dii["agent_secret_token"], "******");
            break dii["agent_verify_ca"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no heartbeat recorded: {shown}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        agent_ca.starts_with("-----BEGIN CERTIFICATE-----"),
        "{agent_ca}"
    );
    let trusting = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(agent_ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    // The agent now wants the token it received; without it, 401.
    let resp = trusting
        .post(format!("{expected}/v1/commands/?wait=true"))
        .json(&json!({"name": "standby.sync", "params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}
