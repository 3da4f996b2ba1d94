//! The job runner on the fake cloud, with time paused: agents are played
//! by the test through the front door, as the API's agent routes do, and
//! the cloud makes mistakes (creates refused, instances vanishing, a
//! quota). Every job ends exactly once, with the attempts its policy
//! allows, no two of them at once, and no instance is left behind.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{config, Harness, SET_ID};
use flotilla_cloud::fake::{FakeCloud, FakeConfig};
use flotilla_cloud::{InstanceSet, Tags};
use flotilla_control::{AgentReport, Control, SubmitJob};
use flotilla_domain::{AttemptEnd, Caller, JobDefaults, JobDocument, JobState, OrgName};
use flotilla_engine::{AttemptBoot, AttemptStart, JobSettings};
use flotilla_store::{JobRecord, MemoryStore, Store};

/// What a fake instance is handed: nothing runs it; the test plays the
/// agent.
struct FakeBoot;

impl AttemptBoot for FakeBoot {
    fn init_data(&self, start: &AttemptStart<'_>) -> Result<String, String> {
        Ok(format!("agent {}/{}", start.job, start.attempt))
    }
}

fn document(i: usize) -> JobDocument {
    let name = if i.is_multiple_of(5) {
        format!("j{i}-fails")
    } else {
        format!("j{i}")
    };
    serde_json::from_value(serde_json::json!({
        "name": name,
        "script": "true",
        "max_runtime": "10m",
        "retries": 10,
        "priority": (i % 3) as i32,
    }))
    .unwrap()
}

/// Plays every attempt's agent whose instance the cloud still has: it
/// reports that the script runs, reports it alive, and after two seconds
/// its exit (1 for a job named to fail).
async fn agents(control: Control, store: Arc<dyn Store>, cloud: FakeCloud) {
    let set = cloud.instance_set(SET_ID);
    let mut last_seen: HashMap<(u64, u32), tokio::time::Instant> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(live) = store.live_jobs().await else {
            continue;
        };
        let Ok(listed) = set.list(&Tags::new()).await else {
            continue;
        };
        let now = control.engine().now();
        for job in live {
            let Some(a) = job.live_attempt() else {
                continue;
            };
            let Some(instance) = &a.instance else {
                continue;
            };
            if !listed.iter().any(|i| &i.id == instance) {
                // Gone with its instance: silent from now on.
                continue;
            }
            let key = (job.id, a.attempt);
            let report = match a.running_at {
                None => AgentReport::Running,
                Some(at) if (now - at).num_seconds() >= 2 => AgentReport::Exited {
                    status: i32::from(job.name.ends_with("-fails")),
                },
                Some(_) => {
                    let due = last_seen
                        .get(&key)
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
                    if !due {
                        continue;
                    }
                    AgentReport::Heartbeat
                }
            };
            last_seen.insert(key, tokio::time::Instant::now());
            let _ = control
                .attempt_report(job.id, a.attempt, &a.token, report)
                .await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn five_hundred_jobs_each_end_once_through_the_clouds_faults() {
    let cloud = FakeCloud::new(FakeConfig {
        seed: 13,
        boot_delay: Duration::from_secs(1),
        create_error_rate: 0.05,
        death_rate: 0.1,
        death_within: Duration::from_secs(20),
        quota: Some(30),
        ..FakeConfig::default()
    });
    let mut config = config();
    config.jobs = JobSettings {
        defaults: JobDefaults::default(),
        heartbeat_timeout: Duration::from_secs(30),
        boot_timeout: Duration::from_secs(60),
        max_instances: 40,
        ..JobSettings::default()
    };
    let mut h = Harness::start(cloud.clone(), Arc::new(MemoryStore::new()), config).await;
    assert!(h.engine.set_attempt_boot(Arc::new(FakeBoot)));
    let admin = Caller::local_operator();
    for i in 0..500 {
        h.control
            .run(
                &admin,
                SubmitJob {
                    document: document(i),
                },
            )
            .await
            .expect("submitted");
    }
    let players = tokio::spawn(agents(h.control.clone(), h.store.clone(), cloud.clone()));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(6 * 3600);
    loop {
        if h.store.live_jobs().await.unwrap().is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs still live: {:?}",
            h.store.live_jobs().await.unwrap().len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    players.abort();

    let jobs: Vec<JobRecord> = h.store.jobs(None, 1000).await.unwrap();
    assert_eq!(jobs.len(), 500);
    let mut retried = 0;
    for job in &jobs {
        let attempts = &job.attempts;
        assert!(!attempts.is_empty(), "job {} ran", job.id);
        for pair in attempts.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(
                a.end.is_some_and(AttemptEnd::is_infrastructure),
                "job {}: only an infrastructure failure is retried: {a:?}",
                job.id
            );
            assert!(
                a.ended_at.unwrap() <= b.started_at,
                "job {}: attempts {} and {} overlap",
                job.id,
                a.attempt,
                b.attempt
            );
        }
        retried += attempts.len() - 1;
        let last = attempts.last().unwrap();
        let expected = match last.end.expect("ended") {
            AttemptEnd::Exited { status: 0 } => JobState::Succeeded,
            AttemptEnd::Exited { .. } => JobState::Failed,
            e if e.is_infrastructure() => {
                assert_eq!(attempts.len(), 11, "job {}: retries left: {e:?}", job.id);
                JobState::Failed
            }
            e => panic!("job {}: ended by {e:?}", job.id),
        };
        assert_eq!(job.state, expected, "job {}", job.id);
        if let Some(AttemptEnd::Exited { status }) = last.end {
            assert_eq!(status == 1, job.name.ends_with("-fails"), "job {}", job.id);
        }
    }
    assert!(
        retried > 0,
        "the faults were met: some attempts were retried"
    );

    // One end each, in the feed.
    let ended = h
        .store
        .changes(0, 100_000, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.kind == flotilla_domain::ChangeKind::JobEnded)
        .count();
    assert_eq!(ended, 500);

    // Every attempt's instance goes.
    let set = cloud.instance_set(SET_ID);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left = set.list(&Tags::new()).await.unwrap();
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} instances left",
            left.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    h.stop().await;
}

/// A schedule fires on time (each due time once, within a second), and
/// runs once for the times missed while no server led.
#[tokio::test(start_paused = true)]
async fn a_schedule_fires_on_time_and_once_for_what_was_missed() {
    use flotilla_control::{CreateSchedule, PauseSchedule};
    use flotilla_domain::{JobTemplate, Missed};

    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut config = config();
    config.jobs.templates.insert(
        "test".to_owned(),
        JobTemplate::new(
            "test",
            serde_json::json!({"script": "make test V={{version}}", "max_runtime": "5m"}),
            &config.jobs.defaults,
        )
        .unwrap(),
    );
    let cloud = FakeCloud::new(FakeConfig::default());
    let mut h = Harness::start(cloud.clone(), store.clone(), config.clone()).await;
    h.deploy("demo", 1, 86_400, None).await;
    let admin = Caller::local_operator();
    let every_ten_seconds = CreateSchedule {
        name: "often".into(),
        cron: "*/10 * * * * *".into(),
        template: "test".into(),
        cluster: "demo".into(),
        version: "v1".into(),
        missed: Missed::RunOnce,
    };
    let created = h.control.run(&admin, every_ten_seconds).await.unwrap();
    let first_due = created.next_at.unwrap();
    // Six due times: the first and five more, ten seconds apart.
    let until = first_due + chrono::Duration::milliseconds(50_500) - h.engine.now();
    tokio::time::sleep(until.to_std().unwrap()).await;
    let jobs = store.jobs(None, 100).await.unwrap();
    assert_eq!(
        jobs.len(),
        6,
        "one per due time: {:?}",
        jobs.iter().map(|j| j.submitted_at).collect::<Vec<_>>()
    );
    for (i, job) in jobs.iter().rev().enumerate() {
        let due = first_due + chrono::Duration::seconds(10 * i as i64);
        let late = job.submitted_at - due;
        assert!(
            late >= chrono::Duration::zero() && late <= chrono::Duration::seconds(1),
            "job {} queued {late} after its time",
            job.id
        );
        assert_eq!(job.document["script"], "make test V=v1");
        assert_eq!(job.document["cluster"], "demo");
    }

    // No server for a minute: one run for the six times missed, then on
    // time again.
    h.stop().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut h = Harness::start_with_clock(cloud, store.clone(), config, h.clock).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store.jobs(None, 100).await.unwrap().len(),
        7,
        "one for the missed runs"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        store.jobs(None, 100).await.unwrap().len(),
        8,
        "and on time after"
    );

    // Paused, it fires nothing.
    h.control
        .run(
            &admin,
            PauseSchedule {
                name: "often".into(),
                paused: true,
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(store.jobs(None, 100).await.unwrap().len(), 8);
    h.stop().await;
}

async fn submit(control: &Control, doc: serde_json::Value) -> u64 {
    submit_as(control, &Caller::local_operator(), doc).await
}

async fn submit_as(control: &Control, caller: &Caller, doc: serde_json::Value) -> u64 {
    control
        .run(
            caller,
            SubmitJob {
                document: serde_json::from_value(doc).unwrap(),
            },
        )
        .await
        .unwrap()
        .job
        .id
}

/// The job's attempt once its instance is made: number, token, instance.
async fn made(store: &Arc<dyn Store>, id: u64) -> (u32, String, flotilla_domain::InstanceId) {
    loop {
        let job = store.job(id).await.unwrap().unwrap();
        if let Some(a) = job.live_attempt().filter(|a| a.instance.is_some()) {
            return (a.attempt, a.token.clone(), a.instance.clone().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The job's attempt once its instance is made and its agent has said
/// the script runs: number, token, instance.
async fn running(
    control: &Control,
    store: &Arc<dyn Store>,
    id: u64,
) -> (u32, String, flotilla_domain::InstanceId) {
    let (attempt, token, instance) = made(store, id).await;
    control
        .attempt_report(id, attempt, &token, AgentReport::Running)
        .await
        .unwrap();
    (attempt, token, instance)
}

/// The instance of a job whose script failed is kept while its
/// `keep_on_failure` lasts, then goes; an instance left out of one listing
/// is not taken for gone; one that vanishes under a running attempt ends
/// it after the next listing (lost), and it is tried again.
#[tokio::test(start_paused = true)]
async fn a_failed_attempts_instance_is_kept_and_a_vanished_one_is_retried() {
    let cloud = FakeCloud::new(FakeConfig::default());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut h = Harness::start(cloud.clone(), store.clone(), config()).await;
    assert!(h.engine.set_attempt_boot(Arc::new(FakeBoot)));
    let set = cloud.instance_set(SET_ID);

    let kept = submit(
        &h.control,
        serde_json::json!({
            "name": "debug-me", "script": "false", "max_runtime": "5m", "keep_on_failure": "10m",
        }),
    )
    .await;
    let (attempt, token, instance) = running(&h.control, &store, kept).await;
    h.control
        .attempt_report(kept, attempt, &token, AgentReport::Exited { status: 1 })
        .await
        .unwrap();
    assert_eq!(
        store.job(kept).await.unwrap().unwrap().state,
        JobState::Failed
    );
    tokio::time::sleep(Duration::from_secs(9 * 60)).await;
    let listed = set.list(&Tags::new()).await.unwrap();
    assert!(
        listed.iter().any(|i| i.id == instance),
        "kept for debugging"
    );
    tokio::time::sleep(Duration::from_secs(2 * 60)).await;
    let listed = set.list(&Tags::new()).await.unwrap();
    assert!(
        !listed.iter().any(|i| i.id == instance),
        "gone once keep_on_failure ran out"
    );

    // Left out of one listing (as EC2 may leave out an instance just
    // made), it is not taken for gone.
    let hidden = submit(
        &h.control,
        serde_json::json!({"name": "hidden-once", "script": "true", "max_runtime": "5m"}),
    )
    .await;
    let (attempt, token, instance) = running(&h.control, &store, hidden).await;
    cloud.hide_once(&instance);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        h.control
            .attempt_report(hidden, attempt, &token, AgentReport::Heartbeat)
            .await
            .unwrap();
    }
    let job = store.job(hidden).await.unwrap().unwrap();
    assert_eq!(job.attempts.len(), 1, "{job:?}");
    assert_eq!(job.state, JobState::Running);
    h.control
        .attempt_report(hidden, attempt, &token, AgentReport::Exited { status: 0 })
        .await
        .unwrap();

    let vanishing = submit(
        &h.control,
        serde_json::json!({"name": "vanishing", "script": "true", "max_runtime": "5m"}),
    )
    .await;
    let (_, _, instance) = running(&h.control, &store, vanishing).await;
    cloud.kill(&instance);
    // Missing from two listings (resyncs every 10 s), well before the
    // heartbeat timeout (30 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    loop {
        let job = store.job(vanishing).await.unwrap().unwrap();
        if job.attempts.len() == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tried again at once, not after the heartbeat timeout: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job = store.job(vanishing).await.unwrap().unwrap();
    assert_eq!(job.attempts[0].end, Some(AttemptEnd::Lost));
    h.stop().await;
}

/// An engine on the fake cloud whose store has account ann (an
/// organisation member) owning organisation `lab`, with `credit` on it.
async fn lab_owned_by_ann(credit: Option<&str>) -> (Harness, Arc<dyn Store>, OrgName) {
    lab_with(credit, common::pools(), Arc::new(FakeBoot)).await
}

/// As [`lab_owned_by_ann`], with `pools` and `boot`.
async fn lab_with(
    credit: Option<&str>,
    pools: std::collections::BTreeMap<flotilla_domain::PoolName, flotilla_domain::PoolSpec>,
    boot: Arc<dyn AttemptBoot>,
) -> (Harness, Arc<dyn Store>, OrgName) {
    use flotilla_control::{CreateOrg, CreditOrg};
    use flotilla_domain::{AccountKind, Level, Username};

    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store
        .create_account(&flotilla_store::AccountRecord {
            username: Username::new("ann").unwrap(),
            kind: AccountKind::Github,
            level: Level::OrgMember,
            password_hash: None,
            grants: Default::default(),
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let h = Harness::start_with_pools(
        FakeCloud::new(FakeConfig::default()),
        store.clone(),
        config(),
        pools,
    )
    .await;
    assert!(h.engine.set_attempt_boot(boot));
    let admin = Caller::local_operator();
    let lab = OrgName::new("lab").unwrap();
    h.control
        .run(
            &admin,
            CreateOrg {
                name: lab.clone(),
                owners: vec!["ann".into()],
                pool: None,
            },
        )
        .await
        .unwrap();
    if let Some(amount) = credit {
        h.control
            .run(
                &admin,
                CreditOrg {
                    org: lab.clone(),
                    amount: amount.parse().unwrap(),
                    reason: "grant".into(),
                },
            )
            .await
            .unwrap();
    }
    (h, store, lab)
}

/// No funds, no start: a job charged to an organisation whose budget is
/// spent waits, saying so, and starts once an admin adds credit.
#[tokio::test(start_paused = true)]
async fn a_job_charged_to_a_spent_organisation_waits_for_credit() {
    use flotilla_control::CreditOrg;

    let (mut h, store, lab) = lab_owned_by_ann(None).await;
    let admin = Caller::local_operator();
    let id = submit(
        &h.control,
        serde_json::json!({"name": "paid", "script": "true", "max_runtime": "5m", "org": "lab"}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let job = store.job(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert!(
        job.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("waiting for budget: organisation lab has $0.00")),
        "{:?}",
        job.reason
    );
    h.control
        .run(
            &admin,
            CreditOrg {
                org: lab,
                amount: "5".parse().unwrap(),
                reason: "grant".into(),
            },
        )
        .await
        .unwrap();
    made(&store, id).await;
    h.stop().await;
}

/// A job charged to an organisation is charged like a node of its
/// cluster: its instance from launch until a listing no longer shows it
/// (the minutes it was kept for debugging included), at its attempt's
/// price, to whoever submitted it.
#[tokio::test(start_paused = true)]
async fn a_jobs_instance_is_charged_to_its_organisation_and_submitter() {
    use flotilla_domain::{lifetime_cost, Level, Money, Username};

    let (mut h, store, lab) = lab_owned_by_ann(Some("5")).await;
    let cloud = h.cloud.clone();
    let ann = Username::new("ann").unwrap();
    let id = submit_as(
        &h.control,
        &Caller::signed_in(ann.clone(), Level::OrgMember),
        serde_json::json!({
            "name": "paid", "script": "false", "max_runtime": "5m",
            "org": "lab", "keep_on_failure": "2m",
        }),
    )
    .await;
    let (attempt, token, instance) = running(&h.control, &store, id).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        h.control
            .attempt_report(id, attempt, &token, AgentReport::Heartbeat)
            .await
            .unwrap();
    }
    h.control
        .attempt_report(id, attempt, &token, AgentReport::Exited { status: 1 })
        .await
        .unwrap();
    // Kept two minutes for debugging, then destroyed and gone.
    tokio::time::sleep(Duration::from_secs(150)).await;
    let set = cloud.instance_set(SET_ID);
    assert!(!set
        .list(&Tags::new())
        .await
        .unwrap()
        .iter()
        .any(|i| i.id == instance));
    h.engine.accrue_now().await.unwrap();

    let job = store.job(id).await.unwrap().unwrap();
    let a = &job.attempts[0];
    let meters = store.usage(&lab).await.unwrap();
    assert_eq!(meters.len(), 1, "{meters:?}");
    let meter = &meters[0];
    assert_eq!(meter.id, instance);
    assert_eq!(
        meter
            .job
            .as_ref()
            .map(|j| (j.attempt.as_str(), j.user.clone())),
        Some((format!("{id}/1").as_str(), Some(ann.clone())))
    );
    assert_eq!(meter.price_per_hour, a.price_per_hour);
    assert!(a.price_per_hour > Money::ZERO);
    let end = meter.end.expect("ended once gone").at;
    let kept_until = a.ended_at.unwrap() + chrono::Duration::minutes(2);
    assert!(
        end >= kept_until,
        "charged while kept for debugging: ended {end}, kept until {kept_until}"
    );
    // From its launch (the store keeps times to the millisecond).
    assert!(meter.launched_at - a.running_at.unwrap() < chrono::Duration::milliseconds(1));
    assert!(meter.settled());
    let charged = lifetime_cost(meter.price_per_hour, meter.launched_at, end);
    assert_eq!(meter.charged(), charged);
    let costs = store.costs(&lab).await.unwrap();
    assert_eq!(
        costs
            .iter()
            .filter(|c| c.user.as_ref() == Some(&ann))
            .map(|c| c.amount)
            .sum::<Money>(),
        charged
    );
    let org = store.get_org(&lab).await.unwrap().unwrap();
    assert_eq!(org.budget.balance, "5".parse::<Money>().unwrap() - charged);
    h.stop().await;
}

/// An agent keeps only what its job's `artifacts` name (a file, or one
/// under a directory named), only while its attempt is under way, and
/// only inside the work directory.
#[tokio::test(start_paused = true)]
async fn an_agent_keeps_only_its_jobs_artifacts() {
    let cloud = FakeCloud::new(FakeConfig::default());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut h = Harness::start(cloud, store.clone(), config()).await;
    assert!(h.engine.set_attempt_boot(Arc::new(FakeBoot)));
    let kept = tempfile::tempdir().unwrap();
    let control = h
        .control
        .clone()
        .with_artifacts(Arc::new(flotilla_store::LocalArtifacts::new(kept.path())));
    let id = submit(
        &control,
        serde_json::json!({
            "name": "build", "script": "true", "max_runtime": "5m",
            "artifacts": ["out/report.txt", "out/dir"],
        }),
    )
    .await;
    let (attempt, token, _) = running(&control, &store, id).await;
    let put = |path: &'static str| {
        let control = control.clone();
        let token = token.clone();
        async move {
            control
                .attempt_file(id, attempt, &token, path, b"x".to_vec())
                .await
        }
    };
    assert_eq!(put("out/report.txt").await.unwrap(), "out/report.txt");
    assert_eq!(put("./out/dir//a/b.txt").await.unwrap(), "out/dir/a/b.txt");
    for refused in [
        "out/other.txt",
        "out/dirt",
        "../etc/passwd",
        "/etc/passwd",
        "out/dir/../../x",
    ] {
        let e = put(refused).await.unwrap_err();
        assert!(
            matches!(e, flotilla_engine::EngineError::InvalidJob { .. }),
            "{refused}: {e}"
        );
    }
    let wrong = control
        .attempt_file(id, attempt, "not-the-token", "out/report.txt", vec![])
        .await;
    assert!(wrong.is_err());
    let admin = Caller::local_operator();
    let (n, files) = control.job_files(&admin, id, None).await.unwrap();
    assert_eq!(n, attempt);
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["out/dir/a/b.txt", "out/report.txt"]);

    // At most 1,000 files an attempt; one sent again counts once.
    for i in 2..flotilla_control::MAX_KEPT_FILES {
        control
            .attempt_file(id, attempt, &token, &format!("out/dir/{i}"), b"x".to_vec())
            .await
            .unwrap();
    }
    assert_eq!(put("out/report.txt").await.unwrap(), "out/report.txt");
    let e = control
        .attempt_file(id, attempt, &token, "out/dir/one-too-many", b"x".to_vec())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("keeps 1000 files already"), "{e}");

    control
        .attempt_report(id, attempt, &token, AgentReport::Exited { status: 0 })
        .await
        .unwrap();
    let late = put("out/report.txt").await.unwrap_err();
    assert!(
        matches!(late, flotilla_engine::EngineError::Conflict(_)),
        "{late}"
    );
    h.stop().await;
}

/// A job under way whose organisation runs out of money is stopped, as its
/// cluster is: cancelled, saying why, its instance destroyed.
#[tokio::test(start_paused = true)]
async fn a_running_job_stops_when_its_organisation_runs_out_of_money() {
    use flotilla_control::CreditOrg;
    use flotilla_domain::{Level, Username};

    let (mut h, store, lab) = lab_owned_by_ann(Some("5")).await;
    let cloud = h.cloud.clone();
    let id = submit_as(
        &h.control,
        &Caller::signed_in(Username::new("ann").unwrap(), Level::OrgMember),
        serde_json::json!({
            "name": "long", "script": "sleep 600", "max_runtime": "1h", "org": "lab",
        }),
    )
    .await;
    let (_, _, instance) = running(&h.control, &store, id).await;
    h.control
        .run(
            &Caller::local_operator(),
            CreditOrg {
                org: lab,
                amount: "-5".parse().unwrap(),
                reason: "taken back".into(),
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let job = store.job(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");
    assert_eq!(
        job.reason.as_deref(),
        Some("cancelled by the budget shutdown of organisation lab")
    );
    assert_eq!(job.attempts[0].end, Some(AttemptEnd::Cancelled));
    let listed = cloud.instance_set(SET_ID).list(&Tags::new()).await.unwrap();
    assert!(
        !listed.iter().any(|i| i.id == instance),
        "its instance is destroyed"
    );
    h.stop().await;
}

/// Hands fake instances kept warm their token, and remembers it: the
/// test plays their agents.
#[derive(Default)]
struct WarmBoot {
    tokens: std::sync::Mutex<Vec<String>>,
}

impl AttemptBoot for WarmBoot {
    fn init_data(&self, start: &AttemptStart<'_>) -> Result<String, String> {
        FakeBoot.init_data(start)
    }

    fn warm_init_data(&self, start: &flotilla_engine::WarmStart<'_>) -> Result<String, String> {
        self.tokens.lock().unwrap().push(start.token.to_owned());
        Ok("agent --warm".to_owned())
    }
}

/// The instances the cloud has, by id.
async fn listed(
    cloud: &FakeCloud,
) -> HashMap<flotilla_domain::InstanceId, flotilla_cloud::Instance> {
    let set = cloud.instance_set(SET_ID);
    set.list(&Tags::new())
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect()
}

/// Waits until the cloud has `n` instances kept warm that no job took,
/// and returns them.
async fn idle_warm(cloud: &FakeCloud, n: usize) -> Vec<flotilla_cloud::Instance> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let idle: Vec<_> = listed(cloud)
            .await
            .into_values()
            .filter(|i| i.warm().is_some() && i.job().is_none())
            .collect();
        if idle.len() == n {
            return idle;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} idle warm instances, not {n}: {idle:?}",
            idle.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pool's `idle_nodes` keeps instances booted for jobs: a job that fits
/// one takes it (none is made for it), its agent learns the attempt by
/// the token its boot was given, another is made in its place, the job is
/// charged from when it took the instance (its idle time to nobody), and
/// one idle past `warm_max_idle` is replaced.
#[tokio::test(start_paused = true)]
async fn a_pools_warm_instances_are_taken_by_jobs_and_kept_up() {
    use flotilla_domain::{warm_token_hash, Level, Username};

    let mut pools = common::pools();
    pools
        .get_mut(&flotilla_domain::PoolName::new("default").unwrap())
        .unwrap()
        .idle_nodes = 2;
    let boot = Arc::new(WarmBoot::default());
    let (mut h, store, lab) = lab_with(Some("5"), pools, boot.clone()).await;
    let cloud = h.cloud.clone();

    let warm = idle_warm(&cloud, 2).await;
    let token_of = |i: &flotilla_cloud::Instance| {
        boot.tokens
            .lock()
            .unwrap()
            .iter()
            .find(|t| Some(warm_token_hash(t).as_str()) == i.warm())
            .cloned()
            .expect("a token given at its boot")
    };
    for i in &warm {
        assert_eq!(i.instance_type.as_str(), "fake.small");
        assert!(i.cluster().unwrap().as_str().starts_with("warm-"), "{i:?}");
        assert_eq!(
            h.control
                .warm_assignment(&token_of(i), Duration::ZERO)
                .await
                .unwrap(),
            None
        );
    }
    let nobodys = "0123456789abcdef".repeat(4);
    assert_eq!(
        h.control
            .warm_assignment(&nobodys, Duration::ZERO)
            .await
            .unwrap(),
        None
    );
    assert!(h
        .control
        .warm_assignment("not-a-token", Duration::ZERO)
        .await
        .is_err());
    // Idle a minute: charged to nobody.
    tokio::time::sleep(Duration::from_secs(60)).await;

    // Both agents ask, waiting up to 25 s: the one whose instance a job
    // takes is answered as soon as the job starts, the other after 25 s.
    let asking: Vec<_> = warm
        .iter()
        .map(|i| {
            let (control, token) = (h.control.clone(), token_of(i));
            tokio::spawn(async move {
                let asked = tokio::time::Instant::now();
                let answer = control
                    .warm_assignment(&token, Duration::from_secs(25))
                    .await
                    .unwrap();
                (answer, asked.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;

    let ann = Username::new("ann").unwrap();
    let id = submit_as(
        &h.control,
        &Caller::signed_in(ann.clone(), Level::OrgMember),
        serde_json::json!({"name": "warm", "script": "true", "max_runtime": "5m", "org": "lab"}),
    )
    .await;
    let (attempt, token, instance) = made(&store, id).await;
    let taken = warm
        .iter()
        .find(|i| i.id == instance)
        .expect("the job took an instance kept warm")
        .clone();
    let job = store.job(id).await.unwrap().unwrap();
    assert_eq!(job.attempts[0].warm.as_deref(), taken.warm());
    assert_eq!(
        listed(&cloud).await[&instance].job(),
        Some((id, attempt)),
        "its tag names the attempt"
    );
    let mut answers = Vec::new();
    for asking in asking {
        answers.push(asking.await.unwrap());
    }
    let (assignment, waited) = answers
        .iter()
        .find(|(a, _)| a.is_some())
        .cloned()
        .expect("its agent is told");
    let assignment = assignment.unwrap();
    assert!(waited < Duration::from_secs(5), "told at once: {waited:?}");
    assert!(
        answers
            .iter()
            .any(|(a, w)| a.is_none() && *w >= Duration::from_secs(25)),
        "{answers:?}"
    );
    assert_eq!(
        h.control
            .warm_assignment(&token_of(&taken), Duration::ZERO)
            .await
            .unwrap()
            .as_ref(),
        Some(&assignment)
    );
    assert_eq!(
        (
            assignment.job,
            assignment.attempt,
            assignment.token.as_str()
        ),
        (id, attempt, token.as_str())
    );
    // Its boot timeout (10m), max_runtime (5m) and a margin (10m).
    assert_eq!(assignment.lifetime, Duration::from_secs(25 * 60));
    let other = warm.iter().find(|i| i.id != instance).unwrap();
    assert_eq!(
        h.control
            .warm_assignment(&token_of(other), Duration::ZERO)
            .await
            .unwrap(),
        None
    );

    h.control
        .attempt_report(id, attempt, &token, AgentReport::Running)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    h.control
        .attempt_report(id, attempt, &token, AgentReport::Exited { status: 0 })
        .await
        .unwrap();
    assert_eq!(
        store.job(id).await.unwrap().unwrap().state,
        JobState::Succeeded
    );
    // Another in its place; the one the job ran on is destroyed.
    let now_warm = idle_warm(&cloud, 2).await;
    assert!(now_warm.iter().any(|i| i.id == other.id));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while listed(&cloud).await.contains_key(&instance) {
        assert!(tokio::time::Instant::now() < deadline, "not destroyed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        listed(&cloud).await.len(),
        2,
        "nothing else made: {:?}",
        listed(&cloud).await
    );

    // Charged from when the job took it, not from its launch.
    h.engine.accrue_now().await.unwrap();
    let a = &store.job(id).await.unwrap().unwrap().attempts[0];
    let meters = store.usage(&lab).await.unwrap();
    assert_eq!(meters.len(), 1, "{meters:?}");
    assert_eq!(meters[0].id, instance);
    assert!(
        (meters[0].launched_at - a.started_at).abs() < chrono::Duration::milliseconds(1),
        "{} vs {}",
        meters[0].launched_at,
        a.started_at
    );
    assert!(
        meters[0].launched_at - taken.launched_at >= chrono::Duration::seconds(59),
        "charged from {}, launched {}",
        meters[0].launched_at,
        taken.launched_at
    );

    // Unused past warm_max_idle (an hour): replaced.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let replaced = idle_warm(&cloud, 2).await;
    assert!(
        replaced.iter().all(|i| i.id != other.id),
        "the one idle an hour was replaced"
    );
    assert_eq!(listed(&cloud).await.len(), 2);
    h.stop().await;
}

/// Instances kept warm count towards `max_instances`, but jobs come
/// first: a job that fits none of them (on another pool) and finds no
/// slot has one destroyed to make room, and none is made again while it
/// waits; once it has ended, they are kept warm again.
#[tokio::test(start_paused = true)]
async fn instances_kept_warm_give_way_to_jobs_waiting_for_an_instance() {
    let mut pools = common::pools();
    pools
        .get_mut(&flotilla_domain::PoolName::new("default").unwrap())
        .unwrap()
        .idle_nodes = 2;
    let mut config = config();
    config.jobs.max_instances = 2;
    let cloud = FakeCloud::new(FakeConfig::default());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut h = Harness::start_with_pools(cloud.clone(), store.clone(), config, pools).await;
    assert!(h.engine.set_attempt_boot(Arc::new(WarmBoot::default())));
    let warm = idle_warm(&cloud, 2).await;

    let big = submit(
        &h.control,
        serde_json::json!({"name": "big", "script": "true", "max_runtime": "5m", "pool": "big"}),
    )
    .await;
    let (attempt, token, instance) = running(&h.control, &store, big).await;
    let listed_now = listed(&cloud).await;
    assert_eq!(listed_now[&instance].instance_type.as_str(), "fake.big");
    assert!(listed_now.len() <= 2, "max_instances holds: {listed_now:?}");
    assert!(
        warm.iter().any(|w| !listed_now.contains_key(&w.id)),
        "one kept warm gave way"
    );
    h.control
        .attempt_report(big, attempt, &token, AgentReport::Exited { status: 0 })
        .await
        .unwrap();
    idle_warm(&cloud, 2).await;
    h.stop().await;
}
