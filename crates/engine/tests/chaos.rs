//! The whole engine on a misbehaving cloud: 200 clusters, 10 % create and
//! destroy failures, rate-limit errors, a quota below total demand, one
//! instance type never available, random node deaths.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{config, Harness};
use flotilla_cloud::fake::{FakeCloud, FakeConfig};
use flotilla_domain::{ClusterState, NodeState};
use flotilla_store::MemoryStore;
use tokio::time::Instant;

const CLUSTERS: usize = 200;
const QUOTA: usize = 300;

fn wanted(i: usize) -> i64 {
    1 + (i % 4) as i64
}

fn gpu(i: usize) -> bool {
    i.is_multiple_of(20)
}

#[tokio::test(start_paused = true)]
async fn chaos_converges_and_drains() {
    let cloud = FakeCloud::new(FakeConfig {
        seed: 2026,
        boot_delay: Duration::from_secs(5),
        create_error_rate: 0.1,
        destroy_error_rate: 0.1,
        rate_limit_above: Some(100),
        quota: Some(QUOTA),
        unavailable_types: vec!["fake.gpu".into()],
        death_rate: 0.1,
        death_within: Duration::from_secs(120),
        max_batch: 50,
        ..FakeConfig::default()
    });
    let mut cfg = config();
    cfg.timeouts.boot = Duration::from_secs(60);
    cfg.timeouts.destroy_retry = Duration::from_secs(5);
    let mut h = Harness::start(cloud.clone(), Arc::new(MemoryStore::new()), cfg).await;

    let demand: i64 = (0..CLUSTERS).filter(|i| !gpu(*i)).map(wanted).sum();
    assert!(demand as usize > QUOTA, "the quota must be below demand");

    let mut deployed_at = HashMap::new();
    for i in 0..CLUSTERS {
        let name = format!("chaos-{i}");
        deployed_at.insert(name.clone(), Instant::now());
        h.deploy(&name, wanted(i), 24 * 3600, gpu(i).then_some("gpu"))
            .await;
    }

    // Phase 1: the cloud fills up to its quota and no cluster gets more
    // than it asked for.
    h.until(Duration::from_secs(600), "instances at quota", |h| {
        h.cloud.instance_count() == QUOTA
    })
    .await;
    for i in 0..CLUSTERS {
        let s = h.status(&format!("chaos-{i}"));
        let live = s
            .nodes
            .iter()
            .filter(|n| n.state != NodeState::ShuttingDown)
            .count();
        assert!(
            live as i64 <= wanted(i),
            "chaos-{i} has {live} > {}",
            wanted(i)
        );
        if gpu(i) {
            assert!(
                s.nodes.is_empty(),
                "chaos-{i} got nodes of an unavailable type"
            );
        }
    }

    // Phase 2: with room and no more deaths, every cluster converges.
    cloud.reconfigure(|c| {
        c.quota = None;
        c.death_rate = 0.0;
    });
    h.until(Duration::from_secs(900), "every cluster running", |h| {
        (0..CLUSTERS)
            .filter(|i| !gpu(*i))
            .all(|i| h.running(&format!("chaos-{i}")))
    })
    .await;
    for i in (0..CLUSTERS).filter(|i| !gpu(*i)) {
        let s = h.status(&format!("chaos-{i}"));
        assert_eq!(
            s.nodes.len() as i64,
            wanted(i),
            "chaos-{i}: exactly its nodes"
        );
    }
    for i in (0..CLUSTERS).filter(|i| gpu(*i)) {
        assert_eq!(
            h.status(&format!("chaos-{i}")).state,
            ClusterState::Deploying
        );
    }

    // Phase 3: destroy everything; the cloud drains to zero.
    let mut destroyed_at = HashMap::new();
    for i in 0..CLUSTERS {
        let name = format!("chaos-{i}");
        h.destroy(&name).await;
        destroyed_at.insert(name, Instant::now());
    }
    h.until(Duration::from_secs(900), "the cloud drained", |h| {
        h.cloud.instance_count() == 0
            && (0..CLUSTERS)
                .all(|i| h.status(&format!("chaos-{i}")).state == ClusterState::NotRunning)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(cloud.instance_count(), 0, "nothing came back");

    // No instance was ever created for a cluster that was not wanted.
    let log = cloud.create_log();
    assert!(!log.is_empty());
    for record in &log {
        let deployed = deployed_at
            .get(&record.cluster)
            .unwrap_or_else(|| panic!("create for unknown cluster {}", record.cluster));
        assert!(
            record.at >= *deployed,
            "create for {} before its deploy",
            record.cluster
        );
        assert!(
            record.at <= destroyed_at[&record.cluster],
            "create for {} after its destroy",
            record.cluster
        );
        assert!(!record.cluster.is_empty());
    }
    let stats = cloud.stats();
    assert!(
        stats.injected_errors > 0 && stats.rate_limited > 0,
        "faults were exercised: {stats:?}"
    );
    assert!(stats.peak_instances <= QUOTA.max(demand as usize));
    h.stop().await;
}
