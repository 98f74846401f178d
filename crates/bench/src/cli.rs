//! The command line.

use crate::bench::Settings;
use clap::Parser;
use std::time::Duration;

/// Load benchmark for an Ironic-compatible API (Ferric or OpenStack Ironic):
/// node creations, node lists, simultaneous fake deploys, server memory.
#[derive(Debug, Parser)]
#[command(name = "ferric-bench", version)]
pub struct Args {
    /// Base URL of the API, plain HTTP: http://HOST:PORT[/PREFIX].
    #[arg(long, env = "FERRIC_URL")]
    pub url: String,
    /// Concurrent clients, each on its own keep-alive connection.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub clients: u16,
    /// Nodes created by each creation run (one client, then --clients); 0 skips.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Nodes deployed at once; 0 skips.
    #[arg(long, default_value_t = 100)]
    pub deploys: usize,
    /// Times each node list is fetched; 0 skips.
    #[arg(long, default_value_t = 20)]
    pub list_repeats: usize,
    /// Server process on this machine whose memory (VmRSS, VmHWM) to report.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Driver (hardware type) of the nodes created; deploys need one that
    /// completes without hardware.
    #[arg(long, default_value = "fake-hardware")]
    pub driver: String,
    /// driver_info (a JSON object) of every node created, e.g. BMC
    /// credentials, or '{"fake_fail": ["deploy"]}' to see a failed run.
    #[arg(long, value_parser = parse_json_object)]
    pub driver_info: Option<serde_json::Value>,
    /// API microversion sent in X-OpenStack-Ironic-API-Version.
    #[arg(long, default_value = "1.95", value_parser = parse_api_version)]
    pub api_version: String,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Delete the nodes this run created when it ends (deployed ones go into
    /// maintenance first).
    #[arg(long)]
    pub cleanup: bool,
    /// Milliseconds between state polls while the deploys run.
    #[arg(long, default_value_t = 20)]
    pub poll_interval_ms: u64,
    /// Seconds a single request may take before the run fails.
    #[arg(long, default_value_t = 30)]
    pub request_timeout: u64,
    /// Seconds nodes may take to reach a provision state before the run fails.
    #[arg(long, default_value_t = 300)]
    pub wait_timeout: u64,
}

fn parse_api_version(value: &str) -> Result<String, String> {
    let valid = value == "latest"
        || value
            .strip_prefix("1.")
            .is_some_and(|minor| !minor.is_empty() && minor.chars().all(|c| c.is_ascii_digit()));
    if valid {
        Ok(value.to_string())
    } else {
        Err("expected 1.N or latest".to_string())
    }
}

fn parse_json_object(value: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str(value) {
        Ok(object @ serde_json::Value::Object(_)) => Ok(object),
        Ok(_) => Err("expected a JSON object".to_string()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

impl Args {
    pub fn settings(&self) -> Settings {
        Settings {
            clients: usize::from(self.clients),
            nodes: self.nodes,
            deploys: self.deploys,
            list_repeats: self.list_repeats,
            pid: self.pid,
            driver: self.driver.clone(),
            driver_info: self.driver_info.clone(),
            api_version: self.api_version.clone(),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            wait_timeout: Duration::from_secs(self.wait_timeout),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_documented_run() {
        let args =
            Args::try_parse_from(["ferric-bench", "--url", "http://127.0.0.1:6385"]).unwrap();
        let s = args.settings();
        assert_eq!(
            (s.clients, s.nodes, s.deploys, s.list_repeats),
            (8, 1000, 100, 20)
        );
        assert_eq!(s.driver, "fake-hardware");
        assert_eq!(s.api_version, "1.95");
        assert_eq!(s.poll_interval, Duration::from_millis(20));
        assert!(!args.json && !args.cleanup);
    }

    #[test]
    fn api_version_and_clients_are_checked() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["ferric-bench", "--url", "http://h"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
        };
        assert!(parse(&["--api-version", "1.31"]).is_ok());
        assert!(parse(&["--api-version", "latest"]).is_ok());
        assert!(parse(&["--api-version", "2.1"]).is_err());
        assert!(parse(&["--api-version", "1."]).is_err());
        assert!(parse(&["--clients", "0"]).is_err());
        assert_eq!(parse(&["--pid", "42"]).unwrap().pid, Some(42));
        let info = parse(&["--driver-info", r#"{"fake_fail": ["deploy"]}"#]).unwrap();
        assert_eq!(info.driver_info.unwrap()["fake_fail"][0], "deploy");
        assert!(parse(&["--driver-info", "[1]"]).is_err());
        assert!(parse(&["--driver-info", "{"]).is_err());
    }
}
