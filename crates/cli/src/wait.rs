//! `--wait`: a live state line until the node settles.

use crate::client::IronicClient;
use crate::output::Output;
use ferric_types::ProvisionState;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(500);

/// How a node ended up, seen from a wait.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still moving.
    Pending,
    Reached,
    Failed,
}

/// Judges one look at the node. `expect` is the state the operation should
/// reach; without one, any settled state that is not a failure will do.
pub fn verdict(node: &Value, expect: Option<&str>) -> Verdict {
    let state = node["provision_state"].as_str().unwrap_or("");
    let parsed = state.parse::<ProvisionState>().ok();
    let locked = !node["reservation"].is_null();
    if parsed.is_some_and(ProvisionState::is_failed) {
        return Verdict::Failed;
    }
    if let Some(want) = expect {
        if state == want && !locked {
            return Verdict::Reached;
        }
        // A failed verification sends a node back to enroll.
        if want == "manageable" && state == "enroll" && !node["last_error"].is_null() && !locked {
            return Verdict::Failed;
        }
        return Verdict::Pending;
    }
    if parsed.is_some_and(ProvisionState::is_busy) || locked {
        Verdict::Pending
    } else {
        Verdict::Reached
    }
}

fn line(node: &Value) -> String {
    let state = node["provision_state"].as_str().unwrap_or("?");
    let mut text = match node["target_provision_state"].as_str() {
        Some(target) => format!("{state} -> {target}"),
        None => state.to_string(),
    };
    if let Some(power) = node["power_state"].as_str() {
        text.push_str(&format!(", {power}"));
    }
    for key in ["deploy_step", "clean_step", "service_step"] {
        if let Some(step) = node[key]["step"].as_str() {
            text.push_str(&format!(", step {step}"));
        }
    }
    if let Some(progress) = progress(&node["driver_internal_info"]["deploy_progress"]) {
        text.push_str(&format!(", {progress}"));
    }
    text
}

/// "412 of 2048 MiB (20 %), 96 MiB/s, 17 s left" from the agent's report.
pub fn progress(report: &Value) -> Option<String> {
    const MIB: f64 = 1024.0 * 1024.0;
    let done = report["bytes_done"].as_f64()?;
    let mut text = format!("{:.0}", done / MIB);
    if let Some(total) = report["bytes_total"].as_f64().filter(|t| *t > 0.0) {
        text.push_str(&format!(
            " of {:.0} MiB ({:.0} %)",
            total / MIB,
            100.0 * done / total
        ));
    } else {
        text.push_str(" MiB");
    }
    if let Some(rate) = report["rate_bytes_per_s"].as_f64().filter(|r| *r > 0.0) {
        text.push_str(&format!(", {:.0} MiB/s", rate / MIB));
    }
    if let Some(eta) = report["eta_seconds"].as_f64() {
        text.push_str(&format!(", {eta:.0} s left"));
    }
    Some(text)
}

pub fn until_settled(
    client: &IronicClient,
    out: &Output,
    node: &str,
    expect: Option<&str>,
    timeout: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed}] {prefix}: {msg}",
    )?);
    bar.set_prefix(node.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut bytes_shown = false;
    loop {
        let current = client.get(&format!("/v1/nodes/{node}"))?;
        // While the agent writes an image, a bar of the bytes written.
        let report = &current["driver_internal_info"]["deploy_progress"];
        match (
            report["bytes_done"].as_u64(),
            report["bytes_total"].as_u64(),
        ) {
            (Some(done), Some(total)) if total > 0 => {
                if !bytes_shown {
                    bar.set_style(ProgressStyle::with_template(
                        "{spinner} [{elapsed}] {prefix}: [{bar:30}] {msg}",
                    )?);
                    bytes_shown = true;
                }
                bar.set_length(total);
                bar.set_position(done.min(total));
            }
            _ if bytes_shown => {
                bar.set_style(ProgressStyle::with_template(
                    "{spinner} [{elapsed}] {prefix}: {msg}",
                )?);
                bytes_shown = false;
            }
            _ => {}
        }
        bar.set_message(line(&current));
        match verdict(&current, expect) {
            Verdict::Pending => {}
            Verdict::Reached => {
                bar.finish_with_message(line(&current));
                out.note(&format!(
                    "{node} is {}",
                    current["provision_state"].as_str().unwrap_or("?")
                ));
                return Ok(ExitCode::SUCCESS);
            }
            Verdict::Failed => {
                bar.finish_with_message(line(&current));
                eprintln!(
                    "ferric: {node} is {}: {}",
                    current["provision_state"].as_str().unwrap_or("?"),
                    current["last_error"]
                        .as_str()
                        .unwrap_or("no error recorded")
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        if timeout.is_some_and(|t| started.elapsed() > t) {
            bar.abandon();
            eprintln!(
                "ferric: {node} did not settle in {:?}: {}",
                timeout.unwrap_or_default(),
                line(&current)
            );
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until a power action has finished (no target power state).
pub fn until_power_settled(
    client: &IronicClient,
    node: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let current = client.get(&format!("/v1/nodes/{node}/states"))?;
        if current["target_power_state"].is_null() {
            if let Some(err) = current["last_error"].as_str() {
                anyhow::ensure!(!err.contains("power state"), "{err}");
            }
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "power action on {node} did not finish in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_reads_like_a_sentence() {
        let report = json!({"bytes_done": 512u64 << 20, "bytes_total": 2048u64 << 20,
                            "rate_bytes_per_s": 100u64 << 20, "eta_seconds": 15});
        assert_eq!(
            progress(&report).unwrap(),
            "512 of 2048 MiB (25 %), 100 MiB/s, 15 s left"
        );
        assert_eq!(progress(&json!({})), None);
        let node = json!({"provision_state": "wait call-back", "target_provision_state": "active",
                          "deploy_step": {"step": "write_image"},
                          "driver_internal_info": {"deploy_progress": report}});
        assert!(
            line(&node).ends_with("step write_image, 512 of 2048 MiB (25 %), 100 MiB/s, 15 s left")
        );
    }

    #[test]
    fn verdicts() {
        let n = |state: &str, locked: bool| json!({"provision_state": state, "reservation": if locked { json!("c") } else { Value::Null }, "last_error": null});
        assert_eq!(
            verdict(&n("deploying", true), Some("active")),
            Verdict::Pending
        );
        assert_eq!(
            verdict(&n("active", true), Some("active")),
            Verdict::Pending
        );
        assert_eq!(
            verdict(&n("active", false), Some("active")),
            Verdict::Reached
        );
        assert_eq!(
            verdict(&n("deploy failed", false), Some("active")),
            Verdict::Failed
        );
        assert_eq!(verdict(&n("wait call-back", false), None), Verdict::Reached);
        assert_eq!(verdict(&n("cleaning", false), None), Verdict::Pending);
        let mut failed_verify = n("enroll", false);
        failed_verify["last_error"] = json!("bmc down");
        assert_eq!(verdict(&failed_verify, Some("manageable")), Verdict::Failed);
    }
}
