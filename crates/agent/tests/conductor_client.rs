//! The agent's lookup and heartbeat against Ferric's real API, served on a
//! loopback port: the agent finds its node by MAC once the node waits for
//! it, receives the token once, and its heartbeat is recorded.

use ferric_agent::client::{ConductorClient, Heartbeat};
mod common;

use common::start_ferric;
use serde_json::{json, Value};
use std::time::Duration;

async fn serve() -> (String, reqwest::Client, tempfile::TempDir) {
    let (base, dir) = start_ferric().await;
    (base, reqwest::Client::new(), dir)
}

async fn api(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> Value {
    let mut req = http
        .request(method, url)
        .header("X-OpenStack-Ironic-API-Version", "latest");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.json().await.unwrap_or(Value::Null)
}

#[tokio::test]
async fn lookup_waits_for_the_node_then_heartbeats() {
    let (base, http, _dir) = serve().await;
    let node = api(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/nodes"),
        Some(json!({"driver": "fake-hardware", "name": "n1", "automated_clean": false, "driver_info": {"fake_wait": ["deploy"]}})),
    )
    .await;
    let uuid = node["uuid"].as_str().unwrap().to_string();
    api(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/ports"),
        Some(json!({"node_uuid": uuid, "address": "52:54:00:00:00:07"})),
    )
    .await;

    // The agent starts looking before the node waits for it.
    let client = ConductorClient::new(&base).unwrap();
    let macs = vec![
        "52:54:00:00:00:07".to_string(),
        "52:54:00:00:00:08".to_string(),
    ];
    let looking = {
        let client = client.clone();
        let macs = macs.clone();
        tokio::spawn(async move {
            client
                .lookup_until_found(
                    &macs,
                    None,
                    Duration::from_secs(20),
                    Duration::from_millis(100),
                )
                .await
        })
    };
    for verb in ["manage", "provide", "active"] {
        api(
            &http,
            reqwest::Method::PUT,
            format!("{base}/v1/nodes/{uuid}/states/provision"),
            Some(json!({"target": verb})),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let found = looking.await.unwrap().expect("the lookup found the node");
    assert_eq!(found.node_uuid, uuid);
    let mut token = found
        .token
        .clone()
        .expect("the first lookup gets the token");

    // A lookup that came in while the node was still deploying got a token
    // that the deploy's reboot then forgot (as Ironic's power actions do):
    // an agent looks up again and gets a new one, once.
    for _ in 0..100 {
        let shown = api(
            &http,
            reqwest::Method::GET,
            format!("{base}/v1/nodes/{uuid}"),
            None,
        )
        .await;
        if shown["provision_state"] == "wait call-back" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = client.lookup(&macs, Some(&uuid)).await.unwrap();
    if let Some(fresh) = again.token {
        token = fresh;
    }
    // Once given out, the token is not given again.
    let again = client.lookup(&macs, Some(&uuid)).await.unwrap();
    assert_eq!(again.token, None);

    let beat = Heartbeat {
        callback_url: "http://127.0.0.1:9999".into(),
        agent_token: token,
        agent_version: "ferric-agent 0.1.0".into(),
        agent_verify_ca: None,
    };
    client.heartbeat(&uuid, &beat).await.unwrap();
    let shown = api(
        &http,
        reqwest::Method::GET,
        format!("{base}/v1/nodes/{uuid}"),
        None,
    )
    .await;
    assert_eq!(
        shown["driver_internal_info"]["agent_url"],
        "http://127.0.0.1:9999"
    );

    let forged = Heartbeat {
        agent_token: "forged".into(),
        ..beat
    };
    let err = client.heartbeat(&uuid, &forged).await.unwrap_err();
    assert!(
        err.to_string().contains("Invalid or missing agent token"),
        "{err}"
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn lookup_gives_up_after_its_timeout() {
    let (base, _http, _dir) = serve().await;
    let client = ConductorClient::new(&base).unwrap();
    let err = client
        .lookup_until_found(
            &["52:54:00:00:00:09".to_string()],
            None,
            Duration::from_millis(500),
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no node was found"), "{err}");
}
