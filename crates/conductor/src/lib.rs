//! Ferric's conductor: it owns every change to a node.
//!
//! An operation takes the node's exclusive lock (a reservation in the
//! store), checks the request against the state machine, records the new
//! state, and hands long work to a background task that keeps the lock
//! until the work ends. Periodic tasks sync power states, fail nodes whose
//! agent never called back, and take over the locks of dead conductors.

mod agent;
mod config;
mod error;
mod periodic;
mod provision;
mod steps;

pub use agent::{Heartbeat, LookupAnswer, AGENT_TOKEN_KEY};
pub use config::ConductorConfig;
pub use error::ConductorError;
pub use provision::ProvisionRequest;
pub use steps::{manual_steps, merge_steps};

use ferric_drivers::{BootDevice, BootDeviceInfo, DriverRegistry, InterfaceValidation, NodeDriver};
use ferric_store::{NodeIdent, Store};
use ferric_types::{Node, PowerState, ProvisionState, Timestamp};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use uuid::Uuid;

/// The conductor. Cheap to clone.
#[derive(Clone)]
pub struct Conductor {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    registry: DriverRegistry,
    config: ConductorConfig,
    /// Hostnames of the conductors alive at the last heartbeat, sorted:
    /// the hash ring that decides which conductor runs periodic work on a node.
    ring: RwLock<Vec<String>>,
}

impl Conductor {
    /// Registers this conductor in the store and recovers nodes that a
    /// previous run of it left locked or mid-operation. Does not start
    /// periodic tasks: call [`Conductor::spawn_periodic_tasks`].
    pub async fn start(store: Store, config: ConductorConfig) -> Result<Conductor, ConductorError> {
        let direct = config.direct_options().map_err(ConductorError::Config)?;
        let registry = DriverRegistry::new(&config.enabled_hardware_types, direct)
            .map_err(|e| ConductorError::Config(e.to_string()))?
            .with_ipmi_options(config.ipmi.clone())
            .with_redfish_options(config.redfish.clone())
            .with_virtual_media_dir(config.virtual_media_dir())
            .with_pxe_options(config.pxe_options())
            .and_then(|r| r.with_anaconda_options(config.anaconda.clone()))
            .map_err(|e| ConductorError::Config(e.to_string()))?;
        let conductor = Conductor {
            inner: Arc::new(Inner {
                store,
                registry,
                config,
                ring: RwLock::new(Vec::new()),
            }),
        };
        let hostname = conductor.hostname().to_string();
        conductor.recover_from(&hostname, "restarted").await?;
        let drivers: Vec<String> = conductor
            .registry()
            .hardware_types()
            .iter()
            .map(|h| h.name.to_string())
            .collect();
        conductor
            .store()
            .register_conductor(&hostname, &conductor.inner.config.conductor_group, &drivers)
            .await?;
        conductor.refresh_ring().await?;
        Ok(conductor)
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn registry(&self) -> &DriverRegistry {
        &self.inner.registry
    }

    pub fn config(&self) -> &ConductorConfig {
        &self.inner.config
    }

    pub fn hostname(&self) -> &str {
        &self.inner.config.hostname
    }

    /// Cleans the image cache (age and size limits) now and then every
    /// `interval`, on a blocking thread. Downloads clean it up too.
    pub fn spawn_image_cache_cleanup(
        &self,
        interval: Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let cache = self.registry().image_cache()?.clone();
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            loop {
                ticks.tick().await;
                let cache = cache.clone();
                match tokio::task::spawn_blocking(move || cache.clean_up()).await {
                    Ok(Ok(report)) if !report.removed.is_empty() => {
                        tracing::info!(
                            removed = report.removed.len(),
                            freed_bytes = report.freed_bytes,
                            "image cache cleaned"
                        );
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %ferric_drivers::image_cache::chain(&e), "image cache clean-up failed")
                    }
                    Err(e) => tracing::warn!(error = %e, "image cache clean-up panicked"),
                }
            }
        }))
    }

    /// Marks this conductor offline in the store (clean shutdown).
    pub async fn shutdown(&self) -> Result<(), ConductorError> {
        self.store().unregister_conductor(self.hostname()).await?;
        Ok(())
    }

    /// The conductor that runs periodic work for a node.
    pub fn owner_of(&self, node: Uuid) -> Option<String> {
        let ring = self.inner.ring.read().unwrap();
        if ring.is_empty() {
            return None;
        }
        let slot = (node.as_u128() % ring.len() as u128) as usize;
        Some(ring[slot].clone())
    }

    async fn refresh_ring(&self) -> Result<(), ConductorError> {
        let dead_after = self.inner.config.dead_conductor_after.as_secs();
        let mut alive: Vec<String> = self
            .store()
            .list_conductors(dead_after)
            .await?
            .into_iter()
            .filter(|c| c.alive)
            .map(|c| c.hostname)
            .collect();
        alive.sort();
        *self.inner.ring.write().unwrap() = alive;
        Ok(())
    }

    /// Takes the node's lock, runs `f` on it, saves and releases. The lock
    /// is released on error too.
    pub(crate) async fn with_lock<T>(
        &self,
        ident: &NodeIdent,
        f: impl FnOnce(&mut Node) -> Result<T, ConductorError>,
    ) -> Result<(Node, T), ConductorError> {
        let mut node = self.store().reserve_node(ident, self.hostname()).await?;
        match f(&mut node) {
            Ok(value) => {
                let saved = self.save_and_release(&node).await?;
                Ok((saved, value))
            }
            Err(e) => {
                self.release(node.uuid).await;
                Err(e)
            }
        }
    }

    pub(crate) async fn save_and_release(&self, node: &Node) -> Result<Node, ConductorError> {
        let result = self
            .store()
            .update_and_release_node(node, self.hostname())
            .await;
        if result.is_err() {
            self.release(node.uuid).await;
        }
        Ok(result?)
    }

    pub(crate) async fn release(&self, uuid: Uuid) {
        if let Err(e) = self.store().release_node(uuid, self.hostname()).await {
            tracing::error!(node = %uuid, error = %e, "could not release node lock");
        }
    }

    pub(crate) fn driver_for(&self, node: &Node) -> Result<NodeDriver, ConductorError> {
        self.registry()
            .node_driver(node)
            .map_err(|e| ConductorError::InvalidParameter(e.to_string()))
    }

    // ---- node records ----

    /// Creates a node after checking its hardware type and interfaces
    /// (empty interfaces get the hardware type's defaults).
    pub async fn create_node(&self, mut node: Node) -> Result<Node, ConductorError> {
        self.registry()
            .resolve_interfaces(&mut node)
            .map_err(|e| ConductorError::InvalidParameter(e.to_string()))?;
        node.created_at = Timestamp::now();
        self.store().create_node(&node).await?;
        Ok(node)
    }

    /// Updates a node under its lock: `change` edits it (and may refuse);
    /// then the hardware type and interfaces are checked again.
    pub async fn update_node(
        &self,
        ident: &NodeIdent,
        change: impl FnOnce(&mut Node) -> Result<(), ConductorError>,
    ) -> Result<Node, ConductorError> {
        let registry = self.registry();
        let (node, ()) = self
            .with_lock(ident, |node| {
                change(node)?;
                registry
                    .resolve_interfaces(node)
                    .map_err(|e| ConductorError::InvalidParameter(e.to_string()))
            })
            .await?;
        Ok(node)
    }

    /// Deletes a node in a state that allows it (Ironic's rules).
    pub async fn delete_node(&self, ident: &NodeIdent) -> Result<(), ConductorError> {
        let node = self.store().reserve_node(ident, self.hostname()).await?;
        if let Err(e) = self.check_deletable(&node) {
            self.release(node.uuid).await;
            return Err(e);
        }
        // The lock goes with the row.
        self.store().delete_node(node.uuid).await?;
        Ok(())
    }

    fn check_deletable(&self, node: &Node) -> Result<(), ConductorError> {
        if let (false, Some(instance)) = (node.maintenance, node.instance_uuid) {
            return Err(ConductorError::Conflict(format!(
                "Node {} is associated with instance {instance}.",
                node.uuid
            )));
        }
        if node.protected {
            return Err(ConductorError::Forbidden(format!(
                "Node {} is protected and cannot be undeployed, rebuilt or deleted",
                node.uuid
            )));
        }
        let mut allowed = vec![
            ProvisionState::Manageable,
            ProvisionState::Enroll,
            ProvisionState::AdoptFailed,
        ];
        if self.inner.config.allow_deleting_available_nodes {
            allowed.push(ProvisionState::Available);
        }
        if !node.maintenance && !allowed.contains(&node.provision_state) {
            let valid: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
            return Err(ConductorError::Conflict(format!(
                "Can not delete node \"{}\" while it is in provision state \"{}\". Valid provision \
                 states to perform deletion are: \"{}\", or set the node into maintenance mode",
                node.uuid,
                node.provision_state,
                valid.join("\", \"")
            )));
        }
        Ok(())
    }

    /// Validates every interface of a node.
    pub async fn validate_node(
        &self,
        ident: &NodeIdent,
    ) -> Result<BTreeMap<&'static str, InterfaceValidation>, ConductorError> {
        let node = self.store().get_node(ident).await?;
        Ok(self.driver_for(&node)?.validate(&node))
    }

    // ---- maintenance ----

    pub async fn set_maintenance(
        &self,
        ident: &NodeIdent,
        on: bool,
        reason: Option<String>,
    ) -> Result<Node, ConductorError> {
        let (node, ()) = self
            .with_lock(ident, |node| {
                node.maintenance = on;
                node.maintenance_reason = if on { reason } else { None };
                if !on {
                    node.fault = None;
                }
                Ok(())
            })
            .await?;
        Ok(node)
    }

    // ---- management ----

    pub async fn get_boot_device(
        &self,
        ident: &NodeIdent,
    ) -> Result<BootDeviceInfo, ConductorError> {
        let node = self.store().get_node(ident).await?;
        let driver = self.driver_for(&node)?;
        Ok(driver.management.get_boot_device(&node).await?)
    }

    pub async fn supported_boot_devices(
        &self,
        ident: &NodeIdent,
    ) -> Result<Vec<BootDevice>, ConductorError> {
        let node = self.store().get_node(ident).await?;
        let driver = self.driver_for(&node)?;
        Ok(driver.management.supported_boot_devices(&node))
    }

    pub async fn set_boot_device(
        &self,
        ident: &NodeIdent,
        device: BootDevice,
        persistent: bool,
    ) -> Result<(), ConductorError> {
        let node = self.store().reserve_node(ident, self.hostname()).await?;
        let result = async {
            let driver = self.driver_for(&node)?;
            driver.management.validate(&node)?;
            driver
                .management
                .set_boot_device(&node, device, persistent)
                .await?;
            Ok(())
        }
        .await;
        self.release(node.uuid).await;
        result
    }

    // ---- power ----

    /// Starts a power action; returns once it is recorded (`target_power_state`
    /// set). The action runs in the background under the node's lock.
    pub async fn set_power_state(
        &self,
        ident: &NodeIdent,
        target: PowerState,
        timeout: Option<Duration>,
    ) -> Result<(), ConductorError> {
        let mut node = self.store().reserve_node(ident, self.hostname()).await?;
        let prepared = (|| {
            if node.disable_power_off
                && matches!(target, PowerState::Off | PowerState::SoftPowerOff)
            {
                return Err(ConductorError::InvalidParameter(format!(
                    "Node {} has disable_power_off set: it cannot be powered off",
                    node.uuid
                )));
            }
            let driver = self.driver_for(&node)?;
            driver.power.validate(&node)?;
            let soft = matches!(target, PowerState::SoftPowerOff | PowerState::SoftRebooting);
            if soft && !driver.power.supports_soft_power() {
                return Err(ConductorError::InvalidParameter(format!(
                    "The power interface of node {} does not support soft power actions",
                    node.uuid
                )));
            }
            Ok(driver)
        })();
        let driver = match prepared {
            Ok(d) => d,
            Err(e) => {
                self.release(node.uuid).await;
                return Err(e);
            }
        };
        let reached = match target {
            PowerState::On | PowerState::Rebooting | PowerState::SoftRebooting => PowerState::On,
            _ => PowerState::Off,
        };
        node.target_power_state = Some(reached);
        node.last_error = None;
        let node = match self.store().update_node(&node, self.hostname()).await {
            Ok(n) => n,
            Err(e) => {
                self.release(node.uuid).await;
                return Err(e.into());
            }
        };
        let conductor = self.clone();
        tokio::spawn(async move {
            conductor
                .run_power_action(node, driver, target, reached, timeout)
                .await
        });
        Ok(())
    }

    async fn run_power_action(
        &self,
        mut node: Node,
        driver: NodeDriver,
        target: PowerState,
        reached: PowerState,
        timeout: Option<Duration>,
    ) {
        let result = match target {
            PowerState::Rebooting => driver.power.reboot(&node, false, timeout).await,
            PowerState::SoftRebooting => driver.power.reboot(&node, true, timeout).await,
            other => driver.power.set_power_state(&node, other, timeout).await,
        };
        node.target_power_state = None;
        match result {
            Ok(()) if target != PowerState::On => {
                node.power_state = Some(reached);
                // Powered off or rebooted: the agent that ran is gone, and
                // its token and address with it (a token generated ahead
                // of time for a virtual media boot stays).
                agent::forget_agent_unless_pregenerated(&mut node);
            }
            Ok(()) => node.power_state = Some(reached),
            Err(e) => {
                tracing::warn!(node = %node.uuid, error = %e, "power action failed");
                node.last_error = Some(format!(
                    "Failed to change power state to '{target}' by '{target}'. Error: {e}"
                ));
            }
        }
        if let Err(e) = self.save_and_release(&node).await {
            tracing::error!(node = %node.uuid, error = %e, "could not save power state");
        }
    }

    // ---- recovery ----

    /// Releases the locks `hostname` held and moves the nodes it was
    /// working on to their failed states: the work cannot be resumed.
    pub(crate) async fn recover_from(
        &self,
        hostname: &str,
        why: &str,
    ) -> Result<(), ConductorError> {
        let query = ferric_store::NodeQuery {
            reservation: Some(hostname.to_string()),
            ..Default::default()
        };
        let locked = self.store().list_nodes(&query).await?;
        for mut node in locked {
            let mut changed = false;
            if node.provision_state.is_busy() {
                if let Some(failed) = ferric_state_machine::failed_state(
                    node.provision_state,
                    node.target_provision_state,
                ) {
                    let was = node.provision_state;
                    node.last_error = Some(format!(
                        "The conductor {hostname} {why} while the node was in state \"{was}\"; \
                         the operation cannot be resumed. Retry it."
                    ));
                    let target = node.target_provision_state;
                    node.set_provision_state(failed, target);
                    node.deploy_step.clear();
                    node.clean_step.clear();
                    node.service_step.clear();
                    changed = true;
                }
            }
            if node.target_power_state.is_some() {
                node.target_power_state = None;
                node.last_error.get_or_insert_with(|| {
                    format!("The conductor {hostname} {why} during a power action; the power state is unknown until the next sync.")
                });
                changed = true;
            }
            if changed {
                tracing::warn!(node = %node.uuid, state = %node.provision_state, "recovered node left by {hostname}");
                // Write as the dead holder, then release its lock.
                self.store()
                    .update_and_release_node(&node, hostname)
                    .await?;
            }
        }
        let released = self.store().release_all_locks(hostname).await?;
        if released > 0 {
            tracing::info!(released, "released locks held by {hostname}");
        }
        Ok(())
    }
}
