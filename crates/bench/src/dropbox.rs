//! `flotilla-bench dropbox`: the drop box and notifications (issue 14),
//! through a real `flotilla serve` on the fake driver.
//!
//! 1. **Trigger → deploy committed**: `--samples` `.cf-create` files
//!    written one at a time into a watched folder (inotify; the scans
//!    every 2 s go on), each from just before its write to the commit of
//!    its deploy (the `at` of its `cluster.deployed` change, the server's
//!    clock, which is this machine's). The baseline in the same run: the
//!    same deploy through `PUT /api/v1/clusters/NAME`, timed the same way.
//! 2. The same with 10,000 other files in 1,000 account folders, and how
//!    long one pass over them takes (`flotilla_dropbox_scan_seconds`, from
//!    `/metrics`).
//! 3. The same, on a second server that does not watch (`watch = false`,
//!    `scan_interval = 500ms`): the scans alone.
//! 4. **Event → webhook**: every `cluster.deployed` above goes to a
//!    webhook the bench serves; from the change's `at` to the POST's
//!    arrival.
//!
//! The exit status is 1 if a target is missed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context, Result};
use chrono::{DateTime, Utc};

use crate::machine::Machine;
use crate::report::{fmt_duration, max, percentile, Report, Verdict};

#[derive(Debug, clap::Args)]
pub struct DropboxArgs {
    /// The flotilla binary (default: beside this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Triggers written one at a time, per case.
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Account folders of other files for case 2.
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Files in each of them.
    #[arg(long, default_value_t = 10)]
    files: usize,
}

const PASSWORD: &str = "dropbox-bench-password";
const TRIGGER_TARGET: Duration = Duration::from_millis(50);
const SCAN_TARGET: Duration = Duration::from_millis(100);

/// What the webhook receiver saw: a cluster's name → when its
/// `cluster.deployed` arrived, and the change's own time.
type Arrivals = Arc<Mutex<HashMap<String, (SystemTime, DateTime<Utc>)>>>;

pub fn run(args: DropboxArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench(args))
}

fn config(dir: &Path, drop: &Path, watch: bool, scan: &str) -> Result<PathBuf> {
    let path = dir.join("flotilla.toml");
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        &path,
        format!(
            "[limits]\nresync_interval = \"10s\"\n\n\
             [drivers.fake]\ntype = \"fake\"\n\n\
             [pools.default]\ndriver = \"fake\"\ninstance_type = \"fake.small\"\n\n\
             [dropbox]\ndir = {:?}\nscan_interval = {scan:?}\nwatch = {watch}\n\n\
             [notify]\ndedup_window = \"0s\"\n\n\
             [levels.admin]\nrequests_per_minute = 1000000\n",
            drop.display().to_string()
        ),
    )?;
    Ok(path)
}

/// Serves the webhook on a free port: its URL.
async fn receiver(arrivals: Arrivals) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let arrivals = arrivals.clone();
            async move {
                let now = SystemTime::now();
                if let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) {
                    let at = event["at"]
                        .as_str()
                        .and_then(|a| a.parse::<DateTime<Utc>>().ok());
                    if let (Some(key), Some(at)) = (event["key"].as_str(), at) {
                        arrivals.lock().unwrap().insert(key.to_owned(), (now, at));
                    }
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn sign_in(url: &str) -> Result<Api> {
        let http = reqwest::Client::new();
        let login: serde_json::Value = http
            .post(format!("{url}/api/v1/auth/login"))
            .json(&serde_json::json!({"username": "admin", "password": PASSWORD}))
            .send()
            .await?
            .json()
            .await?;
        Ok(Api {
            token: login["access_token"]
                .as_str()
                .with_context(|| format!("signing in: {login}"))?
                .to_owned(),
            http,
            url: url.to_owned(),
        })
    }

    async fn subscribe(&self, hook: &str) -> Result<()> {
        let reply = self
            .http
            .post(format!("{}/api/v1/subscriptions", self.url))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"webhook": hook, "events": "cluster.deployed"}))
            .send()
            .await?;
        ensure!(
            reply.status().is_success(),
            "subscribing: {}",
            reply.text().await?
        );
        Ok(())
    }

    async fn deploy(&self, name: &str) -> Result<()> {
        let reply = self
            .http
            .put(format!("{}/api/v1/clusters/{name}", self.url))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"node_capacity": 1, "time_to_live": 3600}))
            .send()
            .await?;
        ensure!(
            reply.status().is_success(),
            "deploying: {}",
            reply.text().await?
        );
        Ok(())
    }

    /// The drop box's scan histogram: (count, sum in seconds, buckets as
    /// (upper bound, cumulative count)).
    async fn scans(&self) -> Result<(u64, f64, Vec<(f64, u64)>)> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .text()
            .await?;
        let mut count = 0;
        let mut sum = 0.0;
        let mut buckets = Vec::new();
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if name == "flotilla_dropbox_scan_seconds_count" {
                count = value.parse()?;
            } else if name == "flotilla_dropbox_scan_seconds_sum" {
                sum = value.parse()?;
            } else if let Some(le) = name
                .strip_prefix("flotilla_dropbox_scan_seconds_bucket{le=\"")
                .and_then(|l| l.strip_suffix("\"}"))
            {
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse()?
                };
                buckets.push((le, value.parse()?));
            }
        }
        Ok((count, sum, buckets))
    }
}

/// From `written` to the commit of `name`'s deploy, once its webhook
/// arrived.
async fn committed(arrivals: &Arrivals, name: &str, written: SystemTime) -> Result<Duration> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((_, at)) = arrivals.lock().unwrap().get(name) {
            let written: DateTime<Utc> = written.into();
            // The change's time is kept to the millisecond: a commit within
            // the write's millisecond reads as 0.
            return Ok((*at - written).to_std().unwrap_or_default());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{name} was not deployed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Writes `samples` triggers into `folder`, one at a time, each waited for.
async fn triggers(
    arrivals: &Arrivals,
    folder: &Path,
    prefix: &str,
    samples: usize,
) -> Result<Vec<Duration>> {
    let mut took = Vec::with_capacity(samples);
    for i in 0..samples {
        let name = format!("{prefix}-{i}");
        let written = SystemTime::now();
        std::fs::write(
            folder.join(format!("{name}.cf-create")),
            "nodes = 1\nttl = \"1h\"\n",
        )?;
        took.push(committed(arrivals, &name, written).await?);
    }
    Ok(took)
}

fn line(v: &[Duration]) -> String {
    format!(
        "{} / {} / {}",
        fmt_duration(percentile(v, 50.0)),
        fmt_duration(percentile(v, 99.0)),
        fmt_duration(max(v))
    )
}

async fn bench(args: DropboxArgs) -> Result<()> {
    Machine::read().print_header("dropbox: trigger to deploy, a scan, event to webhook");
    let bin = crate::serve::binary(args.bin)?;
    println!(
        "- run: {} triggers per case, {} account folders of {} files, `flotilla serve` on the fake driver ({})",
        args.samples,
        args.accounts,
        args.files,
        bin.display()
    );
    println!();
    let work = tempfile::tempdir()?;
    let arrivals: Arrivals = Arc::default();
    let hook = receiver(arrivals.clone()).await?;
    let env = [("FLOTILLA_ADMIN_PASSWORD", PASSWORD)];

    // A server that watches its folders.
    let boxed = work.path().join("drop");
    let folder = boxed.join("admin");
    std::fs::create_dir_all(&folder)?;
    let dir = work.path().join("watching");
    let conf = config(&dir, &boxed, true, "2s")?;
    let server = crate::serve::start(&bin, &dir, &conf, &env)?;
    let api = Api::sign_in(&server.url).await?;
    api.subscribe(&hook).await?;

    // 1. Watched; the API's deploy as the baseline.
    let watched = triggers(&arrivals, &folder, "w", args.samples).await?;
    let mut api_deploy = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let name = format!("api-{i}");
        let sent = SystemTime::now();
        api.deploy(&name).await?;
        api_deploy.push(committed(&arrivals, &name, sent).await?);
    }

    // 2. With 10,000 other files.
    for a in 0..args.accounts {
        let other = boxed.join(format!("user{a:04}"));
        std::fs::create_dir_all(&other)?;
        for f in 0..args.files {
            std::fs::write(other.join(format!("c{f}.cf-deleted")), "{}\n")?;
        }
    }
    let (count0, sum0, buckets0) = api.scans().await?;
    let crowded = triggers(&arrivals, &folder, "c", args.samples).await?;
    // Let a few scans of the crowd alone run too.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (count1, sum1, buckets1) = api.scans().await?;
    let scans = count1 - count0;
    ensure!(scans > 0, "no scan ran");
    let mean = Duration::from_secs_f64((sum1 - sum0) / scans as f64);
    // The 99th percentile's bucket: the first whose count reaches it.
    let p99_bound = {
        let want = (scans as f64 * 0.99).ceil() as u64;
        buckets1
            .iter()
            .zip(&buckets0)
            .find(|((_, c1), (_, c0))| c1 - c0 >= want)
            .map(|((le, _), _)| *le)
            .unwrap_or(f64::INFINITY)
    };
    drop(server);

    // 3. The scans alone.
    let drop2 = work.path().join("drop2");
    let folder2 = drop2.join("admin");
    std::fs::create_dir_all(&folder2)?;
    let dir2 = work.path().join("scanning");
    let conf2 = config(&dir2, &drop2, false, "500ms")?;
    let server2 = crate::serve::start(&bin, &dir2, &conf2, &env)?;
    let api2 = Api::sign_in(&server2.url).await?;
    api2.subscribe(&hook).await?;
    let scanned = triggers(&arrivals, &folder2, "s", args.samples.min(20)).await?;
    drop(server2);

    // 4. Every deploy's webhook.
    let to_hook: Vec<Duration> = arrivals
        .lock()
        .unwrap()
        .values()
        .map(|(arrived, at)| {
            let at: SystemTime = (*at).into();
            arrived.duration_since(at).unwrap_or_default()
        })
        .collect();

    let mut report = Report::default();
    let p99 = percentile(&watched, 99.0);
    report.row(
        "trigger → deploy",
        format!(
            "{} `.cf-create` one at a time, watched: p50 / p99 / max",
            args.samples
        ),
        line(&watched),
        "p99 ≤ 50 ms",
        Verdict::check(p99 <= TRIGGER_TARGET),
    );
    report.info(
        "baseline",
        format!(
            "{} `PUT /api/v1/clusters/NAME`, the same way: p50 / p99 / max",
            args.samples
        ),
        line(&api_deploy),
    );
    report.row(
        "trigger → deploy",
        format!(
            "the same among {} other files in {} folders: p50 / p99 / max",
            args.accounts * args.files,
            args.accounts
        ),
        line(&crowded),
        "p99 ≤ 50 ms",
        Verdict::check(percentile(&crowded, 99.0) <= TRIGGER_TARGET),
    );
    report.row(
        "scan",
        format!(
            "one pass over {} files in {} folders: mean, and the bound of the p99's bucket ({scans} passes)",
            args.accounts * args.files,
            args.accounts + 1
        ),
        format!("{} / ≤ {} s", fmt_duration(mean), p99_bound),
        "≤ 100 ms",
        Verdict::check(mean <= SCAN_TARGET && p99_bound <= SCAN_TARGET.as_secs_f64()),
    );
    report.info(
        "trigger → deploy",
        format!(
            "{} one at a time, scans alone every 500 ms (no watch): p50 / p99 / max",
            scanned.len()
        ),
        line(&scanned),
    );
    report.info(
        "event → webhook",
        format!(
            "{} `cluster.deployed` changes to their POST's arrival: p50 / p99 / max",
            to_hook.len()
        ),
        line(&to_hook),
    );
    println!("{}", report.markdown());
    ensure!(!report.failed(), "a target was missed");
    Ok(())
}
