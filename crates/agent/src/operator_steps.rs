//! Steps the operator adds without recompiling the agent: one TOML file per
//! step in a directory (`/etc/ferric-agent/steps.d` by default), each
//! naming a program. They form the [`OperatorSteps`] hardware manager, at
//! the service-provider support level, so a definition named like a
//! generic step (`erase_devices_metadata`) replaces it.
//!
//! ```toml
//! step = "flash_bmc_firmware"       # [a-z0-9_], unique in the directory
//! kinds = ["clean", "service"]      # clean, deploy and/or service
//! interface = "deploy"              # deploy (default) or raid
//! priority = 0                      # 0 (default): only when requested
//! command = ["/usr/local/sbin/flash-bmc", "--yes"]  # absolute path, no shell
//! timeout = 1800                    # seconds (default 3600); then killed
//! abortable = false                 # default false
//! reboot_requested = false          # default false
//! environment = { VENDOR = "acme" } # added to a minimal environment
//!
//! [argsinfo.firmware_url]
//! description = "Where the firmware is"
//! required = true
//! ```
//!
//! Running a step: the program gets the step's arguments as a JSON object
//! on stdin, and `FERRIC_STEP`, `FERRIC_STEP_KIND`, `FERRIC_NODE_UUID` and
//! `PATH` in its environment (nothing else of the agent's). Exit status 0 is
//! success, and its stdout (at most [`MAX_STDOUT`]; JSON if it parses,
//! otherwise text) is the step's result; any other status fails the step
//! with the status and the end of stderr. At the timeout the program's
//! whole process group is killed. Arguments may hold secrets: they are
//! never logged.
//!
//! Definitions are checked when the agent starts: a file that does not
//! parse, an unknown key, a program that is not an executable file, or two
//! files defining one step stop the agent, naming the file.

use crate::commands::CommandError;
use crate::hardware::{HardwareManager, Step, StepCall, StepKind, SupportLevel};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The most of a step's stdout kept as its result; more fails the step.
pub const MAX_STDOUT: usize = 1 << 20;
/// How much of the end of stderr goes into a failure's message.
const STDERR_TAIL: usize = 2048;
/// How long the output of a program that ended may stay open.
const OUTPUT_GRACE: Duration = Duration::from_secs(5);

/// Whether the child `pid` has exited, without reaping it (so its process
/// group id stays its own until it is killed and waited for).
fn exited(pid: libc::pid_t) -> std::io::Result<bool> {
    // SAFETY: siginfo_t is plain data that waitid fills; zeroed is valid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes only into `info`, which lives for the call.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: after a successful waitid, si_pid is set (0: not exited).
    Ok(unsafe { info.si_pid() } != 0)
}

/// The PATH operator programs run with.
const STEP_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why the step definitions cannot be used. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot read the operator step directory {dir}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the operator step definition {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("operator step definition {file} is not valid")]
    Parse {
        file: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("operator step definition {file}: {problem}")]
    Invalid { file: PathBuf, problem: String },
}

/// One step definition file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Definition {
    step: String,
    kinds: Vec<String>,
    #[serde(default = "default_interface")]
    interface: String,
    #[serde(default)]
    priority: u32,
    command: Vec<String>,
    #[serde(default = "default_timeout")]
    timeout: u64,
    #[serde(default)]
    abortable: bool,
    #[serde(default)]
    reboot_requested: bool,
    #[serde(default)]
    argsinfo: BTreeMap<String, ArgInfo>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
}

fn default_interface() -> String {
    "deploy".to_owned()
}

fn default_timeout() -> u64 {
    3600
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct ArgInfo {
    description: String,
    #[serde(default)]
    required: bool,
}

/// A checked definition.
#[derive(Debug, Clone)]
pub struct OperatorStep {
    pub file: PathBuf,
    pub name: String,
    pub kinds: Vec<StepKind>,
    pub interface: String,
    pub priority: u32,
    pub command: Vec<String>,
    pub timeout: Duration,
    pub abortable: bool,
    pub reboot_requested: bool,
    argsinfo: BTreeMap<String, ArgInfo>,
    environment: BTreeMap<String, String>,
}

impl OperatorStep {
    fn listed(&self, kind: StepKind) -> Step {
        Step {
            step: self.name.clone(),
            priority: self.priority,
            interface: self.interface.clone(),
            reboot_requested: self.reboot_requested,
            // Ironic reads `abortable` for clean and service steps only.
            abortable: (kind != StepKind::Deploy).then_some(self.abortable),
            argsinfo: (!self.argsinfo.is_empty())
                .then(|| serde_json::to_value(&self.argsinfo).unwrap_or_default()),
        }
    }
}

fn check(file: &Path, definition: Definition) -> Result<OperatorStep, DefinitionError> {
    let invalid = |problem: String| DefinitionError::Invalid {
        file: file.to_owned(),
        problem,
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if !name_ok(&definition.step) {
        return Err(invalid(format!(
            "step {:?}: a step name is 1 to 64 characters of a-z, 0-9 and _",
            definition.step
        )));
    }
    if definition.kinds.is_empty() {
        return Err(invalid(
            "kinds is empty; give clean, deploy and/or service".into(),
        ));
    }
    let mut kinds = Vec::new();
    for kind in &definition.kinds {
        let parsed = StepKind::from_name(kind)
            .ok_or_else(|| invalid(format!("kinds: {kind:?} is not clean, deploy or service")))?;
        if kinds.contains(&parsed) {
            return Err(invalid(format!("kinds: {kind:?} is listed twice")));
        }
        kinds.push(parsed);
    }
    if !["deploy", "raid"].contains(&definition.interface.as_str()) {
        return Err(invalid(format!(
            "interface {:?}: the agent runs steps of the deploy and raid interfaces only",
            definition.interface
        )));
    }
    let Some(program) = definition.command.first() else {
        return Err(invalid(
            "command is empty; give the program and its arguments".into(),
        ));
    };
    let program = Path::new(program);
    if !program.is_absolute() {
        return Err(invalid(format!(
            "command: the program {} must be an absolute path",
            program.display()
        )));
    }
    match std::fs::metadata(program) {
        Ok(meta)
            if meta.is_file()
                && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0 => {}
        Ok(_) => {
            return Err(invalid(format!(
                "command: {} is not an executable file",
                program.display()
            )))
        }
        Err(error) => {
            return Err(invalid(format!("command: {}: {error}", program.display())));
        }
    }
    if definition.timeout == 0 || definition.timeout > 7 * 24 * 3600 {
        return Err(invalid(format!(
            "timeout {}: give 1 to 604800 seconds",
            definition.timeout
        )));
    }
    for key in definition.environment.keys() {
        let ok = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok || key == "PATH" || key.starts_with("FERRIC_") {
            return Err(invalid(format!(
                "environment: {key:?} is not a variable name the step may set"
            )));
        }
    }
    for name in definition.argsinfo.keys() {
        if !name_ok(name) {
            return Err(invalid(format!(
                "argsinfo: {name:?}: an argument name is 1 to 64 characters of a-z, 0-9 and _"
            )));
        }
    }
    Ok(OperatorStep {
        file: file.to_owned(),
        name: definition.step,
        kinds,
        interface: definition.interface,
        priority: definition.priority,
        command: definition.command,
        timeout: Duration::from_secs(definition.timeout),
        abortable: definition.abortable,
        reboot_requested: definition.reboot_requested,
        argsinfo: definition.argsinfo,
        environment: definition.environment,
    })
}

/// The operator's steps: a hardware manager.
#[derive(Debug, Clone)]
pub struct OperatorSteps {
    steps: Vec<OperatorStep>,
    version: String,
}

impl OperatorSteps {
    /// The name the steps and the version are listed under.
    pub const NAME: &'static str = "OperatorStepsManager";

    /// Reads every `*.toml` file in `dir` (other files are ignored).
    pub fn load(dir: &Path) -> Result<Self, DefinitionError> {
        let read_dir = |source| DefinitionError::ReadDir {
            dir: dir.to_owned(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_dir)? {
            let path = entry.map_err(read_dir)?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            } else {
                tracing::warn!(file = %path.display(), "not a step definition (*.toml); ignored");
            }
        }
        files.sort();
        let mut steps: Vec<OperatorStep> = Vec::new();
        let mut fingerprint = String::new();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| DefinitionError::Read {
                file: file.clone(),
                source,
            })?;
            let definition: Definition =
                toml::from_str(&text).map_err(|source| DefinitionError::Parse {
                    file: file.clone(),
                    source,
                })?;
            let step = check(&file, definition)?;
            if let Some(other) = steps.iter().find(|s| s.name == step.name) {
                return Err(DefinitionError::Invalid {
                    file,
                    problem: format!(
                        "step {:?} is already defined in {}",
                        step.name,
                        other.file.display()
                    ),
                });
            }
            fingerprint.push_str(&format!("{}\0{text}\0", file.display()));
            tracing::info!(step = %step.name, file = %step.file.display(), "operator step loaded");
            steps.push(step);
        }
        // Changed definitions change the version: the conductor restarts
        // an operation whose steps changed under it.
        let digest = ferric_image::checksum::sha256_hex(fingerprint.as_bytes());
        Ok(OperatorSteps {
            steps,
            version: format!("1.0-{}", &digest[..12]),
        })
    }

    pub fn steps(&self) -> &[OperatorStep] {
        &self.steps
    }

    fn listed(&self, kind: StepKind) -> Vec<Step> {
        self.steps
            .iter()
            .filter(|s| s.kinds.contains(&kind))
            .map(|s| s.listed(kind))
            .collect()
    }
}

impl HardwareManager for OperatorSteps {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    fn evaluate_hardware_support(&self) -> SupportLevel {
        if self.steps.is_empty() {
            SupportLevel::None
        } else {
            SupportLevel::ServiceProvider
        }
    }

    fn clean_steps(&self, _node: &Value, _ports: &Value) -> Vec<Step> {
        self.listed(StepKind::Clean)
    }

    fn deploy_steps(&self, _node: &Value, _ports: &Value) -> Vec<Step> {
        self.listed(StepKind::Deploy)
    }

    fn service_steps(&self, _node: &Value, _ports: &Value) -> Vec<Step> {
        self.listed(StepKind::Service)
    }

    fn execute_step(&self, call: &StepCall<'_>) -> Option<Result<Value, CommandError>> {
        let step = self
            .steps
            .iter()
            .find(|s| s.name == call.name && s.kinds.contains(&call.kind))?;
        Some(run(step, call))
    }
}

/// Runs one step's program to completion or its timeout.
fn run(step: &OperatorStep, call: &StepCall<'_>) -> Result<Value, CommandError> {
    let failed = |details: String| {
        CommandError::execution(format!(
            "operator step {} ({}): {details}",
            step.name,
            step.file.display()
        ))
    };
    let args = if call.args.is_null() {
        Value::Object(Default::default())
    } else {
        call.args.clone()
    };
    let missing: Vec<&str> = step
        .argsinfo
        .iter()
        .filter(|(name, info)| info.required && args.get(name.as_str()).is_none())
        .map(|(name, _)| name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(CommandError::invalid_params(format!(
            "operator step {}: missing required arguments: {}",
            step.name,
            missing.join(", ")
        )));
    }
    let input = serde_json::to_vec(&args).map_err(|e| failed(format!("arguments: {e}")))?;

    tracing::info!(step = %step.name, kind = call.kind.name(), program = %step.command[0], "running an operator step");
    let mut child = Command::new(&step.command[0])
        .args(&step.command[1..])
        .env_clear()
        .envs(&step.environment)
        .env("PATH", STEP_PATH)
        .env("FERRIC_STEP", &step.name)
        .env("FERRIC_STEP_KIND", call.kind.name())
        .env("FERRIC_NODE_UUID", call.node["uuid"].as_str().unwrap_or(""))
        .current_dir("/")
        // Its own process group, so the timeout kills its children too.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot start {}: {e}", step.command[0])))?;
    let group = child.id() as libc::pid_t;

    // Written from its own thread: a program that does not read stdin
    // must not block the agent (EPIPE is not an error then).
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    // The readers hand their results over channels: a process the program
    // started in a session of its own escapes the group kill and may keep
    // the pipes open, and must not keep the agent busy forever.
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let (out_send, out_receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let read = (&mut stdout)
            .take(MAX_STDOUT as u64 + 1)
            .read_to_end(&mut kept);
        // Drain the rest so the program is not blocked writing.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        let _ = out_send.send(read.map(|_| kept));
    });
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let (err_send, err_receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tail = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 4 * STDERR_TAIL {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
        }
        if tail.len() > STDERR_TAIL {
            tail.drain(..tail.len() - STDERR_TAIL);
        }
        let _ = err_send.send(String::from_utf8_lossy(&tail).trim().to_owned());
    });

    let started = Instant::now();
    let finished = loop {
        match exited(group) {
            Ok(true) => break true,
            Ok(false) if started.elapsed() < step.timeout => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(false) => break false,
            Err(e) => return Err(failed(format!("waiting for it: {e}"))),
        }
    };
    // Whatever the program left behind goes too (and at the timeout, the
    // program itself), so the output pipes close. The program is not
    // reaped yet, so its group id cannot have been given to anyone else.
    // SAFETY: kill(2) with a negative pid signals the process group the
    // child leads (it was made leader above); no memory is involved.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let status = child
        .wait()
        .map_err(|e| failed(format!("waiting for it: {e}")))?;
    if !finished {
        return Err(failed(format!(
            "timed out after {} s; its process group was killed",
            step.timeout.as_secs()
        )));
    }
    // The stdin writer ends by itself (done, or EPIPE once the pipe
    // closes); it is not waited for, for the same reason as the readers.
    drop(writer);
    let stdout = match out_receive.recv_timeout(OUTPUT_GRACE) {
        Ok(read) => read.map_err(|e| failed(format!("reading its output: {e}")))?,
        Err(_) => {
            return Err(failed(format!(
                "it exited but its output stayed open for {} s: a process it started left \
                 its process group and still holds it",
                OUTPUT_GRACE.as_secs()
            )))
        }
    };
    let stderr = err_receive.recv_timeout(OUTPUT_GRACE).unwrap_or_default();
    if !status.success() {
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => status.to_string(),
        };
        let stderr = if stderr.is_empty() {
            "(no stderr)".to_owned()
        } else {
            format!("stderr: {stderr}")
        };
        return Err(failed(format!("failed with {how}; {stderr}")));
    }
    if stdout.len() > MAX_STDOUT {
        return Err(failed(format!(
            "wrote more than {MAX_STDOUT} bytes to stdout; a step's result must be smaller"
        )));
    }
    tracing::info!(step = %step.name, "operator step succeeded");
    Ok(step_result(&stdout))
}

/// stdout as JSON if it parses, else as text; nothing is null.
fn step_result(stdout: &[u8]) -> Value {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(stdout)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(stdout).into_owned()))
}
