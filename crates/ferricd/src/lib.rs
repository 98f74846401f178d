//! `ferricd`: the API and the conductor in one process.
//!
//! Configuration comes from a strict TOML file (unknown keys are errors)
//! and command-line flags, which win. With no arguments it listens on
//! 127.0.0.1:6385 and keeps its state in `ferric.sqlite` in the working
//! directory.

use anyhow::Context;
use clap::Parser;
use ferric_api::{ApiConfig, AppState};
use ferric_conductor::{Conductor, ConductorConfig};
use ferric_store::Store;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
pub mod dnsmasq;
use dnsmasq::DnsmasqConfig;

/// Command line of `ferricd`.
#[derive(Debug, Parser)]
#[command(
    name = "ferricd",
    version,
    about = "Ferric: bare-metal provisioning with an Ironic-compatible API"
)]
pub struct Args {
    /// TOML configuration file (see etc/ferricd.toml for every option).
    #[arg(long, env = "FERRICD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address and port to serve the API on.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST:PORT/DB.
    #[arg(long)]
    pub database: Option<String>,
    /// Log filter, e.g. info, debug, ferric_conductor=debug (env: FERRIC_LOG).
    #[arg(long, env = "FERRIC_LOG")]
    pub log_level: Option<String>,
    /// Name of this conductor in node locks (default: the hostname).
    #[arg(long)]
    pub hostname: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration of `ferricd`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the API listens; default 127.0.0.1:6385 (loopback only).
    pub listen: SocketAddr,
    /// Database URL; default sqlite://ferric.sqlite in the working directory.
    pub database: String,
    /// Log filter; default "info".
    pub log_level: String,
    /// Log format: "text" (default) or "json".
    pub log_format: LogFormat,
    /// URL clients use to reach the API, for links; default: each request's Host.
    pub public_url: Option<String>,
    /// Conductor behaviour (timeouts, hardware types, periodic tasks).
    pub conductor: ConductorConfig,
    /// The DHCP and TFTP server ferricd can run for a one-box setup.
    pub dnsmasq: DnsmasqConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 6385)),
            database: "sqlite://ferric.sqlite".to_string(),
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
            public_url: None,
            conductor: ConductorConfig::default(),
            dnsmasq: DnsmasqConfig::default(),
        }
    }
}

impl Config {
    /// Parses a TOML configuration; unknown keys are errors.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// The configuration file (if any) with the command-line flags applied.
    pub fn load(args: &Args) -> anyhow::Result<Config> {
        let mut config = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                Config::from_toml(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => Config::default(),
        };
        if let Some(listen) = args.listen {
            config.listen = listen;
        }
        if let Some(db) = &args.database {
            config.database = db.clone();
        }
        if let Some(level) = &args.log_level {
            config.log_level = level.clone();
        }
        if let Some(hostname) = &args.hostname {
            config.conductor.hostname = hostname.clone();
        }
        if config.conductor.image_url_base.is_none() {
            config.conductor.image_url_base = config.agent_image_url_base();
        }
        if config.dnsmasq.enabled {
            // The managed dnsmasq reads the host entries the ipxe boot
            // interface writes.
            config.conductor.pxe.dhcp_hosts_dir = Some(config.dnsmasq.hosts_dir());
        }
        Ok(config)
    }

    /// Where deploy agents reach this server for cached images when
    /// `[conductor] image_url_base` is not set: `public_url`, else the
    /// listen address if it is a specific one (not 0.0.0.0 or ::, which
    /// name no address an agent could use).
    pub fn agent_image_url_base(&self) -> Option<String> {
        if let Some(url) = &self.public_url {
            return Some(url.trim_end_matches('/').to_string());
        }
        if self.listen.ip().is_unspecified() {
            return None;
        }
        Some(format!("http://{}", self.listen))
    }
}

/// How often the image cache is cleaned besides after each download.
const IMAGE_CACHE_CLEANUP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Sets up `tracing` from the configuration.
pub fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("invalid log level {:?}", config.log_level))?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Caps glibc's malloc arenas. By default glibc gives each thread that
/// allocates its own arena (up to 8 per core); the blocking threads that
/// decode store rows then keep tens of MiB each after a large listing.
/// Call before any thread starts.
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator tunables; it is called before
    // the runtime starts any thread, so no allocation races with it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hides the password of a database URL for logs.
fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if rest.contains('@') => {
            let userinfo = &url[scheme.len() + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***{}", &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!(database = %redact_url(&config.database), "opening store");
    let store = Store::connect(&config.database)
        .await
        .with_context(|| format!("cannot open database {}", redact_url(&config.database)))?;
    let conductor = Conductor::start(store, config.conductor.clone())
        .await
        .context("cannot start the conductor")?;
    let dnsmasq = if config.dnsmasq.enabled {
        let ipxe = conductor.registry().ipxe();
        let base = ipxe.options().http_url.clone().context(
            "[dnsmasq] needs the URL nodes reach ferricd at: set public_url or \
             [conductor.pxe] http_url",
        )?;
        Some(dnsmasq::Dnsmasq::start(&config.dnsmasq, &base, &ipxe.options().dhcp_tag).await?)
    } else {
        None
    };
    let mut periodic = conductor.spawn_periodic_tasks();
    periodic.extend(conductor.spawn_image_cache_cleanup(IMAGE_CACHE_CLEANUP_INTERVAL));
    let state = AppState::new(
        conductor.clone(),
        ApiConfig {
            public_url: config.public_url.clone(),
        },
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, hostname = %conductor.hostname(), "ferricd is serving");
    axum::serve(listener, ferric_api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    for task in periodic {
        task.abort();
    }
    conductor.shutdown().await?;
    if let Some(dnsmasq) = dnsmasq {
        dnsmasq.stop().await;
    }
    tracing::info!("ferricd stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses_and_matches_the_defaults() {
        let text = include_str!("../../../etc/ferricd.toml");
        let config = Config::from_toml(text).expect("etc/ferricd.toml must parse");
        let defaults = Config::default();
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.database, defaults.database);
        assert_eq!(
            config.conductor.deploy_callback_timeout,
            defaults.conductor.deploy_callback_timeout
        );
        assert_eq!(config.conductor.ipmi, defaults.conductor.ipmi);
        assert_eq!(config.conductor.pxe, defaults.conductor.pxe);
        assert_eq!(config.conductor.redfish, defaults.conductor.redfish);
        assert_eq!(config.conductor.anaconda, defaults.conductor.anaconda);
        assert_eq!(config.dnsmasq, defaults.dnsmasq);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml("listen = \"127.0.0.1:1\"\nlisten_port = 5\n").unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
        let err = Config::from_toml("[conductor]\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\ndatabase = \"sqlite://a.db\"\n",
        )
        .unwrap();
        let args = Args::parse_from([
            "ferricd",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:7001",
        ]);
        let config = Config::load(&args).unwrap();
        assert_eq!(config.listen.port(), 7001);
        assert_eq!(config.database, "sqlite://a.db");
    }

    #[test]
    fn the_image_url_base_comes_from_the_config_public_url_or_listen_address() {
        let args = Args::parse_from(["ferricd"]);
        let config = Config::load(&args).unwrap();
        assert_eq!(
            config.conductor.image_url_base.as_deref(),
            Some("http://127.0.0.1:6385")
        );
        let mut config = Config::from_toml("listen = \"0.0.0.0:6385\"\n").unwrap();
        assert_eq!(config.agent_image_url_base(), None);
        config.public_url = Some("https://ferric.example.net:6385/".into());
        assert_eq!(
            config.agent_image_url_base().as_deref(),
            Some("https://ferric.example.net:6385")
        );
        let config = Config::from_toml(
            "[conductor]\nimage_download_source = \"local\"\nimage_url_base = \"http://192.0.2.1:6385\"\n\
             image_cache_dir = \"/var/lib/ferric/images\"\nimage_cache_size_mib = 100\n\
             image_cache_ttl = 60\nforce_raw_images = false\nstream_raw_images = false\n",
        )
        .unwrap();
        assert_eq!(
            config.conductor.image_url_base.as_deref(),
            Some("http://192.0.2.1:6385")
        );
        assert_eq!(config.conductor.image_cache_size_mib, 100);
        assert!(!config.conductor.force_raw_images && !config.conductor.stream_raw_images);
        let err =
            Config::from_toml("[conductor]\nimage_download_source = \"swift\"\n").unwrap_err();
        assert!(err.to_string().contains("swift"), "{err}");
    }

    #[test]
    fn database_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("sqlite://ferric.sqlite"),
            "sqlite://ferric.sqlite"
        );
    }
}
