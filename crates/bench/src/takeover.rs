//! `flotilla-bench takeover`: how long the loops stop when the leader dies.
//!
//! Starts PostgreSQL (from the machine's own binaries, in a temporary
//! directory) and `--servers` real `flotilla serve` processes on it, the
//! local driver's instances in one shared directory. Then `--kills` times:
//! finds the leader (the one server whose `/metrics` says
//! `flotilla_leading 1`), SIGKILLs it, and measures until another says it
//! leads; restarts the killed one on its data directory, so there are
//! always `--servers`. The lease's time to live (3 s) bounds the takeover;
//! the target is 5 s for every kill.
//!
//! The exit status is 1 if a takeover missed the target.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_store_postgres::testing::TempPostgres;
use tokio::time::Instant;

use crate::machine::Machine;
use crate::report::{fmt_duration, max, percentile, Report, Verdict};
use crate::serve::Server;

#[derive(Debug, clap::Args)]
pub struct TakeoverArgs {
    /// The flotilla binary (default: beside this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Servers on the database.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Leaders killed.
    #[arg(long, default_value_t = 20)]
    kills: usize,
}

const TARGET: Duration = Duration::from_secs(5);
const CONFIG: &str = r#"
[limits]
resync_interval = "1s"

[drivers.local]
type = "local"
dir = "INSTANCES"

[pools.default]
driver = "local"
instance_type = "local.small"
"#;

fn start(bin: &Path, dir: &Path, config: &Path, url: &str) -> Result<Server> {
    crate::serve::start(
        bin,
        dir,
        config,
        &[
            ("FLOTILLA_DATABASE_URL", url),
            ("FLOTILLA_ADMIN_PASSWORD", "takeover-bench-password"),
        ],
    )
}

async fn leading(http: &reqwest::Client, server: &Server) -> bool {
    let Ok(reply) = http
        .get(format!("{}/metrics", server.url))
        .timeout(Duration::from_millis(500))
        .send()
        .await
    else {
        return false;
    };
    reply
        .text()
        .await
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "flotilla_leading 1"))
}

pub fn run(args: TakeoverArgs) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(takeover(args))
}

async fn takeover(args: TakeoverArgs) -> Result<()> {
    let machine = Machine::read();
    machine.print_header("flotilla-bench takeover");
    let bin = crate::serve::binary(args.bin)?;
    println!(
        "- run: {} servers on one PostgreSQL, {} leaders killed (SIGKILL), binary {}",
        args.servers,
        args.kills,
        bin.display()
    );
    println!();
    let pg = tokio::task::spawn_blocking(TempPostgres::start_durable)
        .await?
        .context("cannot start PostgreSQL")?;
    let url = pg.create_database().await?;
    let work = tempfile::tempdir()?;
    let config = work.path().join("flotilla.toml");
    std::fs::write(
        &config,
        CONFIG.replace(
            "INSTANCES",
            &work.path().join("instances").display().to_string(),
        ),
    )?;
    let mut servers = Vec::new();
    for i in 0..args.servers {
        servers.push(start(
            &bin,
            &work.path().join(format!("s{i}")),
            &config,
            &url,
        )?);
    }
    let http = reqwest::Client::new();
    let mut took = Vec::new();
    for kill in 0..args.kills {
        // The leader, once there is exactly one.
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            let mut leaders = Vec::new();
            for (i, s) in servers.iter().enumerate() {
                if leading(&http, s).await {
                    leaders.push(i);
                }
            }
            if let [one] = leaders[..] {
                break one;
            }
            if Instant::now() > deadline {
                bail!("kill {kill}: {} servers say they lead", leaders.len());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let dead = servers.remove(leader);
        let dir = dead.dir.clone();
        drop(dead); // SIGKILL, then reaped
        let killed = Instant::now();
        loop {
            let mut led = false;
            for s in &servers {
                led |= leading(&http, s).await;
            }
            if led {
                break;
            }
            if killed.elapsed() > Duration::from_secs(30) {
                bail!("kill {kill}: nobody took over within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        took.push(killed.elapsed());
        eprintln!(
            "kill {}: taken over in {}",
            kill + 1,
            fmt_duration(killed.elapsed())
        );
        servers.push(start(&bin, &dir, &config, &url)?);
    }
    let mut report = Report::default();
    report.row(
        "1",
        format!(
            "Leader SIGKILLed → another leads, median / max ({} kills)",
            took.len()
        ),
        format!(
            "{} / {}",
            fmt_duration(percentile(&took, 50.0)),
            fmt_duration(max(&took))
        ),
        format!("max ≤ {}", fmt_duration(TARGET)),
        Verdict::check(max(&took) <= TARGET),
    );
    println!("{}", report.markdown());
    drop(servers);
    if report.failed() {
        bail!("a figure missed its target");
    }
    Ok(())
}
