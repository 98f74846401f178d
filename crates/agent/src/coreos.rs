//! The `install_coreos` deploy step: Fedora or Red Hat CoreOS installed by
//! coreos-installer instead of an image written by `write_image` (Metal3's
//! custom deploy with the `custom-agent` deploy interface).
//!
//! The disk comes from the root device hints, as for `write_image`. The
//! Ignition config is the node's `instance_info.configdrive.user_data`
//! (Ironic's convention for first-boot data the config drive cannot carry);
//! the image is `instance_info.image_source` when there is one, otherwise
//! the live system's own (`--offline`). Ignition configs hold secrets: they
//! go to a 0600 file in a directory of their own, removed afterwards, and
//! never into logs, errors or the step's result.
//!
//! When the agent runs in a container on a CoreOS live system with the
//! host's root at [`HOST_ROOT`] (and `usr/bin/coreos-installer` there), the
//! installer runs through `chroot`; otherwise the agent runs on the live
//! system itself and takes `coreos-installer` from `PATH`.
//! `FERRIC_COREOS_INSTALLER` names the program to run instead.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::deploy::{self, DeployError};
use crate::download::{check_url, redact, DownloadError};
use crate::hints::BlockDevice;

/// Where the live system's root is mounted in the agent's container.
pub const HOST_ROOT: &str = "/mnt/coreos";
/// Names the coreos-installer to run, skipping the search (tests, odd
/// layouts).
pub const INSTALLER_ENV: &str = "FERRIC_COREOS_INSTALLER";
/// coreos-installer's place on a CoreOS system.
const HOST_INSTALLER: &str = "/usr/bin/coreos-installer";
/// Runs of coreos-installer before the step fails (IPA's hardware manager
/// retries as often: downloads fail transiently).
pub const ATTEMPTS: u32 = 3;
/// How much of the end of stderr goes into a failure's message.
const STDERR_TAIL: usize = 2048;

/// Where coreos-installer is found and how failures are retried.
#[derive(Debug, Clone)]
pub struct CoreosOptions {
    /// Where the host's root is mounted when the agent runs in a container
    /// on the live system. Default [`HOST_ROOT`].
    pub host_root: PathBuf,
    /// Run this program as coreos-installer, directly (no chroot, no
    /// search). Default none; [`CoreosOptions::from_env`] takes it from
    /// `FERRIC_COREOS_INSTALLER`.
    pub installer: Option<PathBuf>,
    /// The pause between attempts. Default 5 seconds.
    pub retry_pause: Duration,
}

impl Default for CoreosOptions {
    fn default() -> Self {
        CoreosOptions {
            host_root: PathBuf::from(HOST_ROOT),
            installer: None,
            retry_pause: Duration::from_secs(5),
        }
    }
}

impl CoreosOptions {
    /// The defaults, with the installer named by `FERRIC_COREOS_INSTALLER`
    /// when it is set and not empty.
    pub fn from_env() -> Self {
        Self::with_installer_env(std::env::var_os(INSTALLER_ENV))
    }

    fn with_installer_env(value: Option<OsString>) -> Self {
        CoreosOptions {
            installer: value.filter(|v| !v.is_empty()).map(PathBuf::from),
            ..CoreosOptions::default()
        }
    }
}

/// Why `install_coreos` failed. Never holds the Ignition config.
#[derive(Debug, thiserror::Error)]
pub enum CoreosError {
    #[error("cannot use a pre-rendered config drive with install_coreos; pass it as a dict/JSON")]
    PreRenderedConfigDrive,
    #[error("instance_info.configdrive must be a dict/JSON for install_coreos, got {0}")]
    ConfigDriveType(&'static str),
    #[error("instance_info.image_source must be a string, got {0}")]
    ImageSourceType(&'static str),
    #[error("instance_info.image_source cannot be installed by coreos-installer")]
    ImageSource(#[source] DownloadError),
    #[error("choosing the disk to install CoreOS on")]
    RootDevice(#[source] DeployError),
    #[error("coreos-installer is not installed: {0}")]
    NotInstalled(String),
    #[error("writing the Ignition config to {}", path.display())]
    Ignition {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "coreos-installer failed {attempts} times; the last run ended with {status}; {stderr}"
    )]
    Failed {
        attempts: u32,
        status: ExitStatus,
        /// The end of its stderr, at most 2 KiB.
        stderr: String,
    },
}

/// An Ignition config: shown nowhere.
#[derive(Clone, PartialEq)]
pub struct Ignition(Vec<u8>);

impl std::fmt::Debug for Ignition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ignition(<{} bytes, not shown>)", self.0.len())
    }
}

impl Ignition {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// What the node asks coreos-installer for.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallRequest {
    pub ignition: Option<Ignition>,
    /// `--image-url`; none for `--offline`.
    pub image_url: Option<String>,
}

/// Reads the request from the node: `instance_info.configdrive` must be an
/// object (or absent), its `user_data` is the Ignition config (an object
/// is written as JSON, a string as it is; null, `""` and `{}` mean none).
pub fn parse_request(node: &Value) -> Result<InstallRequest, CoreosError> {
    let instance_info = node.get("instance_info").unwrap_or(&Value::Null);
    let ignition = match instance_info.get("configdrive") {
        None | Some(Value::Null) => None,
        Some(Value::Object(drive)) => match drive.get("user_data") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) if text.is_empty() => None,
            Some(Value::Object(map)) if map.is_empty() => None,
            Some(Value::String(text)) => Some(Ignition(text.clone().into_bytes())),
            Some(other) => Some(Ignition(other.to_string().into_bytes())),
        },
        Some(Value::String(_)) => return Err(CoreosError::PreRenderedConfigDrive),
        Some(other) => return Err(CoreosError::ConfigDriveType(json_type(other))),
    };
    let image_url = match instance_info.get("image_source") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) if url.trim().is_empty() => None,
        Some(Value::String(url)) => {
            check_url(url).map_err(CoreosError::ImageSource)?;
            Some(url.trim().to_owned())
        }
        Some(other) => return Err(CoreosError::ImageSourceType(json_type(other))),
    };
    Ok(InstallRequest {
        ignition,
        image_url,
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a Boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `coreos-installer`'s arguments, from `install` on.
pub fn installer_args(
    ignition_file: Option<&Path>,
    image_url: Option<&str>,
    device: &str,
) -> Vec<OsString> {
    // An install that fails leaves the disk as it was for debugging: the
    // conductor's cleaning wipes it.
    let mut args: Vec<OsString> = vec!["install".into(), "--preserve-on-error".into()];
    if let Some(file) = ignition_file {
        args.extend(["--ignition-file".into(), file.into()]);
    }
    match image_url {
        // The image has no signature the installer could check: Ironic's
        // image_source is the operator's choice, as for write_image.
        Some(url) => args.extend(["--image-url".into(), url.into(), "--insecure".into()]),
        None => args.push("--offline".into()),
    }
    args.push(device.into());
    args
}

/// How coreos-installer is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installer {
    /// Inside the live system's root, mounted at `root`.
    Chroot { root: PathBuf },
    /// This program, on the agent's own system.
    Direct(PathBuf),
}

impl Installer {
    /// The configured program, else the live system's under the host root,
    /// else `coreos-installer` on `path` (the agent's `PATH`).
    pub fn find(options: &CoreosOptions, path: Option<&OsStr>) -> Result<Installer, CoreosError> {
        if let Some(program) = &options.installer {
            if !program.is_file() {
                return Err(CoreosError::NotInstalled(format!(
                    "{} (from {INSTALLER_ENV}) does not exist",
                    program.display()
                )));
            }
            return Ok(Installer::Direct(program.clone()));
        }
        let in_host = options
            .host_root
            .join(HOST_INSTALLER.trim_start_matches('/'));
        if in_host.is_file() {
            return Ok(Installer::Chroot {
                root: options.host_root.clone(),
            });
        }
        std::env::split_paths(path.unwrap_or_default())
            .map(|dir| dir.join("coreos-installer"))
            .find(|candidate| candidate.is_file())
            .map(Installer::Direct)
            .ok_or_else(|| {
                CoreosError::NotInstalled(format!(
                    "neither {} nor coreos-installer on PATH exists",
                    in_host.display()
                ))
            })
    }

    /// The program and its first arguments, before `install`.
    fn command_prefix(&self) -> Vec<OsString> {
        match self {
            Installer::Chroot { root } => {
                vec!["chroot".into(), root.into(), HOST_INSTALLER.into()]
            }
            Installer::Direct(program) => vec![program.into()],
        }
    }

    /// Where the Ignition file's directory goes, as the agent sees it, and
    /// the same place as coreos-installer sees it.
    fn scratch_dir(&self) -> (PathBuf, PathBuf) {
        let name = format!("ferric-coreos-{}", uuid::Uuid::new_v4().simple());
        match self {
            Installer::Chroot { root } => {
                (root.join("tmp").join(&name), Path::new("/tmp").join(name))
            }
            Installer::Direct(_) => {
                let dir = std::env::temp_dir().join(name);
                (dir.clone(), dir)
            }
        }
    }
}

impl std::fmt::Display for Installer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Installer::Chroot { root } => write!(f, "chroot {} {HOST_INSTALLER}", root.display()),
            Installer::Direct(program) => write!(f, "{}", program.display()),
        }
    }
}

/// A directory holding an Ignition file; removed with what it holds when
/// dropped.
struct IgnitionDir(PathBuf);

impl Drop for IgnitionDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove the Ignition config's directory");
        }
    }
}

/// Writes `ignition` to `config.ign` in a new 0700 directory `dir`, 0600.
fn write_ignition(dir: &Path, ignition: &Ignition) -> Result<IgnitionDir, CoreosError> {
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| CoreosError::Ignition { path, source }
    };
    DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(failed(dir))?;
    let guard = IgnitionDir(dir.to_owned());
    let file = dir.join("config.ign");
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .and_then(|mut f| f.write_all(ignition.as_bytes()))
        .map_err(failed(&file))?;
    Ok(guard)
}

/// What `install_coreos` did.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallOutcome {
    pub device: String,
    /// The image installed, as it may be shown (no credentials); none for
    /// the live system's own.
    pub image: Option<String>,
    pub ignition: bool,
    /// Runs of coreos-installer, the last one successful.
    pub attempts: u32,
}

impl InstallOutcome {
    /// The step's `deploy_result`, after `write_image`'s: a `result`
    /// sentence naming the device, details alongside.
    pub fn to_deploy_result(&self) -> Value {
        json!({
            "result": format!("install_coreos: CoreOS installed on device {}", self.device),
            "device": self.device,
            "image_source": self.image,
            "offline": self.image.is_none(),
            "ignition": self.ignition,
            "attempts": self.attempts,
        })
    }
}

/// Installs CoreOS on the root device of `node` among `disks`. The request
/// and the disk are checked, and coreos-installer found, before it runs.
pub fn install_coreos(
    node: &Value,
    disks: &[BlockDevice],
    options: &CoreosOptions,
) -> Result<InstallOutcome, CoreosError> {
    let request = parse_request(node)?;
    let device = deploy::root_device(node, disks).map_err(CoreosError::RootDevice)?;
    let installer = Installer::find(options, std::env::var_os("PATH").as_deref())?;

    let mut scratch = None;
    let ignition_file = match &request.ignition {
        Some(ignition) => {
            let (dir, seen_as) = installer.scratch_dir();
            scratch = Some(write_ignition(&dir, ignition)?);
            Some(seen_as.join("config.ign"))
        }
        None => None,
    };
    let mut command = installer.command_prefix();
    command.extend(installer_args(
        ignition_file.as_deref(),
        request.image_url.as_deref(),
        &device.name,
    ));
    let image = request.image_url.as_deref().map(redact);
    tracing::info!(
        device = %device.name,
        image = image.as_deref().unwrap_or("(offline: the live system's)"),
        installer = %installer,
        ignition = request.ignition.is_some(),
        "installing CoreOS"
    );
    let attempts = run_with_retries(&command, options.retry_pause)?;
    drop(scratch);
    tracing::info!(device = %device.name, attempts, "CoreOS installed");
    Ok(InstallOutcome {
        device: device.name,
        image,
        ignition: request.ignition.is_some(),
        attempts,
    })
}

/// Runs `command` until it succeeds, at most [`ATTEMPTS`] times; returns
/// the number of runs. A program that cannot be started is not retried.
fn run_with_retries(command: &[OsString], pause: Duration) -> Result<u32, CoreosError> {
    let mut attempt = 1;
    loop {
        let (status, stderr) = run_once(command, attempt)?;
        if status.success() {
            return Ok(attempt);
        }
        tracing::warn!(attempt, of = ATTEMPTS, %status, "coreos-installer failed");
        if attempt == ATTEMPTS {
            let stderr = if stderr.is_empty() {
                "it wrote nothing to stderr".to_owned()
            } else {
                format!("the end of its stderr: {stderr}")
            };
            return Err(CoreosError::Failed {
                attempts: attempt,
                status,
                stderr,
            });
        }
        attempt += 1;
        std::thread::sleep(pause);
    }
}

/// One run: its output goes to the log line by line; returns its status
/// and the end of its stderr.
fn run_once(command: &[OsString], attempt: u32) -> Result<(ExitStatus, String), CoreosError> {
    let program = command[0].to_string_lossy().into_owned();
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => {
                CoreosError::NotInstalled(format!("{program} was not found"))
            }
            _ => CoreosError::Spawn { program, source },
        })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let tail = std::thread::scope(|scope| {
        scope.spawn(|| log_lines(stdout, attempt, "stdout", &mut Tail::new(0)));
        let errors = scope.spawn(|| {
            let mut tail = Tail::new(STDERR_TAIL);
            log_lines(stderr, attempt, "stderr", &mut tail);
            tail.text()
        });
        errors.join().unwrap_or_default()
    });
    let status = child.wait().map_err(|source| CoreosError::Spawn {
        program: command[0].to_string_lossy().into_owned(),
        source,
    })?;
    Ok((status, tail))
}

/// Logs each line of `output` (progress lines end in `\r`), keeping the
/// last ones in `tail`.
fn log_lines(output: impl Read, attempt: u32, stream: &'static str, tail: &mut Tail) {
    for chunk in BufReader::new(output).split(b'\n') {
        let Ok(chunk) = chunk else { break };
        for line in String::from_utf8_lossy(&chunk).split('\r') {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            // The installer prints the image URL: never its credentials.
            let line = ferric_types::url::mask_credentials(line);
            tracing::info!(attempt, stream, "coreos-installer: {line}");
            tail.push(&line);
        }
    }
}

/// The last lines of a stream, at most `limit` bytes in all.
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    limit: usize,
}

impl Tail {
    fn new(limit: usize) -> Self {
        Tail {
            lines: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    fn push(&mut self, line: &str) {
        if self.limit == 0 {
            return;
        }
        let mut start = line.len().saturating_sub(self.limit);
        while !line.is_char_boundary(start) {
            start += 1;
        }
        let line = &line[start..];
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_owned());
        while self.bytes > self.limit + 1 {
            let dropped = self.lines.pop_front().expect("more bytes than lines");
            self.bytes -= dropped.len() + 1;
        }
    }

    /// The lines kept, joined by newlines.
    fn text(&self) -> String {
        Vec::from(self.lines.clone()).join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ignition_config_comes_from_the_config_drive_user_data() {
        let node = |drive: Value| json!({"instance_info": {"configdrive": drive}});
        let object = parse_request(&node(
            json!({"user_data": {"ignition": {"version": "3.4.0"}}}),
        ))
        .unwrap();
        assert_eq!(
            object.ignition.unwrap().as_bytes(),
            br#"{"ignition":{"version":"3.4.0"}}"#
        );
        let text = parse_request(&node(json!({"user_data": "{\"ignition\": {}}\n"}))).unwrap();
        assert_eq!(text.ignition.unwrap().as_bytes(), b"{\"ignition\": {}}\n");
        for none in [
            json!({"instance_info": {}}),
            json!({}),
            node(Value::Null),
            node(json!({})),
            node(json!({"meta_data": {"uuid": "x"}})),
            node(json!({"user_data": ""})),
            node(json!({"user_data": {}})),
        ] {
            assert_eq!(parse_request(&none).unwrap().ignition, None, "{none}");
        }
    }

    #[test]
    fn pre_rendered_and_odd_config_drives_are_refused() {
        let node = json!({"instance_info": {"configdrive": "H4sIAAAA"}});
        let error = parse_request(&node).unwrap_err().to_string();
        assert_eq!(
            error,
            "cannot use a pre-rendered config drive with install_coreos; pass it as a dict/JSON"
        );
        assert!(!error.contains("H4sI"));
        let node = json!({"instance_info": {"configdrive": [1]}});
        assert!(matches!(
            parse_request(&node),
            Err(CoreosError::ConfigDriveType("an array"))
        ));
    }

    #[test]
    fn the_ignition_config_is_never_shown() {
        let node =
            json!({"instance_info": {"configdrive": {"user_data": {"password": "hunter2"}}}});
        let request = parse_request(&node).unwrap();
        assert!(!format!("{request:?}").contains("hunter2"));
    }

    #[test]
    fn image_source_is_the_image_url_or_offline() {
        let node = |source: Value| json!({"instance_info": {"image_source": source}});
        let url = parse_request(&node(json!("http://images/fcos.raw.xz"))).unwrap();
        assert_eq!(url.image_url.as_deref(), Some("http://images/fcos.raw.xz"));
        for offline in [node(Value::Null), node(json!(" ")), json!({})] {
            assert_eq!(parse_request(&offline).unwrap().image_url, None);
        }
        assert!(matches!(
            parse_request(&node(json!("file:///etc/shadow"))),
            Err(CoreosError::ImageSource(_))
        ));
        assert!(matches!(
            parse_request(&node(json!(7))),
            Err(CoreosError::ImageSourceType("a number"))
        ));
    }

    #[test]
    fn arguments_follow_the_request() {
        let args = installer_args(
            Some(Path::new("/tmp/x/config.ign")),
            Some("http://h/i.raw"),
            "/dev/sda",
        );
        assert_eq!(
            args,
            [
                "install",
                "--preserve-on-error",
                "--ignition-file",
                "/tmp/x/config.ign",
                "--image-url",
                "http://h/i.raw",
                "--insecure",
                "/dev/sda"
            ]
        );
        let args = installer_args(None, None, "/dev/nvme0n1");
        assert_eq!(
            args,
            [
                "install",
                "--preserve-on-error",
                "--offline",
                "/dev/nvme0n1"
            ]
        );
    }

    #[test]
    fn the_installer_is_configured_or_in_the_host_root_or_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(host.join("usr/bin")).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let options = CoreosOptions {
            host_root: host.clone(),
            ..CoreosOptions::default()
        };
        let path = std::env::join_paths([dir.path().join("nowhere"), bin.clone()]).unwrap();

        let error = Installer::find(&options, Some(&path))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("coreos-installer is not installed: "),
            "{error}"
        );

        std::fs::write(bin.join("coreos-installer"), "").unwrap();
        assert_eq!(
            Installer::find(&options, Some(&path)).unwrap(),
            Installer::Direct(bin.join("coreos-installer"))
        );

        std::fs::write(host.join("usr/bin/coreos-installer"), "").unwrap();
        let chroot = Installer::find(&options, Some(&path)).unwrap();
        assert_eq!(chroot, Installer::Chroot { root: host.clone() });
        assert_eq!(
            chroot.command_prefix(),
            [
                OsString::from("chroot"),
                host.clone().into(),
                "/usr/bin/coreos-installer".into()
            ]
        );
        let (outside, inside) = chroot.scratch_dir();
        assert_eq!(outside, host.join(inside.strip_prefix("/").unwrap()));
        assert!(
            inside.to_str().unwrap().starts_with("/tmp/ferric-coreos-"),
            "{inside:?}"
        );

        let configured = CoreosOptions {
            installer: Some(dir.path().join("missing")),
            ..options
        };
        let error = Installer::find(&configured, Some(&path))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("missing") && error.contains(INSTALLER_ENV),
            "{error}"
        );
    }

    #[test]
    fn the_environment_names_the_installer() {
        let set = CoreosOptions::with_installer_env(Some("/opt/ci".into()));
        assert_eq!(set.installer, Some(PathBuf::from("/opt/ci")));
        assert_eq!(set.host_root, Path::new(HOST_ROOT));
        assert_eq!(
            CoreosOptions::with_installer_env(Some("".into())).installer,
            None
        );
        assert_eq!(CoreosOptions::with_installer_env(None).installer, None);
    }

    #[test]
    fn the_ignition_file_is_private_and_removed_afterwards() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("ferric-coreos-test");
        let guard = write_ignition(&dir, &Ignition(b"{}".to_vec())).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("config.ign")), 0o600);
        assert_eq!(std::fs::read(dir.join("config.ign")).unwrap(), b"{}");
        drop(guard);
        assert!(!dir.exists());
    }

    #[test]
    fn the_stderr_tail_keeps_the_last_lines_within_its_limit() {
        let mut tail = Tail::new(10);
        for line in ["one", "two", "three", "four"] {
            tail.push(line);
        }
        assert_eq!(tail.text(), "three\nfour");
        tail.push(&"x".repeat(25));
        assert_eq!(tail.text(), "x".repeat(10));
        let mut none = Tail::new(0);
        none.push("anything");
        assert_eq!(none.text(), "");
    }
}
