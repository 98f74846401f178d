//! The redfish interfaces against a real third-party Redfish service:
//! sushy-tools' `sushy-emulator` (PyPI, installed into `.venv` by
//! scripts/install-deps) with its fake driver, one emulator per test on a
//! loopback port, with its state in the test's own directory.
//!
//! What the fake driver does (sushy-tools 2.x): a power change is applied
//! 1 to 11 s after the request, on the next reading; the boot override is
//! always reported `Continuous`, whatever was asked; virtual media
//! insertion downloads the image, so the tests serve one over HTTP; there
//! is no SessionService (`auto` authentication falls back to basic).

use ferric_drivers::redfish::{
    RedfishClient, RedfishManagement, RedfishOptions, RedfishPower, VirtualMediaDevice,
};
use ferric_drivers::{BootDevice, DriverError, ManagementInterface, PowerInterface};
use ferric_types::{Node, PowerState, ProvisionState};
use serde_json::{json, Value};
use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const USERNAME: &str = "admin";
const PASSWORD: &str = "Pw-0f-the-BMC-3e9a";
/// Long enough for the fake driver's 1-11 s power changes.
const POWER_TIMEOUT: Duration = Duration::from_secs(30);

fn venv_program(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.venv/bin")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: these tests need sushy-tools' Redfish emulator; run scripts/install-deps",
        path.display()
    );
    path
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something listens on the port, or fails with the log.
fn wait_until_listening(process: &mut Process, port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        let exited = process.0.try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            panic!(
                "{} did not start listening on port {port} ({exited:?}):\n{}",
                log.display(),
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Default)]
struct Setup {
    /// Basic authentication with USERNAME and PASSWORD.
    auth: bool,
    /// Serve HTTPS with this certificate and key (PEM).
    tls: Option<(String, String)>,
    /// How many fake systems; 1 unless more.
    systems: usize,
}

/// One sushy-emulator with the fake driver.
struct Emulator {
    process: Process,
    dir: TempDir,
    port: u16,
    scheme: &'static str,
    systems: Vec<String>,
}

impl Emulator {
    fn start(setup: Setup) -> Emulator {
        let program = venv_program("sushy-emulator");
        let dir = TempDir::new("ferric-sushy");
        let path = dir.0.clone();
        let port = free_port();
        let systems: Vec<String> = (0..setup.systems.max(1))
            .map(|_| Uuid::new_v4().to_string())
            .collect();
        let fake_systems: Vec<Value> = systems
            .iter()
            .enumerate()
            .map(|(i, uuid)| {
                json!({
                    "uuid": uuid, "name": format!("node-{i}"), "power_state": "Off",
                    "external_notifier": false,
                    "nics": [{"mac": format!("52:54:00:00:00:0{i}"), "ip": "192.0.2.10"}],
                })
            })
            .collect();
        // The config file is Python; JSON strings and lists read the same.
        let mut config = format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n\
             SUSHY_EMULATOR_LISTEN_PORT = {port}\n\
             SUSHY_EMULATOR_FAKE_DRIVER = True\n\
             SUSHY_EMULATOR_STATE_DIR = {}\n\
             SUSHY_EMULATOR_FAKE_SYSTEMS = {}\n",
            json!(path.join("state")),
            Value::Array(fake_systems)
                .to_string()
                .replace("false", "False"),
        );
        if setup.auth {
            let htpasswd = path.join("htpasswd");
            fs::write(&htpasswd, format!("{USERNAME}:{}\n", bcrypt(PASSWORD))).unwrap();
            config.push_str(&format!("SUSHY_EMULATOR_AUTH_FILE = {}\n", json!(htpasswd)));
        }
        let scheme = match &setup.tls {
            Some((cert, key)) => {
                fs::write(path.join("cert.pem"), cert).unwrap();
                fs::write(path.join("key.pem"), key).unwrap();
                config.push_str(&format!(
                    "SUSHY_EMULATOR_SSL_CERT = {}\nSUSHY_EMULATOR_SSL_KEY = {}\n",
                    json!(path.join("cert.pem")),
                    json!(path.join("key.pem"))
                ));
                "https"
            }
            None => "http",
        };
        fs::write(path.join("emulator.conf"), config).unwrap();
        let log = path.join("emulator.log");
        let child = Command::new(program)
            .arg("--config")
            .arg(path.join("emulator.conf"))
            .arg("--fake")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(path.join("emulator.err")).unwrap())
            .spawn()
            .unwrap();
        let mut process = Process(child);
        wait_until_listening(&mut process, port, &path.join("emulator.err"));
        Emulator {
            process,
            dir,
            port,
            scheme,
            systems,
        }
    }

    fn address(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    fn system_path(&self, index: usize) -> String {
        format!("/redfish/v1/Systems/{}", self.systems[index])
    }

    /// The system resource as the emulator shows it, read without Ferric.
    async fn system(&self) -> Value {
        reqwest::Client::new()
            .get(format!("{}{}", self.address(), self.system_path(0)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("emulator.err")).unwrap_or_default()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.process.0.kill();
    }
}

/// A bcrypt htpasswd hash, made by the venv's `bcrypt` (sushy-tools needs
/// it anyway); few rounds, as the emulator checks it on every request.
fn bcrypt(password: &str) -> String {
    let mut child = Command::new(venv_program("python"))
        .args([
            "-c",
            "import bcrypt, sys; \
             print(bcrypt.hashpw(sys.stdin.buffer.read(), bcrypt.gensalt(4)).decode())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "bcrypt failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Python's HTTP server over a directory, for images to insert.
struct ImageServer {
    _process: Process,
    dir: TempDir,
    port: u16,
}

impl ImageServer {
    fn start() -> ImageServer {
        let dir = TempDir::new("ferric-images");
        let port = free_port();
        let log = dir.0.join("server.log");
        let child = Command::new(venv_program("python"))
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(&dir.0)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut process = Process(child);
        wait_until_listening(&mut process, port, &log);
        ImageServer {
            _process: process,
            dir,
            port,
        }
    }

    fn serve(&self, name: &str) -> String {
        fs::write(self.dir.0.join(name), b"not really an ISO").unwrap();
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

/// Short pauses: the tests wait for the fake driver, not for retries.
fn options() -> RedfishOptions {
    RedfishOptions {
        connection_retry_interval: Duration::from_millis(200),
        power_state_poll_interval: Duration::from_millis(500),
        power_state_change_timeout: POWER_TIMEOUT,
        soft_power_off_timeout: POWER_TIMEOUT,
        ..RedfishOptions::default()
    }
}

fn node(driver_info: Value) -> Node {
    let mut node = Node::new(Uuid::new_v4(), "redfish", ProvisionState::Manageable);
    node.driver_info = driver_info.as_object().unwrap().clone();
    node
}

fn node_of(bmc: &Emulator) -> Node {
    node(json!({
        "redfish_address": bmc.address(),
        "redfish_username": USERNAME,
        "redfish_password": PASSWORD,
    }))
}

struct Interfaces {
    client: Arc<RedfishClient>,
    power: RedfishPower,
    management: RedfishManagement,
}

fn interfaces(options: RedfishOptions) -> Interfaces {
    let client = Arc::new(RedfishClient::new(options));
    Interfaces {
        power: RedfishPower::new(client.clone()),
        management: RedfishManagement::new(client.clone()),
        client,
    }
}

#[tokio::test]
async fn power_on_off_and_status() {
    let bmc = Emulator::start(Setup::default());
    let redfish = interfaces(options());
    let node = node_of(&bmc);
    redfish.power.validate(&node).unwrap();
    assert!(redfish.power.supports_soft_power());
    assert_eq!(
        redfish.power.get_power_state(&node).await.unwrap(),
        PowerState::Off
    );

    redfish
        .power
        .set_power_state(&node, PowerState::On, None)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", bmc.log()));
    assert_eq!(
        redfish.power.get_power_state(&node).await.unwrap(),
        PowerState::On
    );
    assert_eq!(bmc.system().await["PowerState"], "On");
    // Already on: nothing to wait for.
    let started = Instant::now();
    redfish
        .power
        .set_power_state(&node, PowerState::On, None)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));

    redfish
        .power
        .set_power_state(&node, PowerState::SoftPowerOff, None)
        .await
        .unwrap();
    assert_eq!(
        redfish.power.get_power_state(&node).await.unwrap(),
        PowerState::Off
    );

    redfish
        .power
        .set_power_state(&node, PowerState::On, None)
        .await
        .unwrap();
    redfish
        .power
        .set_power_state(&node, PowerState::Off, Some(POWER_TIMEOUT))
        .await
        .unwrap();
    assert_eq!(
        redfish.power.get_power_state(&node).await.unwrap(),
        PowerState::Off
    );
    let err = redfish
        .power
        .set_power_state(&node, PowerState::Rebooting, None)
        .await
        .unwrap_err();
    assert!(matches!(err, DriverError::InvalidParameter(_)), "{err:?}");
}

#[tokio::test]
async fn reboots_end_powered_on() {
    let bmc = Emulator::start(Setup::default());
    let redfish = interfaces(options());
    let node = node_of(&bmc);
    // A node that is off is simply powered on.
    redfish.power.reboot(&node, false, None).await.unwrap();
    assert_eq!(
        redfish.power.get_power_state(&node).await.unwrap(),
        PowerState::On
    );
    // Hard: off, then on.
    redfish.power.reboot(&node, false, None).await.unwrap();
    assert_eq!(
        redfish.power.get_power_state(&node).await.unwrap(),
        PowerState::On
    );
    // Soft: GracefulRestart.
    redfish
        .power
        .reboot(&node, true, Some(POWER_TIMEOUT))
        .await
        .unwrap();
    assert_eq!(
        redfish.power.get_power_state(&node).await.unwrap(),
        PowerState::On
    );
}

#[tokio::test]
async fn a_power_change_that_does_not_come_times_out() {
    let bmc = Emulator::start(Setup::default());
    let redfish = interfaces(options());
    let node = node_of(&bmc);
    // The fake driver needs at least a second.
    let err = redfish
        .power
        .set_power_state(&node, PowerState::On, Some(Duration::from_millis(300)))
        .await
        .unwrap_err();
    match err {
        DriverError::Timeout { operation, timeout } => {
            assert!(operation.contains("reaching power on"), "{operation}");
            assert_eq!(timeout, Duration::from_millis(300));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn boot_device_is_set_and_read_back() {
    let bmc = Emulator::start(Setup::default());
    let redfish = interfaces(options());
    let mut node = node_of(&bmc);
    redfish.management.validate(&node).unwrap();
    assert_eq!(
        redfish.management.supported_boot_devices(&node),
        [
            BootDevice::Pxe,
            BootDevice::Disk,
            BootDevice::Cdrom,
            BootDevice::Bios,
            BootDevice::Uefihttp
        ]
    );

    redfish
        .management
        .set_boot_device(&node, BootDevice::Pxe, true)
        .await
        .unwrap();
    let read = redfish.management.get_boot_device(&node).await.unwrap();
    assert_eq!(read.boot_device, Some(BootDevice::Pxe));
    assert_eq!(read.persistent, Some(true));
    let boot = &bmc.system().await["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe");
    assert_eq!(boot["BootSourceOverrideMode"], "UEFI");

    // Once: the fake driver keeps the device but always reports
    // "Continuous", so only the device can be read back.
    redfish
        .management
        .set_boot_device(&node, BootDevice::Disk, false)
        .await
        .unwrap();
    let read = redfish.management.get_boot_device(&node).await.unwrap();
    assert_eq!(read.boot_device, Some(BootDevice::Disk));

    redfish
        .management
        .set_boot_device(&node, BootDevice::Bios, false)
        .await
        .unwrap();
    assert_eq!(
        redfish
            .management
            .get_boot_device(&node)
            .await
            .unwrap()
            .boot_device,
        Some(BootDevice::Bios)
    );

    // The node's boot mode goes with the device.
    node.properties
        .insert("capabilities".into(), json!("boot_mode:bios"));
    redfish
        .management
        .set_boot_device(&node, BootDevice::Cdrom, true)
        .await
        .unwrap();
    let boot = &bmc.system().await["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Cd");
    assert_eq!(boot["BootSourceOverrideMode"], "Legacy");
    node.properties.remove("capabilities");
    node.instance_info
        .insert("deploy_boot_mode".into(), json!("uefi"));
    redfish
        .management
        .set_boot_device(&node, BootDevice::Pxe, true)
        .await
        .unwrap();
    let boot = &bmc.system().await["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe");
    assert_eq!(boot["BootSourceOverrideMode"], "UEFI");

    let err = redfish
        .management
        .set_boot_device(&node, BootDevice::Safe, false)
        .await
        .unwrap_err();
    assert!(matches!(err, DriverError::InvalidParameter(_)), "{err:?}");
}

#[tokio::test]
async fn virtual_media_is_inserted_and_ejected() {
    let bmc = Emulator::start(Setup::default());
    let images = ImageServer::start();
    let redfish = interfaces(options());
    let node = node_of(&bmc);
    let cd = |media: &[ferric_drivers::redfish::VirtualMedia]| {
        media
            .iter()
            .find(|m| m.media_types.iter().any(|t| t == "CD"))
            .cloned()
            .expect("the emulator has a CD drive")
    };
    let before = redfish.client.virtual_media(&node).await.unwrap();
    assert!(!cd(&before).inserted);
    assert!(!redfish
        .client
        .eject_virtual_media(&node, None)
        .await
        .unwrap());

    let first = images.serve("deploy.iso");
    redfish
        .client
        .insert_virtual_media(&node, &first, VirtualMediaDevice::Cd)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", bmc.log()));
    let drive = cd(&redfish.client.virtual_media(&node).await.unwrap());
    assert!(drive.inserted);
    assert_eq!(drive.image.as_deref(), Some(first.as_str()));
    assert_eq!(drive.write_protected, Some(true));
    assert!(drive.path.starts_with(&bmc.system_path(0)), "{drive:?}");

    // Another image replaces it: ejected first, then inserted.
    let second = images.serve("instance.iso");
    redfish
        .client
        .insert_virtual_media(&node, &second, VirtualMediaDevice::Cd)
        .await
        .unwrap();
    let media = redfish.client.virtual_media(&node).await.unwrap();
    assert_eq!(cd(&media).image.as_deref(), Some(second.as_str()));
    // The floppy drive was left alone.
    assert!(media
        .iter()
        .filter(|m| !m.media_types.iter().any(|t| t == "CD"))
        .all(|m| !m.inserted));
    assert!(bmc.log().contains("VirtualMedia.EjectMedia"));

    assert!(redfish
        .client
        .eject_virtual_media(&node, Some(VirtualMediaDevice::Cd))
        .await
        .unwrap());
    let drive = cd(&redfish.client.virtual_media(&node).await.unwrap());
    assert!(!drive.inserted);
    assert_eq!(drive.image, None);
    assert!(!redfish
        .client
        .eject_virtual_media(&node, None)
        .await
        .unwrap());
}

#[tokio::test]
async fn a_failed_insertion_says_why_without_the_image_credentials() {
    let bmc = Emulator::start(Setup::default());
    let redfish = interfaces(RedfishOptions {
        connection_attempts: 2,
        ..options()
    });
    let node = node_of(&bmc);
    let nowhere = format!(
        "http://user:image-Secret@127.0.0.1:{}/deploy.iso?temp_url_sig=s3cr3t",
        free_port()
    );
    let err = redfish
        .client
        .insert_virtual_media(&node, &nowhere, VirtualMediaDevice::Cd)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("InsertMedia"), "{err}");
    assert!(
        !err.contains("image-Secret") && !err.contains("s3cr3t"),
        "{err}"
    );
    assert!(
        !redfish.client.virtual_media(&node).await.unwrap()[0].inserted,
        "nothing was inserted"
    );
}

#[tokio::test]
async fn a_wrong_password_is_refused_clearly_without_the_password() {
    let bmc = Emulator::start(Setup {
        auth: true,
        ..Setup::default()
    });
    let redfish = interfaces(options());
    // The right password works (basic authentication: no sessions here).
    let node = node_of(&bmc);
    assert_eq!(
        redfish.power.get_power_state(&node).await.unwrap(),
        PowerState::Off
    );
    let mut wrong = node_of(&bmc);
    wrong
        .driver_info
        .insert("redfish_password".into(), json!("Wr0ng-Secret-Pa55"));
    for auth_type in ["auto", "basic"] {
        wrong
            .driver_info
            .insert("redfish_auth_type".into(), json!(auth_type));
        let started = Instant::now();
        let err = redfish.power.get_power_state(&wrong).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not retried: {err}"
        );
        let text = err.to_string();
        assert!(matches!(err, DriverError::Failed(_)), "{err:?}");
        assert!(
            text.contains("refused the credentials of user \"admin\"")
                && text.contains(&bmc.address())
                && text.contains("HTTP 401"),
            "{text}"
        );
        assert!(
            !text.contains("Wr0ng-Secret-Pa55") && !text.contains(PASSWORD),
            "{text}"
        );
    }
    // No credentials at all.
    let mut anonymous = node_of(&bmc);
    anonymous.driver_info.remove("redfish_username");
    anonymous.driver_info.remove("redfish_password");
    let err = redfish
        .management
        .get_boot_device(&anonymous)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("anonymous user"), "{err}");
}

#[tokio::test]
async fn session_authentication_needs_a_session_service() {
    let bmc = Emulator::start(Setup::default());
    let redfish = interfaces(options());
    let mut node = node_of(&bmc);
    node.driver_info
        .insert("redfish_auth_type".into(), json!("session"));
    let err = redfish
        .power
        .get_power_state(&node)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("POST /redfish/v1/SessionService/Sessions")
            && err.contains("HTTP 404")
            && err.contains("no session could be created"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
}

#[tokio::test]
async fn a_bmc_that_does_not_answer_fails_after_the_retries() {
    let redfish = interfaces(RedfishOptions {
        connection_attempts: 3,
        connection_retry_interval: Duration::from_millis(100),
        ..RedfishOptions::default()
    });
    // Nothing listens there.
    let address = format!("http://127.0.0.1:{}", free_port());
    let node = node(json!({
        "redfish_address": address,
        "redfish_username": USERNAME,
        "redfish_password": PASSWORD,
        "redfish_system_id": "/redfish/v1/Systems/1",
    }));
    let started = Instant::now();
    let err = redfish.power.get_power_state(&node).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    let text = err.to_string();
    assert!(matches!(err, DriverError::Failed(_)), "{err:?}");
    assert!(
        text.contains(&format!("Redfish BMC {address} could not be reached"))
            && text.contains("GET /redfish/v1/Systems/1")
            && text.contains("3 attempts"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
}

#[tokio::test]
async fn tls_is_verified_with_the_given_ca_only() {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = certified.cert.pem();
    let bmc = Emulator::start(Setup {
        tls: Some((cert.clone(), certified.signing_key.serialize_pem())),
        ..Setup::default()
    });
    let dir = TempDir::new("ferric-ca");
    let ca = dir.0.join("bmc-ca.pem");
    fs::write(&ca, &cert).unwrap();
    let redfish = interfaces(options());

    let mut node = node_of(&bmc);
    node.driver_info
        .insert("redfish_verify_ca".into(), json!(ca));
    assert_eq!(
        redfish
            .power
            .get_power_state(&node)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", bmc.log())),
        PowerState::Off
    );

    // The system's CAs do not know it: refused at once, not retried.
    for verify in [json!(true), json!("yes"), Value::Null] {
        let mut node = node_of(&bmc);
        node.driver_info.insert("redfish_verify_ca".into(), verify);
        let started = Instant::now();
        let err = redfish
            .power
            .get_power_state(&node)
            .await
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(1), "{err}");
        assert!(
            err.contains("TLS handshake") && err.contains("redfish_verify_ca"),
            "{err}"
        );
    }
    // Nor does another CA.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let other_ca = dir.0.join("other-ca.pem");
    fs::write(&other_ca, other.cert.pem()).unwrap();
    node.driver_info
        .insert("redfish_verify_ca".into(), json!(other_ca));
    let err = redfish.power.get_power_state(&node).await.unwrap_err();
    assert!(err.to_string().contains("TLS handshake"), "{err}");

    // Unverified, on request.
    node.driver_info
        .insert("redfish_verify_ca".into(), json!(false));
    assert_eq!(
        redfish.power.get_power_state(&node).await.unwrap(),
        PowerState::Off
    );
    // A file that holds no certificate is the operator's to fix.
    let empty = dir.0.join("empty.pem");
    fs::write(&empty, "nothing here").unwrap();
    node.driver_info
        .insert("redfish_verify_ca".into(), json!(empty));
    let err = redfish.power.get_power_state(&node).await.unwrap_err();
    assert!(matches!(err, DriverError::InvalidParameter(_)), "{err:?}");
}

#[tokio::test]
async fn several_systems_need_a_system_id() {
    let bmc = Emulator::start(Setup {
        systems: 2,
        ..Setup::default()
    });
    let redfish = interfaces(options());
    let mut node = node_of(&bmc);
    let err = redfish.power.get_power_state(&node).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DriverError::InvalidParameter(_)), "{err:?}");
    assert!(
        text.contains("manages 2 systems")
            && text.contains("redfish_system_id")
            && text.contains(&bmc.system_path(1)),
        "{text}"
    );
    node.driver_info
        .insert("redfish_system_id".into(), json!(bmc.system_path(1)));
    redfish
        .management
        .set_boot_device(&node, BootDevice::Pxe, true)
        .await
        .unwrap();
    assert_eq!(
        redfish
            .management
            .get_boot_device(&node)
            .await
            .unwrap()
            .boot_device,
        Some(BootDevice::Pxe)
    );
    // The other system was left alone.
    assert_eq!(
        bmc.system().await["Boot"]["BootSourceOverrideTarget"],
        "Hdd"
    );
    node.driver_info.insert(
        "redfish_system_id".into(),
        json!("/redfish/v1/Systems/no-such-system"),
    );
    let err = redfish.power.get_power_state(&node).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 404"), "{err}");
}

/// sushy-tools has no SessionService: a scripted one, just enough to see
/// the session login, its reuse, and the login again once the BMC forgot
/// the token.
mod sessions {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct State {
        logins: AtomicUsize,
        token: Mutex<Option<String>>,
        basic_requests: AtomicUsize,
    }

    fn respond(stream: &mut TcpStream, status: &str, headers: &str, body: &str) {
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n{headers}\r\n{body}",
            body.len()
        );
    }

    fn serve(listener: TcpListener, state: Arc<State>) {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            };
            let length: usize = header("content-length").map_or(0, |l| l.parse().unwrap());
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let path = request_line.split_whitespace().nth(1).unwrap_or_default();
            if header("authorization").is_some() {
                state.basic_requests.fetch_add(1, Ordering::SeqCst);
            }
            if path == "/redfish/v1/SessionService/Sessions" {
                let credentials: Value = serde_json::from_slice(&body).unwrap();
                if credentials == json!({"UserName": USERNAME, "Password": PASSWORD}) {
                    let n = state.logins.fetch_add(1, Ordering::SeqCst) + 1;
                    let token = format!("token-{n}");
                    *state.token.lock().unwrap() = Some(token.clone());
                    respond(
                        &mut stream,
                        "201 Created",
                        &format!(
                            "X-Auth-Token: {token}\r\nLocation: /redfish/v1/SessionService/Sessions/{n}\r\n"
                        ),
                        "{}",
                    );
                } else {
                    respond(&mut stream, "401 Unauthorized", "", "{}");
                }
                continue;
            }
            let valid = state.token.lock().unwrap().clone();
            if valid.is_none() || header("x-auth-token") != valid {
                respond(&mut stream, "401 Unauthorized", "", "{}");
                continue;
            }
            respond(&mut stream, "200 OK", "", r#"{"PowerState": "On"}"#);
        }
    }

    #[tokio::test]
    async fn sessions_are_kept_and_renewed_once_the_bmc_forgets_them() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let served = state.clone();
        std::thread::spawn(move || serve(listener, served));
        let redfish = interfaces(options());
        let mut node = node(json!({
            "redfish_address": format!("http://127.0.0.1:{port}"),
            "redfish_system_id": "/redfish/v1/Systems/1",
            "redfish_username": USERNAME,
            "redfish_password": PASSWORD,
        }));
        for auth_type in ["auto", "session"] {
            node.driver_info
                .insert("redfish_auth_type".into(), json!(auth_type));
            for _ in 0..3 {
                assert_eq!(
                    redfish.power.get_power_state(&node).await.unwrap(),
                    PowerState::On
                );
            }
        }
        assert_eq!(state.logins.load(Ordering::SeqCst), 1, "one session kept");
        // The BMC drops the session: one login again, and on.
        *state.token.lock().unwrap() = None;
        assert_eq!(
            redfish.power.get_power_state(&node).await.unwrap(),
            PowerState::On
        );
        assert_eq!(state.logins.load(Ordering::SeqCst), 2);
        assert_eq!(state.basic_requests.load(Ordering::SeqCst), 0);

        node.driver_info
            .insert("redfish_password".into(), json!("Wr0ng-Secret-Pa55"));
        let err = redfish
            .power
            .get_power_state(&node)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("refused the credentials of user \"admin\"")
                && err.contains("SessionService/Sessions")
                && !err.contains("Wr0ng-Secret-Pa55"),
            "{err}"
        );
        assert_eq!(state.logins.load(Ordering::SeqCst), 2);
    }
}
