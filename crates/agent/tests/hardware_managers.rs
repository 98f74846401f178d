//! Dispatch through the hardware managers: the step lists merge every
//! manager's steps (a step name once, the best-supported manager's), a step
//! runs in the best manager that implements it, managers without support
//! are ignored, and every manager's version is reported and checked.

use ferric_agent::commands::{CommandError, CommandHandler};
use ferric_agent::hardware::{
    HardwareManager, HardwareManagers, Step, StepCall, StepKind, SupportLevel,
};
use ferric_agent::inventory::Filter;
use ferric_agent::standard::{Disks, StandardHandler};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A manager whose steps record their calls.
struct Fake {
    name: &'static str,
    version: &'static str,
    support: SupportLevel,
    /// (step name, priority) of its clean steps; it implements them all.
    steps: Vec<(&'static str, u32)>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    fn new(name: &'static str, support: SupportLevel, steps: Vec<(&'static str, u32)>) -> Self {
        Fake {
            name,
            version: "7.1",
            support,
            steps,
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> Arc<Mutex<Vec<String>>> {
        self.calls.clone()
    }
}

impl HardwareManager for Fake {
    fn name(&self) -> &str {
        self.name
    }

    fn version(&self) -> String {
        self.version.to_owned()
    }

    fn evaluate_hardware_support(&self) -> SupportLevel {
        self.support
    }

    fn clean_steps(&self, _node: &Value, _ports: &Value) -> Vec<Step> {
        self.steps
            .iter()
            .map(|(step, priority)| Step {
                step: (*step).to_owned(),
                priority: *priority,
                interface: "deploy".to_owned(),
                reboot_requested: false,
                abortable: Some(true),
                argsinfo: None,
            })
            .collect()
    }

    fn execute_step(&self, call: &StepCall<'_>) -> Option<Result<Value, CommandError>> {
        if call.kind != StepKind::Clean || !self.steps.iter().any(|(s, _)| *s == call.name) {
            return None;
        }
        self.calls.lock().unwrap().push(call.name.to_owned());
        Some(Ok(json!({"ran_by": self.name, "args": call.args})))
    }
}

/// An agent that sees no disks (nothing here writes to one).
fn handler() -> StandardHandler {
    StandardHandler::new(Disks::Only {
        sys_root: PathBuf::from("/"),
        filter: Filter { include_loop: true },
        names: vec![],
    })
}

async fn run(
    agent: &StandardHandler,
    extension: &str,
    command: &str,
    params: Value,
) -> Result<Value, CommandError> {
    agent.run(extension, command, params).await
}

#[tokio::test]
async fn a_better_supported_manager_takes_over_a_step() {
    let vendor = Fake::new(
        "VendorManager",
        SupportLevel::Mainline,
        vec![("erase_devices_metadata", 10), ("flash_bios", 0)],
    );
    let vendor_calls = vendor.calls();
    let agent = handler().with_hardware_manager(Arc::new(vendor));

    let listed = run(
        &agent,
        "clean",
        "get_clean_steps",
        json!({"node": {}, "ports": []}),
    )
    .await
    .unwrap();
    let steps = &listed["clean_steps"];
    // The vendor's erase_devices_metadata wins despite its lower priority.
    let vendor_steps: Vec<&str> = steps["VendorManager"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(vendor_steps, ["erase_devices_metadata", "flash_bios"]);
    assert_eq!(steps["VendorManager"][0]["priority"], 10);
    let generic: Vec<&str> = steps["GenericHardwareManager"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(generic, ["erase_devices"], "{listed}");
    assert_eq!(
        listed["hardware_manager_version"],
        json!({"GenericHardwareManager": "1.2", "VendorManager": "7.1"})
    );

    let step = json!({"step": "erase_devices_metadata", "interface": "deploy", "priority": 10,
                      "args": {"passes": 2}});
    let done = run(
        &agent,
        "clean",
        "execute_clean_step",
        json!({"step": step, "node": {}, "ports": [],
               "clean_version": {"GenericHardwareManager": "1.2", "VendorManager": "7.1"}}),
    )
    .await
    .unwrap();
    assert_eq!(
        done["clean_result"],
        json!({"ran_by": "VendorManager", "args": {"passes": 2}})
    );
    assert_eq!(done["clean_step"], step);
    assert_eq!(*vendor_calls.lock().unwrap(), ["erase_devices_metadata"]);

    // A step only the generic manager has still goes there: with no disks
    // it succeeds without touching anything.
    let done = run(
        &agent,
        "clean",
        "execute_clean_step",
        json!({"step": {"step": "erase_devices", "interface": "deploy", "priority": 0},
               "node": {}, "ports": []}),
    )
    .await
    .unwrap();
    assert_eq!(done["clean_result"], Value::Null);
    assert_eq!(vendor_calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_manager_without_support_is_ignored() {
    let absent = Fake::new(
        "AbsentManager",
        SupportLevel::None,
        vec![("erase_devices_metadata", 99), ("absent_only", 5)],
    );
    let absent_calls = absent.calls();
    let agent = handler().with_hardware_manager(Arc::new(absent));

    let listed = run(
        &agent,
        "clean",
        "get_clean_steps",
        json!({"node": {}, "ports": []}),
    )
    .await
    .unwrap();
    assert!(
        listed["clean_steps"].get("AbsentManager").is_none(),
        "{listed}"
    );
    assert_eq!(
        listed["clean_steps"]["GenericHardwareManager"][0]["step"],
        "erase_devices_metadata"
    );
    assert_eq!(
        listed["hardware_manager_version"],
        json!({"GenericHardwareManager": "1.2"})
    );

    let error = run(
        &agent,
        "clean",
        "execute_clean_step",
        json!({"step": {"step": "absent_only", "interface": "deploy", "priority": 5},
               "node": {}, "ports": []}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.error_type, "HardwareManagerMethodNotFound", "{error}");
    assert!(error.details.contains("absent_only"), "{error}");
    assert!(absent_calls.lock().unwrap().is_empty());
}

#[test]
fn ties_go_to_the_higher_priority_then_the_first_name() {
    let managers = HardwareManagers::new([
        Arc::new(Fake::new(
            "Bravo",
            SupportLevel::Mainline,
            vec![("a", 5), ("b", 1)],
        )) as Arc<dyn HardwareManager>,
        Arc::new(Fake::new(
            "Alpha",
            SupportLevel::Mainline,
            vec![("a", 5), ("b", 2)],
        )),
        Arc::new(Fake::new(
            "Generic",
            SupportLevel::Generic,
            vec![("a", 90), ("c", 1)],
        )),
    ]);
    let order: Vec<&str> = managers.managers().map(|(_, m)| m.name()).collect();
    assert_eq!(order, ["Alpha", "Bravo", "Generic"]);
    let steps = managers.steps(StepKind::Clean, &json!({}), &json!([]));
    let names = |manager: &str| -> Vec<String> {
        steps
            .get(manager)
            .map(|s| s.iter().map(|s| s.step.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(names("Alpha"), ["a", "b"]);
    assert!(names("Bravo").is_empty());
    assert_eq!(names("Generic"), ["c"]);
}

#[tokio::test]
async fn changed_versions_are_a_version_mismatch() {
    let agent = handler().with_hardware_manager(Arc::new(Fake::new(
        "VendorManager",
        SupportLevel::Mainline,
        vec![("flash_bios", 0)],
    )));
    // Fetched before the vendor manager was there.
    let error = run(
        &agent,
        "clean",
        "execute_clean_step",
        json!({"step": {"step": "flash_bios", "interface": "deploy", "priority": 0},
               "node": {}, "ports": [], "clean_version": {"GenericHardwareManager": "1.2"}}),
    )
    .await
    .unwrap_err();
    assert!(error.is_version_mismatch(), "{error}");
    assert!(error.details.contains("VendorManager"), "{error}");

    let error = run(&agent, "deploy", "execute_deploy_step",
        json!({"step": {"step": "write_image", "interface": "deploy", "priority": 80},
               "node": {}, "ports": [], "deploy_version": {"GenericHardwareManager": "1.1", "VendorManager": "7.1"}}))
    .await
    .unwrap_err();
    assert!(error.is_version_mismatch(), "{error}");

    let listed = run(
        &agent,
        "service",
        "get_service_steps",
        json!({"node": {}, "ports": []}),
    )
    .await
    .unwrap();
    assert_eq!(listed["service_steps"], json!({}));
    assert_eq!(listed["hardware_manager_version"]["VendorManager"], "7.1");
}

#[tokio::test]
async fn the_inventory_comes_from_the_generic_manager() {
    let agent = handler();
    let inventory = run(&agent, "system", "get_inventory", json!({}))
        .await
        .unwrap();
    assert!(inventory["cpu"].is_object(), "{inventory}");
    assert!(inventory["memory"].is_object(), "{inventory}");
}
