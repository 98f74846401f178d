//! The store's contract, on SQLite and (when configured) PostgreSQL.

mod support;

use ferric_store::{NodeIdent, NodeQuery, PortQuery, SortDir, Store, StoreError, NODE_SORT_KEYS};
use ferric_types::{Node, Port, ProvisionState, Timestamp};
use serde_json::json;
use support::on_each_backend;
use uuid::Uuid;

fn node(name: Option<&str>) -> Node {
    let mut node = Node::new(Uuid::new_v4(), "fake-hardware", ProvisionState::Enroll);
    node.name = name.map(str::to_string);
    node
}

fn port(address: &str, node: &Node) -> Port {
    Port::new(Uuid::new_v4(), address, node.uuid)
}

/// `value` as a store keeps it: timestamps to the microsecond.
fn as_stored<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    serde_json::from_value(serde_json::to_value(value).unwrap()).unwrap()
}

fn uuids(nodes: &[Node]) -> Vec<Uuid> {
    nodes.iter().map(|n| n.uuid).collect()
}

fn conflict_message(result: Result<impl std::fmt::Debug, StoreError>) -> String {
    match result {
        Err(StoreError::Conflict(message)) => message,
        other => panic!("expected a Conflict, got {other:?}"),
    }
}

fn locked_by(result: Result<Node, StoreError>) -> String {
    match result {
        Err(StoreError::NodeLocked { holder, .. }) => holder,
        other => panic!("expected NodeLocked, got {other:?}"),
    }
}

#[tokio::test]
async fn nodes_are_found_by_uuid_and_by_name() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let mut created = node(Some("rack1-node1"));
        created
            .driver_info
            .insert("ipmi_address".into(), json!("10.0.0.7"));
        created.properties.insert("cpus".into(), json!(16));
        created.traits = vec!["CUSTOM_GPU".into()];
        store.create_node(&created).await.unwrap();

        let created = as_stored(&created);
        let by_uuid = store
            .get_node(&NodeIdent::Uuid(created.uuid))
            .await
            .unwrap();
        assert_eq!(by_uuid, created);
        let by_name = store
            .get_node(&NodeIdent::parse("rack1-node1"))
            .await
            .unwrap();
        assert_eq!(by_name, created);

        let missing = Uuid::new_v4();
        match store.get_node(&NodeIdent::Uuid(missing)).await {
            Err(StoreError::NodeNotFound(what)) => assert_eq!(what, missing.to_string()),
            other => panic!("expected NodeNotFound, got {other:?}"),
        }
        match store.get_node(&NodeIdent::parse("nope")).await {
            Err(StoreError::NodeNotFound(what)) => assert_eq!(what, "nope"),
            other => panic!("expected NodeNotFound, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn a_new_node_starts_unlocked() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let mut created = node(None);
        created.reservation = Some("somebody".into());
        store.create_node(&created).await.unwrap();
        let stored = store
            .get_node(&NodeIdent::Uuid(created.uuid))
            .await
            .unwrap();
        assert_eq!(stored.reservation, None);
    })
    .await;
}

#[tokio::test]
async fn taken_uuid_name_or_instance_uuid_is_a_conflict() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let mut first = node(Some("taken"));
        first.instance_uuid = Some(Uuid::new_v4());
        store.create_node(&first).await.unwrap();

        let mut same_uuid = node(None);
        same_uuid.uuid = first.uuid;
        assert_eq!(
            conflict_message(store.create_node(&same_uuid).await),
            format!("A node with UUID {} already exists.", first.uuid)
        );

        let same_name = node(Some("taken"));
        assert_eq!(
            conflict_message(store.create_node(&same_name).await),
            "A node with name taken already exists."
        );

        let mut same_instance = node(Some("other"));
        same_instance.instance_uuid = first.instance_uuid;
        assert_eq!(
            conflict_message(store.create_node(&same_instance).await),
            format!(
                "A node with instance UUID {} already exists.",
                first.instance_uuid.unwrap()
            )
        );

        // Nodes without a name or an instance do not clash.
        store.create_node(&node(None)).await.unwrap();
        store.create_node(&node(None)).await.unwrap();

        // Updates clash too, and change nothing.
        let mut second = node(Some("second"));
        store.create_node(&second).await.unwrap();
        second.name = Some("taken".into());
        assert_eq!(
            conflict_message(store.update_node(&second, "c1").await),
            "A node with name taken already exists."
        );
        second.name = Some("second".into());
        second.instance_uuid = first.instance_uuid;
        assert!(conflict_message(store.update_node(&second, "c1").await)
            .starts_with("A node with instance UUID"));
        let stored = store.get_node(&NodeIdent::Uuid(second.uuid)).await.unwrap();
        assert_eq!(stored.instance_uuid, None);
    })
    .await;
}

#[tokio::test]
async fn every_filter_selects_its_nodes() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let mut a = node(Some("a"));
        a.provision_state = ProvisionState::Available;
        a.driver = "ipmi".into();
        a.resource_class = Some("gpu".into());
        a.conductor_group = "east".into();
        a.owner = Some("alice".into());
        a.shard = Some("s1".into());
        let mut b = node(Some("b"));
        b.provision_state = ProvisionState::Active;
        b.driver = "redfish".into();
        b.maintenance = true;
        b.instance_uuid = Some(Uuid::new_v4());
        b.lessee = Some("bob".into());
        b.owner = Some("alice".into());
        let mut c = node(Some("c"));
        c.provision_state = ProvisionState::Manageable;
        c.retired = true;
        c.resource_class = Some("cpu".into());
        for n in [&a, &b, &c] {
            store.create_node(n).await.unwrap();
        }
        store
            .reserve_node(&NodeIdent::Uuid(c.uuid), "conductor-9")
            .await
            .unwrap();

        let cases: Vec<(&str, NodeQuery, Vec<Uuid>)> = vec![
            ("all", NodeQuery::default(), vec![a.uuid, b.uuid, c.uuid]),
            (
                "provision_state",
                NodeQuery {
                    provision_state: Some(ProvisionState::Active),
                    ..Default::default()
                },
                vec![b.uuid],
            ),
            (
                "provision_states",
                NodeQuery {
                    provision_states: Some(vec![
                        ProvisionState::Available,
                        ProvisionState::Manageable,
                    ]),
                    ..Default::default()
                },
                vec![a.uuid, c.uuid],
            ),
            (
                "no provision_states",
                NodeQuery {
                    provision_states: Some(vec![]),
                    ..Default::default()
                },
                vec![],
            ),
            (
                "driver",
                NodeQuery {
                    driver: Some("redfish".into()),
                    ..Default::default()
                },
                vec![b.uuid],
            ),
            (
                "maintenance",
                NodeQuery {
                    maintenance: Some(true),
                    ..Default::default()
                },
                vec![b.uuid],
            ),
            (
                "not in maintenance",
                NodeQuery {
                    maintenance: Some(false),
                    ..Default::default()
                },
                vec![a.uuid, c.uuid],
            ),
            (
                "associated",
                NodeQuery {
                    associated: Some(true),
                    ..Default::default()
                },
                vec![b.uuid],
            ),
            (
                "unassociated",
                NodeQuery {
                    associated: Some(false),
                    ..Default::default()
                },
                vec![a.uuid, c.uuid],
            ),
            (
                "instance_uuid",
                NodeQuery {
                    instance_uuid: b.instance_uuid,
                    ..Default::default()
                },
                vec![b.uuid],
            ),
            (
                "resource_class",
                NodeQuery {
                    resource_class: Some("gpu".into()),
                    ..Default::default()
                },
                vec![a.uuid],
            ),
            (
                "conductor_group",
                NodeQuery {
                    conductor_group: Some("east".into()),
                    ..Default::default()
                },
                vec![a.uuid],
            ),
            (
                "owner",
                NodeQuery {
                    owner: Some("alice".into()),
                    ..Default::default()
                },
                vec![a.uuid, b.uuid],
            ),
            (
                "lessee",
                NodeQuery {
                    lessee: Some("bob".into()),
                    ..Default::default()
                },
                vec![b.uuid],
            ),
            (
                "shard",
                NodeQuery {
                    shard: Some("s1".into()),
                    ..Default::default()
                },
                vec![a.uuid],
            ),
            (
                "retired",
                NodeQuery {
                    retired: Some(true),
                    ..Default::default()
                },
                vec![c.uuid],
            ),
            (
                "reservation",
                NodeQuery {
                    reservation: Some("conductor-9".into()),
                    ..Default::default()
                },
                vec![c.uuid],
            ),
            (
                "owner and maintenance",
                NodeQuery {
                    owner: Some("alice".into()),
                    maintenance: Some(false),
                    ..Default::default()
                },
                vec![a.uuid],
            ),
            (
                "limit",
                NodeQuery {
                    limit: Some(2),
                    ..Default::default()
                },
                vec![a.uuid, b.uuid],
            ),
        ];
        for (what, query, expected) in cases {
            let found = store.list_nodes(&query).await.unwrap();
            assert_eq!(uuids(&found), expected, "{what}");
        }
        let listed = store.list_nodes(&NodeQuery::default()).await.unwrap();
        assert_eq!(listed[2].reservation.as_deref(), Some("conductor-9"));
    })
    .await;
}

/// The sort value of `key` as text that orders like the column (None
/// first), for computing the expected order.
fn sort_value(node: &Node, key: &str) -> Option<String> {
    let micros = |t: Option<Timestamp>| t.map(|t| format!("{:020}", t.unix_micros()));
    match key {
        "name" => node.name.clone(),
        "driver" => Some(node.driver.clone()),
        "maintenance" => Some(u8::from(node.maintenance).to_string()),
        "resource_class" => node.resource_class.clone(),
        "provision_updated_at" => micros(node.provision_updated_at),
        "created_at" => micros(Some(node.created_at)),
        other => panic!("no expected order for {other}"),
    }
}

/// Nodes with many ties and NULLs in the columns sorted on.
async fn create_sortable_nodes(store: &Store) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..23i64 {
        let mut n = node(
            (i % 4 != 0)
                .then(|| format!("node-{:02}", (i * 7) % 23))
                .as_deref(),
        );
        n.driver = ["ipmi", "redfish", "fake-hardware"][(i % 3) as usize].into();
        n.maintenance = i % 5 == 0;
        n.resource_class = match i % 3 {
            0 => None,
            1 => Some("large".into()),
            _ => Some("small".into()),
        };
        n.provision_updated_at = (i % 2 == 0)
            .then(|| Timestamp::from_unix_micros(1_700_000_000_000_000 + (i % 3) * 1_000));
        n.created_at = Timestamp::from_unix_micros(1_600_000_000_000_000 + (i % 4) * 1_000);
        store.create_node(&n).await.unwrap();
        nodes.push(n);
    }
    nodes
}

#[tokio::test]
async fn nodes_sort_both_ways_with_ties_broken_by_creation() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let nodes = create_sortable_nodes(&store).await;
        for key in [
            "name",
            "driver",
            "maintenance",
            "resource_class",
            "provision_updated_at",
            "created_at",
        ] {
            let mut expected = nodes.clone();
            // Stable: ties keep the order of creation.
            expected.sort_by_key(|n| sort_value(n, key));
            let mut expected = uuids(&expected);
            for dir in [SortDir::Asc, SortDir::Desc] {
                let query = NodeQuery {
                    sort_key: Some(key.into()),
                    sort_dir: dir,
                    ..Default::default()
                };
                let found = uuids(&store.list_nodes(&query).await.unwrap());
                assert_eq!(found, expected, "sorted by {key} {dir:?}");
                expected.reverse();
            }
        }
        let by_id = NodeQuery {
            sort_dir: SortDir::Desc,
            ..Default::default()
        };
        let mut expected = uuids(&nodes);
        expected.reverse();
        assert_eq!(uuids(&store.list_nodes(&by_id).await.unwrap()), expected);
    })
    .await;
}

#[tokio::test]
async fn every_sort_key_is_accepted() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let nodes = create_sortable_nodes(&store).await;
        for key in NODE_SORT_KEYS {
            for dir in [SortDir::Asc, SortDir::Desc] {
                let query = NodeQuery {
                    sort_key: Some(key.to_string()),
                    sort_dir: dir,
                    ..Default::default()
                };
                let found = store.list_nodes(&query).await.unwrap();
                assert_eq!(found.len(), nodes.len(), "{key} {dir:?}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn marker_pages_cover_every_node_once_despite_ties_and_nulls() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        create_sortable_nodes(&store).await;
        for key in [
            "id",
            "name",
            "driver",
            "maintenance",
            "resource_class",
            "provision_updated_at",
        ] {
            for dir in [SortDir::Asc, SortDir::Desc] {
                let all = NodeQuery {
                    sort_key: Some(key.into()),
                    sort_dir: dir,
                    ..Default::default()
                };
                let expected = uuids(&store.list_nodes(&all).await.unwrap());
                let mut paged = Vec::new();
                let mut marker = None;
                loop {
                    let page = NodeQuery {
                        marker,
                        limit: Some(4),
                        ..all.clone()
                    };
                    let page = store.list_nodes(&page).await.unwrap();
                    paged.extend(uuids(&page));
                    match page.last() {
                        Some(last) if page.len() == 4 => marker = Some(last.uuid),
                        _ => break,
                    }
                    assert!(
                        paged.len() <= expected.len(),
                        "paging by {key} {dir:?} does not end"
                    );
                }
                assert_eq!(paged, expected, "pages sorted by {key} {dir:?}");
            }
        }
        let unknown = NodeQuery {
            marker: Some(Uuid::new_v4()),
            ..Default::default()
        };
        assert!(matches!(
            store.list_nodes(&unknown).await,
            Err(StoreError::NodeNotFound(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn markers_page_with_filters() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let nodes = create_sortable_nodes(&store).await;
        let query = NodeQuery {
            driver: Some("ipmi".into()),
            sort_key: Some("name".into()),
            limit: Some(3),
            ..Default::default()
        };
        let first = store.list_nodes(&query).await.unwrap();
        let second = store
            .list_nodes(&NodeQuery {
                marker: Some(first[2].uuid),
                ..query.clone()
            })
            .await
            .unwrap();
        let mut expected: Vec<Node> = nodes.into_iter().filter(|n| n.driver == "ipmi").collect();
        expected.sort_by_key(|n| n.name.clone());
        let got: Vec<Uuid> = uuids(&first).into_iter().chain(uuids(&second)).collect();
        assert_eq!(got, uuids(&expected[..6]));
    })
    .await;
}

#[tokio::test]
async fn update_writes_the_whole_node_and_keeps_the_lock() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let mut n = node(Some("before"));
        store.create_node(&n).await.unwrap();
        let locked = store
            .reserve_node(&NodeIdent::Uuid(n.uuid), "c1")
            .await
            .unwrap();
        assert_eq!(locked.reservation.as_deref(), Some("c1"));

        n.name = Some("after".into());
        n.set_provision_state(ProvisionState::Manageable, None);
        n.extra.insert("note".into(), json!("x"));
        n.instance_uuid = Some(Uuid::new_v4());
        // Ignored: only reserve/release move the lock.
        n.reservation = None;
        let written = store.update_node(&n, "c1").await.unwrap();
        assert!(written.updated_at.is_some());
        assert_eq!(written.reservation.as_deref(), Some("c1"));
        assert_eq!(written.name.as_deref(), Some("after"));

        let stored = store.get_node(&NodeIdent::parse("after")).await.unwrap();
        assert_eq!(stored, written);
        let query = NodeQuery {
            provision_state: Some(ProvisionState::Manageable),
            ..Default::default()
        };
        assert_eq!(
            uuids(&store.list_nodes(&query).await.unwrap()),
            vec![n.uuid]
        );
        assert!(matches!(
            store.get_node(&NodeIdent::parse("before")).await,
            Err(StoreError::NodeNotFound(_))
        ));

        // An unlocked node may be written by anybody; it stays unlocked.
        store.release_node(n.uuid, "c1").await.unwrap();
        let written = store.update_node(&n, "c2").await.unwrap();
        assert_eq!(written.reservation, None);

        let missing = node(None);
        assert!(matches!(
            store.update_node(&missing, "c1").await,
            Err(StoreError::NodeNotFound(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn only_the_lock_holder_may_update() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let mut n = node(None);
        store.create_node(&n).await.unwrap();
        store
            .reserve_node(&NodeIdent::Uuid(n.uuid), "holder")
            .await
            .unwrap();
        n.extra.insert("by".into(), json!("intruder"));
        assert_eq!(locked_by(store.update_node(&n, "intruder").await), "holder");
        assert_eq!(
            locked_by(store.update_and_release_node(&n, "intruder").await),
            "holder"
        );
        let stored = store.get_node(&NodeIdent::Uuid(n.uuid)).await.unwrap();
        assert!(stored.extra.is_empty());
        assert_eq!(stored.reservation.as_deref(), Some("holder"));
    })
    .await;
}

#[tokio::test]
async fn reserve_and_release() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let n = node(Some("lockable"));
        store.create_node(&n).await.unwrap();

        let locked = store
            .reserve_node(&NodeIdent::parse("lockable"), "c1")
            .await
            .unwrap();
        assert_eq!(locked.uuid, n.uuid);
        assert_eq!(locked.reservation.as_deref(), Some("c1"));
        assert_eq!(
            locked_by(store.reserve_node(&NodeIdent::Uuid(n.uuid), "c2").await),
            "c1"
        );
        // Not re-entrant.
        assert_eq!(
            locked_by(store.reserve_node(&NodeIdent::Uuid(n.uuid), "c1").await),
            "c1"
        );

        // Releasing a lock one does not hold changes nothing.
        store.release_node(n.uuid, "c2").await.unwrap();
        assert_eq!(
            locked_by(store.reserve_node(&NodeIdent::Uuid(n.uuid), "c2").await),
            "c1"
        );

        store.release_node(n.uuid, "c1").await.unwrap();
        let unlocked = store.get_node(&NodeIdent::Uuid(n.uuid)).await.unwrap();
        assert_eq!(unlocked.reservation, None);
        let relocked = store
            .reserve_node(&NodeIdent::Uuid(n.uuid), "c2")
            .await
            .unwrap();
        assert_eq!(relocked.reservation.as_deref(), Some("c2"));

        // Releasing an absent node is fine; locking it is not.
        store.release_node(Uuid::new_v4(), "c1").await.unwrap();
        assert!(matches!(
            store
                .reserve_node(&NodeIdent::Uuid(Uuid::new_v4()), "c1")
                .await,
            Err(StoreError::NodeNotFound(_))
        ));
        assert!(matches!(
            store.reserve_node(&NodeIdent::parse("nobody"), "c1").await,
            Err(StoreError::NodeNotFound(_))
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_many_concurrent_reservations_wins() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let n = node(None);
        store.create_node(&n).await.unwrap();
        let attempts: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let conductor = format!("conductor-{i}");
                    let result = store
                        .reserve_node(&NodeIdent::Uuid(n.uuid), &conductor)
                        .await;
                    (conductor, result)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut holders = Vec::new();
        for attempt in attempts {
            match attempt.await.unwrap() {
                (conductor, Ok(_)) => winners.push(conductor),
                (_, Err(StoreError::NodeLocked { holder, .. })) => holders.push(holder),
                (_, Err(e)) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "winners: {winners:?}");
        assert_eq!(holders.len(), 15);
        assert!(holders.iter().all(|h| *h == winners[0]));
        let stored = store.get_node(&NodeIdent::Uuid(n.uuid)).await.unwrap();
        assert_eq!(stored.reservation, Some(winners[0].clone()));
    })
    .await;
}

#[tokio::test]
async fn update_and_release_writes_then_unlocks() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let mut n = node(None);
        store.create_node(&n).await.unwrap();
        store
            .reserve_node(&NodeIdent::Uuid(n.uuid), "c1")
            .await
            .unwrap();
        n.set_provision_state(ProvisionState::Available, None);
        let written = store.update_and_release_node(&n, "c1").await.unwrap();
        assert_eq!(written.reservation, None);
        assert_eq!(written.provision_state, ProvisionState::Available);
        let stored = store.get_node(&NodeIdent::Uuid(n.uuid)).await.unwrap();
        assert_eq!(stored, written);
        store
            .reserve_node(&NodeIdent::Uuid(n.uuid), "c2")
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn release_all_locks_frees_only_that_conductors_nodes() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let nodes: Vec<Node> = (0..5).map(|_| node(None)).collect();
        for n in &nodes {
            store.create_node(n).await.unwrap();
        }
        for (i, n) in nodes.iter().enumerate() {
            let conductor = if i < 3 { "dead" } else { "alive" };
            store
                .reserve_node(&NodeIdent::Uuid(n.uuid), conductor)
                .await
                .unwrap();
        }
        assert_eq!(store.release_all_locks("dead").await.unwrap(), 3);
        assert_eq!(store.release_all_locks("dead").await.unwrap(), 0);
        let still = NodeQuery {
            reservation: Some("alive".into()),
            ..Default::default()
        };
        assert_eq!(store.list_nodes(&still).await.unwrap().len(), 2);
        for n in &nodes[..3] {
            let stored = store.get_node(&NodeIdent::Uuid(n.uuid)).await.unwrap();
            assert_eq!(stored.reservation, None);
        }
    })
    .await;
}

#[tokio::test]
async fn deleting_a_node_deletes_its_ports() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let doomed = node(None);
        let kept = node(None);
        store.create_node(&doomed).await.unwrap();
        store.create_node(&kept).await.unwrap();
        let p1 = port("52:54:00:00:00:01", &doomed);
        let p2 = port("52:54:00:00:00:02", &doomed);
        let p3 = port("52:54:00:00:00:03", &kept);
        for p in [&p1, &p2, &p3] {
            store.create_port(p).await.unwrap();
        }
        store.delete_node(doomed.uuid).await.unwrap();
        assert!(matches!(
            store.get_node(&NodeIdent::Uuid(doomed.uuid)).await,
            Err(StoreError::NodeNotFound(_))
        ));
        assert!(matches!(
            store.get_port(p1.uuid).await,
            Err(StoreError::PortNotFound(_))
        ));
        let left = store.list_ports(&PortQuery::default()).await.unwrap();
        assert_eq!(left, vec![as_stored(&p3)]);
        assert!(matches!(
            store.delete_node(doomed.uuid).await,
            Err(StoreError::NodeNotFound(_))
        ));
        // The MAC address is free again.
        store
            .create_port(&port("52:54:00:00:00:01", &kept))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn ports_are_created_read_updated_and_deleted() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let n = node(None);
        let other = node(None);
        store.create_node(&n).await.unwrap();
        store.create_node(&other).await.unwrap();
        let mut p = port("52:54:00:12:34:56", &n);
        p.name = Some("eth0".into());
        p.local_link_connection
            .insert("switch_id".into(), json!("aa:bb:cc:dd:ee:ff"));
        store.create_port(&p).await.unwrap();
        let mut p = as_stored(&p);
        assert_eq!(store.get_port(p.uuid).await.unwrap(), p);
        assert_eq!(store.get_port_by_name("eth0").await.unwrap(), p);
        assert!(matches!(
            store.get_port_by_name("eth1").await,
            Err(StoreError::PortNotFound(_))
        ));

        p.address = "52:54:00:12:34:57".into();
        p.pxe_enabled = false;
        p.node_uuid = other.uuid;
        let written = store.update_port(&p).await.unwrap();
        assert!(written.updated_at.is_some());
        assert_eq!(store.get_port(p.uuid).await.unwrap(), written);
        let on_other = PortQuery {
            node_uuid: Some(other.uuid),
            ..Default::default()
        };
        assert_eq!(
            store.list_ports(&on_other).await.unwrap(),
            vec![written.clone()]
        );

        let mut to_nowhere = written.clone();
        to_nowhere.node_uuid = Uuid::new_v4();
        assert!(matches!(
            store.update_port(&to_nowhere).await,
            Err(StoreError::NodeNotFound(_))
        ));
        let stranger = port("52:54:00:99:99:99", &n);
        assert!(matches!(
            store.update_port(&stranger).await,
            Err(StoreError::PortNotFound(_))
        ));

        store.delete_port(p.uuid).await.unwrap();
        assert!(matches!(
            store.get_port(p.uuid).await,
            Err(StoreError::PortNotFound(_))
        ));
        assert!(matches!(
            store.delete_port(p.uuid).await,
            Err(StoreError::PortNotFound(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn taken_mac_address_uuid_or_name_is_a_conflict() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let n = node(None);
        store.create_node(&n).await.unwrap();
        let mut first = port("52:54:00:00:00:aa", &n);
        first.name = Some("eth0".into());
        store.create_port(&first).await.unwrap();

        assert_eq!(
            conflict_message(store.create_port(&port("52:54:00:00:00:aa", &n)).await),
            "A port with MAC address 52:54:00:00:00:aa already exists."
        );
        let mut same_uuid = port("52:54:00:00:00:bb", &n);
        same_uuid.uuid = first.uuid;
        assert_eq!(
            conflict_message(store.create_port(&same_uuid).await),
            format!("A port with UUID {} already exists.", first.uuid)
        );
        let mut same_name = port("52:54:00:00:00:cc", &n);
        same_name.name = Some("eth0".into());
        assert_eq!(
            conflict_message(store.create_port(&same_name).await),
            "A port with name eth0 already exists."
        );

        let mut second = port("52:54:00:00:00:dd", &n);
        store.create_port(&second).await.unwrap();
        second.address = "52:54:00:00:00:aa".into();
        assert_eq!(
            conflict_message(store.update_port(&second).await),
            "A port with MAC address 52:54:00:00:00:aa already exists."
        );
    })
    .await;
}

#[tokio::test]
async fn a_port_needs_its_node() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let ghost = node(None);
        let p = port("52:54:00:00:00:01", &ghost);
        match store.create_port(&p).await {
            Err(StoreError::NodeNotFound(what)) => assert_eq!(what, ghost.uuid.to_string()),
            other => panic!("expected NodeNotFound, got {other:?}"),
        }
        assert!(store
            .list_ports(&PortQuery::default())
            .await
            .unwrap()
            .is_empty());
    })
    .await;
}

#[tokio::test]
async fn ports_are_listed_by_node_and_address_and_paged() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let a = node(None);
        let b = node(None);
        store.create_node(&a).await.unwrap();
        store.create_node(&b).await.unwrap();
        let mut ports = Vec::new();
        for i in 0..7 {
            let owner = if i % 2 == 0 { &a } else { &b };
            let p = port(&format!("52:54:00:00:00:{:02x}", 0x30 - i), owner);
            store.create_port(&p).await.unwrap();
            ports.push(as_stored(&p));
        }
        let on_a = PortQuery {
            node_uuid: Some(a.uuid),
            ..Default::default()
        };
        let expected: Vec<Port> = ports.iter().step_by(2).cloned().collect();
        assert_eq!(store.list_ports(&on_a).await.unwrap(), expected);

        let by_address = PortQuery {
            address: Some(ports[3].address.clone()),
            ..Default::default()
        };
        assert_eq!(
            store.list_ports(&by_address).await.unwrap(),
            vec![ports[3].clone()]
        );

        // Addresses were created in descending order.
        let sorted = PortQuery {
            sort_key: Some("address".into()),
            limit: Some(3),
            ..Default::default()
        };
        let first = store.list_ports(&sorted).await.unwrap();
        let second = store
            .list_ports(&PortQuery {
                marker: Some(first[2].uuid),
                ..sorted.clone()
            })
            .await
            .unwrap();
        let mut expected = ports.clone();
        expected.reverse();
        assert_eq!(first, expected[..3]);
        assert_eq!(second, expected[3..6]);

        let newest_first = PortQuery {
            sort_dir: SortDir::Desc,
            ..Default::default()
        };
        let got = store.list_ports(&newest_first).await.unwrap();
        assert_eq!(got, expected);
        let unknown = PortQuery {
            marker: Some(Uuid::new_v4()),
            ..Default::default()
        };
        assert!(matches!(
            store.list_ports(&unknown).await,
            Err(StoreError::PortNotFound(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn conductors_register_heartbeat_and_die() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let drivers = vec!["ipmi".to_string(), "redfish".to_string()];
        store
            .register_conductor("c1", "east", &drivers)
            .await
            .unwrap();
        store.register_conductor("c2", "", &[]).await.unwrap();

        let listed = store.list_conductors(60).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].hostname, "c1");
        assert_eq!(listed[0].conductor_group, "east");
        assert_eq!(listed[0].drivers, drivers);
        assert!(listed.iter().all(|c| c.alive));

        store.unregister_conductor("c2").await.unwrap();
        let listed = store.list_conductors(60).await.unwrap();
        assert!(listed[0].alive);
        assert!(!listed[1].alive, "an unregistered conductor is not alive");

        // A heartbeat older than the limit is dead; a new one revives it.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(store
            .list_conductors(0)
            .await
            .unwrap()
            .iter()
            .all(|c| !c.alive));
        let before = listed[0].updated_at.unwrap();
        store.touch_conductor("c1").await.unwrap();
        let listed = store.list_conductors(60).await.unwrap();
        assert!(listed[0].updated_at.unwrap() > before);
        assert!(listed[0].alive);

        // Re-registering brings a conductor back, with its new drivers.
        store
            .register_conductor("c2", "west", &drivers[..1])
            .await
            .unwrap();
        let listed = store.list_conductors(60).await.unwrap();
        assert!(listed[1].alive);
        assert_eq!(listed[1].conductor_group, "west");
        assert_eq!(listed[1].drivers, &drivers[..1]);

        // Heartbeats of strangers change nothing.
        store.touch_conductor("stranger").await.unwrap();
        store.unregister_conductor("stranger").await.unwrap();
        assert_eq!(store.list_conductors(60).await.unwrap().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let n = node(Some("durable"));
        store.create_node(&n).await.unwrap();
        store
            .create_port(&port("52:54:00:00:00:01", &n))
            .await
            .unwrap();
        store
            .reserve_node(&NodeIdent::Uuid(n.uuid), "c1")
            .await
            .unwrap();
        store.register_conductor("c1", "", &[]).await.unwrap();
        store.close().await;

        let reopened = db.open().await;
        let stored = reopened
            .get_node(&NodeIdent::parse("durable"))
            .await
            .unwrap();
        assert_eq!(stored.reservation.as_deref(), Some("c1"));
        assert_eq!(
            reopened
                .list_ports(&PortQuery::default())
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(reopened.list_conductors(60).await.unwrap().len(), 1);
        // Ids continue after the reopened ones.
        let later = node(None);
        reopened.create_node(&later).await.unwrap();
        assert_eq!(
            uuids(&reopened.list_nodes(&NodeQuery::default()).await.unwrap()),
            vec![n.uuid, later.uuid]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_all_land_in_creation_order() {
    on_each_backend(|db| async move {
        let store = db.open().await;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut created = Vec::new();
                    for _ in 0..80 {
                        let n = node(None);
                        store.create_node(&n).await.unwrap();
                        created.push(n.uuid);
                    }
                    created
                })
            })
            .collect();
        let mut per_task = Vec::new();
        for task in tasks {
            per_task.push(task.await.unwrap());
        }
        let listed = uuids(&store.list_nodes(&NodeQuery::default()).await.unwrap());
        // More than one parsing task's worth, to check they keep the order.
        assert_eq!(listed.len(), 640);
        // Each task's nodes appear in the order it created them.
        for created in per_task {
            let positions: Vec<usize> = created
                .iter()
                .map(|u| listed.iter().position(|l| l == u).unwrap())
                .collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]));
        }
    })
    .await;
}

#[tokio::test]
async fn an_in_memory_sqlite_store_works() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    let n = node(Some("ephemeral"));
    store.create_node(&n).await.unwrap();
    store
        .create_port(&port("52:54:00:00:00:01", &n))
        .await
        .unwrap();
    store
        .reserve_node(&NodeIdent::parse("ephemeral"), "c1")
        .await
        .unwrap();
    let listed = store.list_nodes(&NodeQuery::default()).await.unwrap();
    assert_eq!(listed[0].reservation.as_deref(), Some("c1"));
    // A second in-memory store is a database of its own.
    let other = Store::connect("sqlite::memory:").await.unwrap();
    assert!(other
        .list_nodes(&NodeQuery::default())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn an_unknown_url_scheme_is_refused_without_echoing_the_url() {
    let refused = Store::connect("mysql://root:secret@localhost/ferric").await;
    let message = match refused {
        Err(e) => {
            // The whole chain, as the log shows it.
            let mut chain = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                chain = format!("{chain}: {c}");
                cause = c.source();
            }
            chain
        }
        Ok(_) => panic!("connected to mysql"),
    };
    assert!(message.contains("mysql"), "{message}");
    assert!(!message.contains("secret"), "{message}");
}
