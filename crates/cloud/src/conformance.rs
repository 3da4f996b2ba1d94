//! The driver conformance suite: what every [`InstanceSet`] must do, run
//! against `fake`, `local` and (later) `ec2` alike.
//!
//! A driver's test file calls [`conformance_tests!`](crate::conformance_tests)
//! with an async function that builds a [`Harness`]: two instance sets with
//! different IDs on the same cloud, so ownership can be checked.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use flotilla_domain::{ClusterName, InstanceId, InstanceType, LaunchVersion, PoolName};

use crate::contract::{
    CloudError, CreateRequest, Health, Instance, InstanceSet, Tags, TAG_CLUSTER, TAG_INSTANCE_SET,
    TAG_INSTANCE_TYPE, TAG_POOL,
};

/// The pool every conformance request names.
const POOL: &str = "conformance";

pub struct Harness {
    pub ours: Arc<dyn InstanceSet>,
    pub theirs: Arc<dyn InstanceSet>,
    pub instance_type: InstanceType,
    /// How long eventual effects (destroyed instances leaving the listing,
    /// nodes becoming ready) may take on this cloud.
    pub settle: Duration,
    /// Keeps fixtures (temporary directories, servers) alive.
    pub guard: Box<dyn Any + Send>,
}

/// Generates one `#[tokio::test]` per conformance check.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:path) => {
        $crate::conformance_tests!(@each $harness,
            create_tags_instances_and_lists_them,
            batch_create_returns_distinct_tagged_instances,
            destroy_removes_and_is_idempotent,
            destroy_many_answers_for_each_instance,
            set_tags_merges_and_protects_ownership,
            other_sets_are_invisible_and_untouchable,
            probe_reports_ready_nodes
        );
    };
    (@each $harness:path, $($check:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::conformance::$check($harness().await).await;
            }
        )+
    };
}

/// The pool version every conformance request carries.
fn version() -> LaunchVersion {
    LaunchVersion::parse("00c0ffee00c0ffee").expect("a version")
}

fn request(h: &Harness, cluster: &str, count: u32) -> CreateRequest {
    CreateRequest {
        cluster: ClusterName::new(cluster).unwrap(),
        pool: PoolName::new(POOL).unwrap(),
        instance_type: h.instance_type.clone(),
        image: None,
        tags: Tags::from([("purpose".to_owned(), "conformance".to_owned())]),
        init_data: None,
        workload: None,
        pool_version: Some(version()),
        count,
        shutdown_terminates: false,
        market: None,
    }
}

async fn listed(set: &dyn InstanceSet, id: &InstanceId) -> Option<Instance> {
    set.list(&Tags::new())
        .await
        .expect("list")
        .into_iter()
        .find(|i| &i.id == id)
}

async fn eventually<F, Fut>(settle: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + settle;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {settle:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cleanup(h: &Harness) {
    for set in [&h.ours, &h.theirs] {
        for i in set.list(&Tags::new()).await.unwrap_or_default() {
            let _ = set.destroy(&i.id).await;
        }
    }
    for set in [&h.ours, &h.theirs] {
        eventually(h.settle, "cleanup", || async {
            set.list(&Tags::new())
                .await
                .map(|l| l.is_empty())
                .unwrap_or(false)
        })
        .await;
    }
}

fn assert_owned(h: &Harness, i: &Instance, cluster: &str) {
    assert_eq!(
        i.tags.get(TAG_INSTANCE_SET).map(String::as_str),
        Some(h.ours.id().as_str()),
        "instance set tag of {}",
        i.id
    );
    assert_eq!(i.tags.get(TAG_CLUSTER).map(String::as_str), Some(cluster));
    assert_eq!(
        i.tags.get(TAG_INSTANCE_TYPE).map(String::as_str),
        Some(h.instance_type.as_str())
    );
    assert_eq!(i.tags.get(TAG_POOL).map(String::as_str), Some(POOL));
    assert_eq!(i.pool().as_ref().map(PoolName::as_str), Some(POOL));
    assert_eq!(
        i.pool_version(),
        Some(version()),
        "pool version of {}",
        i.id
    );
    assert_eq!(i.instance_type, h.instance_type);
}

pub async fn create_tags_instances_and_lists_them(h: Harness) {
    let made = h
        .ours
        .create(&request(&h, "conf-a", 1))
        .await
        .expect("create");
    assert_eq!(made.len(), 1);
    let i = &made[0];
    assert_owned(&h, i, "conf-a");
    assert_eq!(
        i.tags.get("purpose").map(String::as_str),
        Some("conformance")
    );

    let seen = listed(h.ours.as_ref(), &i.id)
        .await
        .expect("listed after create");
    assert_owned(&h, &seen, "conf-a");
    assert_eq!(
        seen.tags.get("purpose").map(String::as_str),
        Some("conformance")
    );

    let mine = Tags::from([(TAG_CLUSTER.to_owned(), "conf-a".to_owned())]);
    let other = Tags::from([(TAG_CLUSTER.to_owned(), "conf-b".to_owned())]);
    assert!(h
        .ours
        .list(&mine)
        .await
        .unwrap()
        .iter()
        .any(|x| x.id == i.id));
    assert!(!h
        .ours
        .list(&other)
        .await
        .unwrap()
        .iter()
        .any(|x| x.id == i.id));
    cleanup(&h).await;
}

pub async fn batch_create_returns_distinct_tagged_instances(h: Harness) {
    let want = h.ours.max_batch().clamp(1, 3);
    let made = h
        .ours
        .create(&request(&h, "conf-batch", want))
        .await
        .expect("create");
    assert!(
        !made.is_empty() && made.len() <= want as usize,
        "{} of {want}",
        made.len()
    );
    let mut ids: Vec<_> = made.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), made.len(), "instance IDs are distinct");
    for i in &made {
        assert_owned(&h, i, "conf-batch");
        assert!(listed(h.ours.as_ref(), &i.id).await.is_some());
    }
    let too_many = request(&h, "conf-batch", h.ours.max_batch() + 1);
    if h.ours.max_batch() < u32::MAX {
        match h.ours.create(&too_many).await {
            Err(CloudError::Permanent { .. }) => {}
            Ok(more) => assert!(
                more.len() <= h.ours.max_batch() as usize,
                "a batch above max_batch must be refused or cut to max_batch"
            ),
            Err(e) => panic!("unexpected error for an oversized batch: {e}"),
        }
    }
    cleanup(&h).await;
}

pub async fn destroy_removes_and_is_idempotent(h: Harness) {
    let made = h
        .ours
        .create(&request(&h, "conf-d", 1))
        .await
        .expect("create");
    let id = made[0].id.clone();
    h.ours.destroy(&id).await.expect("destroy");
    eventually(
        h.settle,
        "destroyed instance leaving the listing",
        || async { listed(h.ours.as_ref(), &id).await.is_none() },
    )
    .await;
    h.ours
        .destroy(&id)
        .await
        .expect("destroying a gone instance is success");
    h.ours
        .destroy(&InstanceId::new("never-existed-0"))
        .await
        .expect("destroying an unknown instance is success");
    cleanup(&h).await;
}

/// A batch destroy answers for each instance as `destroy` would: ours go,
/// the gone and the unknown are success, another set's is refused and kept.
pub async fn destroy_many_answers_for_each_instance(h: Harness) {
    let mut ours = Vec::new();
    for _ in 0..3 {
        let made = h
            .ours
            .create(&request(&h, "conf-m", 1))
            .await
            .expect("create");
        ours.push(made[0].id.clone());
    }
    let theirs = h
        .theirs
        .create(&request(&h, "conf-m", 1))
        .await
        .expect("create")[0]
        .id
        .clone();
    h.ours.destroy(&ours[2]).await.expect("destroy");
    let batch = [
        ours[0].clone(),
        theirs.clone(),
        ours[1].clone(),
        ours[2].clone(),
        InstanceId::new("never-existed-1"),
    ];
    let results = h.ours.destroy_many(&batch).await;
    assert_eq!(results.len(), batch.len(), "{results:?}");
    assert!(
        matches!(
            &results[..],
            [
                Ok(()),
                Err(CloudError::Permanent { .. }),
                Ok(()),
                Ok(()),
                Ok(())
            ]
        ),
        "{results:?}"
    );
    for id in &ours {
        eventually(
            h.settle,
            "destroyed instance leaving the listing",
            || async { listed(h.ours.as_ref(), id).await.is_none() },
        )
        .await;
    }
    assert!(
        listed(h.theirs.as_ref(), &theirs).await.is_some(),
        "another set's instance is untouched"
    );
    cleanup(&h).await;
}

pub async fn set_tags_merges_and_protects_ownership(h: Harness) {
    let made = h
        .ours
        .create(&request(&h, "conf-t", 1))
        .await
        .expect("create");
    let id = made[0].id.clone();
    let extra = Tags::from([("hold".to_owned(), "yes".to_owned())]);
    h.ours.set_tags(&id, &extra).await.expect("set_tags");
    let seen = listed(h.ours.as_ref(), &id).await.expect("listed");
    assert_eq!(seen.tags.get("hold").map(String::as_str), Some("yes"));
    assert_owned(&h, &seen, "conf-t");

    for key in crate::contract::FIXED_TAGS {
        let bad = Tags::from([(key.to_owned(), "other".to_owned())]);
        let err = h
            .ours
            .set_tags(&id, &bad)
            .await
            .expect_err("ownership tags are fixed");
        assert!(matches!(err, CloudError::Permanent { .. }), "{err}");
    }
    let seen = listed(h.ours.as_ref(), &id).await.expect("listed");
    assert_owned(&h, &seen, "conf-t");
    cleanup(&h).await;
}

pub async fn other_sets_are_invisible_and_untouchable(h: Harness) {
    let theirs = h
        .theirs
        .create(&request(&h, "conf-o", 1))
        .await
        .expect("create")[0]
        .clone();
    assert!(
        listed(h.ours.as_ref(), &theirs.id).await.is_none(),
        "other set's instance listed"
    );
    let err = h
        .ours
        .destroy(&theirs.id)
        .await
        .expect_err("destroy of another set's instance");
    assert!(matches!(err, CloudError::Permanent { .. }), "{err}");
    let tags = Tags::from([("x".to_owned(), "y".to_owned())]);
    let err = h
        .ours
        .set_tags(&theirs.id, &tags)
        .await
        .expect_err("set_tags on another set's instance");
    assert!(matches!(err, CloudError::Permanent { .. }), "{err}");
    let still = listed(h.theirs.as_ref(), &theirs.id)
        .await
        .expect("untouched");
    assert!(!still.tags.contains_key("x"));
    cleanup(&h).await;
}

pub async fn probe_reports_ready_nodes(h: Harness) {
    let made = h
        .ours
        .create(&request(&h, "conf-p", 1))
        .await
        .expect("create");
    let id = made[0].id.clone();
    eventually(h.settle, "node becoming ready", || async {
        match listed(h.ours.as_ref(), &id).await {
            Some(i) => h.ours.probe(&i).await == Health::Ready,
            None => false,
        }
    })
    .await;
    // A ready node can be reached, even through the instance `create`
    // returned (which may predate the node knowing its address).
    let address = h.ours.address(&made[0]).await;
    assert!(
        address.as_deref().is_some_and(|a| !a.is_empty()),
        "a ready node has an address"
    );
    h.ours.destroy(&id).await.expect("destroy");
    eventually(h.settle, "destroyed node leaving", || async {
        listed(h.ours.as_ref(), &id).await.is_none()
    })
    .await;
    assert_eq!(
        h.ours.probe(&made[0]).await,
        Health::NotReady,
        "a destroyed node is not ready"
    );
    cleanup(&h).await;
}
