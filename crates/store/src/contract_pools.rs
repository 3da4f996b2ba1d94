//! The pools half of the store contract: versions written one after the
//! other, never two writers on the same version, retiring refused while a
//! cluster names the pool, every write in the feed.

use flotilla_domain::{ChangeEntity, ChangeKind, PoolName};
use serde_json::json;
use tokio::task::JoinSet;

use super::{command, deploy, lead, t, Harness};
use crate::{PoolRecord, PoolWrite, RolloutHold, RolloutPause, RolloutStop, StoreError};

fn write(name: &str, expected: u64, document: Option<serde_json::Value>) -> PoolWrite {
    PoolWrite {
        name: PoolName::new(name).expect("valid pool name"),
        expected,
        document,
        schema_version: 1,
        by: "ann".to_owned(),
    }
}

fn doc(instance_type: &str) -> serde_json::Value {
    json!({ "driver": "local", "instance_type": instance_type })
}

pub async fn pools_are_versioned_and_retired(h: Harness) {
    let store = h.store;
    let gpu = PoolName::new("gpu").unwrap();
    assert!(store.pools().await.unwrap().is_empty());
    let first = store
        .write_pool(&write("gpu", 0, Some(doc("a"))), t(1))
        .await
        .unwrap();
    assert_eq!(
        first,
        PoolRecord {
            name: gpu.clone(),
            version: 1,
            document: Some(doc("a")),
            schema_version: 1,
            at: t(1),
            by: "ann".to_owned(),
        }
    );
    let second = store
        .write_pool(&write("gpu", 1, Some(doc("b"))), t(2))
        .await
        .unwrap();
    assert_eq!(second.version, 2);
    store
        .write_pool(&write("cpu", 0, Some(doc("c"))), t(3))
        .await
        .unwrap();
    let latest = store.pools().await.unwrap();
    assert_eq!(
        latest
            .iter()
            .map(|r| (r.name.as_str(), r.version))
            .collect::<Vec<_>>(),
        [("cpu", 1), ("gpu", 2)]
    );
    // A writer that read version 1 is refused, and nothing changes.
    match store
        .write_pool(&write("gpu", 1, Some(doc("x"))), t(4))
        .await
    {
        Err(StoreError::Stale {
            expected: 1,
            found: 2,
            ..
        }) => {}
        other => panic!("expected Stale, got {other:?}"),
    }
    match store
        .write_pool(&write("new", 3, Some(doc("x"))), t(4))
        .await
    {
        Err(StoreError::Stale { found: 0, .. }) => {}
        other => panic!("expected Stale, got {other:?}"),
    }
    // Retired: the latest version has no document; writing again revives.
    let retired = store
        .write_pool(&write("gpu", 2, None), t(5))
        .await
        .unwrap();
    assert_eq!((retired.version, retired.document), (3, None));
    let revived = store
        .write_pool(&write("gpu", 3, Some(doc("d"))), t(6))
        .await
        .unwrap();
    assert_eq!(revived.version, 4);
    let history = store.pool_history(&gpu).await.unwrap();
    assert_eq!(
        history.iter().map(|r| r.version).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(history[1].document, Some(doc("b")));
    assert!(store
        .pool_history(&PoolName::new("none").unwrap())
        .await
        .unwrap()
        .is_empty());
    let changes = store
        .changes(0, 100, Some((ChangeEntity::Pool, "gpu")))
        .await
        .unwrap();
    assert_eq!(
        changes.iter().map(|c| c.kind).collect::<Vec<_>>(),
        [
            ChangeKind::PoolApplied,
            ChangeKind::PoolApplied,
            ChangeKind::PoolRetired,
            ChangeKind::PoolApplied
        ]
    );
    assert_eq!(changes[2].payload["version"], 3);
}

pub async fn a_pool_a_cluster_names_cannot_be_retired(h: Harness) {
    let store = h.store;
    store
        .write_pool(&write("gpu", 0, Some(doc("a"))), t(1))
        .await
        .unwrap();
    deploy(&*store, &command("uses-gpu", 2, false, "gpu"), 2, 3600).await;
    let before = store.last_change().await.unwrap();
    match store.write_pool(&write("gpu", 1, None), t(3)).await {
        Err(StoreError::InUse { users, .. }) => assert!(users.contains("uses-gpu"), "{users}"),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert_eq!(store.last_change().await.unwrap(), before);
    assert_eq!(store.pools().await.unwrap()[0].version, 1);
}

pub async fn racing_writers_of_one_version_write_it_once(h: Harness) {
    let mut racers = JoinSet::new();
    for i in 0..8 {
        let store = if i % 2 == 0 {
            h.store.clone()
        } else {
            h.second.clone()
        };
        racers.spawn(async move {
            store
                .write_pool(&write("gpu", 0, Some(doc(&format!("t{i}")))), t(1))
                .await
        });
    }
    let mut won = 0;
    while let Some(result) = racers.join_next().await {
        match result.unwrap() {
            Ok(r) => {
                assert_eq!(r.version, 1);
                won += 1;
            }
            Err(StoreError::Stale { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1);
    let history = h
        .store
        .pool_history(&PoolName::new("gpu").unwrap())
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
}

fn shared(name: &str, expected: u64, value: serde_json::Value) -> crate::SharedConfigWrite {
    crate::SharedConfigWrite {
        name: flotilla_domain::SharedConfigName::new(name).expect("valid name"),
        expected,
        kind: "aws/images".to_owned(),
        schema: json!({"type": "object"}),
        value,
        by: "ann".to_owned(),
    }
}

pub async fn shared_configs_keep_every_version_and_their_first_schema(h: Harness) {
    let store = h.store;
    let base = flotilla_domain::SharedConfigName::new("base").unwrap();
    let v1 = store
        .write_shared_config(&shared("base", 0, json!({"us-west-2": "ami-1"})), t(1))
        .await
        .unwrap();
    assert_eq!((v1.version, v1.kind.as_str()), (1, "aws/images"));
    // An update keeps the kind and schema of the first version.
    let mut update = shared("base", 1, json!({"us-west-2": "ami-2"}));
    update.kind = "aws/other".to_owned();
    update.schema = json!({"type": "string"});
    let v2 = store.write_shared_config(&update, t(2)).await.unwrap();
    assert_eq!(
        (v2.version, v2.kind.as_str(), &v2.schema),
        (2, "aws/images", &json!({"type": "object"}))
    );
    match store
        .write_shared_config(&shared("base", 1, json!({})), t(3))
        .await
    {
        Err(StoreError::Stale { found: 2, .. }) => {}
        other => panic!("expected Stale, got {other:?}"),
    }
    match store
        .write_shared_config(&shared("base", 0, json!({})), t(3))
        .await
    {
        Err(StoreError::Stale { found: 2, .. }) => {}
        other => panic!("creating it again: expected Stale, got {other:?}"),
    }
    store
        .write_shared_config(&shared("other", 0, json!("ami-9")), t(4))
        .await
        .unwrap();
    let latest = store.shared_configs().await.unwrap();
    assert_eq!(
        latest
            .iter()
            .map(|r| (r.name.as_str(), r.version))
            .collect::<Vec<_>>(),
        [("base", 2), ("other", 1)]
    );
    assert_eq!(latest[0].value, json!({"us-west-2": "ami-2"}));
    let versions = store.shared_config_versions(&base).await.unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0].value, json!({"us-west-2": "ami-1"}));
    assert_eq!(versions[1].at, t(2));
    let changes = store
        .changes(0, 100, Some((ChangeEntity::SharedConfig, "base")))
        .await
        .unwrap();
    assert_eq!(
        changes.iter().map(|c| c.kind).collect::<Vec<_>>(),
        [
            ChangeKind::SharedConfigCreated,
            ChangeKind::SharedConfigUpdated
        ]
    );
}

pub async fn racing_writers_of_one_shared_config_write_it_once(h: Harness) {
    let mut racers = JoinSet::new();
    for i in 0..8 {
        let store = if i % 2 == 0 {
            h.store.clone()
        } else {
            h.second.clone()
        };
        racers.spawn(async move {
            store
                .write_shared_config(&shared("base", 0, json!(format!("ami-{i}"))), t(1))
                .await
        });
    }
    let mut won = 0;
    while let Some(result) = racers.join_next().await {
        match result.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::Stale { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(h.store.shared_configs().await.unwrap().len(), 1);
}

pub async fn rollouts_are_paused_stopped_and_resumed(h: Harness) {
    let store = h.store;
    let gpu = PoolName::new("gpu").unwrap();
    assert!(store.rollout_holds().await.unwrap().is_empty());
    let fence = lead(store.as_ref()).await;
    let since = store.last_change().await.unwrap();

    let held = store.pause_rollout(&gpu, "ann", t(1)).await.unwrap();
    let paused = Some(RolloutPause {
        by: "ann".to_owned(),
        at: t(1),
    });
    assert_eq!(
        held,
        RolloutHold {
            pool: gpu.clone(),
            paused: paused.clone(),
            stopped: None
        }
    );
    let again = store.pause_rollout(&gpu, "bob", t(2)).await.unwrap();
    assert_eq!(again.paused, paused, "the first pause stands");

    let stop = RolloutStop {
        version: flotilla_domain::LaunchVersion::parse("00000000000000aa").unwrap(),
        reason: "node i-1 was not ready within the boot timeout".to_owned(),
        at: t(3),
    };
    store.stop_rollout(fence, &gpu, &stop, t(3)).await.unwrap();
    let holds = store.rollout_holds().await.unwrap();
    assert_eq!(
        holds,
        vec![RolloutHold {
            pool: gpu.clone(),
            paused: paused.clone(),
            stopped: Some(stop.clone()),
        }],
        "a stop keeps the pause"
    );

    // A stop of an ended term changes nothing.
    let other = PoolName::new("cpu").unwrap();
    let stale = crate::Fence(fence.0 - 1);
    assert!(matches!(
        store.stop_rollout(stale, &other, &stop, t(4)).await,
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(store.rollout_holds().await.unwrap().len(), 1);

    assert!(store.resume_rollout(&gpu, "ann", t(5)).await.unwrap());
    assert!(store.rollout_holds().await.unwrap().is_empty());
    assert!(!store.resume_rollout(&gpu, "ann", t(6)).await.unwrap());

    let kinds: Vec<ChangeKind> = store
        .changes(since, 100, Some((ChangeEntity::Pool, "gpu")))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::PoolRolloutPaused,
            ChangeKind::PoolRolloutPaused,
            ChangeKind::PoolRolloutStopped,
            ChangeKind::PoolRolloutResumed,
            ChangeKind::PoolRolloutResumed
        ]
    );
}
