//! The leader's lease half of the store contract: one holder at a time,
//! terms numbered, the leader's writes fenced by their term, and the nodes
//! the leader publishes.
//!
//! These checks run on the real clock: a backend shared by several
//! machines keeps time for the lease itself, so a check cannot hand it a
//! fixed time.

use std::time::Duration;

use chrono::Utc;
use flotilla_domain::{
    ChangeKind, InstanceId, InstanceType, NodeRecord, NodeState, Obstacle, ObstacleCode, PoolError,
    PoolErrorKey, PoolErrorKind, PoolName,
};
use tokio::task::JoinSet;

use super::orgs::{ask, credit, lab};
use super::{command, deploy, name, t, Harness};
use crate::{
    AddKeys, ClusterNodes, ClusterObstacle, Fence, OrgUsage, SigningKeyRecord, Store, StoreError,
};

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(3600);

async fn acquire(store: &dyn Store, holder: &str, ttl: Duration) -> Option<Fence> {
    store
        .acquire_lease(holder, ttl, Utc::now())
        .await
        .expect("acquire_lease")
}

fn node(id: &str, state: NodeState, launched: i64) -> NodeRecord {
    NodeRecord {
        id: InstanceId::new(id),
        instance_type: InstanceType::new("small").expect("valid type"),
        launched_at: t(launched),
        state,
        state_since: t(launched + 1),
        address: Some(format!("127.0.0.1:{}", 9000 + launched)),
        pool_version: (launched % 2 == 0)
            .then(|| flotilla_domain::LaunchVersion::parse("0123456789abcdef").expect("a version")),
    }
}

fn nodes_of(cluster: &str, is_public: bool, nodes: &[NodeRecord]) -> ClusterNodes {
    ClusterNodes {
        cluster: name(cluster),
        is_public,
        nodes: nodes.to_vec(),
        meter: None,
        gone: Vec::new(),
    }
}

fn fenced<T: std::fmt::Debug>(result: Result<T, StoreError>, fence: Fence) {
    match result {
        Err(StoreError::Fenced { fence: f, current }) => {
            assert_eq!(f, fence);
            assert!(current > fence.0, "a later term leads ({current})");
        }
        other => panic!("a write of an ended term must be refused, got {other:?}"),
    }
}

pub async fn one_server_holds_the_lease_until_it_runs_out(h: Harness) {
    let (a, b) = (h.store.as_ref(), h.second.as_ref());
    assert_eq!(a.lease().await.unwrap(), None);
    let first = acquire(a, "a", SHORT).await.expect("the lease is free");
    assert_eq!(acquire(b, "b", SHORT).await, None, "a holds it");
    assert!(a.renew_lease("a", first, SHORT, Utc::now()).await.unwrap());
    let lease = b.lease().await.unwrap().expect("taken");
    assert_eq!((lease.holder.as_str(), lease.epoch), ("a", first.0));

    tokio::time::sleep(SHORT + Duration::from_millis(200)).await;
    let second = acquire(b, "b", LONG).await.expect("a's lease ran out");
    assert!(second > first, "a new term: {second} after {first}");
    assert!(
        !a.renew_lease("a", first, SHORT, Utc::now()).await.unwrap(),
        "a's term is over"
    );
    assert_eq!(acquire(a, "a", LONG).await, None, "b holds it now");
    let lease = a.lease().await.unwrap().expect("taken");
    assert_eq!((lease.holder.as_str(), lease.epoch), ("b", second.0));
    assert!(lease.expires_at > Utc::now() + chrono::Duration::minutes(50));
}

pub async fn a_released_or_restarted_holders_lease_is_taken_at_once(h: Harness) {
    let (a, b) = (h.store.as_ref(), h.second.as_ref());
    let first = acquire(a, "a", LONG).await.expect("free");
    // The same server, restarted: its old term ends and a new one begins.
    let again = acquire(b, "a", LONG).await.expect("its own lease");
    assert!(again > first);
    assert!(!a.renew_lease("a", first, LONG, Utc::now()).await.unwrap());
    // Releasing an ended term does nothing; releasing the current one
    // frees the lease.
    a.release_lease("a", first).await.unwrap();
    assert_eq!(acquire(b, "b", LONG).await, None);
    a.release_lease("a", again).await.unwrap();
    let third = acquire(b, "b", LONG).await.expect("released");
    assert!(third > again);
    let taken: Vec<(String, i64)> = a
        .changes(0, 100, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.kind == ChangeKind::LeaseTaken)
        .map(|c| (c.key, c.payload["epoch"].as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(
        taken,
        vec![
            ("a".to_owned(), first.0),
            ("a".to_owned(), again.0),
            ("b".to_owned(), third.0)
        ],
        "every term is in the feed"
    );
}

pub async fn racing_servers_begin_one_term(h: Harness) {
    let mut racers = JoinSet::new();
    for i in 0..8 {
        let store = if i % 2 == 0 {
            h.store.clone()
        } else {
            h.second.clone()
        };
        racers.spawn(async move { acquire(store.as_ref(), &format!("s{i}"), LONG).await });
    }
    let mut won = Vec::new();
    while let Some(r) = racers.join_next().await {
        won.extend(r.expect("task"));
    }
    assert_eq!(won.len(), 1, "exactly one server leads: {won:?}");
}

pub async fn writes_of_an_ended_term_are_refused_and_change_nothing(h: Harness) {
    let (a, b) = (h.store.as_ref(), h.second.as_ref());
    let old = acquire(a, "a", LONG).await.expect("free");
    deploy(a, &command("due", 1, false, "default"), 0, 10).await;
    let gone = deploy(a, &command("gone", 1, false, "default"), 0, 600).await;
    let gone = a.destroy(&gone.name, t(1)).await.unwrap().unwrap();
    lab(a).await;
    credit(a, "100", 2).await;
    ask(a, "ann", 1, Duration::from_secs(60), 3).await.unwrap();
    a.publish_nodes(
        old,
        &[nodes_of("due", false, &[node("n1", NodeState::Ready, 5)])],
        t(6),
    )
    .await
    .unwrap();
    // Another server takes over, as after a pause past the lease.
    a.release_lease("a", old).await.unwrap();
    let new = acquire(b, "b", LONG).await.expect("released");
    let before = a.last_change().await.unwrap();
    let org = flotilla_domain::OrgName::new("lab").unwrap();
    let ledger = a.ledger(&org).await.unwrap();

    fenced(a.expire_due(t(3600), old).await, old);
    fenced(a.forget(&gone.name, gone.generation, old).await, old);
    fenced(a.expire_capacity(t(3600), old).await, old);
    let usage = OrgUsage {
        org: org.clone(),
        nodes: super::orgs::listed(&[t(5)], flotilla_domain::Money::from_micros(1_000_000)),
    };
    fenced(
        a.accrue(std::slice::from_ref(&usage), t(3600), old).await,
        old,
    );
    fenced(
        a.publish_nodes(old, &[nodes_of("due", false, &[])], t(3600))
            .await,
        old,
    );
    assert_eq!(a.last_change().await.unwrap(), before, "nothing recorded");
    assert!(a
        .get_cluster(&name("due"))
        .await
        .unwrap()
        .unwrap()
        .expires_at
        .is_some());
    assert!(a.get_cluster(&gone.name).await.unwrap().is_some());
    assert_eq!(a.published_nodes(None).await.unwrap().len(), 1);
    assert_eq!(a.ledger(&org).await.unwrap(), ledger, "no charge");

    // The new term's writes go through.
    assert_eq!(b.expire_due(t(3600), new).await.unwrap().len(), 1);
    assert!(b.forget(&gone.name, gone.generation, new).await.unwrap());
    assert_eq!(b.expire_capacity(t(3600), new).await.unwrap().len(), 1);
}

pub async fn published_nodes_replace_the_last_and_go_with_the_cluster(h: Harness) {
    let store = h.store.as_ref();
    let fence = acquire(store, "a", LONG).await.expect("free");
    let a = deploy(store, &command("a", 2, true, "default"), 0, 600).await;
    store
        .publish_nodes(
            fence,
            &[nodes_of(
                "a",
                true,
                &[
                    node("n2", NodeState::Booting, 2),
                    node("n1", NodeState::Ready, 1),
                ],
            )],
            t(3),
        )
        .await
        .unwrap();
    store
        .publish_nodes(
            fence,
            &[nodes_of("b", false, &[node("n3", NodeState::Booting, 1)])],
            t(3),
        )
        .await
        .unwrap();
    let all = store.published_nodes(None).await.unwrap();
    let ids: Vec<(&str, &str)> = all
        .iter()
        .map(|(c, n)| (c.as_str(), n.id.as_str()))
        .collect();
    assert_eq!(ids, vec![("a", "n1"), ("a", "n2"), ("b", "n3")]);
    assert_eq!(all[0].1, node("n1", NodeState::Ready, 1), "stored whole");

    store
        .publish_nodes(
            fence,
            &[nodes_of("a", true, &[node("n2", NodeState::Ready, 2)])],
            t(4),
        )
        .await
        .unwrap();
    let a_nodes = store.published_nodes(Some(&name("a"))).await.unwrap();
    assert_eq!(a_nodes, vec![(name("a"), node("n2", NodeState::Ready, 2))]);
    let last = store.changes(0, 100, None).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.kind, last.key.as_str()),
        (ChangeKind::ClusterNodes, "a")
    );
    assert_eq!(last.payload["ready"], 1);
    assert_eq!(last.payload["is_public"], true);

    store
        .publish_nodes(fence, &[nodes_of("b", false, &[])], t(5))
        .await
        .unwrap();
    let destroyed = store.destroy(&a.name, t(6)).await.unwrap().unwrap();
    assert!(store
        .forget(&a.name, destroyed.generation, fence)
        .await
        .unwrap());
    assert!(store.published_nodes(None).await.unwrap().is_empty());
}

pub async fn obstacles_are_published_replaced_cleared_and_go_with_the_cluster(h: Harness) {
    let store = h.store.as_ref();
    let fence = acquire(store, "a", LONG).await.expect("free");
    let a = deploy(store, &command("a", 2, false, "default"), 0, 600).await;
    let refused = Obstacle {
        code: ObstacleCode::CloudRefused,
        message: "create: cloud error: no such instance profile".into(),
        since: t(1),
        last_at: t(3),
        count: 2,
        retry_at: Some(t(5)),
    };
    let publish = |cluster: &str, obstacle: Option<Obstacle>, at| {
        let one = ClusterObstacle {
            cluster: name(cluster),
            is_public: false,
            obstacle,
        };
        async move { store.publish_obstacles(fence, &[one], t(at)).await }
    };
    publish("a", Some(refused.clone()), 3).await.unwrap();
    // A cluster with no record has nothing in its way: it is gone.
    publish("never", Some(refused.clone()), 3).await.unwrap();
    assert_eq!(
        store.published_obstacles().await.unwrap(),
        vec![(name("a"), refused.clone())],
        "stored whole"
    );
    let last = store.changes(0, 100, None).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.kind, last.key.as_str()),
        (ChangeKind::ClusterError, "a")
    );
    assert_eq!(
        last.obstacle(),
        Some(refused.clone()),
        "the change carries it"
    );

    let quota = Obstacle {
        code: ObstacleCode::QuotaExceeded,
        retry_at: None,
        ..refused.clone()
    };
    publish("a", Some(quota.clone()), 4).await.unwrap();
    assert_eq!(
        store.published_obstacles().await.unwrap(),
        vec![(name("a"), quota.clone())]
    );
    publish("a", None, 5).await.unwrap();
    assert!(store.published_obstacles().await.unwrap().is_empty());
    let last = store.changes(0, 100, None).await.unwrap().pop().unwrap();
    assert_eq!(last.kind, ChangeKind::ClusterErrorCleared);

    publish("a", Some(quota), 6).await.unwrap();
    let destroyed = store.destroy(&a.name, t(7)).await.unwrap().unwrap();
    assert!(store
        .forget(&a.name, destroyed.generation, fence)
        .await
        .unwrap());
    assert!(store.published_obstacles().await.unwrap().is_empty());
    // A term that ended publishes nothing.
    store.release_lease("a", fence).await.unwrap();
    acquire(store, "b", LONG).await.expect("free again");
    let b = deploy(store, &command("b", 1, false, "default"), 8, 600).await;
    let late = publish(b.name.as_str(), Some(refused), 9).await;
    assert!(matches!(late, Err(StoreError::Fenced { .. })), "{late:?}");
    assert!(store.published_obstacles().await.unwrap().is_empty());
}

fn pool_error(cluster: &str, kind: PoolErrorKind, message: &str, at: i64) -> PoolError {
    PoolError {
        key: PoolErrorKey {
            pool: PoolName::new("default").unwrap(),
            kind,
            code: (kind == PoolErrorKind::CreateFailed).then_some(ObstacleCode::CloudRefused),
            cluster: name(cluster),
            instance_type: InstanceType::new("small").unwrap(),
        },
        message: message.into(),
        count: 1,
        first_at: t(at),
        last_at: t(at),
    }
}

/// The same failure again is counted into one row with its latest
/// message; others are rows of their own, latest first; old ones are
/// pruned; an ended term records nothing.
pub async fn pool_errors_are_counted_not_repeated(h: Harness) {
    let store = h.store.as_ref();
    let fence = acquire(store, "a", LONG).await.expect("free");
    let pool = PoolName::new("default").unwrap();
    let created = |m: &str, at| pool_error("a", PoolErrorKind::CreateFailed, m, at);
    store
        .record_pool_errors(fence, &[created("no profile (req 1)", 1)], t(1))
        .await
        .unwrap();
    store
        .record_pool_errors(
            fence,
            &[
                created("no profile (req 2)", 5),
                pool_error("a", PoolErrorKind::BootTimeout, "never ready", 3),
                PoolError {
                    count: 3,
                    ..created("no profile (req 3)", 4)
                },
            ],
            t(5),
        )
        .await
        .unwrap();
    let errors = store.pool_errors(&pool, None, 10).await.unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].key.kind, PoolErrorKind::CreateFailed);
    assert_eq!(errors[0].count, 5);
    assert_eq!((errors[0].first_at, errors[0].last_at), (t(1), t(5)));
    assert_eq!(errors[0].message, "no profile (req 2)", "the latest");
    assert_eq!(
        errors[1],
        pool_error("a", PoolErrorKind::BootTimeout, "never ready", 3)
    );
    assert_eq!(store.pool_errors(&pool, None, 1).await.unwrap().len(), 1);
    // Only some clusters': none of another's crowd them out.
    store
        .record_pool_errors(
            fence,
            &[pool_error("b", PoolErrorKind::ProbeTimeout, "sick", 6)],
            t(6),
        )
        .await
        .unwrap();
    let only_a = store
        .pool_errors(&pool, Some(&[name("a")]), 1)
        .await
        .unwrap();
    assert_eq!(only_a.len(), 1);
    assert_eq!(only_a[0].key.cluster, name("a"), "not b's, though later");
    assert!(store
        .pool_errors(&pool, Some(&[]), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .pool_errors(&PoolName::new("other").unwrap(), None, 10)
        .await
        .unwrap()
        .is_empty());

    // a's boot timeout (last met at 3) goes; a's create (5) and b's (6) stay.
    assert_eq!(store.prune_pool_errors(t(4)).await.unwrap(), 1);
    assert_eq!(store.pool_errors(&pool, None, 10).await.unwrap().len(), 2);

    store.release_lease("a", fence).await.unwrap();
    acquire(store, "b", LONG).await.expect("free again");
    let late = store
        .record_pool_errors(fence, &[created("late", 9)], t(9))
        .await;
    assert!(matches!(late, Err(StoreError::Fenced { .. })), "{late:?}");
    let kept = store
        .pool_errors(&pool, Some(&[name("a")]), 10)
        .await
        .unwrap();
    assert_eq!(kept[0].count, 5, "unchanged by the ended term");
}

fn key(kid: &str, active: bool, at: i64) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.to_owned(),
        pem: format!("-----BEGIN PRIVATE KEY----- {kid} -----END PRIVATE KEY-----"),
        active,
        created_at: t(at),
    }
}

pub async fn signing_keys_are_stored_once_rotated_and_retired(h: Harness) {
    let store = h.store.as_ref();
    assert!(store.signing_keys().await.unwrap().is_empty());
    let before = store.last_change().await.unwrap();
    assert!(store
        .add_signing_keys(&[key("k1", true, 1)], AddKeys::IfNone)
        .await
        .unwrap());
    assert!(
        !store
            .add_signing_keys(&[key("k2", true, 2)], AddKeys::IfNone)
            .await
            .unwrap(),
        "a second first key is not stored"
    );
    assert_eq!(
        store.signing_keys().await.unwrap(),
        vec![key("k1", true, 1)]
    );

    assert!(store
        .add_signing_keys(&[key("k2", true, 2)], AddKeys::Always)
        .await
        .unwrap());
    assert_eq!(
        store.signing_keys().await.unwrap(),
        vec![key("k1", false, 1), key("k2", true, 2)],
        "the new key signs, the old one only verifies"
    );
    assert!(matches!(
        store.retire_signing_key("k2", t(3)).await,
        Err(StoreError::KeyActive(kid)) if kid == "k2"
    ));
    assert!(store.retire_signing_key("k1", t(3)).await.unwrap());
    assert!(!store.retire_signing_key("k1", t(4)).await.unwrap());
    assert_eq!(
        store.signing_keys().await.unwrap(),
        vec![key("k2", true, 2)]
    );

    let changes: Vec<(ChangeKind, String)> = store
        .changes(before, 100, None)
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            assert!(
                !c.payload.to_string().contains("PRIVATE"),
                "no key in the feed"
            );
            (c.kind, c.key)
        })
        .collect();
    let kinds = |kid: &str| (ChangeKind::KeysChanged, kid.to_owned());
    assert_eq!(changes, vec![kinds("k1"), kinds("k2"), kinds("k1")]);
}

pub async fn racing_servers_store_one_first_key(h: Harness) {
    let mut racers = JoinSet::new();
    for i in 0..8 {
        let store = if i % 2 == 0 {
            h.store.clone()
        } else {
            h.second.clone()
        };
        racers.spawn(async move {
            store
                .add_signing_keys(&[key(&format!("k{i}"), true, i)], AddKeys::IfNone)
                .await
                .unwrap()
        });
    }
    let mut stored = 0;
    while let Some(r) = racers.join_next().await {
        stored += usize::from(r.expect("task"));
    }
    assert_eq!(stored, 1);
    let keys = h.store.signing_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].active);
}
