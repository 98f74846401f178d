use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// ferric-agent: the deploy agent in the ramdisk. Settings come from the
/// kernel command line (IPA's names: ipa-api-url, ipa-insecure, ipa-debug,
/// ipa-standalone, ipa-agent-token, ...), then --config, then these flags.
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
    let options = ferric_agent::run::RunOptions {
        macs: args.macs,
        devices: args.devices,
        include_loop_devices: args.include_loop_devices,
    };
    ferric_agent::run::main(config, options)
}
