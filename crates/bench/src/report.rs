//! The figures of one run, their targets, and how they are printed.

use crate::rss::MemoryUsage;
use crate::stats::{millis, round, Samples};
use serde::Serialize;
use std::fmt::Write as _;

/// Figures Ferric aims for on a 2-core machine with SQLite.
pub const TARGET_CREATIONS_PER_SECOND: f64 = 1500.0;
pub const TARGET_DETAIL_LIST_MS: f64 = 20.0;
pub const TARGET_DEPLOY_SECONDS: f64 = 1.0;
pub const TARGET_PEAK_RSS_MIB: f64 = 60.0;

/// Everything one run measured; absent parts were not measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub url: String,
    pub api_version: String,
    pub server_min_version: Option<String>,
    pub server_max_version: Option<String>,
    pub creations_sequential: Option<Creations>,
    pub creations_concurrent: Option<Creations>,
    pub list: Option<ListTiming>,
    pub list_detail: Option<ListTiming>,
    pub deploys: Option<Deploys>,
    pub memory_after_creations: Option<Memory>,
    pub memory_at_end: Option<Memory>,
    pub targets: Vec<TargetCheck>,
}

/// Latency percentiles of many requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(samples: &Samples) -> Option<Latency> {
        Some(Latency {
            p50_ms: round(millis(samples.percentile(50.0)?), 3),
            p99_ms: round(millis(samples.percentile(99.0)?), 3),
            max_ms: round(millis(samples.max()?), 3),
        })
    }
}

/// A batch of `POST /v1/nodes`.
#[derive(Debug, Clone, Serialize)]
pub struct Creations {
    pub nodes: usize,
    pub clients: usize,
    pub seconds: f64,
    pub nodes_per_second: f64,
    pub latency: Latency,
}

/// Repeated `GET` of one node list.
#[derive(Debug, Clone, Serialize)]
pub struct ListTiming {
    pub path: String,
    pub repeats: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Body size of the response.
    pub bytes: usize,
    /// Nodes in the response.
    pub nodes: usize,
}

/// Simultaneous deploys, from the first `active` request to all nodes active.
#[derive(Debug, Clone, Serialize)]
pub struct Deploys {
    pub nodes: usize,
    pub seconds_to_all_active: f64,
    /// Latency of the `PUT .../states/provision` requests (202).
    pub request_latency: Latency,
    /// State polls until all were active, and their interval.
    pub polls: usize,
    pub poll_interval_ms: u64,
}

/// Server memory at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Memory {
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

impl From<MemoryUsage> for Memory {
    fn from(m: MemoryUsage) -> Self {
        Memory {
            rss_mib: round(m.rss_mib(), 2),
            peak_rss_mib: round(m.peak_mib(), 2),
        }
    }
}

/// Which figure a target is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ConcurrentCreationsPerSecond,
    DetailListMedianMs,
    DeploySeconds,
    PeakRssMib,
}

/// One figure against its target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCheck {
    pub metric: Metric,
    pub value: f64,
    /// E.g. ">= 1500 nodes/s".
    pub target: String,
    pub passed: bool,
}

fn at_least(metric: Metric, value: f64, limit: f64, unit: &str) -> TargetCheck {
    TargetCheck {
        metric,
        value,
        target: format!(">= {limit} {unit}"),
        passed: value >= limit,
    }
}

fn at_most(metric: Metric, value: f64, limit: f64, unit: &str) -> TargetCheck {
    TargetCheck {
        metric,
        value,
        target: format!("<= {limit} {unit}"),
        passed: value <= limit,
    }
}

impl Report {
    /// Compares the measured figures with the targets (fills `targets`).
    pub fn check_targets(&mut self) {
        let mut checks = Vec::new();
        if let Some(c) = &self.creations_concurrent {
            checks.push(at_least(
                Metric::ConcurrentCreationsPerSecond,
                c.nodes_per_second,
                TARGET_CREATIONS_PER_SECOND,
                "nodes/s",
            ));
        }
        if let Some(l) = &self.list_detail {
            checks.push(at_most(
                Metric::DetailListMedianMs,
                l.median_ms,
                TARGET_DETAIL_LIST_MS,
                "ms",
            ));
        }
        if let Some(d) = &self.deploys {
            checks.push(at_most(
                Metric::DeploySeconds,
                d.seconds_to_all_active,
                TARGET_DEPLOY_SECONDS,
                "s",
            ));
        }
        // The high-water mark: the most the server ever held, not a lucky moment.
        if let Some(m) = &self.memory_at_end {
            checks.push(at_most(
                Metric::PeakRssMib,
                m.peak_rss_mib,
                TARGET_PEAK_RSS_MIB,
                "MiB peak",
            ));
        }
        self.targets = checks;
    }

    fn target(&self, metric: Metric) -> Option<&TargetCheck> {
        self.targets.iter().find(|t| t.metric == metric)
    }

    /// The report as a table for people.
    pub fn to_text(&self) -> String {
        let mut out = format!("ferric-bench: {} (API {}", self.url, self.api_version);
        if let (Some(min), Some(max)) = (&self.server_min_version, &self.server_max_version) {
            let _ = write!(out, "; server speaks {min} to {max}");
        }
        out.push_str(")\n\n");

        let mut rows = vec![row("measurement", "result", "target", "check")];
        let mut with_target = |measurement: String, result: String, metric: Option<Metric>| {
            let check = metric.and_then(|m| self.target(m));
            rows.push(row(
                &measurement,
                &result,
                check.map_or("", |c| c.target.as_str()),
                check.map_or("", |c| if c.passed { "PASS" } else { "FAIL" }),
            ));
        };
        for (creations, metric) in [
            (&self.creations_sequential, None),
            (
                &self.creations_concurrent,
                Some(Metric::ConcurrentCreationsPerSecond),
            ),
        ] {
            if let Some(c) = creations {
                with_target(
                    format!("create {} nodes, {}", c.nodes, plural(c.clients, "client")),
                    format!(
                        "{:.0} nodes/s ({:.2} s); p50 {}, p99 {}",
                        c.nodes_per_second,
                        c.seconds,
                        ms(c.latency.p50_ms),
                        ms(c.latency.p99_ms)
                    ),
                    metric,
                );
            }
        }
        for (list, metric) in [
            (&self.list, None),
            (&self.list_detail, Some(Metric::DetailListMedianMs)),
        ] {
            if let Some(l) = list {
                with_target(
                    format!("GET {} x{}", l.path, l.repeats),
                    format!(
                        "median {} (min {}, max {}); {}, {}",
                        ms(l.median_ms),
                        ms(l.min_ms),
                        ms(l.max_ms),
                        plural(l.nodes, "node"),
                        bytes(l.bytes)
                    ),
                    metric,
                );
            }
        }
        if let Some(d) = &self.deploys {
            with_target(
                format!("{} simultaneous deploys to active", d.nodes),
                format!(
                    "{:.3} s; PUT p50 {}, p99 {}; {}",
                    d.seconds_to_all_active,
                    ms(d.request_latency.p50_ms),
                    ms(d.request_latency.p99_ms),
                    plural(d.polls, "poll"),
                ),
                Some(Metric::DeploySeconds),
            );
        }
        for (label, memory, metric) in [
            (
                "server RSS after creations",
                &self.memory_after_creations,
                None,
            ),
            (
                "server RSS at end",
                &self.memory_at_end,
                Some(Metric::PeakRssMib),
            ),
        ] {
            if let Some(m) = memory {
                with_target(
                    label.to_string(),
                    format!("{:.1} MiB (peak {:.1} MiB)", m.rss_mib, m.peak_rss_mib),
                    metric,
                );
            }
        }
        out.push_str(&table(&rows));

        let passed = self.targets.iter().filter(|t| t.passed).count();
        let _ = writeln!(out, "\ntargets met: {passed} of {}", self.targets.len());
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }
}

fn row(a: &str, b: &str, c: &str, d: &str) -> Vec<String> {
    [a, b, c, d].map(str::to_string).to_vec()
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Milliseconds with three significant digits or so.
pub fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2} ms")
    } else if value < 100.0 {
        format!("{value:.1} ms")
    } else {
        format!("{value:.0} ms")
    }
}

/// A size in B, KiB or MiB.
pub fn bytes(n: usize) -> String {
    const KIB: f64 = 1024.0;
    let f = n as f64;
    if f < KIB {
        format!("{n} B")
    } else if f < KIB * KIB {
        format!("{:.1} KiB", f / KIB)
    } else {
        format!("{:.2} MiB", f / KIB / KIB)
    }
}

/// Left-aligned columns two spaces apart, a rule under the first row, no
/// trailing spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(&widths) {
            let _ = write!(text, "{cell:<width$}  ");
        }
        text.trim_end().to_string()
    };
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        out.push_str(&line(r));
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths
                .iter()
                .filter(|w| **w > 0)
                .map(|w| "-".repeat(*w))
                .collect();
            out.push_str(&line(&rule));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(p50: f64, p99: f64) -> Latency {
        Latency {
            p50_ms: p50,
            p99_ms: p99,
            max_ms: p99 + 1.0,
        }
    }

    fn full_report() -> Report {
        let mut r = Report {
            url: "http://127.0.0.1:6385".into(),
            api_version: "1.95".into(),
            server_min_version: Some("1.1".into()),
            server_max_version: Some("1.95".into()),
            creations_sequential: Some(Creations {
                nodes: 1000,
                clients: 1,
                seconds: 1.25,
                nodes_per_second: 800.0,
                latency: latency(1.17, 2.3),
            }),
            creations_concurrent: Some(Creations {
                nodes: 1000,
                clients: 8,
                seconds: 0.58,
                nodes_per_second: 1724.1,
                latency: latency(4.5, 9.81),
            }),
            list: Some(ListTiming {
                path: "/v1/nodes?limit=1000".into(),
                repeats: 20,
                median_ms: 6.1,
                min_ms: 5.8,
                max_ms: 7.0,
                bytes: 215_347,
                nodes: 1000,
            }),
            list_detail: Some(ListTiming {
                path: "/v1/nodes/detail?limit=1000".into(),
                repeats: 20,
                median_ms: 23.4,
                min_ms: 21.0,
                max_ms: 130.2,
                bytes: 2_202_009,
                nodes: 1000,
            }),
            deploys: Some(Deploys {
                nodes: 100,
                seconds_to_all_active: 0.4123,
                request_latency: latency(2.1, 8.0),
                polls: 21,
                poll_interval_ms: 20,
            }),
            memory_after_creations: Some(Memory {
                rss_mib: 35.2,
                peak_rss_mib: 38.0,
            }),
            memory_at_end: Some(Memory {
                rss_mib: 40.12,
                peak_rss_mib: 45.0,
            }),
            targets: Vec::new(),
        };
        r.check_targets();
        r
    }

    #[test]
    fn targets_are_checked_in_both_directions() {
        let r = full_report();
        let verdicts: Vec<(Metric, bool)> =
            r.targets.iter().map(|t| (t.metric, t.passed)).collect();
        assert_eq!(
            verdicts,
            vec![
                (Metric::ConcurrentCreationsPerSecond, true),
                (Metric::DetailListMedianMs, false),
                (Metric::DeploySeconds, true),
                (Metric::PeakRssMib, true),
            ]
        );
        assert!(at_least(Metric::DeploySeconds, 5.0, 5.0, "x").passed);
        assert!(at_most(Metric::DeploySeconds, 5.0, 5.0, "x").passed);
        assert!(!at_most(Metric::DeploySeconds, 5.01, 5.0, "x").passed);
    }

    #[test]
    fn text_report() {
        let expected = "\
ferric-bench: http://127.0.0.1:6385 (API 1.95; server speaks 1.1 to 1.95)

measurement                          result                                                            target           check
-----------------------------------  ----------------------------------------------------------------  ---------------  -----
create 1000 nodes, 1 client          800 nodes/s (1.25 s); p50 1.17 ms, p99 2.30 ms
create 1000 nodes, 8 clients         1724 nodes/s (0.58 s); p50 4.50 ms, p99 9.81 ms                   >= 1500 nodes/s  PASS
GET /v1/nodes?limit=1000 x20         median 6.10 ms (min 5.80 ms, max 7.00 ms); 1000 nodes, 210.3 KiB
GET /v1/nodes/detail?limit=1000 x20  median 23.4 ms (min 21.0 ms, max 130 ms); 1000 nodes, 2.10 MiB    <= 20 ms         FAIL
100 simultaneous deploys to active   0.412 s; PUT p50 2.10 ms, p99 8.00 ms; 21 polls                   <= 1 s           PASS
server RSS after creations           35.2 MiB (peak 38.0 MiB)
server RSS at end                    40.1 MiB (peak 45.0 MiB)                                          <= 60 MiB peak   PASS

targets met: 3 of 4
";
        assert_eq!(full_report().to_text(), expected);
    }

    #[test]
    fn json_report_has_every_figure() {
        let v: serde_json::Value = serde_json::from_str(&full_report().to_json()).unwrap();
        assert_eq!(v["creations_concurrent"]["nodes_per_second"], 1724.1);
        assert_eq!(v["list_detail"]["median_ms"], 23.4);
        assert_eq!(v["deploys"]["seconds_to_all_active"], 0.4123);
        assert_eq!(v["memory_at_end"]["peak_rss_mib"], 45.0);
        assert_eq!(v["targets"][1]["metric"], "detail_list_median_ms");
        assert_eq!(v["targets"][1]["target"], "<= 20 ms");
        assert_eq!(v["targets"][1]["passed"], false);
        assert_eq!(v["targets"][0]["target"], ">= 1500 nodes/s");
    }

    #[test]
    fn unmeasured_parts_are_left_out() {
        let mut r = Report {
            url: "http://h".into(),
            api_version: "1.95".into(),
            ..Report::default()
        };
        r.check_targets();
        assert_eq!(
            r.to_text(),
            "ferric-bench: http://h (API 1.95)\n\nmeasurement  result  target  check\n-----------  ------  ------  -----\n\ntargets met: 0 of 0\n"
        );
    }

    #[test]
    fn number_formats() {
        assert_eq!(ms(1.234), "1.23 ms");
        assert_eq!(ms(12.34), "12.3 ms");
        assert_eq!(ms(123.4), "123 ms");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(215_347), "210.3 KiB");
        assert_eq!(bytes(2_202_009), "2.10 MiB");
        assert_eq!(plural(1, "node"), "1 node");
        assert_eq!(plural(0, "node"), "0 nodes");
    }

    #[test]
    fn table_aligns_columns_and_trims() {
        let rows = vec![row("a", "bb", "", ""), row("ccc", "d", "e", "")];
        assert_eq!(table(&rows), "a    bb\n---  --  -\nccc  d   e\n");
    }
}
