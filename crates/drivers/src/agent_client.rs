//! The conductor's client of the agent's command API (IPA's protocol):
//! commands with the node's token, the list of commands to see how a
//! long-running one went.
//!
//! An agent at an `https://` callback URL is verified against the
//! certificate it sent in its first heartbeat (`agent_verify_ca` in
//! driver_internal_info, pinned by the conductor) and nothing else: not the
//! system's CAs. Its host name or IP address is checked too (the agent puts
//! its advertised host in the certificate). One client is kept per
//! certificate, so connections are reused between requests.

use crate::DriverError;
use ferric_types::Node;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Timeout of one request to the agent.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts for a request that could not connect.
const ATTEMPTS: u32 = 3;
/// How many agents' clients are kept; the least recently used goes first.
const PINNED_CLIENTS: usize = 128;

/// Talks to the agents of nodes. Clones share their clients.
#[derive(Clone)]
pub struct AgentClient {
    /// For agents at `http://` URLs.
    plain: reqwest::Client,
    /// For agents at `https://` URLs, by the PEM they are verified with.
    pinned: Arc<Mutex<HashMap<String, Pinned>>>,
}

struct Pinned {
    http: reqwest::Client,
    last_used: Instant,
}

impl Default for AgentClient {
    fn default() -> Self {
        let plain = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("a plain HTTP client always builds");
        AgentClient {
            plain,
            pinned: Arc::default(),
        }
    }
}

/// Where a node's agent listens, its token, and the certificate it is
/// verified with, from driver_internal_info.
struct Endpoint {
    url: String,
    token: String,
    verify_ca: Option<String>,
}

fn endpoint(node: &Node) -> Result<Endpoint, DriverError> {
    let info = &node.driver_internal_info;
    let url = info
        .get("agent_url")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            DriverError::Failed("the agent has not heartbeated yet: no agent_url".into())
        })?;
    let token = info
        .get("agent_secret_token")
        .and_then(Value::as_str)
        .ok_or_else(|| DriverError::Failed("the node has no agent token".into()))?;
    let verify_ca = info
        .get("agent_verify_ca")
        .and_then(Value::as_str)
        .filter(|pem| !pem.trim().is_empty())
        .map(str::to_string);
    Ok(Endpoint {
        url: url.trim_end_matches('/').to_string(),
        token: token.to_string(),
        verify_ca,
    })
}

impl AgentClient {
    /// The client for the agent at `endpoint`.
    fn http(&self, endpoint: &Endpoint) -> Result<reqwest::Client, DriverError> {
        let scheme = endpoint.url.split("://").next().unwrap_or("");
        if !scheme.eq_ignore_ascii_case("https") {
            return Ok(self.plain.clone());
        }
        // Ironic falls back to [agent]verify_ca, the system's CAs by
        // default. An agent in a ramdisk cannot get a certificate from a
        // public CA for the address DHCP gave it: an https agent without its
        // own certificate was either set up by hand (listen_tls without
        // telling its CA) or is not the agent it claims to be, and trusting
        // the system's CAs would hide both. Refuse.
        let Some(pem) = &endpoint.verify_ca else {
            return Err(DriverError::Failed(
                "the agent's callback URL is https:// but it sent no certificate \
                 (agent_verify_ca) to verify it with; refusing to talk to it unverified"
                    .into(),
            ));
        };
        let mut pinned = self.pinned();
        if let Some(entry) = pinned.get_mut(pem) {
            entry.last_used = Instant::now();
            return Ok(entry.http.clone());
        }
        let http = pinned_client(pem)?;
        if pinned.len() >= PINNED_CLIENTS {
            let oldest = pinned
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(pem, _)| pem.clone());
            if let Some(oldest) = oldest {
                pinned.remove(&oldest);
            }
        }
        pinned.insert(
            pem.clone(),
            Pinned {
                http: http.clone(),
                last_used: Instant::now(),
            },
        );
        Ok(http)
    }

    fn pinned(&self) -> MutexGuard<'_, HashMap<String, Pinned>> {
        self.pinned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many pinned clients are kept (for tests).
    pub fn pinned_clients(&self) -> usize {
        self.pinned().len()
    }

    /// Runs `extension.command` on the node's agent; with `wait`, until it
    /// finished. Returns IPA's command result object.
    pub async fn execute(
        &self,
        node: &Node,
        name: &str,
        params: Value,
        wait: bool,
    ) -> Result<Value, DriverError> {
        let endpoint = endpoint(node)?;
        let http = self.http(&endpoint)?;
        let body = json!({"name": name, "params": params});
        let mut last = None;
        for attempt in 1..=ATTEMPTS {
            let sent = http
                .post(format!("{}/v1/commands/", endpoint.url))
                .query(&[
                    ("wait", if wait { "true" } else { "false" }),
                    ("agent_token", &endpoint.token),
                ])
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(response) => return read(response, name).await,
                Err(e) if e.is_connect() && !is_tls_refusal(&e) && attempt < ATTEMPTS => {
                    tracing::warn!(node = %node.uuid, command = name, attempt, "cannot reach the agent; retrying");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => return Err(unreachable(name, &e)),
            }
        }
        Err(unreachable(name, &last.expect("an error was recorded")))
    }

    /// The agent's commands, oldest first.
    pub async fn commands(&self, node: &Node) -> Result<Vec<Value>, DriverError> {
        let endpoint = endpoint(node)?;
        let response = self
            .http(&endpoint)?
            .get(format!("{}/v1/commands/", endpoint.url))
            .query(&[("agent_token", &endpoint.token)])
            .send()
            .await
            .map_err(|e| unreachable("listing commands", &e))?;
        let body = read(response, "listing commands").await?;
        Ok(body["commands"].as_array().cloned().unwrap_or_default())
    }

    /// The most recent command with this short name (e.g. execute_deploy_step).
    pub async fn last_command(
        &self,
        node: &Node,
        short_name: &str,
    ) -> Result<Option<Value>, DriverError> {
        let commands = self.commands(node).await?;
        Ok(commands
            .into_iter()
            .rev()
            .find(|c| c["command_name"].as_str() == Some(short_name)))
    }
}

/// A client that trusts exactly the certificates of `pem`.
fn pinned_client(pem: &str) -> Result<reqwest::Client, DriverError> {
    let unusable = |why: String| {
        DriverError::Failed(format!(
            "the agent's certificate (agent_verify_ca) cannot be used: {why}"
        ))
    };
    let certificates = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
        .map_err(|e| unusable(error_chain(&e)))?;
    if certificates.is_empty() {
        return Err(unusable("it holds no PEM certificate".into()));
    }
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .tls_certs_only(certificates)
        .build()
        .map_err(|e| unusable(error_chain(&e)))
}

/// An error and its causes, `a: b: c`: reqwest's own message rarely says
/// what went wrong (a TLS refusal is in its sources).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = inner.source();
    }
    text
}

/// Whether the connection failed in the TLS handshake (a certificate that
/// does not verify, say): asking again will not help. tokio-rustls reports
/// rustls's errors as `InvalidData` I/O errors, which hyper-rustls wraps in
/// another I/O error (whose `source` skips the inner one).
pub(crate) fn is_tls_refusal(error: &reqwest::Error) -> bool {
    fn invalid_data(io: &std::io::Error) -> bool {
        io.kind() == std::io::ErrorKind::InvalidData
            || io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<std::io::Error>())
                .is_some_and(invalid_data)
    }
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        if inner
            .downcast_ref::<std::io::Error>()
            .is_some_and(invalid_data)
        {
            return true;
        }
        cause = inner.source();
    }
    false
}

fn unreachable(what: &str, error: &reqwest::Error) -> DriverError {
    // The URL holds the token as a query parameter: never show it.
    let error = error.without_url_ref();
    DriverError::Failed(format!("cannot reach the agent for {what}: {error}"))
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut text = error_chain(self);
        if let Some(url) = self.url() {
            text = text.replace(url.as_str(), "<agent>");
        }
        text
    }
}

/// The most of an agent's answer read: command results (operator steps'
/// output up to 1 MiB each) and the command history fit well within it.
const MAX_ANSWER: usize = 16 << 20;

async fn read(mut response: reqwest::Response, what: &str) -> Result<Value, DriverError> {
    let status = response.status();
    let mut text = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap_or_default() {
        if text.len() + chunk.len() > MAX_ANSWER {
            return Err(DriverError::Failed(format!(
                "the agent's answer to {what} is larger than {} MiB",
                MAX_ANSWER >> 20
            )));
        }
        text.extend_from_slice(&chunk);
    }
    let body: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body["faultstring"]
            .as_str()
            .or_else(|| body["message"].as_str())
            .unwrap_or("no message")
            .to_string();
        return Err(DriverError::Failed(format!(
            "the agent answered {} to {what}: {message}",
            status.as_u16()
        )));
    }
    Ok(body)
}

/// The error of a finished command, as a sentence.
pub fn command_error(result: &Value) -> String {
    let error = &result["command_error"];
    error["details"]
        .as_str()
        .filter(|d| !d.is_empty())
        .or_else(|| error["message"].as_str())
        .unwrap_or("the agent gave no reason")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferric_types::ProvisionState;

    fn endpoint_of(url: &str, verify_ca: Option<&str>) -> Endpoint {
        Endpoint {
            url: url.into(),
            token: "t".into(),
            verify_ca: verify_ca.map(str::to_string),
        }
    }

    fn self_signed() -> String {
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
            .unwrap()
            .cert
            .pem()
    }

    #[tokio::test]
    async fn https_agents_are_verified_with_their_own_certificate_only() {
        let agents = AgentClient::default();
        let mut node = Node::new(
            uuid::Uuid::new_v4(),
            "fake-hardware",
            ProvisionState::Active,
        );
        let info = &mut node.driver_internal_info;
        info.insert("agent_url".into(), json!("https://10.0.0.9:9999"));
        info.insert("agent_secret_token".into(), json!("t"));
        let err = agents.commands(&node).await.unwrap_err().to_string();
        assert!(err.contains("agent_verify_ca"), "{err}");
        node.driver_internal_info
            .insert("agent_verify_ca".into(), json!("not a certificate"));
        let err = agents.commands(&node).await.unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        // Plain HTTP agents need no certificate.
        assert!(agents
            .http(&endpoint_of("http://10.0.0.9:9999", None))
            .is_ok());
        assert_eq!(agents.pinned_clients(), 0);
    }

    #[test]
    fn clients_are_kept_per_certificate_least_recently_used_first_out() {
        let agents = AgentClient::default();
        let first = self_signed();
        let second = self_signed();
        let url = "https://127.0.0.1:9999";
        agents.http(&endpoint_of(url, Some(&first))).unwrap();
        agents.http(&endpoint_of(url, Some(&second))).unwrap();
        agents.http(&endpoint_of(url, Some(&first))).unwrap();
        assert_eq!(agents.pinned_clients(), 2);
        // Clones share the clients.
        let clone = agents.clone();
        for _ in 2..PINNED_CLIENTS {
            clone.http(&endpoint_of(url, Some(&self_signed()))).unwrap();
        }
        assert_eq!(agents.pinned_clients(), PINNED_CLIENTS);
        agents.http(&endpoint_of(url, Some(&first))).unwrap();
        agents
            .http(&endpoint_of(url, Some(&self_signed())))
            .unwrap();
        assert_eq!(agents.pinned_clients(), PINNED_CLIENTS);
        let kept = agents.pinned();
        assert!(kept.contains_key(&first), "recently used, kept");
        assert!(!kept.contains_key(&second), "least recently used, evicted");
    }
}
