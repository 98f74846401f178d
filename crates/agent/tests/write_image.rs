//! The `write_image` deploy step end to end: images served over HTTP by a
//! small in-test server (with Range support, a mode that drops the
//! connection once, a mode that ignores Range, and a slow mode), written to
//! loop devices by the agent's handler. Needs root and loop devices, sgdisk,
//! sfdisk, blkid and qemu-img, as CI has.
//!
//! The server is a plain thread-per-connection HTTP/1.1 server rather than
//! axum: it must cut a response off after an exact number of body bytes.

mod common;

use common::{has_partition_table, LoopDisk};
use ferric_agent::commands::CommandHandler;
use ferric_agent::deploy::DeployOptions;
use ferric_agent::download::DownloadOptions;
use ferric_agent::inventory::Filter;
use ferric_agent::server::{self, CommandApi};
use ferric_agent::standard::{Disks, StandardHandler};
use ferric_image::checksum::sha256_hex;
use ferric_image::configdrive::{self, ConfigDrive};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const IMAGE_SIZE: usize = 8 * MIB;
const DISK_SIZE: u64 = 96 << 20;

// ---------------------------------------------------------------- server

#[derive(Clone, Default)]
struct Served {
    body: Arc<Vec<u8>>,
    /// Cut the first response off after this many body bytes.
    drop_once_after: Option<usize>,
    ignore_range: bool,
    /// Pause between 64 KiB chunks.
    chunk_delay: Option<Duration>,
}

impl Served {
    fn new(body: Vec<u8>) -> Self {
        Served {
            body: Arc::new(body),
            ..Served::default()
        }
    }
}

struct Server {
    base: String,
    /// (path, Range header) of every request.
    requests: Arc<Log>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn ranges(&self, path: &str) -> Vec<Option<String>> {
        let wanted = format!("/{path}");
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == wanted)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

fn serve(files: Vec<(&str, Served)>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let files: Arc<HashMap<String, (Served, AtomicBool)>> = Arc::new(
        files
            .into_iter()
            .map(|(p, s)| (format!("/{p}"), (s, AtomicBool::new(false))))
            .collect(),
    );
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (files, log) = (files.clone(), log.clone());
            std::thread::spawn(move || {
                let _ = respond(stream, &files, &log);
            });
        }
    });
    Server { base, requests }
}

type Log = Mutex<Vec<(String, Option<String>)>>;

fn respond(
    mut stream: TcpStream,
    files: &HashMap<String, (Served, AtomicBool)>,
    log: &Log,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_owned());
            }
        }
    }
    log.lock().unwrap().push((path.clone(), range.clone()));
    let Some((served, dropped)) = files.get(&path) else {
        stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    };
    let len = served.body.len();
    let start = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(spec) if !served.ignore_range => spec.trim_end_matches('-').parse::<usize>().ok(),
        _ => None,
    };
    let head = match start {
        Some(start) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{len}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n",
            len - start,
            len - 1
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n"
        ),
    };
    stream.write_all(head.as_bytes())?;
    let start = start.unwrap_or(0);
    let cut = match served.drop_once_after {
        Some(n) if !dropped.swap(true, Ordering::SeqCst) => Some(n),
        _ => None,
    };
    let mut at = start;
    while at < len {
        let end = (at + 64 * 1024).min(len);
        let end = cut.map_or(end, |cut| end.min(cut));
        stream.write_all(&served.body[at..end])?;
        at = end;
        if cut == Some(at) {
            stream.flush()?;
            stream.shutdown(Shutdown::Both)?;
            return Ok(());
        }
        if let Some(delay) = served.chunk_delay {
            std::thread::sleep(delay);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- disks

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn put_partition_table(path: &Path) {
    run("sgdisk", &["-n", "1:2048:0", path.to_str().unwrap()]);
    assert!(has_partition_table(path));
}

/// An 8 MiB GPT disk image: an EFI system partition and a Linux partition,
/// both filled with a deterministic pattern.
fn gpt_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("image.raw");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(IMAGE_SIZE as u64)
        .unwrap();
    let p = path.to_str().unwrap();
    run("sgdisk", &["-n", "1:2048:+2M", "-t", "1:ef00", p]);
    run(
        "sgdisk",
        &["-n", "2:0:0", "-t", "2:8300", "-c", "2:root", p],
    );
    let mut bytes = std::fs::read(&path).unwrap();
    let mut x: u32 = 12345;
    for byte in &mut bytes[MIB..IMAGE_SIZE - MIB] {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *byte = (x >> 16) as u8;
    }
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn qcow2_of(raw: &Path) -> Vec<u8> {
    let qcow2 = raw.with_extension("qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            qcow2.to_str().unwrap(),
        ],
    );
    std::fs::read(qcow2).unwrap()
}

fn config_drive_text() -> String {
    let drive = ConfigDrive::from_ironic_dict(
        &json!({"meta_data": {"uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123", "name": "n1"}}),
    )
    .unwrap();
    let mut iso = std::io::Cursor::new(Vec::new());
    drive.write_iso(&mut iso).unwrap();
    configdrive::encode(&iso.into_inner())
}

// ---------------------------------------------------------------- agent

fn handler(disks: &[&LoopDisk], spool: &Path) -> StandardHandler {
    StandardHandler::new(Disks::Only {
        sys_root: PathBuf::from("/"),
        filter: Filter { include_loop: true },
        names: disks.iter().map(|d| d.name()).collect(),
    })
    .with_deploy_options(DeployOptions {
        spool_dir: spool.to_path_buf(),
        download: DownloadOptions {
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(5),
            retries: 3,
            retry_interval: Duration::from_millis(50),
            ..DownloadOptions::default()
        },
        ..DeployOptions::default()
    })
}

fn deploy_params(device: &str, image_info: Value, configdrive: Option<String>) -> Value {
    json!({
        "step": {"step": "write_image", "interface": "deploy", "priority": 80,
                 "args": {"image_info": image_info, "configdrive": configdrive}},
        "node": {"uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123",
                 "properties": {"root_device": {"name": device}}},
        "ports": [],
        "deploy_version": {"GenericHardwareManager": "1.2"},
    })
}

fn sha256_info(url: &str, body: &[u8], disk_format: &str) -> Value {
    json!({"id": "image-1", "urls": [url], "disk_format": disk_format,
           "container_format": "bare", "os_hash_algo": "sha256",
           "os_hash_value": sha256_hex(body), "stream_raw_images": true,
           "node_uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"})
}

async fn execute(handler: &StandardHandler, params: Value) -> Result<Value, String> {
    handler
        .run("deploy", "execute_deploy_step", params)
        .await
        .map_err(|e| e.details)
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn raw_image_with_config_drive_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (_, image) = gpt_image(dir.path());
    let server = serve(vec![("image.raw", Served::new(image.clone()))]);
    let disk = LoopDisk::new(DISK_SIZE);
    let agent = handler(&[&disk], dir.path());

    let steps = agent
        .run(
            "deploy",
            "get_deploy_steps",
            json!({"node": {}, "ports": []}),
        )
        .await
        .unwrap();
    let step = &steps["deploy_steps"]["GenericHardwareManager"][0];
    assert_eq!(step["step"], "write_image");
    // As IPA lists it: the conductor's `direct` interface has its own
    // write_image at 80, which drives this one.
    assert_eq!(step["priority"], 0);
    assert_eq!(step["interface"], "deploy");
    assert_eq!(step["reboot_requested"], false);
    assert_eq!(
        steps["hardware_manager_version"],
        json!({"GenericHardwareManager": "1.2"})
    );

    let params = deploy_params(
        &disk.name(),
        sha256_info(&server.url("image.raw"), &image, "raw"),
        Some(config_drive_text()),
    );
    let done = execute(&agent, params.clone()).await.unwrap();
    assert_eq!(done["deploy_step"], params["step"]);
    let result = &done["deploy_result"];
    assert_eq!(result["device"], disk.name());
    assert_eq!(result["image_format"], "gpt");
    assert!(result["result"]
        .as_str()
        .unwrap()
        .starts_with("prepare_image: image (image-1) written to device"));

    // The image's partitions are intact (the GPT headers changed: the backup
    // moved to the disk's end and an entry was added).
    let written = disk.read(IMAGE_SIZE);
    assert!(written[MIB..IMAGE_SIZE - MIB] == image[MIB..IMAGE_SIZE - MIB]);
    let table: Value = serde_json::from_str(&run("sfdisk", &["-J", &disk.name()])).unwrap();
    let partitions = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 3, "{table}");
    assert_eq!(partitions[0]["start"], 2048);
    let drive = &partitions[2];
    assert_eq!(drive["name"], "config-2", "{table}");
    let start = drive["start"].as_u64().unwrap() * 512;
    let end = start + drive["size"].as_u64().unwrap() * 512;
    assert!(
        start >= IMAGE_SIZE as u64 && end <= DISK_SIZE && end > DISK_SIZE - MIB as u64,
        "the config drive partition is at the end of the disk: {drive}"
    );
    let probe = run(
        "blkid",
        &["-p", "-O", &start.to_string(), "-o", "export", &disk.name()],
    );
    assert!(probe.contains("LABEL=config-2"), "{probe}");
    assert!(probe.contains("TYPE=iso9660"), "{probe}");

    // get_partition_uuids reads the table of the disk written.
    let uuids = agent
        .run("standby", "get_partition_uuids", json!({}))
        .await
        .unwrap();
    let ptuuid = run(
        "blkid",
        &["-p", "-o", "value", "-s", "PTUUID", &disk.name()],
    );
    assert_eq!(uuids["root uuid"], ptuuid.trim());
    assert_eq!(uuids["partitions"]["3"]["name"], "config-2");
    assert_eq!(
        uuids["partitions"]["3"]["device"],
        format!("{}p3", disk.name())
    );
    assert_eq!(
        uuids["efi system partition uuid"],
        uuids["partitions"]["1"]["uuid"]
    );
    assert_eq!(result["partition_uuids"], uuids);
}

#[tokio::test]
async fn qcow2_image_with_a_checksum_url() {
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, _) = gpt_image(dir.path());
    let qcow2 = qcow2_of(&raw_path);
    // What qemu-img makes of the qcow2 image.
    let expected = dir.path().join("expected.raw");
    std::fs::write(dir.path().join("image.qcow2"), &qcow2).unwrap();
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            dir.path().join("image.qcow2").to_str().unwrap(),
            expected.to_str().unwrap(),
        ],
    );
    let expected = std::fs::read(expected).unwrap();
    let sums = format!(
        "{}  other.img\n{}  image.qcow2\n",
        "0".repeat(64),
        sha256_hex(&qcow2)
    );
    let server = serve(vec![
        ("image.qcow2", Served::new(qcow2)),
        ("SHA256SUMS", Served::new(sums.into_bytes())),
    ]);
    let disk = LoopDisk::new(DISK_SIZE);
    let spool = tempfile::tempdir().unwrap();
    let agent = handler(&[&disk], spool.path());
    let info = json!({"id": "image-2", "urls": [server.url("image.qcow2")],
                      "disk_format": "qcow2", "container_format": "bare",
                      "checksum": server.url("SHA256SUMS")});
    let done = execute(&agent, deploy_params(&disk.name(), info, None))
        .await
        .unwrap();
    assert_eq!(done["deploy_result"]["image_format"], "qcow2");
    assert!(disk.read(expected.len()) == expected);
    assert_eq!(server.ranges("SHA256SUMS").len(), 1);
    assert_eq!(
        std::fs::read_dir(spool.path()).unwrap().count(),
        0,
        "the spool file is gone"
    );
}

#[tokio::test]
async fn a_dropped_connection_resumes_with_range() {
    let dir = tempfile::tempdir().unwrap();
    let (_, image) = gpt_image(dir.path());
    let cut = 3 * MIB + 12345;
    let server = serve(vec![(
        "image.raw",
        Served {
            drop_once_after: Some(cut),
            ..Served::new(image.clone())
        },
    )]);
    let disk = LoopDisk::new(DISK_SIZE);
    let agent = handler(&[&disk], dir.path());
    let info = sha256_info(&server.url("image.raw"), &image, "raw");
    let done = execute(&agent, deploy_params(&disk.name(), info, None))
        .await
        .unwrap();
    assert_eq!(done["deploy_result"]["download_resumes"], 1);
    assert_eq!(
        server.ranges("image.raw"),
        vec![None, Some(format!("bytes={cut}-"))]
    );
    assert!(disk.read(IMAGE_SIZE) == image);
}

#[tokio::test]
async fn a_server_ignoring_range_cannot_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (_, image) = gpt_image(dir.path());
    let server = serve(vec![(
        "image.raw",
        Served {
            drop_once_after: Some(2 * MIB),
            ignore_range: true,
            ..Served::new(image.clone())
        },
    )]);
    let disk = LoopDisk::new(DISK_SIZE);
    put_partition_table(&disk.device);
    let agent = handler(&[&disk], dir.path());
    let info = sha256_info(&server.url("image.raw"), &image, "raw");
    let error = execute(&agent, deploy_params(&disk.name(), info, None))
        .await
        .unwrap_err();
    assert!(error.contains("does not honour Range"), "{error}");
    assert!(error.contains("no partial image"), "{error}");
    assert!(
        disk.read(MIB) != image[..MIB],
        "the image's start never reaches the disk unverified"
    );
}

#[tokio::test]
async fn a_checksum_mismatch_fails_and_leaves_no_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    let (_, image) = gpt_image(dir.path());
    let server = serve(vec![("image.raw", Served::new(image.clone()))]);
    let disk = LoopDisk::new(DISK_SIZE);
    put_partition_table(&disk.device);
    let agent = handler(&[&disk], dir.path());
    let api = CommandApi::new(Arc::new(agent.clone()), None, "test");
    let app = server::router(api);

    let mut info = sha256_info(&server.url("image.raw"), &image, "raw");
    info["os_hash_value"] = json!("ab".repeat(32));
    let body = json!({"name": "deploy.execute_deploy_step",
                      "params": deploy_params(&disk.name(), info, Some(config_drive_text()))});
    let answer = call(&app, "POST", "/v1/commands/?wait=true", Some(body)).await;
    assert_eq!(answer["command_status"], "FAILED", "{answer}");
    assert_eq!(answer["command_name"], "execute_deploy_step");
    let details = answer["command_error"]["details"].as_str().unwrap();
    assert!(details.contains("checksum mismatch"), "{details}");
    assert!(details.contains("no partition table"), "{details}");
    assert!(!has_partition_table(&disk.device));
}

#[tokio::test]
async fn a_qcow2_image_declared_raw_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, _) = gpt_image(dir.path());
    let qcow2 = qcow2_of(&raw_path);
    let server = serve(vec![("image.raw", Served::new(qcow2.clone()))]);
    let disk = LoopDisk::new(DISK_SIZE);
    put_partition_table(&disk.device);
    let agent = handler(&[&disk], dir.path());
    let info = sha256_info(&server.url("image.raw"), &qcow2, "raw");
    let error = execute(&agent, deploy_params(&disk.name(), info, None))
        .await
        .unwrap_err();
    assert!(
        error.contains("declared raw but its contents are qcow2"),
        "{error}"
    );
    assert!(
        has_partition_table(&disk.device),
        "a refused image leaves the disk alone"
    );
}

#[tokio::test]
async fn root_device_hints_choose_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (_, image) = gpt_image(dir.path());
    let server = serve(vec![("image.raw", Served::new(image.clone()))]);
    let (first, second) = (LoopDisk::new(DISK_SIZE), LoopDisk::new(DISK_SIZE));
    let agent = handler(&[&first, &second], dir.path());
    let info = sha256_info(&server.url("image.raw"), &image, "raw");
    let done = execute(&agent, deploy_params(&second.name(), info.clone(), None))
        .await
        .unwrap();
    assert_eq!(done["deploy_result"]["device"], second.name());
    assert!(second.read(IMAGE_SIZE) == image);
    assert!(first.read(IMAGE_SIZE).iter().all(|&b| b == 0));

    // Hints nothing matches, and no hints with only small disks: refused.
    let error = execute(
        &agent,
        deploy_params("/dev/nonexistent", info.clone(), None),
    )
    .await
    .unwrap_err();
    assert!(error.contains("no disk matches"), "{error}");
    let mut params = deploy_params("", info, None);
    params["node"]["properties"] = json!({});
    let error = execute(&agent, params).await.unwrap_err();
    assert!(error.contains("at least 4 GiB"), "{error}");
}

#[tokio::test]
async fn progress_shows_while_the_command_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (_, image) = gpt_image(dir.path());
    let server = serve(vec![(
        "image.raw",
        Served {
            chunk_delay: Some(Duration::from_millis(20)),
            ..Served::new(image.clone())
        },
    )]);
    let disk = LoopDisk::new(DISK_SIZE);
    let agent = handler(&[&disk], dir.path());
    let api = CommandApi::new(Arc::new(agent.clone()), None, "test")
        .with_running_result(agent.running_result());
    let app = server::router(api);

    let body = json!({"name": "deploy.execute_deploy_step",
                      "params": deploy_params(&disk.name(),
                                              sha256_info(&server.url("image.raw"), &image, "raw"),
                                              None)});
    let started = call(&app, "POST", "/v1/commands/", Some(body)).await;
    assert_eq!(started["command_status"], "RUNNING");
    assert_eq!(started["command_result"], Value::Null);
    let id = started["id"].as_str().unwrap().to_owned();

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = None;
    let last = loop {
        let listed = call(&app, "GET", "/v1/commands/", None).await;
        let command = listed["commands"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        if command["command_status"] != "RUNNING" {
            break command;
        }
        let progress = &command["command_result"]["progress"];
        if progress["bytes_done"].as_u64().unwrap_or(0) > 0 && seen.is_none() {
            seen = Some(progress.clone());
        }
        assert!(Instant::now() < deadline, "the deploy never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(last["command_status"], "SUCCEEDED", "{last}");
    assert!(last["command_result"].get("progress").is_none());
    assert!(last["command_result"]["deploy_result"].is_object());
    let seen = seen.expect("progress was shown while running");
    assert_eq!(seen["bytes_total"], IMAGE_SIZE);
    assert!(seen["bytes_done"].as_u64().unwrap() <= IMAGE_SIZE as u64);
    assert!(seen["rate_bytes_per_s"].as_f64().unwrap() > 0.0, "{seen}");
    assert!(seen["eta_seconds"].as_f64().is_some(), "{seen}");
    let one = call(&app, "GET", &format!("/v1/commands/{id}"), None).await;
    assert_eq!(one["command_status"], "SUCCEEDED");
    assert!(disk.read(IMAGE_SIZE) == image);
}

#[tokio::test]
async fn without_streaming_the_image_is_verified_in_the_spool_before_the_disk_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let (_, image) = gpt_image(dir.path());
    let server = serve(vec![("image.raw", Served::new(image.clone()))]);
    let disk = LoopDisk::new(DISK_SIZE);
    put_partition_table(&disk.device);
    let spool = tempfile::tempdir().unwrap();
    let agent = handler(&[&disk], spool.path());
    let mut info = sha256_info(&server.url("image.raw"), &image, "raw");
    info["stream_raw_images"] = json!(false);

    // A wrong checksum is found in the spool: the disk keeps its old
    // partition table (a streamed image would have reached it and been
    // wiped).
    let mut wrong = info.clone();
    wrong["os_hash_value"] = json!("ab".repeat(32));
    let error = execute(&agent, deploy_params(&disk.name(), wrong, None))
        .await
        .unwrap_err();
    assert!(error.contains("checksum mismatch"), "{error}");
    assert!(error.contains("the disk is unchanged"), "{error}");
    assert!(
        has_partition_table(&disk.device),
        "the disk was not touched"
    );
    assert!(disk.read(MIB) != image[..MIB]);

    let done = execute(
        &agent,
        deploy_params(&disk.name(), info, Some(config_drive_text())),
    )
    .await
    .unwrap();
    assert_eq!(done["deploy_result"]["image_format"], "gpt");
    assert_eq!(done["deploy_result"]["bytes_downloaded"], IMAGE_SIZE);
    let written = disk.read(IMAGE_SIZE);
    assert!(written[MIB..IMAGE_SIZE - MIB] == image[MIB..IMAGE_SIZE - MIB]);
    let table: Value = serde_json::from_str(&run("sfdisk", &["-J", &disk.name()])).unwrap();
    let partitions = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 3, "{table}");
    assert_eq!(partitions[2]["name"], "config-2", "{table}");
    assert_eq!(
        server.ranges("image.raw").len(),
        2,
        "one download per deploy"
    );
    assert_eq!(
        std::fs::read_dir(spool.path()).unwrap().count(),
        0,
        "the spool file is gone"
    );
}

#[tokio::test]
async fn without_streaming_a_failed_download_leaves_the_disk_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, _) = gpt_image(dir.path());
    let qcow2 = qcow2_of(&raw_path);
    let server = serve(vec![(
        "image.qcow2",
        Served {
            drop_once_after: Some(MIB / 2),
            ignore_range: true,
            ..Served::new(qcow2.clone())
        },
    )]);
    let disk = LoopDisk::new(DISK_SIZE);
    put_partition_table(&disk.device);
    let spool = tempfile::tempdir().unwrap();
    let agent = handler(&[&disk], spool.path());
    let mut info = sha256_info(&server.url("image.qcow2"), &qcow2, "qcow2");
    info["stream_raw_images"] = json!(false);
    let error = execute(&agent, deploy_params(&disk.name(), info.clone(), None))
        .await
        .unwrap_err();
    assert!(error.contains("does not honour Range"), "{error}");
    assert!(error.contains("the disk is unchanged"), "{error}");
    assert!(has_partition_table(&disk.device));
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);

    // The connection drops only once: now it works, qcow2 converted from
    // the spool.
    let done = execute(&agent, deploy_params(&disk.name(), info, None))
        .await
        .unwrap();
    assert_eq!(done["deploy_result"]["image_format"], "qcow2");
    let raw = std::fs::read(&raw_path).unwrap();
    assert!(disk.read(IMAGE_SIZE)[MIB..IMAGE_SIZE - MIB] == raw[MIB..IMAGE_SIZE - MIB]);
}

async fn call(app: &axum::Router, method: &str, uri: &str, body: Option<Value>) -> Value {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        ))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// Images larger than the disk are refused before a byte is written: a raw
/// image by its Content-Length, a qcow2 image by its virtual size.
#[tokio::test]
async fn an_image_larger_than_the_disk_fails_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![0x5au8; (DISK_SIZE + MIB as u64) as usize];
    let big_qcow2 = {
        let raw = dir.path().join("big.raw");
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(DISK_SIZE * 2)
            .unwrap();
        qcow2_of(&raw)
    };
    let server = serve(vec![
        ("big.raw", Served::new(big.clone())),
        ("big.qcow2", Served::new(big_qcow2.clone())),
    ]);
    let disk = LoopDisk::new(DISK_SIZE);
    put_partition_table(&disk.device);
    let agent = handler(&[&disk], dir.path());
    for (name, body, format) in [("big.raw", &big, "raw"), ("big.qcow2", &big_qcow2, "qcow2")] {
        let info = sha256_info(&server.url(name), body, format);
        let error = execute(&agent, deploy_params(&disk.name(), info, None))
            .await
            .unwrap_err();
        assert!(
            error.contains("larger")
                || error.contains("does not fit")
                || error.contains("too large"),
            "{name}: {error}"
        );
        assert!(
            has_partition_table(&disk.device),
            "{name}: the disk was touched: {error}"
        );
    }
}

/// Without streaming, the image goes to the spool, which is bounded by the
/// free space where it lives (a ramdisk's memory): an image that does not
/// fit fails without filling it, and the disk is unchanged.
#[tokio::test]
async fn without_streaming_the_spool_is_bounded_by_its_free_space() {
    let spool = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=80M", "tmpfs"])
        .arg(spool.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs for the spool");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(spool.path());
    // 32 MiB of data: more than the 80 MiB tmpfs leaves after the 64 MiB
    // the agent keeps for itself, less than the disk.
    let image: Vec<u8> = (0..32 * MIB).map(|i| (i % 251) as u8).collect();
    let server = serve(vec![("image.raw", Served::new(image.clone()))]);
    let disk = LoopDisk::new(DISK_SIZE);
    put_partition_table(&disk.device);
    let agent = handler(&[&disk], spool.path());
    let mut info = sha256_info(&server.url("image.raw"), &image, "raw");
    info["stream_raw_images"] = json!(false);
    let error = execute(&agent, deploy_params(&disk.name(), info, None))
        .await
        .unwrap_err();
    assert!(error.contains("free space of the spool"), "{error}");
    assert!(has_partition_table(&disk.device), "the disk was touched");
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
}
