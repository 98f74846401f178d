//! A node deployed through the `direct` interface end to end on this
//! machine: Ferric's API and conductor in this process (fake power), an
//! image served over HTTP, and ferric-agent as a process whose target disk
//! is a loop device chosen by root device hints. Needs root, as CI has.
//! Images come from a test file server that counts its requests, either
//! straight to the agent (`image_download_source=http`) or through the
//! conductor's image cache (`local`).

mod common;

use common::{has_partition_table, start_ferric, LoopDisk};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Agent(Child, PathBuf);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 32 MiB GPT disk image with data in its partition.
fn gpt_image(dir: &Path) -> PathBuf {
    let path = dir.join("disk.raw");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:0", "-t", "1:8300"])
        .arg(&path));
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&vec![0x5a; 4 << 20], 2 << 20).unwrap();
    path
}

fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// GET requests per file name.
type Requests = Arc<Mutex<HashMap<String, usize>>>;

/// Serves the files of `dir` over HTTP on loopback.
async fn serve_files(dir: PathBuf) -> String {
    serve_counted(dir).await.0
}

/// Serves the files of `dir` over HTTP on loopback, counting requests.
async fn serve_counted(dir: PathBuf) -> (String, Requests) {
    let requests = Requests::default();
    let seen = requests.clone();
    let app = axum::Router::new().route(
        "/{name}",
        axum::routing::get(
            move |axum::extract::Path(name): axum::extract::Path<String>| {
                let dir = dir.clone();
                *seen.lock().unwrap().entry(name.clone()).or_default() += 1;
                async move {
                    match std::fs::read(dir.join(name)) {
                        Ok(bytes) => Ok(bytes),
                        Err(_) => Err(axum::http::StatusCode::NOT_FOUND),
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, requests)
}

fn count(requests: &Requests, name: &str) -> usize {
    requests.lock().unwrap().get(name).copied().unwrap_or(0)
}

struct Setup {
    api: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn ferric() -> Setup {
    let (api, dir) = start_ferric().await;
    Setup {
        api,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

/// Ferric whose conductor caches images for `image_download_source=local`
/// in its own directory and serves them from its API listener.
async fn ferric_with_image_cache() -> Setup {
    use ferric_api::{router, ApiConfig, AppState};
    use ferric_conductor::{Conductor, ConductorConfig};
    use ferric_store::Store;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.sqlite").display());
    let store = Store::connect(&url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let config = ConductorConfig {
        image_url_base: Some(api.clone()),
        image_cache_dir: dir.path().join("image-cache"),
        ..ConductorConfig::default()
    };
    let conductor = Conductor::start(store, config).await.unwrap();
    let app = router(AppState::new(conductor, ApiConfig::default()));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Setup {
        api,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Setup {
    /// A request whose answer is returned whatever its status.
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> (reqwest::StatusCode, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.api))
            .header("X-OpenStack-Ironic-API-Version", "latest")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api))
            .header("X-OpenStack-Ironic-API-Version", "latest");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn wait_for(
        &self,
        uuid: &str,
        states: &[&str],
        timeout: Duration,
        agent_log: Option<&Path>,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let node = self
                .call(reqwest::Method::GET, &format!("/v1/nodes/{uuid}"), None)
                .await;
            let state = node["provision_state"].as_str().unwrap_or("").to_string();
            if states.contains(&state.as_str()) && node["reservation"].is_null() {
                return node;
            }
            if Instant::now() >= deadline {
                let log = agent_log
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default();
                panic!("stuck: {node}\nagent log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Starts ferric-agent as a ramdisk would, managing only `disk`, with its
/// log in a temporary file.
fn spawn_agent(api: &str, mac: &str, disk: &Path) -> Agent {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let log =
        std::env::temp_dir().join(format!("ferric-test-agent-{}-{n}.log", std::process::id()));
    // Port 0: the agent heartbeats the port it got.
    let child = Command::new(env!("CARGO_BIN_EXE_ferric-agent"))
        .env("FERRIC_AGENT_NO_POWER", "1")
        .args(["--cmdline", "/dev/null", "--api-url", api, "--mac", mac])
        .args(["--listen", "127.0.0.1:0", "--advertise-host", "127.0.0.1"])
        .args(["--include-loop-devices", "--device", disk.to_str().unwrap()])
        .env("FERRIC_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Agent(child, log)
}

/// Enrolls a fake-power node with the direct interface whose root device
/// is `disk` and whose port has `mac`; returns its UUID.
async fn enroll(
    ferric: &Setup,
    disk: &Path,
    mac: &str,
    automated_clean: bool,
    instance_info: Value,
) -> String {
    let node = ferric
        .call(
            reqwest::Method::POST,
            "/v1/nodes",
            Some(
                json!({"driver": "fake-hardware", "deploy_interface": "direct",
                        "automated_clean": automated_clean,
                        "properties": {"root_device": {"name": disk.to_str().unwrap()}},
                        "instance_info": instance_info}),
            ),
        )
        .await;
    let uuid = node["uuid"].as_str().unwrap().to_string();
    ferric
        .call(
            reqwest::Method::POST,
            "/v1/ports",
            Some(json!({"node_uuid": uuid, "address": mac})),
        )
        .await;
    uuid
}

/// Enrolls a direct node whose root device is `disk`, starts its agent,
/// makes it available and deploys `instance_info` with a config drive.
async fn deploy(ferric: &Setup, disk: &Path, mac: &str, instance_info: Value) -> (Value, Agent) {
    let uuid = enroll(ferric, disk, mac, false, instance_info).await;
    let agent = spawn_agent(&ferric.api, mac, disk);
    for verb in ["manage", "provide"] {
        ferric
            .call(
                reqwest::Method::PUT,
                &format!("/v1/nodes/{uuid}/states/provision"),
                Some(json!({"target": verb})),
            )
            .await;
        ferric
            .wait_for(
                &uuid,
                &["manageable", "available"],
                Duration::from_secs(20),
                None,
            )
            .await;
    }
    let drive = json!({"meta_data": {"hostname": "deployed-1"},
                       "user_data": "#cloud-config\nruncmd: [echo ferric]\n"});
    ferric
        .call(
            reqwest::Method::PUT,
            &format!("/v1/nodes/{uuid}/states/provision"),
            Some(json!({"target": "active", "configdrive": drive})),
        )
        .await;
    let node = ferric
        .wait_for(
            &uuid,
            &["active", "deploy failed"],
            Duration::from_secs(120),
            Some(&agent.1),
        )
        .await;
    (node, agent)
}

#[tokio::test]
async fn raw_and_qcow2_images_deploy_with_a_config_drive() {
    let ferric = ferric_with_image_cache().await;
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let raw = gpt_image(&images);
    let qcow2 = images.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    let (base, requests) = serve_counted(images.clone()).await;

    // The raw image straight to the agent; the qcow2 image through the
    // conductor's cache (converted to raw there), twice: downloaded once.
    for (n, (name, format, source)) in [
        ("disk.raw", "raw", "http"),
        ("disk.qcow2", "qcow2", "local"),
        ("disk.qcow2", "qcow2", "local"),
    ]
    .into_iter()
    .enumerate()
    {
        let disk = LoopDisk::new(256 << 20);
        let mac = format!("52:54:00:d0:00:0{n}");
        let info = json!({"image_source": format!("{base}/{name}"),
                          "image_os_hash_algo": "sha256",
                          "image_os_hash_value": sha256(&images.join(name)),
                          "image_disk_format": format,
                          "image_download_source": source});
        let (node, _agent) = deploy(&ferric, &disk.device, &mac, info).await;
        assert_eq!(
            node["provision_state"], "active",
            "{format} via {source}: {}",
            node["last_error"]
        );
        assert_eq!(node["power_state"], "power on");
        assert_eq!(count(&requests, name), 1, "{name} fetched once ({source})");
        let written = std::fs::read(&disk.device).unwrap();
        let image = std::fs::read(&raw).unwrap();
        // The image is on the disk (the GPT backup moved to the disk's end,
        // so compare the first partition's area).
        assert_eq!(
            &written[512 + 56..512 + 72],
            &image[512 + 56..512 + 72],
            "{format}: GPT disk GUID (the header changed: its backup moved to the end)"
        );
        assert_eq!(
            &written[2 << 20..6 << 20],
            &image[2 << 20..6 << 20],
            "{format}: data"
        );
        // The config drive sits in a partition at the end, labelled config-2.
        let table: Value =
            serde_json::from_str(&run(Command::new("sfdisk").arg("-J").arg(&disk.device))).unwrap();
        let parts = table["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(parts.len(), 2, "{table}");
        let start = parts[1]["start"].as_u64().unwrap() * 512;
        let label = run(Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "LABEL", "-O", &start.to_string()])
            .arg(&disk.device));
        assert_eq!(label.trim(), "config-2", "{format}");
        assert!(node["driver_internal_info"]
            .get("agent_secret_token")
            .is_none());
    }
    assert_eq!(count(&requests, "disk.qcow2"), 1);

    // An unknown download source is refused when the deploy is asked for.
    let disk = LoopDisk::new(64 << 20);
    let info = json!({"image_source": format!("{base}/disk.raw"),
                      "image_os_hash_algo": "sha256",
                      "image_os_hash_value": sha256(&raw),
                      "image_download_source": "swift"});
    let uuid = enroll(&ferric, &disk.device, "52:54:00:d0:00:0f", false, info).await;
    for verb in ["manage", "provide"] {
        ferric
            .call(
                reqwest::Method::PUT,
                &format!("/v1/nodes/{uuid}/states/provision"),
                Some(json!({"target": verb})),
            )
            .await;
        ferric
            .wait_for(
                &uuid,
                &["manageable", "available"],
                Duration::from_secs(20),
                None,
            )
            .await;
    }
    let (status, body) = ferric
        .try_call(
            reqwest::Method::PUT,
            &format!("/v1/nodes/{uuid}/states/provision"),
            json!({"target": "active"}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("image_download_source"), "{body}");
    let node = ferric
        .call(reqwest::Method::GET, &format!("/v1/nodes/{uuid}"), None)
        .await;
    assert_eq!(node["provision_state"], "available");
}

#[tokio::test]
async fn a_checksum_mismatch_fails_the_deploy_and_leaves_no_partition_table() {
    let ferric = ferric().await;
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    gpt_image(&images);
    let base = serve_files(images.clone()).await;
    let disk = LoopDisk::new(128 << 20);
    let info = json!({"image_source": format!("{base}/disk.raw"),
                      "image_checksum": "0".repeat(64), "image_disk_format": "raw"});
    let (node, _agent) = deploy(&ferric, &disk.device, "52:54:00:d0:00:09", info).await;
    assert_eq!(node["provision_state"], "deploy failed");
    let error = node["last_error"].as_str().unwrap_or("");
    assert!(error.contains("checksum"), "{error}");
    assert_eq!(node["power_state"], "power off");
    assert!(!has_partition_table(&disk.device));
}

#[tokio::test]
async fn cleaning_runs_in_the_agent_on_provide_and_undeploy() {
    let ferric = ferric().await;
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let raw = gpt_image(&images);
    let base = serve_files(images.clone()).await;
    let disk = LoopDisk::new(128 << 20);
    // The disk held an old installation.
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:0"])
        .arg(&disk.device));
    assert!(has_partition_table(&disk.device));
    let mac = "52:54:00:d0:00:0c";
    let info = json!({"image_source": format!("{base}/disk.raw"),
                      "image_os_hash_algo": "sha256", "image_os_hash_value": sha256(&raw)});
    let uuid = enroll(&ferric, &disk.device, mac, true, info).await;
    let verb = |target: &'static str| {
        let ferric = &ferric;
        let uuid = uuid.clone();
        async move {
            ferric
                .call(
                    reqwest::Method::PUT,
                    &format!("/v1/nodes/{uuid}/states/provision"),
                    Some(json!({"target": target})),
                )
                .await;
        }
    };
    verb("manage").await;
    ferric
        .wait_for(&uuid, &["manageable"], Duration::from_secs(20), None)
        .await;

    // Each operation boots the ramdisk afresh: a new agent each time.
    for (target, expect) in [
        ("provide", "available"),
        ("active", "active"),
        ("deleted", "available"),
    ] {
        let agent = spawn_agent(&ferric.api, mac, &disk.device);
        verb(target).await;
        let node = ferric
            .wait_for(
                &uuid,
                &[expect, "clean failed", "deploy failed"],
                Duration::from_secs(120),
                Some(&agent.1),
            )
            .await;
        assert_eq!(
            node["provision_state"], expect,
            "{target}: {}",
            node["last_error"]
        );
        if expect == "available" {
            assert!(
                !has_partition_table(&disk.device),
                "{target}: the disk was not cleaned"
            );
            assert_eq!(node["power_state"], "power off");
            assert!(!node["maintenance"].as_bool().unwrap());
        } else {
            assert!(has_partition_table(&disk.device));
        }
    }
}
