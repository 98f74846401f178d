//! Ironic's provision state machine as a pure function.
//!
//! `next(state, target, event)` says where a node goes and what work the
//! conductor must start; it touches no database and spawns nothing. The API
//! turns an operator's verb into `Event::Verb`, the conductor reports the end
//! of work with `Done`, `Fail`, `Wait`, `Resume` or `Hold`.

use ferric_types::ProvisionState;

/// The verbs of `PUT /v1/nodes/{node}/states/provision` (`target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Manage,
    Provide,
    Inspect,
    /// `active`, and its alias `deploy` (1.73).
    Active,
    Deploy,
    Rebuild,
    /// `deleted`, and its alias `undeploy` (1.73).
    Deleted,
    Undeploy,
    Clean,
    Abort,
    Adopt,
    Rescue,
    Unrescue,
    Unhold,
    Service,
}

/// What happens to a node: an operator's verb, or the outcome of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    Verb(Verb),
    /// The work of the current busy or wait state finished well.
    Done,
    /// The work failed (or timed out): go to the failed state.
    Fail,
    /// The work now waits for the ramdisk agent (busy -> wait state).
    Wait,
    /// The agent called back (wait state -> busy state).
    Resume,
    /// A step asked to hold the node (deploy/clean/service hold).
    Hold,
}

/// Work the conductor starts after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Only the state changes.
    None,
    /// Check that the driver can reach the BMC (enroll -> manageable).
    Verify,
    /// Run deploy steps (also for rebuild).
    Deploy,
    /// Tear the instance down, then clean.
    TearDown,
    /// Run clean steps: automated ones after `provide` or a tear down,
    /// the operator's `clean_steps` after `clean`.
    Clean,
    Inspect,
    Adopt,
    Rescue,
    Unrescue,
    Service,
    /// Stop what is running in a wait or hold state.
    Abort,
    /// Continue after a hold.
    Unhold,
}

/// The outcome of an accepted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub state: ProvisionState,
    /// The stable state the node is heading for; None at a stable state.
    pub target: Option<ProvisionState>,
    pub action: Action,
}

/// An event that the state machine does not allow in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the requested action \"{event}\" is not acceptable for a node in provision state \"{state}\""
)]
pub struct Refused {
    pub state: ProvisionState,
    pub event: &'static str,
}

impl Verb {
    /// Every verb.
    pub const ALL: &'static [Verb] = &[
        Verb::Manage,
        Verb::Provide,
        Verb::Inspect,
        Verb::Active,
        Verb::Deploy,
        Verb::Rebuild,
        Verb::Deleted,
        Verb::Undeploy,
        Verb::Clean,
        Verb::Abort,
        Verb::Adopt,
        Verb::Rescue,
        Verb::Unrescue,
        Verb::Unhold,
        Verb::Service,
    ];

    /// The verb's wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Manage => "manage",
            Verb::Provide => "provide",
            Verb::Inspect => "inspect",
            Verb::Active => "active",
            Verb::Deploy => "deploy",
            Verb::Rebuild => "rebuild",
            Verb::Deleted => "deleted",
            Verb::Undeploy => "undeploy",
            Verb::Clean => "clean",
            Verb::Abort => "abort",
            Verb::Adopt => "adopt",
            Verb::Rescue => "rescue",
            Verb::Unrescue => "unrescue",
            Verb::Unhold => "unhold",
            Verb::Service => "service",
        }
    }

    /// Parses a wire verb; None for an unknown one.
    pub fn from_wire(s: &str) -> Option<Verb> {
        Verb::ALL.iter().copied().find(|v| v.as_str() == s)
    }

    /// The first API microversion (minor) that accepts this verb.
    pub fn min_version(self) -> u32 {
        match self {
            Verb::Active | Verb::Deleted | Verb::Rebuild => 1,
            Verb::Manage | Verb::Provide => 4,
            Verb::Inspect => 6,
            Verb::Abort => 13,
            Verb::Clean => 15,
            Verb::Adopt => 17,
            Verb::Rescue | Verb::Unrescue => 38,
            Verb::Deploy | Verb::Undeploy => 73,
            Verb::Unhold => 85,
            Verb::Service => 87,
        }
    }

    /// The verb this one is an alias of (`deploy` -> `active`,
    /// `undeploy` -> `deleted`); itself otherwise.
    pub fn canonical(self) -> Verb {
        match self {
            Verb::Deploy => Verb::Active,
            Verb::Undeploy => Verb::Deleted,
            other => other,
        }
    }
}

impl Event {
    /// The event's name in error messages (`deploy`, `done`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Verb(v) => v.as_str(),
            Event::Done => "done",
            Event::Fail => "fail",
            Event::Wait => "wait",
            Event::Resume => "resume",
            Event::Hold => "hold",
        }
    }
}

impl Refused {
    /// Ironic's InvalidStateRequested text for a named node.
    pub fn message_for(&self, node: &str) -> String {
        format!(
            "The requested action \"{}\" can not be performed on node \"{node}\" while it is in state \"{}\".",
            self.event, self.state
        )
    }
}

/// The target of a state entered from `incoming` (the target the node had).
/// Cleaning keeps the target it started with: `available` after provide or
/// a tear down, `manageable` after a manual clean. Failed states keep their
/// target, as Ironic does; stable states have none.
fn target_of(state: ProvisionState, incoming: Option<ProvisionState>) -> Option<ProvisionState> {
    use ProvisionState::*;
    match state {
        Verifying | Inspecting | InspectWait | InspectFailed => Some(Manageable),
        Deploying | WaitCallBack | DeployFailed | DeployHold | Adopting | AdoptFailed
        | Unrescuing | UnrescueFailed | Servicing | ServiceWait | ServiceFailed | ServiceHold => {
            Some(Active)
        }
        Cleaning | CleanWait | CleanFailed | CleanHold => match incoming {
            Some(Manageable) => Some(Manageable),
            _ => Some(Available),
        },
        Deleting => Some(Available),
        Rescuing | RescueWait | RescueFailed => Some(Rescue),
        Enroll | Manageable | Available | Active | Error | Rescue => None,
    }
}

/// Ironic's transition table: the state an event leads to, and the work
/// that starts there. None: not allowed.
fn transition(
    state: ProvisionState,
    target: Option<ProvisionState>,
    event: Event,
) -> Option<(ProvisionState, Action)> {
    use Action as A;
    use Event::{Done, Fail, Hold, Resume, Wait};
    use ProvisionState::*;
    let verb = match event {
        Event::Verb(v) => Some(v.canonical()),
        _ => None,
    };
    Some(match (state, event, verb) {
        // enroll and verification
        (Enroll, _, Some(Verb::Manage)) => (Verifying, A::Verify),
        (Verifying, Done, _) => (Manageable, A::None),
        (Verifying, Fail, _) => (Enroll, A::None),

        // manageable
        (Manageable, _, Some(Verb::Provide)) => (Cleaning, A::Clean),
        (Manageable, _, Some(Verb::Clean)) => (Cleaning, A::Clean),
        (Manageable, _, Some(Verb::Inspect)) => (Inspecting, A::Inspect),
        (Manageable, _, Some(Verb::Adopt)) => (Adopting, A::Adopt),
        (Available, _, Some(Verb::Manage)) => (Manageable, A::None),

        // deploy
        (Available | DeployFailed, _, Some(Verb::Active)) => (Deploying, A::Deploy),
        (Active | DeployFailed | Error, _, Some(Verb::Rebuild)) => (Deploying, A::Deploy),
        (Deploying, Done, _) => (Active, A::None),
        (Deploying, Fail, _) => (DeployFailed, A::None),
        (Deploying, Wait, _) => (WaitCallBack, A::None),
        (Deploying | WaitCallBack, Hold, _) => (DeployHold, A::None),
        (WaitCallBack, Resume, _) => (Deploying, A::None),
        (WaitCallBack, Fail, _) => (DeployFailed, A::None),
        (WaitCallBack | DeployHold, _, Some(Verb::Abort)) => (DeployFailed, A::Abort),
        (DeployHold, _, Some(Verb::Unhold)) => (WaitCallBack, A::Unhold),

        // tear down
        (
            Active | WaitCallBack | DeployFailed | Error | Rescue | RescueFailed | RescueWait
            | UnrescueFailed | ServiceFailed | ServiceWait,
            _,
            Some(Verb::Deleted),
        ) => (Deleting, A::TearDown),
        (Deleting, Done, _) => (Cleaning, A::Clean),
        (Deleting, Fail, _) => (Error, A::None),

        // cleaning
        (Cleaning, Done, _) => match target {
            Some(Manageable) => (Manageable, A::None),
            _ => (Available, A::None),
        },
        (Cleaning, Fail, _) | (CleanWait, Fail, _) => (CleanFailed, A::None),
        (Cleaning, Wait, _) => (CleanWait, A::None),
        (Cleaning | CleanWait, Hold, _) => (CleanHold, A::None),
        (CleanWait, Resume, _) => (Cleaning, A::None),
        (CleanWait | CleanHold, _, Some(Verb::Abort)) => (CleanFailed, A::Abort),
        (CleanHold, _, Some(Verb::Unhold)) => (CleanWait, A::Unhold),
        (CleanFailed, _, Some(Verb::Manage)) => (Manageable, A::None),

        // inspection
        (Inspecting | InspectWait, Done, _) => (Manageable, A::None),
        (Inspecting | InspectWait, Fail, _) => (InspectFailed, A::None),
        (Inspecting, Wait, _) => (InspectWait, A::None),
        (InspectWait, Resume, _) => (Inspecting, A::None),
        (InspectWait, _, Some(Verb::Abort)) => (InspectFailed, A::Abort),
        (InspectFailed, _, Some(Verb::Manage)) => (Manageable, A::None),
        (InspectFailed, _, Some(Verb::Inspect)) => (Inspecting, A::Inspect),

        // adoption
        (Adopting, Done, _) => (Active, A::None),
        (Adopting, Fail, _) => (AdoptFailed, A::None),
        (AdoptFailed, _, Some(Verb::Adopt)) => (Adopting, A::Adopt),
        (AdoptFailed, _, Some(Verb::Manage)) => (Manageable, A::None),

        // rescue
        (
            Active | Rescue | RescueFailed | UnrescueFailed | ServiceFailed,
            _,
            Some(Verb::Rescue),
        ) => (Rescuing, A::Rescue),
        (Rescuing, Done, _) => (Rescue, A::None),
        (Rescuing, Wait, _) => (RescueWait, A::None),
        (Rescuing | RescueWait, Fail, _) => (RescueFailed, A::None),
        (RescueWait, Resume, _) => (Rescuing, A::None),
        (RescueWait, _, Some(Verb::Abort)) => (RescueFailed, A::Abort),
        (Rescue | RescueFailed | UnrescueFailed, _, Some(Verb::Unrescue)) => {
            (Unrescuing, A::Unrescue)
        }
        (Unrescuing, Done, _) => (Active, A::None),
        (Unrescuing, Fail, _) => (UnrescueFailed, A::None),

        // servicing
        (Active | ServiceHold | ServiceFailed, _, Some(Verb::Service)) => (Servicing, A::Service),
        (Servicing, Done, _) => (Active, A::None),
        (Servicing | ServiceWait | ServiceHold, Fail, _) => (ServiceFailed, A::None),
        (Servicing | ServiceFailed, Wait, _) => (ServiceWait, A::None),
        (Servicing | ServiceWait | ServiceFailed, Hold, _) => (ServiceHold, A::None),
        (ServiceWait, Resume, _) => (Servicing, A::None),
        (ServiceHold, _, Some(Verb::Unhold)) => (ServiceWait, A::Unhold),
        (ServiceWait | ServiceHold, _, Some(Verb::Abort)) => (ServiceFailed, A::Abort),
        (ServiceFailed, _, Some(Verb::Abort)) => (Active, A::Abort),

        _ => return None,
    })
}

/// Where `event` takes a node in `state` heading for `target`.
pub fn next(
    state: ProvisionState,
    target: Option<ProvisionState>,
    event: Event,
) -> Result<Transition, Refused> {
    let (to, action) = transition(state, target, event).ok_or(Refused {
        state,
        event: event.as_str(),
    })?;
    // Entering cleaning from manageable via `clean` heads back to manageable.
    let incoming = match (state, event) {
        (ProvisionState::Manageable, Event::Verb(Verb::Clean)) => Some(ProvisionState::Manageable),
        (ProvisionState::Manageable, Event::Verb(Verb::Provide))
        | (ProvisionState::Deleting, _) => Some(ProvisionState::Available),
        _ => target,
    };
    Ok(Transition {
        state: to,
        target: target_of(to, incoming),
        action,
    })
}

/// The failed state a busy or wait state falls into on failure or timeout
/// (used at start-up for nodes a crashed conductor left behind).
pub fn failed_state(
    state: ProvisionState,
    target: Option<ProvisionState>,
) -> Option<ProvisionState> {
    if !(state.is_busy() || state.is_waiting()) {
        return None;
    }
    next(state, target, Event::Fail).ok().map(|t| t.state)
}
