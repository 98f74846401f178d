//! The `install_coreos` deploy step through the agent's command handler:
//! with the real coreos-installer installing a small CoreOS-like disk image
//! served over HTTP onto a loop device, and with stand-ins for the cases
//! around it (a pre-rendered config drive, no installer, an installer that
//! keeps failing, the host-root layout that runs it through chroot).
//!
//! Needs root and loop devices, sgdisk, mkfs.ext4, debugfs, blkid, partx,
//! unshare and busybox (static), as CI has. The real coreos-installer is
//! `COREOS_INSTALLER`, else `.work/coreos-installer/bin/coreos-installer`
//! (scripts/install-deps builds it), else on `PATH`; without one the test
//! is skipped, and fails under `CI`.
//!
//! Each test gives the agent its coreos-installer through a hardware
//! manager of its own (the generic one with other options), not through
//! `FERRIC_COREOS_INSTALLER`: tests of one binary share the environment.

use ferric_agent::commands::{CommandError, CommandHandler};
use ferric_agent::coreos::CoreosOptions;
use ferric_agent::deploy::DeployOptions;
use ferric_agent::hardware::{GenericHardwareManager, HardwareManager, StepCall, SupportLevel};
use ferric_agent::inventory::Filter;
use ferric_agent::server::RunningResult;
use ferric_agent::standard::{Disks, StandardHandler};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const IMAGE_SIZE: u64 = 64 * MIB;
/// The image's `boot` partition: sectors 2048 to 34815.
const BOOT_START: u64 = MIB;
const BOOT_SIZE: u64 = 16 * MIB;
const DISK_SIZE: u64 = 96 * MIB;
const NODE_UUID: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";

// ---------------------------------------------------------------- tools

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The real coreos-installer, if there is one here.
fn real_installer() -> Option<PathBuf> {
    if let Some(given) = std::env::var_os("COREOS_INSTALLER").filter(|v| !v.is_empty()) {
        let given = PathBuf::from(given);
        assert!(
            given.is_file(),
            "COREOS_INSTALLER={} does not exist",
            given.display()
        );
        return Some(given);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.work/coreos-installer/bin/coreos-installer");
    if built.is_file() {
        return Some(built);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("coreos-installer"))
        .find(|candidate| candidate.is_file())
}

/// coreos-installer waits for udev after re-reading the partition table,
/// then finds the `boot` filesystem by label in udev's database. Machines
/// without udevd (containers, this project's VMs, whose kernel also parses
/// no partition tables) get a stand-in in a mount namespace of the
/// installer's own: an empty /run with udev's control file, and a
/// `udevadm settle` that adds the partitions the kernel did not
/// (partx) and records their filesystems as udev's blkid builtin would.
/// With udevd running, the installer runs as it is.
fn with_udev(real: &Path, dir: &Path) -> PathBuf {
    if Path::new("/run/udev/control").exists() {
        return real.to_path_buf();
    }
    let bin = dir.join("udev-shim");
    std::fs::create_dir_all(&bin).unwrap();
    write_script(
        &bin.join("udevadm"),
        r#"#!/bin/sh
[ "$1" = settle ] || exit 0
disk=$FERRIC_TEST_DISK
partx -u "$disk" >/dev/null 2>&1 || partx -a "$disk" >/dev/null 2>&1 || true
for part in "$disk"p*; do
    [ -b "$part" ] || continue
    devno=$(cat "/sys/class/block/${part##*/}/dev")
    blkid -p -o udev "$part" | sed 's/^/E:/' >"/run/udev/data/b$devno"
done
"#,
    );
    let wrapper = dir.join("coreos-installer");
    write_script(
        &wrapper,
        &format!(
            r#"#!/bin/sh
# The disk is the last argument.
for arg; do FERRIC_TEST_DISK=$arg; done
export FERRIC_TEST_DISK
exec unshare --mount --propagation private /bin/sh -c '
    mount -t tmpfs ferric-test-udev /run &&
    mkdir -p /run/udev/data && : >/run/udev/control &&
    PATH="$0:$PATH" exec "$@"' '{bin}' '{real}' "$@"
"#,
            bin = bin.display(),
            real = real.display()
        ),
    );
    wrapper
}

/// The agent's log, kept to check what it shows (and never shows).
fn agent_log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        struct Writer;
        impl Write for Writer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                agent_log().lock().unwrap().extend_from_slice(buf);
                std::io::stderr().write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_writer(|| Writer)
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .try_init();
        Mutex::new(Vec::new())
    })
}

fn logged() -> String {
    String::from_utf8_lossy(&agent_log().lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------- disks

/// A loop device that scans partitions (coreos-installer re-reads the
/// partition table), over a sparse file of its own; detached on drop.
struct Disk {
    device: PathBuf,
    _dir: tempfile::TempDir,
}

impl Disk {
    fn new(size: u64) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("disk");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(size)
            .unwrap();
        // Parallel tests may pick the same free device: the loser retries.
        let mut attempt = 0;
        let out = loop {
            let out = Command::new("losetup")
                .args(["--find", "--show", "-P"])
                .arg(&backing)
                .output()
                .unwrap();
            attempt += 1;
            if out.status.success() || attempt == 10 {
                break out;
            }
            std::thread::sleep(Duration::from_millis(100 * attempt));
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Disk {
            device: PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()),
            _dir: dir,
        }
    }

    fn name(&self) -> String {
        self.device.to_str().unwrap().to_owned()
    }

    fn read_at(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut buf = vec![0; len as usize];
        std::fs::File::open(&self.device)
            .unwrap()
            .read_exact_at(&mut buf, offset)
            .unwrap();
        buf
    }

    fn fill_start(&self, byte: u8) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.device)
            .unwrap()
            .write_all_at(&vec![byte; MIB as usize], 0)
            .unwrap();
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// A CoreOS-like raw disk image, all coreos-installer needs to install it
/// and write an Ignition config: a GPT with a `boot` partition holding an
/// ext4 filesystem labelled `boot` (with a marker file), and a `root`
/// partition full of a pattern.
fn coreos_image(dir: &Path) -> Vec<u8> {
    let image = dir.join("coreos.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(IMAGE_SIZE)
        .unwrap();
    let path = image.to_str().unwrap();
    run(
        "sgdisk",
        &["-n", "1:2048:+16M", "-t", "1:8300", "-c", "1:boot", path],
    );
    run(
        "sgdisk",
        &["-n", "2:0:0", "-t", "2:8300", "-c", "2:root", path],
    );
    let tree = dir.join("boot-tree");
    std::fs::create_dir_all(tree.join("coreos")).unwrap();
    std::fs::write(tree.join("coreos/ferric-test-image"), "ferric test image\n").unwrap();
    let boot = dir.join("boot.ext4");
    std::fs::File::create(&boot)
        .unwrap()
        .set_len(BOOT_SIZE)
        .unwrap();
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-L",
            "boot",
            "-d",
            tree.to_str().unwrap(),
            boot.to_str().unwrap(),
        ],
    );
    let mut bytes = std::fs::read(&image).unwrap();
    let boot_end = (BOOT_START + BOOT_SIZE) as usize;
    bytes[BOOT_START as usize..boot_end].copy_from_slice(&std::fs::read(&boot).unwrap());
    let mut x: u32 = 7;
    for byte in &mut bytes[boot_end..(IMAGE_SIZE - MIB) as usize] {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *byte = (x >> 16) as u8;
    }
    bytes
}

/// A file of the filesystem in the `boot` partition of `disk`, read with
/// debugfs from a copy of the partition (partition device nodes may not
/// exist), with its mode.
fn boot_file(disk: &Disk, dir: &Path, path: &str) -> (String, String) {
    let copy = dir.join("boot-copy.ext4");
    std::fs::write(&copy, disk.read_at(BOOT_START, BOOT_SIZE)).unwrap();
    let copy = copy.to_str().unwrap();
    let text = run("debugfs", &["-R", &format!("cat {path}"), copy]);
    let stat = run("debugfs", &["-R", &format!("stat {path}"), copy]);
    let mode = stat
        .split_whitespace()
        .skip_while(|w| *w != "Mode:")
        .nth(1)
        .unwrap_or("")
        .to_owned();
    (text, mode)
}

// ---------------------------------------------------------------- server

/// Serves `body` as `/coreos.raw` on loopback (404 for the rest, such as
/// the `.sig` the installer looks for); counts the image's requests.
fn serve(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/coreos.raw", listener.local_addr().unwrap());
    let body = Arc::new(body);
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (body, counted) = (body.clone(), counted.clone());
            std::thread::spawn(move || {
                let _ = respond(stream, &body, &counted);
            });
        }
    });
    (url, requests)
}

fn respond(mut stream: TcpStream, body: &[u8], requests: &AtomicUsize) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    if path != "/coreos.raw" {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

// ---------------------------------------------------------------- agent

/// The generic manager with this test's coreos-installer options, ahead of
/// the handler's own for `install_coreos` only.
struct CoreosUnderTest(GenericHardwareManager);

impl HardwareManager for CoreosUnderTest {
    fn name(&self) -> &str {
        "CoreosUnderTest"
    }

    fn evaluate_hardware_support(&self) -> SupportLevel {
        SupportLevel::ServiceProvider
    }

    fn execute_step(&self, call: &StepCall<'_>) -> Option<Result<Value, CommandError>> {
        if call.name == "install_coreos" {
            self.0.execute_step(call)
        } else {
            None
        }
    }
}

fn disks(disk: &Disk) -> Disks {
    Disks::Only {
        sys_root: PathBuf::from("/"),
        filter: Filter { include_loop: true },
        names: vec![disk.name()],
    }
}

/// The stock handler, its coreos-installer options from the environment.
fn stock_agent(disk: &Disk) -> StandardHandler {
    agent_log();
    StandardHandler::new(disks(disk))
}

fn agent(disk: &Disk, options: CoreosOptions) -> StandardHandler {
    let generic = GenericHardwareManager::new(
        disks(disk),
        DeployOptions::default(),
        RunningResult::default(),
        Arc::default(),
    )
    .with_coreos_options(options);
    stock_agent(disk).with_hardware_manager(Arc::new(CoreosUnderTest(generic)))
}

fn options(installer: Option<PathBuf>, host_root: &Path) -> CoreosOptions {
    CoreosOptions {
        host_root: host_root.to_path_buf(),
        installer,
        retry_pause: Duration::from_millis(10),
    }
}

/// A secret only the Ignition config holds.
fn marker() -> String {
    format!("ferric-secret-{}", uuid::Uuid::new_v4().simple())
}

fn ignition(marker: &str) -> Value {
    json!({
        "ignition": {"version": "3.4.0"},
        "passwd": {"users": [{"name": "core", "passwordHash": marker}]},
    })
}

/// `execute_deploy_step` of install_coreos as Metal3's custom deploy asks
/// for it.
fn install_params(device: &str, instance_info: Value) -> Value {
    json!({
        "step": {"step": "install_coreos", "interface": "deploy", "priority": 80, "args": {}},
        "node": {"uuid": NODE_UUID,
                 "properties": {"root_device": {"name": device}},
                 "instance_info": instance_info},
        "ports": [],
    })
}

async fn execute(agent: &StandardHandler, params: Value) -> Result<Value, String> {
    agent
        .run("deploy", "execute_deploy_step", params)
        .await
        .map_err(|e| e.details)
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn install_coreos_and_write_image_are_listed_to_run_only_when_requested() {
    let agent = StandardHandler::new(Disks::Only {
        sys_root: PathBuf::from("/"),
        filter: Filter::default(),
        names: Vec::new(),
    });
    let listed = agent
        .run(
            "deploy",
            "get_deploy_steps",
            json!({"node": {}, "ports": []}),
        )
        .await
        .unwrap();
    let steps = listed["deploy_steps"]["GenericHardwareManager"]
        .as_array()
        .unwrap();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("{name} is not listed: {listed}"))
    };
    let install = step("install_coreos");
    assert_eq!(install["priority"], 0);
    assert_eq!(install["interface"], "deploy");
    assert_eq!(install["reboot_requested"], false);
    assert_eq!(install["argsinfo"], Value::Null);
    assert_eq!(step("write_image")["priority"], 0);
}

#[tokio::test]
async fn coreos_installer_installs_the_image_with_the_ignition_config() {
    let Some(real) = real_installer() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "coreos-installer is missing: set COREOS_INSTALLER or run scripts/install-deps"
        );
        eprintln!(
            "skipped: no coreos-installer (COREOS_INSTALLER, .work/coreos-installer, PATH); \
             scripts/install-deps builds it"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = coreos_image(dir.path());
    let (url, requests) = serve(image.clone());
    let disk = Disk::new(DISK_SIZE);
    let installer = with_udev(&real, dir.path());
    let agent = agent(
        &disk,
        options(Some(installer), &dir.path().join("no-host-root")),
    );
    let secret = marker();
    let config = ignition(&secret);
    let params = install_params(
        &disk.name(),
        json!({"image_source": url,
               "configdrive": {"user_data": config,
                               "meta_data": {"uuid": NODE_UUID, "name": "coreos-1"}}}),
    );

    let done = execute(&agent, params.clone()).await.unwrap();
    assert_eq!(done["deploy_step"], params["step"]);
    let result = &done["deploy_result"];
    assert_eq!(
        result["result"],
        format!("install_coreos: CoreOS installed on device {}", disk.name())
    );
    assert_eq!(result["device"], disk.name());
    assert_eq!(result["image_source"], url);
    assert_eq!(result["offline"], false);
    assert_eq!(result["ignition"], true);
    assert_eq!(result["attempts"], 1);
    assert!(requests.load(Ordering::SeqCst) >= 1);

    // The image is on the disk: its partition table and root partition as
    // they were, its boot filesystem with the Ignition config added.
    assert!(disk.read_at(0, BOOT_START) == image[..BOOT_START as usize]);
    let rest = BOOT_START + BOOT_SIZE;
    assert!(disk.read_at(rest, IMAGE_SIZE - rest) == image[rest as usize..]);
    let (written, mode) = boot_file(&disk, dir.path(), "/ignition/config.ign");
    assert_eq!(serde_json::from_str::<Value>(&written).unwrap(), config);
    assert_eq!(mode, "0600");
    let (marker_file, _) = boot_file(&disk, dir.path(), "/coreos/ferric-test-image");
    assert_eq!(marker_file, "ferric test image\n");

    // The installer's output went to the agent's log; the config did not.
    let log = logged();
    assert!(
        log.contains("coreos-installer: Writing Ignition config"),
        "{log}"
    );
    assert!(!log.contains(&secret));
    assert!(!done.to_string().contains(&secret));
}

#[tokio::test]
async fn a_pre_rendered_config_drive_is_refused_before_the_disk_is_touched() {
    let disk = Disk::new(DISK_SIZE);
    disk.fill_start(0xa5);
    let agent = stock_agent(&disk);
    let drive = "H4sIAAAAAAAAA+3BMQEAAADCoPVPbQwfoAAAAAAAAAAAAAAAAAAAAIC3AYbSVKsAKAAA";
    let error = execute(
        &agent,
        install_params(
            &disk.name(),
            json!({"image_source": "http://127.0.0.1:9/coreos.raw", "configdrive": drive}),
        ),
    )
    .await
    .unwrap_err();
    assert!(
        error.contains(
            "cannot use a pre-rendered config drive with install_coreos; pass it as a dict/JSON"
        ),
        "{error}"
    );
    assert!(!error.contains(drive));
    assert!(!logged().contains(drive));
    assert!(disk.read_at(0, MIB).iter().all(|&b| b == 0xa5));
}

#[tokio::test]
async fn a_missing_installer_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::new(DISK_SIZE);
    let missing = dir.path().join("bin/coreos-installer");
    let agent = agent(
        &disk,
        CoreosOptions {
            retry_pause: Duration::from_secs(30),
            ..options(Some(missing.clone()), dir.path())
        },
    );
    let started = Instant::now();
    let error = execute(
        &agent,
        install_params(
            &disk.name(),
            json!({"configdrive": {"user_data": ignition("x")}}),
        ),
    )
    .await
    .unwrap_err();
    assert!(
        error.starts_with("coreos-installer is not installed: "),
        "{error}"
    );
    assert!(error.contains(missing.to_str().unwrap()), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not retried: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_failing_installer_runs_three_times_then_fails_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::new(DISK_SIZE);
    let runs = dir.path().join("runs");
    let installer = dir.path().join("coreos-installer");
    // Each run records its arguments and the Ignition file's mode, then
    // floods stderr (only the end is kept) and fails.
    write_script(
        &installer,
        &format!(
            r#"#!/bin/sh
echo "$*" >>'{runs}'
while [ $# -gt 0 ]; do
    [ "$1" = --ignition-file ] && stat -c '%a %n' "$2" >>'{runs}'
    shift
done
i=0
while [ $i -lt 200 ]; do echo "noise $i: the quick brown fox jumps over the lazy dog" >&2; i=$((i+1)); done
echo "Error: install failed (the test's installer)" >&2
exit 3
"#,
            runs = runs.display()
        ),
    );
    let agent = agent(&disk, options(Some(installer), dir.path()));
    let secret = marker();
    let error = execute(
        &agent,
        install_params(
            &disk.name(),
            json!({"configdrive": {"user_data": ignition(&secret)}}),
        ),
    )
    .await
    .unwrap_err();
    assert!(error.contains("coreos-installer failed 3 times"), "{error}");
    assert!(error.contains("exit status: 3"), "{error}");
    assert!(
        error.ends_with("Error: install failed (the test's installer)"),
        "{error}"
    );
    assert!(
        !error.contains("noise 0:"),
        "only the end of stderr: {error}"
    );
    assert!(error.len() < 2048 + 200, "{} bytes: {error}", error.len());
    assert!(!error.contains(&secret));

    let runs = std::fs::read_to_string(runs).unwrap();
    let lines: Vec<&str> = runs.lines().collect();
    assert_eq!(lines.len(), 6, "three runs: {runs}");
    let args: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(
        args[..3],
        ["install", "--preserve-on-error", "--ignition-file"]
    );
    assert_eq!(args[4..], ["--offline", disk.name().as_str()]);
    let ignition_file = Path::new(args[3]);
    assert_eq!(lines[1], format!("600 {}", ignition_file.display()));
    assert!(
        !ignition_file.parent().unwrap().exists(),
        "the Ignition config's directory is removed"
    );
    let log = logged();
    assert!(log.contains("Error: install failed (the test's installer)"));
    assert!(!log.contains(&secret));
}

#[tokio::test]
async fn in_a_container_the_installer_runs_in_the_host_root() {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("busybox (static) is installed: scripts/install-deps");
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    for sub in ["bin", "usr/bin", "tmp"] {
        std::fs::create_dir_all(host.join(sub)).unwrap();
    }
    std::fs::copy(busybox, host.join("bin/busybox")).unwrap();
    // Records, inside the host root, what it was run with and what it read.
    write_script(
        &host.join("usr/bin/coreos-installer"),
        r#"#!/bin/busybox sh
for arg; do echo "$arg"; done >/tmp/args
while [ $# -gt 0 ]; do
    if [ "$1" = --ignition-file ]; then
        /bin/busybox cat "$2" >/tmp/ignition-seen
        /bin/busybox stat -c %a "$2" >/tmp/ignition-mode
    fi
    shift
done
"#,
    );
    let disk = Disk::new(DISK_SIZE);
    disk.fill_start(0x5a);
    let agent = agent(&disk, options(None, &host));
    let config = ignition(&marker());
    let done = execute(
        &agent,
        install_params(&disk.name(), json!({"configdrive": {"user_data": config}})),
    )
    .await
    .unwrap();
    assert_eq!(done["deploy_result"]["offline"], true);
    assert_eq!(done["deploy_result"]["image_source"], Value::Null);

    let args = std::fs::read_to_string(host.join("tmp/args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(args.len(), 6, "{args:?}");
    assert_eq!(
        args[..3],
        ["install", "--preserve-on-error", "--ignition-file"]
    );
    assert!(
        args[3].starts_with("/tmp/ferric-coreos-") && args[3].ends_with("/config.ign"),
        "a path inside the host root: {}",
        args[3]
    );
    assert_eq!(args[4..], ["--offline", disk.name().as_str()]);
    let seen = std::fs::read_to_string(host.join("tmp/ignition-seen")).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&seen).unwrap(), config);
    let mode = std::fs::read_to_string(host.join("tmp/ignition-mode")).unwrap();
    assert_eq!(mode.trim(), "600");
    let mut left: Vec<String> = std::fs::read_dir(host.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["args", "ignition-mode", "ignition-seen"]);
    assert!(disk.read_at(0, MIB).iter().all(|&b| b == 0x5a));
}
