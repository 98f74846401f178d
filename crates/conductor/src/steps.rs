//! Choosing and ordering deploy, clean and service steps, as Ironic does.

use ferric_drivers::StepDefinition;
use ferric_types::{Step, StepInterface};
use serde_json::Map;

/// Step names the conductor runs itself, on any interface, as Ironic does:
/// power actions, `hold` (until an operator unholds) and `wait` (for the
/// agent, or `args.seconds`).
pub const RESERVED_STEPS: &[&str] = &["power_on", "power_off", "reboot", "hold", "wait"];

pub fn is_reserved(step: &Step) -> bool {
    RESERVED_STEPS.contains(&step.step.as_str())
}

fn find<'a>(offered: &'a [StepDefinition], wanted: &Step) -> Option<&'a StepDefinition> {
    offered
        .iter()
        .find(|d| d.interface == wanted.interface && d.step == wanted.step)
}

fn unsupported(kind: &str, step: &Step) -> String {
    let interface = serde_json::to_value(step.interface)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    format!(
        "{kind} step \"{}\" on interface \"{interface}\" is not supported by the node's driver",
        step.step
    )
}

/// The steps of an automated run (deploy, automated clean): the driver's
/// steps with their default priorities, overridden by the operator's steps
/// of the same interface and name; priority 0 disables a step. Ordered by
/// priority, highest first, ties broken by interface (vendor first).
pub fn merge_steps(
    kind: &str,
    offered: &[StepDefinition],
    requested: &[Step],
) -> Result<Vec<Step>, String> {
    merge_steps_allowing(kind, offered, requested, None)
}

/// [`merge_steps`], accepting requested steps of `unknown_ok` the driver
/// does not offer yet: steps of an agent that has not booted, checked by
/// [`replan`] once it told its steps.
pub fn merge_steps_allowing(
    kind: &str,
    offered: &[StepDefinition],
    requested: &[Step],
    unknown_ok: Option<StepInterface>,
) -> Result<Vec<Step>, String> {
    let mut steps: Vec<Step> = offered
        .iter()
        .map(|d| Step {
            interface: d.interface,
            step: d.step.clone(),
            args: Map::new(),
            priority: Some(d.priority),
        })
        .collect();
    for wanted in requested {
        if find(offered, wanted).is_none() && unknown_ok != Some(wanted.interface) {
            return Err(unsupported(kind, wanted));
        }
        let priority = wanted
            .priority
            .ok_or_else(|| format!("{kind} step \"{}\" needs a priority", wanted.step))?;
        if priority < 0 {
            return Err(format!(
                "{kind} step \"{}\" has a negative priority {priority}",
                wanted.step
            ));
        }
        match steps
            .iter_mut()
            .find(|s| s.interface == wanted.interface && s.step == wanted.step)
        {
            Some(slot) => {
                slot.args = wanted.args.clone();
                slot.priority = Some(priority);
            }
            None => steps.push(wanted.clone()),
        }
    }
    steps.retain(|s| s.priority.unwrap_or(0) > 0);
    // Stable sort: equal (priority, interface) keep the driver's order.
    steps.sort_by(|a, b| {
        b.priority.cmp(&a.priority).then(
            a.interface
                .tie_break_rank()
                .cmp(&b.interface.tie_break_rank()),
        )
    });
    Ok(steps)
}

/// The steps of a manual run (manual clean, service): exactly the operator's
/// steps in the operator's order, each of which the driver must offer.
pub fn manual_steps(
    kind: &str,
    offered: &[StepDefinition],
    requested: &[Step],
) -> Result<Vec<Step>, String> {
    manual_steps_allowing(kind, offered, requested, None)
}

/// [`manual_steps`], accepting steps of `unknown_ok` the driver does not
/// offer yet (see [`merge_steps_allowing`]).
pub fn manual_steps_allowing(
    kind: &str,
    offered: &[StepDefinition],
    requested: &[Step],
    unknown_ok: Option<StepInterface>,
) -> Result<Vec<Step>, String> {
    if requested.is_empty() {
        return Err(format!("No {kind} steps were given"));
    }
    for wanted in requested {
        if find(offered, wanted).is_none()
            && !is_reserved(wanted)
            && unknown_ok != Some(wanted.interface)
        {
            return Err(unsupported(kind, wanted));
        }
    }
    Ok(requested.to_vec())
}

/// The interface's steps joined with its agent's. The interface's own steps
/// keep their definitions: an agent offering a step of the same name (IPA
/// lists `write_image` at priority 0, to be proxied by the conductor's step)
/// changes nothing, and an agent, which looked itself up unauthenticated,
/// cannot drop or reorder the steps the conductor runs.
pub fn with_agent_steps(
    offered: &[StepDefinition],
    agent: &[StepDefinition],
) -> Vec<StepDefinition> {
    let mut all = offered.to_vec();
    all.extend(
        agent
            .iter()
            .filter(|a| {
                !offered
                    .iter()
                    .any(|d| d.interface == a.interface && d.step == a.step)
            })
            .cloned(),
    );
    all
}

/// Once the agent told its steps: the whole step list again, the first
/// `done` steps (already run) kept as they are. A manual run keeps the
/// operator's steps, each of which must now be offered; an automated run
/// is merged again from every step offered and the operator's `requested`
/// overrides, less what already ran.
pub fn replan(
    kind: &str,
    offered: &[StepDefinition],
    stored: &[Step],
    done: usize,
    requested: &[Step],
    manual: bool,
) -> Result<Vec<Step>, String> {
    let done = done.min(stored.len());
    if manual {
        for wanted in &stored[done..] {
            if find(offered, wanted).is_none() && !is_reserved(wanted) {
                return Err(format!("{} (nor by its agent)", unsupported(kind, wanted)));
            }
        }
        return Ok(stored.to_vec());
    }
    let merged =
        merge_steps(kind, offered, requested).map_err(|e| format!("{e} (nor by its agent)"))?;
    let ran = &stored[..done];
    let mut steps = ran.to_vec();
    steps.extend(merged.into_iter().filter(|s| {
        !ran.iter()
            .any(|r| r.interface == s.interface && r.step == s.step)
    }));
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferric_types::StepInterface;
    use serde_json::json;

    fn def(interface: StepInterface, step: &str, priority: i64) -> StepDefinition {
        StepDefinition {
            interface,
            step: step.into(),
            priority,
            argsinfo: None,
            requires_ramdisk: false,
        }
    }

    fn user(interface: StepInterface, step: &str, priority: i64) -> Step {
        Step {
            interface,
            step: step.into(),
            args: Map::new(),
            priority: Some(priority),
        }
    }

    fn names(steps: &[Step]) -> Vec<&str> {
        steps.iter().map(|s| s.step.as_str()).collect()
    }

    #[test]
    fn driver_steps_run_by_priority_and_zero_disables() {
        let offered = [
            def(StepInterface::Deploy, "tear_down_agent", 40),
            def(StepInterface::Deploy, "deploy", 100),
            def(StepInterface::Deploy, "write_image", 80),
            def(StepInterface::Deploy, "erase", 0),
        ];
        let steps = merge_steps("deploy", &offered, &[]).unwrap();
        assert_eq!(names(&steps), ["deploy", "write_image", "tear_down_agent"]);
    }

    #[test]
    fn user_steps_override_priority_and_args_or_disable() {
        let offered = [
            def(StepInterface::Deploy, "deploy", 100),
            def(StepInterface::Deploy, "write_image", 80),
            def(StepInterface::Deploy, "erase", 0),
        ];
        let mut erase = user(StepInterface::Deploy, "erase", 90);
        erase.args.insert("passes".into(), json!(2));
        let requested = [erase, user(StepInterface::Deploy, "write_image", 0)];
        let steps = merge_steps("deploy", &offered, &requested).unwrap();
        assert_eq!(names(&steps), ["deploy", "erase"]);
        assert_eq!(steps[1].args["passes"], 2);
    }

    #[test]
    fn ties_are_broken_by_interface() {
        let offered = [
            def(StepInterface::Deploy, "d", 50),
            def(StepInterface::Bios, "b", 50),
            def(StepInterface::Power, "p", 50),
            def(StepInterface::Management, "m", 50),
            def(StepInterface::Vendor, "v", 50),
            def(StepInterface::Raid, "r", 50),
            def(StepInterface::Firmware, "f", 50),
        ];
        let steps = merge_steps("deploy", &offered, &[]).unwrap();
        assert_eq!(names(&steps), ["v", "p", "m", "f", "d", "b", "r"]);
    }

    #[test]
    fn unknown_or_unprioritised_user_steps_are_refused() {
        let offered = [def(StepInterface::Deploy, "deploy", 100)];
        let err = merge_steps(
            "deploy",
            &offered,
            &[user(StepInterface::Bios, "deploy", 5)],
        );
        assert!(err.unwrap_err().contains("not supported"));
        let mut no_priority = user(StepInterface::Deploy, "deploy", 1);
        no_priority.priority = None;
        assert!(merge_steps("deploy", &offered, &[no_priority]).is_err());
    }

    #[test]
    fn manual_steps_keep_the_operators_order() {
        let offered = [
            def(StepInterface::Deploy, "erase_devices_metadata", 0),
            def(StepInterface::Deploy, "erase_devices", 0),
        ];
        let mut a = user(StepInterface::Deploy, "erase_devices", 0);
        a.priority = None;
        let mut b = user(StepInterface::Deploy, "erase_devices_metadata", 0);
        b.priority = None;
        let steps = manual_steps("clean", &offered, &[a, b]).unwrap();
        assert_eq!(names(&steps), ["erase_devices", "erase_devices_metadata"]);
        assert!(manual_steps("clean", &offered, &[]).is_err());
        assert!(manual_steps("clean", &offered, &[user(StepInterface::Raid, "x", 1)]).is_err());
    }

    #[test]
    fn agent_steps_join_after_the_agent_is_up() {
        let offered = [
            def(StepInterface::Deploy, "deploy", 100),
            def(StepInterface::Deploy, "write_image", 80),
            def(StepInterface::Deploy, "erase_devices", 0),
        ];
        // The operator asks for an agent step nobody knows before boot, and
        // disables write_image; both are allowed for an agent interface.
        let requested = [
            user(StepInterface::Deploy, "burn_in", 90),
            user(StepInterface::Deploy, "write_image", 0),
        ];
        assert!(merge_steps("deploy", &offered, &requested).is_err());
        let first =
            merge_steps_allowing("deploy", &offered, &requested, Some(StepInterface::Deploy))
                .unwrap();
        assert_eq!(names(&first), ["deploy", "burn_in"]);
        // The agent is up after "deploy": it offers burn_in and its own
        // steps; one with a priority joins, the operator's choices stay.
        // Its write_image at priority 0 (as IPA lists it) and a
        // tear_down_agent leave the interface's own steps as they are.
        let agent = [
            def(StepInterface::Deploy, "burn_in", 0),
            def(StepInterface::Deploy, "write_image", 0),
            def(StepInterface::Deploy, "deploy", 0),
            def(StepInterface::Deploy, "firmware_check", 95),
        ];
        let all = with_agent_steps(&offered, &agent);
        let again = replan("deploy", &all, &first, 1, &requested, false).unwrap();
        assert_eq!(names(&again), ["deploy", "firmware_check", "burn_in"]);
        let unrequested = replan("deploy", &all, &first, 1, &[], false).unwrap();
        assert_eq!(
            names(&unrequested),
            ["deploy", "firmware_check", "write_image"],
            "the agent's priority 0 does not drop the interface's write_image"
        );
        // A step the agent does not offer either fails the run.
        let missing = [user(StepInterface::Deploy, "nothing_like_it", 90)];
        let err = replan("deploy", &all, &first, 1, &missing, false).unwrap_err();
        assert!(
            err.contains("nothing_like_it") && err.contains("agent"),
            "{err}"
        );
    }

    #[test]
    fn manual_agent_steps_are_checked_once_the_agent_is_up() {
        let offered = [def(StepInterface::Deploy, "erase_devices", 0)];
        let mut wanted = user(StepInterface::Deploy, "flash_bios", 0);
        wanted.priority = None;
        let steps = manual_steps_allowing(
            "clean",
            &offered,
            std::slice::from_ref(&wanted),
            Some(StepInterface::Deploy),
        )
        .unwrap();
        let agent = [def(StepInterface::Deploy, "flash_bios", 0)];
        let all = with_agent_steps(&offered, &agent);
        assert_eq!(replan("clean", &all, &steps, 0, &[], true).unwrap(), steps);
        let err = replan("clean", &offered, &steps, 0, &[], true).unwrap_err();
        assert!(err.contains("flash_bios"), "{err}");
    }
}
