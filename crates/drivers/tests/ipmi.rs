//! The ipmitool interfaces against a real BMC: OpenIPMI's `ipmi_sim` on a
//! loopback UDP port, driven by the real `ipmitool` (Debian packages
//! `openipmi` and `ipmitool`). The simulated chassis keeps its power state
//! and boot device in files, so no VM is needed.

use ferric_drivers::ipmi::{IpmiManagement, IpmiOptions, IpmiPower, IpmiTool};
use ferric_drivers::{
    BootDevice, BootDeviceInfo, DriverError, ManagementInterface, PowerInterface,
};
use ferric_types::{Node, PowerState, ProvisionState};
use serde_json::{json, Value};
use std::fs;
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

const USERNAME: &str = "admin";
const PASSWORD: &str = "Pw-0f-the-BMC-7d1c";

/// The chassis of the simulated BMC. ipmi_sim runs it as
/// `chassis.sh DIR get PARM...` (printing `PARM:VALUE` lines) and
/// `chassis.sh DIR set PARM VALUE...`; every call is appended to calls.log.
const CHASSIS_SCRIPT: &str = r#"#!/bin/sh
dir=$1
op=$2
shift 2
echo "$op $*" >> "$dir/calls.log"
case $op in
get)
    for parm in "$@"; do
        case $parm in
        power) echo "power:$(cat "$dir/power")" ;;
        boot) echo "boot:$(cat "$dir/boot")" ;;
        esac
    done
    ;;
set)
    while [ $# -ge 2 ]; do
        case $1 in
        power) echo "$2" > "$dir/power" ;;
        # An ACPI-aware guest that shuts down at once.
        shutdown) [ "$2" = 1 ] && echo 0 > "$dir/power" ;;
        boot) echo "$2" > "$dir/boot" ;;
        esac
        shift 2
    done
    ;;
esac
exit 0
"#;

fn require(program: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let path = Path::new(dir).join(program);
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "{program} is not installed: these tests need the Debian packages openipmi and ipmitool \
         (scripts/install-deps)"
    );
}

/// A directory removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::new_v4()));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One ipmi_sim on 127.0.0.1, with user `admin` and [`PASSWORD`].
struct VirtualBmc {
    dir: TempDir,
    port: u16,
    sim: Option<Child>,
}

impl VirtualBmc {
    fn start() -> VirtualBmc {
        require("ipmitool");
        let dir = TempDir::new("ferric-ipmi-sim");
        let path = dir.0.clone();
        write_executable(&path.join("chassis.sh"), CHASSIS_SCRIPT);
        fs::write(path.join("power"), "0\n").unwrap();
        fs::write(path.join("boot"), "default\n").unwrap();
        fs::write(
            path.join("bmc.emu"),
            "mc_setbmc 0x20\n\
             mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
             sel_enable 0x20 1000 0x0a\n\
             mc_enable 0x20\n",
        )
        .unwrap();
        fs::create_dir_all(path.join("state")).unwrap();
        let mut bmc = VirtualBmc {
            dir,
            port: free_udp_port(),
            sim: None,
        };
        bmc.run_sim();
        bmc
    }

    fn path(&self) -> &Path {
        &self.dir.0
    }

    fn write_lan_conf(&self) {
        let path = self.path();
        let auths = "none md2 md5 straight";
        let conf = format!(
            "name \"ferric-test-bmc\"\n\
             set_working_mc 0x20\n\
             startlan 1\n\
             \x20 addr 127.0.0.1 {port}\n\
             \x20 priv_limit admin\n\
             \x20 allowed_auths_callback {auths}\n\
             \x20 allowed_auths_user {auths}\n\
             \x20 allowed_auths_operator {auths}\n\
             \x20 allowed_auths_admin {auths}\n\
             \x20 guid a123456789abcdefa123456789abcdef\n\
             endlan\n\
             chassis_control \"{script} {dir}\"\n\
             user 1 true \"\" \"\" user 10 {auths}\n\
             user 2 true \"{USERNAME}\" \"{PASSWORD}\" admin 10 {auths}\n",
            port = self.port,
            script = path.join("chassis.sh").display(),
            dir = path.display(),
        );
        fs::write(path.join("lan.conf"), conf).unwrap();
    }

    /// Starts ipmi_sim and waits until it answers.
    fn run_sim(&mut self) {
        let ipmi_sim = require("ipmi_sim");
        self.write_lan_conf();
        let path = self.path().to_path_buf();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path.join("ipmi_sim.log"))
            .unwrap();
        let child = Command::new(ipmi_sim)
            .arg("-c")
            .arg(path.join("lan.conf"))
            .arg("-f")
            .arg(path.join("bmc.emu"))
            .arg("-s")
            .arg(path.join("state"))
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("ipmi_sim starts");
        self.sim = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = Command::new("ipmitool")
                .args(["-I", "lanplus", "-H", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .args(["-U", USERNAME, "-E", "-C", "3", "-R", "1", "-N", "1"])
                .args(["power", "status"])
                .env("IPMI_PASSWORD", PASSWORD)
                .env("IPMITOOL_PASSWORD", PASSWORD)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if status.success() {
                break;
            }
            if let Some(exit) = self.sim.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "ipmi_sim exited with {exit}: {}",
                    fs::read_to_string(path.join("ipmi_sim.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ipmi_sim did not answer on 127.0.0.1:{}: {}",
                self.port,
                fs::read_to_string(path.join("ipmi_sim.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.sim.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn power_file(&self) -> String {
        fs::read_to_string(self.path().join("power"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn boot_file(&self) -> String {
        fs::read_to_string(self.path().join("boot"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn calls(&self) -> String {
        fs::read_to_string(self.path().join("calls.log")).unwrap_or_default()
    }

    fn node(&self) -> Node {
        self.node_with(json!({}))
    }

    fn node_with(&self, extra: Value) -> Node {
        let mut node = Node::new(Uuid::new_v4(), "ipmi", ProvisionState::Manageable);
        node.driver_info = json!({
            "ipmi_address": "127.0.0.1",
            "ipmi_port": self.port,
            "ipmi_username": USERNAME,
            "ipmi_password": PASSWORD,
        })
        .as_object()
        .unwrap()
        .clone();
        for (key, value) in extra.as_object().unwrap() {
            node.driver_info.insert(key.clone(), value.clone());
        }
        node
    }
}

impl Drop for VirtualBmc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fast_options() -> IpmiOptions {
    IpmiOptions {
        min_command_interval: Duration::from_millis(200),
        command_retry_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        power_state_change_timeout: Duration::from_secs(10),
        soft_power_off_timeout: Duration::from_secs(10),
        ..IpmiOptions::default()
    }
}

fn interfaces(options: IpmiOptions) -> (IpmiPower, IpmiManagement) {
    let tool = Arc::new(IpmiTool::new(options));
    (IpmiPower::new(tool.clone()), IpmiManagement::new(tool))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_on_off_status_soft_off_and_reboot() {
    let bmc = VirtualBmc::start();
    let (power, _) = interfaces(fast_options());
    let node = bmc.node();
    power.validate(&node).unwrap();

    assert_eq!(power.get_power_state(&node).await.unwrap(), PowerState::Off);
    power
        .set_power_state(&node, PowerState::On, None)
        .await
        .unwrap();
    assert_eq!(bmc.power_file(), "1");
    assert_eq!(power.get_power_state(&node).await.unwrap(), PowerState::On);

    power
        .set_power_state(&node, PowerState::Off, None)
        .await
        .unwrap();
    assert_eq!(bmc.power_file(), "0");
    assert_eq!(power.get_power_state(&node).await.unwrap(), PowerState::Off);

    // Outside Ferric's knowledge the chassis comes on: the BMC says so.
    fs::write(bmc.path().join("power"), "1\n").unwrap();
    assert_eq!(power.get_power_state(&node).await.unwrap(), PowerState::On);

    power
        .set_power_state(&node, PowerState::SoftPowerOff, None)
        .await
        .unwrap();
    assert_eq!(bmc.power_file(), "0");
    assert!(bmc.calls().contains("set shutdown 1"), "{}", bmc.calls());

    // A reboot of a node that is on: off, then on (Ironic's way).
    power
        .set_power_state(&node, PowerState::On, None)
        .await
        .unwrap();
    fs::write(bmc.path().join("calls.log"), "").unwrap();
    power.reboot(&node, false, None).await.unwrap();
    assert_eq!(bmc.power_file(), "1");
    let calls = bmc.calls();
    let off = calls.find("set power 0").expect(&calls);
    let on = calls.rfind("set power 1").expect(&calls);
    assert!(off < on, "{calls}");

    // A reboot of a node that is off only powers it on.
    power
        .set_power_state(&node, PowerState::Off, None)
        .await
        .unwrap();
    fs::write(bmc.path().join("calls.log"), "").unwrap();
    power.reboot(&node, false, None).await.unwrap();
    assert_eq!(bmc.power_file(), "1");
    assert!(!bmc.calls().contains("set power 0"), "{}", bmc.calls());

    // Soft reboot: soft power off, then on.
    fs::write(bmc.path().join("calls.log"), "").unwrap();
    power.reboot(&node, true, None).await.unwrap();
    assert_eq!(bmc.power_file(), "1");
    assert!(bmc.calls().contains("set shutdown 1"), "{}", bmc.calls());

    let err = power
        .set_power_state(&node, PowerState::Rebooting, None)
        .await
        .unwrap_err();
    assert!(matches!(err, DriverError::InvalidParameter(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_state_the_bmc_never_reaches_times_out() {
    let bmc = VirtualBmc::start();
    let (power, _) = interfaces(fast_options());
    // The chassis ignores "power on".
    let stuck = CHASSIS_SCRIPT.replace("power) echo \"$2\" > \"$dir/power\" ;;", "power) : ;;");
    assert_ne!(stuck, CHASSIS_SCRIPT);
    write_executable(&bmc.path().join("chassis.sh"), &stuck);
    let node = bmc.node();
    let started = Instant::now();
    let err = power
        .set_power_state(&node, PowerState::On, Some(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    match &err {
        DriverError::Timeout { operation, timeout } => {
            assert_eq!(*timeout, Duration::from_secs(2));
            assert!(operation.contains(&node.uuid.to_string()), "{operation}");
            assert!(operation.contains("power on"), "{operation}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// A wrapper around the real ipmitool that appends each run's arguments
/// to `runs.log` in `dir`, one line per run.
fn recording_ipmitool(dir: &Path) -> PathBuf {
    let path = dir.join("ipmitool");
    write_executable(
        &path,
        &format!(
            "#!/bin/sh\necho \"$*\" >> {log}\nexec {ipmitool} \"$@\"\n",
            log = dir.join("runs.log").display(),
            ipmitool = require("ipmitool").display(),
        ),
    );
    path
}

/// The ipmitool commands (what follows `-v`) run since the last call.
fn take_commands(dir: &Path) -> Vec<String> {
    let log = dir.join("runs.log");
    let text = fs::read_to_string(&log).unwrap_or_default();
    fs::write(&log, "").unwrap();
    text.lines()
        .map(|l| l.split_once(" -v ").map_or(l, |(_, c)| c).to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_device_persistent_and_once_in_bios_and_uefi_mode() {
    let bmc = VirtualBmc::start();
    let spy = TempDir::new("ferric-ipmi-record");
    let (_, management) = interfaces(IpmiOptions {
        ipmitool: recording_ipmitool(&spy.0),
        ..fast_options()
    });
    let mut bios = bmc.node();
    bios.properties
        .insert("capabilities".into(), json!("boot_mode:bios"));
    management.validate(&bios).unwrap();
    let supported = management.supported_boot_devices(&bios);
    for device in [
        BootDevice::Pxe,
        BootDevice::Disk,
        BootDevice::Cdrom,
        BootDevice::Bios,
    ] {
        assert!(supported.contains(&device), "{supported:?}");
    }

    // ipmi_sim keeps the device (it hands it to the chassis script) but
    // not the flags: it reads back as valid for the next boot only, so
    // persistence is checked on what was sent.
    management
        .set_boot_device(&bios, BootDevice::Pxe, true)
        .await
        .unwrap();
    assert_eq!(
        take_commands(&spy.0),
        [
            "raw 0x00 0x08 0x03 0x08",
            "chassis bootdev pxe options=persistent"
        ]
    );
    let read = management.get_boot_device(&bios).await.unwrap();
    assert_eq!(read.boot_device, Some(BootDevice::Pxe));
    assert_eq!(take_commands(&spy.0), ["chassis bootparam get 5"]);
    assert_eq!(bmc.boot_file(), "pxe");

    management
        .set_boot_device(&bios, BootDevice::Disk, false)
        .await
        .unwrap();
    assert_eq!(
        take_commands(&spy.0),
        ["raw 0x00 0x08 0x03 0x08", "chassis bootdev disk"]
    );
    assert_eq!(
        management.get_boot_device(&bios).await.unwrap(),
        BootDeviceInfo {
            boot_device: Some(BootDevice::Disk),
            persistent: Some(false)
        }
    );
    assert_eq!(bmc.boot_file(), "default");

    // UEFI, Ironic's default boot mode: the raw command with the EFI bit,
    // and no boot timeout command when the node says so.
    let uefi = bmc.node_with(json!({"ipmi_disable_boot_timeout": "false"}));
    take_commands(&spy.0);
    management
        .set_boot_device(&uefi, BootDevice::Cdrom, true)
        .await
        .unwrap();
    assert_eq!(
        take_commands(&spy.0),
        ["raw 0x00 0x08 0x05 0xe0 0x14 0x00 0x00 0x00"]
    );
    assert_eq!(
        management.get_boot_device(&uefi).await.unwrap().boot_device,
        Some(BootDevice::Cdrom)
    );
    assert_eq!(bmc.boot_file(), "cdrom");
    assert_eq!(take_commands(&spy.0), ["chassis bootparam get 5"]);
    management
        .set_boot_device(&uefi, BootDevice::Pxe, false)
        .await
        .unwrap();
    assert_eq!(
        take_commands(&spy.0),
        ["raw 0x00 0x08 0x05 0xa0 0x04 0x00 0x00 0x00"]
    );
    assert_eq!(
        management.get_boot_device(&uefi).await.unwrap().boot_device,
        Some(BootDevice::Pxe)
    );
    assert_eq!(bmc.boot_file(), "pxe");

    let err = management
        .set_boot_device(&uefi, BootDevice::Floppy, false)
        .await
        .unwrap_err();
    assert!(matches!(err, DriverError::InvalidParameter(_)), "{err}");
    assert!(err.to_string().contains("floppy"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_boot_device_is_set_again_before_power_on() {
    let bmc = VirtualBmc::start();
    let (power, management) = interfaces(fast_options());
    let mut node = bmc.node_with(json!({"ipmi_force_boot_device": true}));
    node.properties
        .insert("capabilities".into(), json!("boot_mode:bios"));
    management
        .set_boot_device(&node, BootDevice::Pxe, true)
        .await
        .unwrap();
    assert_eq!(
        management.get_boot_device(&node).await.unwrap(),
        BootDeviceInfo {
            boot_device: Some(BootDevice::Pxe),
            persistent: Some(true)
        }
    );
    // The BMC forgets it (as the BMCs this option is for do).
    fs::write(bmc.path().join("boot"), "default\n").unwrap();
    power
        .set_power_state(&node, PowerState::On, None)
        .await
        .unwrap();
    assert_eq!(bmc.boot_file(), "pxe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_readable_error_without_the_password() {
    let bmc = VirtualBmc::start();
    let (power, management) = interfaces(fast_options());
    let wrong = "Wr0ng-pa55word-91";
    let node = bmc.node_with(json!({"ipmi_password": wrong}));
    let started = Instant::now();
    let err = power.get_power_state(&node).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DriverError::Failed(_)), "{err:?}");
    assert!(
        message.contains(&format!("127.0.0.1:{}", bmc.port)),
        "{message}"
    );
    assert!(message.contains("credentials"), "{message}");
    assert!(
        !message.contains(wrong) && !message.contains(PASSWORD),
        "{message}"
    );
    assert!(!message.contains("-P"), "{message}");
    // Refused credentials are not retried for the whole retry timeout.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    let err = management
        .set_boot_device(&node, BootDevice::Pxe, false)
        .await
        .unwrap_err();
    assert!(!err.to_string().contains(wrong), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bmc_that_does_not_answer_fails_within_the_retry_timeout_and_recovers() {
    let mut bmc = VirtualBmc::start();
    let options = IpmiOptions {
        command_retry_timeout: Duration::from_secs(3),
        ..fast_options()
    };
    let (power, _) = interfaces(options);
    let node = bmc.node();
    assert_eq!(power.get_power_state(&node).await.unwrap(), PowerState::Off);

    bmc.stop();
    let started = Instant::now();
    let err = power.get_power_state(&node).await.unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "{took:?}: {err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{}", bmc.port)),
        "{message}"
    );
    assert!(!message.contains(PASSWORD), "{message}");

    bmc.run_sim();
    assert_eq!(power.get_power_state(&node).await.unwrap(), PowerState::Off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_ipmitool_is_killed_at_its_timeout() {
    let dir = TempDir::new("ferric-ipmi-hang");
    let pid_file = dir.0.join("pid");
    let fake = dir.0.join("ipmitool");
    write_executable(
        &fake,
        &format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 60\n",
            pid_file.display()
        ),
    );
    let options = IpmiOptions {
        ipmitool: fake,
        command_timeout: Duration::from_secs(1),
        command_retry_timeout: Duration::from_secs(1),
        ..fast_options()
    };
    let (power, _) = interfaces(options);
    let mut node = Node::new(Uuid::new_v4(), "ipmi", ProvisionState::Manageable);
    node.driver_info
        .insert("ipmi_address".into(), json!("192.0.2.10"));
    let started = Instant::now();
    let err = power.get_power_state(&node).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, DriverError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("192.0.2.10:623"), "{err}");
    let pid = fs::read_to_string(&pid_file).unwrap();
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "ipmitool {pid} still exists"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ipmitool_is_reported() {
    let options = IpmiOptions {
        ipmitool: PathBuf::from("/nonexistent/ipmitool"),
        ..fast_options()
    };
    let (power, _) = interfaces(options);
    let mut node = Node::new(Uuid::new_v4(), "ipmi", ProvisionState::Manageable);
    node.driver_info
        .insert("ipmi_address".into(), json!("192.0.2.10"));
    let err = power.get_power_state(&node).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ipmitool"), "{err}");
}

/// Every ipmitool process that ran: its argv (from /proc/PID/cmdline, as
/// `ps` shows it), its environment, and when it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_is_never_on_a_command_line_and_commands_are_spaced() {
    let bmc = VirtualBmc::start();
    let spy_dir = TempDir::new("ferric-ipmi-spy");
    let spy = spy_dir.0.join("ipmitool");
    let ipmitool = require("ipmitool");
    write_executable(
        &spy,
        &format!(
            "#!/bin/sh\n\
             d={dir}/run-$$\n\
             mkdir \"$d\"\n\
             date +%s.%N > \"$d/started\"\n\
             tr '\\0' ' ' < /proc/$$/cmdline > \"$d/cmdline\"\n\
             env > \"$d/environ\"\n\
             exec {ipmitool} \"$@\"\n",
            dir = spy_dir.0.display(),
            ipmitool = ipmitool.display(),
        ),
    );
    let interval = Duration::from_millis(500);
    let options = IpmiOptions {
        ipmitool: spy,
        min_command_interval: interval,
        ..fast_options()
    };
    let (power, management) = interfaces(options);
    let node = bmc.node();

    // Meanwhile, look at the command line of every running ipmitool.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for entry in fs::read_dir("/proc").unwrap().flatten() {
                    if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
                        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                        if text.contains("ipmitool") && text.contains("lanplus") {
                            seen.lock().unwrap().push(text);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let (a, b, c) = tokio::join!(
        power.get_power_state(&node),
        power.get_power_state(&node),
        power.get_power_state(&node)
    );
    assert_eq!(
        (a.unwrap(), b.unwrap(), c.unwrap()),
        (PowerState::Off, PowerState::Off, PowerState::Off)
    );
    power
        .set_power_state(&node, PowerState::On, None)
        .await
        .unwrap();
    management
        .set_boot_device(&node, BootDevice::Pxe, true)
        .await
        .unwrap();
    management.get_boot_device(&node).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();

    let mut starts = Vec::new();
    let mut runs = 0;
    for entry in fs::read_dir(&spy_dir.0).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("run-") {
            continue;
        }
        runs += 1;
        let cmdline = fs::read_to_string(entry.path().join("cmdline")).unwrap();
        assert!(!cmdline.contains(PASSWORD), "{cmdline}");
        assert!(cmdline.contains(" -E "), "{cmdline}");
        assert!(!cmdline.contains(" -P "), "{cmdline}");
        assert!(
            cmdline.contains(&format!(
                "-I lanplus -H 127.0.0.1 -p {} -L ADMINISTRATOR -C 3",
                bmc.port
            )),
            "{cmdline}"
        );
        let environ = fs::read_to_string(entry.path().join("environ")).unwrap();
        assert!(
            environ
                .lines()
                .any(|l| l == format!("IPMI_PASSWORD={PASSWORD}")),
            "the password reaches ipmitool through its environment"
        );
        let started: f64 = fs::read_to_string(entry.path().join("started"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        starts.push(started);
    }
    assert!(runs >= 7, "{runs} ipmitool runs");
    for cmdline in seen.lock().unwrap().iter() {
        assert!(!cmdline.contains(PASSWORD), "{cmdline}");
    }
    // One BMC: never two commands closer than min_command_interval (their
    // starts are at least that far apart, as each waits for the previous
    // one's end plus the interval).
    starts.sort_by(f64::total_cmp);
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= interval.as_secs_f64() * 0.95,
            "commands {:.3} s apart: {starts:?}",
            pair[1] - pair[0]
        );
    }
    // The password is not in the conductor's own environment either.
    assert!(std::env::var("IPMI_PASSWORD").is_err());
}
