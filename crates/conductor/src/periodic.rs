//! Periodic tasks: conductor heartbeat and takeover, power state sync,
//! callback timeouts.

use crate::{Conductor, ConductorError};
use ferric_store::{NodeIdent, NodeQuery, StoreError};
use ferric_types::{Node, ProvisionState};
use std::collections::HashMap;
use std::time::Duration;
use tokio::task::JoinHandle;
use uuid::Uuid;

const POWER_FAILURE_FAULT: &str = "power failure";

impl Conductor {
    /// Starts the periodic tasks; they run until the runtime stops.
    pub fn spawn_periodic_tasks(&self) -> Vec<JoinHandle<()>> {
        let config = self.config().clone();
        let mut handles = Vec::new();
        let me = self.clone();
        handles.push(every(config.heartbeat_interval, move || {
            let me = me.clone();
            async move { me.heartbeat_and_takeover().await }
        }));
        if !config.power_sync_interval.is_zero() {
            let me = self.clone();
            let failures = std::sync::Arc::new(tokio::sync::Mutex::new(HashMap::new()));
            handles.push(every(config.power_sync_interval, move || {
                let me = me.clone();
                let failures = failures.clone();
                async move {
                    let mut failures = failures.lock().await;
                    me.sync_power_states(&mut failures).await
                }
            }));
        }
        let me = self.clone();
        handles.push(every(config.callback_check_interval, move || {
            let me = me.clone();
            async move { me.fail_timed_out_callbacks().await }
        }));
        handles
    }

    /// Refreshes this conductor's heartbeat, the hash ring, and takes over
    /// the locks of conductors that stopped heartbeating.
    pub async fn heartbeat_and_takeover(&self) -> Result<(), ConductorError> {
        self.store().touch_conductor(self.hostname()).await?;
        let dead_after = self.config().dead_conductor_after.as_secs();
        for conductor in self.store().list_conductors(dead_after).await? {
            if !conductor.alive && conductor.hostname != self.hostname() {
                self.recover_from(&conductor.hostname, "stopped heartbeating")
                    .await?;
            }
        }
        self.refresh_ring().await
    }

    fn owns(&self, node: &Node) -> bool {
        self.owner_of(node.uuid).as_deref() == Some(self.hostname())
    }

    /// Reads every owned node's power state from its BMC and records it.
    /// A node whose BMC fails `power_failure_threshold` reads in a row goes
    /// into maintenance with fault "power failure"; it comes out by itself
    /// once the BMC answers again.
    pub async fn sync_power_states(
        &self,
        failures: &mut HashMap<Uuid, u32>,
    ) -> Result<(), ConductorError> {
        let nodes = self.store().list_nodes(&NodeQuery::default()).await?;
        for node in nodes {
            let in_power_fault =
                node.maintenance && node.fault.as_deref() == Some(POWER_FAILURE_FAULT);
            if !self.owns(&node)
                || node.reservation.is_some()
                || node.target_power_state.is_some()
                || (node.maintenance && !in_power_fault)
                || node.provision_state.is_busy()
            {
                continue;
            }
            let Ok(driver) = self.registry().node_driver(&node) else {
                continue;
            };
            let read = driver.power.get_power_state(&node).await;
            let uuid = node.uuid;
            let result = match read {
                Ok(state) => {
                    failures.remove(&uuid);
                    if node.power_state == Some(state) && !in_power_fault {
                        continue;
                    }
                    self.update_if_unlocked(uuid, |n| {
                        if n.power_state != Some(state) {
                            tracing::info!(node = %n.uuid, from = ?n.power_state, to = %state, "power state changed outside Ferric");
                        }
                        n.power_state = Some(state);
                        if n.maintenance && n.fault.as_deref() == Some(POWER_FAILURE_FAULT) {
                            tracing::info!(node = %n.uuid, "BMC answers again: leaving maintenance");
                            n.maintenance = false;
                            n.maintenance_reason = None;
                            n.fault = None;
                        }
                    })
                    .await
                }
                Err(e) => {
                    let count = failures.entry(uuid).or_insert(0);
                    *count += 1;
                    tracing::warn!(node = %uuid, error = %e, failures = *count, "power state sync failed");
                    if *count < self.config().power_failure_threshold || in_power_fault {
                        continue;
                    }
                    let message = format!(
                        "During sync_power_state, max retries exceeded for node {uuid}, node state \
                         None does not match expected state '{}'. Updating DB state to 'None' \
                         Switching node to maintenance mode. Error: {e}",
                        node.power_state.map(|p| p.as_str()).unwrap_or("None")
                    );
                    self.update_if_unlocked(uuid, |n| {
                        n.power_state = None;
                        n.maintenance = true;
                        n.fault = Some(POWER_FAILURE_FAULT.to_string());
                        n.maintenance_reason = Some(message.clone());
                        n.last_error = Some(message);
                    })
                    .await
                }
            };
            if let Err(e) = result {
                tracing::warn!(node = %uuid, error = %e, "could not record power state");
            }
        }
        Ok(())
    }

    /// Fails nodes that waited for their agent longer than the callback
    /// timeout, and powers them off.
    pub async fn fail_timed_out_callbacks(&self) -> Result<(), ConductorError> {
        let query = NodeQuery {
            provision_states: Some(
                ProvisionState::ALL
                    .iter()
                    .copied()
                    .filter(|s| s.is_waiting())
                    .collect(),
            ),
            ..Default::default()
        };
        let timeout = self.config().deploy_callback_timeout.as_secs_f64();
        for node in self.store().list_nodes(&query).await? {
            // An installer's last callback ("end" or "error") comes once: if
            // the node was busy when it came, it is taken in now.
            let last_word = matches!(
                node.driver_internal_info
                    .get("agent_status")
                    .and_then(serde_json::Value::as_str),
                Some("end" | "error")
            );
            if last_word && node.reservation.is_none() && self.owns(&node) {
                self.continue_after_heartbeat(node.uuid).await;
                continue;
            }
            let waited = node
                .provision_updated_at
                .map(|t| t.age_seconds())
                .unwrap_or(f64::MAX);
            if !self.owns(&node) || node.reservation.is_some() || waited < timeout {
                continue;
            }
            if let Err(e) = self.fail_waiting_node(node.uuid, timeout).await {
                tracing::warn!(node = %node.uuid, error = %e, "could not time out node");
            }
        }
        self.retry_silent_boots().await
    }

    /// Reboots nodes that network-booted for an agent or an installer and
    /// were not heard from within `[conductor.pxe] boot_retry_timeout`
    /// (Ironic's boot retry): a lost DHCP answer or TFTP transfer should
    /// not cost a whole callback timeout. A node that called back once is
    /// left alone.
    pub async fn retry_silent_boots(&self) -> Result<(), ConductorError> {
        let Some(retry_after) = self.registry().ipxe().options().boot_retry_timeout else {
            return Ok(());
        };
        let retry_after = retry_after as f64;
        let query = NodeQuery {
            provision_states: Some(vec![
                ProvisionState::WaitCallBack,
                ProvisionState::CleanWait,
            ]),
            ..Default::default()
        };
        for node in self.store().list_nodes(&query).await? {
            if !self.owns(&node)
                || node.reservation.is_some()
                || !boot_is_silent(&node, retry_after)
            {
                continue;
            }
            if let Err(e) = self.retry_boot(node.uuid, retry_after).await {
                tracing::warn!(node = %node.uuid, error = %e, "boot retry failed");
            }
        }
        Ok(())
    }

    async fn fail_waiting_node(&self, uuid: Uuid, timeout: f64) -> Result<(), ConductorError> {
        let mut node = match self
            .store()
            .reserve_node(&NodeIdent::Uuid(uuid), self.hostname())
            .await
        {
            Ok(n) => n,
            Err(StoreError::NodeLocked { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // Re-check under the lock: the agent may have called back meanwhile.
        let still_waiting = node.provision_state.is_waiting()
            && node
                .provision_updated_at
                .map(|t| t.age_seconds() >= timeout)
                .unwrap_or(true);
        if still_waiting {
            if let Ok(t) = ferric_state_machine::next(
                node.provision_state,
                node.target_provision_state,
                ferric_state_machine::Event::Fail,
            ) {
                let message = format!(
                    "Timeout reached while waiting for callback for node {} (waited {timeout:.0} s in \"{}\")",
                    node.uuid, node.provision_state
                );
                tracing::warn!(node = %node.uuid, "{message}");
                if let Ok(driver) = self.registry().node_driver(&node) {
                    self.power_off_quietly(&mut node, &driver).await;
                    // What the operation left (an installer's boot and
                    // kickstart, a cached image's lease) goes with it.
                    if let Err(e) = driver.deploy.tear_down(&mut node).await {
                        tracing::warn!(node = %node.uuid, error = %e, "could not tear down after the timeout");
                    }
                }
                if matches!(node.provision_state, ProvisionState::CleanWait) {
                    node.maintenance = true;
                    node.fault = Some("clean failure".to_string());
                    node.maintenance_reason = Some(message.clone());
                }
                node.last_error = Some(message);
                crate::provision::clear_step_state(&mut node);
                node.set_provision_state(t.state, t.target);
            }
        }
        self.save_and_release(&node).await?;
        Ok(())
    }

    /// Changes a node if nobody holds its lock; skips it quietly otherwise.
    async fn update_if_unlocked(
        &self,
        uuid: Uuid,
        change: impl FnOnce(&mut Node),
    ) -> Result<(), ConductorError> {
        match self
            .with_lock(&NodeIdent::Uuid(uuid), |n| {
                change(n);
                Ok(())
            })
            .await
        {
            Ok(_) | Err(ConductorError::Store(StoreError::NodeLocked { .. })) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Conductor {
    /// Under the node's lock: network boot once more, and reboot.
    async fn retry_boot(&self, uuid: Uuid, retry_after: f64) -> Result<(), ConductorError> {
        let mut node = match self
            .store()
            .reserve_node(&NodeIdent::Uuid(uuid), self.hostname())
            .await
        {
            Ok(node) => node,
            Err(StoreError::NodeLocked { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if boot_is_silent(&node, retry_after) {
            node.driver_internal_info.insert(
                BOOT_RETRY_KEY.into(),
                serde_json::Value::String(ferric_types::Timestamp::now().to_string()),
            );
            tracing::warn!(node = %uuid, after = retry_after, "no callback since the node booted: booting it again");
            match self.registry().node_driver(&node) {
                Ok(driver) => {
                    // The one-time network boot was used by the boot that
                    // went silent: ask for it again.
                    let result = async {
                        driver
                            .management
                            .set_boot_device(&node, ferric_drivers::BootDevice::Pxe, false)
                            .await?;
                        driver.power.reboot(&node, false, None).await
                    }
                    .await;
                    if let Err(e) = result {
                        tracing::warn!(node = %uuid, error = %e, "boot retry: could not reboot");
                    }
                }
                Err(e) => tracing::warn!(node = %uuid, error = %e, "boot retry: no driver"),
            }
        }
        self.save_and_release(&node).await?;
        Ok(())
    }
}

/// When the last boot retry was (driver_internal_info).
const BOOT_RETRY_KEY: &str = "boot_retry_at";

/// Whether `node` network-booted (ipxe, pxe) more than `after` seconds ago
/// (the wait began, or the last retry) and nothing called back since.
fn boot_is_silent(node: &Node, after: f64) -> bool {
    let network = matches!(node.boot_interface.as_deref(), Some("ipxe" | "pxe"));
    let info = &node.driver_internal_info;
    let heard = info.contains_key("agent_last_heartbeat") || info.contains_key("agent_status");
    // The later of the wait's start and the last retry (which may be of
    // an earlier operation).
    let retried = info
        .get(BOOT_RETRY_KEY)
        .and_then(serde_json::Value::as_str)
        .and_then(|t| ferric_types::Timestamp::parse(t).ok())
        .map(|t| t.age_seconds())
        .unwrap_or(f64::MAX);
    let waiting = node
        .provision_updated_at
        .map(|t| t.age_seconds())
        .unwrap_or(0.0);
    let since = retried.min(waiting);
    network
        && !heard
        && matches!(
            node.provision_state,
            ProvisionState::WaitCallBack | ProvisionState::CleanWait
        )
        && since >= after
}

/// Runs `task` every `interval`, logging its errors, forever.
fn every<F, Fut>(interval: Duration, task: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), ConductorError>> + Send,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if let Err(e) = task().await {
                tracing::warn!(error = %e, "periodic task failed");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn waiting(boot: &str) -> Node {
        let mut node = Node::new(Uuid::new_v4(), "ipmi", ProvisionState::WaitCallBack);
        node.boot_interface = Some(boot.into());
        node.provision_updated_at = Some(ferric_types::Timestamp::from_unix_micros(
            ferric_types::Timestamp::now().unix_micros() - 120_000_000,
        ));
        node
    }

    #[test]
    fn only_network_boots_never_heard_from_are_retried() {
        let node = waiting("ipxe");
        assert!(boot_is_silent(&node, 60.0));
        assert!(!boot_is_silent(&node, 300.0));
        assert!(!boot_is_silent(&waiting("redfish-virtual-media"), 60.0));
        // An agent heartbeat or an installer callback: it booted.
        for key in ["agent_last_heartbeat", "agent_status"] {
            let mut heard = waiting("pxe");
            heard.driver_internal_info.insert(key.into(), json!("x"));
            assert!(!boot_is_silent(&heard, 60.0), "{key}");
        }
        // A retry restarts the clock; one of an earlier operation does not.
        let mut retried = waiting("ipxe");
        retried.driver_internal_info.insert(
            BOOT_RETRY_KEY.into(),
            json!(ferric_types::Timestamp::now().to_string()),
        );
        assert!(!boot_is_silent(&retried, 60.0));
        let old = ferric_types::Timestamp::from_unix_micros(
            ferric_types::Timestamp::now().unix_micros() - 3_600_000_000,
        );
        retried
            .driver_internal_info
            .insert(BOOT_RETRY_KEY.into(), json!(old.to_string()));
        assert!(boot_is_silent(&retried, 60.0));
        let mut active = waiting("ipxe");
        active.provision_state = ProvisionState::Active;
        assert!(!boot_is_silent(&active, 60.0));
    }
}
