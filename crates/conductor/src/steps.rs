//! Choosing and ordering deploy, clean and service steps, as Ironic does.

use ferric_drivers::StepDefinition;
use ferric_types::Step;
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
        if find(offered, wanted).is_none() {
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
    if requested.is_empty() {
        return Err(format!("No {kind} steps were given"));
    }
    for wanted in requested {
        if find(offered, wanted).is_none() && !is_reserved(wanted) {
            return Err(unsupported(kind, wanted));
        }
    }
    Ok(requested.to_vec())
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
}
