//! Engine behaviour on the fake cloud, under paused time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, name, Harness};
use flotilla_cloud::fake::{FakeCloud, FakeConfig, FakeOp, FAKE_SHAPE};
use flotilla_cloud::{Offering, Tags, TAG_INSTANCE_SET};
use flotilla_domain::{Caller, ClusterState, NodeState, ObstacleCode};
use flotilla_engine::pools::{OFFERING_TTL, OFFERING_WAIT};
use flotilla_store::{MemoryStore, Store};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn deploy_wakes_its_reconcile_at_once() {
    let mut h = Harness::new(FakeConfig::default()).await;
    let before = Instant::now();
    h.deploy("demo", 3, 3600, None).await;
    h.until(Duration::from_millis(50), "three instances", |h| {
        h.cloud.instance_count() == 3
    })
    .await;
    assert!(
        Instant::now() - before < Duration::from_millis(50),
        "no polling delay"
    );
    h.until(Duration::from_secs(1), "running", |h| h.running("demo"))
        .await;
    let s = h.status("demo");
    assert_eq!(s.nodes.len(), 3);
    assert!(s
        .nodes
        .iter()
        .all(|n| n.state == NodeState::Ready && n.address.is_some()));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn resize_destroy_and_forget() {
    let mut h = Harness::new(FakeConfig::default()).await;
    h.deploy("demo", 4, 3600, None).await;
    h.until(Duration::from_secs(1), "running with 4", |h| {
        h.running("demo")
    })
    .await;
    h.deploy("demo", 2, 3600, None).await;
    h.until(Duration::from_secs(2), "two instances", |h| {
        h.cloud.instance_count() == 2
    })
    .await;
    h.until(Duration::from_secs(2), "running with 2", |h| {
        h.running("demo")
    })
    .await;
    assert_eq!(h.status("demo").node_capacity, 2);
    let s = h.destroy("demo").await;
    assert_eq!(s.state, ClusterState::Destroying);
    assert_eq!(s.expires_at, None, "destroy clears the scheduled deletion");
    h.until(Duration::from_secs(2), "not running", |h| {
        h.status("demo").state == ClusterState::NotRunning
    })
    .await;
    assert_eq!(h.cloud.instance_count(), 0);
    assert!(
        h.store.get_cluster(&name("demo")).await.unwrap().is_none(),
        "record forgotten"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn ttl_fires_at_its_deadline() {
    let mut h = Harness::new(FakeConfig::default()).await;
    let deployed = h.deploy("short", 2, 60, None).await;
    let deadline = deployed.expires_at.unwrap();
    h.until(Duration::from_secs(1), "running", |h| h.running("short"))
        .await;
    tokio::time::sleep(Duration::from_secs(58)).await;
    assert_eq!(h.status("short").state, ClusterState::Running);
    h.until(Duration::from_secs(3), "destroyed by TTL", |h| {
        h.status("short").state == ClusterState::NotRunning
    })
    .await;
    let late = chrono::Utc::now().signed_duration_since(deadline);
    let _ = late; // wall time is not paused; the tokio clock is what the engine follows
    assert_eq!(h.cloud.instance_count(), 0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn redeploy_pushes_the_deadline_back() {
    let mut h = Harness::new(FakeConfig::default()).await;
    h.deploy("c", 1, 60, None).await;
    tokio::time::sleep(Duration::from_secs(50)).await;
    h.deploy("c", 1, 60, None).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        h.status("c").state,
        ClusterState::Running,
        "the first deadline was cleared"
    );
    h.until(Duration::from_secs(40), "second deadline", |h| {
        h.status("c").state == ClusterState::NotRunning
    })
    .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn deadline_passed_while_down_fires_at_start_up() {
    let cloud = FakeCloud::new(FakeConfig::default());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut h = Harness::start(cloud.clone(), store.clone(), config()).await;
    h.deploy("c", 2, 30, None).await;
    h.until(Duration::from_secs(1), "running", |h| h.running("c"))
        .await;
    h.stop().await;
    // The server is down past the deadline.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(cloud.instance_count(), 2);
    let creates = cloud.stats().creates;
    let mut h = Harness::start_with_clock(cloud.clone(), store, config(), h.clock).await;
    h.until(Duration::from_secs(2), "destroyed at start-up", |h| {
        h.status("c").state == ClusterState::NotRunning
    })
    .await;
    assert_eq!(cloud.instance_count(), 0);
    assert_eq!(
        cloud.stats().creates,
        creates,
        "nothing created for an expired cluster"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn restart_adopts_instances_without_duplicates() {
    let cloud = FakeCloud::new(FakeConfig::default());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut h = Harness::start(cloud.clone(), store.clone(), config()).await;
    h.deploy("c", 3, 3600, None).await;
    h.until(Duration::from_secs(1), "running", |h| h.running("c"))
        .await;
    let ids: Vec<_> = h.status("c").nodes.iter().map(|n| n.id.clone()).collect();
    h.stop().await;
    let creates = cloud.stats().creates;
    let mut h = Harness::start_with_clock(cloud.clone(), store, config(), h.clock).await;
    h.until(Duration::from_secs(2), "running again", |h| h.running("c"))
        .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let again: Vec<_> = h.status("c").nodes.iter().map(|n| n.id.clone()).collect();
    assert_eq!(ids, again, "the same nodes were adopted");
    assert_eq!(cloud.stats().creates, creates, "no duplicates");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn quota_stops_creates_until_an_instance_goes() {
    let mut h = Harness::new(FakeConfig {
        quota: Some(2),
        ..FakeConfig::default()
    })
    .await;
    h.deploy("c", 3, 3600, None).await;
    h.until(Duration::from_secs(1), "two instances", |h| {
        h.cloud.instance_count() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let creates = h.cloud.stats().creates;
    // Several resyncs pass; nothing went away, so nothing is tried.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        h.cloud.stats().creates,
        creates,
        "no creates while at quota"
    );
    assert_eq!(h.status("c").state, ClusterState::Deploying);
    let stalled = h.status("c").obstacle.expect("the quota stands in its way");
    assert_eq!(stalled.code, ObstacleCode::QuotaExceeded);
    assert_eq!(stalled.retry_at, None, "tried again once an instance goes");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        h.status("c").obstacle,
        Some(stalled),
        "waiting at quota through resyncs is not met again (nor republished)"
    );
    let victim = h.status("c").nodes[0].id.clone();
    h.cloud.kill(&victim);
    h.until(Duration::from_secs(15), "replacement", |h| {
        h.cloud.stats().instances_created == 3 && h.cloud.instance_count() == 2
    })
    .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn capacity_shortage_backs_off_the_instance_type() {
    let mut h = Harness::new(FakeConfig {
        unavailable_types: vec!["fake.gpu".into()],
        ..FakeConfig::default()
    })
    .await;
    h.deploy("g", 1, 3600, Some("gpu")).await;
    h.deploy("s", 1, 3600, None).await;
    tokio::time::sleep(Duration::from_secs(150)).await;
    let gpu_creates = h.cloud.create_log().len();
    let stats = h.cloud.stats();
    // One attempt at once, then one a minute: at 0, 60 and 120 s.
    assert_eq!(stats.creates - gpu_creates as u64, 3, "{stats:?}");
    assert!(h.running("s"), "other types are unaffected");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn boot_timeout_replaces_a_node() {
    let mut cfg = config();
    cfg.timeouts.boot = Duration::from_secs(120);
    let cloud = FakeCloud::new(FakeConfig {
        never_healthy_rate: 1.0,
        ..FakeConfig::default()
    });
    let mut h = Harness::start(cloud.clone(), Arc::new(MemoryStore::new()), cfg).await;
    h.deploy("c", 1, 3600, None).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let first = h.status("c").nodes[0].id.clone();
    assert_eq!(h.status("c").nodes[0].state, NodeState::Booting);
    cloud.reconfigure(|c| c.never_healthy_rate = 0.0);
    h.until(Duration::from_secs(90), "replacement ready", |h| {
        h.running("c")
    })
    .await;
    // The stuck node leaves; its replacement stays.
    h.until(Duration::from_secs(5), "stuck node gone", |h| {
        h.status("c").nodes.len() == 1
    })
    .await;
    let now = h.status("c");
    assert_ne!(now.nodes[0].id, first, "the stuck node was replaced");
    assert_eq!(now.nodes[0].state, NodeState::Ready);
    assert_eq!(cloud.instance_count(), 1);
    assert_eq!(
        cloud.stats().instances_created,
        2,
        "exactly one replacement"
    );
    // The pool keeps it as an error: the node given up on.
    let errors = pool_errors_published(&h, "default").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].key.kind,
        flotilla_domain::PoolErrorKind::BootTimeout
    );
    assert_eq!(errors[0].key.code, None);
    assert_eq!(errors[0].key.cluster, name("c"));
    assert_eq!(errors[0].count, 1);
    assert!(
        errors[0].message.contains(first.as_str()),
        "{}",
        errors[0].message
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn unhealthy_node_is_replaced_after_the_probe_timeout() {
    let mut cfg = config();
    cfg.timeouts.probe = Duration::from_secs(30);
    let cloud = FakeCloud::new(FakeConfig::default());
    let mut h = Harness::start(cloud.clone(), Arc::new(MemoryStore::new()), cfg).await;
    h.deploy("c", 1, 3600, None).await;
    h.until(Duration::from_secs(1), "running", |h| h.running("c"))
        .await;
    let sick = h.status("c").nodes[0].id.clone();
    cloud.sicken(&sick);
    h.until(Duration::from_secs(15), "unhealthy", |h| {
        h.status("c").nodes[0].state == NodeState::Unhealthy
    })
    .await;
    h.until(Duration::from_secs(60), "replaced", |h| {
        h.running("c") && h.status("c").nodes.iter().all(|n| n.id != sick)
    })
    .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_fails_on_this_side_is_not_held_against_the_node() {
    let mut cfg = config();
    cfg.timeouts.probe = Duration::from_secs(30);
    let cloud = FakeCloud::new(FakeConfig::default());
    let mut h = Harness::start(cloud.clone(), Arc::new(MemoryStore::new()), cfg).await;
    h.deploy("c", 1, 3600, None).await;
    h.until(Duration::from_secs(1), "running", |h| h.running("c"))
        .await;
    let node = h.status("c").nodes[0].id.clone();
    cloud.reconfigure(|c| c.probes_fail_locally = true);
    tokio::time::sleep(Duration::from_secs(120)).await;
    let s = h.status("c");
    assert_eq!(s.nodes.len(), 1);
    assert_eq!(s.nodes[0].id, node, "kept");
    assert_eq!(s.nodes[0].state, NodeState::Ready, "its state stands");
    assert_eq!(cloud.stats().instances_created, 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn when_every_node_of_a_driver_fails_its_probe_at_once_none_is_replaced() {
    let mut cfg = config();
    cfg.timeouts.probe = Duration::from_secs(30);
    let cloud = FakeCloud::new(FakeConfig::default());
    let mut h = Harness::start(cloud.clone(), Arc::new(MemoryStore::new()), cfg).await;
    h.deploy("a", 2, 3600, None).await;
    h.deploy("b", 1, 3600, None).await;
    h.until(Duration::from_secs(1), "running", |h| {
        h.running("a") && h.running("b")
    })
    .await;
    let ids = |h: &Harness| -> Vec<_> {
        ["a", "b"]
            .iter()
            .flat_map(|c| h.status(c).nodes.into_iter().map(|n| n.id))
            .collect()
    };
    let before = ids(&h);
    for id in &before {
        cloud.sicken(id);
    }
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(ids(&h), before, "none replaced");
    assert_eq!(cloud.stats().instances_created, 3);
    assert_eq!(cloud.stats().destroys, 0);

    // With one node answering, the others are failing nodes again.
    h.deploy("d", 1, 3600, None).await;
    h.until(Duration::from_secs(60), "the failing nodes replaced", |h| {
        h.running("a") && h.running("b") && ids(h).iter().all(|id| !before.contains(id))
    })
    .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn destroy_is_retried_until_the_instance_leaves() {
    let mut h = Harness::new(FakeConfig::default()).await;
    h.deploy("c", 1, 3600, None).await;
    h.until(Duration::from_secs(1), "running", |h| h.running("c"))
        .await;
    h.cloud.reconfigure(|c| c.destroy_error_rate = 1.0);
    h.destroy("c").await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(h.cloud.instance_count(), 1);
    assert!(h.cloud.stats().destroys >= 3, "retried with back-off");
    h.cloud.reconfigure(|c| c.destroy_error_rate = 0.0);
    h.until(Duration::from_secs(60), "gone", |h| {
        h.status("c").state == ClusterState::NotRunning
    })
    .await;
    assert_eq!(h.cloud.instance_count(), 0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn foreign_and_orphan_instances() {
    let cloud = FakeCloud::new(FakeConfig::default());
    let foreign = cloud.insert_foreign(Tags::from([(
        TAG_INSTANCE_SET.into(),
        "someone-else".into(),
    )]));
    // An instance of ours for a cluster nobody wants (left by a crash).
    let orphan = cloud.insert_foreign(Tags::from([
        (TAG_INSTANCE_SET.into(), common::SET_ID.into()),
        (flotilla_cloud::TAG_CLUSTER.into(), "ghost".into()),
        (
            flotilla_cloud::TAG_INSTANCE_TYPE.into(),
            "fake.small".into(),
        ),
    ]));
    let mut h = Harness::start(cloud.clone(), Arc::new(MemoryStore::new()), config()).await;
    h.until(Duration::from_secs(2), "orphan destroyed", |h| {
        h.status("ghost").state == ClusterState::NotRunning
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        cloud.instance_count(),
        1,
        "only the foreign instance is left"
    );
    let _ = (foreign, orphan);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn creates_are_batched() {
    let mut h = Harness::new(FakeConfig::default()).await;
    h.deploy("big", 100, 3600, None).await;
    h.until(Duration::from_secs(1), "running", |h| h.running("big"))
        .await;
    let creates = h.cloud.stats().creates;
    assert!(
        creates <= 100 / 50 + 2,
        "{creates} create calls for 100 nodes"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn wait_returns_when_settled_or_reports_unsettled() {
    let mut cfg = config();
    cfg.max_wait = Duration::from_secs(5);
    let cloud = FakeCloud::new(FakeConfig {
        boot_delay: Duration::from_secs(2),
        ..FakeConfig::default()
    });
    let mut h = Harness::start(cloud.clone(), Arc::new(MemoryStore::new()), cfg).await;
    let before = Instant::now();
    h.deploy("w", 2, 3600, None).await;
    let view = h.control.wait_settled(&name("w")).await;
    assert_eq!(view.settled, Some(true));
    assert_eq!(view.state, ClusterState::Running);
    assert!(Instant::now() - before < Duration::from_secs(4));

    let hold = cloud.hold(FakeOp::Create);
    h.deploy("w", 3, 3600, None).await;
    let view = h.control.wait_settled(&name("w")).await;
    assert_eq!(view.settled, Some(false), "max_wait passed first");
    assert_eq!(view.state, ClusterState::Deploying);
    drop(hold);

    h.destroy("w").await;
    let view = h.control.wait_settled(&name("w")).await;
    assert_eq!(view.state, ClusterState::NotRunning);
    assert_eq!(view.settled, Some(true));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn is_public_and_pool_cannot_change() {
    let mut h = Harness::new(FakeConfig::default()).await;
    h.deploy("c", 1, 3600, None).await;
    let err = h
        .deploy_as(&Caller::local_operator(), "c", 1, 3600, true, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is_public"), "{err}");
    let err = h
        .deploy_as(&Caller::local_operator(), "c", 1, 3600, false, Some("big"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pool"), "{err}");
    assert_eq!(h.status("c").node_capacity, 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn pools_are_listed_with_their_offerings_asked_once_a_ttl() {
    let mut h = Harness::new(FakeConfig::default()).await;
    let pools = h.engine.list_pools().await;
    let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["big", "default", "gpu"]);
    let default = &pools[1];
    assert!(default.is_default && !pools[0].is_default);
    assert_eq!(default.driver, "fake");
    let (ty, offering) = &default.types[0];
    assert_eq!(ty.instance_type.as_str(), "fake.small");
    assert_eq!(offering.shape, Some(FAKE_SHAPE));
    assert_eq!(offering.spot_price, None);
    assert_eq!(h.cloud.stats().offerings, 3, "one per pool");
    // Listing again within the TTL asks the driver nothing.
    for _ in 0..5 {
        assert_eq!(h.engine.list_pools().await, pools);
    }
    assert_eq!(h.cloud.stats().offerings, 3);
    tokio::time::sleep(OFFERING_TTL).await;
    h.engine.list_pools().await;
    assert_eq!(h.cloud.stats().offerings, 6, "asked again after the TTL");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_driver_slow_to_describe_its_pools_does_not_hold_up_the_listing() {
    let mut h = Harness::new(FakeConfig::default()).await;
    let hold = h.cloud.hold(FakeOp::Offering);
    let before = Instant::now();
    let pools = h.engine.list_pools().await;
    assert_eq!(Instant::now() - before, OFFERING_WAIT);
    assert!(pools.iter().all(|p| p.types[0].1 == Offering::default()));
    assert_eq!(pools.len(), 3, "the pools are listed all the same");
    // Remembered as unknown for the TTL: no call piles up behind the slow one.
    drop(hold);
    let asked = h.cloud.stats().offerings;
    h.engine.list_pools().await;
    assert_eq!(h.cloud.stats().offerings, asked);
    tokio::time::sleep(OFFERING_TTL).await;
    let pools = h.engine.list_pools().await;
    assert!(pools.iter().all(|p| p.types[0].1.shape == Some(FAKE_SHAPE)));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_refusing_cloud_is_in_the_status_retried_when_it_says_and_cleared_once_it_gives_way() {
    let mut h = Harness::new(FakeConfig {
        refuse_creates: Some("Invalid IamInstanceProfile name: flotilla-node".into()),
        ..FakeConfig::default()
    })
    .await;
    h.deploy("c", 2, 3600, None).await;
    h.until(Duration::from_secs(30), "refused four times", |h| {
        h.status("c").obstacle.is_some_and(|o| o.count >= 4)
    })
    .await;
    let o = h.status("c").obstacle.unwrap();
    assert_eq!(o.code, ObstacleCode::CloudRefused);
    assert!(
        o.message.contains("Invalid IamInstanceProfile"),
        "{}",
        o.message
    );
    assert!(o.since < o.last_at);
    // The retry is when the back-off says, and it comes then, not sooner.
    let retry_at = o.retry_at.expect("a failure is retried");
    let wait = (retry_at - o.last_at).to_std().unwrap();
    assert_eq!(wait, flotilla_engine::runtime::backoff(o.count));
    let attempts = h.cloud.stats().creates;
    tokio::time::sleep(wait - Duration::from_millis(100)).await;
    assert_eq!(h.status("c").obstacle.unwrap().count, o.count, "not sooner");
    assert_eq!(h.cloud.stats().creates, attempts);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.status("c").obstacle.unwrap().count, o.count + 1, "then");

    h.cloud.reconfigure(|c| c.refuse_creates = None);
    h.until(Duration::from_secs(60), "running", |h| h.running("c"))
        .await;
    assert_eq!(h.status("c").obstacle, None, "cleared once it gave way");
    h.stop().await;
}

/// A pool of several instance types makes each node of the cheapest the
/// cloud has capacity for: out of the cheapest, it goes on with the next
/// at once; nodes of any of its types serve, none is replaced for it; once
/// the cheapest is back (its back-off over), new nodes are of it again.
#[tokio::test(start_paused = true)]
async fn a_pool_of_several_types_falls_back_to_the_next_cheapest() {
    use flotilla_control::ApplyPool;
    use flotilla_domain::Caller;
    let mut h = Harness::new(FakeConfig {
        unavailable_types: vec!["fake.spot".into()],
        ..FakeConfig::default()
    })
    .await;
    h.control
        .run(
            &Caller::local_operator(),
            ApplyPool {
                pool: "mixed".into(),
                document: serde_json::json!({
                    "driver": "fake", "price_per_hour": "0.10",
                    "instance_types": ["fake.small", {"name": "fake.spot", "price_per_hour": "0.03"}]
                }),
                expected_version: Some(0),
            },
        )
        .await
        .expect("applied");
    h.deploy("m", 2, 3600, Some("mixed")).await;
    h.until(Duration::from_secs(5), "running on the dearer type", |h| {
        h.running("m")
    })
    .await;
    let types = |h: &Harness| -> Vec<String> {
        h.status("m")
            .nodes
            .iter()
            .map(|n| n.instance_type.to_string())
            .collect()
    };
    assert_eq!(types(&h), ["fake.small", "fake.small"]);
    assert!(h.status("m").nodes.iter().all(|n| !n.outdated));
    assert!(h.status("m").rollout.is_none(), "nothing to replace");
    assert_eq!(
        h.cloud.stats().creates,
        2,
        "the cheapest refused, then the next at once"
    );
    let errors = pool_errors_published(&h, "mixed").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key.instance_type.as_str(), "fake.spot");

    // The cheapest is back; once its back-off ends, new nodes are of it.
    h.cloud.reconfigure(|c| c.unavailable_types.clear());
    tokio::time::sleep(Duration::from_secs(61)).await;
    h.deploy("m", 3, 3600, Some("mixed")).await;
    h.until(Duration::from_secs(5), "running at three", |h| {
        h.running("m")
    })
    .await;
    let mut now = types(&h);
    now.sort();
    assert_eq!(now, ["fake.small", "fake.small", "fake.spot"]);
    h.stop().await;
}

/// Pool `pool`'s errors once the leader has published some (within 5 s).
async fn pool_errors_published(h: &Harness, pool: &str) -> Vec<flotilla_domain::PoolError> {
    let pool = flotilla_domain::PoolName::new(pool).unwrap();
    for _ in 0..50 {
        let errors = h.store.pool_errors(&pool, None, 10).await.unwrap();
        if !errors.is_empty() {
            return errors;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Vec::new()
}
