//! The ramdisk side of the conductor: lookup (an agent finds its node and
//! receives its token, once) and heartbeat (an agent says where it listens).
//!
//! The token is the agent's only credential: it is generated here, handed out
//! by the first lookup only (later lookups see `******`), compared in constant
//! time, never logged, and forgotten when the operation ends.

use crate::{Conductor, ConductorError};
use base64::Engine;
use ferric_store::{NodeIdent, PortQuery, StoreError};
use ferric_types::port::normalize_mac;
use ferric_types::{Node, Timestamp};
use serde_json::Value;
use std::collections::BTreeSet;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// Where the agent token lives in `driver_internal_info` (Ironic's key).
pub const AGENT_TOKEN_KEY: &str = "agent_secret_token";
const TOKEN_PREGENERATED_KEY: &str = "agent_secret_token_pregenerated";
const AGENT_URL_KEY: &str = "agent_url";
const AGENT_VERSION_KEY: &str = "agent_version";
const AGENT_VERIFY_CA_KEY: &str = "agent_verify_ca";
const AGENT_LAST_HEARTBEAT_KEY: &str = "agent_last_heartbeat";
const AGENT_STATUS_KEY: &str = "agent_status";
const AGENT_STATUS_MESSAGE_KEY: &str = "agent_status_message";
/// What later lookups see instead of the token.
const MASKED: &str = "******";

/// What a lookup returns: the node and the token (the real one only once).
#[derive(Debug, Clone)]
pub struct LookupAnswer {
    pub node: Node,
    pub token: String,
}

/// A heartbeat, as posted by the agent.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub callback_url: String,
    pub agent_token: Option<String>,
    pub agent_version: Option<String>,
    pub agent_verify_ca: Option<String>,
    pub agent_status: Option<String>,
    pub agent_status_message: Option<String>,
}

/// The agent statuses an anaconda-style ramdisk reports.
const AGENT_STATUSES: [&str; 3] = ["start", "end", "error"];

/// Removes what an agent left on the node: token, callback URL, CA.
pub(crate) fn forget_agent(node: &mut Node) {
    for key in [
        AGENT_TOKEN_KEY,
        TOKEN_PREGENERATED_KEY,
        AGENT_URL_KEY,
        AGENT_VERIFY_CA_KEY,
        AGENT_VERSION_KEY,
        AGENT_LAST_HEARTBEAT_KEY,
        AGENT_STATUS_KEY,
        AGENT_STATUS_MESSAGE_KEY,
    ] {
        node.driver_internal_info.remove(key);
    }
}

/// [`forget_agent`], except for a token generated ahead of time (virtual
/// media boots carry it on their kernel command line).
pub(crate) fn forget_agent_unless_pregenerated(node: &mut Node) {
    if is_pregenerated(node) {
        for key in [AGENT_URL_KEY, AGENT_VERIFY_CA_KEY, AGENT_LAST_HEARTBEAT_KEY] {
            node.driver_internal_info.remove(key);
        }
    } else {
        forget_agent(node);
    }
}

/// Whether the node's token was generated ahead of time (and handed to the
/// agent on its kernel command line, not by lookup).
fn is_pregenerated(node: &Node) -> bool {
    node.driver_internal_info
        .get(TOKEN_PREGENERATED_KEY)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// 32 random bytes, URL-safe base64 (43 characters), as Ironic's
/// `secrets.token_urlsafe(32)`.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn token_of(node: &Node) -> Option<&str> {
    node.driver_internal_info
        .get(AGENT_TOKEN_KEY)
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
}

fn not_found() -> ConductorError {
    ConductorError::NotFound("Node could not be found.".into())
}

impl Conductor {
    /// Finds the node an agent runs on, by its MAC addresses or its UUID,
    /// in a state where an agent is expected, and gives it a token if it has
    /// none yet. Invalid MACs are ignored, as Ironic does.
    pub async fn lookup(
        &self,
        addresses: &[String],
        node_uuid: Option<Uuid>,
    ) -> Result<LookupAnswer, ConductorError> {
        let macs: BTreeSet<String> = addresses.iter().filter_map(|a| normalize_mac(a)).collect();
        if macs.is_empty() && node_uuid.is_none() {
            return Err(ConductorError::InvalidParameter(
                "Incomplete lookup request, at least one valid MAC address or the node UUID is required."
                    .into(),
            ));
        }
        let node = match node_uuid {
            Some(uuid) => match self.store().get_node(&NodeIdent::Uuid(uuid)).await {
                Ok(node) => node,
                Err(StoreError::NodeNotFound(_)) => return Err(not_found()),
                Err(e) => return Err(e.into()),
            },
            None => self.node_by_macs(&macs).await?,
        };
        if !node.provision_state.allows_lookup() {
            tracing::warn!(
                node = %node.uuid,
                state = node.provision_state.as_str(),
                "lookup refused: no agent is expected in this state"
            );
            return Err(not_found());
        }
        if token_of(&node).is_some() {
            if is_pregenerated(&node) {
                // A virtual media boot: the agent has the token from its
                // kernel command line.
                tracing::info!(node = %node.uuid, "agent looked up; its token was pregenerated");
            } else {
                tracing::warn!(node = %node.uuid, "lookup for a node that already gave out its agent token");
            }
            return Ok(LookupAnswer {
                node,
                token: MASKED.into(),
            });
        }
        // No retry: lookups must not pile up behind a busy node; the agent retries.
        let mut node = self
            .store()
            .reserve_node(&NodeIdent::Uuid(node.uuid), self.hostname())
            .await?;
        if token_of(&node).is_some() {
            self.release(node.uuid).await;
            return Ok(LookupAnswer {
                node,
                token: MASKED.into(),
            });
        }
        let token = new_token();
        node.driver_internal_info
            .insert(AGENT_TOKEN_KEY.into(), Value::String(token.clone()));
        node.driver_internal_info
            .insert(TOKEN_PREGENERATED_KEY.into(), Value::Bool(false));
        let node = self.save_and_release(&node).await?;
        tracing::info!(node = %node.uuid, "agent looked up; token issued");
        Ok(LookupAnswer { node, token })
    }

    async fn node_by_macs(&self, macs: &BTreeSet<String>) -> Result<Node, ConductorError> {
        let mut nodes = BTreeSet::new();
        for mac in macs {
            let query = PortQuery {
                address: Some(mac.clone()),
                ..PortQuery::default()
            };
            for port in self.store().list_ports(&query).await? {
                nodes.insert(port.node_uuid);
            }
        }
        let mut found = nodes.into_iter();
        match (found.next(), found.next()) {
            (Some(uuid), None) => match self.store().get_node(&NodeIdent::Uuid(uuid)).await {
                Ok(node) => Ok(node),
                Err(StoreError::NodeNotFound(_)) => Err(not_found()),
                Err(e) => Err(e.into()),
            },
            (Some(_), Some(_)) => {
                tracing::warn!("lookup refused: the MAC addresses match several nodes");
                Err(not_found())
            }
            (None, _) => Err(not_found()),
        }
    }

    /// Records an agent's heartbeat: checks its token and callback URL, pins
    /// the URL and the CA of the first heartbeat, and notes the time.
    pub async fn heartbeat(
        &self,
        ident: &NodeIdent,
        heartbeat: Heartbeat,
    ) -> Result<(), ConductorError> {
        let node = self.store().get_node(ident).await?;
        let recorded_url = node
            .driver_internal_info
            .get(AGENT_URL_KEY)
            .and_then(Value::as_str)
            .map(str::to_string);
        let url = heartbeat.callback_url.trim();
        let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
        if !url.is_empty() && (!scheme_ok || url.len() <= "https://".len()) {
            return Err(ConductorError::InvalidParameter(
                "An issue with the supplied \"callback_url\" has been detected.".into(),
            ));
        }
        if let Some(recorded) = &recorded_url {
            if recorded != url {
                tracing::error!(node = %node.uuid, "heartbeat with a changed callback URL refused");
                return Err(ConductorError::InvalidParameter(
                    "Detected change in ramdisk provided \"callback_url\"".into(),
                ));
            }
        }
        let Some(given) = heartbeat.agent_token.as_deref() else {
            return Err(ConductorError::InvalidParameter(
                "Agent token is required for heartbeat processing.".into(),
            ));
        };
        if let Some(status) = heartbeat.agent_status.as_deref() {
            if !AGENT_STATUSES.contains(&status) {
                return Err(ConductorError::InvalidParameter(format!(
                    "Agent status is invalid. Valid states are {}.",
                    AGENT_STATUSES.join(",")
                )));
            }
        }
        let valid = token_of(&node)
            .is_some_and(|expected| bool::from(expected.as_bytes().ct_eq(given.as_bytes())));
        if !valid {
            tracing::error!(node = %node.uuid, "heartbeat with an invalid or missing agent token refused");
            return Err(ConductorError::InvalidParameter(
                "Invalid or missing agent token received.".into(),
            ));
        }
        if heartbeat.agent_version.is_none() && heartbeat.agent_status.is_none() {
            return Err(ConductorError::InvalidParameter(
                "Either agent_version or agent_status is required.".into(),
            ));
        }
        let recorded_ca = node
            .driver_internal_info
            .get(AGENT_VERIFY_CA_KEY)
            .and_then(Value::as_str);
        if let (Some(recorded), Some(given)) = (recorded_ca, heartbeat.agent_verify_ca.as_deref()) {
            if recorded != given {
                tracing::error!(node = %node.uuid, "heartbeat with a changed agent CA refused");
                return Err(ConductorError::InvalidParameter(
                    "The agent's certificate authority changed since its first heartbeat.".into(),
                ));
            }
        }
        let mut node = match self
            .store()
            .reserve_node(&NodeIdent::Uuid(node.uuid), self.hostname())
            .await
        {
            Ok(node) => node,
            // Busy with this agent's own work: the heartbeat is noted by its
            // arrival, there is nothing to record.
            Err(StoreError::NodeLocked { .. }) if recorded_url.is_some() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // The reservation may have waited for another operation to end (and
        // the next one to start): check the token again on the node as it
        // is now, or a late heartbeat would speak for an agent the new
        // operation has not met.
        let still_valid = token_of(&node)
            .is_some_and(|expected| bool::from(expected.as_bytes().ct_eq(given.as_bytes())));
        let url_changed = node
            .driver_internal_info
            .get(AGENT_URL_KEY)
            .and_then(Value::as_str)
            .is_some_and(|recorded| recorded != url);
        // Two first heartbeats may race: the CA pinned by the one that got
        // the lock first stays.
        let ca_changed = match (
            node.driver_internal_info
                .get(AGENT_VERIFY_CA_KEY)
                .and_then(Value::as_str),
            heartbeat.agent_verify_ca.as_deref(),
        ) {
            (Some(recorded), Some(given)) => recorded != given,
            _ => false,
        };
        if ca_changed {
            self.release(node.uuid).await;
            tracing::error!(node = %node.uuid, "heartbeat with a changed agent CA refused");
            return Err(ConductorError::InvalidParameter(
                "The agent's certificate authority changed since its first heartbeat.".into(),
            ));
        }
        if !still_valid || url_changed {
            self.release(node.uuid).await;
            tracing::error!(node = %node.uuid, "heartbeat for an operation that has ended refused");
            return Err(ConductorError::InvalidParameter(
                "Invalid agent token received: the operation it was given for has ended.".into(),
            ));
        }
        let info = &mut node.driver_internal_info;
        if !url.is_empty() {
            info.insert(AGENT_URL_KEY.into(), Value::String(url.to_string()));
        }
        for (key, value) in [
            (AGENT_VERSION_KEY, &heartbeat.agent_version),
            (AGENT_VERIFY_CA_KEY, &heartbeat.agent_verify_ca),
            (AGENT_STATUS_KEY, &heartbeat.agent_status),
            (AGENT_STATUS_MESSAGE_KEY, &heartbeat.agent_status_message),
        ] {
            if let Some(value) = value {
                info.insert(key.into(), Value::String(value.clone()));
            }
        }
        info.insert(
            AGENT_LAST_HEARTBEAT_KEY.into(),
            Value::String(Timestamp::now().to_string()),
        );
        let node = self.save_and_release(&node).await?;
        tracing::debug!(node = %node.uuid, "agent heartbeat recorded");
        if node.provision_state.is_waiting() {
            // The heartbeat answers at once; the steps go on in the background.
            let conductor = self.clone();
            tokio::spawn(async move { conductor.continue_after_heartbeat(node.uuid).await });
        }
        Ok(())
    }
}
