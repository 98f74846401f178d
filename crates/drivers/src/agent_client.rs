//! The conductor's client of the agent's command API (IPA's protocol):
//! commands with the node's token, the list of commands to see how a
//! long-running one went. Plain HTTP for now; TLS with the agent's CA
//! (agent_verify_ca) is still to come.

use crate::DriverError;
use ferric_types::Node;
use serde_json::{json, Value};
use std::time::Duration;

/// Timeout of one request to the agent.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts for a request that could not connect.
const ATTEMPTS: u32 = 3;

/// Talks to the agents of nodes.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
}

impl Default for AgentClient {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("a plain HTTP client always builds");
        AgentClient { http }
    }
}

/// Where a node's agent listens and its token, from driver_internal_info.
fn endpoint(node: &Node) -> Result<(String, String), DriverError> {
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
    Ok((url.trim_end_matches('/').to_string(), token.to_string()))
}

impl AgentClient {
    /// Runs `extension.command` on the node's agent; with `wait`, until it
    /// finished. Returns IPA's command result object.
    pub async fn execute(
        &self,
        node: &Node,
        name: &str,
        params: Value,
        wait: bool,
    ) -> Result<Value, DriverError> {
        let (url, token) = endpoint(node)?;
        let body = json!({"name": name, "params": params});
        let mut last = None;
        for attempt in 1..=ATTEMPTS {
            let sent = self
                .http
                .post(format!("{url}/v1/commands/"))
                .query(&[
                    ("wait", if wait { "true" } else { "false" }),
                    ("agent_token", &token),
                ])
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(response) => return read(response, name).await,
                Err(e) if e.is_connect() && attempt < ATTEMPTS => {
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
        let (url, token) = endpoint(node)?;
        let response = self
            .http
            .get(format!("{url}/v1/commands/"))
            .query(&[("agent_token", &token)])
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
        let mut text = self.to_string();
        if let Some(url) = self.url() {
            text = text.replace(url.as_str(), "<agent>");
        }
        text
    }
}

async fn read(response: reqwest::Response, what: &str) -> Result<Value, DriverError> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
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
