//! The jobs half of the store contract: ids in submission order, the
//! queue in its order, every step checked against the job's state and the
//! version read, the leader's steps fenced, and of two servers stepping one
//! job at once, one wins.

use flotilla_domain::{
    AfterAttempt, AttemptEnd, ChangeEntity, InstanceId, InstanceType, JobState, Market, Money,
    PoolName,
};
use tokio::task::JoinSet;

use super::{lead, t, Harness};
use crate::{Fence, JobRecord, JobStep, NewAttempt, NewJob, Store, StoreError};

fn job(name: &str, by: &str, priority: i32) -> NewJob {
    NewJob {
        name: name.to_owned(),
        document: serde_json::json!({"name": name, "script": "true", "max_runtime": "1m"}),
        submitted_by: by.to_owned(),
        org: None,
        priority,
    }
}

fn on(ty: &str) -> JobStep {
    JobStep::Start(NewAttempt {
        pool: PoolName::new("default").unwrap(),
        instance_type: InstanceType::new(ty).unwrap(),
        market: Market::Spot,
        price_per_hour: Money::from_micros(31_000),
        token: format!("token-{ty}"),
        warm: None,
    })
}

async fn step(
    store: &dyn Store,
    job: &JobRecord,
    step: &JobStep,
    fence: Fence,
    at: i64,
) -> Result<JobRecord, StoreError> {
    store
        .step_job(job.id, Some(job.version), step, Some(fence), t(at))
        .await
}

pub async fn jobs_are_numbered_listed_and_queued_in_order(h: Harness) {
    let store = h.store.as_ref();
    let a = store.submit_job(&job("a", "ann", 0), t(1)).await.unwrap();
    let b = store.submit_job(&job("b", "bob", 5), t(2)).await.unwrap();
    let c = store.submit_job(&job("c", "ann", 0), t(3)).await.unwrap();
    assert!(a.id < b.id && b.id < c.id, "{} {} {}", a.id, b.id, c.id);
    assert_eq!(a.state, JobState::Queued);
    assert_eq!(
        store.job(a.id).await.unwrap(),
        Some(a.clone()),
        "read back whole"
    );
    assert_eq!(store.job(c.id + 100).await.unwrap(), None);

    let names = |jobs: Vec<JobRecord>| jobs.into_iter().map(|j| j.name).collect::<Vec<_>>();
    assert_eq!(names(store.jobs(None, 10).await.unwrap()), ["c", "b", "a"]);
    assert_eq!(
        names(store.jobs(Some("ann"), 10).await.unwrap()),
        ["c", "a"]
    );
    assert_eq!(names(store.jobs(None, 1).await.unwrap()), ["c"]);
    assert_eq!(
        names(store.live_jobs().await.unwrap()),
        ["b", "a", "c"],
        "priority first, then age"
    );
}

pub async fn a_job_goes_through_its_attempts_step_by_step(h: Harness) {
    let store = h.store.as_ref();
    let fence = lead(store).await;
    let j = store
        .submit_job(&job("build", "ann", 0), t(1))
        .await
        .unwrap();
    let waits = JobStep::Reason(Some("position 1 of 1".into()));
    let j = step(store, &j, &waits, fence, 2).await.unwrap();
    assert_eq!(j.reason.as_deref(), Some("position 1 of 1"));

    let j = step(store, &j, &on("t3.micro"), fence, 3).await.unwrap();
    assert_eq!(j.state, JobState::Starting);
    assert_eq!(j.reason, None);
    let again = step(store, &j, &on("t3.micro"), fence, 3)
        .await
        .unwrap_err();
    assert!(matches!(again, StoreError::JobState { .. }), "{again:?}");

    let instance = InstanceId::new("i-1");
    let early = step(store, &j, &JobStep::Running { attempt: 1 }, fence, 4).await;
    assert!(
        matches!(early, Err(StoreError::JobState { .. })),
        "no instance yet: {early:?}"
    );
    let created = JobStep::Created {
        attempt: 1,
        instance: instance.clone(),
    };
    let j = step(store, &j, &created, fence, 4).await.unwrap();
    assert_eq!(j.state, JobState::Starting);
    let twice = step(store, &j, &created, fence, 4).await;
    assert!(
        matches!(twice, Err(StoreError::JobState { .. })),
        "{twice:?}"
    );
    let j = step(store, &j, &JobStep::Running { attempt: 1 }, fence, 4)
        .await
        .unwrap();
    assert_eq!(j.state, JobState::Running);
    // Taken back by the cloud: queued for a second attempt.
    let lost = JobStep::End {
        attempt: 1,
        end: AttemptEnd::Interrupted,
        after: AfterAttempt::Retry,
    };
    let j = step(store, &j, &lost, fence, 5).await.unwrap();
    assert_eq!(j.state, JobState::Queued);
    // The second takes an instance kept warm: made already.
    let JobStep::Start(mut warm) = on("t3.small") else {
        unreachable!()
    };
    warm.warm = Some((InstanceId::new("i-2"), "hash-of-its-token".to_owned()));
    let j = step(store, &j, &JobStep::Start(warm), fence, 6)
        .await
        .unwrap();
    let created = JobStep::Created {
        attempt: 2,
        instance: InstanceId::new("i-2"),
    };
    let made = step(store, &j, &created, fence, 7).await;
    assert!(
        matches!(made, Err(StoreError::JobState { .. })),
        "a warm instance is not made again: {made:?}"
    );
    let j = step(store, &j, &JobStep::Running { attempt: 2 }, fence, 7)
        .await
        .unwrap();
    let stale_attempt = JobStep::End {
        attempt: 1,
        end: AttemptEnd::Exited { status: 0 },
        after: AfterAttempt::Ends(JobState::Succeeded),
    };
    let e = step(store, &j, &stale_attempt, fence, 8).await.unwrap_err();
    assert!(matches!(e, StoreError::JobState { .. }), "{e:?}");
    let done = JobStep::End {
        attempt: 2,
        end: AttemptEnd::Exited { status: 0 },
        after: AfterAttempt::Ends(JobState::Succeeded),
    };
    let j = step(store, &j, &done, fence, 9).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded);
    assert!(store.live_jobs().await.unwrap().is_empty());

    let stored = store.job(j.id).await.unwrap().unwrap();
    assert_eq!(stored, j, "every step stored whole");
    let attempts: Vec<(u32, &str, Option<AttemptEnd>)> = stored
        .attempts
        .iter()
        .map(|a| (a.attempt, a.instance_type.as_str(), a.end))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, "t3.micro", Some(AttemptEnd::Interrupted)),
            (2, "t3.small", Some(AttemptEnd::Exited { status: 0 }))
        ]
    );
    assert_eq!(stored.attempts[0].instance, Some(instance));
    assert_eq!(stored.attempts[0].warm, None);
    assert_eq!(stored.attempts[1].instance, Some(InstanceId::new("i-2")));
    assert_eq!(
        stored.attempts[1].warm.as_deref(),
        Some("hash-of-its-token")
    );
    assert_eq!(stored.attempts[1].market, Market::Spot);
    assert_eq!(
        stored.attempts[1].price_per_hour,
        Money::from_micros(31_000)
    );
    assert_eq!(stored.attempts[1].ended_at, Some(t(9)));

    // Each step that moved the job is in the feed, in its order, with
    // what readers need to know whose it is; the refused ones are not,
    // nor the instances made.
    let feed = store
        .changes(0, 100, Some((ChangeEntity::Job, &j.id.to_string())))
        .await
        .unwrap();
    let kinds: Vec<&str> = feed.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "job.submitted",
            "job.waiting",
            "job.started",
            "job.running",
            "job.attempt_ended",
            "job.started",
            "job.running",
            "job.ended"
        ]
    );
    assert!(feed.iter().all(|c| c.payload["submitted_by"] == "ann"));
    assert_eq!(feed[7].payload["state"], "succeeded");
}

pub async fn a_cancelled_job_never_starts_again(h: Harness) {
    let store = h.store.as_ref();
    let fence = lead(store).await;
    // Queued: cancelled at once, and then never started.
    let q = store.submit_job(&job("q", "ann", 0), t(1)).await.unwrap();
    let cancel = JobStep::Cancel { by: "ann".into() };
    let q = store
        .step_job(q.id, None, &cancel, None, t(2))
        .await
        .unwrap();
    assert_eq!(q.state, JobState::Cancelled);
    let e = step(store, &q, &on("t3.micro"), fence, 3)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::JobState { .. }), "{e:?}");
    let e = store
        .step_job(q.id, None, &cancel, None, t(3))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::JobState { .. }), "ended: {e:?}");

    // Under way: the cancel is asked; the attempt's end ends the job, even
    // one that would have been retried.
    let r = store.submit_job(&job("r", "ann", 0), t(4)).await.unwrap();
    let r = step(store, &r, &on("t3.micro"), fence, 5).await.unwrap();
    let made = JobStep::Created {
        attempt: 1,
        instance: InstanceId::new("i-9"),
    };
    let r = step(store, &r, &made, fence, 5).await.unwrap();
    let r = store
        .step_job(r.id, None, &cancel, None, t(6))
        .await
        .unwrap();
    assert_eq!(
        (r.state, r.cancel_by.as_deref()),
        (JobState::Starting, Some("ann"))
    );
    let run = step(store, &r, &JobStep::Running { attempt: 1 }, fence, 6).await;
    assert!(
        matches!(run, Err(StoreError::JobState { .. })),
        "cancelled: {run:?}"
    );
    let lost = JobStep::End {
        attempt: 1,
        end: AttemptEnd::Lost,
        after: AfterAttempt::Retry,
    };
    let r = step(store, &r, &lost, fence, 7).await.unwrap();
    assert_eq!(r.state, JobState::Cancelled);
    assert_eq!(r.reason.as_deref(), Some("cancelled by ann"));
    assert_eq!(
        store.job(r.id).await.unwrap(),
        Some(r),
        "read back as returned"
    );
}

pub async fn a_jobs_steps_are_fenced_and_checked_against_the_version_read(h: Harness) {
    let (a, b) = (h.store.as_ref(), h.second.as_ref());
    let old = lead(a).await;
    let j = a.submit_job(&job("x", "ann", 0), t(1)).await.unwrap();
    // Another server takes over.
    a.release_lease(super::CONTRACT_HOLDER, old).await.unwrap();
    let new = b
        .acquire_lease("b", std::time::Duration::from_secs(3600), t(2))
        .await
        .unwrap()
        .expect("released");
    let late = step(a, &j, &on("t3.micro"), old, 3).await;
    assert!(matches!(late, Err(StoreError::Fenced { .. })), "{late:?}");
    assert_eq!(
        a.job(j.id).await.unwrap(),
        Some(j.clone()),
        "nothing changed"
    );

    // Two steps from the same read: the second is stale.
    let moved = step(b, &j, &on("t3.micro"), new, 4).await.unwrap();
    let stale = step(b, &j, &JobStep::Reason(Some("x".into())), new, 5).await;
    assert!(matches!(stale, Err(StoreError::Stale { .. })), "{stale:?}");
    assert_eq!(b.job(j.id).await.unwrap(), Some(moved));
    let unfenced = b
        .step_job(j.id, None, &JobStep::Reason(None), None, t(6))
        .await;
    assert!(
        matches!(&unfenced, Err(e @ StoreError::JobState { .. }) if e.to_string().contains("lease")),
        "the leader's steps need its lease: {unfenced:?}"
    );
    let missing = b
        .step_job(
            j.id + 1,
            None,
            &JobStep::Cancel { by: "ann".into() },
            None,
            t(6),
        )
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

pub async fn racing_servers_start_one_attempt(h: Harness) {
    let fence = lead(h.store.as_ref()).await;
    let j = h.store.submit_job(&job("x", "ann", 0), t(1)).await.unwrap();
    let mut racers = JoinSet::new();
    for i in 0..8 {
        let store = if i % 2 == 0 {
            h.store.clone()
        } else {
            h.second.clone()
        };
        let read = j.clone();
        racers.spawn(async move {
            store
                .step_job(read.id, None, &on("t3.micro"), Some(fence), t(2))
                .await
        });
    }
    let mut started = 0;
    while let Some(r) = racers.join_next().await {
        match r.expect("task") {
            Ok(_) => started += 1,
            Err(StoreError::JobState { .. }) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(started, 1, "one attempt");
    let stored = h.store.job(j.id).await.unwrap().unwrap();
    assert_eq!(stored.attempts.len(), 1);
}
