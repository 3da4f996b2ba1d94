//! Several engines on one store, as several servers on one database:
//! one leads and acts, the others take commands and answer from the
//! store, and one takes over when the leader stops. Paused time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, Harness};
use flotilla_cloud::fake::{FakeCloud, FakeConfig};
use flotilla_cloud::TokioClock;
use flotilla_domain::{ChangeKind, ClusterState, NodeState, ObstacleCode};
use flotilla_engine::EngineConfig;
use flotilla_store::{MemoryStore, Store};
use tokio::time::Instant;

fn server(name: &str) -> EngineConfig {
    EngineConfig {
        server: name.to_owned(),
        ..config()
    }
}

async fn two_servers() -> (Harness, Harness) {
    let cloud = FakeCloud::new(FakeConfig::default());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = TokioClock::default();
    let a = Harness::start_with_clock(cloud.clone(), store.clone(), server("a"), clock).await;
    let b = Harness::start_with_clock(cloud, store, server("b"), clock).await;
    (a, b)
}

#[tokio::test(start_paused = true)]
async fn a_follower_takes_commands_and_answers_what_the_leader_observes() {
    let (mut a, mut b) = two_servers().await;
    assert!(a.engine.leading(), "the first server leads");
    assert!(!b.engine.leading(), "the second follows");

    let before = Instant::now();
    let answer = b.deploy("demo", 2, 3600, None).await;
    // The follower reads its own write: the answer, and its next status,
    // show the cluster as deployed.
    assert_eq!(answer.node_capacity, 2);
    assert_ne!(answer.state, ClusterState::NotRunning);
    assert_eq!(b.status("demo").node_capacity, 2);
    a.until(Duration::from_secs(1), "the leader creates", |h| {
        h.cloud.instance_count() == 2
    })
    .await;
    assert!(
        Instant::now() - before < Duration::from_millis(50),
        "woken by the feed's notice, not a poll"
    );
    b.until(Duration::from_secs(3), "running at the follower", |h| {
        h.running("demo")
    })
    .await;
    let at_b = b.status("demo");
    let at_a = a.status("demo");
    assert_eq!(at_b.nodes, at_a.nodes, "both answer alike");
    assert!(at_b.nodes.iter().all(|n| n.state == NodeState::Ready));

    // A resize at the follower is answered with the new size at once.
    assert_eq!(b.deploy("demo", 3, 3600, None).await.node_capacity, 3);
    a.until(Duration::from_secs(3), "three nodes", |h| {
        h.cloud.instance_count() == 3
    })
    .await;

    // A destroy at the follower: the leader acts, both see it go.
    let answer = b.destroy("demo").await;
    assert_eq!(answer.node_capacity, 0, "destroying wants no nodes");
    b.until(Duration::from_secs(3), "gone at the follower", |h| {
        h.status("demo").state == ClusterState::NotRunning
    })
    .await;
    assert_eq!(a.cloud.instance_count(), 0);
    assert!(!b.engine.leading() && a.engine.leading());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_follower_takes_over_when_the_leader_stops_without_duplicates() {
    let (mut a, mut b) = two_servers().await;
    a.deploy("demo", 3, 3600, None).await;
    a.until(Duration::from_secs(2), "running", |h| h.running("demo"))
        .await;
    let stopped = Instant::now();
    a.stop().await;
    b.until(Duration::from_secs(5), "the follower leads", |h| {
        h.engine.leading()
    })
    .await;
    assert!(
        Instant::now() - stopped <= Duration::from_secs(1),
        "a released lease is taken at the next try"
    );
    b.deploy("demo", 5, 3600, None).await;
    b.until(Duration::from_secs(3), "five running", |h| {
        h.running("demo") && h.status("demo").nodes.len() == 5
    })
    .await;
    assert_eq!(
        b.cloud.instance_count(),
        5,
        "the three were adopted, not doubled"
    );
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_term_was_taken_stands_down_and_acts_no_more() {
    let (mut a, mut b) = two_servers().await;
    a.deploy("demo", 2, 3600, None).await;
    a.until(Duration::from_secs(2), "running", |h| h.running("demo"))
        .await;
    // As if `a` had been paused past its lease and `b` had taken over:
    // a term in `b`'s name begins behind both engines' backs.
    let lease = a.store.lease().await.unwrap().expect("a leads");
    a.store
        .release_lease("a", flotilla_store::Fence(lease.epoch))
        .await
        .unwrap();
    let taken = a
        .store
        .acquire_lease("b", Duration::from_secs(3600), a.engine.now())
        .await
        .unwrap();
    assert!(taken.is_some());
    a.until(Duration::from_secs(3), "a stands down, b leads", |_| {
        !a.engine.leading() && b.engine.leading()
    })
    .await;
    b.deploy("demo", 4, 3600, None).await;
    b.until(Duration::from_secs(3), "four running", |h| {
        h.running("demo") && h.status("demo").nodes.len() == 4
    })
    .await;
    assert_eq!(
        a.cloud.instance_count(),
        4,
        "one leader acted: no duplicates"
    );
    a.until(
        Duration::from_secs(3),
        "the old leader answers as a follower",
        |h| h.status("demo").nodes.len() == 4,
    )
    .await;
    let terms = a
        .store
        .changes(0, 1000, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.kind == ChangeKind::LeaseTaken)
        .count();
    assert_eq!(terms, 3, "a's, the one taken, b's");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_follower_says_what_stands_in_a_clusters_way_as_the_leader_does() {
    let (mut a, mut b) = two_servers().await;
    a.cloud
        .reconfigure(|c| c.refuse_creates = Some("no such instance profile".into()));
    b.deploy("demo", 2, 3600, None).await;
    b.until(Duration::from_secs(10), "refused, at the follower", |h| {
        h.status("demo").obstacle.is_some_and(|o| o.count >= 2)
    })
    .await;
    let at_b = b.status("demo").obstacle.unwrap();
    assert_eq!(at_b.code, ObstacleCode::CloudRefused);
    assert!(at_b.message.contains("no such instance profile"));
    a.until(Duration::from_secs(1), "alike at both", |h| {
        h.status("demo")
            .obstacle
            .is_some_and(|o| o.count == at_b.count)
    })
    .await;
    assert_eq!(a.status("demo").obstacle.unwrap(), at_b);

    a.cloud.reconfigure(|c| c.refuse_creates = None);
    b.until(Duration::from_secs(60), "running at the follower", |h| {
        h.running("demo") && h.status("demo").obstacle.is_none()
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// A pool written through one server is every server's at once: the
/// leader makes its nodes, the other answers with it; a retired pool is
/// gone from both; a restarted server reads the pools back from the store.
#[tokio::test(start_paused = true)]
async fn a_pool_written_at_one_server_is_every_servers() {
    use flotilla_control::{ApplyPool, RetirePool};
    use flotilla_domain::{Caller, PoolName, PoolSource};
    let (mut a, mut b) = two_servers().await;
    let admin = Caller::local_operator();
    let applied = b
        .control
        .run(
            &admin,
            ApplyPool {
                pool: "tiny".into(),
                document: serde_json::json!({
                    "driver": "fake", "instance_type": "fake.tiny", "price_per_hour": "0.01"
                }),
                expected_version: Some(0),
            },
        )
        .await
        .expect("applied");
    assert_eq!(applied.pool.source, PoolSource::Stored { version: 1 });
    let tiny = PoolName::new("tiny").unwrap();
    // The writer reads its own write; the leader hears of it from the feed.
    assert!(b.engine.pool(&tiny).is_some());
    a.engine.catch_up().await;
    assert_eq!(
        a.engine
            .pool(&tiny)
            .map(|p| p.preferred().unwrap().to_string()),
        Some("fake.tiny".to_owned())
    );
    b.deploy("small", 2, 3600, Some("tiny")).await;
    a.until(Duration::from_secs(3), "running on the new pool", |h| {
        h.running("small")
    })
    .await;
    assert!(a
        .status("small")
        .nodes
        .iter()
        .all(|n| n.instance_type.as_str() == "fake.tiny"));

    // A restarted server reads it back.
    b.stop().await;
    let b2 =
        Harness::start_with_clock(a.cloud.clone(), a.store.clone(), server("b"), a.clock).await;
    assert_eq!(
        b2.engine.pool(&tiny).map(|p| p.source),
        Some(PoolSource::Stored { version: 1 })
    );

    // Retired once unused: gone from both.
    b2.destroy("small").await;
    a.until(Duration::from_secs(5), "gone", |h| {
        h.cloud.instance_count() == 0
    })
    .await;
    a.until(Duration::from_secs(5), "forgotten", |h| {
        h.engine
            .record(&flotilla_domain::ClusterName::new("small").unwrap())
            .is_none()
    })
    .await;
    b2.control
        .run(
            &admin,
            RetirePool {
                pool: "tiny".into(),
            },
        )
        .await
        .expect("retired");
    a.engine.catch_up().await;
    assert!(a.engine.pool(&tiny).is_none() && b2.engine.pool(&tiny).is_none());
    let kinds: Vec<ChangeKind> = a
        .store
        .changes(0, 1000, None)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.kind)
        .filter(|k| matches!(k, ChangeKind::PoolApplied | ChangeKind::PoolRetired))
        .collect();
    assert_eq!(kinds, [ChangeKind::PoolApplied, ChangeKind::PoolRetired]);
    a.stop().await;
}
