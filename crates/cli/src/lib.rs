//! `ferric`: the operator's command line. It speaks the Ironic v1 API, so
//! it works against Ferric and against OpenStack Ironic.

mod client;
mod ignition;
mod image;
mod output;
pub mod ramdisk;
mod wait;

pub use client::{error_message, ClientError, IronicClient};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "ferric",
    version,
    about = "Operate Ferric (or any Ironic-compatible API)"
)]
pub struct Cli {
    /// API endpoint.
    #[arg(
        long,
        env = "FERRIC_URL",
        default_value = "http://127.0.0.1:6385",
        global = true
    )]
    pub url: String,
    /// Output format, given before the command: `ferric --format json node list`.
    /// (Not global, so that `configdrive build --format iso|vfat` keeps its
    /// own meaning.)
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Nodes: the machines Ferric provisions.
    #[command(subcommand)]
    Node(Box<NodeCommand>),
    /// Ports: a node's network interfaces, by MAC address.
    #[command(subcommand)]
    Port(PortCommand),
    /// Hardware types the conductors drive.
    #[command(subcommand)]
    Driver(ListOnly),
    /// Running conductors.
    #[command(subcommand)]
    Conductor(ListOnly),
    /// Disk images on this machine: inspect, convert to raw, map, write.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Config drives: build one from files or from Ironic's dict form.
    #[command(subcommand)]
    Configdrive(image::ConfigdriveCommand),
    /// The deploy ramdisk: build the initramfs, make a bootable ISO.
    #[command(subcommand)]
    Ramdisk(ramdisk::RamdiskCommand),
    /// An Ignition config that makes a CoreOS live ISO or PXE boot run
    /// ferric-agent (the static binary from ferricd, or a container image).
    Ignition(ignition::IgnitionArgs),
}

#[derive(Debug, Subcommand)]
pub enum ListOnly {
    List,
}

/// How long `--wait` waits, in seconds (0: forever).
#[derive(Debug, Args)]
pub struct Wait {
    /// Wait until the node settles, showing its state live.
    #[arg(long, num_args = 0..=1, default_missing_value = "0", value_name = "SECONDS")]
    pub wait: Option<u64>,
}

#[derive(Debug, Args)]
pub struct NodeFields {
    #[arg(long)]
    pub name: Option<String>,
    /// driver_info entry KEY=VALUE (VALUE is JSON when it parses as JSON).
    #[arg(long = "driver-info", value_name = "KEY=VALUE")]
    pub driver_info: Vec<String>,
    #[arg(long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
    #[arg(long = "extra", value_name = "KEY=VALUE")]
    pub extra: Vec<String>,
    #[arg(long = "instance-info", value_name = "KEY=VALUE")]
    pub instance_info: Vec<String>,
    #[arg(long)]
    pub resource_class: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    #[arg(long)]
    pub deploy_interface: Option<String>,
    #[arg(long)]
    pub boot_interface: Option<String>,
    #[arg(long)]
    pub power_interface: Option<String>,
    #[arg(long)]
    pub management_interface: Option<String>,
    #[arg(long)]
    pub inspect_interface: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Enrol a node.
    Create {
        #[arg(long)]
        driver: String,
        #[arg(long)]
        uuid: Option<String>,
        #[command(flatten)]
        fields: NodeFields,
    },
    /// List nodes (all pages unless --limit).
    List {
        #[arg(long)]
        provision_state: Option<String>,
        #[arg(long)]
        driver: Option<String>,
        #[arg(long)]
        maintenance: bool,
        #[arg(long)]
        associated: bool,
        #[arg(long)]
        resource_class: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        /// Every field.
        #[arg(long)]
        long: bool,
    },
    Show {
        node: String,
        /// Only these fields (comma separated).
        #[arg(long)]
        fields: Option<String>,
    },
    /// Change fields (JSON Patch `add`).
    Set {
        node: String,
        #[command(flatten)]
        fields: NodeFields,
    },
    /// Remove fields or keys (JSON Patch `remove`).
    Unset {
        node: String,
        #[arg(long = "driver-info", value_name = "KEY")]
        driver_info: Vec<String>,
        #[arg(long = "property", value_name = "KEY")]
        properties: Vec<String>,
        #[arg(long = "extra", value_name = "KEY")]
        extra: Vec<String>,
        #[arg(long = "instance-info", value_name = "KEY")]
        instance_info: Vec<String>,
        #[arg(long)]
        name: bool,
        #[arg(long)]
        description: bool,
    },
    Delete {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Check every interface of a node.
    Validate { node: String },
    /// enroll -> manageable (checks BMC access).
    Manage {
        node: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// manageable -> available, through automated cleaning.
    Provide {
        node: String,
        #[command(flatten)]
        wait: Wait,
    },
    Inspect {
        node: String,
        #[command(flatten)]
        wait: Wait,
    },
    Abort {
        node: String,
        #[command(flatten)]
        wait: Wait,
    },
    Adopt {
        node: String,
        #[command(flatten)]
        wait: Wait,
    },
    Unhold {
        node: String,
        #[command(flatten)]
        wait: Wait,
    },
    Unrescue {
        node: String,
        #[command(flatten)]
        wait: Wait,
    },
    Rescue {
        node: String,
        #[arg(long)]
        rescue_password: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Manual cleaning with the given steps.
    Clean {
        node: String,
        /// JSON list of steps, or @FILE.
        #[arg(long)]
        clean_steps: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// available -> active.
    Deploy {
        node: String,
        /// Sets instance_info/image_source first.
        #[arg(long)]
        image_url: Option<String>,
        /// Sets instance_info/image_checksum first.
        #[arg(long)]
        image_checksum: Option<String>,
        /// Config drive: a JSON object (inline or in a file) with meta_data,
        /// user_data, network_data, vendor_data; any other file content is sent
        /// as is (a gzip+base64 image or a URL).
        #[arg(long)]
        config_drive: Option<String>,
        /// JSON list of deploy steps, or @FILE.
        #[arg(long)]
        deploy_steps: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    Rebuild {
        node: String,
        #[arg(long)]
        config_drive: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// active -> available: tear down and clean.
    Undeploy {
        node: String,
        #[command(flatten)]
        wait: Wait,
    },
    Power {
        #[arg(value_enum)]
        action: PowerAction,
        node: String,
        #[arg(long)]
        soft: bool,
        #[arg(long, value_name = "SECONDS")]
        power_timeout: Option<u64>,
    },
    #[command(subcommand, name = "boot-device")]
    BootDevice(BootDeviceCommand),
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
    /// Wait until a node settles.
    Wait {
        node: String,
        /// Seconds (0: forever).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        /// Wait for this provision state.
        #[arg(long = "for")]
        state: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PowerAction {
    On,
    Off,
    Reboot,
}

#[derive(Debug, Subcommand)]
pub enum BootDeviceCommand {
    Set {
        node: String,
        device: String,
        #[arg(long)]
        persistent: bool,
    },
    Show {
        node: String,
        #[arg(long)]
        supported: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    Set {
        node: String,
        #[arg(long)]
        reason: Option<String>,
    },
    Unset {
        node: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PortCommand {
    Create {
        address: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        pxe_enabled: Option<bool>,
        #[arg(long)]
        name: Option<String>,
    },
    List {
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        long: bool,
    },
    Show {
        port: String,
    },
    Delete {
        #[arg(required = true)]
        ports: Vec<String>,
    },
}

/// Runs a command line; prints errors; the exit code says how it went.
pub fn run(cli: Cli) -> ExitCode {
    match execute(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferric: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `KEY=VALUE` with VALUE parsed as JSON when it is JSON, else a string.
pub fn parse_pair(pair: &str) -> anyhow::Result<(String, Value)> {
    let (key, value) = pair
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("expected KEY=VALUE, got {pair:?}"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

fn pairs(items: &[String]) -> anyhow::Result<Map<String, Value>> {
    items.iter().map(|p| parse_pair(p)).collect()
}

/// A JSON argument given inline or as `@FILE`.
fn json_arg(arg: &str) -> anyhow::Result<Value> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)?,
        None => arg.to_string(),
    };
    Ok(serde_json::from_str(&text)?)
}

/// A config drive argument: a JSON object (inline or in a file) goes as
/// Ironic's dict form; other file contents go as they are.
pub fn config_drive_arg(arg: &str) -> anyhow::Result<Value> {
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(arg) {
        return Ok(v);
    }
    let text = std::fs::read_to_string(arg).map_err(|e| {
        anyhow::anyhow!("config drive {arg:?} is neither a JSON object nor a readable file: {e}")
    })?;
    match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Ok(Value::String(text.trim().to_string())),
    }
}

/// JSON Patch `add` operations for the given node fields.
pub fn node_patch(f: &NodeFields) -> anyhow::Result<Vec<Value>> {
    let mut ops = Vec::new();
    for (field, items) in [
        ("driver_info", &f.driver_info),
        ("properties", &f.properties),
        ("extra", &f.extra),
        ("instance_info", &f.instance_info),
    ] {
        for (k, v) in pairs(items)? {
            ops.push(json!({"op": "add", "path": format!("/{field}/{}", escape_pointer(&k)), "value": v}));
        }
    }
    for (field, value) in scalar_fields(f) {
        ops.push(json!({"op": "add", "path": format!("/{field}"), "value": value}));
    }
    Ok(ops)
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn scalar_fields(f: &NodeFields) -> Vec<(&'static str, &String)> {
    [
        ("name", &f.name),
        ("resource_class", &f.resource_class),
        ("description", &f.description),
        ("deploy_interface", &f.deploy_interface),
        ("boot_interface", &f.boot_interface),
        ("power_interface", &f.power_interface),
        ("management_interface", &f.management_interface),
        ("inspect_interface", &f.inspect_interface),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect()
}

fn execute(cli: &Cli) -> anyhow::Result<ExitCode> {
    // The API client is made only by the commands that talk to a server.
    let client = || IronicClient::new(&cli.url);
    let out = output::Output::new(cli.format);
    match &cli.command {
        Command::Image(cmd) => image::image_command(cli.format, cmd),
        Command::Configdrive(cmd) => image::configdrive_command(cmd),
        Command::Ramdisk(cmd) => ramdisk::ramdisk_command(cmd),
        Command::Ignition(args) => ignition::ignition_command(args),
        Command::Node(cmd) => node_command(&client(), &out, cmd),
        Command::Port(cmd) => port_command(&client(), &out, cmd),
        Command::Driver(ListOnly::List) => {
            let drivers = client().get("/v1/drivers")?;
            out.list(
                &drivers["drivers"],
                &[("Supported driver(s)", "name"), ("Active host(s)", "hosts")],
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Conductor(ListOnly::List) => {
            let c = client().get("/v1/conductors")?;
            out.list(
                &c["conductors"],
                &[
                    ("Hostname", "hostname"),
                    ("Conductor Group", "conductor_group"),
                    ("Alive", "alive"),
                ],
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

const NODE_COLUMNS: &[(&str, &str)] = &[
    ("UUID", "uuid"),
    ("Name", "name"),
    ("Instance UUID", "instance_uuid"),
    ("Power State", "power_state"),
    ("Provisioning State", "provision_state"),
    ("Maintenance", "maintenance"),
];

fn provision(
    client: &IronicClient,
    out: &output::Output,
    node: &str,
    body: Value,
    wait: Option<u64>,
    expect: Option<&str>,
) -> anyhow::Result<ExitCode> {
    client.put(&format!("/v1/nodes/{node}/states/provision"), Some(&body))?;
    match wait {
        None => Ok(ExitCode::SUCCESS),
        Some(secs) => wait::until_settled(client, out, node, expect, timeout(secs)),
    }
}

fn timeout(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

fn node_command(
    client: &IronicClient,
    out: &output::Output,
    cmd: &NodeCommand,
) -> anyhow::Result<ExitCode> {
    use NodeCommand as N;
    let verb = |node: &str, target: &str, wait: &Wait, expect: Option<&str>| {
        provision(
            client,
            out,
            node,
            json!({"target": target}),
            wait.wait,
            expect,
        )
    };
    match cmd {
        N::Create {
            driver,
            uuid,
            fields,
        } => {
            let mut body = Map::new();
            body.insert("driver".into(), json!(driver));
            if let Some(u) = uuid {
                body.insert("uuid".into(), json!(u));
            }
            for (field, items) in [
                ("driver_info", &fields.driver_info),
                ("properties", &fields.properties),
                ("extra", &fields.extra),
                ("instance_info", &fields.instance_info),
            ] {
                if !items.is_empty() {
                    body.insert(field.into(), Value::Object(pairs(items)?));
                }
            }
            for (field, value) in scalar_fields(fields) {
                body.insert(field.into(), json!(value));
            }
            let node = client.post("/v1/nodes", &Value::Object(body))?;
            out.record(&node);
        }
        N::List {
            provision_state,
            driver,
            maintenance,
            associated,
            resource_class,
            limit,
            long,
        } => {
            let mut query = vec![];
            if let Some(s) = provision_state {
                query.push(format!("provision_state={}", s.replace(' ', "%20")));
            }
            if let Some(d) = driver {
                query.push(format!("driver={d}"));
            }
            if *maintenance {
                query.push("maintenance=true".into());
            }
            if *associated {
                query.push("associated=true".into());
            }
            if let Some(rc) = resource_class {
                query.push(format!("resource_class={rc}"));
            }
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            let base = if *long {
                "/v1/nodes/detail"
            } else {
                "/v1/nodes"
            };
            let path = format!("{base}?{}", query.join("&"));
            let nodes = if limit.is_some() {
                client.get(&path)?["nodes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            } else {
                client.list_all(&path, "nodes")?
            };
            let nodes = Value::Array(nodes);
            if *long {
                out.full_list(&nodes);
            } else {
                out.list(&nodes, NODE_COLUMNS);
            }
        }
        N::Show { node, fields } => {
            let path = match fields {
                Some(f) => format!("/v1/nodes/{node}?fields={f}"),
                None => format!("/v1/nodes/{node}"),
            };
            out.record(&client.get(&path)?);
        }
        N::Set { node, fields } => {
            let ops = node_patch(fields)?;
            anyhow::ensure!(!ops.is_empty(), "nothing to set");
            out.record(&client.patch(&format!("/v1/nodes/{node}"), &Value::Array(ops))?);
        }
        N::Unset {
            node,
            driver_info,
            properties,
            extra,
            instance_info,
            name,
            description,
        } => {
            let mut ops = Vec::new();
            for (field, keys) in [
                ("driver_info", driver_info),
                ("properties", properties),
                ("extra", extra),
                ("instance_info", instance_info),
            ] {
                for k in keys {
                    ops.push(
                        json!({"op": "remove", "path": format!("/{field}/{}", escape_pointer(k))}),
                    );
                }
            }
            for (field, on) in [("name", name), ("description", description)] {
                if *on {
                    ops.push(json!({"op": "remove", "path": format!("/{field}")}));
                }
            }
            anyhow::ensure!(!ops.is_empty(), "nothing to unset");
            out.record(&client.patch(&format!("/v1/nodes/{node}"), &Value::Array(ops))?);
        }
        N::Delete { nodes } => {
            for n in nodes {
                client.delete(&format!("/v1/nodes/{n}"))?;
                out.note(&format!("Deleted node {n}"));
            }
        }
        N::Validate { node } => {
            let v = client.get(&format!("/v1/nodes/{node}/validate"))?;
            out.validation(&v);
        }
        N::Manage { node, wait } => return verb(node, "manage", wait, Some("manageable")),
        N::Provide { node, wait } => return verb(node, "provide", wait, Some("available")),
        N::Inspect { node, wait } => return verb(node, "inspect", wait, Some("manageable")),
        N::Abort { node, wait } => return verb(node, "abort", wait, None),
        N::Adopt { node, wait } => return verb(node, "adopt", wait, Some("active")),
        N::Unhold { node, wait } => return verb(node, "unhold", wait, None),
        N::Unrescue { node, wait } => return verb(node, "unrescue", wait, Some("active")),
        N::Undeploy { node, wait } => return verb(node, "deleted", wait, Some("available")),
        N::Rescue {
            node,
            rescue_password,
            wait,
        } => {
            let body = json!({"target": "rescue", "rescue_password": rescue_password});
            return provision(client, out, node, body, wait.wait, Some("rescue"));
        }
        N::Clean {
            node,
            clean_steps,
            wait,
        } => {
            let body = json!({"target": "clean", "clean_steps": json_arg(clean_steps)?});
            return provision(client, out, node, body, wait.wait, Some("manageable"));
        }
        N::Deploy {
            node,
            image_url,
            image_checksum,
            config_drive,
            deploy_steps,
            wait,
        } => {
            let mut ops = Vec::new();
            if let Some(u) = image_url {
                ops.push(json!({"op": "add", "path": "/instance_info/image_source", "value": u}));
            }
            if let Some(c) = image_checksum {
                ops.push(json!({"op": "add", "path": "/instance_info/image_checksum", "value": c}));
            }
            if !ops.is_empty() {
                client.patch(&format!("/v1/nodes/{node}"), &Value::Array(ops))?;
            }
            let mut body = json!({"target": "active"});
            if let Some(cd) = config_drive {
                body["configdrive"] = config_drive_arg(cd)?;
            }
            if let Some(steps) = deploy_steps {
                body["deploy_steps"] = json_arg(steps)?;
            }
            return provision(client, out, node, body, wait.wait, Some("active"));
        }
        N::Rebuild {
            node,
            config_drive,
            wait,
        } => {
            let mut body = json!({"target": "rebuild"});
            if let Some(cd) = config_drive {
                body["configdrive"] = config_drive_arg(cd)?;
            }
            return provision(client, out, node, body, wait.wait, Some("active"));
        }
        N::Power {
            action,
            node,
            soft,
            power_timeout,
        } => {
            let target = match (action, soft) {
                (PowerAction::On, _) => "power on",
                (PowerAction::Off, false) => "power off",
                (PowerAction::Off, true) => "soft power off",
                (PowerAction::Reboot, false) => "rebooting",
                (PowerAction::Reboot, true) => "soft rebooting",
            };
            let mut body = json!({"target": target});
            if let Some(t) = power_timeout {
                body["timeout"] = json!(t);
            }
            client.put(&format!("/v1/nodes/{node}/states/power"), Some(&body))?;
            wait::until_power_settled(
                client,
                node,
                Duration::from_secs(power_timeout.unwrap_or(60) + 30),
            )?;
            out.note(&format!("Node {node}: {target} requested"));
        }
        N::BootDevice(BootDeviceCommand::Set {
            node,
            device,
            persistent,
        }) => {
            let body = json!({"boot_device": device, "persistent": persistent});
            client.put(
                &format!("/v1/nodes/{node}/management/boot_device"),
                Some(&body),
            )?;
        }
        N::BootDevice(BootDeviceCommand::Show { node, supported }) => {
            let path = if *supported {
                format!("/v1/nodes/{node}/management/boot_device/supported")
            } else {
                format!("/v1/nodes/{node}/management/boot_device")
            };
            out.record(&client.get(&path)?);
        }
        N::Maintenance(MaintenanceCommand::Set { node, reason }) => {
            let body = reason.as_ref().map(|r| json!({"reason": r}));
            client.put(&format!("/v1/nodes/{node}/maintenance"), body.as_ref())?;
        }
        N::Maintenance(MaintenanceCommand::Unset { node }) => {
            client.delete(&format!("/v1/nodes/{node}/maintenance"))?;
        }
        N::Wait {
            node,
            timeout: secs,
            state,
        } => {
            return wait::until_settled(client, out, node, state.as_deref(), timeout(*secs));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn port_command(
    client: &IronicClient,
    out: &output::Output,
    cmd: &PortCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        PortCommand::Create {
            address,
            node,
            pxe_enabled,
            name,
        } => {
            // The API takes the node's UUID; a name is resolved first.
            let uuid = client.get(&format!("/v1/nodes/{node}?fields=uuid"))?["uuid"].clone();
            let mut body = json!({"address": address, "node_uuid": uuid});
            if let Some(p) = pxe_enabled {
                body["pxe_enabled"] = json!(p);
            }
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            out.record(&client.post("/v1/ports", &body)?);
        }
        PortCommand::List {
            node,
            address,
            long,
        } => {
            let mut query = Vec::new();
            if let Some(n) = node {
                query.push(format!("node={n}"));
            }
            if let Some(a) = address {
                query.push(format!("address={a}"));
            }
            let base = if *long {
                "/v1/ports/detail"
            } else {
                "/v1/ports"
            };
            let ports =
                Value::Array(client.list_all(&format!("{base}?{}", query.join("&")), "ports")?);
            if *long {
                out.full_list(&ports);
            } else {
                out.list(&ports, &[("UUID", "uuid"), ("Address", "address")]);
            }
        }
        PortCommand::Show { port } => out.record(&client.get(&format!("/v1/ports/{port}"))?),
        PortCommand::Delete { ports } => {
            for p in ports {
                client.delete(&format!("/v1/ports/{p}"))?;
                out.note(&format!("Deleted port {p}"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_command_of(cli: Cli) -> NodeCommand {
        match cli.command {
            Command::Node(cmd) => *cmd,
            other => panic!("not a node command: {other:?}"),
        }
    }

    #[test]
    fn pairs_are_json_when_they_parse() {
        assert_eq!(parse_pair("a=1").unwrap(), ("a".into(), json!(1)));
        assert_eq!(parse_pair("a=x=y").unwrap(), ("a".into(), json!("x=y")));
        assert_eq!(
            parse_pair("list=[\"deploy\"]").unwrap().1,
            json!(["deploy"])
        );
        assert!(parse_pair("novalue").is_err());
    }

    #[test]
    fn set_builds_add_operations_with_escaped_keys() {
        let cli = Cli::parse_from([
            "ferric",
            "node",
            "set",
            "n1",
            "--driver-info",
            "ipmi_address=10.0.0.1",
            "--extra",
            "a/b=2",
            "--name",
            "web-1",
        ]);
        let NodeCommand::Set { fields, .. } = node_command_of(cli) else {
            panic!()
        };
        let ops = node_patch(&fields).unwrap();
        assert_eq!(
            ops,
            vec![
                json!({"op": "add", "path": "/driver_info/ipmi_address", "value": "10.0.0.1"}),
                json!({"op": "add", "path": "/extra/a~1b", "value": 2}),
                json!({"op": "add", "path": "/name", "value": "web-1"}),
            ]
        );
    }

    #[test]
    fn config_drives_are_dicts_or_raw_strings() {
        assert_eq!(
            config_drive_arg(r#"{"user_data": "x"}"#).unwrap(),
            json!({"user_data": "x"})
        );
        let dir = std::env::temp_dir().join(format!("ferric-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dict = dir.join("cd.json");
        std::fs::write(&dict, r#"{"meta_data": {"hostname": "h"}}"#).unwrap();
        assert_eq!(
            config_drive_arg(dict.to_str().unwrap()).unwrap()["meta_data"]["hostname"],
            "h"
        );
        let raw = dir.join("cd.b64");
        std::fs::write(&raw, "H4sIAAAA\n").unwrap();
        assert_eq!(
            config_drive_arg(raw.to_str().unwrap()).unwrap(),
            json!("H4sIAAAA")
        );
        assert!(config_drive_arg("/no/such/file").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn wait_flag_takes_an_optional_timeout() {
        let cli = Cli::parse_from(["ferric", "node", "provide", "n1", "--wait"]);
        let NodeCommand::Provide { wait, .. } = node_command_of(cli) else {
            panic!()
        };
        assert_eq!(wait.wait, Some(0));
        let cli = Cli::parse_from(["ferric", "node", "provide", "n1", "--wait", "30"]);
        let NodeCommand::Provide { wait, .. } = node_command_of(cli) else {
            panic!()
        };
        assert_eq!(wait.wait, Some(30));
    }
}
