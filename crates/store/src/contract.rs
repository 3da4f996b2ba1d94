//! The store contract suite: what every [`Store`] backend must do, run
//! against SQLite and (later) PostgreSQL alike.
//!
//! A backend's test file calls
//! [`store_contract_tests!`](crate::store_contract_tests) with an async
//! function that builds a [`Harness`] around an empty store. Every check
//! starts from that empty store and uses fixed, millisecond-precise times, so
//! records can be compared whole.

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use flotilla_domain::{
    ClusterName, ClusterRecord, DeployCommand, Limits, NodeCapacity, PoolName, TimeToLive,
};
use tokio::task::JoinSet;

use crate::{Store, StoreError};

pub struct Harness {
    /// An empty store.
    pub store: Arc<dyn Store>,
    /// Keeps fixtures (temporary directories, servers) alive.
    pub guard: Box<dyn Any + Send>,
}

/// Generates one `#[tokio::test]` per contract check.
#[macro_export]
macro_rules! store_contract_tests {
    ($harness:path) => {
        $crate::store_contract_tests!(@each $harness,
            deploy_creates_the_record,
            returned_records_equal_stored_ones,
            redeploy_sets_capacity_and_expiry_and_bumps_generation,
            redeploy_with_other_visibility_conflicts_and_changes_nothing,
            redeploy_with_other_pool_conflicts_and_changes_nothing,
            destroy_marks_destroying_and_clears_expiry,
            deploy_after_destroy_revives_the_cluster,
            expire_due_fires_exactly_the_due_clusters_once,
            next_expiry_is_the_earliest_live_deadline,
            forget_needs_destroying_and_the_current_generation,
            list_clusters_returns_all_ordered_by_name,
            instance_set_id_is_stable_per_driver,
            racing_callers_get_the_same_instance_set_id,
            concurrent_deploys_of_many_clusters_all_land,
            concurrent_deploy_and_destroy_leave_a_consistent_record
        );
    };
    (@each $harness:path, $($check:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                $crate::contract::$check($harness().await).await;
            }
        )+
    };
}

/// A fixed origin, so records compare whole.
fn t(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_700_000_000_000).expect("valid time")
        + Duration::seconds(seconds)
}

fn name(s: &str) -> ClusterName {
    ClusterName::new(s).expect("valid cluster name")
}

fn pool(s: &str) -> PoolName {
    PoolName::new(s).expect("valid pool name")
}

fn command(cluster: &str, nodes: u32, is_public: bool, pool_name: &str) -> DeployCommand {
    let limits = Limits::default();
    DeployCommand {
        cluster: name(cluster),
        node_capacity: NodeCapacity::new(i64::from(nodes), &limits).expect("valid capacity"),
        time_to_live: TimeToLive::new(3600, &limits).expect("valid ttl"),
        is_public,
        pool: pool(pool_name),
    }
}

async fn get(store: &dyn Store, cluster: &str) -> Option<ClusterRecord> {
    store
        .get_cluster(&name(cluster))
        .await
        .expect("get_cluster")
}

async fn deploy(store: &dyn Store, c: &DeployCommand, now: i64, expires: i64) -> ClusterRecord {
    store.deploy(c, t(now), t(expires)).await.expect("deploy")
}

fn sorted(mut records: Vec<ClusterRecord>) -> Vec<ClusterRecord> {
    records.sort_by(|a, b| a.name.cmp(&b.name));
    records
}

pub async fn deploy_creates_the_record(h: Harness) {
    let store = h.store.as_ref();
    assert_eq!(get(store, "alpha").await, None);

    let made = deploy(store, &command("alpha", 3, false, "default"), 0, 3600).await;
    let want = ClusterRecord {
        name: name("alpha"),
        is_public: false,
        node_capacity: NodeCapacity::from_stored(3),
        pool: pool("default"),
        expires_at: Some(t(3600)),
        destroying: false,
        created_at: t(0),
        updated_at: t(0),
        generation: 1,
    };
    assert_eq!(made, want);
    assert_eq!(get(store, "alpha").await, Some(want));

    let public = deploy(store, &command("beta", 1, true, "gpu_pool"), 5, 65).await;
    assert!(public.is_public);
    assert_eq!(public.pool, pool("gpu_pool"));
    assert_eq!(get(store, "beta").await, Some(public));
    assert_eq!(
        get(store, "gamma").await,
        None,
        "no record for a cluster never deployed"
    );
}

pub async fn returned_records_equal_stored_ones(h: Harness) {
    let store = h.store.as_ref();
    // Times finer than a millisecond may be dropped by a backend, but then
    // from the returned record too: what a write returns is what a read
    // gives back.
    let now = t(0) + Duration::nanoseconds(123_456_789);
    let expires = t(60) + Duration::nanoseconds(987_654_321);
    let c = command("precise", 2, false, "default");
    let made = store.deploy(&c, now, expires).await.expect("deploy");
    assert_eq!(get(store, "precise").await.as_ref(), Some(&made));
    let expires_at = made.expires_at.expect("scheduled");
    assert!(
        (expires_at - expires).abs() < Duration::milliseconds(1),
        "{expires_at} vs {expires}"
    );
    assert!((made.created_at - now).abs() < Duration::milliseconds(1));

    let destroyed = store
        .destroy(&c.cluster, now)
        .await
        .expect("destroy")
        .expect("exists");
    assert_eq!(get(store, "precise").await.as_ref(), Some(&destroyed));
}

pub async fn redeploy_sets_capacity_and_expiry_and_bumps_generation(h: Harness) {
    let store = h.store.as_ref();
    let first = deploy(store, &command("alpha", 2, true, "default"), 0, 100).await;
    let second = deploy(store, &command("alpha", 5, true, "default"), 10, 500).await;
    let want = ClusterRecord {
        node_capacity: NodeCapacity::from_stored(5),
        expires_at: Some(t(500)),
        updated_at: t(10),
        generation: 2,
        ..first.clone()
    };
    assert_eq!(second, want);
    assert_eq!(second.created_at, first.created_at, "created_at is kept");
    assert_eq!(get(store, "alpha").await, Some(want));

    // Shortening the TTL is a change like any other.
    let third = deploy(store, &command("alpha", 1, true, "default"), 20, 50).await;
    assert_eq!(third.expires_at, Some(t(50)));
    assert_eq!(third.node_capacity.get(), 1);
    assert_eq!(third.generation, 3);
    assert_eq!(store.next_expiry().await.expect("next_expiry"), Some(t(50)));
}

fn assert_conflict(
    result: Result<ClusterRecord, StoreError>,
    cluster: &str,
    field: &str,
    current: &str,
) {
    match result {
        Err(StoreError::Conflict {
            cluster: c,
            field: f,
            current: cur,
        }) => {
            assert_eq!(c, name(cluster));
            assert_eq!(f, field);
            assert_eq!(cur, current);
        }
        other => panic!("expected a Conflict on {field}, got {other:?}"),
    }
}

pub async fn redeploy_with_other_visibility_conflicts_and_changes_nothing(h: Harness) {
    let store = h.store.as_ref();
    let before = deploy(store, &command("alpha", 2, false, "default"), 0, 100).await;

    let result = store
        .deploy(&command("alpha", 7, true, "default"), t(10), t(900))
        .await;
    let message = result.as_ref().map(|_| ()).unwrap_err().to_string();
    assert!(
        message.contains("alpha") && message.contains("is_public"),
        "{message}"
    );
    assert_conflict(result, "alpha", "is_public", "false");
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&before));

    // With both fixed fields different, visibility is reported.
    let result = store
        .deploy(&command("alpha", 7, true, "other"), t(10), t(900))
        .await;
    assert_conflict(result, "alpha", "is_public", "false");
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&before));
    assert_eq!(
        store.next_expiry().await.expect("next_expiry"),
        Some(t(100))
    );
}

pub async fn redeploy_with_other_pool_conflicts_and_changes_nothing(h: Harness) {
    let store = h.store.as_ref();
    let before = deploy(store, &command("alpha", 2, true, "default"), 0, 100).await;
    let result = store
        .deploy(&command("alpha", 7, true, "big"), t(10), t(900))
        .await;
    assert_conflict(result, "alpha", "pool", "default");
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&before));

    // A cluster being destroyed still has its pool until its record is gone.
    let destroyed = store
        .destroy(&name("alpha"), t(20))
        .await
        .expect("destroy")
        .expect("exists");
    let result = store
        .deploy(&command("alpha", 7, true, "big"), t(30), t(900))
        .await;
    assert_conflict(result, "alpha", "pool", "default");
    assert_eq!(
        get(store, "alpha").await.as_ref(),
        Some(&destroyed),
        "still destroying"
    );
}

pub async fn destroy_marks_destroying_and_clears_expiry(h: Harness) {
    let store = h.store.as_ref();
    assert_eq!(
        store.destroy(&name("ghost"), t(0)).await.expect("destroy"),
        None
    );
    assert_eq!(get(store, "ghost").await, None, "destroy creates no record");

    let made = deploy(store, &command("alpha", 3, false, "default"), 0, 100).await;
    let destroyed = store.destroy(&name("alpha"), t(20)).await.expect("destroy");
    let want = ClusterRecord {
        destroying: true,
        expires_at: None,
        updated_at: t(20),
        generation: 2,
        ..made
    };
    assert_eq!(destroyed.as_ref(), Some(&want));
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&want));
    assert_eq!(want.wanted_nodes(), 0);
    assert_eq!(store.next_expiry().await.expect("next_expiry"), None);

    let again = store
        .destroy(&name("alpha"), t(30))
        .await
        .expect("destroy")
        .expect("exists");
    assert!(again.destroying);
    assert_eq!(again.expires_at, None);
    assert!(
        again.generation >= want.generation,
        "generation never goes back"
    );
    assert_eq!(get(store, "alpha").await, Some(again));
}

pub async fn deploy_after_destroy_revives_the_cluster(h: Harness) {
    let store = h.store.as_ref();
    let made = deploy(store, &command("alpha", 2, false, "default"), 0, 100).await;
    let destroyed = store
        .destroy(&name("alpha"), t(10))
        .await
        .expect("destroy")
        .expect("exists");
    let revived = deploy(store, &command("alpha", 4, false, "default"), 30, 90).await;
    let want = ClusterRecord {
        node_capacity: NodeCapacity::from_stored(4),
        expires_at: Some(t(90)),
        destroying: false,
        updated_at: t(30),
        generation: destroyed.generation + 1,
        ..made
    };
    assert_eq!(revived, want);
    assert_eq!(get(store, "alpha").await, Some(want));
    assert_eq!(store.next_expiry().await.expect("next_expiry"), Some(t(90)));
}

pub async fn expire_due_fires_exactly_the_due_clusters_once(h: Harness) {
    let store = h.store.as_ref();
    assert!(store.expire_due(t(0)).await.expect("expire_due").is_empty());

    let a = deploy(store, &command("a", 1, false, "default"), 0, 10).await;
    let b = deploy(store, &command("b", 2, false, "default"), 0, 20).await;
    let c = deploy(store, &command("c", 3, false, "default"), 0, 30).await;
    deploy(store, &command("d", 1, false, "default"), 0, 5).await;
    let d = store
        .destroy(&name("d"), t(1))
        .await
        .expect("destroy")
        .expect("exists");

    // Due means at or before `now`.
    let fired = sorted(store.expire_due(t(20)).await.expect("expire_due"));
    let fire = |r: ClusterRecord| ClusterRecord {
        destroying: true,
        expires_at: None,
        updated_at: t(20),
        generation: r.generation + 1,
        ..r
    };
    assert_eq!(fired, vec![fire(a.clone()), fire(b.clone())]);
    assert_eq!(get(store, "a").await, Some(fire(a)));
    assert_eq!(get(store, "b").await, Some(fire(b)));
    assert_eq!(get(store, "c").await.as_ref(), Some(&c), "not yet due");
    assert_eq!(
        get(store, "d").await.as_ref(),
        Some(&d),
        "already destroying"
    );

    assert!(
        store
            .expire_due(t(20))
            .await
            .expect("expire_due")
            .is_empty(),
        "fires once"
    );
    assert!(store
        .expire_due(t(29))
        .await
        .expect("expire_due")
        .is_empty());
    assert_eq!(store.next_expiry().await.expect("next_expiry"), Some(t(30)));

    let fired = store.expire_due(t(1000)).await.expect("expire_due");
    assert_eq!(
        fired.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    assert_eq!(store.next_expiry().await.expect("next_expiry"), None);
}

pub async fn next_expiry_is_the_earliest_live_deadline(h: Harness) {
    let store = h.store.as_ref();
    assert_eq!(store.next_expiry().await.expect("next_expiry"), None);

    deploy(store, &command("a", 1, false, "default"), 0, 300).await;
    deploy(store, &command("b", 1, false, "default"), 0, 100).await;
    deploy(store, &command("c", 1, false, "default"), 0, 200).await;
    assert_eq!(
        store.next_expiry().await.expect("next_expiry"),
        Some(t(100))
    );

    store.destroy(&name("b"), t(1)).await.expect("destroy");
    assert_eq!(
        store.next_expiry().await.expect("next_expiry"),
        Some(t(200))
    );

    // A redeploy moves the deadline, later as well as earlier.
    deploy(store, &command("c", 1, false, "default"), 2, 400).await;
    assert_eq!(
        store.next_expiry().await.expect("next_expiry"),
        Some(t(300))
    );
    deploy(store, &command("c", 1, false, "default"), 3, 50).await;
    assert_eq!(store.next_expiry().await.expect("next_expiry"), Some(t(50)));

    store.destroy(&name("a"), t(4)).await.expect("destroy");
    store.destroy(&name("c"), t(4)).await.expect("destroy");
    assert_eq!(store.next_expiry().await.expect("next_expiry"), None);
}

pub async fn forget_needs_destroying_and_the_current_generation(h: Harness) {
    let store = h.store.as_ref();
    assert!(!store.forget(&name("ghost"), 1).await.expect("forget"));

    let made = deploy(store, &command("alpha", 2, false, "default"), 0, 100).await;
    assert!(
        !store
            .forget(&name("alpha"), made.generation)
            .await
            .expect("forget"),
        "a cluster not being destroyed is kept"
    );
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&made));

    let destroyed = store
        .destroy(&name("alpha"), t(10))
        .await
        .expect("destroy")
        .expect("exists");
    assert!(
        !store
            .forget(&name("alpha"), made.generation)
            .await
            .expect("forget"),
        "a stale generation is refused"
    );
    assert!(!store
        .forget(&name("alpha"), destroyed.generation + 1)
        .await
        .expect("forget"));
    assert_eq!(get(store, "alpha").await.as_ref(), Some(&destroyed));

    assert!(store
        .forget(&name("alpha"), destroyed.generation)
        .await
        .expect("forget"));
    assert_eq!(get(store, "alpha").await, None);
    assert!(store.list_clusters().await.expect("list").is_empty());
    assert!(
        !store
            .forget(&name("alpha"), destroyed.generation)
            .await
            .expect("forget"),
        "already gone"
    );

    // Once forgotten, the name is free, fixed fields included.
    let fresh = deploy(store, &command("alpha", 1, true, "other"), 20, 80).await;
    assert_eq!(fresh.generation, 1);
    assert_eq!(fresh.created_at, t(20));
    assert!(fresh.is_public);

    // A redeploy between reading and forgetting wins.
    let destroyed = store
        .destroy(&name("alpha"), t(30))
        .await
        .expect("destroy")
        .expect("exists");
    let revived = deploy(store, &command("alpha", 1, true, "other"), 31, 90).await;
    assert!(!store
        .forget(&name("alpha"), destroyed.generation)
        .await
        .expect("forget"));
    assert_eq!(get(store, "alpha").await, Some(revived));
}

pub async fn list_clusters_returns_all_ordered_by_name(h: Harness) {
    let store = h.store.as_ref();
    assert!(store.list_clusters().await.expect("list").is_empty());

    // Mixed case, digits and '-': the order is ClusterName's (bytewise),
    // whatever the database's collation would say.
    let names = ["b", "Beta", "a1", "a-1", "alpha", "0zero", "Z"];
    for (i, n) in names.iter().enumerate() {
        let nodes = u32::try_from(i).expect("small") + 1;
        deploy(store, &command(n, nodes, i % 2 == 0, "default"), 0, 100).await;
    }
    store.destroy(&name("alpha"), t(1)).await.expect("destroy");

    let listed = store.list_clusters().await.expect("list");
    let mut want: Vec<ClusterName> = names.iter().map(|n| name(n)).collect();
    want.sort();
    assert_eq!(
        listed.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        want
    );
    for record in &listed {
        assert_eq!(
            get(store, record.name.as_str()).await.as_ref(),
            Some(record)
        );
    }
}

pub async fn instance_set_id_is_stable_per_driver(h: Harness) {
    let store = h.store.as_ref();
    let local = store
        .instance_set_id("local")
        .await
        .expect("instance_set_id");
    let ec2 = store.instance_set_id("ec2").await.expect("instance_set_id");
    assert_ne!(local, ec2, "each driver has its own ID");
    assert_eq!(
        store
            .instance_set_id("local")
            .await
            .expect("instance_set_id"),
        local
    );
    assert_eq!(
        store.instance_set_id("ec2").await.expect("instance_set_id"),
        ec2
    );

    // Cluster changes do not touch instance sets.
    deploy(store, &command("alpha", 1, false, "default"), 0, 100).await;
    store.destroy(&name("alpha"), t(1)).await.expect("destroy");
    assert_eq!(
        store
            .instance_set_id("local")
            .await
            .expect("instance_set_id"),
        local
    );
}

pub async fn racing_callers_get_the_same_instance_set_id(h: Harness) {
    let mut tasks = JoinSet::new();
    for _ in 0..16 {
        let store = h.store.clone();
        tasks.spawn(async move { store.instance_set_id("racy").await });
    }
    let mut ids = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        ids.insert(joined.expect("task").expect("instance_set_id"));
    }
    assert_eq!(ids.len(), 1, "racing callers got {ids:?}");
    let id = ids.pop_first().expect("one ID");
    assert_eq!(
        h.store
            .instance_set_id("racy")
            .await
            .expect("instance_set_id"),
        id
    );
}

pub async fn concurrent_deploys_of_many_clusters_all_land(h: Harness) {
    const CLUSTERS: u32 = 50;
    let mut tasks = JoinSet::new();
    for i in 0..CLUSTERS {
        let store = h.store.clone();
        tasks.spawn(async move {
            let c = command(&format!("many-{i:02}"), i % 7 + 1, i % 2 == 0, "default");
            let made = store.deploy(&c, t(0), t(100 + i64::from(i))).await?;
            // Reads alongside the writes must neither fail nor miss them.
            let read = store.get_cluster(&c.cluster).await?;
            assert_eq!(
                read.as_ref(),
                Some(&made),
                "read after write of {}",
                c.cluster
            );
            store.list_clusters().await?;
            Ok::<_, StoreError>(made)
        });
    }
    let mut made = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        made.push(joined.expect("task").expect("concurrent deploy"));
    }
    let listed = h.store.list_clusters().await.expect("list");
    assert_eq!(listed, sorted(made));
    assert_eq!(listed.len(), CLUSTERS as usize);
    for (i, r) in listed.iter().enumerate() {
        let i = u32::try_from(i).expect("small");
        assert_eq!(r.name.as_str(), format!("many-{i:02}"));
        assert_eq!(r.node_capacity.get(), i % 7 + 1);
        assert_eq!(r.generation, 1);
    }
    assert_eq!(
        h.store.next_expiry().await.expect("next_expiry"),
        Some(t(100))
    );
}

pub async fn concurrent_deploy_and_destroy_leave_a_consistent_record(h: Harness) {
    const OPERATIONS: i64 = 40;
    let mut tasks = JoinSet::new();
    for i in 0..OPERATIONS {
        let store = h.store.clone();
        tasks.spawn(async move {
            if i % 2 == 0 {
                let nodes = u32::try_from(i % 5 + 1).expect("small");
                let c = command("contested", nodes, false, "default");
                store.deploy(&c, t(i), t(1000 + i)).await.map(Some)
            } else {
                store.destroy(&name("contested"), t(i)).await
            }
        });
    }
    let mut changes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Some(record) = joined.expect("task").expect("deploy or destroy") {
            changes.push(record);
        }
    }
    // Every change bumps the generation exactly once, so the generations
    // returned are 1..=n with no gaps or repeats, and the last one is what
    // is stored.
    changes.sort_by_key(|r| r.generation);
    let generations: Vec<i64> = changes.iter().map(|r| r.generation).collect();
    let n = i64::try_from(changes.len()).expect("small");
    assert_eq!(generations, (1..=n).collect::<Vec<_>>());
    assert!(n >= OPERATIONS / 2, "every deploy is a change");
    for r in &changes {
        assert_eq!(
            r.destroying,
            r.expires_at.is_none(),
            "destroying iff unscheduled: {r:?}"
        );
        assert_eq!(r.created_at, changes[0].created_at);
    }
    let last = changes.last().expect("at least one change");
    assert_eq!(
        get(h.store.as_ref(), "contested").await.as_ref(),
        Some(last)
    );
    assert_eq!(h.store.list_clusters().await.expect("list").len(), 1);
}
