//! Provision verbs and the background work they start.

use crate::steps::{
    is_reserved, manual_steps_allowing, merge_steps, merge_steps_allowing, replan, with_agent_steps,
};
use crate::{Conductor, ConductorError};
use ferric_drivers::{AgentStepState, DriverError, NodeDriver, StepKind, StepOutcome};
use ferric_state_machine::{next, Action, Event, Verb};
use ferric_store::{NodeIdent, PortQuery};
use ferric_types::{Node, PowerState, ProvisionState, Step, StepInterface};
use serde_json::{Map, Value};

/// A `PUT /v1/nodes/{node}/states/provision` request, checked for shape by
/// the API.
#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    pub verb: Verb,
    /// A config drive: gzip+base64 string, URL, or Ironic's dict form.
    pub configdrive: Option<Value>,
    pub clean_steps: Option<Vec<Step>>,
    pub deploy_steps: Option<Vec<Step>>,
    pub service_steps: Option<Vec<Step>>,
    pub disable_ramdisk: Option<bool>,
    pub rescue_password: Option<String>,
}

impl ProvisionRequest {
    pub fn new(verb: Verb) -> Self {
        ProvisionRequest {
            verb,
            configdrive: None,
            clean_steps: None,
            deploy_steps: None,
            service_steps: None,
            disable_ramdisk: None,
            rescue_password: None,
        }
    }
}

/// How a phase of work ended.
enum Outcome {
    Done,
    Wait,
    Hold,
    /// Leave the wait state and go on with the remaining steps.
    Resume,
    Failed(String),
}

/// What the background task does next.
enum Work {
    Action(Action),
    /// Continue the stored steps of this kind (after a resume).
    Continue(StepKind),
    /// Something outside the task decided the outcome (an agent's heartbeat).
    Decided(Outcome),
}

const STEP_LIST_KEY: &str = "steps";
const STEP_INDEX_KEY: &str = "step_index";
/// The operator's steps of an automated run, kept to merge them again with
/// the agent's steps.
const STEP_REQUESTED_KEY: &str = "steps_requested";

/// Where the steps an agent offered are kept for the operation (Ironic's
/// `agent_cached_clean_steps`, ...).
fn agent_steps_key(kind: StepKind) -> String {
    format!("agent_cached_{}_steps", kind.as_str())
}

/// Steps of the deploy interface may name agent steps not known before the
/// agent is up; they are checked when it tells its steps.
fn agent_may_offer(driver: &NodeDriver) -> Option<StepInterface> {
    driver
        .deploy
        .agent_deploy_steps()
        .then_some(StepInterface::Deploy)
}

/// Checks that the in-band deploy steps among `steps` (those the interface
/// does not run itself) have a priority the interface leaves them
/// (custom-agent: 61 to 99, while the agent is up).
fn check_in_band_priorities(driver: &NodeDriver, steps: &[Step]) -> Result<(), String> {
    let Some(window) = driver.deploy.in_band_priorities() else {
        return Ok(());
    };
    let own = driver.deploy.steps(StepKind::Deploy);
    for step in steps {
        let priority = step.priority.unwrap_or(0);
        let in_band = step.interface == StepInterface::Deploy
            && !is_reserved(step)
            && !own.iter().any(|d| d.step == step.step);
        if in_band && priority > 0 && !window.contains(&priority) {
            return Err(format!(
                "deploy step \"{}\" runs in the agent, which is up only between the deploy \
                 (100) and prepare_instance_boot (60) steps: give it a priority from {} to {} \
                 (it has {priority})",
                step.step,
                window.start(),
                window.end()
            ));
        }
    }
    Ok(())
}

fn internal_key(kind: StepKind, what: &str) -> String {
    format!("{}_{what}", kind.as_str())
}

fn step_field(node: &mut Node, kind: StepKind) -> &mut Map<String, Value> {
    match kind {
        StepKind::Deploy => &mut node.deploy_step,
        StepKind::Clean => &mut node.clean_step,
        StepKind::Service => &mut node.service_step,
    }
}

pub(crate) fn clear_step_state(node: &mut Node) {
    // An operation's agent token and callback are good for that operation only.
    crate::agent::forget_agent(node);
    for kind in [StepKind::Deploy, StepKind::Clean, StepKind::Service] {
        step_field(node, kind).clear();
        node.driver_internal_info
            .remove(&internal_key(kind, STEP_LIST_KEY));
        node.driver_internal_info
            .remove(&internal_key(kind, STEP_INDEX_KEY));
        node.driver_internal_info
            .remove(&internal_key(kind, STEP_REQUESTED_KEY));
        node.driver_internal_info.remove(&agent_steps_key(kind));
    }
}

fn is_maintenance_blocked(verb: Verb) -> bool {
    !matches!(verb, Verb::Manage | Verb::Abort | Verb::Adopt)
}

impl Conductor {
    /// Accepts a provision verb: checks it against the node's state and
    /// settings, records the new state, and starts the work in the
    /// background. Returns when the new state is stored.
    pub async fn provision(
        &self,
        ident: &NodeIdent,
        request: ProvisionRequest,
    ) -> Result<(), ConductorError> {
        let mut node = self.store().reserve_node(ident, self.hostname()).await?;
        let prepared = self.prepare_provision(&mut node, &request);
        let (action, driver) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.release(node.uuid).await;
                return Err(e);
            }
        };
        // A transition without work (e.g. available -> manageable) or an
        // abort ends here; everything else goes on in the background.
        if matches!(action, Action::None | Action::Abort) {
            if action == Action::Abort {
                self.abort(&mut node);
            }
            self.save_and_release(&node).await?;
            return Ok(());
        }
        let node = match self.store().update_node(&node, self.hostname()).await {
            Ok(n) => n,
            Err(e) => {
                self.release(node.uuid).await;
                return Err(e.into());
            }
        };
        let conductor = self.clone();
        tokio::spawn(async move { conductor.run(node, driver, Work::Action(action)).await });
        Ok(())
    }

    /// Checks the request and applies its transition to `node` (not saved).
    fn prepare_provision(
        &self,
        node: &mut Node,
        request: &ProvisionRequest,
    ) -> Result<(Action, NodeDriver), ConductorError> {
        let verb = request.verb;
        if node.maintenance && is_maintenance_blocked(verb) {
            return Err(ConductorError::InvalidParameter(format!(
                "The {} operation can't be performed on node {} because it's in maintenance mode.",
                verb.as_str(),
                node.uuid
            )));
        }
        if node.protected && matches!(verb, Verb::Deleted | Verb::Undeploy | Verb::Rebuild) {
            return Err(ConductorError::Forbidden(format!(
                "Node {} is protected and cannot be undeployed, rebuilt or deleted",
                node.uuid
            )));
        }
        if node.retired && matches!(verb, Verb::Provide) {
            return Err(ConductorError::InvalidParameter(format!(
                "The provide operation can't be performed on node {} because it is retired.",
                node.uuid
            )));
        }
        let transition = next(
            node.provision_state,
            node.target_provision_state,
            Event::Verb(verb),
        )
        .map_err(|refused| {
            ConductorError::InvalidState(refused.message_for(&node.uuid.to_string()))
        })?;
        let driver = self.driver_for(node)?;
        let invalid = |e: DriverError| ConductorError::InvalidParameter(e.to_string());

        match transition.action {
            Action::Deploy => {
                // The config drive first: the deploy interface validates it
                // (nothing is saved when validation fails).
                match &request.configdrive {
                    Some(cd) if !is_empty_configdrive(cd) => {
                        node.instance_info.insert("configdrive".into(), cd.clone());
                    }
                    _ => {
                        node.instance_info.remove("configdrive");
                    }
                }
                driver.power.validate(node).map_err(invalid)?;
                driver.deploy.validate(node).map_err(invalid)?;
                driver.boot.validate(node).map_err(invalid)?;
                let requested = request.deploy_steps.clone().unwrap_or_default();
                let steps = merge_steps_allowing(
                    "deploy",
                    &driver.deploy.steps(StepKind::Deploy),
                    &requested,
                    agent_may_offer(&driver),
                )
                .map_err(ConductorError::InvalidParameter)?;
                check_in_band_priorities(&driver, &steps)
                    .map_err(ConductorError::InvalidParameter)?;
                clear_step_state(node);
                store_steps(node, StepKind::Deploy, &steps);
                if !requested.is_empty() {
                    node.driver_internal_info.insert(
                        internal_key(StepKind::Deploy, STEP_REQUESTED_KEY),
                        serde_json::to_value(&requested).unwrap_or(Value::Null),
                    );
                }
            }
            Action::Clean if transition.target == Some(ProvisionState::Manageable) => {
                let requested = request.clean_steps.clone().ok_or_else(|| {
                    ConductorError::InvalidParameter(
                        "clean_steps is required for manual cleaning".to_string(),
                    )
                })?;
                let steps = manual_steps_allowing(
                    "clean",
                    &driver.deploy.steps(StepKind::Clean),
                    &requested,
                    agent_may_offer(&driver),
                )
                .map_err(ConductorError::InvalidParameter)?;
                clear_step_state(node);
                store_steps(node, StepKind::Clean, &steps);
            }
            Action::Clean => {
                // Automated cleaning: the steps are chosen when it starts.
                clear_step_state(node);
            }
            Action::Service => {
                let requested = request.service_steps.clone().ok_or_else(|| {
                    ConductorError::InvalidParameter(
                        "service_steps is required for servicing".to_string(),
                    )
                })?;
                // No agent service steps yet: unknown ones are refused now.
                let steps = manual_steps_allowing(
                    "service",
                    &driver.deploy.steps(StepKind::Service),
                    &requested,
                    None,
                )
                .map_err(ConductorError::InvalidParameter)?;
                clear_step_state(node);
                store_steps(node, StepKind::Service, &steps);
            }
            Action::Inspect if driver.inspect.is_none() => {
                return Err(ConductorError::InvalidParameter(format!(
                    "Node {} does not support inspection: its inspect interface is \"{}\"",
                    node.uuid,
                    node.inspect_interface.as_deref().unwrap_or("none")
                )));
            }
            Action::Rescue => {
                if node.rescue_interface.as_deref().unwrap_or("no-rescue") == "no-rescue" {
                    return Err(ConductorError::InvalidParameter(format!(
                        "Node {} does not support rescue: its rescue interface is \"no-rescue\"",
                        node.uuid
                    )));
                }
                let password = request.rescue_password.clone().ok_or_else(|| {
                    ConductorError::InvalidParameter(
                        "A non-empty rescue_password is required for rescue".to_string(),
                    )
                })?;
                node.instance_info
                    .insert("rescue_password".into(), Value::String(password));
            }
            Action::Adopt => {
                driver.power.validate(node).map_err(invalid)?;
                driver.deploy.validate(node).map_err(invalid)?;
            }
            _ => {}
        }
        if request.configdrive.is_some() && transition.action != Action::Deploy {
            return Err(ConductorError::InvalidParameter(
                "Adding a config drive is only supported when setting provision state to \
                 active, deploy or rebuild"
                    .to_string(),
            ));
        }
        node.set_provision_state(transition.state, transition.target);
        node.last_error = None;
        Ok((transition.action, driver))
    }

    /// Stops what waits or is held, moving the node to its failed state.
    fn abort(&self, node: &mut Node) {
        let step = [StepKind::Deploy, StepKind::Clean, StepKind::Service]
            .into_iter()
            .find_map(|k| {
                step_field(node, k)
                    .get("step")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        node.last_error = Some(match step {
            Some(step) => format!("Operation aborted by the operator during step \"{step}\""),
            None => "Operation aborted by the operator".to_string(),
        });
        clear_step_state(node);
    }

    /// Runs `action` and every action that follows from its outcome, then
    /// saves the node and releases its lock.
    async fn run(&self, mut node: Node, mut driver: NodeDriver, first: Work) {
        let ports = PortQuery {
            node_uuid: Some(node.uuid),
            ..Default::default()
        };
        match self.store().list_ports(&ports).await {
            Ok(ports) => driver.ports = ports,
            Err(e) => {
                tracing::warn!(node = %node.uuid, error = %e, "could not list the node's ports")
            }
        }
        let mut work = first;
        loop {
            let outcome = match work {
                Work::Action(action) => self.perform(&mut node, &driver, action).await,
                Work::Continue(kind) => self.steps_phase(&mut node, &driver, kind).await,
                Work::Decided(outcome) => outcome,
            };
            let event = match &outcome {
                Outcome::Done => Event::Done,
                Outcome::Wait => Event::Wait,
                Outcome::Hold => Event::Hold,
                Outcome::Resume => Event::Resume,
                Outcome::Failed(_) => Event::Fail,
            };
            let transition = match next(node.provision_state, node.target_provision_state, event) {
                Ok(t) => t,
                Err(refused) => {
                    tracing::error!(node = %node.uuid, %refused, "work ended in an impossible transition");
                    node.last_error = Some(format!("internal error: {refused}"));
                    break;
                }
            };
            if let Outcome::Failed(message) = outcome {
                self.on_failure(&mut node, &driver, message).await;
            }
            node.set_provision_state(transition.state, transition.target);
            if node.provision_state.is_stable() {
                // The operation is over: its agent token and callback too.
                crate::agent::forget_agent(&mut node);
            }
            tracing::info!(node = %node.uuid, state = %node.provision_state, "provision state changed");
            work = match (event, transition.action) {
                (Event::Resume, _) => Work::Continue(step_kind_of(node.provision_state)),
                (_, Action::None) => break,
                (_, next_action) => Work::Action(next_action),
            };
            if let Err(e) = self.checkpoint(&node).await {
                tracing::error!(node = %node.uuid, error = %e, "could not save node");
                return;
            }
        }
        if let Err(e) = self.save_and_release(&node).await {
            tracing::error!(node = %node.uuid, error = %e, "could not save node");
        }
    }

    /// Saves the node while keeping its lock.
    async fn checkpoint(&self, node: &Node) -> Result<(), ConductorError> {
        self.store().update_node(node, self.hostname()).await?;
        Ok(())
    }

    async fn on_failure(&self, node: &mut Node, driver: &NodeDriver, message: String) {
        tracing::warn!(node = %node.uuid, state = %node.provision_state, error = %message, "operation failed");
        let state = node.provision_state;
        node.last_error = Some(message.clone());
        clear_step_state(node);
        match state {
            ProvisionState::Deploying | ProvisionState::WaitCallBack => {
                self.power_off_quietly(node, driver).await;
            }
            ProvisionState::Cleaning | ProvisionState::CleanWait => {
                node.maintenance = true;
                node.fault = Some("clean failure".to_string());
                node.maintenance_reason = Some(message);
            }
            _ => {}
        }
    }

    /// Powers a node off after a failure; a failure to do so is logged and
    /// added to nothing (the first error is the one the operator needs).
    pub(crate) async fn power_off_quietly(&self, node: &mut Node, driver: &NodeDriver) {
        if node.disable_power_off {
            return;
        }
        match driver
            .power
            .set_power_state(node, PowerState::Off, None)
            .await
        {
            Ok(()) => node.power_state = Some(PowerState::Off),
            Err(e) => tracing::warn!(node = %node.uuid, error = %e, "could not power off"),
        }
    }

    async fn perform(&self, node: &mut Node, driver: &NodeDriver, action: Action) -> Outcome {
        let result: Result<Outcome, DriverError> = async {
            match action {
                Action::None | Action::Abort => Ok(Outcome::Done),
                Action::Verify => {
                    driver.power.validate(node)?;
                    driver.management.validate(node)?;
                    node.power_state = Some(driver.power.get_power_state(node).await?);
                    Ok(Outcome::Done)
                }
                Action::Deploy => {
                    if driver.deploy.needs_deploy_ramdisk() {
                        driver
                            .boot
                            .prepare_ramdisk(node, driver.boot_context())
                            .await?;
                    }
                    Ok(self.steps_phase(node, driver, StepKind::Deploy).await)
                }
                Action::TearDown => {
                    driver.deploy.tear_down(node).await?;
                    driver
                        .boot
                        .clean_up_instance(node, driver.boot_context())
                        .await?;
                    if !node.disable_power_off {
                        driver
                            .power
                            .set_power_state(node, PowerState::Off, None)
                            .await?;
                        node.power_state = Some(PowerState::Off);
                    }
                    node.instance_info.clear();
                    node.instance_uuid = None;
                    Ok(Outcome::Done)
                }
                Action::Clean => {
                    let automated = node.target_provision_state != Some(ProvisionState::Manageable);
                    if automated {
                        let enabled = node
                            .automated_clean
                            .unwrap_or(self.config().automated_clean);
                        let steps = if enabled {
                            merge_steps("clean", &driver.deploy.steps(StepKind::Clean), &[])
                                .map_err(DriverError::InvalidParameter)?
                        } else {
                            Vec::new()
                        };
                        store_steps(node, StepKind::Clean, &steps);
                    }
                    Ok(self.steps_phase(node, driver, StepKind::Clean).await)
                }
                Action::Service => Ok(self.steps_phase(node, driver, StepKind::Service).await),
                Action::Inspect => {
                    let inspect = driver.inspect.as_ref().ok_or_else(|| {
                        DriverError::Unsupported("inspection is not supported".into())
                    })?;
                    node.inspection_started_at = Some(ferric_types::Timestamp::now());
                    let outcome = inspect.inspect(node).await?;
                    if outcome == StepOutcome::Done {
                        node.inspection_finished_at = Some(ferric_types::Timestamp::now());
                    }
                    Ok(step_outcome(outcome))
                }
                Action::Adopt => {
                    node.power_state = Some(driver.power.get_power_state(node).await?);
                    Ok(Outcome::Done)
                }
                Action::Rescue => {
                    driver
                        .boot
                        .prepare_ramdisk(node, driver.boot_context())
                        .await?;
                    Ok(Outcome::Done)
                }
                Action::Unrescue => {
                    node.instance_info.remove("rescue_password");
                    driver
                        .boot
                        .clean_up_ramdisk(node, driver.boot_context())
                        .await?;
                    driver
                        .boot
                        .prepare_instance(node, driver.boot_context())
                        .await?;
                    Ok(Outcome::Done)
                }
                Action::Unhold => {
                    // The node is back in its wait state. Fake hardware has no
                    // agent to call back, so the remaining steps go on now.
                    advance_step_index(node, step_kind_of(node.provision_state));
                    Ok(Outcome::Resume)
                }
            }
        }
        .await;
        match result {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// Runs the remaining steps of `kind`; after the last deploy step the
    /// node is set to boot its instance and powered on.
    async fn steps_phase(&self, node: &mut Node, driver: &NodeDriver, kind: StepKind) -> Outcome {
        let result = async {
            let outcome = self.run_steps(node, driver, kind).await?;
            if let (Outcome::Done, StepKind::Deploy, false) =
                (&outcome, kind, driver.deploy.boots_instance())
            {
                driver
                    .boot
                    .clean_up_ramdisk(node, driver.boot_context())
                    .await?;
                driver
                    .boot
                    .prepare_instance(node, driver.boot_context())
                    .await?;
                driver.power.reboot(node, false, None).await?;
                node.power_state = Some(PowerState::On);
            }
            if let (Outcome::Done, StepKind::Clean, true) =
                (&outcome, kind, driver.deploy.uses_agent())
            {
                // Cleaning ran in the ramdisk: leave the node off, ramdisk gone.
                driver
                    .boot
                    .clean_up_ramdisk(node, driver.boot_context())
                    .await?;
                if !node.disable_power_off {
                    driver
                        .power
                        .set_power_state(node, PowerState::Off, None)
                        .await?;
                    node.power_state = Some(PowerState::Off);
                }
            }
            Ok::<_, DriverError>(outcome)
        }
        .await;
        result.unwrap_or_else(|e| Outcome::Failed(e.to_string()))
    }

    /// Runs the stored steps of `kind` from the stored index on. The node
    /// records the step it is at, so `node show` tells the operator.
    async fn run_steps(
        &self,
        node: &mut Node,
        driver: &NodeDriver,
        kind: StepKind,
    ) -> Result<Outcome, DriverError> {
        let steps = stored_steps(node, kind, STEP_LIST_KEY).map_err(DriverError::Failed)?;
        let start = stored_index(node, kind);
        for (index, step) in steps.iter().enumerate().skip(start) {
            node.driver_internal_info
                .insert(internal_key(kind, STEP_INDEX_KEY), Value::from(index));
            let current = match serde_json::to_value(step) {
                Ok(Value::Object(map)) => map,
                _ => Map::new(),
            };
            *step_field(node, kind) = current;
            if let Err(e) = self.checkpoint(node).await {
                return Err(DriverError::Failed(format!(
                    "could not record step progress: {e}"
                )));
            }
            let outcome = if is_reserved(step) {
                self.reserved_step(node, driver, step).await
            } else {
                match step.interface {
                    StepInterface::Deploy => {
                        let context = driver.step_context();
                        driver.deploy.execute_step(node, kind, step, context).await
                    }
                    other => Err(DriverError::Unsupported(format!(
                        "no implementation runs steps of interface {other:?}"
                    ))),
                }
            }
            .map_err(|e| {
                DriverError::Failed(format!(
                    "{} step \"{}\" failed: {e}",
                    kind.as_str(),
                    step.step
                ))
            })?;
            match outcome {
                StepOutcome::Done => continue,
                other => return Ok(step_outcome(other)),
            }
        }
        step_field(node, kind).clear();
        node.driver_internal_info
            .remove(&internal_key(kind, STEP_LIST_KEY));
        node.driver_internal_info
            .remove(&internal_key(kind, STEP_INDEX_KEY));
        Ok(Outcome::Done)
    }
}

impl Conductor {
    /// The steps Ironic's conductor runs itself: power actions, `hold`, and
    /// `wait` (for the agent, or for `args.seconds`, at most 30 s).
    async fn reserved_step(
        &self,
        node: &mut Node,
        driver: &NodeDriver,
        step: &Step,
    ) -> Result<StepOutcome, DriverError> {
        match step.step.as_str() {
            "power_on" => {
                driver
                    .power
                    .set_power_state(node, PowerState::On, None)
                    .await?;
                node.power_state = Some(PowerState::On);
            }
            "power_off" if !node.disable_power_off => {
                driver
                    .power
                    .set_power_state(node, PowerState::Off, None)
                    .await?;
                node.power_state = Some(PowerState::Off);
            }
            "reboot" => {
                driver.power.reboot(node, false, None).await?;
                node.power_state = Some(PowerState::On);
            }
            "hold" => return Ok(StepOutcome::Hold),
            "wait" => match step.args.get("seconds").and_then(Value::as_u64) {
                Some(secs) => {
                    tokio::time::sleep(std::time::Duration::from_secs(secs.min(30))).await
                }
                None => return Ok(StepOutcome::Wait),
            },
            _ => {}
        }
        Ok(StepOutcome::Done)
    }
}

/// The kind of steps a wait or busy state runs.
fn step_kind_of(state: ProvisionState) -> StepKind {
    match state {
        ProvisionState::Cleaning | ProvisionState::CleanWait | ProvisionState::CleanHold => {
            StepKind::Clean
        }
        ProvisionState::Servicing | ProvisionState::ServiceWait | ProvisionState::ServiceHold => {
            StepKind::Service
        }
        _ => StepKind::Deploy,
    }
}

fn step_outcome(outcome: StepOutcome) -> Outcome {
    match outcome {
        StepOutcome::Done => Outcome::Done,
        StepOutcome::Wait => Outcome::Wait,
        StepOutcome::Hold => Outcome::Hold,
    }
}

fn store_steps(node: &mut Node, kind: StepKind, steps: &[Step]) {
    node.driver_internal_info.insert(
        internal_key(kind, STEP_LIST_KEY),
        serde_json::to_value(steps).unwrap_or(Value::Array(Vec::new())),
    );
    node.driver_internal_info
        .insert(internal_key(kind, STEP_INDEX_KEY), Value::from(0));
}

/// A step list kept in driver_internal_info under `what` (none: empty).
fn stored_steps(node: &Node, kind: StepKind, what: &str) -> Result<Vec<Step>, String> {
    node.driver_internal_info
        .get(&internal_key(kind, what))
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("stored {} steps are corrupt: {e}", kind.as_str()))
        .map(Option::unwrap_or_default)
}

/// The index of the step of `kind` the node is at.
fn stored_index(node: &Node, kind: StepKind) -> usize {
    node.driver_internal_info
        .get(&internal_key(kind, STEP_INDEX_KEY))
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize
}

fn advance_step_index(node: &mut Node, kind: StepKind) {
    let next = stored_index(node, kind) + 1;
    node.driver_internal_info
        .insert(internal_key(kind, STEP_INDEX_KEY), Value::from(next));
}

impl Conductor {
    /// After an agent's heartbeat on a node waiting for it: asks the deploy
    /// interface how the agent's step went, then goes on with the steps,
    /// fails the node, or (still running) records the progress. A node
    /// that is locked is left alone: the next heartbeat tries again.
    pub(crate) async fn continue_after_heartbeat(&self, uuid: uuid::Uuid) {
        let Ok(mut node) = self
            .store()
            .reserve_node(&NodeIdent::Uuid(uuid), self.hostname())
            .await
        else {
            return;
        };
        let kind = match node.provision_state {
            ProvisionState::WaitCallBack => StepKind::Deploy,
            ProvisionState::CleanWait => StepKind::Clean,
            _ => {
                self.release(uuid).await;
                return;
            }
        };
        if !node
            .driver_internal_info
            .contains_key(crate::agent::AGENT_TOKEN_KEY)
        {
            // Spawned by a heartbeat of an operation that has since ended:
            // this one's agent has not looked up yet.
            self.release(uuid).await;
            return;
        }
        let driver = match self.driver_for(&node) {
            Ok(d) if d.deploy.uses_agent() => d,
            _ => {
                self.release(uuid).await;
                return;
            }
        };
        let decided = match driver.deploy.check_agent_step(&mut node, kind).await {
            Ok(AgentStepState::Running) => {
                if let Err(e) = self.save_and_release(&node).await {
                    tracing::error!(node = %uuid, error = %e, "could not record the agent's progress");
                }
                return;
            }
            Ok(AgentStepState::Finished) => {
                advance_step_index(&mut node, kind);
                Outcome::Resume
            }
            Ok(AgentStepState::AgentReady) => Outcome::Resume,
            Ok(AgentStepState::Failed(message)) => Outcome::Failed(message),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        let decided = match decided {
            Outcome::Resume => match self.add_agent_steps(&mut node, &driver, kind).await {
                Ok(()) => Outcome::Resume,
                Err(message) => Outcome::Failed(message),
            },
            other => other,
        };
        tracing::info!(node = %uuid, "the agent called back; going on");
        let conductor = self.clone();
        tokio::spawn(async move { conductor.run(node, driver, Work::Decided(decided)).await });
    }
}

impl Conductor {
    /// The first time the agent of an operation calls back: asks it for its
    /// steps and chooses the steps still to run again, with the agent's
    /// among them (a manual run: checks the operator's steps exist).
    async fn add_agent_steps(
        &self,
        node: &mut Node,
        driver: &NodeDriver,
        kind: StepKind,
    ) -> Result<(), String> {
        if node
            .driver_internal_info
            .contains_key(&agent_steps_key(kind))
        {
            return Ok(());
        }
        let mut agent = match driver.deploy.agent_steps(node, kind).await {
            Ok(Some(steps)) => steps,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(format!(
                    "could not get the agent's {} steps: {e}",
                    kind.as_str()
                ))
            }
        };
        let stored = stored_steps(node, kind, STEP_LIST_KEY)?;
        let requested = stored_steps(node, kind, STEP_REQUESTED_KEY)?;
        if let (StepKind::Deploy, Some(window)) = (kind, driver.deploy.in_band_priorities()) {
            // A step the agent offers at a priority the interface leaves it
            // no room for (custom-agent: outside 61-99) is not run unless
            // the operator asks for it (at a priority that fits).
            for step in agent.iter_mut() {
                let asked = requested.iter().any(|r| r.step == step.step);
                if step.priority > 0 && !window.contains(&step.priority) && !asked {
                    tracing::warn!(node = %node.uuid, step = %step.step, priority = step.priority,
                        "the agent offers a deploy step outside the priorities {}-{}: not run",
                        window.start(), window.end());
                    step.priority = 0;
                }
            }
        }
        node.driver_internal_info.insert(
            agent_steps_key(kind),
            serde_json::to_value(&agent).unwrap_or(Value::Null),
        );
        let done = stored_index(node, kind);
        let manual = match kind {
            StepKind::Deploy => false,
            StepKind::Clean => node.target_provision_state == Some(ProvisionState::Manageable),
            StepKind::Service => true,
        };
        let offered = with_agent_steps(&driver.deploy.steps(kind), &agent);
        let steps = replan(kind.as_str(), &offered, &stored, done, &requested, manual)?;
        if kind == StepKind::Deploy {
            check_in_band_priorities(driver, &steps[done.min(steps.len())..])?;
        }
        node.driver_internal_info.insert(
            internal_key(kind, STEP_LIST_KEY),
            serde_json::to_value(&steps).unwrap_or(Value::Array(Vec::new())),
        );
        tracing::info!(node = %node.uuid, kind = kind.as_str(), steps = steps.len(), "steps chosen again with the agent's");
        Ok(())
    }
}

/// Ironic treats `{}` (and an empty string) as "no config drive".
fn is_empty_configdrive(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}
