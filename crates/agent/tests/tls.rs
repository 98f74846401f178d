//! TLS on both sides of the agent:
//!
//! - ferric-agent as a process, against a fake conductor served over https
//!   that requires a client certificate: the agent verifies it with its
//!   `--cafile`, presents `--certfile`/`--keyfile`, serves its command API
//!   over TLS with a generated certificate and heartbeats an https callback
//!   URL with that certificate, which the conductor's `AgentClient` then
//!   trusts (and only it);
//! - the agent's clients in process: cafile, client certificates, insecure;
//! - image downloads over https, and `write_image` from an https server
//!   onto a loop device (needs root, loop devices and sgdisk, as CI has).
//!
//! Test CAs and certificates are made with rcgen; the test servers use the
//! agent's own `TlsListener` with their own rustls settings.

mod common;

use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::LoopDisk;
use ferric_agent::commands::CommandHandler;
use ferric_agent::deploy::DeployOptions;
use ferric_agent::download::{self, DownloadOptions};
use ferric_agent::inventory::Filter;
use ferric_agent::standard::{Disks, StandardHandler};
use ferric_agent::tls::{ClientTls, ServerIdentity, TlsListener};
use ferric_drivers::agent_client::AgentClient;
use ferric_image::checksum::sha256_hex;
use ferric_types::{Node, ProvisionState};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const NODE: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";
const TOKEN: &str = "a-test-token-of-at-least-thirty-two-characters";
const MAC: &str = "52:54:00:12:34:56";

// ---------------------------------------------------------------- PKI

/// A test CA that signs server and client certificates.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn sign(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn server_leaf(&self) -> Leaf {
        self.sign("127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client_leaf(&self) -> Leaf {
        self.sign("ferric-agent", ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server's rustls settings: `leaf` as its certificate; client
/// certificates signed by `clients` required when given.
fn server_config(leaf: &Leaf, clients: Option<&TestCa>) -> Arc<ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.issuer.der().clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    Arc::new(builder.with_single_cert(chain, key).unwrap())
}

/// Serves `app` over TLS on loopback; returns its https base URL.
async fn serve_tls(app: Router, config: Arc<ServerConfig>) -> String {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", tcp.local_addr().unwrap());
    let listener = TlsListener::new(tcp, config).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

// ---------------------------------------------------------------- fake conductor

/// The ramdisk endpoints of a conductor: lookup gives TOKEN for NODE,
/// heartbeats are handed to the test.
fn fake_conductor(heartbeats: mpsc::UnboundedSender<Value>) -> Router {
    Router::new()
        .route(
            "/v1/lookup",
            get(|| async {
                Json(json!({"node": {"uuid": NODE, "properties": {}},
                            "config": {"agent_token": TOKEN, "heartbeat_timeout": 300}}))
            }),
        )
        .route(
            "/v1/heartbeat/{node}",
            post(
                |State(heartbeats): State<mpsc::UnboundedSender<Value>>,
                 UrlPath(node): UrlPath<String>,
                 Json(body): Json<Value>| async move {
                    assert_eq!(node, NODE);
                    let _ = heartbeats.send(body);
                    axum::http::StatusCode::ACCEPTED
                },
            ),
        )
        .with_state(heartbeats)
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(api_url: &str, args: &[&str]) -> Agent {
    let child = Command::new(env!("CARGO_BIN_EXE_ferric-agent"))
        .env("FERRIC_AGENT_NO_POWER", "1")
        .args(["--cmdline", "/dev/null", "--api-url", api_url, "--mac", MAC])
        .args(["--listen", "127.0.0.1:0", "--advertise-host", "127.0.0.1"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ferric-agent starts");
    Agent(child)
}

async fn first_heartbeat(heartbeats: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(30), heartbeats.recv())
        .await
        .expect("the agent heartbeats within 30 s")
        .unwrap()
}

/// The node as the conductor keeps it after this heartbeat.
fn node_after(heartbeat: &Value) -> Node {
    let mut node = Node::new(
        NODE.parse().unwrap(),
        "fake-hardware",
        ProvisionState::Active,
    );
    let info = &mut node.driver_internal_info;
    info.insert("agent_url".into(), heartbeat["callback_url"].clone());
    info.insert("agent_secret_token".into(), json!(TOKEN));
    if let Some(ca) = heartbeat.get("agent_verify_ca") {
        info.insert("agent_verify_ca".into(), ca.clone());
    }
    node
}

// ---------------------------------------------------------------- agent process

#[tokio::test]
async fn agent_serves_tls_and_the_conductor_trusts_only_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let conductor_ca = TestCa::new("conductor CA");
    let client_ca = TestCa::new("agent client CA");
    let (heartbeats, mut received) = mpsc::unbounded_channel();
    let api = serve_tls(
        fake_conductor(heartbeats),
        server_config(&conductor_ca.server_leaf(), Some(&client_ca)),
    )
    .await;
    let cafile = write(dir.path(), "ca.pem", &conductor_ca.pem());
    let client = client_ca.client_leaf();
    let certfile = write(dir.path(), "client.pem", &client.cert_pem);
    let keyfile = write(dir.path(), "client.key", &client.key_pem);
    let _agent = start_agent(
        &api,
        &[
            "--cafile",
            cafile.to_str().unwrap(),
            "--certfile",
            certfile.to_str().unwrap(),
            "--keyfile",
            keyfile.to_str().unwrap(),
        ],
    );

    // The agent reached the conductor over mutual TLS, and says where its
    // https API is and what certificate it has.
    let beat = first_heartbeat(&mut received).await;
    let url = beat["callback_url"].as_str().unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{beat}");
    let ca = beat["agent_verify_ca"].as_str().expect("agent_verify_ca");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    assert!(!ca.contains("PRIVATE KEY"));
    assert_eq!(beat["agent_token"], TOKEN);

    // The conductor's client runs commands over https with that certificate.
    let agents = AgentClient::default();
    let node = node_after(&beat);
    let done = agents
        .execute(
            &node,
            "clean.get_clean_steps",
            json!({"node": {}, "ports": []}),
            true,
        )
        .await
        .unwrap();
    assert_eq!(done["command_status"], "SUCCEEDED", "{done}");
    assert!(done["command_result"]["clean_steps"].is_object(), "{done}");
    let listed = agents.commands(&node).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        agents.pinned_clients(),
        1,
        "one client per agent certificate"
    );

    // Another certificate (an impostor's, or a stale one) is refused, at
    // once rather than after retries.
    let mut impostor = node.clone();
    let other = ServerIdentity::generate("127.0.0.1").unwrap();
    impostor
        .driver_internal_info
        .insert("agent_verify_ca".into(), json!(other.certificate_pem));
    let started = Instant::now();
    let err = agents
        .execute(&impostor, "clean.get_clean_steps", json!({}), true)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate"), "{err}");
    assert!(!err.contains(TOKEN), "the token leaked into {err}");
    assert!(started.elapsed() < Duration::from_secs(2), "retried: {err}");

    // An https agent with no certificate to verify it with is refused.
    let mut unpinned = node.clone();
    unpinned.driver_internal_info.remove("agent_verify_ca");
    let err = agents.commands(&unpinned).await.unwrap_err().to_string();
    assert!(err.contains("agent_verify_ca"), "{err}");

    // A client that trusts the system's CAs does not trust the agent.
    let system = reqwest::Client::new();
    assert!(system.get(format!("{url}/v1/status")).send().await.is_err());
}

#[tokio::test]
async fn no_tls_serves_plain_http_and_sends_no_certificate() {
    let (heartbeats, mut received) = mpsc::unbounded_channel();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", tcp.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(tcp, fake_conductor(heartbeats)).await });
    let _agent = start_agent(&api, &["--no-tls"]);
    let beat = first_heartbeat(&mut received).await;
    let url = beat["callback_url"].as_str().unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{beat}");
    assert!(beat.get("agent_verify_ca").is_none(), "{beat}");
    let done = AgentClient::default()
        .execute(&node_after(&beat), "standby.sync", json!({}), true)
        .await
        .unwrap();
    assert_eq!(done["command_status"], "SUCCEEDED", "{done}");
}

#[tokio::test]
async fn listen_tls_serves_the_operators_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (heartbeats, mut received) = mpsc::unbounded_channel();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", tcp.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(tcp, fake_conductor(heartbeats)).await });
    let ca = TestCa::new("operator CA");
    let leaf = ca.server_leaf();
    // The chain up to the CA, so that the conductor can verify the leaf.
    let chain = format!("{}{}", leaf.cert_pem, ca.pem());
    let cert = write(dir.path(), "api.pem", &chain);
    let key = write(dir.path(), "api.key", &leaf.key_pem);
    let config = write(
        dir.path(),
        "agent.toml",
        &format!(
            "listen_tls = true\ntls_cert_file = {cert:?}\ntls_key_file = {key:?}\n",
            cert = cert.to_str().unwrap(),
            key = key.to_str().unwrap()
        ),
    );
    let _agent = start_agent(&api, &["--config", config.to_str().unwrap()]);
    let beat = first_heartbeat(&mut received).await;
    assert!(beat["callback_url"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
    assert_eq!(beat["agent_verify_ca"], chain.as_str());
    let done = AgentClient::default()
        .execute(&node_after(&beat), "standby.sync", json!({}), true)
        .await
        .unwrap();
    assert_eq!(done["command_status"], "SUCCEEDED", "{done}");
}

// ---------------------------------------------------------------- agent's clients

#[tokio::test]
async fn the_conductor_client_uses_the_cafile_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let conductor_ca = TestCa::new("conductor CA");
    let client_ca = TestCa::new("agent client CA");
    let (heartbeats, _received) = mpsc::unbounded_channel();
    let api = serve_tls(
        fake_conductor(heartbeats),
        server_config(&conductor_ca.server_leaf(), Some(&client_ca)),
    )
    .await;
    let cafile = write(dir.path(), "ca.pem", &conductor_ca.pem());
    let client = client_ca.client_leaf();
    let certfile = write(dir.path(), "client.pem", &client.cert_pem);
    let keyfile = write(dir.path(), "client.key", &client.key_pem);
    let lookup = |tls: ClientTls| {
        let api = api.clone();
        async move {
            ferric_agent::client::ConductorClient::with_tls(&api, &tls)
                .unwrap()
                .lookup(&[MAC.to_string()], None)
                .await
        }
    };

    let found = lookup(ClientTls::new(false, Some(&cafile), Some((&certfile, &keyfile))).unwrap())
        .await
        .unwrap();
    assert_eq!(found.node_uuid, NODE);
    assert_eq!(found.token.as_deref(), Some(TOKEN));

    // Without the client certificate the conductor refuses the agent.
    let err = lookup(ClientTls::new(false, Some(&cafile), None).unwrap())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    // Without the cafile (the system's CAs) the agent refuses the conductor.
    assert!(
        lookup(ClientTls::new(false, None, Some((&certfile, &keyfile))).unwrap())
            .await
            .is_err()
    );
    // A cafile of another CA does not do either.
    let stranger = write(dir.path(), "other.pem", &TestCa::new("other").pem());
    assert!(
        lookup(ClientTls::new(false, Some(&stranger), Some((&certfile, &keyfile))).unwrap())
            .await
            .is_err()
    );
    // insecure: any server certificate, still with the client certificate.
    let found = lookup(ClientTls::new(true, None, Some((&certfile, &keyfile))).unwrap())
        .await
        .unwrap();
    assert_eq!(found.node_uuid, NODE);
}

#[tokio::test]
async fn insecure_accepts_a_server_whose_ca_is_unknown() {
    let unknown = TestCa::new("unknown CA");
    let (heartbeats, _received) = mpsc::unbounded_channel();
    let api = serve_tls(
        fake_conductor(heartbeats),
        server_config(&unknown.server_leaf(), None),
    )
    .await;
    let lookup = |tls: ClientTls| {
        let api = api.clone();
        async move {
            ferric_agent::client::ConductorClient::with_tls(&api, &tls)
                .unwrap()
                .lookup(&[MAC.to_string()], None)
                .await
        }
    };
    assert!(lookup(ClientTls::default()).await.is_err());
    let found = lookup(ClientTls::new(true, None, None).unwrap())
        .await
        .unwrap();
    assert_eq!(found.node_uuid, NODE);
}

// ---------------------------------------------------------------- image downloads

/// Serves `body` at `/<name>` over TLS with a certificate of `ca`.
async fn image_server(ca: &TestCa, name: &str, body: Vec<u8>) -> String {
    let body = Arc::new(body);
    let app = Router::new().route(
        &format!("/{name}"),
        get(move || {
            let body = body.clone();
            async move { body.to_vec() }
        }),
    );
    let base = serve_tls(app, server_config(&ca.server_leaf(), None)).await;
    format!("{base}/{name}")
}

fn quick(tls: ClientTls) -> DownloadOptions {
    DownloadOptions {
        connect_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(5),
        retries: 0,
        retry_interval: Duration::from_millis(10),
        tls,
        ..DownloadOptions::default()
    }
}

#[tokio::test]
async fn https_downloads_verify_with_the_agents_settings() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("image server CA");
    let url = image_server(&ca, "image.sha256", b"0123 image.raw\n".to_vec()).await;
    let cafile = write(dir.path(), "ca.pem", &ca.pem());
    let other = write(dir.path(), "other.pem", &TestCa::new("other").pem());
    let fetch = |tls: ClientTls| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || download::fetch_text(&url, 1024, &quick(tls)))
    };
    let text = fetch(ClientTls::new(false, Some(&cafile), None).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text, "0123 image.raw\n");
    let err = fetch(ClientTls::new(false, Some(&other), None).unwrap())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        download::chain(&err).contains("certificate"),
        "{}",
        download::chain(&err)
    );
    assert!(fetch(ClientTls::default()).await.unwrap().is_err());
    let text = fetch(ClientTls::new(true, None, None).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text, "0123 image.raw\n");
}

/// A 4 MiB GPT disk image with a recognisable pattern after the table.
fn gpt_image(dir: &Path) -> Vec<u8> {
    let path = dir.join("image.raw");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let status = Command::new("sgdisk")
        .args(["-n", "1:2048:0", "-t", "1:8300"])
        .arg(&path)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mut bytes = std::fs::read(&path).unwrap();
    for (i, byte) in bytes[1 << 20..].iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    bytes
}

#[tokio::test]
async fn write_image_downloads_over_https_with_the_cafile() {
    let dir = tempfile::tempdir().unwrap();
    let image = gpt_image(dir.path());
    let ca = TestCa::new("image server CA");
    let url = image_server(&ca, "image.raw", image.clone()).await;
    let cafile = write(dir.path(), "ca.pem", &ca.pem());
    let disk = LoopDisk::new(32 << 20);
    let handler = |tls: ClientTls| {
        StandardHandler::new(Disks::Only {
            sys_root: PathBuf::from("/"),
            filter: Filter { include_loop: true },
            names: vec![disk.name()],
        })
        .with_deploy_options(DeployOptions {
            spool_dir: dir.path().to_path_buf(),
            download: quick(tls),
            ..DeployOptions::default()
        })
    };
    let params = json!({
        "step": {"step": "write_image", "interface": "deploy", "priority": 80,
                 "args": {"image_info": {
                     "id": "image-1", "urls": [url], "disk_format": "raw",
                     "container_format": "bare", "os_hash_algo": "sha256",
                     "os_hash_value": sha256_hex(&image), "node_uuid": NODE}}},
        "node": {"uuid": NODE, "properties": {"root_device": {"name": disk.name()}}},
        "ports": [],
    });

    // Without the CA (the system's, of which there are none here for this
    // server) the download is refused and the disk left alone.
    let refused = handler(ClientTls::default())
        .run("deploy", "execute_deploy_step", params.clone())
        .await
        .unwrap_err();
    assert!(
        refused.details.contains("certificate"),
        "{}",
        refused.details
    );
    assert_eq!(disk.read(1 << 20), vec![0; 1 << 20]);

    let done = handler(ClientTls::new(false, Some(&cafile), None).unwrap())
        .run("deploy", "execute_deploy_step", params)
        .await
        .unwrap();
    assert_eq!(done["deploy_result"]["device"], disk.name(), "{done}");
    assert_eq!(disk.read(image.len()), image);
}
