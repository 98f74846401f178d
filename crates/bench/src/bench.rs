//! The benchmark itself: creations, lists, simultaneous deploys, memory.

use crate::client::{Connection, Endpoint};
use crate::ironic::{self, Call, NodeState, OnConflict, PAGE_LIMIT};
use crate::pool::{run_batch, BatchFailure, BatchRun};
use crate::report::{Creations, Deploys, Latency, ListTiming, Report};
use crate::rss;
use crate::stats::{millis, rate, round, Samples};
use anyhow::{bail, Context};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure and how hard.
#[derive(Debug, Clone)]
pub struct Settings {
    pub clients: usize,
    pub nodes: usize,
    pub deploys: usize,
    pub list_repeats: usize,
    pub pid: Option<u32>,
    pub driver: String,
    /// driver_info of every node created.
    pub driver_info: Option<serde_json::Value>,
    pub api_version: String,
    /// Between state polls while the timed deploys run.
    pub poll_interval: Duration,
    /// The longest any wait for provision states may take.
    pub wait_timeout: Duration,
}

/// Between state polls of the untimed preparation.
const SETUP_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// One run against one endpoint; remembers the nodes it created.
pub struct Bench {
    endpoint: Arc<Endpoint>,
    settings: Settings,
    /// Names and resource classes of this run start with this.
    run_id: String,
    /// Nodes created, to clean up on request.
    created: Vec<String>,
    /// Of those, the ones sent through deployment (need maintenance to delete).
    deployed: HashSet<String>,
}

fn progress(message: &str) {
    eprintln!("ferric-bench: {message}");
}

/// A short identifier that differs between runs (time and process).
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mixed = nanos ^ (u64::from(std::process::id()) << 40);
    format!("{:08x}", mixed & 0xffff_ffff)
}

impl Bench {
    pub fn new(endpoint: Endpoint, settings: Settings) -> Bench {
        Bench {
            endpoint: Arc::new(endpoint),
            settings,
            run_id: run_id(),
            created: Vec::new(),
            deployed: HashSet::new(),
        }
    }

    async fn connections(&self, count: usize) -> anyhow::Result<Vec<Connection>> {
        let mut connections = Vec::with_capacity(count);
        for _ in 0..count {
            connections.push(self.endpoint.connect().await?);
        }
        Ok(connections)
    }

    /// Runs a batch and remembers every node it created, also when it failed.
    async fn batch(
        &mut self,
        connections: Vec<Connection>,
        calls: Vec<Call>,
        on_conflict: OnConflict,
    ) -> Result<BatchRun, BatchFailure> {
        let creates = calls.iter().any(|c| matches!(c, Call::CreateNode { .. }));
        let result = run_batch(connections, calls, on_conflict).await;
        if creates {
            let done = match &result {
                Ok(run) => &run.done,
                Err(failure) => &failure.done,
            };
            self.created.extend(done.iter().map(|d| d.uuid.clone()));
        }
        result
    }

    fn create_calls(&self, kind: &str, count: usize, resource_class: Option<&str>) -> Vec<Call> {
        (0..count)
            .map(|i| Call::CreateNode {
                name: format!("bench-{}-{kind}-{i:05}", self.run_id),
                driver: self.settings.driver.clone(),
                driver_info: self.settings.driver_info.clone(),
                resource_class: resource_class.map(str::to_string),
            })
            .collect()
    }

    /// Everything, in order; stops at the first error.
    pub async fn measure(&mut self) -> anyhow::Result<Report> {
        let s = self.settings.clone();
        let mut control = self.endpoint.connect().await?;
        let versions = ironic::server_versions(&mut control)
            .await
            .context("the endpoint does not answer GET /v1 as Ironic does")?;
        let mut report = Report {
            url: self.endpoint.url.clone(),
            api_version: s.api_version.clone(),
            server_min_version: versions.min,
            server_max_version: versions.max,
            ..Report::default()
        };

        if s.nodes > 0 {
            progress(&format!("creating {} nodes with 1 client", s.nodes));
            report.creations_sequential = Some(self.create_nodes("seq", 1).await?);
            progress(&format!(
                "creating {} nodes with {} clients",
                s.nodes, s.clients
            ));
            report.creations_concurrent = Some(self.create_nodes("par", s.clients).await?);
        }
        if let Some(pid) = s.pid {
            report.memory_after_creations = Some(rss::read(pid)?.into());
        }

        if s.list_repeats > 0 {
            for (path, slot) in [
                (format!("/v1/nodes?limit={PAGE_LIMIT}"), &mut report.list),
                (
                    format!("/v1/nodes/detail?limit={PAGE_LIMIT}"),
                    &mut report.list_detail,
                ),
            ] {
                progress(&format!("GET {path}, {} times", s.list_repeats));
                *slot = Some(list_repeatedly(&mut control, &path, s.list_repeats).await?);
            }
        }

        if s.deploys > 0 {
            report.deploys = Some(self.deploy_simultaneously(&mut control).await?);
        }
        if let Some(pid) = s.pid {
            report.memory_at_end = Some(rss::read(pid)?.into());
        }
        report.check_targets();
        Ok(report)
    }

    async fn create_nodes(&mut self, kind: &str, clients: usize) -> anyhow::Result<Creations> {
        let nodes = self.settings.nodes;
        let connections = self.connections(clients.min(nodes)).await?;
        let calls = self.create_calls(kind, nodes, None);
        let run = self
            .batch(connections, calls, OnConflict::Fail)
            .await
            .with_context(|| format!("creating nodes with {clients} clients"))?;
        let samples = Samples::new(run.done.iter().map(|d| d.elapsed).collect());
        Ok(Creations {
            nodes,
            clients,
            seconds: round(run.elapsed.as_secs_f64(), 4),
            nodes_per_second: round(rate(nodes, run.elapsed), 1),
            latency: Latency::of(&samples).context("no creations")?,
        })
    }

    /// Creates nodes, brings them to `available` (untimed), then sends every
    /// `active` at once and polls until all are active.
    async fn deploy_simultaneously(&mut self, control: &mut Connection) -> anyhow::Result<Deploys> {
        let count = self.settings.deploys;
        let clients = self.settings.clients.min(count);
        let class = format!("bench-{}-deploy", self.run_id);
        progress(&format!(
            "preparing {count} nodes for deployment (untimed): create, manage, provide"
        ));
        let calls = self.create_calls("deploy", count, Some(&class));
        let created = self
            .batch(self.connections(clients).await?, calls, OnConflict::Fail)
            .await
            .context("creating the nodes to deploy")?;
        let uuids: Vec<String> = created.done.into_iter().map(|d| d.uuid).collect();
        self.deployed.extend(uuids.iter().cloned());

        for (target, reached) in [("manage", "manageable"), ("provide", "available")] {
            let calls = provision_calls(&uuids, target);
            self.batch(self.connections(clients).await?, calls, OnConflict::Retry)
                .await
                .with_context(|| format!("sending \"{target}\" to the nodes to deploy"))?;
            wait_for_state(
                control,
                &class,
                &uuids,
                reached,
                SETUP_POLL_INTERVAL,
                self.settings.wait_timeout,
            )
            .await
            .with_context(|| format!("waiting for the nodes to become {reached}"))?;
        }

        // One connection per deploy, opened and used once before the clock
        // starts, so the timed part is requests only.
        progress(&format!("deploying {count} nodes at once"));
        let mut connections = self.connections(count).await?;
        for conn in &mut connections {
            ironic::server_versions(conn).await?;
        }
        let calls = provision_calls(&uuids, "active");
        let wanted: HashSet<&str> = uuids.iter().map(String::as_str).collect();
        let interval = self.settings.poll_interval;
        let deadline = Instant::now() + self.settings.wait_timeout;

        let started = Instant::now();
        let mut requests = tokio::spawn(run_batch(connections, calls, OnConflict::Fail));
        let mut polls = 0;
        let mut requests_done: Option<BatchRun> = None;
        let all_active = loop {
            if requests_done.is_none() && requests.is_finished() {
                let run = (&mut requests)
                    .await
                    .context("the deploy request task died")?
                    .context("sending \"active\" to every node at once")?;
                requests_done = Some(run);
            }
            let states = ironic::node_states(control, &class, false).await?;
            polls += 1;
            let mine: Vec<&NodeState> = states
                .iter()
                .filter(|n| wanted.contains(n.uuid.as_str()))
                .collect();
            if mine.len() == count && mine.iter().all(|n| n.provision_state == "active") {
                break started.elapsed();
            }
            let failed: Vec<&str> = mine
                .iter()
                .filter(|n| ironic::is_failed_state(&n.provision_state))
                .map(|n| n.uuid.as_str())
                .collect();
            if !failed.is_empty() {
                bail!(explain_failures(control, &failed, "deploy").await);
            }
            if Instant::now() > deadline {
                bail!(
                    "not all {count} nodes were active after {:?}: {}",
                    self.settings.wait_timeout,
                    state_counts(&mine)
                );
            }
            tokio::time::sleep(interval).await;
        };
        let requests = match requests_done {
            Some(run) => run,
            None => requests
                .await
                .context("the deploy request task died")?
                .context("sending \"active\" to every node at once")?,
        };
        let samples = Samples::new(requests.done.iter().map(|d| d.elapsed).collect());
        Ok(Deploys {
            nodes: count,
            seconds_to_all_active: round(all_active.as_secs_f64(), 4),
            request_latency: Latency::of(&samples).context("no deploy requests")?,
            polls,
            poll_interval_ms: interval.as_millis() as u64,
        })
    }

    /// Deletes every node this run created: deployed ones go into
    /// maintenance first, since Ironic deletes an active node only then.
    pub async fn cleanup(&mut self) -> anyhow::Result<()> {
        if self.created.is_empty() {
            return Ok(());
        }
        progress(&format!(
            "deleting the {} nodes this run created",
            self.created.len()
        ));
        let clients = self.settings.clients.min(self.created.len());
        let maintenance: Vec<Call> = self
            .created
            .iter()
            .filter(|u| self.deployed.contains(*u))
            .map(|uuid| Call::Maintenance { uuid: uuid.clone() })
            .collect();
        if !maintenance.is_empty() {
            run_batch(
                self.connections(clients).await?,
                maintenance,
                OnConflict::Retry,
            )
            .await
            .context("putting the deployed nodes into maintenance")?;
        }
        let deletes = self
            .created
            .iter()
            .map(|uuid| Call::DeleteNode { uuid: uuid.clone() })
            .collect();
        run_batch(self.connections(clients).await?, deletes, OnConflict::Retry)
            .await
            .context("deleting the nodes")?;
        self.created.clear();
        self.deployed.clear();
        Ok(())
    }
}

fn provision_calls(uuids: &[String], target: &'static str) -> Vec<Call> {
    uuids
        .iter()
        .map(|uuid| Call::Provision {
            uuid: uuid.clone(),
            target,
        })
        .collect()
}

async fn list_repeatedly(
    conn: &mut Connection,
    path: &str,
    repeats: usize,
) -> anyhow::Result<ListTiming> {
    let mut times = Vec::with_capacity(repeats);
    let mut last = None;
    for _ in 0..repeats {
        let reply = ironic::get_list(conn, path).await?;
        times.push(reply.elapsed);
        last = Some(reply);
    }
    let last = last.context("no list requests")?;
    let nodes = ironic::count_nodes(path, &last)?;
    if nodes < PAGE_LIMIT {
        progress(&format!("note: {path} returned only {nodes} nodes"));
    }
    let samples = Samples::new(times);
    let stat = |d: Option<Duration>| round(d.map(millis).unwrap_or_default(), 3);
    Ok(ListTiming {
        path: path.to_string(),
        repeats,
        median_ms: stat(samples.median()),
        min_ms: stat(samples.min()),
        max_ms: stat(samples.max()),
        bytes: last.body.len(),
        nodes,
    })
}

/// Polls until every node in `uuids` shows `state`; fails on a failed state
/// or a node back in `enroll` with an error (a failed `manage`).
async fn wait_for_state(
    conn: &mut Connection,
    resource_class: &str,
    uuids: &[String],
    state: &str,
    interval: Duration,
    timeout: Duration,
) -> anyhow::Result<()> {
    let wanted: HashSet<&str> = uuids.iter().map(String::as_str).collect();
    let deadline = Instant::now() + timeout;
    loop {
        let states = ironic::node_states(conn, resource_class, true).await?;
        let mine: Vec<&NodeState> = states
            .iter()
            .filter(|n| wanted.contains(n.uuid.as_str()))
            .collect();
        if mine.len() == uuids.len() && mine.iter().all(|n| n.provision_state == state) {
            return Ok(());
        }
        if let Some(bad) = mine.iter().find(|n| {
            ironic::is_failed_state(&n.provision_state)
                || (n.provision_state == "enroll" && n.last_error.is_some())
        }) {
            bail!(
                "node {} is in \"{}\": {}",
                bad.uuid,
                bad.provision_state,
                bad.last_error.as_deref().unwrap_or("(no last_error)")
            );
        }
        if Instant::now() > deadline {
            bail!(
                "not all {} nodes reached \"{state}\" within {timeout:?}: {}",
                uuids.len(),
                state_counts(&mine)
            );
        }
        tokio::time::sleep(interval).await;
    }
}

/// "3 active, 97 deploying", for timeouts.
fn state_counts(nodes: &[&NodeState]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in nodes {
        *counts.entry(n.provision_state.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(s, c)| format!("{c} {s}")).collect();
    if parts.is_empty() {
        "none listed".to_string()
    } else {
        parts.join(", ")
    }
}

/// The states and last errors of (up to five of) the failed nodes.
async fn explain_failures(conn: &mut Connection, failed: &[&str], what: &str) -> String {
    const SHOWN: usize = 5;
    let mut lines = vec![format!("{} of the nodes failed to {what}:", failed.len())];
    for uuid in failed.iter().take(SHOWN) {
        lines.push(match ironic::node_state(conn, uuid).await {
            Ok(n) => format!(
                "  {uuid}: \"{}\", last_error: {}",
                n.provision_state,
                n.last_error.as_deref().unwrap_or("(none)")
            ),
            Err(e) => format!("  {uuid}: cannot read its state: {e}"),
        });
    }
    if failed.len() > SHOWN {
        lines.push(format!("  and {} more", failed.len() - SHOWN));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(uuid: &str, s: &str) -> NodeState {
        NodeState {
            uuid: uuid.into(),
            provision_state: s.into(),
            last_error: None,
        }
    }

    #[test]
    fn state_counts_are_sorted_by_state() {
        let nodes = [
            state("a", "deploying"),
            state("b", "active"),
            state("c", "deploying"),
        ];
        let refs: Vec<&NodeState> = nodes.iter().collect();
        assert_eq!(state_counts(&refs), "1 active, 2 deploying");
        assert_eq!(state_counts(&[]), "none listed");
    }

    #[test]
    fn run_ids_are_valid_in_node_names() {
        let id = run_id();
        assert_eq!(id.len(), 8);
        assert!(id
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
