//! Heartbeats that race with the end of the operation they belong to.

use ferric_conductor::{Conductor, ConductorConfig, Heartbeat, AGENT_TOKEN_KEY};
use ferric_store::{NodeIdent, Store};
use ferric_types::{Node, ProvisionState};
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

/// A heartbeat that waits for the node's lock while the cleaning it came
/// from ends and a deploy begins must not speak for the deploy: the deploy's
/// agent has not looked up, so the old token is no longer good.
#[tokio::test]
async fn a_heartbeat_outlived_by_its_operation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("c.sqlite").display());
    let store = Store::connect(&url).await.unwrap();
    let conductor = Conductor::start(
        store.clone(),
        ConductorConfig {
            hostname: "c1".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // The heartbeat must have read the node (token still good) before the
    // operation ends, and reach the lock after: a matter of timing on a
    // busy machine, so the scenario is tried until the heartbeat was
    // caught by the check it makes under the lock (its own message).
    let mut caught_under_the_lock = false;
    for _attempt in 0..20 {
        let mut node = Node::new(Uuid::new_v4(), "fake-hardware", ProvisionState::CleanWait);
        node.target_provision_state = Some(ProvisionState::Available);
        node.driver_internal_info.insert(
            AGENT_TOKEN_KEY.into(),
            Value::String("cleaning-token".into()),
        );
        store.create_node(&node).await.unwrap();
        let ident = NodeIdent::Uuid(node.uuid);
        // Another task holds the node: the heartbeat will wait for it.
        let mut held = store.reserve_node(&ident, "elsewhere").await.unwrap();
        let beat = {
            let conductor = conductor.clone();
            let ident = ident.clone();
            tokio::spawn(async move {
                conductor
                    .heartbeat(
                        &ident,
                        Heartbeat {
                            callback_url: "http://192.0.2.1:9999".into(),
                            agent_token: Some("cleaning-token".into()),
                            agent_version: Some("1.0".into()),
                            ..Heartbeat::default()
                        },
                    )
                    .await
            })
        };
        // While it waits, cleaning ends (the token is forgotten) and the
        // next deploy reaches its wait for a new agent.
        tokio::time::sleep(Duration::from_millis(10)).await;
        held.driver_internal_info.remove(AGENT_TOKEN_KEY);
        held.provision_state = ProvisionState::WaitCallBack;
        held.target_provision_state = Some(ProvisionState::Active);
        store.update_node(&held, "elsewhere").await.unwrap();
        store.release_node(node.uuid, "elsewhere").await.unwrap();

        let refused = beat.await.unwrap().unwrap_err().to_string();
        assert!(refused.contains("agent token"), "{refused}");
        let after = store.get_node(&ident).await.unwrap();
        assert_eq!(after.provision_state, ProvisionState::WaitCallBack);
        assert!(!after.driver_internal_info.contains_key("agent_url"));
        assert_eq!(after.reservation, None, "the lock is released");
        if refused.contains("has ended") {
            caught_under_the_lock = true;
            break;
        }
    }
    assert!(
        caught_under_the_lock,
        "the heartbeat never waited for the lock in 20 tries"
    );
}

/// Powering a node off (or rebooting it) ends its agent: the token and the
/// agent's address are forgotten, unless the token was generated ahead of
/// time for the next boot.
#[tokio::test]
async fn a_power_off_forgets_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("c.sqlite").display());
    let store = Store::connect(&url).await.unwrap();
    let conductor = Conductor::start(
        store.clone(),
        ConductorConfig {
            hostname: "c1".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut idents = Vec::new();
    for pregenerated in [false, true] {
        let mut node = Node::new(
            Uuid::new_v4(),
            "fake-hardware",
            ProvisionState::WaitCallBack,
        );
        node.target_provision_state = Some(ProvisionState::Active);
        let info = &mut node.driver_internal_info;
        info.insert(AGENT_TOKEN_KEY.into(), Value::String("tok".into()));
        info.insert(
            "agent_secret_token_pregenerated".into(),
            Value::Bool(pregenerated),
        );
        info.insert(
            "agent_url".into(),
            Value::String("https://192.0.2.9:9999".into()),
        );
        info.insert("agent_verify_ca".into(), Value::String("PEM".into()));
        store.create_node(&node).await.unwrap();
        let ident = NodeIdent::Uuid(node.uuid);
        conductor
            .set_power_state(&ident, ferric_types::PowerState::Off, None)
            .await
            .unwrap();
        idents.push(ident);
    }
    for (ident, keeps_token) in idents.iter().zip([false, true]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let node = loop {
            let node = store.get_node(ident).await.unwrap();
            if node.target_power_state.is_none() && node.reservation.is_none() {
                break node;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "power action never ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let info = &node.driver_internal_info;
        assert_eq!(node.power_state, Some(ferric_types::PowerState::Off));
        assert_eq!(info.contains_key(AGENT_TOKEN_KEY), keeps_token, "{info:?}");
        assert!(!info.contains_key("agent_url"), "{info:?}");
        assert!(!info.contains_key("agent_verify_ca"), "{info:?}");
    }
}
