//! md5 image checksums in `write_image`, as the agent's config sets them:
//! refused by default, before anything is downloaded, with an error naming
//! `md5_enabled`; with `md5_enabled = true` in the config file, an image
//! whose md5 matches is written and one whose md5 does not is refused. The
//! image is served over HTTP on loopback and written to a loop device.
//! Needs root, loop devices, sgdisk and sfdisk, as CI has.

mod common;

use common::{has_partition_table, LoopDisk};
use ferric_agent::commands::CommandHandler;
use ferric_agent::config::AgentConfig;
use ferric_agent::deploy::ConductorMd5;
use ferric_agent::inventory::Filter;
use ferric_agent::run::deploy_options;
use ferric_agent::standard::{Disks, StandardHandler};
use ferric_agent::tls::ClientTls;
use ferric_image::checksum::{Algorithm, Hasher};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const MIB: usize = 1 << 20;

/// An 8 MiB GPT disk image with noise in its partition.
fn gpt_image(dir: &Path) -> Vec<u8> {
    let path = dir.join("image.raw");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 * MIB as u64)
        .unwrap();
    let out = Command::new("sgdisk")
        .args(["-n", "1:2048:0", "-t", "1:8300"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bytes = std::fs::read(&path).unwrap();
    let mut x: u32 = 4242;
    for byte in &mut bytes[MIB..7 * MIB] {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *byte = (x >> 16) as u8;
    }
    bytes
}

fn md5_hex(data: &[u8]) -> String {
    let mut hasher = Hasher::new(Algorithm::Md5);
    hasher.update(data);
    hasher.finish().hex
}

/// Serves `body` at /image.raw on loopback; counts the requests.
async fn serve(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let app = axum::Router::new().route(
        "/image.raw",
        axum::routing::get(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/image.raw", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, requests)
}

/// The agent's handler, with `config_file` applied over the defaults and
/// turned into deploy options as the agent does at start.
fn agent(disk: &LoopDisk, config_file: &Path, conductor_md5: ConductorMd5) -> StandardHandler {
    let mut config = AgentConfig {
        standalone: true,
        ..AgentConfig::default()
    };
    config.apply_file(config_file).unwrap();
    let tls = ClientTls::from_config(&config).unwrap();
    StandardHandler::new(Disks::Only {
        sys_root: PathBuf::from("/"),
        filter: Filter { include_loop: true },
        names: vec![disk.name()],
    })
    .with_deploy_options(deploy_options(&config, &tls, conductor_md5))
}

fn write_image(device: &str, url: &str, checksum: Value) -> Value {
    let mut image_info = json!({"id": "image-1", "urls": [url], "disk_format": "raw",
                                "container_format": "bare", "stream_raw_images": true});
    image_info
        .as_object_mut()
        .unwrap()
        .extend(checksum.as_object().unwrap().clone());
    json!({
        "step": {"step": "write_image", "interface": "deploy", "priority": 80,
                 "args": {"image_info": image_info, "configdrive": null}},
        "node": {"uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123",
                 "properties": {"root_device": {"name": device}}},
        "ports": [],
        "deploy_version": {"GenericHardwareManager": "1.2"},
    })
}

async fn execute(agent: &StandardHandler, params: Value) -> Result<Value, String> {
    agent
        .run("deploy", "execute_deploy_step", params)
        .await
        .map_err(|e| e.details)
}

#[tokio::test]
async fn md5_is_refused_unless_the_agent_config_enables_it() {
    let dir = tempfile::tempdir().unwrap();
    let image = gpt_image(dir.path());
    let md5 = md5_hex(&image);
    let (url, requests) = serve(image.clone()).await;
    let disk = LoopDisk::new(64 << 20);
    let config = dir.path().join("agent.toml");

    // By default: refused before the download, the disk untouched.
    std::fs::write(&config, "").unwrap();
    let strict = agent(&disk, &config, ConductorMd5::default());
    for checksum in [
        json!({"checksum": md5}),
        json!({"os_hash_algo": "md5", "os_hash_value": md5}),
    ] {
        let error = execute(&strict, write_image(&disk.name(), &url, checksum))
            .await
            .unwrap_err();
        assert!(
            error.contains("md5 checksums are disabled")
                && error.contains("allow_md5_checksum = true")
                && error.contains("md5_enabled = true"),
            "{error}"
        );
    }
    assert_eq!(requests.load(Ordering::SeqCst), 0, "nothing was downloaded");
    assert!(!has_partition_table(&disk.device));

    // Enabled: md5 verifies, a mismatch fails.
    std::fs::write(&config, "md5_enabled = true\n").unwrap();
    let lenient = agent(&disk, &config, ConductorMd5::default());
    let wrong = json!({"checksum": "0".repeat(32)});
    let error = execute(&lenient, write_image(&disk.name(), &url, wrong))
        .await
        .unwrap_err();
    assert!(error.contains("md5 checksum mismatch"), "{error}");
    assert!(!has_partition_table(&disk.device));

    let done = execute(
        &lenient,
        write_image(&disk.name(), &url, json!({"checksum": md5})),
    )
    .await
    .unwrap();
    assert_eq!(done["deploy_result"]["device"], disk.name(), "{done}");
    assert!(disk.read(image.len()) == image, "the image is on the disk");
    assert!(has_partition_table(&disk.device));
}

/// The conductor's lookup answer (`agent_md5_checksum_enable`) wins over the
/// agent's own config, either way, as in IPA; it can come after the handler
/// was built.
#[tokio::test]
async fn the_conductor_decides_md5_once_it_has_said() {
    let dir = tempfile::tempdir().unwrap();
    let image = gpt_image(dir.path());
    let md5 = md5_hex(&image);
    let (url, requests) = serve(image.clone()).await;
    let disk = LoopDisk::new(64 << 20);
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "md5_enabled = true\n").unwrap();

    let conductor = ConductorMd5::default();
    let handler = agent(&disk, &config, conductor.clone());
    conductor.set(false);
    let error = execute(
        &handler,
        write_image(&disk.name(), &url, json!({"checksum": md5})),
    )
    .await
    .unwrap_err();
    assert!(error.contains("md5 checksums are disabled"), "{error}");
    assert_eq!(requests.load(Ordering::SeqCst), 0, "nothing was downloaded");

    std::fs::write(&config, "").unwrap();
    let conductor = ConductorMd5::default();
    let handler = agent(&disk, &config, conductor.clone());
    conductor.set(true);
    execute(
        &handler,
        write_image(&disk.name(), &url, json!({"checksum": md5})),
    )
    .await
    .unwrap();
    assert!(disk.read(image.len()) == image, "the image is on the disk");
}
