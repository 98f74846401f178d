//! `ferric ignition`: an Ignition v3 config that makes a Fedora or RHEL
//! CoreOS live system (live ISO or PXE) run ferric-agent, for deploys that
//! end with the agent's `install_coreos` step.
//!
//! The config writes the agent's settings to [`AGENT_CONFIG`], gives the
//! `core` user SSH keys for debugging, and enables `ferric-agent.service`,
//! which either downloads the static agent from ferricd and runs it, or runs
//! the agent's container image with podman, the host's root at
//! [`HOST_ROOT_IN_CONTAINER`] (where `install_coreos` finds the host's
//! coreos-installer).
//!
//! Operator input ends up in a systemd unit, so every value that goes there
//! is checked when the command line is parsed: a line break would add
//! directives, a space would add arguments, and systemd would expand `%`
//! specifiers, `$VARIABLES`, quotes and backslashes. Such values are
//! refused (clap's usage error, exit status 2) rather than escaped.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use clap::Args;
use serde_json::{json, Value};

/// The Ignition spec version emitted: every CoreOS with Ignition 2.15 or
/// later (Fedora CoreOS since 2023, RHCOS since OpenShift 4.14) reads it.
pub const SPEC_VERSION: &str = "3.4.0";

/// Where the config puts the agent's settings, on the host and, in
/// container mode, in the container.
pub const AGENT_CONFIG: &str = "/etc/ferric-agent/agent.toml";

/// Where the agent's `install_coreos` step expects the host's root file
/// system when the agent runs in a container.
pub const HOST_ROOT_IN_CONTAINER: &str = "/mnt/coreos";

/// The unit's name, and the container's.
const UNIT_NAME: &str = "ferric-agent.service";
const CONTAINER_NAME: &str = "ferric-agent";

/// Where ferricd serves the static agent, under its API URL.
const AGENT_ROUTE: &str = "/boot/agent/ferric-agent";

/// Where binary mode downloads the agent: the unit's RuntimeDirectory, made
/// afresh at each start, so a restart fetches the agent again.
const AGENT_BINARY: &str = "/run/ferric-agent/ferric-agent";

/// Owner read and write only.
const MODE_0600: u32 = 0o600;

#[derive(Debug, Args)]
pub struct IgnitionArgs {
    /// ferricd's API as the node reaches it, e.g. http://192.0.2.1:6385.
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub api_url: UnitUrl,
    /// The agent does not verify TLS certificates (of ferricd and of image
    /// servers); neither does the download of the agent binary.
    #[arg(long)]
    pub insecure: bool,
    /// The agent logs verbosely.
    #[arg(long)]
    pub debug: bool,
    /// An SSH public key line for the `core` user, or a file of them such as
    /// ~/.ssh/id_ed25519.pub (repeatable).
    #[arg(long = "ssh-key", value_name = "FILE_OR_KEY", value_parser = parse_ssh_keys)]
    pub ssh_keys: Vec<SshKeys>,
    /// Where the unit downloads the static agent; default:
    /// {api-url}/boot/agent/ferric-agent.
    #[arg(long, value_name = "URL", value_parser = parse_url, conflicts_with = "container")]
    pub agent_url: Option<UnitUrl>,
    /// Run the agent's container image with podman instead of the static
    /// binary, e.g. 192.0.2.1:5000/ferric/agent:latest.
    #[arg(long, value_name = "IMAGE", value_parser = parse_image)]
    pub container: Option<ImageRef>,
    /// Pull the image without verifying the registry's TLS (a registry on
    /// plain HTTP or with a self-signed certificate).
    #[arg(long, requires = "container")]
    pub insecure_registry: bool,
    /// Write the config here instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// An http(s) URL that can go into a systemd command line and a TOML
/// string as it is: printable ASCII without whitespace, quotes,
/// backslashes, `%` or `$`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitUrl(String);

impl UnitUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A container image reference ([REGISTRY[:PORT]/]NAME[:TAG][@DIGEST]) that
/// can go into a systemd command line as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef(String);

/// The SSH public key lines of one `--ssh-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKeys(Vec<String>);

/// How the unit gets the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSource {
    /// Download the static binary and run it on the host.
    Binary { url: UnitUrl },
    /// Pull the image and run it privileged with the host's devices and root.
    Container { image: ImageRef, tls_verify: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum IgnitionError {
    #[error("not an http:// or https:// URL with a host")]
    NotHttpUrl,
    #[error("{character:?} is not allowed: {why}")]
    Forbidden { character: char, why: &'static str },
    #[error("not a container image reference: it must start with a letter or a digit")]
    NotAnImage,
    #[error("not an SSH public key (TYPE BASE64 [COMMENT]): {why}")]
    NotAnSshKey { why: String },
    #[error("line {line} of {path} is not an SSH public key (TYPE BASE64 [COMMENT]): {why}")]
    NotAnSshKeyInFile {
        path: String,
        line: usize,
        why: String,
    },
    #[error("{path} holds a private key: give the public key (the .pub file)")]
    PrivateKey { path: String },
    #[error("{path} holds no SSH public key")]
    NoSshKeys { path: String },
    #[error("neither an SSH public key (TYPE BASE64 [COMMENT]) nor a readable file")]
    ReadKeys {
        #[source]
        source: io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Runs `ferric ignition`.
pub fn ignition_command(args: &IgnitionArgs) -> anyhow::Result<ExitCode> {
    let mut text = serde_json::to_string_pretty(&ignition_config(args))?;
    text.push('\n');
    match &args.output {
        Some(path) => fs::write(path, text).map_err(|source| IgnitionError::Write {
            path: path.display().to_string(),
            source,
        })?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The Ignition config for these options.
pub fn ignition_config(args: &IgnitionArgs) -> Value {
    let mut config = json!({
        "ignition": {"version": SPEC_VERSION},
        "storage": {
            "files": [{
                "path": AGENT_CONFIG,
                "mode": MODE_0600,
                "contents": {"source": data_url(&agent_toml(args))},
            }],
        },
        "systemd": {
            "units": [{
                "name": UNIT_NAME,
                "enabled": true,
                "contents": agent_unit(&agent_source(args), args.insecure),
            }],
        },
    });
    let keys: Vec<&String> = args.ssh_keys.iter().flat_map(|k| &k.0).collect();
    if !keys.is_empty() {
        config["passwd"] = json!({"users": [{"name": "core", "sshAuthorizedKeys": keys}]});
    }
    config
}

/// The agent's config file: only the settings given, so that the kernel
/// command line's (`ipa-insecure`, `ipa-debug`) still count when a flag is
/// not given.
pub fn agent_toml(args: &IgnitionArgs) -> String {
    // A JSON string is a TOML basic string: serde_json writes only the
    // escapes TOML shares.
    let api_url = serde_json::to_string(args.api_url.as_str()).expect("a string serializes");
    let mut toml =
        format!("# ferric-agent's settings, from `ferric ignition`.\napi_url = {api_url}\n");
    if args.insecure {
        toml.push_str("insecure = true\n");
    }
    if args.debug {
        toml.push_str("debug = true\n");
    }
    toml
}

pub fn agent_source(args: &IgnitionArgs) -> AgentSource {
    match (&args.container, &args.agent_url) {
        (Some(image), _) => AgentSource::Container {
            image: image.clone(),
            tls_verify: !args.insecure_registry,
        },
        (None, Some(url)) => AgentSource::Binary { url: url.clone() },
        (None, None) => AgentSource::Binary {
            url: UnitUrl(format!(
                "{}{AGENT_ROUTE}",
                args.api_url.as_str().trim_end_matches('/')
            )),
        },
    }
}

/// `ferric-agent.service`. It restarts until the agent runs: a node whose
/// agent gave up would wait for ever, so there is no start limit.
pub fn agent_unit(source: &AgentSource, insecure: bool) -> String {
    let service = match source {
        AgentSource::Binary { url } => {
            let curl_insecure = if insecure { " --insecure" } else { "" };
            [
                "RuntimeDirectory=ferric-agent".to_string(),
                "TimeoutStartSec=0".to_string(),
                format!(
                    "ExecStartPre=/usr/bin/curl --fail --silent --show-error --location \
                     --retry 10 --retry-delay 5 --retry-connrefused --connect-timeout 10\
                     {curl_insecure} --output {AGENT_BINARY} {}",
                    url.as_str()
                ),
                format!("ExecStartPre=/usr/bin/chmod 0755 {AGENT_BINARY}"),
                // SELinux: systemd may not execute a file labelled as /run's
                // files (203/EXEC); as a program it runs like /usr/bin's.
                // Without SELinux chcon fails, hence `-`.
                format!("ExecStartPre=-/usr/bin/chcon --type bin_t {AGENT_BINARY}"),
                format!("ExecStart={AGENT_BINARY} --config {AGENT_CONFIG}"),
            ]
            .join("\n")
        }
        AgentSource::Container { image, tls_verify } => {
            let tls = if *tls_verify {
                ""
            } else {
                " --tls-verify=false"
            };
            [
                // Pulling a large image takes what it takes.
                "TimeoutStartSec=0".to_string(),
                format!("ExecStartPre=/usr/bin/podman pull{tls} {}", image.0),
                // --replace: a container left over by a crash would make
                // every restart fail on the name. --pid host: reboot(2) in
                // a PID namespace stops only the container. /dev mounted:
                // --privileged copies the device nodes present at start,
                // and partitions come and go during a deploy.
                format!(
                    "ExecStart=/usr/bin/podman run --rm --privileged --network host \
                     --name {CONTAINER_NAME} --replace --pid host \
                     --volume /dev:/dev --volume /sys:/sys \
                     --volume /:{HOST_ROOT_IN_CONTAINER} \
                     --volume {AGENT_CONFIG}:{AGENT_CONFIG}:ro \
                     {} ferric-agent --config {AGENT_CONFIG}",
                    image.0
                ),
                format!("ExecStop=/usr/bin/podman stop {CONTAINER_NAME}"),
            ]
            .join("\n")
        }
    };
    format!(
        "[Unit]\n\
         Description=Ferric deploy agent\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         StartLimitIntervalSec=0\n\
         \n\
         [Service]\n\
         {service}\n\
         Restart=on-failure\n\
         RestartSec=10\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// `data:` URL of a file's contents.
fn data_url(contents: &str) -> String {
    format!("data:;base64,{}", BASE64.encode(contents))
}

/// Clap's value parsers print only an error's message: the whole chain
/// goes there.
fn for_clap<T>(result: Result<T, IgnitionError>) -> Result<T, String> {
    result.map_err(|e| {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        message
    })
}

fn parse_url(value: &str) -> Result<UnitUrl, String> {
    for_clap(unit_url(value))
}

fn parse_image(value: &str) -> Result<ImageRef, String> {
    for_clap(image_ref(value))
}

fn parse_ssh_keys(value: &str) -> Result<SshKeys, String> {
    for_clap(ssh_keys(value))
}

/// Characters a URL may hold here besides ASCII letters and digits: RFC
/// 3986's unreserved and reserved characters but `'` and `%`.
const URL_PUNCTUATION: &str = "-._~:/?#[]@!&()*+,;=";

/// Characters an image reference may hold besides ASCII letters and digits.
const IMAGE_PUNCTUATION: &str = "-._/:@";

pub fn unit_url(value: &str) -> Result<UnitUrl, IgnitionError> {
    check_unit_word(
        value,
        URL_PUNCTUATION,
        "a URL here may hold only ASCII letters, digits and -._~:/?#[]@!&()*+,;=",
    )?;
    let url = reqwest::Url::parse(value).map_err(|_| IgnitionError::NotHttpUrl)?;
    let has_host = url.host_str().is_some_and(|host| !host.is_empty());
    if !matches!(url.scheme(), "http" | "https") || !has_host {
        return Err(IgnitionError::NotHttpUrl);
    }
    Ok(UnitUrl(value.to_string()))
}

pub fn image_ref(value: &str) -> Result<ImageRef, IgnitionError> {
    check_unit_word(
        value,
        IMAGE_PUNCTUATION,
        "an image reference may hold only ASCII letters, digits and -._/:@",
    )?;
    // A leading `-` would make podman read an option.
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(IgnitionError::NotAnImage);
    }
    Ok(ImageRef(value.to_string()))
}

/// Refuses a value systemd would not pass on as one word, verbatim.
fn check_unit_word(
    value: &str,
    punctuation: &str,
    allowed: &'static str,
) -> Result<(), IgnitionError> {
    let refused = value
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || punctuation.contains(c)));
    let Some(character) = refused else {
        return Ok(());
    };
    let why = match character {
        c if c.is_control() => {
            "a line break or another control character would end the unit's line"
        }
        c if c.is_whitespace() => {
            "it would split the value into more words of the unit's command line"
        }
        '%' => "systemd expands % specifiers in units",
        '$' => "systemd expands $VARIABLES in command lines",
        '"' | '\'' | '\\' => "systemd interprets quotes and backslashes in command lines",
        _ => allowed,
    };
    Err(IgnitionError::Forbidden { character, why })
}

/// The key types of OpenSSH's public key files.
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

/// `--ssh-key`: a key line, or a file of key lines (blank lines and `#`
/// comments skipped).
pub fn ssh_keys(value: &str) -> Result<SshKeys, IgnitionError> {
    let first_word = value.split_whitespace().next().unwrap_or("");
    if SSH_KEY_TYPES.contains(&first_word) {
        let key = ssh_public_key(value).map_err(|why| IgnitionError::NotAnSshKey { why })?;
        return Ok(SshKeys(vec![key]));
    }
    let text = fs::read_to_string(value).map_err(|source| IgnitionError::ReadKeys { source })?;
    ssh_keys_in_file(Path::new(value), &text)
}

fn ssh_keys_in_file(path: &Path, text: &str) -> Result<SshKeys, IgnitionError> {
    let path = path.display().to_string();
    if text.contains("PRIVATE KEY-----") {
        return Err(IgnitionError::PrivateKey { path });
    }
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = ssh_public_key(line).map_err(|why| IgnitionError::NotAnSshKeyInFile {
            path: path.clone(),
            line: index + 1,
            why,
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(IgnitionError::NoSshKeys { path });
    }
    Ok(SshKeys(keys))
}

/// One public key line, `TYPE BASE64 [COMMENT]`, checked as sshd would read
/// it: the base64 holds a key of the type named. The answer is the line,
/// trimmed; the error says why not.
fn ssh_public_key(line: &str) -> Result<String, String> {
    let line = line.trim();
    if line.chars().any(char::is_control) {
        return Err(
            "it holds a line break or another control character (give one key per --ssh-key)"
                .into(),
        );
    }
    let mut words = line.split_whitespace();
    let key_type = words.next().unwrap_or("");
    if !SSH_KEY_TYPES.contains(&key_type) {
        return Err(format!("{key_type:?} is not an SSH key type"));
    }
    let blob = words
        .next()
        .and_then(|b| BASE64.decode(b).ok())
        .ok_or("the key is missing or not base64")?;
    // The blob starts with the key type as an SSH string: a big-endian
    // length, then the name.
    let named = blob
        .get(..4)
        .map(|len| u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)
        .and_then(|len| blob.get(4..4 + len));
    if named != Some(key_type.as_bytes()) {
        return Err(format!("the key is not a {key_type} key"));
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::error::ErrorKind;
    use clap::Parser;
    use ferric_agent::config::AgentConfig;

    const API: &str = "http://192.0.2.1:6385";
    const IMAGE: &str = "192.0.2.1:5000/ferric/agent:latest";

    /// An ed25519 key line made here: the type as an SSH string, then 32
    /// bytes of key.
    fn ed25519_key(comment: &str) -> String {
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(&[7; 32]);
        format!("ssh-ed25519 {} {comment}", BASE64.encode(blob))
    }

    fn parse(extra: &[&str]) -> Result<IgnitionArgs, clap::Error> {
        let argv = ["ferric", "ignition"].iter().chain(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Ignition(args) => Ok(args),
            other => panic!("not ignition: {other:?}"),
        }
    }

    fn config(extra: &[&str]) -> Value {
        ignition_config(&parse(extra).unwrap())
    }

    fn unit_text(config: &Value) -> &str {
        let unit = &config["systemd"]["units"][0];
        assert_eq!(unit["name"], UNIT_NAME);
        assert_eq!(unit["enabled"], true);
        unit["contents"].as_str().unwrap()
    }

    /// The config file as the agent reads it.
    fn agent_config(config: &Value) -> AgentConfig {
        let file = &config["storage"]["files"][0];
        assert_eq!(file["path"], AGENT_CONFIG);
        assert_eq!(file["mode"], 0o600);
        let source = file["contents"]["source"].as_str().unwrap();
        let encoded = source.strip_prefix("data:;base64,").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        fs::write(&path, BASE64.decode(encoded).unwrap()).unwrap();
        let mut agent = AgentConfig::default();
        agent.apply_file(&path).unwrap();
        agent.check().unwrap();
        agent
    }

    fn refusal(extra: &[&str]) -> String {
        let err = parse(extra).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation, "{err}");
        assert_eq!(err.exit_code(), 2);
        err.to_string()
    }

    #[test]
    fn the_agent_reads_the_config_file() {
        let plain = config(&["--api-url", API]);
        assert_eq!(plain["ignition"]["version"], "3.4.0");
        let agent = agent_config(&plain);
        assert_eq!(agent.api_url.as_deref(), Some(API));
        assert!(!agent.insecure && !agent.debug);

        let agent = agent_config(&config(&["--api-url", API, "--insecure", "--debug"]));
        assert_eq!(agent.api_url.as_deref(), Some(API));
        assert!(agent.insecure && agent.debug);
    }

    #[test]
    fn the_binary_unit_downloads_the_agent_from_ferricd() {
        let unit = agent_unit(
            &agent_source(&parse(&["--api-url", "http://192.0.2.1:6385/"]).unwrap()),
            false,
        );
        assert_eq!(
            unit,
            "[Unit]
Description=Ferric deploy agent
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=0

[Service]
RuntimeDirectory=ferric-agent
TimeoutStartSec=0
ExecStartPre=/usr/bin/curl --fail --silent --show-error --location --retry 10 --retry-delay 5 --retry-connrefused --connect-timeout 10 --output /run/ferric-agent/ferric-agent http://192.0.2.1:6385/boot/agent/ferric-agent
ExecStartPre=/usr/bin/chmod 0755 /run/ferric-agent/ferric-agent
ExecStartPre=-/usr/bin/chcon --type bin_t /run/ferric-agent/ferric-agent
ExecStart=/run/ferric-agent/ferric-agent --config /etc/ferric-agent/agent.toml
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
"
        );
        let insecure = config(&[
            "--api-url",
            "https://ferric.example:6385",
            "--insecure",
            "--agent-url",
            "https://files.example/agent",
        ]);
        assert!(unit_text(&insecure).contains(
            " --connect-timeout 10 --insecure --output /run/ferric-agent/ferric-agent \
             https://files.example/agent\n"
        ));
    }

    #[test]
    fn the_container_unit_runs_the_image_with_the_host_root() {
        let unit = agent_unit(
            &agent_source(&parse(&["--api-url", API, "--container", IMAGE]).unwrap()),
            false,
        );
        assert_eq!(
            unit,
            "[Unit]
Description=Ferric deploy agent
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=0

[Service]
TimeoutStartSec=0
ExecStartPre=/usr/bin/podman pull 192.0.2.1:5000/ferric/agent:latest
ExecStart=/usr/bin/podman run --rm --privileged --network host --name ferric-agent --replace --pid host --volume /dev:/dev --volume /sys:/sys --volume /:/mnt/coreos --volume /etc/ferric-agent/agent.toml:/etc/ferric-agent/agent.toml:ro 192.0.2.1:5000/ferric/agent:latest ferric-agent --config /etc/ferric-agent/agent.toml
ExecStop=/usr/bin/podman stop ferric-agent
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
"
        );
        let insecure = config(&[
            "--api-url",
            API,
            "--container",
            IMAGE,
            "--insecure-registry",
        ]);
        assert!(unit_text(&insecure)
            .contains("\nExecStartPre=/usr/bin/podman pull --tls-verify=false 192.0.2.1:5000/"));
        assert!(!unit.contains("tls-verify"));
    }

    #[test]
    fn ssh_keys_come_from_values_and_files() {
        assert!(config(&["--api-url", API]).get("passwd").is_none());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.pub");
        let (one, two, three) = (ed25519_key("a@x"), ed25519_key("b@y"), ed25519_key(""));
        fs::write(&file, format!("# the team\n{two}\r\n\n{three}\n")).unwrap();
        let config = config(&[
            "--api-url",
            API,
            "--ssh-key",
            &one,
            "--ssh-key",
            file.to_str().unwrap(),
        ]);
        assert_eq!(
            config["passwd"],
            json!({"users": [{"name": "core", "sshAuthorizedKeys": [one, two, three.trim()]}]})
        );
    }

    #[test]
    fn values_that_could_break_out_of_the_unit_are_refused() {
        for (url, reason) in [
            (
                "http://192.0.2.1:6385\nExecStartPre=/bin/sh",
                "control character",
            ),
            ("http://192.0.2.1:6385 --upload-file", "more words"),
            ("http://192.0.2.1:6385/%H", "specifiers"),
            ("http://192.0.2.1:6385/$HOME", "$VARIABLES"),
            ("http://192.0.2.1:6385/\"x", "quotes"),
            ("http://192.0.2.1:6385/\\x", "backslashes"),
            ("http://192.0.2.1:6385/é", "only ASCII"),
            ("ftp://192.0.2.1/agent", "http:// or https://"),
            ("file:///etc/passwd", "http:// or https://"),
            ("192.0.2.1:6385", "http:// or https://"),
        ] {
            let message = refusal(&["--api-url", url]);
            assert!(
                message.contains("--api-url") && message.contains(reason),
                "{message}"
            );
            let message = refusal(&["--api-url", API, "--agent-url", url]);
            assert!(
                message.contains("--agent-url") && message.contains(reason),
                "{message}"
            );
        }
        for (image, reason) in [
            ("quay.io/x:latest\nExecStart=/bin/sh", "control character"),
            ("quay.io/x --volume=/:/host", "more words"),
            ("quay.io/%n", "specifiers"),
            ("--privileged", "start with a letter"),
            ("-v/:/host", "start with a letter"),
            ("quay.io/x;y", "only ASCII letters"),
        ] {
            let message = refusal(&["--api-url", API, &format!("--container={image}")]);
            assert!(
                message.contains("--container") && message.contains(reason),
                "{message}"
            );
        }
    }

    #[test]
    fn bad_ssh_keys_are_refused() {
        let key = ed25519_key("me@host");
        let (key_type, rest) = key.split_once(' ').unwrap();
        let other_type = format!("ssh-rsa {rest}");
        let not_base64 = format!("{key_type} !!!! me");
        let two_lines = format!("{key}\n{key}");
        let bare_type = key_type.to_string();
        for (value, reason) in [
            (two_lines.as_str(), "line break"),
            (other_type.as_str(), "not a ssh-rsa key"),
            (not_base64.as_str(), "not base64"),
            (bare_type.as_str(), "missing"),
            ("/no/such/key.pub", "nor a readable file: No such file"),
        ] {
            let message = refusal(&["--api-url", API, "--ssh-key", value]);
            assert!(message.contains(reason), "{message}");
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ed25519");
        fs::write(&path, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n").unwrap();
        let message = refusal(&["--api-url", API, "--ssh-key", path.to_str().unwrap()]);
        assert!(message.contains("holds a private key"), "{message}");
        fs::write(&path, format!("{key}\nssh-ed25519\n")).unwrap();
        let message = refusal(&["--api-url", API, "--ssh-key", path.to_str().unwrap()]);
        assert!(message.contains("line 2 of"), "{message}");
        fs::write(&path, "# nobody\n").unwrap();
        let message = refusal(&["--api-url", API, "--ssh-key", path.to_str().unwrap()]);
        assert!(message.contains("holds no SSH public key"), "{message}");
    }

    #[test]
    fn options_that_do_not_go_together_are_refused() {
        let err = parse(&["--api-url", API, "--insecure-registry"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument, "{err}");
        let err = parse(&["--api-url", API, "--container", IMAGE, "--agent-url", API]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{err}");
        let err = parse(&["--debug"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument, "{err}");
    }
}
