//! Times the store's hot paths: node creation from one task and from eight
//! concurrent tasks, and listing 1,000 full nodes.
//!
//!   cargo run --release -p ferric-store --example store_speed [DATABASE_URL]
//!
//! Without a URL it uses a new SQLite file in a temporary directory. With a
//! PostgreSQL URL it works in a schema of its own and drops it at the end.

use ferric_store::{NodeIdent, NodeQuery, Store};
use ferric_types::{Node, PowerState, ProvisionState};
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use std::time::{Duration, Instant};
use uuid::Uuid;

const SINGLE: usize = 2_000;
const TASKS: usize = 8;
const PER_TASK: usize = 500;
const LISTED: u32 = 1_000;
const LIST_ROUNDS: usize = 30;

/// A node with the fields an enrolled, inspected server has.
fn full_node(i: usize) -> Node {
    let mut node = Node::new(Uuid::new_v4(), "ipmi", ProvisionState::Available);
    node.name = Some(format!("rack{}-node{i}", i % 40));
    node.power_state = Some(PowerState::Off);
    node.resource_class = Some("baremetal-large".into());
    node.conductor_group = "east".into();
    node.owner = Some("0f1e2d3c4b5a69788796a5b4c3d2e1f0".into());
    node.traits = vec!["CUSTOM_GPU".into(), "HW_CPU_X86_AVX2".into()];
    for (key, value) in [
        (
            "ipmi_address",
            json!(format!("10.20.{}.{}", i / 250, i % 250)),
        ),
        ("ipmi_username", json!("admin")),
        ("ipmi_port", json!(623)),
        ("deploy_kernel", json!("http://images.example/ipa.kernel")),
        (
            "deploy_ramdisk",
            json!("http://images.example/ipa.initramfs"),
        ),
    ] {
        node.driver_info.insert(key.into(), value);
    }
    for (key, value) in [
        ("cpus", json!(64)),
        ("memory_mb", json!(524_288)),
        ("local_gb", json!(1_800)),
        ("cpu_arch", json!("x86_64")),
        ("capabilities", json!("boot_mode:uefi,secure_boot:true")),
        ("vendor", json!("Example Systems")),
    ] {
        node.properties.insert(key.into(), value);
    }
    node.driver_internal_info.insert(
        "agent_last_heartbeat".into(),
        json!("2026-11-22T10:00:00.000000+00:00"),
    );
    node.driver_internal_info
        .insert("is_whole_disk_image".into(), json!(true));
    node.extra.insert("rack_unit".into(), json!(i % 42));
    node.instance_info.insert(
        "image_source".into(),
        json!("http://images.example/ubuntu-24.04.qcow2"),
    );
    for interface in ["boot", "deploy", "management", "power", "network"] {
        node.set_interface(interface, Some(format!("{interface}-default")));
    }
    node
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

async fn measure(store: &Store) {
    let nodes: Vec<Node> = (0..SINGLE).map(full_node).collect();
    let bytes = serde_json::to_string(&nodes[0]).unwrap().len();
    println!("backend {}, node JSON {bytes} bytes", store.backend());

    let start = Instant::now();
    for node in &nodes {
        store.create_node(node).await.unwrap();
    }
    let elapsed = start.elapsed();
    println!(
        "create, 1 task:   {SINGLE} nodes in {:.0} ms = {:.0}/s ({:.0} us each)",
        elapsed.as_secs_f64() * 1e3,
        per_second(SINGLE, elapsed),
        elapsed.as_secs_f64() * 1e6 / SINGLE as f64
    );

    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let node = full_node(SINGLE + t * PER_TASK + i);
                    store.create_node(&node).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    let count = TASKS * PER_TASK;
    println!(
        "create, {TASKS} tasks:  {count} nodes in {:.0} ms = {:.0}/s",
        elapsed.as_secs_f64() * 1e3,
        per_second(count, elapsed)
    );

    let by_id = NodeQuery {
        limit: Some(LISTED),
        ..Default::default()
    };
    let by_name = NodeQuery {
        limit: Some(LISTED),
        sort_key: Some("name".into()),
        marker: Some(nodes[100].uuid),
        ..Default::default()
    };
    for (what, query) in [("", by_id), (" sorted by name after a marker", by_name)] {
        let mut times = Vec::new();
        for _ in 0..LIST_ROUNDS {
            let start = Instant::now();
            let listed = store.list_nodes(&query).await.unwrap();
            times.push(start.elapsed());
            assert_eq!(listed.len(), LISTED as usize);
        }
        times.sort();
        println!(
            "list {LISTED} nodes{what}: median {:.2} ms, best {:.2} ms",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3
        );
    }

    let start = Instant::now();
    for node in &nodes[..500] {
        let ident = NodeIdent::Uuid(node.uuid);
        let mut locked = store.reserve_node(&ident, "speed").await.unwrap();
        locked.power_state = Some(PowerState::On);
        store
            .update_and_release_node(&locked, "speed")
            .await
            .unwrap();
    }
    println!(
        "reserve + update_and_release, 1 task: {:.0} us a cycle",
        start.elapsed().as_secs_f64() * 1e6 / 500.0
    );
}

#[tokio::main]
async fn main() {
    let url = std::env::args().nth(1);
    match url {
        None => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("speed.sqlite").display());
            measure(&Store::connect(&url).await.unwrap()).await;
        }
        Some(url) if url.starts_with("postgres") => {
            let schema = format!("speed_{}", Uuid::new_v4().simple());
            let mut admin = PgConnection::connect(&url).await.unwrap();
            admin
                .execute(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .await
                .unwrap();
            let separator = if url.contains('?') { '&' } else { '?' };
            let scoped = format!("{url}{separator}options=-c%20search_path%3D{schema}");
            let store = Store::connect(&scoped).await.unwrap();
            measure(&store).await;
            store.close().await;
            admin
                .execute(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .await
                .unwrap();
        }
        Some(url) => measure(&Store::connect(&url).await.unwrap()).await,
    }
}
