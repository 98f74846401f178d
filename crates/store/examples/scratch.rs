use ferric_types::{Node, PowerState, ProvisionState};
use serde_json::json;
use std::time::Instant;
use uuid::Uuid;
include!("/tmp/full_node.rs");

fn main() {
    let nodes: Vec<Node> = (0..1000).map(full_node).collect();
    let texts: Vec<String> = nodes.iter().map(|n| serde_json::to_string(n).unwrap()).collect();
    let mut best = f64::MAX;
    for _ in 0..200 {
        let t = Instant::now();
        let parsed: Vec<Node> = texts.iter().map(|s| serde_json::from_str(s).unwrap()).collect();
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(parsed.len(), 1000);
    }
    println!("parse 1000 best: {:.2} ms", best * 1e3);
    let mut best = f64::MAX;
    for _ in 0..50 {
        let t = Instant::now();
        let s: usize = nodes.iter().map(|n| serde_json::to_string(n).unwrap().len()).sum();
        best = best.min(t.elapsed().as_secs_f64());
        assert!(s > 0);
    }
    println!("serialize 1000 best: {:.2} ms", best * 1e3);
}
