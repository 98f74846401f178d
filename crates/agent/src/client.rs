//! The agent's client of the conductor's ramdisk endpoints: lookup (with
//! retries and backoff until the node is found) and heartbeat.
//!
//! Requests carry IPA's microversions: 1.62 for lookup, 1.68 for heartbeats
//! (agent_version and agent_verify_ca). The token is never logged.
//!
//! Over https the conductor is verified as [`ClientTls`] says (IPA's
//! `insecure`, `cafile`, and `certfile` + `keyfile` for a client
//! certificate).

use crate::tls::ClientTls;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// The microversion of lookups (as IPA sends at most).
pub const LOOKUP_VERSION: &str = "1.62";
/// The microversion of heartbeats: agent_version (1.36) and agent_verify_ca (1.68).
pub const HEARTBEAT_VERSION: &str = "1.68";
/// What the conductor shows in place of a token it already gave out.
const MASKED: &str = "******";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the conductor at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The conductor answered with an error status.
    #[error("the conductor answered {status} to {what}: {message}")]
    Refused {
        what: &'static str,
        status: u16,
        message: String,
    },
    #[error("the conductor's answer to {what} is not what was expected: {why}")]
    BadAnswer { what: &'static str, why: String },
    #[error("no node was found for this machine within {0:?}")]
    LookupTimedOut(Duration),
}

impl ClientError {
    /// Whether the conductor refused the agent token: the operation it was
    /// for has ended (or never was this agent's).
    pub fn is_token_refused(&self) -> bool {
        matches!(self, ClientError::Refused { status: 400, message, .. } if message.contains("agent token"))
    }

    /// Whether trying again later may succeed (the node is not in a
    /// lookup state yet, is locked, or the conductor is down).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Refused { status, .. } => matches!(status, 404 | 409 | 500..=599),
            _ => false,
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub struct LookupResult {
    /// The node as the conductor shows it (uuid, properties, instance_info,
    /// driver_internal_info).
    pub node: Value,
    pub node_uuid: String,
    /// The agent token; None when the conductor had already given it out
    /// (then a pregenerated token from the kernel command line is needed).
    pub token: Option<String>,
    /// How long the conductor waits between heartbeats before it gives up.
    pub heartbeat_timeout: Duration,
    /// Whether the conductor accepts md5 image checksums
    /// (`agent_md5_checksum_enable`), when it says.
    pub md5_enabled: Option<bool>,
}

/// A heartbeat's body.
#[derive(Debug, Clone, Serialize)]
pub struct Heartbeat {
    pub callback_url: String,
    pub agent_token: String,
    pub agent_version: String,
    /// The PEM certificate (or chain) of the agent's command API, which the
    /// conductor pins and trusts alone; None when the API is plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_verify_ca: Option<String>,
}

/// Talks to the conductor's API.
#[derive(Clone)]
pub struct ConductorClient {
    http: reqwest::Client,
    api_url: String,
}

impl ConductorClient {
    /// A client that verifies an https conductor with the system's CAs.
    pub fn new(api_url: &str) -> Result<Self, ClientError> {
        Self::with_tls(api_url, &ClientTls::default())
    }

    /// A client that verifies an https conductor, and identifies itself to
    /// it, as `tls` says.
    pub fn with_tls(api_url: &str, tls: &ClientTls) -> Result<Self, ClientError> {
        let builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        let http = tls
            .configure(builder)
            .build()
            .map_err(|source| ClientError::Unreachable {
                url: api_url.to_string(),
                source,
            })?;
        Ok(ConductorClient {
            http,
            api_url: api_url.trim_end_matches('/').to_string(),
        })
    }

    /// One lookup by MAC addresses (and the node UUID when known).
    pub async fn lookup(
        &self,
        macs: &[String],
        node_uuid: Option<&str>,
    ) -> Result<LookupResult, ClientError> {
        let mut query = vec![("addresses", macs.join(","))];
        if let Some(uuid) = node_uuid {
            query.push(("node_uuid", uuid.to_string()));
        }
        let url = format!("{}/v1/lookup", self.api_url);
        let response = self
            .http
            .get(&url)
            .query(&query)
            .header("X-OpenStack-Ironic-API-Version", LOOKUP_VERSION)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable { url, source })?;
        let body = read(response, "the lookup").await?;
        parse_lookup(&body)
    }

    /// Looks up until the conductor knows this machine, doubling the pause
    /// between attempts from `first_pause` up to 30 s, for at most `timeout`.
    pub async fn lookup_until_found(
        &self,
        macs: &[String],
        node_uuid: Option<&str>,
        timeout: Duration,
        first_pause: Duration,
    ) -> Result<LookupResult, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = first_pause;
        loop {
            match self.lookup(macs, node_uuid).await {
                Ok(found) => return Ok(found),
                Err(e) if e.is_transient() => {
                    tracing::info!(error = %e, "lookup failed; retrying in {pause:?}");
                }
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(ClientError::LookupTimedOut(timeout));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    }

    pub async fn heartbeat(&self, node_uuid: &str, beat: &Heartbeat) -> Result<(), ClientError> {
        let url = format!("{}/v1/heartbeat/{node_uuid}", self.api_url);
        let response = self
            .http
            .post(&url)
            .header("X-OpenStack-Ironic-API-Version", HEARTBEAT_VERSION)
            .json(beat)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable { url, source })?;
        read(response, "the heartbeat").await.map(|_| ())
    }
}

/// The body of a successful answer, or the conductor's error message.
async fn read(response: reqwest::Response, what: &'static str) -> Result<Value, ClientError> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(ClientError::Refused {
            what,
            status: status.as_u16(),
            message: ironic_fault(&text),
        });
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| ClientError::BadAnswer {
        what,
        why: format!("not JSON: {e}"),
    })
}

/// The faultstring of an Ironic error body, or the text itself.
fn ironic_fault(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error_message"].as_str().map(str::to_string))
        .and_then(|inner| serde_json::from_str::<Value>(&inner).ok())
        .and_then(|v| v["faultstring"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.chars().take(500).collect())
}

fn parse_lookup(body: &Value) -> Result<LookupResult, ClientError> {
    let bad = |why: &str| ClientError::BadAnswer {
        what: "the lookup",
        why: why.to_string(),
    };
    let node = body.get("node").cloned().ok_or_else(|| bad("no node"))?;
    let node_uuid = node["uuid"]
        .as_str()
        .ok_or_else(|| bad("the node has no uuid"))?
        .to_string();
    let config = &body["config"];
    let token = config["agent_token"]
        .as_str()
        .filter(|t| !t.is_empty() && *t != MASKED)
        .map(str::to_string);
    let heartbeat_timeout =
        Duration::from_secs(config["heartbeat_timeout"].as_u64().unwrap_or(300));
    Ok(LookupResult {
        node,
        node_uuid,
        token,
        heartbeat_timeout,
        md5_enabled: config["agent_md5_checksum_enable"].as_bool(),
    })
}

/// The pause between heartbeats: a random 30-60 % of the conductor's
/// timeout, so that many agents do not beat in step, and at most 5 minutes.
pub fn heartbeat_interval(timeout: Duration) -> Duration {
    let fraction = 0.3 + rand::random::<f64>() * 0.3;
    timeout
        .mul_f64(fraction)
        .clamp(Duration::from_secs(1), Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookup_answers_are_read() {
        let found = parse_lookup(&json!({"node": {"uuid": "u1"}, "config": {"agent_token": "t" , "heartbeat_timeout": 60}})).unwrap();
        assert_eq!(found.node_uuid, "u1");
        assert_eq!(found.token.as_deref(), Some("t"));
        assert_eq!(found.heartbeat_timeout, Duration::from_secs(60));
        assert_eq!(found.md5_enabled, None);
        let md5 = parse_lookup(
            &json!({"node": {"uuid": "u1"}, "config": {"agent_md5_checksum_enable": true}}),
        )
        .unwrap();
        assert_eq!(md5.md5_enabled, Some(true));
        let masked =
            parse_lookup(&json!({"node": {"uuid": "u1"}, "config": {"agent_token": "******"}}))
                .unwrap();
        assert_eq!(masked.token, None);
        assert!(parse_lookup(&json!({"config": {}})).is_err());
    }

    #[test]
    fn ironic_errors_are_unwrapped() {
        let body = json!({"error_message": json!({"faultstring": "Node could not be found.", "faultcode": "Client", "debuginfo": null}).to_string()});
        assert_eq!(ironic_fault(&body.to_string()), "Node could not be found.");
        assert_eq!(ironic_fault("plain"), "plain");
    }

    #[test]
    fn heartbeat_intervals_spread() {
        for _ in 0..100 {
            let i = heartbeat_interval(Duration::from_secs(100));
            assert!(
                i >= Duration::from_secs(30) && i <= Duration::from_secs(60),
                "{i:?}"
            );
        }
    }
}
