//! Operator steps: definitions in a temporary directory, real programs
//! (/bin/sh) run through the agent's clean, deploy and service commands.

use ferric_agent::commands::{CommandError, CommandHandler};
use ferric_agent::inventory::Filter;
use ferric_agent::standard::{Disks, StandardHandler};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn bare_agent() -> StandardHandler {
    StandardHandler::new(Disks::Only {
        sys_root: PathBuf::from("/"),
        filter: Filter { include_loop: true },
        names: vec![],
    })
}

fn agent(dir: &Path) -> StandardHandler {
    bare_agent().with_step_dir(Some(dir.to_owned())).unwrap()
}

fn define(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

async fn execute(agent: &StandardHandler, kind: &str, step: Value) -> Result<Value, CommandError> {
    agent
        .run(
            kind,
            &format!("execute_{kind}_step"),
            json!({"step": step, "node": {"uuid": "n-1"}, "ports": []}),
        )
        .await
}

#[tokio::test]
async fn a_step_gets_its_arguments_on_stdin_and_its_output_is_the_result() {
    let dir = tempfile::tempdir().unwrap();
    define(
        dir.path(),
        "echo_args.toml",
        r#"
step = "echo_args"
kinds = ["clean", "service"]
priority = 0
command = ["/bin/sh", "-c", "cat"]
abortable = true

[argsinfo.firmware_url]
description = "Where the firmware is"
required = true
"#,
    );
    define(
        dir.path(),
        "say_hello.toml",
        r#"
step = "say_hello"
kinds = ["deploy"]
priority = 42
command = ["/bin/sh", "-c", "echo hello from $FERRIC_STEP for $FERRIC_NODE_UUID; echo not-json >&2"]
"#,
    );
    // Not a definition: ignored.
    define(dir.path(), "README", "steps live here");
    let agent = agent(dir.path());

    let listed = agent
        .run("clean", "get_clean_steps", json!({"node": {}, "ports": []}))
        .await
        .unwrap();
    let ours = &listed["clean_steps"]["OperatorStepsManager"];
    assert_eq!(ours.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(ours[0]["step"], "echo_args");
    assert_eq!(ours[0]["priority"], 0);
    assert_eq!(ours[0]["interface"], "deploy");
    assert_eq!(ours[0]["abortable"], true);
    assert_eq!(ours[0]["argsinfo"]["firmware_url"]["required"], true);
    assert_eq!(
        listed["clean_steps"]["GenericHardwareManager"][0]["step"],
        "erase_devices_metadata"
    );
    let versions = listed["hardware_manager_version"].as_object().unwrap();
    assert!(versions["OperatorStepsManager"]
        .as_str()
        .unwrap()
        .starts_with("1.0-"));
    assert_eq!(versions["GenericHardwareManager"], "1.2");

    let deploy = agent
        .run(
            "deploy",
            "get_deploy_steps",
            json!({"node": {}, "ports": []}),
        )
        .await
        .unwrap();
    assert_eq!(
        deploy["deploy_steps"]["OperatorStepsManager"][0]["step"],
        "say_hello"
    );
    assert_eq!(
        deploy["deploy_steps"]["OperatorStepsManager"][0]["priority"],
        42
    );
    let service = agent
        .run(
            "service",
            "get_service_steps",
            json!({"node": {}, "ports": []}),
        )
        .await
        .unwrap();
    assert_eq!(
        service["service_steps"]["OperatorStepsManager"][0]["step"],
        "echo_args"
    );

    let args = json!({"firmware_url": "https://user:pw@example.com/fw.bin", "retries": [1, 2]});
    let step = json!({"step": "echo_args", "interface": "deploy", "priority": 0, "args": args});
    let done = execute(&agent, "clean", step.clone()).await.unwrap();
    assert_eq!(
        done["clean_result"], args,
        "the JSON given on stdin came back"
    );
    assert_eq!(done["clean_step"], step);
    let done = execute(&agent, "service", step).await.unwrap();
    assert_eq!(done["service_result"], args);

    // Text output is a string result; the environment names the step.
    let done = execute(
        &agent,
        "deploy",
        json!({"step": "say_hello", "interface": "deploy", "priority": 42}),
    )
    .await
    .unwrap();
    assert_eq!(done["deploy_result"], "hello from say_hello for n-1\n");

    // A required argument missing.
    let error = execute(
        &agent,
        "clean",
        json!({"step": "echo_args", "interface": "deploy", "priority": 0}),
    )
    .await
    .unwrap_err();
    assert!(error.details.contains("firmware_url"), "{error}");
    // A step of another kind is not there.
    let error = execute(
        &agent,
        "deploy",
        json!({"step": "echo_args", "interface": "deploy", "priority": 0, "args": args}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.error_type, "HardwareManagerMethodNotFound", "{error}");
}

#[tokio::test]
async fn a_failing_step_reports_its_status_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let file = define(
        dir.path(),
        "burn.toml",
        r#"
step = "burn"
kinds = ["clean"]
command = ["/bin/sh", "-c", "echo partial output; echo 'the disk is on fire' >&2; exit 3"]
"#,
    );
    let agent = agent(dir.path());
    let error = execute(
        &agent,
        "clean",
        json!({"step": "burn", "interface": "deploy", "priority": 0}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.error_type, "CommandExecutionError");
    assert!(error.details.contains("exit status 3"), "{error}");
    assert!(error.details.contains("the disk is on fire"), "{error}");
    assert!(
        error.details.contains(&file.display().to_string()),
        "{error}"
    );
}

#[tokio::test]
async fn the_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    define(
        dir.path(),
        "hang.toml",
        &format!(
            r#"
step = "hang"
kinds = ["clean"]
timeout = 1
command = ["/bin/sh", "-c", "sleep 60 & echo $! > {}; wait"]
"#,
            pid_file.display()
        ),
    );
    let agent = agent(dir.path());
    let started = Instant::now();
    let error = execute(
        &agent,
        "clean",
        json!({"step": "hang", "interface": "deploy", "priority": 0}),
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(error.details.contains("timed out after 1 s"), "{error}");
    // The shell's child, in the same process group, was killed too: gone
    // or a zombie waiting to be reaped, never sleeping.
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .ok()
            .and_then(|s| s.rsplit(") ").next().and_then(|r| r.chars().next()));
        if matches!(state, None | Some('Z') | Some('X')) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sleeping child {pid} survived: state {state:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A program that leaves a process of its own session behind holding its
/// output (out of reach of the group kill) does not keep the agent busy:
/// the step fails a few seconds after the program ended.
#[tokio::test]
async fn output_held_open_by_an_escaped_process_does_not_hang_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("escaped.pid");
    define(
        dir.path(),
        "escape.toml",
        &format!(
            r#"
step = "escape"
kinds = ["clean"]
command = ["/bin/sh", "-c", "setsid sh -c 'echo $$ > {}; exec sleep 30' & sleep 0.5; exit 0"]
"#,
            pid_file.display()
        ),
    );
    let agent = agent(dir.path());
    let started = Instant::now();
    let error = execute(
        &agent,
        "clean",
        json!({"step": "escape", "interface": "deploy", "priority": 0}),
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(error.details.contains("output stayed open"), "{error}");
}

#[tokio::test]
async fn an_operator_step_overrides_a_generic_step_of_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    define(
        dir.path(),
        "erase.toml",
        &format!(
            r#"
step = "erase_devices_metadata"
kinds = ["clean"]
priority = 50
abortable = true
command = ["/bin/sh", "-c", "touch {}; echo '{{\"erased\": \"by the operator\"}}'"]
"#,
            marker.display()
        ),
    );
    let agent = agent(dir.path());
    let listed = agent
        .run("clean", "get_clean_steps", json!({"node": {}, "ports": []}))
        .await
        .unwrap();
    let steps = &listed["clean_steps"];
    assert_eq!(
        steps["OperatorStepsManager"][0]["step"],
        "erase_devices_metadata"
    );
    assert_eq!(steps["OperatorStepsManager"][0]["priority"], 50);
    let generic: Vec<&str> = steps["GenericHardwareManager"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(generic, ["erase_devices"], "{listed}");

    let done = execute(
        &agent,
        "clean",
        json!({"step": "erase_devices_metadata", "interface": "deploy", "priority": 50}),
    )
    .await
    .unwrap();
    assert_eq!(done["clean_result"], json!({"erased": "by the operator"}));
    assert!(marker.exists());
}

#[test]
fn bad_definitions_stop_the_agent_naming_the_file() {
    let cases: &[(&str, &str, &str)] = &[
        ("syntax.toml", "step = \"x\"\nkinds = [", "syntax.toml"),
        ("unknown.toml", "step = \"x\"\nkinds = [\"clean\"]\ncommand = [\"/bin/true\"]\nshell = true\n", "unknown field"),
        ("relative.toml", "step = \"x\"\nkinds = [\"clean\"]\ncommand = [\"sh\", \"-c\", \"true\"]\n", "absolute path"),
        ("missing.toml", "step = \"x\"\nkinds = [\"clean\"]\ncommand = [\"/nonexistent/flash\"]\n", "/nonexistent/flash"),
        ("kind.toml", "step = \"x\"\nkinds = [\"rescue\"]\ncommand = [\"/bin/true\"]\n", "rescue"),
        ("name.toml", "step = \"Erase Disks\"\nkinds = [\"clean\"]\ncommand = [\"/bin/true\"]\n", "step name"),
        ("timeout.toml", "step = \"x\"\nkinds = [\"clean\"]\ncommand = [\"/bin/true\"]\ntimeout = 0\n", "timeout"),
        ("env.toml", "step = \"x\"\nkinds = [\"clean\"]\ncommand = [\"/bin/true\"]\nenvironment = { PATH = \"/tmp\" }\n", "PATH"),
        ("iface.toml", "step = \"x\"\nkinds = [\"clean\"]\ncommand = [\"/bin/true\"]\ninterface = \"power\"\n", "interface"),
    ];
    for (file, text, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        define(dir.path(), file, text);
        let error = match bare_agent().with_step_dir(Some(dir.path().to_owned())) {
            Ok(_) => panic!("{file} was accepted"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains(file), "{file}: {error}");
        assert!(error.contains(expected), "{file}: {error}");
    }

    // Two files defining one step.
    let dir = tempfile::tempdir().unwrap();
    let text = "step = \"twice\"\nkinds = [\"clean\"]\ncommand = [\"/bin/true\"]\n";
    define(dir.path(), "a.toml", text);
    define(dir.path(), "b.toml", text);
    let error = format!(
        "{:#}",
        bare_agent()
            .with_step_dir(Some(dir.path().to_owned()))
            .err()
            .unwrap()
    );
    assert!(
        error.contains("b.toml") && error.contains("a.toml"),
        "{error}"
    );

    // A directory that does not exist.
    let error = format!(
        "{:#}",
        bare_agent()
            .with_step_dir(Some(PathBuf::from("/nonexistent/steps.d")))
            .err()
            .unwrap()
    );
    assert!(error.contains("/nonexistent/steps.d"), "{error}");
}

/// The example definition shipped in etc/ loads and runs.
#[tokio::test]
async fn the_shipped_example_definition_loads_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../etc/ferric-agent/steps.d/example-burn-in.toml"
    );
    std::fs::copy(example, dir.path().join("example-burn-in.toml")).unwrap();
    let agent = agent(dir.path());
    let result = execute(
        &agent,
        "clean",
        json!({"step": "burn_in_memory", "interface": "deploy", "args": {"seconds": 5}}),
    )
    .await
    .unwrap();
    assert_eq!(
        result["clean_result"],
        json!({"burned_in": {"seconds": 5}}),
        "{result}"
    );
}
