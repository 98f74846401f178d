//! The agent's life: serve the command API (over TLS with a certificate
//! made for the advertised host, unless configured otherwise), look the node
//! up, heartbeat with the callback URL and certificate until stopped.

use crate::client::{heartbeat_interval, ConductorClient, Heartbeat};
use crate::config::{AgentConfig, ServeTls};
use crate::deploy::{ConductorMd5, DeployOptions};
use crate::download::DownloadOptions;
use crate::inventory::{self, Filter};
use crate::server::{self, CommandApi};
use crate::standard::{Disks, StandardHandler};
use crate::tls::{ClientTls, ServerIdentity, TlsListener};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The agent's version, as reported in heartbeats and `GET /v1/status`.
pub const VERSION: &str = concat!("ferric-agent ", env!("CARGO_PKG_VERSION"));

/// Settings that only the command line gives.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// MACs to look up with instead of the machine's NICs.
    pub macs: Vec<String>,
    /// Disks the agent may touch; empty: all it finds.
    pub devices: Vec<String>,
    pub include_loop_devices: bool,
    /// Power control disabled (`--no-power`): see [`crate::system::NoPower`].
    pub no_power: bool,
}

/// Runs the agent until SIGINT or SIGTERM; the exit code says how it ended.
pub fn main(config: AgentConfig, options: RunOptions) -> ExitCode {
    let level = if config.debug { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRIC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_ansi(false)
        .init();
    if let Err(e) = config.check() {
        tracing::error!("{e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How `write_image` downloads and checks images, as configured.
pub fn deploy_options(
    config: &AgentConfig,
    client_tls: &ClientTls,
    conductor_md5: ConductorMd5,
) -> DeployOptions {
    DeployOptions {
        allow_md5: config.md5_enabled,
        conductor_md5,
        download: DownloadOptions {
            tls: client_tls.clone(),
            ..DownloadOptions::default()
        },
        ..DeployOptions::default()
    }
}

/// Where operator step definitions live unless configured otherwise.
pub const DEFAULT_STEP_DIR: &str = "/etc/ferric-agent/steps.d";

async fn run(config: AgentConfig, options: RunOptions) -> anyhow::Result<()> {
    let filter = Filter {
        include_loop: options.include_loop_devices,
    };
    let sys_root = PathBuf::from("/");
    let disks = if options.devices.is_empty() {
        Disks::Discovered {
            sys_root: sys_root.clone(),
            filter,
        }
    } else {
        Disks::Only {
            sys_root: sys_root.clone(),
            filter,
            names: options.devices.clone(),
        }
    };
    let default_steps = PathBuf::from(DEFAULT_STEP_DIR);
    let step_dir = config
        .step_dir
        .clone()
        .or_else(|| default_steps.is_dir().then_some(default_steps));
    // The agent's clients (conductor, image servers) share one TLS setting.
    let client_tls = ClientTls::from_config(&config)?;
    if client_tls.is_insecure() {
        tracing::warn!(
            "TLS certificates of the conductor and image servers are not verified (ipa-insecure)"
        );
    }
    if config.md5_enabled {
        tracing::warn!("md5 image checksums are accepted (md5_enabled)");
    }
    let conductor_md5 = ConductorMd5::default();
    let handler = StandardHandler::new(disks)
        .with_step_dir(step_dir)?
        .with_deploy_options(deploy_options(&config, &client_tls, conductor_md5.clone()))
        .with_power(if options.no_power {
            crate::system::Power::default()
        } else {
            crate::system::Power::kernel()
        })
        .with_bootloader_options(crate::bootloader::BootloaderOptions {
            enable_bios_bootloader_install: config.enable_bios_bootloader_install,
            ..Default::default()
        });
    // The write_image step shows its progress in its RUNNING command.
    let running = handler.running_result();
    let handler = Arc::new(handler);
    let serve_tls = config.serve_tls();
    let api = if config.standalone {
        CommandApi::new(handler, None, VERSION)
    } else {
        CommandApi::awaiting_token(handler, VERSION)
    }
    .with_running_result(running)
    .with_tls(serve_tls != ServeTls::Off);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let local = listener.local_addr()?;
    // The certificate names the advertised host, so it is settled first
    // (IPA does the same before it starts its API).
    let host = advertised_host(&config, local);
    let identity = match &serve_tls {
        ServeTls::Off => None,
        ServeTls::Generated => {
            tracing::info!(%host, "generating the command API's TLS certificate");
            Some(ServerIdentity::generate(&host)?)
        }
        ServeTls::Files { cert, key } => Some(ServerIdentity::from_files(cert, key)?),
    };
    tracing::info!(listen = %local, standalone = config.standalone, tls = identity.is_some(), "{VERSION} serving the command API");
    let app = server::router(api.clone());
    let serving = match &identity {
        None => tokio::spawn(async move { axum::serve(listener, app).await }),
        Some(identity) => {
            let listener = TlsListener::new(listener, identity.server_config()?)?;
            tokio::spawn(async move { axum::serve(listener, app).await })
        }
    };

    if !config.standalone {
        let api_url = config.api_url.clone().unwrap_or_default();
        let conductor = ConductorClient::with_tls(&api_url, &client_tls)?;
        let callback = Callback {
            url: format!(
                "{}://{host}:{}",
                config.callback_protocol(&serve_tls).as_str(),
                local.port()
            ),
            verify_ca: identity.map(|i| i.certificate_pem),
        };
        let lifecycle = tokio::spawn(lookup_and_heartbeat(
            conductor,
            api,
            config,
            options,
            callback,
            sys_root,
            conductor_md5,
        ));
        tokio::select! {
            done = lifecycle => done??,
            served = serving => served??,
            () = shutdown() => {}
        }
    } else {
        tokio::select! {
            served = serving => served??,
            () = shutdown() => {}
        }
    }
    tracing::info!("stopping");
    Ok(())
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The MACs of the machine's NICs, as IPA sends them in lookups.
fn machine_macs(sys_root: &std::path::Path) -> Vec<String> {
    let inventory = inventory::inventory(sys_root);
    inventory["interfaces"]
        .as_array()
        .map(|nics| {
            nics.iter()
                .filter_map(|n| n["mac_address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The address this machine uses to reach `api_url` (no packet is sent).
fn local_address_towards(api_url: &str) -> Option<std::net::IpAddr> {
    let rest = api_url.split("://").nth(1)?;
    let authority = rest.split('/').next()?;
    let with_port = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let target: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .ok()?
        .next()?;
    let socket = UdpSocket::bind(if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// The host the conductor reaches the agent at: `advertise_host`, else the
/// address of the interface that reaches the conductor, else the address
/// listened on.
fn advertised_host(config: &AgentConfig, local: SocketAddr) -> String {
    match &config.advertise_host {
        Some(h) => h.clone(),
        None => local_address_towards(config.api_url.as_deref().unwrap_or(""))
            .map(|ip| match ip {
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            })
            .unwrap_or_else(|| local.ip().to_string()),
    }
}

/// What heartbeats tell the conductor about the command API.
#[derive(Debug, Clone)]
struct Callback {
    url: String,
    /// The API's certificate (PEM), when it is served over TLS.
    verify_ca: Option<String>,
}

async fn lookup_and_heartbeat(
    conductor: ConductorClient,
    api: CommandApi,
    config: AgentConfig,
    options: RunOptions,
    callback: Callback,
    sys_root: PathBuf,
    conductor_md5: ConductorMd5,
) -> anyhow::Result<()> {
    let macs = if options.macs.is_empty() {
        let root = sys_root.clone();
        tokio::task::spawn_blocking(move || machine_macs(&root)).await?
    } else {
        options.macs.clone()
    };
    // The conductor forgets the token when an operation ends; an agent that
    // stays up (as in fast track) looks itself up again for the next one.
    loop {
        serve_one_operation(&conductor, &api, &config, &macs, &callback, &conductor_md5).await?;
        if api.is_locked_down() {
            // The machine powers off; until then the agent stays silent.
            tracing::info!("locked down: no more lookups or heartbeats");
            std::future::pending::<()>().await;
        }
        api.set_token(None);
        tracing::info!("the conductor no longer takes this agent's token; looking up again");
    }
}

/// Looks the node up and heartbeats until the conductor refuses the token.
async fn serve_one_operation(
    conductor: &ConductorClient,
    api: &CommandApi,
    config: &AgentConfig,
    macs: &[String],
    callback: &Callback,
    conductor_md5: &ConductorMd5,
) -> anyhow::Result<()> {
    tracing::info!(macs = ?macs, "looking up this machine");
    let found = conductor
        .lookup_until_found(macs, None, config.lookup_timeout, config.lookup_interval)
        .await?;
    if let Some(allowed) = found.md5_enabled {
        if allowed && !conductor_md5.get().unwrap_or(false) {
            tracing::warn!("the conductor accepts md5 image checksums (agent_md5_checksum_enable)");
        }
        conductor_md5.set(allowed);
    }
    let token = found
        .token
        .clone()
        .or(config.agent_token.clone())
        .ok_or_else(|| {
            anyhow::anyhow!(
            "the conductor had already given out this node's token and no ipa-agent-token was given"
        )
        })?;
    api.set_token(Some(token.clone()));
    let beat = Heartbeat {
        callback_url: callback.url.clone(),
        agent_token: token,
        agent_version: VERSION.to_string(),
        agent_verify_ca: callback.verify_ca.clone(),
    };
    tracing::info!(node = %found.node_uuid, callback = %beat.callback_url, "found my node; heartbeating");
    let mut finished = api.subscribe_finished();
    // After a failed heartbeat (the node was busy, the conductor down), try
    // again soon, backing off up to the normal interval.
    let mut retry = Duration::from_secs(1);
    loop {
        if api.is_locked_down() {
            return Ok(());
        }
        let pause = match conductor.heartbeat(&found.node_uuid, &beat).await {
            Ok(()) => {
                tracing::debug!("heartbeat accepted");
                retry = Duration::from_secs(1);
                heartbeat_interval(found.heartbeat_timeout)
            }
            Err(e) if e.is_token_refused() => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed; retrying in {retry:?}");
                let pause = retry.min(heartbeat_interval(found.heartbeat_timeout));
                retry = (retry * 2).min(Duration::from_secs(30));
                pause
            }
        };
        // A finished command is reported at once, as IPA does.
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            changed = finished.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
