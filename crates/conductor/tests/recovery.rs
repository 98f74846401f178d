//! What the conductor does with nodes a dead or restarted conductor left.

use ferric_conductor::{Conductor, ConductorConfig};
use ferric_store::{NodeIdent, Store};
use ferric_types::{Node, PowerState, ProvisionState};
use std::time::Duration;
use uuid::Uuid;

async fn store(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}", dir.path().join("c.sqlite").display());
    Store::connect(&url).await.unwrap()
}

fn config(hostname: &str) -> ConductorConfig {
    ConductorConfig {
        hostname: hostname.into(),
        ..Default::default()
    }
}

/// Stores a node in `state`, locked by `holder`.
async fn locked_node(
    store: &Store,
    state: ProvisionState,
    target: Option<ProvisionState>,
    holder: &str,
) -> Uuid {
    let mut node = Node::new(Uuid::new_v4(), "fake-hardware", state);
    node.target_provision_state = target;
    store.create_node(&node).await.unwrap();
    store
        .reserve_node(&NodeIdent::Uuid(node.uuid), holder)
        .await
        .unwrap();
    node.uuid
}

async fn get(store: &Store, uuid: Uuid) -> Node {
    store.get_node(&NodeIdent::Uuid(uuid)).await.unwrap()
}

#[tokio::test]
async fn a_restarted_conductor_fails_what_it_was_doing_and_keeps_waiting_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let deploying = locked_node(
        &store,
        ProvisionState::Deploying,
        Some(ProvisionState::Active),
        "c1",
    )
    .await;
    let cleaning = locked_node(
        &store,
        ProvisionState::Cleaning,
        Some(ProvisionState::Available),
        "c1",
    )
    .await;
    let verifying = locked_node(
        &store,
        ProvisionState::Verifying,
        Some(ProvisionState::Manageable),
        "c1",
    )
    .await;
    let other = locked_node(
        &store,
        ProvisionState::Deploying,
        Some(ProvisionState::Active),
        "c2",
    )
    .await;
    let mut waiting = Node::new(
        Uuid::new_v4(),
        "fake-hardware",
        ProvisionState::WaitCallBack,
    );
    waiting.target_provision_state = Some(ProvisionState::Active);
    store.create_node(&waiting).await.unwrap();
    let mut powering = Node::new(Uuid::new_v4(), "fake-hardware", ProvisionState::Available);
    powering.target_power_state = Some(PowerState::On);
    store.create_node(&powering).await.unwrap();
    store
        .reserve_node(&NodeIdent::Uuid(powering.uuid), "c1")
        .await
        .unwrap();

    let _conductor = Conductor::start(store.clone(), config("c1")).await.unwrap();

    for (uuid, expect) in [
        (deploying, ProvisionState::DeployFailed),
        (cleaning, ProvisionState::CleanFailed),
        (verifying, ProvisionState::Enroll),
    ] {
        let n = get(&store, uuid).await;
        assert_eq!(n.provision_state, expect);
        assert_eq!(n.reservation, None, "lock released");
        let err = n.last_error.unwrap_or_default();
        assert!(err.contains("c1") && err.contains("restarted"), "{err}");
    }
    let w = get(&store, waiting.uuid).await;
    assert_eq!(
        w.provision_state,
        ProvisionState::WaitCallBack,
        "wait states go on"
    );
    let p = get(&store, powering.uuid).await;
    assert_eq!((p.target_power_state, p.reservation), (None, None));
    let o = get(&store, other).await;
    assert_eq!(
        o.provision_state,
        ProvisionState::Deploying,
        "another conductor's work is its own"
    );
    assert_eq!(o.reservation.as_deref(), Some("c2"));
}

#[tokio::test]
async fn a_dead_conductors_locks_are_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    store.register_conductor("dead", "", &[]).await.unwrap();
    let node = locked_node(
        &store,
        ProvisionState::Cleaning,
        Some(ProvisionState::Available),
        "dead",
    )
    .await;
    let mut cfg = config("alive");
    cfg.dead_conductor_after = Duration::from_secs(1);
    let conductor = Conductor::start(store.clone(), cfg).await.unwrap();
    assert_eq!(
        get(&store, node).await.reservation.as_deref(),
        Some("dead"),
        "not dead yet"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    conductor.heartbeat_and_takeover().await.unwrap();
    let n = get(&store, node).await;
    assert_eq!(n.provision_state, ProvisionState::CleanFailed);
    assert_eq!(n.reservation, None);
    assert!(n.last_error.unwrap().contains("dead"));
    assert_eq!(conductor.owner_of(node).as_deref(), Some("alive"));
}

#[tokio::test]
async fn waiting_too_long_fails_the_node_and_powers_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let mut node = Node::new(Uuid::new_v4(), "fake-hardware", ProvisionState::Available);
    node.driver_info
        .insert("fake_wait".into(), serde_json::json!(["deploy"]));
    store.create_node(&node).await.unwrap();
    let mut cfg = config("c1");
    cfg.deploy_callback_timeout = Duration::from_millis(300);
    let conductor = Conductor::start(store.clone(), cfg).await.unwrap();
    let mut n = get(&store, node.uuid).await;
    conductor.registry().resolve_interfaces(&mut n).unwrap();
    store.update_node(&n, "c1").await.unwrap();
    conductor
        .provision(
            &NodeIdent::Uuid(node.uuid),
            ferric_conductor::ProvisionRequest::new(ferric_state_machine::Verb::Active),
        )
        .await
        .unwrap();
    let mut state = ProvisionState::Deploying;
    for _ in 0..100 {
        let n = get(&store, node.uuid).await;
        state = n.provision_state;
        if state == ProvisionState::WaitCallBack && n.reservation.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, ProvisionState::WaitCallBack);
    conductor.fail_timed_out_callbacks().await.unwrap();
    assert_eq!(
        get(&store, node.uuid).await.provision_state,
        ProvisionState::WaitCallBack,
        "too early"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    conductor.fail_timed_out_callbacks().await.unwrap();
    let n = get(&store, node.uuid).await;
    assert_eq!(n.provision_state, ProvisionState::DeployFailed);
    assert_eq!(n.power_state, Some(PowerState::Off));
    assert!(n
        .last_error
        .unwrap()
        .contains("Timeout reached while waiting for callback"));
}

#[tokio::test]
async fn power_sync_marks_a_power_failure_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let mut cfg = config("c1");
    cfg.power_failure_threshold = 2;
    let conductor = Conductor::start(store.clone(), cfg).await.unwrap();
    let mut node = Node::new(Uuid::new_v4(), "fake-hardware", ProvisionState::Manageable);
    node.power_state = Some(PowerState::Off);
    node.driver_info
        .insert("fake_fail".into(), serde_json::json!(["power"]));
    let node = conductor.create_node(node).await.unwrap();
    let mut failures = std::collections::HashMap::new();
    conductor.sync_power_states(&mut failures).await.unwrap();
    assert!(
        !get(&store, node.uuid).await.maintenance,
        "one failure is not enough"
    );
    conductor.sync_power_states(&mut failures).await.unwrap();
    let n = get(&store, node.uuid).await;
    assert!(n.maintenance);
    assert_eq!(n.fault.as_deref(), Some("power failure"));
    assert_eq!(n.power_state, None);

    // The BMC answers again: out of maintenance by itself.
    let mut fixed = n.clone();
    fixed.driver_info.remove("fake_fail");
    store.update_node(&fixed, "c1").await.unwrap();
    conductor.sync_power_states(&mut failures).await.unwrap();
    let n = get(&store, node.uuid).await;
    assert!(!n.maintenance);
    assert_eq!(n.fault, None);
    assert_eq!(n.power_state, Some(PowerState::Off));
}
