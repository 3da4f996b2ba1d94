//! Rolling replacement on the fake cloud under paused time: a pool's new
//! version replaces every outdated node without the ready count ever
//! falling below the wanted count, through boot failures and cloud
//! errors; a failing rollout stops and says why; a pause holds it; a
//! restart and a takeover carry it on.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, Harness};
use flotilla_cloud::fake::{FakeCloud, FakeConfig};
use flotilla_cloud::TokioClock;
use flotilla_control::{ApplyPool, PauseRollout, ResumeRollout};
use flotilla_domain::{Caller, NodeState};
use flotilla_engine::{EngineConfig, RolloutState};
use flotilla_store::{MemoryStore, Store};

const WANT: usize = 4;

fn engine_config(server: &str) -> EngineConfig {
    let mut c = config();
    c.server = server.to_owned();
    c.timeouts.boot = Duration::from_secs(20);
    c
}

fn pool(init: &str, rollout: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "driver": "fake", "instance_type": "fake.small", "init_data": init, "rollout": rollout
    })
}

async fn apply(h: &Harness, document: serde_json::Value) {
    h.control
        .run(
            &Caller::local_operator(),
            ApplyPool {
                pool: "web".into(),
                document,
                expected_version: None,
            },
        )
        .await
        .expect("pool applied");
}

/// Ready nodes and live nodes of a cluster as its status shows them, and
/// how many are outdated. Live: neither shutting down nor booting for
/// longer than the boot timeout (given up on, and being destroyed, maybe
/// again after a destroy the cloud failed).
fn counts(h: &Harness, cluster: &str) -> (usize, usize, usize) {
    let s = h.status(cluster);
    let now = h.engine.now();
    let live: Vec<_> = s
        .nodes
        .iter()
        .filter(|n| match n.state {
            NodeState::ShuttingDown => false,
            NodeState::Booting => now - n.launched_at < chrono::Duration::seconds(20),
            _ => true,
        })
        .collect();
    (
        live.iter().filter(|n| n.state == NodeState::Ready).count(),
        live.len(),
        live.iter().filter(|n| n.outdated).count(),
    )
}

fn converged(h: &Harness, clusters: &[&str]) -> bool {
    clusters.iter().all(|c| {
        let s = h.status(c);
        s.rollout.is_none()
            && s.nodes.len() == WANT
            && s.nodes
                .iter()
                .all(|n| n.state == NodeState::Ready && !n.outdated)
    })
}

/// Steps paused time 50 ms at a time until `done`, checking at each step
/// that every one of `clusters` has at least `floor` ready and at most
/// `ceiling` live nodes.
async fn watch(
    h: &Harness,
    clusters: &[&str],
    (floor, ceiling): (usize, usize),
    limit: Duration,
    done: impl Fn(&Harness) -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done(h) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not done within {limit:?}: {:?}",
            h.status(clusters[0])
        );
        for c in clusters {
            let (ready, live, _) = counts(h, c);
            assert!(ready >= floor, "{c}: {ready} ready, fewer than {floor}");
            assert!(
                live <= ceiling,
                "{c}: {live} nodes, more than {ceiling}: {:#?}",
                h.status(c).nodes
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server on a fresh fake cloud (with `fake`'s knobs) and store.
async fn fresh(fake: FakeConfig) -> (FakeCloud, Arc<dyn Store>, Harness) {
    let cloud = FakeCloud::new(fake);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let h = start(&cloud, &store, "a", TokioClock::default()).await;
    (cloud, store, h)
}

async fn start(
    cloud: &FakeCloud,
    store: &Arc<dyn Store>,
    server: &str,
    clock: TokioClock,
) -> Harness {
    Harness::start_with_clock(cloud.clone(), store.clone(), engine_config(server), clock).await
}

/// Deploys `clusters` on pool web at version `v1`, all ready.
async fn deployed(h: &Harness, clusters: &[&str], rollout: serde_json::Value) {
    apply(h, pool("v1", rollout)).await;
    for c in clusters {
        h.deploy(c, WANT as i64, 3600, Some("web")).await;
    }
    h.until(Duration::from_secs(30), "ready at v1", |h| {
        clusters.iter().all(|c| counts(h, c) == (WANT, WANT, 0))
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_rollout_replaces_outdated_nodes_never_below_the_wanted_ready_count() {
    let (cloud, _, h) = fresh(FakeConfig {
        boot_delay: Duration::from_secs(2),
        ..FakeConfig::default()
    })
    .await;
    let clusters = ["c1", "c2", "c3"];
    deployed(
        &h,
        &clusters,
        serde_json::json!({"max_surge": 2, "max_failures": 50}),
    )
    .await;
    let before: Vec<_> = h
        .status("c1")
        .nodes
        .iter()
        .map(|n| n.pool_version.clone())
        .collect();
    assert!(before.iter().all(|v| v.is_some()), "{before:?}");

    // Boot failures and cloud errors on, then a new version.
    cloud.reconfigure(|c| {
        c.never_healthy_rate = 0.2;
        c.create_error_rate = 0.2;
        c.destroy_error_rate = 0.1;
    });
    apply(
        &h,
        pool(
            "v2",
            serde_json::json!({"max_surge": 2, "max_failures": 50}),
        ),
    )
    .await;
    h.until(Duration::from_secs(1), "outdated", |h| {
        clusters.iter().all(|c| h.status(c).rollout.is_some())
    })
    .await;
    let r = h.status("c1").rollout.unwrap();
    assert_eq!(r.outdated as usize, WANT);
    assert_eq!(r.state, RolloutState::Rolling);

    watch(
        &h,
        &clusters,
        (WANT, WANT + 2),
        Duration::from_secs(600),
        |h| converged(h, &clusters),
    )
    .await;
    let after: Vec<_> = h
        .status("c1")
        .nodes
        .iter()
        .map(|n| n.pool_version.clone())
        .collect();
    assert!(after.iter().all(|v| v != &before[0]), "{after:?}");
    // No surplus left behind once the shutting down leave.
    h.until(Duration::from_secs(120), "no surplus", |h| {
        h.cloud.instance_count() == clusters.len() * WANT
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_replacement_that_keeps_failing_stops_the_rollout_and_says_why() {
    let (cloud, store, h) = fresh(FakeConfig::default()).await;
    deployed(&h, &["c1"], serde_json::json!({"max_surge": 1})).await;
    let made = cloud.stats().instances_created;

    cloud.reconfigure(|c| c.refuse_creates = Some("InvalidAMIID.NotFound".into()));
    apply(&h, pool("v2", serde_json::json!({"max_surge": 1}))).await;
    h.until(Duration::from_secs(120), "stopped", |h| {
        matches!(
            h.status("c1").rollout.map(|r| r.state),
            Some(RolloutState::Stopped { .. })
        )
    })
    .await;
    let Some(RolloutState::Stopped { reason, .. }) = h.status("c1").rollout.map(|r| r.state) else {
        unreachable!()
    };
    assert!(
        reason.contains("3 replacements in a row failed"),
        "{reason}"
    );
    assert!(reason.contains("InvalidAMIID.NotFound"), "{reason}");
    let stopped = store.rollout_holds().await.unwrap();
    assert!(stopped[0].stopped.is_some(), "stored: {stopped:?}");

    // Stopped, it tries no more: the old nodes serve on.
    let creates = cloud.stats().creates;
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(cloud.stats().creates, creates, "no churn once stopped");
    assert_eq!(counts(&h, "c1"), (WANT, WANT, WANT));
    assert_eq!(cloud.stats().instances_created, made);

    // Mended and resumed, it finishes.
    cloud.reconfigure(|c| c.refuse_creates = None);
    let view = h
        .control
        .run(
            &Caller::local_operator(),
            ResumeRollout { pool: "web".into() },
        )
        .await
        .unwrap();
    assert!(view.hold.is_none(), "{view:?}");
    assert!(["rolling", "idle"].contains(&view.state), "{view:?}");
    h.until(Duration::from_secs(120), "replaced", |h| {
        converged(h, &["c1"])
    })
    .await;
    assert!(store.rollout_holds().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_paused_rollout_starts_no_replacement_until_resumed() {
    let (cloud, _, h) = fresh(FakeConfig::default()).await;
    deployed(&h, &["c1"], serde_json::json!({})).await;
    let admin = Caller::local_operator();
    let paused = h
        .control
        .run(&admin, PauseRollout { pool: "web".into() })
        .await
        .unwrap();
    assert_eq!(paused.state, "paused");
    let made = cloud.stats().instances_created;
    apply(&h, pool("v2", serde_json::json!({}))).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(cloud.stats().instances_created, made, "nothing replaced");
    assert!(matches!(
        h.status("c1").rollout.map(|r| r.state),
        Some(RolloutState::Paused { .. })
    ));
    let rollout = h.control.pool_rollout(&admin, "web").unwrap();
    assert_eq!(rollout.state, "paused");
    assert_eq!(rollout.outdated(), WANT);

    h.control
        .run(&admin, ResumeRollout { pool: "web".into() })
        .await
        .unwrap();
    h.until(Duration::from_secs(120), "replaced", |h| {
        converged(h, &["c1"])
    })
    .await;
    assert_eq!(h.control.pool_rollout(&admin, "web").unwrap().state, "idle");
}

/// A rollout under way carries on through a restart of its server and
/// through a takeover by another: which nodes are outdated is read from
/// their tags.
#[tokio::test(start_paused = true)]
async fn a_rollout_survives_a_restart_and_a_takeover() {
    let cloud = FakeCloud::new(FakeConfig {
        boot_delay: Duration::from_secs(5),
        ..FakeConfig::default()
    });
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = TokioClock::default();
    let mut a = start(&cloud, &store, "a", clock).await;
    deployed(&a, &["c1"], serde_json::json!({"max_surge": 1})).await;
    apply(&a, pool("v2", serde_json::json!({"max_surge": 1}))).await;
    a.until(Duration::from_secs(30), "one replaced", |h| {
        let (_, _, outdated) = counts(h, "c1");
        outdated == WANT - 1
    })
    .await;

    // Restarted mid-rollout.
    a.stop().await;
    let mut a = start(&cloud, &store, "a", clock).await;
    // Its nodes are adopted as booting until probed: none is destroyed
    // for that.
    a.until(Duration::from_secs(60), "two replaced", |h| {
        let (_, live, outdated) = counts(h, "c1");
        assert!(live >= WANT, "{:?}", h.status("c1"));
        outdated <= WANT - 2
    })
    .await;

    // Taken over mid-rollout by another server.
    let b = start(&cloud, &store, "b", clock).await;
    a.stop().await;
    b.until(Duration::from_secs(120), "replaced by b", |h| {
        h.engine.leading() && converged(h, &["c1"])
    })
    .await;
    b.until(Duration::from_secs(120), "no surplus", |h| {
        h.cloud.instance_count() == WANT
    })
    .await;
}

/// A pool moved to another driver: the old driver's nodes serve until the
/// new driver's can carry the cluster, then go.
#[tokio::test(start_paused = true)]
async fn a_pool_moved_to_another_driver_keeps_its_nodes_until_the_new_ones_are_ready() {
    use std::collections::BTreeMap;

    use flotilla_cloud::{InstanceSet, Throttled};
    use flotilla_domain::PoolName;
    use flotilla_engine::Engine;

    let cloud = FakeCloud::new(FakeConfig {
        boot_delay: Duration::from_secs(3),
        ..FakeConfig::default()
    });
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = TokioClock::default();
    let set = |id: &str| -> Arc<dyn InstanceSet> {
        Arc::new(Throttled::new(cloud.instance_set(id), None))
    };
    let (engine, tasks) = Engine::start(
        engine_config("a"),
        store.clone(),
        BTreeMap::from([
            ("fake".to_owned(), set("set-a")),
            ("other".to_owned(), set("set-b")),
        ]),
        common::pools(),
        PoolName::new("default").unwrap(),
        Arc::new(clock),
        &mut prometheus_client::registry::Registry::default(),
    )
    .await
    .unwrap();
    let h = Harness {
        control: flotilla_control::Control::new(
            engine.clone(),
            Arc::new(flotilla_control::PoolCatalog::plain([
                ("fake", "fake"),
                ("other", "fake"),
            ])),
        ),
        engine,
        tasks: Some(tasks),
        cloud: cloud.clone(),
        store,
        clock,
    };
    deployed(&h, &["c1"], serde_json::json!({})).await;
    let mut moved = pool("v1", serde_json::json!({}));
    moved["driver"] = "other".into();
    apply(&h, moved).await;
    watch(
        &h,
        &["c1"],
        (WANT, usize::MAX),
        Duration::from_secs(120),
        |h| converged(h, &["c1"]),
    )
    .await;
    h.until(
        Duration::from_secs(60),
        "the old driver's nodes gone",
        |h| h.cloud.instance_count() == WANT,
    )
    .await;
}

/// A pool that cannot surge gives up a node before its replacement is
/// ready; replacements that never become ready still stop the rollout,
/// with the other outdated nodes serving on.
#[tokio::test(start_paused = true)]
async fn a_rollout_without_surge_stops_when_replacements_never_become_ready() {
    let (cloud, _, h) = fresh(FakeConfig::default()).await;
    let budget = serde_json::json!({"max_surge": 0, "max_unavailable": 1});
    deployed(&h, &["c1"], budget.clone()).await;

    cloud.reconfigure(|c| c.never_healthy_rate = 1.0);
    apply(&h, pool("v2", budget)).await;
    watch(
        &h,
        &["c1"],
        (WANT - 1, usize::MAX),
        Duration::from_secs(600),
        |h| {
            matches!(
                h.status("c1").rollout.map(|r| r.state),
                Some(RolloutState::Stopped { .. })
            )
        },
    )
    .await;
    let Some(RolloutState::Stopped { reason, .. }) = h.status("c1").rollout.map(|r| r.state) else {
        unreachable!()
    };
    assert!(
        reason.contains("was not ready within the boot timeout"),
        "{reason}"
    );
    assert!(!reason.contains("fake-"), "no node named: {reason}");
    // Three outdated nodes still serve.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let (ready, _, outdated) = counts(&h, "c1");
    assert_eq!((ready, outdated), (WANT - 1, WANT - 1));
}

/// With every node allowed unavailable, the old nodes all go at once and
/// no outdated node is left to see: failing replacements still stop it.
#[tokio::test(start_paused = true)]
async fn failing_replacements_stop_a_rollout_that_left_no_outdated_node() {
    let (cloud, store, h) = fresh(FakeConfig::default()).await;
    let budget = serde_json::json!({"max_surge": 0, "max_unavailable": "100%"});
    deployed(&h, &["c1"], budget.clone()).await;
    cloud.reconfigure(|c| c.never_healthy_rate = 1.0);
    apply(&h, pool("v2", budget)).await;
    h.until(Duration::from_secs(300), "stopped in the store", |_| {
        futures::executor::block_on(store.rollout_holds())
            .unwrap()
            .first()
            .is_some_and(|hold| hold.stopped.is_some())
    })
    .await;
}

/// A pool's `max_nodes` holds for all its clusters together: a cluster
/// beyond it waits and says why, and gets its nodes once another's go.
#[tokio::test(start_paused = true)]
async fn a_pool_never_holds_more_than_its_max_nodes() {
    let (cloud, _, h) = fresh(FakeConfig {
        boot_delay: Duration::from_secs(1),
        ..FakeConfig::default()
    })
    .await;
    let mut capped = pool("v1", serde_json::json!({}));
    capped["max_nodes"] = 6.into();
    apply(&h, capped).await;
    // Deployed at once: their creates race for the pool's places.
    for c in ["c1", "c2", "c3"] {
        h.deploy(c, WANT as i64, 3600, Some("web")).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        assert!(
            cloud.instance_count() <= 6,
            "{} nodes",
            cloud.instance_count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cloud.instance_count(), 6);
    let waiting: Vec<_> = ["c1", "c2", "c3"]
        .iter()
        .filter_map(|c| h.status(c).obstacle)
        .collect();
    assert!(!waiting.is_empty());
    for o in &waiting {
        assert_eq!(o.code, flotilla_domain::ObstacleCode::PoolFull, "{o:?}");
        assert!(o.message.contains("max_nodes"), "{}", o.message);
    }

    h.destroy("c1").await;
    h.destroy("c2").await;
    h.until(Duration::from_secs(60), "c3 whole", |h| {
        counts(h, "c3") == (WANT, WANT, 0) && h.status("c3").obstacle.is_none()
    })
    .await;
}

/// A pool at its `max_nodes` has no room to surge: it replaces in place, a
/// node at a time, rather than wait for room that never comes.
#[tokio::test(start_paused = true)]
async fn a_full_pool_replaces_in_place() {
    let (_, _, h) = fresh(FakeConfig {
        boot_delay: Duration::from_secs(1),
        ..FakeConfig::default()
    })
    .await;
    let full = |init: &str| {
        let mut p = pool(init, serde_json::json!({}));
        p["max_nodes"] = (WANT as u32).into();
        p
    };
    apply(&h, full("v1")).await;
    h.deploy("c1", WANT as i64, 3600, Some("web")).await;
    h.until(Duration::from_secs(30), "ready", |h| {
        counts(h, "c1") == (WANT, WANT, 0)
    })
    .await;
    apply(&h, full("v2")).await;
    watch(
        &h,
        &["c1"],
        (WANT - 1, WANT),
        Duration::from_secs(120),
        |h| converged(h, &["c1"]),
    )
    .await;
}
