//! `standby.power_off`, `standby.run_image`, `system.lockdown` (with a
//! recording power control: these tests must never power this machine
//! off), `log.collect_system_logs` (listed by the real tar) and
//! `image.install_bootloader` on a loop device with real partitions and
//! file systems (needs root, losetup, sgdisk, mkfs.vfat, mkfs.ext4, blkid).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ferric_agent::bootloader::{BootMode, BootloaderOptions};
use ferric_agent::commands::CommandHandler;
use ferric_agent::inventory::Filter;
use ferric_agent::logs::LogOptions;
use ferric_agent::server::{router, CommandApi};
use ferric_agent::standard::{Disks, StandardHandler};
use ferric_agent::system::{Power, PowerAction, PowerControl};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// Records what it is asked to do instead of doing it.
#[derive(Default)]
struct RecordedPower {
    events: Mutex<Vec<String>>,
    refuse: bool,
}

impl PowerControl for RecordedPower {
    fn sync(&self) {
        self.events.lock().unwrap().push("sync".to_owned());
    }

    fn act(&self, action: PowerAction) -> std::io::Result<()> {
        self.events.lock().unwrap().push(format!("{action:?}"));
        if self.refuse {
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
}

impl RecordedPower {
    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

fn agent_with(power: Arc<RecordedPower>, disks: Vec<String>) -> StandardHandler {
    StandardHandler::new(Disks::Only {
        sys_root: PathBuf::from("/"),
        filter: Filter { include_loop: true },
        names: disks,
    })
    .with_power(Power::new(power, Duration::ZERO))
}

#[tokio::test]
async fn power_off_and_run_image_sync_then_call_the_kernel() {
    let power = Arc::new(RecordedPower::default());
    let agent = agent_with(power.clone(), vec![]);
    assert!(!agent.is_synchronous("standby", "power_off"));
    assert!(!agent.is_synchronous("standby", "run_image"));

    let done = agent.run("standby", "power_off", json!({})).await.unwrap();
    assert_eq!(done, Value::Null);
    assert_eq!(power.events(), ["sync", "PowerOff"]);
    agent.run("standby", "run_image", json!({})).await.unwrap();
    assert_eq!(power.events(), ["sync", "PowerOff", "sync", "Reboot"]);

    let refusing = Arc::new(RecordedPower {
        refuse: true,
        ..RecordedPower::default()
    });
    let agent = agent_with(refusing.clone(), vec![]);
    let error = agent
        .run("standby", "power_off", json!({}))
        .await
        .unwrap_err();
    assert_eq!(error.error_type, "SystemRebootError", "{error}");
    assert!(error.details.contains("power off"), "{error}");
    assert_eq!(refusing.events(), ["sync", "PowerOff"]);
}

async fn post(app: &axum::Router, name: &str, params: Value) -> (StatusCode, Value) {
    let request = Request::post("/v1/commands/?wait=true")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"name": name, "params": params}).to_string(),
        ))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn lockdown_refuses_every_later_command_and_powers_off() {
    let power = Arc::new(RecordedPower::default());
    let agent = agent_with(power.clone(), vec![]);
    assert!(agent.is_synchronous("system", "lockdown"));
    let app = router(CommandApi::new(Arc::new(agent.clone()), None, "test"));

    let (status, before) = post(&app, "standby.sync", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{before}");
    assert_eq!(power.events(), ["sync"]);

    let (status, locked) = post(&app, "system.lockdown", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{locked}");
    assert_eq!(locked["command_status"], "SUCCEEDED", "{locked}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while power.events().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "never powered off: {:?}",
            power.events()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(power.events(), ["sync", "sync", "PowerOff"]);

    for name in ["standby.sync", "clean.get_clean_steps", "system.lockdown"] {
        let (status, refused) = post(&app, name, json!({})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {refused}");
        assert_eq!(refused["type"], "AgentLockedDown", "{name}: {refused}");
    }
    assert!(agent.is_locked_down());
    let error = agent.run("standby", "sync", json!({})).await.unwrap_err();
    assert_eq!(error.error_type, "AgentLockedDown");
    assert_eq!(power.events().len(), 3, "nothing ran after the lockdown");
}

/// Runs `script` with `input` on stdin; its stdout.
fn shell(script: &str, input: &[u8]) -> String {
    let mut child = Command::new("/bin/sh")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script} failed");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn system_logs_are_a_base64_gzipped_tar() {
    let logs = tempfile::tempdir().unwrap();
    let log_file = logs.path().join("agent.log");
    std::fs::write(
        &log_file,
        "booted with ipa-agent-token=TOPSECRET123 console=ttyS0\nall good\n",
    )
    .unwrap();
    let big = logs.path().join("big.log");
    // 100 kB of lines, the first cut by the 64 kB entry limit carrying a token
    // whose key would be lost with the cut.
    let line = format!("{}\n", "x".repeat(99));
    let mut long = "ipa-agent-token=CUTSECRET ".repeat(2_000);
    long.push('\n');
    long.push_str(&line.repeat(500));
    long.push_str("THE END\n");
    std::fs::write(&big, &long).unwrap();
    let options = LogOptions {
        paths: vec![PathBuf::from("/var/log"), logs.path().to_owned()],
        max_entry: 64 * 1024,
        ..LogOptions::default()
    };
    let agent = agent_with(Arc::default(), vec![]).with_log_options(options);
    assert!(agent.is_synchronous("log", "collect_system_logs"));

    let done = agent
        .run("log", "collect_system_logs", json!({}))
        .await
        .unwrap();
    let text = done["system_logs"].as_str().unwrap();
    let listing = shell("base64 -d | tar tzf -", text.as_bytes());
    let entries: Vec<&str> = listing.lines().collect();
    for expected in ["df", "ip_addr", "lsblk", "mount"] {
        assert!(
            entries.contains(&expected),
            "{expected} missing from {entries:?}"
        );
    }
    // Programs this machine lacks are left out, not failed.
    if which("lshw").is_none() {
        assert!(!entries.contains(&"lshw"));
    }
    let name = log_file.to_str().unwrap().trim_start_matches('/');
    assert!(entries.contains(&name), "{name} missing from {entries:?}");

    let content = shell(&format!("base64 -d | tar xzOf - {name}"), text.as_bytes());
    assert!(!content.contains("TOPSECRET123"), "{content}");
    assert!(
        content.contains("ipa-agent-token=*** console=ttyS0"),
        "{content}"
    );
    // A long log keeps its end, within the entry limit.
    let big_name = big.to_str().unwrap().trim_start_matches('/');
    let tail = shell(
        &format!("base64 -d | tar xzOf - {big_name}"),
        text.as_bytes(),
    );
    assert!(
        tail.len() <= 64 * 1024 && tail.len() > 45 * 1024,
        "{}",
        tail.len()
    );
    assert!(tail.ends_with("THE END\n"));
    assert!(tail.starts_with('x'), "the cut first line is dropped");
    assert!(!tail.contains("SECRET"), "a token whose key was cut off");
}

fn which(program: &str) -> Option<PathBuf> {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(program))
    .find(|p| p.is_file())
}

// ------------------------------------------------------------ bootloader

fn run_tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A loop device that scans partitions, detached on drop.
struct PartitionedDisk {
    device: String,
    _dir: tempfile::TempDir,
}

impl PartitionedDisk {
    /// GPT: 1 = EFI system partition (vfat, with `EFI/BOOT/BOOTX64.EFI`
    /// and shim's `EFI/centos/BOOTX64.CSV`), 2 = root (ext4 with the UUID
    /// given).
    fn new(root_fs_uuid: &str) -> PartitionedDisk {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("disk");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(96 << 20)
            .unwrap();
        let mut attempt = 0;
        let device = loop {
            let out = Command::new("losetup")
                .args(["--find", "--show", "--partscan"])
                .arg(&backing)
                .output()
                .unwrap();
            attempt += 1;
            if out.status.success() {
                break String::from_utf8(out.stdout).unwrap().trim().to_owned();
            }
            assert!(attempt < 10, "{}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(100 * attempt));
        };
        let disk = PartitionedDisk { device, _dir: dir };
        run_tool(
            "sgdisk",
            &[
                "-o",
                "-n1:0:+32M",
                "-t1:ef00",
                "-n2:0:0",
                "-t2:8300",
                &disk.device,
            ],
        );
        // BLKRRPART does not always make the kernel add loop partitions.
        run_tool("partx", &["-u", &disk.device]);
        let (esp, root) = (disk.part(1), disk.part(2));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(Path::new(&esp).exists() && Path::new(&root).exists()) {
            assert!(Instant::now() < deadline, "{esp} and {root} never appeared");
            std::thread::sleep(Duration::from_millis(50));
        }
        run_tool("mkfs.vfat", &[&esp]);
        run_tool("mkfs.ext4", &["-q", "-U", root_fs_uuid, &root]);
        // With mtools, as this machine's kernel has no vfat.
        let files = tempfile::tempdir().unwrap();
        let loader = files.path().join("loader");
        std::fs::write(&loader, b"MZ not really a loader").unwrap();
        // shim's CSV: UTF-16 with a byte order mark.
        let csv = files.path().join("csv");
        let text: Vec<u8> = "\u{feff}shimx64.efi,CentOS,,This is the boot entry for CentOS\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        std::fs::write(&csv, text).unwrap();
        run_tool(
            "mmd",
            &["-i", &esp, "::/EFI", "::/EFI/BOOT", "::/EFI/centos"],
        );
        run_tool(
            "mcopy",
            &[
                "-i",
                &esp,
                loader.to_str().unwrap(),
                "::/EFI/BOOT/BOOTX64.EFI",
            ],
        );
        run_tool(
            "mcopy",
            &[
                "-i",
                &esp,
                loader.to_str().unwrap(),
                "::/EFI/centos/shimx64.efi",
            ],
        );
        run_tool(
            "mcopy",
            &[
                "-i",
                &esp,
                csv.to_str().unwrap(),
                "::/EFI/centos/BOOTX64.CSV",
            ],
        );
        disk
    }

    fn part(&self, n: u32) -> String {
        format!("{}p{n}", self.device)
    }

    fn part_uuid(&self, n: u32) -> String {
        let info = run_tool("sgdisk", &["-i", &n.to_string(), &self.device]);
        info.lines()
            .find_map(|l| l.strip_prefix("Partition unique GUID: "))
            .unwrap()
            .trim()
            .to_ascii_lowercase()
    }
}

impl Drop for PartitionedDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

fn no_mounts_left() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains("ferric-mnt-"),
        "a mount was left behind:\n{mounts}"
    );
}

async fn install(agent: &StandardHandler, params: Value) -> Result<String, String> {
    agent
        .run("image", "install_bootloader", params)
        .await
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .map_err(|e| format!("{}: {}", e.error_type, e.details))
}

#[tokio::test]
async fn install_bootloader_finds_partitions_by_uuid_and_fails_clearly() {
    let root_fs_uuid = "6a1b4c2e-1f3d-4e5a-9b7c-0d1e2f3a4b5c";
    let disk = PartitionedDisk::new(root_fs_uuid);
    let uefi = |efibootmgr: &Path| BootloaderOptions {
        boot_mode: Some(BootMode::Uefi),
        efibootmgr: efibootmgr.to_owned(),
        ..BootloaderOptions::default()
    };
    let agent = |options: BootloaderOptions| {
        agent_with(Arc::default(), vec![disk.device.clone()]).with_bootloader_options(options)
    };
    let node = json!({"node": {"uuid": "n-1", "properties": {"root_device": {"name": disk.device}}}, "ports": []});

    // Checked before it starts: the API refuses with 400.
    let bios = agent(BootloaderOptions {
        boot_mode: Some(BootMode::Bios),
        ..BootloaderOptions::default()
    });
    assert!(!bios.is_synchronous("image", "install_bootloader"));
    for bad in [
        json!({"root_uuid": null, "target_boot_mode": "legacy"}),
        json!({"root_uuid": "; rm -rf /"}),
        json!({"efi_system_part_uuid": null}),
    ] {
        let error = bios
            .validate("image", "install_bootloader", &bad)
            .unwrap_err();
        assert_eq!(error.code, 400, "{bad}: {error}");
    }

    // The disk comes from the node's root device hints.
    bios.run("deploy", "get_deploy_steps", node.clone())
        .await
        .unwrap();

    // A UUID that is on no partition: the error says which and lists them.
    let unknown = "0b0e5a2c-0000-4000-8000-000000000000";
    let error = install(&bios, json!({"root_uuid": unknown}))
        .await
        .unwrap_err();
    assert!(error.starts_with("DeviceNotFound"), "{error}");
    assert!(
        error.contains(unknown) && error.contains(&disk.device),
        "{error}"
    );
    assert!(error.contains(&disk.part_uuid(2)), "{error}");
    assert!(error.contains(root_fs_uuid), "{error}");
    let error = install(
        &bios,
        json!({"root_uuid": null, "efi_system_part_uuid": unknown}),
    )
    .await
    .unwrap_err();
    assert!(error.contains("EFI system partition UUID"), "{error}");

    // BIOS, whole-disk image: nothing to do.
    let done = install(
        &bios,
        json!({"root_uuid": null, "target_boot_mode": "bios"}),
    )
    .await
    .unwrap();
    assert!(done.contains("whole-disk image"), "{done}");

    // BIOS, partition image (found by its filesystem UUID): grub-install
    // in a chroot is off by default (CVE-2026-43003) ...
    let error = install(&bios, json!({"root_uuid": root_fs_uuid}))
        .await
        .unwrap_err();
    assert!(error.contains("CVE-2026-43003"), "{error}");
    // ... and when enabled, fails readably on a root without GRUB,
    // leaving nothing mounted.
    let enabled = agent(BootloaderOptions {
        boot_mode: Some(BootMode::Bios),
        enable_bios_bootloader_install: true,
        ..BootloaderOptions::default()
    });
    enabled
        .run("deploy", "get_deploy_steps", node.clone())
        .await
        .unwrap();
    let error = install(&enabled, json!({"root_uuid": root_fs_uuid.to_uppercase()}))
        .await
        .unwrap_err();
    assert!(
        error.contains("neither grub2-install nor grub-install"),
        "{error}"
    );
    assert!(error.contains(&disk.part(2)), "{error}");
    no_mounts_left();
    // Asked to ignore failures, it reports success with the reason.
    let done = install(
        &enabled,
        json!({"root_uuid": root_fs_uuid, "ignore_bootloader_failure": true}),
    )
    .await
    .unwrap();
    assert!(done.contains("ignored as asked"), "{done}");

    // UEFI without efibootmgr (this machine has none): the loader shim's
    // CSV names is found on the ESP, no entry set, and the answer says so.
    let without = agent(uefi(Path::new("/nonexistent/efibootmgr")));
    without
        .run("deploy", "get_deploy_steps", node.clone())
        .await
        .unwrap();
    let done = install(
        &without,
        json!({"root_uuid": null, "target_boot_mode": "uefi"}),
    )
    .await
    .unwrap();
    assert!(done.contains("\\EFI\\centos\\shimx64.efi"), "{done}");
    assert!(done.contains("efibootmgr is not available"), "{done}");
    no_mounts_left();

    // With efibootmgr: the real one is absent here, so a stand-in that
    // records its arguments shows the calls (found by the ESP's UUID).
    let tools = tempfile::tempdir().unwrap();
    let calls = tools.path().join("calls");
    let efibootmgr = tools.path().join("efibootmgr");
    std::fs::write(
        &efibootmgr,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {}\n[ \"$1\" = -v ] && [ $# -eq 1 ] && printf 'BootCurrent: 0001\\nBoot0003* ferric1\\tHD(1,GPT)\\nBoot0004* CentOS\\tHD(1,GPT)\\n'\nexit 0\n",
            calls.display()
        ),
    )
    .unwrap();
    run_tool("chmod", &["755", efibootmgr.to_str().unwrap()]);
    let with = agent(uefi(&efibootmgr));
    with.run("deploy", "get_deploy_steps", node.clone())
        .await
        .unwrap();
    let done = install(
        &with,
        json!({"root_uuid": null, "efi_system_part_uuid": disk.part_uuid(1)}),
    )
    .await
    .unwrap();
    assert!(done.contains("EFI boot entries set"), "{done}");
    let recorded = std::fs::read_to_string(&calls).unwrap();
    let lines: Vec<&str> = recorded.lines().collect();
    assert_eq!(
        lines,
        [
            "-v".to_owned(),
            "-b 0004 -B".to_owned(),
            format!(
                "-v -c -d {} -p 1 -w -L CentOS -l \\EFI\\centos\\shimx64.efi",
                disk.device
            ),
        ]
    );
    no_mounts_left();
}
