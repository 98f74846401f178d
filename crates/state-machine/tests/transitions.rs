//! Every (state, event) pair against Ironic's transition list, written out
//! here as data: each allowed one leads exactly where Ironic's does, and
//! every other pair is refused.

use ferric_state_machine::{failed_state, next, Action, Event, Verb};
use ferric_types::ProvisionState::{self, *};

const OUTCOMES: &[Event] = &[
    Event::Done,
    Event::Fail,
    Event::Wait,
    Event::Resume,
    Event::Hold,
];

/// (from, event, to, action) as in Ironic's state_machine.py, with the
/// API verbs (`active` for Ironic's `deploy` event, `deleted` for `delete`).
/// Ironic's internal events `clean` (deleting -> cleaning) and `manage`
/// from cleaning (the end of a manual clean) are Ferric's `Done` from
/// deleting and from cleaning heading for manageable.
fn ironic_table() -> Vec<(ProvisionState, Event, ProvisionState, Action)> {
    use Action as A;
    let v = Event::Verb;
    vec![
        (Enroll, v(Verb::Manage), Verifying, A::Verify),
        (Verifying, Event::Done, Manageable, A::None),
        (Verifying, Event::Fail, Enroll, A::None),
        (Manageable, v(Verb::Provide), Cleaning, A::Clean),
        (Manageable, v(Verb::Clean), Cleaning, A::Clean),
        (Manageable, v(Verb::Inspect), Inspecting, A::Inspect),
        (Manageable, v(Verb::Adopt), Adopting, A::Adopt),
        (Available, v(Verb::Manage), Manageable, A::None),
        (Available, v(Verb::Active), Deploying, A::Deploy),
        (DeployFailed, v(Verb::Active), Deploying, A::Deploy),
        (DeployFailed, v(Verb::Rebuild), Deploying, A::Deploy),
        (Active, v(Verb::Rebuild), Deploying, A::Deploy),
        (Error, v(Verb::Rebuild), Deploying, A::Deploy),
        (Deploying, Event::Done, Active, A::None),
        (Deploying, Event::Fail, DeployFailed, A::None),
        (Deploying, Event::Wait, WaitCallBack, A::None),
        (Deploying, Event::Hold, DeployHold, A::None),
        (WaitCallBack, Event::Hold, DeployHold, A::None),
        (WaitCallBack, Event::Resume, Deploying, A::None),
        (WaitCallBack, Event::Fail, DeployFailed, A::None),
        (WaitCallBack, v(Verb::Abort), DeployFailed, A::Abort),
        (DeployHold, v(Verb::Unhold), WaitCallBack, A::Unhold),
        (DeployHold, v(Verb::Abort), DeployFailed, A::Abort),
        (Active, v(Verb::Deleted), Deleting, A::TearDown),
        (WaitCallBack, v(Verb::Deleted), Deleting, A::TearDown),
        (DeployFailed, v(Verb::Deleted), Deleting, A::TearDown),
        (Error, v(Verb::Deleted), Deleting, A::TearDown),
        (Deleting, Event::Fail, Error, A::None),
        (Deleting, Event::Done, Cleaning, A::Clean),
        (Cleaning, Event::Done, Available, A::None),
        (Cleaning, Event::Fail, CleanFailed, A::None),
        (CleanWait, Event::Fail, CleanFailed, A::None),
        (CleanWait, v(Verb::Abort), CleanFailed, A::Abort),
        (Cleaning, Event::Wait, CleanWait, A::None),
        (Cleaning, Event::Hold, CleanHold, A::None),
        (CleanWait, Event::Hold, CleanHold, A::None),
        (CleanWait, Event::Resume, Cleaning, A::None),
        (CleanHold, v(Verb::Abort), CleanFailed, A::Abort),
        (CleanHold, v(Verb::Unhold), CleanWait, A::Unhold),
        (CleanFailed, v(Verb::Manage), Manageable, A::None),
        (Inspecting, Event::Done, Manageable, A::None),
        (Inspecting, Event::Fail, InspectFailed, A::None),
        (Inspecting, Event::Wait, InspectWait, A::None),
        (InspectWait, Event::Done, Manageable, A::None),
        (InspectWait, Event::Fail, InspectFailed, A::None),
        (InspectWait, v(Verb::Abort), InspectFailed, A::Abort),
        (InspectWait, Event::Resume, Inspecting, A::None),
        (InspectFailed, v(Verb::Manage), Manageable, A::None),
        (InspectFailed, v(Verb::Inspect), Inspecting, A::Inspect),
        (Active, v(Verb::Rescue), Rescuing, A::Rescue),
        (Rescuing, Event::Done, Rescue, A::None),
        (Rescuing, Event::Wait, RescueWait, A::None),
        (RescueWait, Event::Resume, Rescuing, A::None),
        (Rescue, v(Verb::Rescue), Rescuing, A::Rescue),
        (Rescue, v(Verb::Deleted), Deleting, A::TearDown),
        (RescueWait, Event::Fail, RescueFailed, A::None),
        (Rescuing, Event::Fail, RescueFailed, A::None),
        (RescueWait, v(Verb::Abort), RescueFailed, A::Abort),
        (RescueFailed, v(Verb::Rescue), Rescuing, A::Rescue),
        (RescueFailed, v(Verb::Unrescue), Unrescuing, A::Unrescue),
        (RescueFailed, v(Verb::Deleted), Deleting, A::TearDown),
        (RescueWait, v(Verb::Deleted), Deleting, A::TearDown),
        (Rescue, v(Verb::Unrescue), Unrescuing, A::Unrescue),
        (Unrescuing, Event::Done, Active, A::None),
        (Unrescuing, Event::Fail, UnrescueFailed, A::None),
        (UnrescueFailed, v(Verb::Rescue), Rescuing, A::Rescue),
        (UnrescueFailed, v(Verb::Unrescue), Unrescuing, A::Unrescue),
        (UnrescueFailed, v(Verb::Deleted), Deleting, A::TearDown),
        (Adopting, Event::Done, Active, A::None),
        (Adopting, Event::Fail, AdoptFailed, A::None),
        (AdoptFailed, v(Verb::Adopt), Adopting, A::Adopt),
        (AdoptFailed, v(Verb::Manage), Manageable, A::None),
        (Servicing, Event::Done, Active, A::None),
        (Active, v(Verb::Service), Servicing, A::Service),
        (Servicing, Event::Fail, ServiceFailed, A::None),
        (Servicing, Event::Wait, ServiceWait, A::None),
        (Servicing, Event::Hold, ServiceHold, A::None),
        (ServiceWait, Event::Hold, ServiceHold, A::None),
        (ServiceHold, v(Verb::Service), Servicing, A::Service),
        (ServiceHold, v(Verb::Unhold), ServiceWait, A::Unhold),
        (ServiceWait, Event::Resume, Servicing, A::None),
        (ServiceWait, Event::Fail, ServiceFailed, A::None),
        (ServiceHold, Event::Fail, ServiceFailed, A::None),
        (ServiceWait, v(Verb::Abort), ServiceFailed, A::Abort),
        (ServiceHold, v(Verb::Abort), ServiceFailed, A::Abort),
        (ServiceFailed, v(Verb::Service), Servicing, A::Service),
        (ServiceFailed, v(Verb::Rescue), Rescuing, A::Rescue),
        (ServiceFailed, Event::Wait, ServiceWait, A::None),
        (ServiceFailed, Event::Hold, ServiceHold, A::None),
        (ServiceFailed, v(Verb::Deleted), Deleting, A::TearDown),
        (ServiceFailed, v(Verb::Abort), Active, A::Abort),
        (ServiceWait, v(Verb::Deleted), Deleting, A::TearDown),
    ]
}

fn all_events() -> Vec<Event> {
    Verb::ALL
        .iter()
        .map(|v| Event::Verb(*v))
        .chain(OUTCOMES.iter().copied())
        .collect()
}

/// Aliases act as their originals.
fn canonical(event: Event) -> Event {
    match event {
        Event::Verb(Verb::Deploy) => Event::Verb(Verb::Active),
        Event::Verb(Verb::Undeploy) => Event::Verb(Verb::Deleted),
        other => other,
    }
}

#[test]
fn every_state_and_event_matches_ironic() {
    let table = ironic_table();
    let mut allowed = 0;
    for &state in ProvisionState::ALL {
        for event in all_events() {
            let expected = table
                .iter()
                .find(|(from, ev, _, _)| *from == state && *ev == canonical(event))
                .map(|(_, _, to, action)| (*to, *action));
            // The target a node has in `state` when this event arrives.
            let target = match state {
                Cleaning | CleanWait | CleanHold => Some(Available),
                _ => None,
            };
            let got = next(state, target, event);
            match (expected, got) {
                (Some((to, action)), Ok(t)) => {
                    allowed += 1;
                    assert_eq!((t.state, t.action), (to, action), "{state} + {event:?}");
                }
                (None, Err(refused)) => {
                    assert_eq!(refused.state, state);
                    assert_eq!(refused.event, event.as_str());
                }
                (Some(e), Err(_)) => {
                    panic!("{state} + {event:?} refused, Ironic allows it to {e:?}")
                }
                (None, Ok(t)) => panic!("{state} + {event:?} allowed to {t:?}, Ironic refuses it"),
            }
        }
    }
    // Ironic's list plus the two aliases where their originals apply.
    let aliased = table
        .iter()
        .filter(|(_, e, _, _)| matches!(e, Event::Verb(Verb::Active | Verb::Deleted)))
        .count();
    assert_eq!(allowed, table.len() + aliased);
}

#[test]
fn targets_follow_ironic() {
    let t = next(Available, None, Event::Verb(Verb::Active)).unwrap();
    assert_eq!(t.target, Some(Active));
    let t = next(Deploying, Some(Active), Event::Fail).unwrap();
    assert_eq!(
        (t.state, t.target),
        (DeployFailed, Some(Active)),
        "failed states keep their target"
    );
    let t = next(Deploying, Some(Active), Event::Done).unwrap();
    assert_eq!(t.target, None, "stable states have none");
    // Manual cleaning returns to manageable, automated cleaning to available.
    let manual = next(Manageable, None, Event::Verb(Verb::Clean)).unwrap();
    assert_eq!(manual.target, Some(Manageable));
    let waiting = next(Cleaning, manual.target, Event::Wait).unwrap();
    assert_eq!(waiting.target, Some(Manageable));
    let back = next(CleanWait, waiting.target, Event::Resume).unwrap();
    assert_eq!(
        next(Cleaning, back.target, Event::Done).unwrap().state,
        Manageable
    );
    let auto = next(Manageable, None, Event::Verb(Verb::Provide)).unwrap();
    assert_eq!(auto.target, Some(Available));
    assert_eq!(
        next(Cleaning, auto.target, Event::Done).unwrap().state,
        Available
    );
    let teardown = next(Deleting, Some(Available), Event::Done).unwrap();
    assert_eq!(
        (teardown.state, teardown.target, teardown.action),
        (Cleaning, Some(Available), Action::Clean)
    );
    assert_eq!(
        next(Enroll, None, Event::Verb(Verb::Manage))
            .unwrap()
            .target,
        Some(Manageable)
    );
    assert_eq!(
        next(Active, None, Event::Verb(Verb::Rescue))
            .unwrap()
            .target,
        Some(Rescue)
    );
}

#[test]
fn failed_states_of_busy_and_waiting_states() {
    let expected = [
        (Verifying, Enroll),
        (Deploying, DeployFailed),
        (WaitCallBack, DeployFailed),
        (Deleting, Error),
        (Cleaning, CleanFailed),
        (CleanWait, CleanFailed),
        (Inspecting, InspectFailed),
        (InspectWait, InspectFailed),
        (Adopting, AdoptFailed),
        (Rescuing, RescueFailed),
        (RescueWait, RescueFailed),
        (Unrescuing, UnrescueFailed),
        (Servicing, ServiceFailed),
        (ServiceWait, ServiceFailed),
    ];
    for &state in ProvisionState::ALL {
        let want = expected.iter().find(|(s, _)| *s == state).map(|(_, f)| *f);
        assert_eq!(failed_state(state, None), want, "{state}");
    }
}

#[test]
fn verbs_round_trip_with_their_versions() {
    for &verb in Verb::ALL {
        assert_eq!(Verb::from_wire(verb.as_str()), Some(verb));
    }
    assert_eq!(Verb::from_wire("fly"), None);
    assert_eq!(Verb::from_wire("Active"), None, "wire verbs are lower case");
    let versions: Vec<(&str, u32)> = Verb::ALL
        .iter()
        .map(|v| (v.as_str(), v.min_version()))
        .collect();
    assert_eq!(
        versions,
        [
            ("manage", 4),
            ("provide", 4),
            ("inspect", 6),
            ("active", 1),
            ("deploy", 73),
            ("rebuild", 1),
            ("deleted", 1),
            ("undeploy", 73),
            ("clean", 15),
            ("abort", 13),
            ("adopt", 17),
            ("rescue", 38),
            ("unrescue", 38),
            ("unhold", 85),
            ("service", 87),
        ]
    );
}

#[test]
fn refusals_read_like_ironic() {
    let refused = next(Enroll, None, Event::Verb(Verb::Deploy)).unwrap_err();
    assert_eq!(
        refused.message_for("node-1"),
        "The requested action \"deploy\" can not be performed on node \"node-1\" while it is in state \"enroll\"."
    );
}
