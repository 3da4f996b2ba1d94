//! `flotilla-bench orgs`: the accrual pass at scale.
//!
//! The engine is wired the way `flotilla serve` wires it (SQLite, or with
//! `--store postgres` a PostgreSQL server started for the run, in a
//! temporary directory, the fake driver behind `Metered(Throttled(..))`,
//! the system clock), with its own accrual timer set far out so only the
//! passes the benchmark runs happen. Then:
//!
//! 1. **Set up**: `--orgs` organisations, each with an owner, a credit and
//!    one capacity request of `--nodes` nodes, through the engine's own
//!    commands; every cluster converges on the fake cloud.
//! 2. **Passes**: `--passes` accrual passes (`Engine::accrue_now`), a
//!    little apart so each has time to charge: gathering every
//!    organisation's nodes from the engine's inventory, charging them,
//!    crediting allowances and re-evaluating every budget, all in one
//!    store transaction. How long a pass takes, against the target.
//! 3. **Books**: every organisation's ledger adds up to its balance, and
//!    its costs to what it was charged.
//!
//! The exit status is 1 if a target is missed or the books do not balance.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use flotilla_cloud::fake::FakeConfig;
use flotilla_control::{Control, CreateOrg, CreditOrg, RequestCapacity};
use flotilla_domain::{AccountKind, Caller, ClusterName, Level, Limits, Money, Username};
use flotilla_engine::EngineConfig;
use flotilla_store::{AccountRecord, AccountStore, OrgStore};
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::machine::{self, Machine};
use crate::report::{fmt_duration, fmt_kib, max, percentile, Report, Verdict};
use crate::tap::CountingStore;
use crate::{fake_wiring, poll_until, start_engine, DRIVER, MAX_BATCH};

#[derive(Debug, clap::Args)]
pub struct OrgsArgs {
    /// Organisations.
    #[arg(long, default_value_t = 1000)]
    orgs: usize,
    /// Nodes per organisation's cluster.
    #[arg(long, default_value_t = 10)]
    nodes: u32,
    /// Accrual passes timed (enough that the p99 is not just the slowest).
    #[arg(long, default_value_t = 100)]
    passes: usize,
    /// Pause between passes (the server's default interval is 5 s; shorter
    /// here so the run is short, and each pass still has time to charge).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    gap: Duration,
    /// Store backend.
    #[arg(long, value_enum, default_value_t = crate::StoreKind::Sqlite)]
    store: crate::StoreKind,
    /// Commands in flight at once while setting up.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Longest the set-up may take before the run is abandoned.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    phase_limit: Duration,
}

pub fn run(args: OrgsArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(bench(args))
}

fn org_name(i: usize) -> ClusterName {
    ClusterName::new(format!("org-{i:05}")).expect("valid name")
}

fn owner(i: usize) -> Username {
    Username::new(format!("owner-{i:05}")).expect("valid name")
}

async fn bench(args: OrgsArgs) -> Result<()> {
    ensure!(args.orgs >= 1 && args.nodes >= 1, "nothing to charge");
    let machine = Machine::read();
    let total = args.orgs * args.nodes as usize;
    machine.print_header("flotilla-bench orgs");
    println!(
        "- run: {} organisations × {} nodes = {total} nodes on the fake driver, {} accrual passes {} apart, store {:?}",
        args.orgs,
        args.nodes,
        args.passes,
        humantime::format_duration(args.gap),
        args.store,
    );
    println!();

    // The organisations issue's target for one pass (SQLite), and the
    // several-servers issue's for PostgreSQL.
    let target = args.store.accrual_target();
    let crate::Opened {
        store: inner,
        guard: _guard,
        ..
    } = crate::open_store(args.store).await?;
    let store = Arc::new(CountingStore::new(inner));
    let mut registry = Registry::default();
    let fake = FakeConfig {
        max_batch: MAX_BATCH,
        ..FakeConfig::default()
    };
    let (cloud, tap, pool, pools) = fake_wiring(&store, fake, &mut registry).await?;
    let mut config = EngineConfig {
        limits: Limits {
            max_nodes: args.nodes,
            ..Limits::default()
        },
        // Only the benchmark's passes run.
        accrual_interval: Duration::from_secs(24 * 3600),
        ..EngineConfig::default()
    };
    config.orgs.node_limit = args.nodes;
    let (engine, tasks, _registry) =
        start_engine(config, store.clone(), DRIVER, &tap, pools, pool, registry).await?;

    // 1. Set up.
    eprintln!("1. creating {} organisations ...", args.orgs);
    let setup = Instant::now();
    for i in 0..args.orgs {
        store
            .create_account(&AccountRecord {
                username: owner(i),
                kind: AccountKind::Github,
                level: Level::GithubMember,
                password_hash: None,
                grants: BTreeSet::new(),
                created_at: chrono::Utc::now(),
            })
            .await?;
    }
    let admin = Caller::local_operator();
    let mut jobs = JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    for i in 0..args.orgs {
        let control = Control::new(engine.clone(), crate::fake_catalog());
        let admin = admin.clone();
        let permits = permits.clone();
        let nodes = args.nodes;
        jobs.spawn(async move {
            let _permit = permits.acquire().await?;
            let name = org_name(i);
            let create = CreateOrg {
                name: name.clone(),
                owners: vec![owner(i).to_string()],
                pool: None,
            };
            control.run(&admin, create).await?;
            let credit = CreditOrg {
                org: name.clone(),
                amount: Money::from_dollars(1000).expect("small"),
                reason: "benchmark".into(),
            };
            control.run(&admin, credit).await?;
            let ann = Caller::signed_in(owner(i), Level::GithubMember);
            let request = RequestCapacity {
                cluster: name,
                nodes: i64::from(nodes),
                time_to_live: 24 * 3600,
            };
            control.run(&ann, request).await?;
            anyhow::Ok(())
        });
    }
    while let Some(done) = jobs.join_next().await {
        done??;
    }
    eprintln!("   waiting for {total} nodes ...");
    poll_until(args.phase_limit, "every organisation's nodes", || {
        (cloud.instance_count() == total).then_some(())
    })
    .await?;
    let setup = setup.elapsed();

    // 2. Passes.
    eprintln!("2. {} accrual passes ...", args.passes);
    // The first pass charges from each node's launch; it is timed apart.
    let first = engine.accrue_now().await?;
    ensure!(
        first.nodes == total,
        "the pass saw {} nodes, not {total}",
        first.nodes
    );
    let writes_before = store.counts().org_writes;
    let mut samples = Vec::with_capacity(args.passes);
    let mut in_store = Vec::with_capacity(args.passes);
    for _ in 0..args.passes {
        tokio::time::sleep(args.gap).await;
        let stats = engine.accrue_now().await?;
        ensure!(stats.orgs == args.orgs && stats.nodes == total);
        samples.push(stats.elapsed);
        in_store.push(stats.store);
    }
    let writes = store.counts().org_writes - writes_before;

    // 3. Books.
    eprintln!("3. checking the books ...");
    let mut unbalanced = 0;
    let mut charged = Money::ZERO;
    for i in 0..args.orgs {
        let name = org_name(i);
        let org = store.get_org(&name).await?.context("organisation gone")?;
        let ledger: Money = store.ledger(&name).await?.iter().map(|e| e.amount).sum();
        let costs: Money = store.costs(&name).await?.iter().map(|c| c.amount).sum();
        let spent = Money::from_dollars(1000).expect("small") - org.budget.balance;
        if ledger != org.budget.balance || costs != spent {
            unbalanced += 1;
        }
        charged += costs;
    }
    tasks.shutdown().await;

    let mut report = Report::default();
    report.info(
        "set-up",
        "organisations created, credited, requested, converged",
        fmt_duration(setup),
    );
    report.info(
        "passes",
        "first pass (charges from each launch)",
        fmt_duration(first.elapsed),
    );
    let median = percentile(&samples, 50.0);
    let p99 = percentile(&samples, 99.0);
    report.row(
        "passes",
        format!(
            "accrual pass over {total} nodes in {} organisations, median",
            args.orgs
        ),
        fmt_duration(median),
        format!("≤ {}", fmt_duration(target)),
        Verdict::check(median <= target),
    );
    report.row(
        "passes",
        "accrual pass, p99",
        fmt_duration(p99),
        format!("≤ {}", fmt_duration(target)),
        Verdict::check(p99 <= target),
    );
    report.info("passes", "accrual pass, max", fmt_duration(max(&samples)));
    report.info(
        "passes",
        "of which the store's transaction, median (commit included)",
        fmt_duration(percentile(&in_store, 50.0)),
    );
    report.row(
        "passes",
        "store write transactions per pass",
        format!("{:.1}", writes as f64 / args.passes as f64),
        "1",
        Verdict::check(writes as usize == args.passes),
    );
    report.row(
        "books",
        "organisations whose ledger or costs disagree with the balance",
        unbalanced.to_string(),
        "0",
        Verdict::check(unbalanced == 0),
    );
    report.info("books", "charged in all", format!("${charged}"));
    report.info("memory", "peak RSS", fmt_kib(machine::peak_rss_kib()));
    println!("{}", report.markdown());
    drop(_guard);
    ensure!(!report.failed(), "a target was missed");
    Ok(())
}
