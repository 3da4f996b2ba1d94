//! The schedules half of the store contract: a schedule is created once,
//! changed only from the revision read, fired under the leader's lease
//! with the job it queues in the same transaction, and of two servers
//! firing one due time, one queues a job.

use flotilla_domain::{ChangeEntity, ChangeKind, ClusterName, Fired, Missed, Schedule};
use tokio::task::JoinSet;

use super::{lead, t, Harness};
use crate::{NewJob, StoreError};

fn schedule(name: &str) -> Schedule {
    Schedule {
        name: name.to_owned(),
        cron: "0 3 * * *".to_owned(),
        template: "test".to_owned(),
        cluster: ClusterName::new("demo").unwrap(),
        version: "main".to_owned(),
        missed: Missed::RunOnce,
        paused: false,
        created_by: "admin".to_owned(),
        created_at: t(0),
        next_at: Some(t(100)),
        last_fired_at: None,
        last_job: None,
        last_error: None,
        revision: 1,
    }
}

fn job(name: &str) -> NewJob {
    NewJob {
        name: name.to_owned(),
        document: serde_json::json!({"name": name, "script": "true", "max_runtime": "1m"}),
        submitted_by: "admin".to_owned(),
        org: None,
        priority: 0,
    }
}

pub async fn schedules_are_created_once_changed_from_what_was_read_and_deleted(h: Harness) {
    let store = h.store.as_ref();
    let nightly = schedule("nightly");
    store.create_schedule(&nightly, t(1)).await.unwrap();
    let again = store.create_schedule(&nightly, t(2)).await.unwrap_err();
    assert!(matches!(again, StoreError::Duplicate(_)), "{again:?}");
    store
        .create_schedule(&schedule("hourly"), t(2))
        .await
        .unwrap();
    let names: Vec<String> = store
        .schedules()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["hourly", "nightly"]);

    let mut paused = nightly.clone();
    paused.paused = true;
    paused.next_at = None;
    paused.revision = 2;
    store
        .update_schedule(&nightly, &paused, ChangeKind::ScheduleChanged, t(3))
        .await
        .unwrap();
    // A writer that read revision 1 is refused, and changes nothing.
    let stale = store
        .update_schedule(&nightly, &nightly, ChangeKind::ScheduleChanged, t(4))
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::Stale { .. }), "{stale:?}");
    let stored = store.schedules().await.unwrap();
    assert_eq!(stored[1], paused, "stored whole");

    assert!(store.delete_schedule("nightly", t(5)).await.unwrap());
    assert!(!store.delete_schedule("nightly", t(6)).await.unwrap());
    let kinds: Vec<&str> = store
        .changes(0, 100, Some((ChangeEntity::Schedule, "nightly")))
        .await
        .unwrap()
        .iter()
        .map(|c| c.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        ["schedule.created", "schedule.changed", "schedule.deleted"]
    );
}

pub async fn a_fire_queues_its_job_with_the_schedules_next_time(h: Harness) {
    let store = h.store.as_ref();
    let fence = lead(store).await;
    let nightly = schedule("nightly");
    store.create_schedule(&nightly, t(1)).await.unwrap();
    let after = nightly.fired(t(100), Some(t(200)), Fired::Queued);
    let queued = store
        .fire_schedule(&nightly, &after, Some(&job("test-demo")), fence, t(100))
        .await
        .unwrap()
        .expect("a job");
    assert_eq!(queued.name, "test-demo");
    assert_eq!(store.job(queued.id).await.unwrap(), Some(queued.clone()));
    let stored = &store.schedules().await.unwrap()[0];
    assert_eq!(stored.next_at, Some(t(200)));
    assert_eq!(stored.last_job, Some(queued.id), "the store says which job");
    assert_eq!(stored.last_fired_at, Some(t(100)));

    // The same due time again: refused, nothing queued.
    let twice = store
        .fire_schedule(&nightly, &after, Some(&job("again")), fence, t(101))
        .await
        .unwrap_err();
    assert!(matches!(twice, StoreError::Stale { .. }), "{twice:?}");
    assert_eq!(store.jobs(None, 10).await.unwrap().len(), 1);

    // A skip moves the time on and queues nothing.
    let skipped = stored.fired(t(300), Some(t(400)), Fired::Skipped);
    assert_eq!(
        store
            .fire_schedule(stored, &skipped, None, fence, t(300))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.jobs(None, 10).await.unwrap().len(), 1);
    let fired = store
        .changes(0, 100, Some((ChangeEntity::Schedule, "nightly")))
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.kind == ChangeKind::ScheduleFired)
        .count();
    assert_eq!(fired, 2);
}

pub async fn racing_servers_fire_one_due_time_once_and_only_under_the_lease(h: Harness) {
    let fence = lead(h.store.as_ref()).await;
    let nightly = schedule("nightly");
    h.store.create_schedule(&nightly, t(1)).await.unwrap();
    let after = nightly.fired(t(100), Some(t(200)), Fired::Queued);
    let mut racers = JoinSet::new();
    for i in 0..6 {
        let store = if i % 2 == 0 {
            h.store.clone()
        } else {
            h.second.clone()
        };
        let (before, after) = (nightly.clone(), after.clone());
        racers.spawn(async move {
            store
                .fire_schedule(&before, &after, Some(&job("race")), fence, t(100))
                .await
        });
    }
    let mut queued = 0;
    while let Some(result) = racers.join_next().await {
        match result.unwrap() {
            Ok(Some(_)) => queued += 1,
            Err(StoreError::Stale { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(queued, 1, "one job for one due time");
    assert_eq!(h.store.jobs(None, 10).await.unwrap().len(), 1);

    // A server whose term is over fires nothing.
    let current = h.store.schedules().await.unwrap().remove(0);
    let next = current.fired(t(200), Some(t(300)), Fired::Queued);
    h.store
        .release_lease(super::CONTRACT_HOLDER, fence)
        .await
        .unwrap();
    let _other = h
        .second
        .acquire_lease("other", std::time::Duration::from_secs(3600), t(151))
        .await
        .unwrap()
        .expect("free");
    let fenced = h
        .store
        .fire_schedule(&current, &next, Some(&job("late")), fence, t(200))
        .await
        .unwrap_err();
    assert!(matches!(fenced, StoreError::Fenced { .. }), "{fenced:?}");
    assert_eq!(h.store.jobs(None, 10).await.unwrap().len(), 1);
}
