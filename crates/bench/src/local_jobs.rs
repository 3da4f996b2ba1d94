//! `flotilla-bench local-jobs`: jobs on the local driver, through a real
//! `flotilla serve`.
//!
//! Issue 13's targets on the local driver: a job's submission to its
//! script running (median ≤ 100 ms), and the throughput of short jobs.
//! The run starts `flotilla serve` (the binary beside this one, on its
//! embedded SQLite store) with a local pool, signs in as the admin, and
//! submits jobs over HTTP as the command line does. Every attempt's node
//! is a real process whose agent fetches the job and runs its script.
//!
//! 1. `--samples` jobs one at a time, each waited for to its end: from
//!    the submission (just before the request goes) to the moment its
//!    script ran, which the script itself writes down (`date +%s%N`, the
//!    same clock). The baselines, in the same run: the submission's round
//!    trip alone, and a process that runs `sh -c 'date +%s%N'` started by
//!    the bench itself (what starting any script costs here).
//!    The same on a pool that keeps an instance warm (`idle_nodes = 1`),
//!    each job taken by the instance waiting for it (the bench pauses
//!    after each for the next one to boot and ask).
//! 2. `--jobs` jobs whose script is `true`, submitted at once: wall time
//!    from the first submission to the last job's end, as jobs per second,
//!    with at most `--max-instances` nodes at once.
//!
//! The exit status is 1 if the target is missed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};

use crate::machine::Machine;
use crate::report::{fmt_duration, max, percentile, Report, Verdict};
use crate::serve::Server;

#[derive(Debug, clap::Args)]
pub struct LocalJobsArgs {
    /// The flotilla binary (default: beside this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Jobs submitted one at a time, each timed to its script running.
    #[arg(long, default_value_t = 40)]
    samples: usize,
    /// Short jobs submitted at once for the throughput.
    #[arg(long, default_value_t = 200)]
    jobs: usize,
    /// Job instances (node processes) at once.
    #[arg(long, default_value_t = 50)]
    max_instances: usize,
}

const TARGET: Duration = Duration::from_millis(100);
const PASSWORD: &str = "local-jobs-bench-password";

fn start(bin: &Path, dir: &Path, max_instances: usize) -> Result<Server> {
    let config = dir.join("flotilla.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nresync_interval = \"1s\"\n\n\
             [drivers.local]\ntype = \"local\"\ngrace = \"1s\"\n\n\
             [pools.default]\ndriver = \"local\"\ninstance_type = \"local.small\"\n\n\
             [pools.warm]\ndriver = \"local\"\ninstance_type = \"local.small\"\nidle_nodes = 1\n\n\
             [jobs]\nmax_instances = {max_instances}\n\n\
             [levels.admin]\nrequests_per_minute = 1000000\n"
        ),
    )?;
    crate::serve::start(bin, dir, &config, &[("FLOTILLA_ADMIN_PASSWORD", PASSWORD)])
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Reads the nanoseconds a script wrote down, once it has.
fn written_ns(path: &Path) -> Option<i128> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn run(args: LocalJobsArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench(args))
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn submit(&self, name: &str, script: &str, pool: &str) -> Result<u64> {
        let reply = self
            .http
            .post(format!("{}/api/v1/jobs", self.url))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({
                "name": name, "script": script, "max_runtime": "5m", "pool": pool,
            }))
            .send()
            .await?;
        let status = reply.status();
        let body: serde_json::Value = reply.json().await?;
        ensure!(status.is_success(), "submitting: {status}: {body}");
        body["id"].as_u64().context("the job's id")
    }

    async fn state(&self, id: u64) -> Result<String> {
        let body: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/jobs/{id}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await?
            .json()
            .await?;
        Ok(body["state"].as_str().unwrap_or_default().to_owned())
    }

    /// The states of the newest `limit` jobs, by id.
    async fn states(&self, limit: usize) -> Result<Vec<(u64, String)>> {
        let body: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/jobs", self.url))
            .query(&[("limit", limit)])
            .bearer_auth(&self.token)
            .send()
            .await?
            .json()
            .await?;
        Ok(body["jobs"]
            .as_array()
            .context("a job list")?
            .iter()
            .filter_map(|j| Some((j["id"].as_u64()?, j["state"].as_str()?.to_owned())))
            .collect())
    }
}

const FINAL: [&str; 4] = ["succeeded", "failed", "cancelled", "timed_out"];

/// How long the bench waits after a job on an instance kept warm, for the
/// next one to boot and ask for a job.
const WARM_PAUSE: Duration = Duration::from_millis(500);

/// What jobs submitted one at a time measured.
struct OneAtATime {
    /// From the submission to the script running.
    to_running: Vec<Duration>,
    /// The submission's round trip.
    submit_alone: Vec<Duration>,
    /// `sh -c 'date'` started here.
    sh_alone: Vec<Duration>,
}

/// Submits `samples` jobs on `pool` one at a time, each waited for to its
/// end, then `pause`.
async fn one_at_a_time(
    api: &Api,
    marks: &Path,
    pool: &str,
    samples: usize,
    pause: Duration,
) -> Result<OneAtATime> {
    let mut to_running = Vec::with_capacity(samples);
    let mut submit_alone = Vec::with_capacity(samples);
    let mut sh_alone = Vec::with_capacity(samples);
    for i in 0..samples {
        let mark = marks.join(format!("{pool}-{i}"));
        let script = format!("date +%s%N > {}", mark.display());
        let submitted_ns = now_ns();
        let started = Instant::now();
        let id = api.submit(&format!("{pool}-{i}"), &script, pool).await?;
        submit_alone.push(started.elapsed());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = api.state(id).await?;
            if FINAL.contains(&state.as_str()) {
                ensure!(state == "succeeded", "job {id} {state}");
                break;
            }
            ensure!(Instant::now() < deadline, "job {id} did not end: {state}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ran_ns = written_ns(&mark).with_context(|| format!("job {id} wrote no mark"))?;
        to_running.push(Duration::from_nanos(
            u64::try_from(ran_ns - submitted_ns).context("a mark before its submission")?,
        ));
        // The baseline: a script started here, the same way.
        let before = now_ns();
        let out = tokio::process::Command::new("sh")
            .args(["-c", "date +%s%N"])
            .output()
            .await?;
        let ran: i128 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        sh_alone.push(Duration::from_nanos(u64::try_from(ran - before)?));
        tokio::time::sleep(pause).await;
    }
    Ok(OneAtATime {
        to_running,
        submit_alone,
        sh_alone,
    })
}

async fn bench(args: LocalJobsArgs) -> Result<()> {
    Machine::read().print_header("local-jobs: submission to script running, and throughput");
    let bin = crate::serve::binary(args.bin)?;
    println!(
        "- run: {} jobs one at a time, then {} short jobs at once ({} nodes at most), on the local driver of `flotilla serve` ({})",
        args.samples,
        args.jobs,
        args.max_instances,
        bin.display()
    );
    println!();
    let work = tempfile::tempdir()?;
    let server = start(&bin, work.path(), args.max_instances)?;
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!("{}/api/v1/auth/login", server.url))
        .json(&serde_json::json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    let api = Api {
        http,
        url: server.url.clone(),
        token: login["access_token"]
            .as_str()
            .with_context(|| format!("signing in: {login}"))?
            .to_owned(),
    };

    // 1. One at a time, then on an instance kept warm.
    let marks = work.path().join("marks");
    std::fs::create_dir_all(&marks)?;
    let cold = one_at_a_time(&api, &marks, "default", args.samples, Duration::ZERO).await?;
    let warm = one_at_a_time(&api, &marks, "warm", args.samples, WARM_PAUSE).await?;
    let (to_running, submit_alone, sh_alone) = (cold.to_running, cold.submit_alone, cold.sh_alone);

    // 2. Many at once.
    let started = Instant::now();
    let mut ids = Vec::with_capacity(args.jobs);
    for i in 0..args.jobs {
        ids.push(api.submit(&format!("many-{i}"), "true", "default").await?);
    }
    let submitted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let states = api.states(args.jobs).await?;
        let ended: Vec<&(u64, String)> = states
            .iter()
            .filter(|(id, s)| ids.contains(id) && FINAL.contains(&s.as_str()))
            .collect();
        if ended.len() == ids.len() {
            let failed = ended.iter().filter(|(_, s)| s != "succeeded").count();
            ensure!(failed == 0, "{failed} short jobs did not succeed");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{} of {} short jobs ended",
            ended.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_done = started.elapsed();
    drop(server);

    let mut report = Report::default();
    let median = percentile(&to_running, 50.0);
    report.row(
        "submit → running",
        format!("{} jobs one at a time: p50 / p90 / max", args.samples),
        format!(
            "{} / {} / {}",
            fmt_duration(median),
            fmt_duration(percentile(&to_running, 90.0)),
            fmt_duration(max(&to_running))
        ),
        "median ≤ 100 ms",
        Verdict::check(median <= TARGET),
    );
    report.info(
        "warm",
        format!(
            "{} jobs one at a time on an instance kept warm: p50 / p90 / max",
            args.samples
        ),
        format!(
            "{} / {} / {} ({:.2}× the median above)",
            fmt_duration(percentile(&warm.to_running, 50.0)),
            fmt_duration(percentile(&warm.to_running, 90.0)),
            fmt_duration(max(&warm.to_running)),
            percentile(&warm.to_running, 50.0).as_secs_f64() / median.as_secs_f64()
        ),
    );
    report.info(
        "baseline",
        "the submission's round trip alone: p50 / p90",
        format!(
            "{} / {}",
            fmt_duration(percentile(&submit_alone, 50.0)),
            fmt_duration(percentile(&submit_alone, 90.0))
        ),
    );
    report.info(
        "baseline",
        "`sh -c 'date'` started by the bench: p50 / p90",
        format!(
            "{} / {}",
            fmt_duration(percentile(&sh_alone, 50.0)),
            fmt_duration(percentile(&sh_alone, 90.0))
        ),
    );
    report.info(
        "throughput",
        format!(
            "{} short jobs at once (`true`): submitted / all ended",
            args.jobs
        ),
        format!(
            "{} / {} ({:.1} jobs/s)",
            fmt_duration(submitted),
            fmt_duration(all_done),
            args.jobs as f64 / all_done.as_secs_f64()
        ),
    );
    println!("{}", report.markdown());
    ensure!(!report.failed(), "a target was missed");
    Ok(())
}
