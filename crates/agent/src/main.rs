use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// ferric-agent: the deploy agent in the ramdisk. Settings come from the
/// kernel command line (IPA's names: ipa-api-url, ipa-insecure, ipa-debug,
/// ipa-standalone, ipa-agent-token, ...), then --config, then these flags.
/// The command API is served over TLS with a generated certificate unless
/// --no-tls or standalone.
#[derive(Debug, Parser)]
#[command(name = "ferric-agent", version)]
struct Args {
    /// A TOML file with the agent's settings.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The kernel command line to read settings from.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// The conductor's API URL (ipa-api-url).
    #[arg(long)]
    api_url: Option<String>,
    /// No lookup or heartbeat: serve the command API only.
    #[arg(long)]
    standalone: bool,
    /// Where the command API listens (ADDR:PORT).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The host the conductor reaches this agent at.
    #[arg(long)]
    advertise_host: Option<String>,
    /// Verbose logs.
    #[arg(long)]
    debug: bool,
    /// Look up with these MAC addresses instead of the machine's NICs.
    #[arg(long = "mac")]
    macs: Vec<String>,
    /// Manage only these disks (repeatable); default: every disk found.
    #[arg(long = "device")]
    devices: Vec<String>,
    /// Count loop devices as disks (for tests on loop devices).
    #[arg(long)]
    include_loop_devices: bool,
    /// A directory of operator step definitions (ferric-step-dir).
    #[arg(long)]
    step_dir: Option<PathBuf>,
    /// Never power off or reboot this machine (standby.power_off,
    /// run_image and lockdown fail): for agents run on a host for tests.
    /// FERRIC_AGENT_NO_POWER counts as set unless empty, 0, false, no or off.
    #[arg(long, env = "FERRIC_AGENT_NO_POWER",
          value_parser = clap::builder::FalseyValueParser::new())]
    no_power: bool,
    /// Serve the command API over plain HTTP: no generated certificate
    /// (enable_auto_tls = false) and no listen_tls.
    #[arg(long)]
    no_tls: bool,
    /// Do not verify the TLS certificates of the conductor and image
    /// servers (ipa-insecure).
    #[arg(long)]
    insecure: bool,
    /// Trust only the CAs of this PEM bundle for the conductor and image
    /// servers (ipa-cafile).
    #[arg(long)]
    cafile: Option<PathBuf>,
    /// A PEM client certificate for the conductor and image servers
    /// (ipa-certfile); needs --keyfile.
    #[arg(long)]
    certfile: Option<PathBuf>,
    /// The private key of --certfile (ipa-keyfile).
    #[arg(long)]
    keyfile: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = ferric_agent::config::AgentConfig::default();
    if let Ok(cmdline) = std::fs::read_to_string(&args.cmdline) {
        if let Err(e) = config.apply_kernel_cmdline(&cmdline) {
            eprintln!("ferric-agent: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = &args.config {
        if let Err(e) = config.apply_file(path) {
            eprintln!("ferric-agent: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(url) = args.api_url {
        config.api_url = Some(url);
    }
    config.standalone |= args.standalone;
    config.debug |= args.debug;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.step_dir {
        config.step_dir = Some(dir);
    }
    if let Some(host) = args.advertise_host {
        config.advertise_host = Some(host);
    }
    if args.no_tls {
        config.enable_auto_tls = false;
        config.listen_tls = false;
    }
    config.insecure |= args.insecure;
    if let Some(path) = args.cafile {
        config.cafile = Some(path);
    }
    if let Some(path) = args.certfile {
        config.certfile = Some(path);
    }
    if let Some(path) = args.keyfile {
        config.keyfile = Some(path);
    }
    let options = ferric_agent::run::RunOptions {
        macs: args.macs,
        devices: args.devices,
        include_loop_devices: args.include_loop_devices,
        no_power: args.no_power,
    };
    ferric_agent::run::main(config, options)
}
