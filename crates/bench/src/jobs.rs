//! `flotilla-bench jobs`: jobs through the engine on the fake cloud.
//!
//! Issue 13's targets: a job's submission to its attempt's instance
//! create at p99 ≤ 5 ms, and the throughput of zero-length jobs. The run
//! starts the engine as `flotilla serve` does (on the in-memory store, so
//! the engine's own cost shows), submits jobs through the front door as
//! the API does, and plays each attempt's agent through the front door
//! too (the script runs, then exits 0), as the agent routes do.
//!
//! 1. One job at a time: from the submission to the moment the job's
//!    attempt has its instance. The baseline, in the same run: the
//!    submission alone (its commit, and this server's copies catching up
//!    with it), which every command pays.
//! 2. `--jobs` jobs submitted at once, each ended by its agent as soon as
//!    its instance is made: wall time from the first submission to the
//!    last job's end, as jobs per second.
//!
//! The exit status is 1 if the target is missed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use flotilla_cloud::fake::FakeConfig;
use flotilla_control::{AgentReport, Control, SubmitJob};
use flotilla_domain::{Caller, JobDocument, JobState};
use flotilla_engine::{AttemptBoot, AttemptStart, EngineConfig, JobSettings};
use flotilla_store::{JobId, JobStore};
use prometheus_client::registry::Registry;

use crate::machine;
use crate::report::{fmt_duration, fmt_kib, max, percentile, Report, Verdict};
use crate::tap::CountingStore;

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    /// Jobs submitted one at a time, each timed to its instance.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Zero-length jobs submitted at once for the throughput.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
}

/// What a fake instance is handed: nothing runs on it; the bench plays
/// the agent.
struct FakeBoot;

impl AttemptBoot for FakeBoot {
    fn init_data(&self, start: &AttemptStart<'_>) -> Result<String, String> {
        Ok(format!("agent {}/{}", start.job, start.attempt))
    }
}

pub fn run(args: JobsArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(args))
}

fn document(name: &str) -> Result<JobDocument> {
    Ok(serde_json::from_value(serde_json::json!({
        "name": name,
        "script": "true",
        "max_runtime": "5m",
    }))?)
}

/// Plays the agent of job `id`'s attempt: its script runs, and exits 0.
async fn finish(control: &Control, store: &CountingStore, id: JobId) -> Result<()> {
    let job = store.job(id).await?.context("the job")?;
    let a = job.live_attempt().context("an attempt under way")?;
    control
        .attempt_report(id, a.attempt, &a.token, AgentReport::Running)
        .await?;
    control
        .attempt_report(id, a.attempt, &a.token, AgentReport::Exited { status: 0 })
        .await?;
    Ok(())
}

async fn bench(args: JobsArgs) -> Result<()> {
    machine::Machine::read().print_header("jobs: submission to instance, and throughput");
    println!(
        "- run: {} jobs one at a time, then {} zero-length jobs at once, on the fake cloud and the in-memory store",
        args.samples, args.jobs
    );
    println!();
    let store = Arc::new(CountingStore::new(Arc::new(
        flotilla_store::MemoryStore::new(),
    )));
    let mut registry = Registry::default();
    let (_cloud, tap, default_pool, pools) =
        crate::fake_wiring(&store, FakeConfig::default(), &mut registry).await?;
    let config = EngineConfig {
        jobs: JobSettings {
            max_instances: args.jobs.max(1),
            ..JobSettings::default()
        },
        ..EngineConfig::default()
    };
    let (engine, tasks, _registry) = crate::start_engine(
        config,
        store.clone(),
        crate::DRIVER,
        &tap,
        pools,
        default_pool,
        registry,
    )
    .await?;
    ensure!(engine.set_attempt_boot(Arc::new(FakeBoot)));
    let control = Control::new(engine.clone(), crate::fake_catalog());
    let admin = Caller::local_operator();

    // 1. One at a time.
    let mut to_instance = Vec::with_capacity(args.samples);
    let mut submit_alone = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let started = Instant::now();
        let view = control
            .run(
                &admin,
                SubmitJob {
                    document: document(&format!("one-{i}"))?,
                },
            )
            .await?;
        submit_alone.push(started.elapsed());
        let id = view.job.id;
        loop {
            let job = store.job(id).await?.context("the job")?;
            if job.live_attempt().is_some_and(|a| a.instance.is_some()) {
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(10),
                "job {id} got no instance"
            );
            tokio::task::yield_now().await;
        }
        to_instance.push(started.elapsed());
        finish(&control, &store, id).await?;
    }

    // 2. Many at once.
    let started = Instant::now();
    let mut ids = Vec::with_capacity(args.jobs);
    for i in 0..args.jobs {
        let view = control
            .run(
                &admin,
                SubmitJob {
                    document: document(&format!("many-{i}"))?,
                },
            )
            .await?;
        ids.push(view.job.id);
    }
    let submitted = started.elapsed();
    let mut left: std::collections::BTreeSet<JobId> = ids.iter().copied().collect();
    while !left.is_empty() {
        ensure!(
            started.elapsed() < Duration::from_secs(300),
            "{} jobs did not end",
            left.len()
        );
        for job in store.live_jobs().await? {
            if job
                .live_attempt()
                .is_some_and(|a| a.instance.is_some() && a.running_at.is_none())
            {
                finish(&control, &store, job.id).await?;
            }
        }
        let mut ended = Vec::new();
        for id in &left {
            if store.job(*id).await?.is_some_and(|j| j.state.is_final()) {
                ended.push(*id);
            }
        }
        for id in ended {
            left.remove(&id);
        }
        tokio::task::yield_now().await;
    }
    let all_done = started.elapsed();
    let succeeded = store
        .jobs(None, args.jobs + args.samples)
        .await?
        .iter()
        .filter(|j| j.state == JobState::Succeeded)
        .count();
    ensure!(
        succeeded == args.jobs + args.samples,
        "every job succeeded ({succeeded})"
    );
    tasks.shutdown().await;

    let mut report = Report::default();
    let p99 = percentile(&to_instance, 99.0);
    report.row(
        "submit → instance",
        format!("{} jobs one at a time: p50 / p99 / max", args.samples),
        format!(
            "{} / {} / {}",
            fmt_duration(percentile(&to_instance, 50.0)),
            fmt_duration(p99),
            fmt_duration(max(&to_instance))
        ),
        "p99 ≤ 5 ms",
        Verdict::check(p99 <= Duration::from_millis(5)),
    );
    report.info(
        "baseline",
        "the submission alone (commit and catch-up): p50 / p99",
        format!(
            "{} / {}",
            fmt_duration(percentile(&submit_alone, 50.0)),
            fmt_duration(percentile(&submit_alone, 99.0))
        ),
    );
    report.info(
        "throughput",
        format!(
            "{} zero-length jobs at once: submitted / all ended",
            args.jobs
        ),
        format!(
            "{} / {} ({:.0} jobs/s)",
            fmt_duration(submitted),
            fmt_duration(all_done),
            args.jobs as f64 / all_done.as_secs_f64()
        ),
    );
    report.info("memory", "peak RSS", fmt_kib(machine::peak_rss_kib()));
    println!("{}", report.markdown());
    ensure!(!report.failed(), "a target was missed");
    Ok(())
}
