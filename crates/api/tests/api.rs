//! The API driven through its router, without a socket, on a fresh
//! SQLite store per test.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ferric_api::{router, ApiConfig, AppState};
use ferric_conductor::{Conductor, ConductorConfig};
use ferric_store::Store;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::time::Duration;
use tower::ServiceExt;

/// method, path, microversion, body, expected status.
type BadRequest = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
);

struct Api {
    app: axum::Router,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Reply {
    /// The faultstring of an Ironic error body (which holds a JSON string).
    fn fault(&self) -> String {
        let inner = self.body["error_message"]
            .as_str()
            .unwrap_or_else(|| panic!("not an Ironic error body: {}", self.body));
        let parsed: Value = serde_json::from_str(inner).expect("error_message holds JSON");
        assert!(parsed.get("debuginfo").is_some());
        assert_eq!(
            parsed["faultcode"],
            if self.status.is_server_error() {
                "Server"
            } else {
                "Client"
            }
        );
        parsed["faultstring"].as_str().unwrap().to_string()
    }
}

async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.sqlite").display());
    let store = Store::connect(&url).await.unwrap();
    let config = ConductorConfig {
        hostname: "test-conductor".into(),
        ..Default::default()
    };
    let conductor = Conductor::start(store, config).await.unwrap();
    let app = router(AppState::new(conductor, ApiConfig::default()));
    Api { app, _dir: dir }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        version: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "ferric.test:6385");
        if let Some(v) = version {
            req = req.header("X-OpenStack-Ironic-API-Version", v);
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call("GET", uri, Some("latest"), None).await
    }

    async fn send(&self, method: &str, uri: &str, body: Value) -> Reply {
        self.call(
            method,
            uri,
            Some("latest"),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    async fn create_node(&self, body: Value) -> Value {
        let r = self.send("POST", "/v1/nodes", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body
    }

    async fn provision(&self, node: &str, target: &str) -> Reply {
        self.send(
            "PUT",
            &format!("/v1/nodes/{node}/states/provision"),
            json!({"target": target}),
        )
        .await
    }

    /// Polls until the node is unlocked and no longer in a busy state (a
    /// failed state keeps its target, as in Ironic), or panics.
    async fn settle(&self, node: &str) -> Value {
        const BUSY: &[&str] = &[
            "verifying",
            "deploying",
            "deleting",
            "cleaning",
            "inspecting",
            "adopting",
            "rescuing",
            "unrescuing",
            "servicing",
        ];
        for _ in 0..1500 {
            let n = self.get(&format!("/v1/nodes/{node}")).await.body;
            let busy = BUSY.contains(&n["provision_state"].as_str().unwrap_or(""));
            if !busy && n["reservation"].is_null() {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("node {node} did not settle");
    }
}

#[tokio::test]
async fn version_discovery_and_headers() {
    let api = api().await;
    let root = api.call("GET", "/", None, None).await;
    assert_eq!(root.status, 200);
    assert_eq!(root.body["default_version"]["id"], "v1");
    assert_eq!(root.body["default_version"]["min_version"], "1.1");
    assert_eq!(root.body["default_version"]["version"], "1.95");
    assert_eq!(
        root.body["versions"][0]["links"][0]["href"],
        "http://ferric.test:6385/v1/"
    );
    let v1 = api.call("GET", "/v1/", None, None).await;
    assert_eq!(
        v1.body["media_types"][0]["type"],
        "application/vnd.openstack.ironic.v1+json"
    );
    assert_eq!(v1.body["version"]["version"], "1.95");
    assert_eq!(v1.headers["x-openstack-ironic-api-version"], "1.1");
    for r in [&root, &v1] {
        assert_eq!(r.headers["x-openstack-ironic-api-minimum-version"], "1.1");
        assert_eq!(r.headers["x-openstack-ironic-api-maximum-version"], "1.95");
    }
    let too_new = api.call("GET", "/v1/nodes", Some("1.200"), None).await;
    assert_eq!(too_new.status, 406);
    assert!(too_new.fault().contains("supported version range"));
    assert_eq!(
        too_new.headers["x-openstack-ironic-api-maximum-version"],
        "1.95"
    );
    let garbage = api.call("GET", "/v1/nodes", Some("banana"), None).await;
    assert_eq!(garbage.status, 400);
    for path in [
        "/v1/nodes/",
        "/v1/nodes/detail/",
        "/v1/ports/",
        "/v1/drivers/",
    ] {
        assert_eq!(api.get(path).await.status, 200, "{path}");
    }
    let missing = api.get("/v1/nowhere").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.headers["x-openstack-ironic-api-version"], "1.95");
    missing.fault();
}

#[tokio::test]
async fn fake_node_walks_its_whole_life() {
    let api = api().await;
    let node = api
        .create_node(json!({"driver": "fake-hardware", "name": "life-1",
                            "driver_info": {"ipmi_password": "hunter2"}}))
        .await;
    assert_eq!(node["provision_state"], "enroll");
    assert_eq!(node["driver_info"]["ipmi_password"], "******");
    assert_eq!(node["deploy_interface"], "fake");
    let port = api
        .send(
            "POST",
            "/v1/ports",
            json!({"node_uuid": node["uuid"], "address": "52:54:00:AA:BB:01"}),
        )
        .await;
    assert_eq!(port.status, 201, "{}", port.body);
    assert_eq!(port.body["address"], "52:54:00:aa:bb:01");

    for (verb, expect) in [
        ("manage", "manageable"),
        ("provide", "available"),
        ("active", "active"),
        ("deleted", "available"),
        ("manage", "manageable"),
        ("inspect", "manageable"),
    ] {
        let r = api.provision("life-1", verb).await;
        assert_eq!(r.status, 202, "{verb}: {}", r.body);
        let n = api.settle("life-1").await;
        assert_eq!(n["provision_state"], expect, "after {verb}: {n}");
        assert!(n["last_error"].is_null(), "after {verb}: {n}");
    }
    let n = api.get("/v1/nodes/life-1").await.body;
    assert_eq!(
        n["properties"]["cpu_arch"], "x86_64",
        "inspection filled properties"
    );
    assert!(!n["inspection_finished_at"].is_null());
    let del = api
        .call("DELETE", "/v1/nodes/life-1", Some("latest"), None)
        .await;
    assert_eq!(del.status, 204);
    assert_eq!(api.get("/v1/nodes/life-1").await.status, 404);
    let ports = api
        .get(&format!(
            "/v1/ports?node_uuid={}",
            node["uuid"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        ports.status, 404,
        "listing by a deleted node: {}",
        ports.body
    );
    let all = api.get("/v1/ports").await;
    assert_eq!(all.body["ports"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn deploy_with_configdrive_dict_and_deploy_steps_masks_secrets() {
    let api = api().await;
    let node = api.create_node(json!({"driver": "fake-hardware"})).await;
    let id = node["uuid"].as_str().unwrap();
    api.provision(id, "manage").await;
    api.settle(id).await;
    api.provision(id, "provide").await;
    api.settle(id).await;
    let r = api
        .send(
            "PUT",
            &format!("/v1/nodes/{id}/states/provision"),
            json!({"target": "active",
                   "configdrive": {"meta_data": {"hostname": "h"}, "user_data": "#cloud-config\nsecret: 1"},
                   "deploy_steps": [{"interface": "deploy", "step": "deploy", "args": {}, "priority": 90}]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let n = api.settle(id).await;
    assert_eq!(n["provision_state"], "active");
    assert_eq!(n["power_state"], "power on");
    assert_eq!(n["instance_info"]["configdrive"], "******");
    assert!(!n.to_string().contains("cloud-config"));
    assert_eq!(
        n["driver_internal_info"]["fake_steps_done"],
        json!(["clean.erase_devices_metadata", "deploy.deploy"]),
        "automated cleaning ran its step, then the deploy step"
    );

    // An unknown deploy step is refused before anything changes.
    let n2 = api.create_node(json!({"driver": "fake-hardware"})).await;
    let id2 = n2["uuid"].as_str().unwrap();
    for verb in ["manage", "provide"] {
        api.provision(id2, verb).await;
        api.settle(id2).await;
    }
    let r = api
        .send("PUT", &format!("/v1/nodes/{id2}/states/provision"),
              json!({"target": "active", "deploy_steps": [{"interface": "deploy", "step": "nope", "priority": 10}]}))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("nope"));
    assert_eq!(
        api.get(&format!("/v1/nodes/{id2}")).await.body["provision_state"],
        "available"
    );
}

#[tokio::test]
async fn failures_land_in_failed_states_with_last_error() {
    let api = api().await;
    let node = api
        .create_node(json!({"driver": "fake-hardware", "driver_info": {"fake_fail": ["deploy"]}}))
        .await;
    let id = node["uuid"].as_str().unwrap();
    for verb in ["manage", "provide", "active"] {
        api.provision(id, verb).await;
        api.settle(id).await;
    }
    let n = api.get(&format!("/v1/nodes/{id}")).await.body;
    assert_eq!(n["provision_state"], "deploy failed");
    assert_eq!(n["target_provision_state"], "active");
    assert!(
        n["last_error"]
            .as_str()
            .unwrap()
            .contains("fake deploy failure"),
        "{n}"
    );
    assert_eq!(n["power_state"], "power off");
    assert!(n["deploy_step"].as_object().unwrap().is_empty());

    let cleaner = api
        .create_node(json!({"driver": "fake-hardware", "driver_info": {"fake_fail": "clean"}}))
        .await;
    let cid = cleaner["uuid"].as_str().unwrap();
    api.provision(cid, "manage").await;
    api.settle(cid).await;
    let r = api
        .send("PUT", &format!("/v1/nodes/{cid}/states/provision"),
              json!({"target": "clean", "clean_steps": [{"interface": "deploy", "step": "erase_devices_metadata"}]}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let n = api.settle(cid).await;
    assert_eq!(n["provision_state"], "clean failed");
    assert_eq!(n["maintenance"], true);
    assert_eq!(n["fault"], "clean failure");
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let api = api().await;
    let node = api
        .create_node(json!({"driver": "fake-hardware", "name": "keep"}))
        .await;
    let before = api.get("/v1/nodes/keep").await.body;

    let cases: Vec<BadRequest> = vec![
        ("POST", "/v1/nodes", Some("latest"), b"{not json".to_vec(), 400),
        ("POST", "/v1/nodes", Some("latest"), br#"{"driver": "fake-hardware", "bogus": 1}"#.to_vec(), 400),
        ("POST", "/v1/nodes", Some("latest"), br#"{"name": "no-driver"}"#.to_vec(), 400),
        ("POST", "/v1/nodes", Some("latest"), br#"{"driver": "no-such-hardware"}"#.to_vec(), 400),
        ("POST", "/v1/nodes", Some("1.20"), br#"{"driver": "fake-hardware", "resource_class": "x"}"#.to_vec(), 406),
        ("POST", "/v1/nodes", Some("latest"), br#"{"driver": "fake-hardware", "name": "keep"}"#.to_vec(), 409),
        ("POST", "/v1/nodes", Some("latest"), br#"{"driver": "fake-hardware", "name": "bad name!"}"#.to_vec(), 400),
        ("POST", "/v1/nodes", Some("latest"), br#"{"driver": "fake-hardware", "maintenance": "perhaps"}"#.to_vec(), 400),
        ("PATCH", "/v1/nodes/keep", Some("latest"), br#"[{"op": "replace", "path": "/provision_state", "value": "active"}]"#.to_vec(), 400),
        ("PATCH", "/v1/nodes/keep", Some("latest"), br#"[{"op": "replace", "path": "/uuid", "value": "x"}]"#.to_vec(), 400),
        ("PATCH", "/v1/nodes/keep", Some("latest"), br#"[{"op": "add", "path": "/nonsense", "value": 1}]"#.to_vec(), 400),
        ("PATCH", "/v1/nodes/keep", Some("latest"), br#"[{"op": "remove", "path": "/driver"}]"#.to_vec(), 400),
        ("PATCH", "/v1/nodes/keep", Some("1.40"), br#"[{"op": "add", "path": "/owner", "value": "me"}]"#.to_vec(), 406),
        ("PATCH", "/v1/nodes/keep", Some("latest"), br#"{"op": "add"}"#.to_vec(), 400),
        ("PATCH", "/v1/nodes/keep", Some("latest"), br#"[{"op": "replace", "path": "/driver_info", "value": 5}]"#.to_vec(), 400),
        ("PUT", "/v1/nodes/keep/states/provision", Some("latest"), br#"{"target": "active"}"#.to_vec(), 400),
        ("PUT", "/v1/nodes/keep/states/provision", Some("latest"), br#"{"target": "fly"}"#.to_vec(), 400),
        ("PUT", "/v1/nodes/keep/states/provision", Some("1.3"), br#"{"target": "manage"}"#.to_vec(), 406),
        ("PUT", "/v1/nodes/keep/states/power", Some("latest"), br#"{"target": "explode"}"#.to_vec(), 400),
        ("PUT", "/v1/nodes/keep/states/power", Some("1.20"), br#"{"target": "soft power off"}"#.to_vec(), 406),
        ("PUT", "/v1/nodes/keep/management/boot_device", Some("latest"), br#"{"boot_device": "tape"}"#.to_vec(), 400),
        ("GET", "/v1/nodes/00000000-0000-0000-0000-000000000000", Some("latest"), Vec::new(), 404),
        ("GET", "/v1/nodes?sort_key=driver_info", Some("latest"), Vec::new(), 400),
        ("GET", "/v1/nodes?limit=0", Some("latest"), Vec::new(), 400),
        ("GET", "/v1/nodes?fields=name", Some("1.7"), Vec::new(), 406),
        ("POST", "/v1/ports", Some("latest"), br#"{"node_uuid": "00000000-0000-0000-0000-000000000000", "address": "52:54:00:00:00:01"}"#.to_vec(), 400),
        ("POST", "/v1/ports", Some("latest"), format!(r#"{{"node_uuid": "{}", "address": "not-a-mac"}}"#, node["uuid"].as_str().unwrap()).into_bytes(), 400),
        ("GET", "/v1/ports/00000000-0000-0000-0000-000000000000", Some("latest"), Vec::new(), 404),
    ];
    for (method, uri, version, body, status) in cases {
        let body_text = String::from_utf8_lossy(&body).to_string();
        let r = api
            .call(
                method,
                uri,
                version,
                if body.is_empty() { None } else { Some(body) },
            )
            .await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "{method} {uri} {body_text}: {}",
            r.body
        );
        assert!(!r.fault().is_empty());
    }
    // An oversized body.
    let huge = format!(
        r#"{{"driver": "fake-hardware", "extra": {{"x": "{}"}}}}"#,
        "a".repeat(1024 * 1024 + 10)
    );
    let r = api
        .call("POST", "/v1/nodes", Some("latest"), Some(huge.into_bytes()))
        .await;
    assert_eq!(r.status, 413);
    // Nothing changed: one node, as it was.
    let after = api.get("/v1/nodes/keep").await.body;
    assert_eq!(before, after);
    let list = api.get("/v1/nodes").await.body;
    assert_eq!(list["nodes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn duplicate_mac_is_409_and_patch_during_transition_is_409() {
    let api = api().await;
    let node = api
        .create_node(json!({"driver": "fake-hardware", "driver_info": {"fake_delay": 5}}))
        .await;
    let id = node["uuid"].as_str().unwrap();
    let body = json!({"node_uuid": id, "address": "52:54:00:00:00:09"});
    assert_eq!(
        api.send("POST", "/v1/ports", body.clone()).await.status,
        201
    );
    let dup = api.send("POST", "/v1/ports", body).await;
    assert_eq!(dup.status, 409);
    assert!(dup.fault().contains("52:54:00:00:00:09"));

    for verb in ["manage", "provide"] {
        assert_eq!(api.provision(id, verb).await.status, 202);
        api.settle(id).await;
    }
    assert_eq!(api.provision(id, "active").await.status, 202);
    // Deploying with a 5 s fake delay: the node is locked and in transition.
    let r = api
        .send(
            "PATCH",
            &format!("/v1/nodes/{id}"),
            json!([{"op": "add", "path": "/extra/a", "value": 1}]),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let again = api.provision(id, "deleted").await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(again.fault().contains("locked"));
}

#[tokio::test]
async fn listing_pages_sorts_and_filters() {
    let api = api().await;
    for i in 0..7 {
        api.create_node(json!({"driver": "fake-hardware", "name": format!("n{i}"),
                               "resource_class": if i % 2 == 0 { "even" } else { "odd" }}))
            .await;
    }
    let page = api.get("/v1/nodes?limit=3").await.body;
    assert_eq!(page["nodes"].as_array().unwrap().len(), 3);
    let keys: Vec<&String> = page["nodes"][0].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 7, "default list fields: {keys:?}");
    let mut seen = Vec::new();
    let mut next = page["next"].as_str().map(str::to_string);
    seen.extend(
        page["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].clone()),
    );
    while let Some(url) = next {
        let path = url
            .strip_prefix("http://ferric.test:6385")
            .unwrap()
            .to_string();
        let p = api.get(&path).await.body;
        seen.extend(
            p["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["name"].clone()),
        );
        next = p["next"].as_str().map(str::to_string);
    }
    assert_eq!(
        seen,
        (0..7).map(|i| json!(format!("n{i}"))).collect::<Vec<_>>()
    );

    let desc = api
        .get("/v1/nodes?sort_key=name&sort_dir=desc&fields=name")
        .await
        .body;
    assert_eq!(desc["nodes"][0]["name"], "n6");
    let even = api.get("/v1/nodes?resource_class=even").await.body;
    assert_eq!(even["nodes"].as_array().unwrap().len(), 4);
    let detail = api.get("/v1/nodes/detail?limit=1").await.body;
    assert!(detail["nodes"][0].get("driver_info").is_some());
    assert!(detail["nodes"][0].get("ports").is_some());
    let enrolled = api
        .get("/v1/nodes?provision_state=enroll&driver=fake-hardware")
        .await
        .body;
    assert_eq!(enrolled["nodes"].as_array().unwrap().len(), 7);
    let none = api.get("/v1/nodes?associated=true").await.body;
    assert_eq!(none["nodes"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn old_microversions_see_old_behaviour() {
    let api = api().await;
    let r = api
        .call(
            "POST",
            "/v1/nodes",
            None,
            Some(br#"{"driver": "fake-hardware"}"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(
        r.body["provision_state"].is_null(),
        "1.1 shows available as None: {}",
        r.body
    );
    assert!(r.body.get("name").is_none());
    assert!(r.body.get("driver_internal_info").is_none());
    let id = r.body["uuid"].as_str().unwrap();
    let latest = api.get(&format!("/v1/nodes/{id}")).await.body;
    assert_eq!(latest["provision_state"], "available");
}

#[tokio::test]
async fn power_boot_device_maintenance_traits_validate() {
    let api = api().await;
    let node = api
        .create_node(json!({"driver": "fake-hardware", "name": "pw"}))
        .await;
    let id = node["uuid"].as_str().unwrap();
    let r = api
        .send(
            "PUT",
            "/v1/nodes/pw/states/power",
            json!({"target": "power on"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let n = api.settle("pw").await;
    assert_eq!(n["power_state"], "power on");
    api.send(
        "PUT",
        "/v1/nodes/pw/states/power",
        json!({"target": "soft power off", "timeout": 10}),
    )
    .await;
    assert_eq!(api.settle("pw").await["power_state"], "power off");

    let r = api
        .send(
            "PUT",
            "/v1/nodes/pw/management/boot_device",
            json!({"boot_device": "pxe", "persistent": true}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let bd = api.get("/v1/nodes/pw/management/boot_device").await.body;
    assert_eq!(bd, json!({"boot_device": "pxe", "persistent": true}));
    let sup = api
        .get("/v1/nodes/pw/management/boot_device/supported")
        .await
        .body;
    assert!(sup["supported_boot_devices"]
        .as_array()
        .unwrap()
        .contains(&json!("disk")));

    let r = api
        .send("PUT", "/v1/nodes/pw/maintenance", json!({"reason": "fan"}))
        .await;
    assert_eq!(r.status, 202);
    let n = api.get("/v1/nodes/pw").await.body;
    assert_eq!(
        (n["maintenance"].clone(), n["maintenance_reason"].clone()),
        (json!(true), json!("fan"))
    );
    // Deploying in maintenance is refused.
    assert_eq!(api.provision("pw", "manage").await.status, 202);
    api.settle("pw").await;
    assert_eq!(api.provision("pw", "provide").await.status, 400);
    api.call("DELETE", "/v1/nodes/pw/maintenance", Some("latest"), None)
        .await;
    assert_eq!(api.get("/v1/nodes/pw").await.body["maintenance"], false);

    assert_eq!(
        api.call(
            "PUT",
            "/v1/nodes/pw/traits/CUSTOM_GPU",
            Some("latest"),
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(
        api.get("/v1/nodes/pw/traits").await.body["traits"],
        json!(["CUSTOM_GPU"])
    );
    assert_eq!(
        api.call("PUT", "/v1/nodes/pw/traits/lower", Some("latest"), None)
            .await
            .status,
        400
    );

    let v = api.get(&format!("/v1/nodes/{id}/validate")).await.body;
    assert_eq!(v["power"]["result"], true);
    assert!(v["rescue"]["result"].is_null());
    let states = api.get("/v1/nodes/pw/states").await.body;
    assert_eq!(states["provision_state"], "manageable");
    assert!(states.get("boot_mode").is_some());
}

#[tokio::test]
async fn drivers_and_conductors_are_listed() {
    let api = api().await;
    let d = api.get("/v1/drivers?detail=True").await.body;
    let fake = &d["drivers"][0];
    assert_eq!(fake["name"], "fake-hardware");
    assert_eq!(fake["type"], "dynamic");
    assert_eq!(fake["hosts"], json!(["test-conductor"]));
    assert_eq!(fake["default_deploy_interface"], "fake");
    assert!(fake["enabled_inspect_interfaces"]
        .as_array()
        .unwrap()
        .contains(&json!("no-inspect")));
    assert_eq!(api.get("/v1/drivers/ipmi").await.status, 404);
    let c = api.get("/v1/conductors").await.body;
    assert_eq!(c["conductors"][0]["hostname"], "test-conductor");
    assert_eq!(c["conductors"][0]["alive"], true);
}

#[tokio::test]
async fn reserved_steps_hold_unhold_and_service() {
    let api = api().await;
    let node = api
        .create_node(json!({"driver": "fake-hardware", "name": "held"}))
        .await;
    let id = node["uuid"].as_str().unwrap();
    api.provision(id, "manage").await;
    api.settle(id).await;
    let r = api
        .send(
            "PUT",
            &format!("/v1/nodes/{id}/states/provision"),
            json!({"target": "clean", "clean_steps": [
                {"interface": "deploy", "step": "hold"},
                {"interface": "deploy", "step": "erase_devices_metadata"}]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let n = api.settle(id).await;
    assert_eq!(n["provision_state"], "clean hold");
    assert_eq!(n["clean_step"]["step"], "hold");
    assert!(
        n["driver_internal_info"].get("fake_steps_done").is_none(),
        "nothing ran past the hold"
    );
    assert_eq!(api.provision(id, "unhold").await.status, 202);
    let n = api.settle(id).await;
    assert_eq!(n["provision_state"], "manageable", "{n}");
    assert_eq!(
        n["driver_internal_info"]["fake_steps_done"],
        json!(["clean.erase_devices_metadata"])
    );

    for verb in ["provide", "active"] {
        api.provision(id, verb).await;
        api.settle(id).await;
    }
    let r = api
        .send(
            "PUT",
            &format!("/v1/nodes/{id}/states/provision"),
            json!({"target": "service", "service_steps": [
                {"interface": "power", "step": "power_off"},
                {"interface": "power", "step": "power_on"}]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let n = api.settle(id).await;
    assert_eq!(
        (n["provision_state"].clone(), n["power_state"].clone()),
        (json!("active"), json!("power on"))
    );
    let bad = api
        .send("PUT", &format!("/v1/nodes/{id}/states/provision"),
              json!({"target": "service", "service_steps": [{"interface": "deploy", "step": "no_such"}]}))
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn ramdisk_lookup_and_heartbeat() {
    let api = api().await;
    let node = api
        .create_node(json!({"driver": "fake-hardware", "name": "agent-1",
                            "driver_info": {"fake_wait": ["deploy"]}}))
        .await;
    let uuid = node["uuid"].as_str().unwrap().to_string();
    api.send(
        "POST",
        "/v1/ports",
        json!({"node_uuid": uuid, "address": "52:54:00:aa:bb:10"}),
    )
    .await;
    let lookup = "/v1/lookup?addresses=52:54:00:AA:BB:10,not-a-mac";

    // Below 1.22 the endpoints do not exist; in enroll no agent is expected.
    let old = api.call("GET", lookup, Some("1.21"), None).await;
    assert_eq!(old.status, 404);
    let r = api.get(lookup).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = api.get("/v1/lookup?addresses=zz").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.fault().contains("at least one valid MAC"),
        "{}",
        r.fault()
    );

    for verb in ["manage", "provide", "active"] {
        assert_eq!(api.provision("agent-1", verb).await.status, 202);
        api.settle("agent-1").await;
    }
    let n = api.get("/v1/nodes/agent-1").await.body;
    assert_eq!(n["provision_state"], "wait call-back");

    // The first lookup gets the token, later ones "******".
    let first = api.get(lookup).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["node"]["uuid"], uuid.as_str());
    assert!(first.body["node"].get("driver").is_none(), "{}", first.body);
    let token = first.body["config"]["agent_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(token.len() >= 32 && token != "******", "{token}");
    assert_eq!(first.body["config"]["agent_token_required"], true);
    // md5 as the server's [conductor] allow_md5_checksum says: off here.
    assert_eq!(first.body["config"]["agent_md5_checksum_enable"], false);
    assert_eq!(
        first.body["node"]["driver_internal_info"]["agent_secret_token"],
        "******"
    );
    let again = api.get(&format!("/v1/lookup?node_uuid={uuid}")).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["config"]["agent_token"], "******");
    // The token never shows in the node.
    let shown = api.get("/v1/nodes/agent-1").await.body.to_string();
    assert!(!shown.contains(&token));

    let hb = format!("/v1/heartbeat/{uuid}");
    let beat = |body: Value| {
        let api = &api;
        let hb = hb.clone();
        async move { api.send("POST", &hb, body).await }
    };
    // Bad heartbeats: 400 with Ironic's messages, nothing recorded.
    for (body, why) in [
        (
            json!({"callback_url": "https://10.0.0.5:9999", "agent_version": "1"}),
            "Agent token is required",
        ),
        (
            json!({"callback_url": "https://10.0.0.5:9999", "agent_token": "wrong", "agent_version": "1"}),
            "Invalid or missing agent token",
        ),
        (
            json!({"callback_url": "ftp://10.0.0.5", "agent_token": token, "agent_version": "1"}),
            "callback_url",
        ),
        (
            json!({"callback_url": "https://10.0.0.5:9999", "agent_token": token}),
            "agent_version or agent_status",
        ),
        (
            json!({"callback_url": "https://10.0.0.5:9999", "agent_token": token, "agent_status": "done"}),
            "Agent status is invalid",
        ),
        (
            json!({"agent_token": token, "agent_version": "1"}),
            "callback_url",
        ),
        (
            json!({"callback_url": "https://10.0.0.5:9999", "agent_token": token, "agent_version": "1", "bogus": 1}),
            "Unknown field",
        ),
    ] {
        let r = beat(body).await;
        assert_eq!(r.status, 400, "{why}: {}", r.body);
        assert!(r.fault().contains(why), "{why}: {}", r.fault());
    }
    let n = api.get("/v1/nodes/agent-1").await.body;
    assert!(n["driver_internal_info"].get("agent_url").is_none(), "{n}");

    let good = json!({"callback_url": "https://10.0.0.5:9999", "agent_token": token,
                      "agent_version": "ferric-0.1", "agent_verify_ca": "CA-1"});
    let r = beat(good.clone()).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let n = api.get("/v1/nodes/agent-1").await.body;
    let dii = &n["driver_internal_info"];
    assert_eq!(dii["agent_url"], "https://10.0.0.5:9999");
    assert_eq!(dii["agent_version"], "ferric-0.1");
    assert!(dii["agent_last_heartbeat"].is_string());
    assert_eq!(beat(good.clone()).await.status, 202);
    // The callback URL and the CA are pinned by the first heartbeat.
    let mut moved = good.clone();
    moved["callback_url"] = json!("https://10.0.0.6:9999");
    let r = beat(moved).await;
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("Detected change"), "{}", r.fault());
    let mut other_ca = good.clone();
    other_ca["agent_verify_ca"] = json!("CA-2");
    let r = beat(other_ca).await;
    assert_eq!(r.status, 400);
    assert!(
        r.fault().contains("certificate authority changed"),
        "{}",
        r.fault()
    );
    // Fields newer than the requested version are refused.
    let r = api
        .call(
            "POST",
            &hb,
            Some("1.60"),
            Some(good.to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("agent_verify_ca"), "{}", r.fault());

    // When the operation ends, the agent's token and URL are forgotten.
    assert_eq!(api.provision("agent-1", "deleted").await.status, 202);
    let n = api.settle("agent-1").await;
    assert_eq!(n["provision_state"], "available", "{n}");
    let dii = &n["driver_internal_info"];
    assert!(dii.get("agent_secret_token").is_none(), "{n}");
    assert!(dii.get("agent_url").is_none(), "{n}");
    let r = beat(good).await;
    assert_eq!(r.status, 400, "an old token still works: {}", r.body);
}
