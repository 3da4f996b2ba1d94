//! `flotilla-bench`: how the engine performs at scale, in real time, on the
//! fake cloud.
//!
//! One engine is wired the way `flotilla serve` wires it (a SQLite store in
//! a temporary directory, the fake driver behind `Metered(Throttled(..))`,
//! the system clock, tokio's multi-thread runtime, time not paused), with
//! two recorders around it (see [`tap`]). Then, in order:
//!
//! 1. **Converge**: N clusters of M nodes are deployed through
//!    `Engine::deploy`; how long until every one is running, and how many
//!    create calls that took against the minimum.
//! 5. **Peak RSS** of the process, read right after convergence.
//! 2. **Steady state**: several full resync passes over the converged
//!    clusters; how long a pass takes, and proof that it writes nothing to
//!    the cloud or the store.
//! 3. **Request → first create**: K single-node deploys, one at a time,
//!    while the N clusters are live; how long from the deploy call
//!    returning to the engine's first create call for that cluster.
//! 4. **deploy --wait** of one wide cluster: request to settled, and its
//!    create calls.
//!
//! The figures are printed as a Markdown table (for BENCHMARKS.md); the
//! exit status is non-zero if any figure misses its target.
//!
//! `flotilla-bench http` measures the HTTP API instead: see [`http`];
//! `flotilla-bench ec2` the EC2 calls made through the ec2 driver: see
//! [`ec2`]; `flotilla-bench orgs` the accrual pass that charges
//! organisations: see [`orgs`].

mod dropbox;
mod ec2;
mod http;
mod jobs;
mod local_jobs;
mod machine;
mod metrics;
mod orgs;
mod pools;
mod report;
mod rollout;
mod schedule;
mod serve;
mod takeover;
mod tap;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use flotilla_cloud::fake::{FakeCloud, FakeConfig, FakeStats};
use flotilla_cloud::{CloudMetrics, InstanceSet, Metered, SystemClock, Throttled};
use flotilla_control::{Control, Deploy};
use flotilla_domain::{Caller, ClusterName, ClusterState, InstanceType, Limits, PoolName};
use flotilla_engine::{Engine, EngineConfig, EngineTasks, PoolSpec};
use flotilla_store::{MemoryStore, Store};
use flotilla_store_postgres::testing::TempPostgres;
use flotilla_store_postgres::PostgresStore;
use flotilla_store_sqlite::SqliteStore;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use machine::Machine;
use metrics::EngineCounters;
use report::{fmt_duration, fmt_kib, max, percentile, Report, Verdict};
use tap::{CountingStore, StoreCounts, Tap};

/// The server's allocator, so that what is measured is what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The driver (and instance set) name the engine is given.
pub(crate) const DRIVER: &str = "fake";
/// Time-to-live of every deployed cluster: far beyond the run, so no
/// scheduled deletion fires during it.
const TTL_SECONDS: i64 = 24 * 3600;
/// Most nodes one create call may ask for (the fake's `max_batch`).
pub(crate) const MAX_BATCH: u32 = 50;
/// How often the benchmark looks at counters it has to poll. Figures
/// measured by polling are accurate to about this (tokio's timer has a
/// millisecond granularity).
const POLL: Duration = Duration::from_millis(1);
/// The production default resync interval, which the pass time is judged
/// against.
const PRODUCTION_RESYNC: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    /// SQLite in a temporary directory, as `flotilla serve` uses it: every
    /// write is a real, synchronous commit.
    Sqlite,
    /// In memory: no I/O, to tell the engine's own cost from the store's.
    Memory,
    /// PostgreSQL, a server started for the run from the machine's own
    /// binaries in a temporary directory, with its durable defaults
    /// (fsync, synchronous commits), over a Unix socket.
    Postgres,
}

impl StoreKind {
    /// The several-servers issue's target for deploy → first create: a
    /// PostgreSQL commit crosses a socket to another process.
    fn first_create_target(self) -> Duration {
        match self {
            StoreKind::Postgres => Duration::from_millis(10),
            StoreKind::Sqlite | StoreKind::Memory => Duration::from_millis(5),
        }
    }

    /// The target for one accrual pass over 1,000 organisations.
    pub(crate) fn accrual_target(self) -> Duration {
        match self {
            StoreKind::Postgres => Duration::from_millis(40),
            StoreKind::Sqlite | StoreKind::Memory => Duration::from_millis(20),
        }
    }
}

/// The store a run measures. The guard keeps its files (and its
/// PostgreSQL server) until the run ends.
pub(crate) struct Opened {
    pub store: Arc<dyn Store>,
    pub guard: Box<dyn std::any::Any>,
    /// Where a second server would connect (PostgreSQL only).
    pub url: Option<String>,
}

async fn open_store(kind: StoreKind) -> Result<Opened> {
    Ok(match kind {
        StoreKind::Sqlite => {
            let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
            let store = SqliteStore::open(&dir.path().join("flotilla.db")).await?;
            Opened {
                store: Arc::new(store),
                guard: Box::new(dir),
                url: None,
            }
        }
        StoreKind::Memory => Opened {
            store: Arc::new(MemoryStore::new()),
            guard: Box::new(()),
            url: None,
        },
        StoreKind::Postgres => {
            let pg = tokio::task::spawn_blocking(TempPostgres::start_durable)
                .await?
                .context("cannot start PostgreSQL")?;
            let url = pg.create_database().await?;
            let store = PostgresStore::connect(&url).await?;
            Opened {
                store: Arc::new(store),
                guard: Box::new(pg),
                url: Some(url),
            }
        }
    })
}

/// Benchmarks the flotilla engine on the fake cloud, in real time (the
/// default), the HTTP API under load (`http`), or the EC2 calls of the ec2
/// driver (`ec2`).
#[derive(Debug, Parser)]
#[command(
    name = "flotilla-bench",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    engine: Args,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Load-tests the HTTP API on loopback: authenticated cluster status
    /// (one token, then many distinct tokens) and /healthz.
    Http(http::HttpArgs),
    /// Counts the EC2 calls the engine makes through the ec2 driver, against
    /// an EC2 imitation on loopback: RunInstances per wide deploy, and
    /// steady-state resyncs over 1000 instances.
    Ec2(ec2::Ec2Args),
    /// Times the accrual pass that charges organisations for their nodes
    /// and re-evaluates their budgets, over 10,000 nodes in 1,000
    /// organisations.
    Orgs(orgs::OrgsArgs),
    /// Kills the leader of several real servers on one PostgreSQL, again
    /// and again, and times how long until another leads.
    Takeover(takeover::TakeoverArgs),
    /// Times the check every pool passes when it is written: its driver's
    /// schema, the domain's rules, the driver's own checks.
    Pools(pools::PoolsArgs),
    /// A pool's new version rolled out to many clusters: wall time, calls,
    /// and the ready count never below the wanted.
    Rollout(rollout::RolloutArgs),
    /// One scheduling pass over a long queue of jobs and many instance
    /// types.
    Schedule(schedule::ScheduleArgs),
    /// Jobs through the engine on the fake cloud: submission to instance,
    /// and the throughput of zero-length jobs.
    Jobs(jobs::JobsArgs),
    /// Jobs on the local driver through a real `flotilla serve`:
    /// submission to script running, and the throughput of short jobs.
    LocalJobs(local_jobs::LocalJobsArgs),
    /// The drop box and notifications through a real `flotilla serve`:
    /// trigger to deploy (watched, and by scans alone), a scan over
    /// 10,000 files, event to webhook.
    Dropbox(dropbox::DropboxArgs),
}

/// The engine benchmark's knobs.
#[derive(Debug, clap::Args)]
struct Args {
    /// Clusters deployed for convergence (and live during the later phases).
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// Nodes per converged cluster.
    #[arg(long, default_value_t = 10)]
    nodes: u32,
    /// Store backend.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// The engine's full resync interval during the run (production
    /// default: 10s); short so several passes fit in a short run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    resync_interval: Duration,
    /// Full resync passes observed in steady state.
    #[arg(long, default_value_t = 10)]
    passes: usize,
    /// Single-node deploys timed for request → first create.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Pause between those deploys, so they sample the whole resync cycle
    /// (including moments when a pass is running) rather than one instant.
    #[arg(long, default_value = "25ms", value_parser = humantime::parse_duration)]
    request_gap: Duration,
    /// Nodes of the cluster deployed with --wait.
    #[arg(long, default_value_t = 100)]
    wide_nodes: u32,
    /// Reconciles the engine runs at once (production default: 32).
    #[arg(long, default_value_t = EngineConfig::default().concurrency)]
    concurrency: usize,
    /// Deploy requests in flight at once during convergence (like that many
    /// API clients).
    #[arg(long, default_value_t = 64)]
    deploy_concurrency: usize,
    /// How often the engine probes a ready node (production default: 10s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    probe_interval: Duration,
    /// The fake cloud's time from create until a node answers probes.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    boot_delay: Duration,
    /// Longest any phase may take before the run is abandoned.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    phase_limit: Duration,
}

/// One running engine and everything the benchmark watches it through.
struct Bench {
    engine: Engine,
    tasks: EngineTasks,
    /// A second server on the same database (PostgreSQL), which follows:
    /// deploys sent to it reach the leader through the change feed.
    follower: Option<(Engine, EngineTasks)>,
    cloud: FakeCloud,
    tap: Arc<Tap>,
    store: Arc<CountingStore>,
    registry: Arc<Registry>,
    caller: Caller,
    /// Holds the store's files (and server) until the run ends.
    _guard: Box<dyn std::any::Any>,
}

impl Bench {
    async fn start(args: &Args) -> Result<Self> {
        let Opened {
            store: inner,
            guard,
            url,
        } = open_store(args.store).await?;
        let store = Arc::new(CountingStore::new(inner));

        let mut registry = Registry::default();
        let fake = FakeConfig {
            boot_delay: args.boot_delay,
            max_batch: MAX_BATCH,
            ..FakeConfig::default()
        };
        let (cloud, tap, pool, pools) = fake_wiring(&store, fake, &mut registry).await?;
        let config = EngineConfig {
            limits: Limits {
                max_nodes: args.nodes.max(args.wide_nodes),
                ..Limits::default()
            },
            resync_interval: args.resync_interval,
            probe_interval: args.probe_interval,
            concurrency: args.concurrency,
            max_wait: args.phase_limit,
            ..EngineConfig::default()
        };
        let (engine, tasks, registry) = start_engine(
            config.clone(),
            store.clone(),
            DRIVER,
            &tap,
            pools.clone(),
            pool.clone(),
            registry,
        )
        .await?;
        let follower = match url {
            None => None,
            Some(url) => {
                let second = Arc::new(CountingStore::new(Arc::new(
                    PostgresStore::connect(&url).await?,
                )));
                let config = EngineConfig {
                    server: "follower".to_owned(),
                    ..config
                };
                let (engine, tasks, _) = start_engine(
                    config,
                    second,
                    DRIVER,
                    &tap,
                    pools,
                    pool,
                    Registry::default(),
                )
                .await?;
                if engine.leading() {
                    bail!("the second server leads: the first should");
                }
                Some((engine, tasks))
            }
        };
        Ok(Self {
            engine,
            tasks,
            follower,
            cloud,
            tap,
            store,
            registry,
            caller: Caller::local_operator(),
            _guard: guard,
        })
    }

    fn counters(&self) -> EngineCounters {
        EngineCounters::read(&self.registry)
    }

    fn command(&self, cluster: &ClusterName, nodes: u32) -> Result<Deploy> {
        Ok(Deploy {
            cluster: cluster.clone(),
            node_capacity: i64::from(nodes),
            time_to_live: TTL_SECONDS,
            is_public: None,
            pool: None,
            workload: None,
        })
    }

    /// Create calls the fake cloud logged, by cluster.
    fn creates_by_cluster(&self) -> HashMap<String, Vec<Instant>> {
        let mut by = HashMap::<String, Vec<Instant>>::new();
        for record in self.cloud.create_log() {
            by.entry(record.cluster).or_default().push(record.at);
        }
        by
    }
}

/// The fake cloud wired as `flotilla serve` wires a driver
/// (`Metered(Throttled(..))`, its ID from the store), seen through a tap,
/// and the default pool on it at $0.10 per node-hour.
pub(crate) async fn fake_wiring(
    store: &CountingStore,
    fake: FakeConfig,
    registry: &mut Registry,
) -> Result<(FakeCloud, Arc<Tap>, PoolName, BTreeMap<PoolName, PoolSpec>)> {
    let cloud_metrics = Arc::new(CloudMetrics::register(registry));
    let cloud = FakeCloud::new(fake);
    let id = store.instance_set_id(DRIVER).await?;
    let driver: Arc<dyn InstanceSet> = Arc::new(Metered::new(
        Throttled::new(cloud.instance_set(id.as_str()), None),
        DRIVER,
        cloud_metrics,
    ));
    let tap = Arc::new(Tap::new(driver));
    let pool = PoolName::new("default")?;
    let pools = BTreeMap::from([(
        pool.clone(),
        PoolSpec::new(DRIVER.to_owned(), InstanceType::new("fake.small")?)
            .with_price(flotilla_domain::Money::from_micros(100_000)),
    )]);
    Ok((cloud, tap, pool, pools))
}

/// The catalogue of the bench's one fake driver.
pub(crate) fn fake_catalog() -> Arc<flotilla_control::PoolCatalog> {
    Arc::new(flotilla_control::PoolCatalog::plain([(DRIVER, "fake")]))
}

/// Starts the engine the way `flotilla serve` does, on one driver seen
/// through `tap`, and lets the tap read the engine's counters.
pub(crate) async fn start_engine(
    config: EngineConfig,
    store: Arc<CountingStore>,
    driver: &str,
    tap: &Arc<Tap>,
    pools: BTreeMap<PoolName, PoolSpec>,
    pool: PoolName,
    mut registry: Registry,
) -> Result<(Engine, EngineTasks, Arc<Registry>)> {
    let sets = BTreeMap::from([(driver.to_owned(), tap.clone() as Arc<dyn InstanceSet>)]);
    let (engine, tasks) = Engine::start(
        config,
        store,
        sets,
        pools,
        pool,
        Arc::new(SystemClock),
        &mut registry,
    )
    .await?;
    let registry = Arc::new(registry);
    tap.attach(engine.reconcile_count());
    Ok((engine, tasks, registry))
}

/// Polls `check` every [`POLL`] until it yields a value or `limit` passes.
async fn poll_until<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {} waiting for {what}",
                humantime::format_duration(limit)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Phase 1: deploy every cluster and wait until all are running.
struct Converge {
    /// First deploy issued → last cluster running.
    wall: Duration,
    /// First deploy issued → last deploy call returned (the store's share).
    deploys_returned: Duration,
    /// Per cluster: its deploy call returning → it running.
    to_running: Vec<Duration>,
    creates: u64,
    /// The fewest create calls that can make these nodes: one per cluster
    /// per batch of [`MAX_BATCH`].
    min_creates: u64,
    most_creates_for_one_cluster: usize,
    /// Live instances once converged.
    instances: usize,
    /// Instances the cloud made, surplus ones included.
    instances_created: u64,
    /// Destroy calls: each one undoes a surplus node.
    destroys: u64,
    /// Times `wait_settled` answered a settled state other than running
    /// for a cluster that had just been deployed.
    spurious_settles: u64,
}

async fn converge(b: &Bench, args: &Args) -> Result<Converge> {
    let creates_before = b.cloud.stats().creates;
    let permits = Arc::new(Semaphore::new(args.deploy_concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..args.clusters {
        let name = ClusterName::new(format!("bench-{i:05}"))?;
        let command = b.command(&name, args.nodes)?;
        let (engine, caller, permits, limit) = (
            b.engine.clone(),
            b.caller.clone(),
            permits.clone(),
            args.phase_limit,
        );
        tasks.spawn(async move {
            {
                let _permit = permits.acquire().await.expect("never closed");
                Control::new(engine.clone(), fake_catalog())
                    .run(&caller, command)
                    .await?;
            }
            let returned = Instant::now();
            let deadline = returned + limit;
            // A just-deployed cluster should only settle as running; any
            // other settled answer is counted, and waited past.
            let mut spurious = 0;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let view = engine.wait_settled(&name, left).await;
                if view.state == ClusterState::Running {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "{name} did not converge: {}",
                    view.state.as_str()
                );
                spurious += 1;
                tokio::time::sleep(POLL).await;
            }
            Ok::<_, anyhow::Error>((returned, Instant::now(), spurious))
        });
    }
    let (mut last_return, mut last_running) = (start, start);
    let mut to_running = Vec::with_capacity(args.clusters);
    let mut spurious_settles = 0;
    while let Some(joined) = tasks.join_next().await {
        let (returned, running, spurious) = joined??;
        last_return = last_return.max(returned);
        last_running = last_running.max(running);
        to_running.push(running - returned);
        spurious_settles += spurious;
    }
    let stats = b.cloud.stats();
    let creates = stats.creates - creates_before;
    Ok(Converge {
        spurious_settles,
        instances_created: stats.instances_created,
        destroys: stats.destroys,
        wall: last_running - start,
        deploys_returned: last_return - start,
        to_running,
        creates,
        min_creates: args.clusters as u64 * u64::from(args.nodes.div_ceil(MAX_BATCH)),
        most_creates_for_one_cluster: b
            .creates_by_cluster()
            .values()
            .map(Vec::len)
            .max()
            .unwrap_or(0),
        instances: b.cloud.instance_count(),
    })
}

/// Waits until the cloud has seen no write for two resync intervals, so
/// that steady state is measured from a quiet start (late repairs after
/// convergence would otherwise land in it). Returns how long that took,
/// counted from the last write.
async fn quiesce(b: &Bench, args: &Args) -> Result<Duration> {
    let quiet = args.resync_interval * 2;
    let start = Instant::now();
    let mut last = (b.cloud.stats().writes(), start);
    poll_until(args.phase_limit, "the cloud to fall quiet", || {
        let writes = b.cloud.stats().writes();
        if writes != last.0 {
            last = (writes, Instant::now());
        }
        (last.1.elapsed() >= quiet).then_some(())
    })
    .await?;
    Ok(last.1 - start)
}

/// Phase 2: full resync passes over converged clusters.
struct Steady {
    /// Per pass: the listing starting → the engine having completed as
    /// many reconciles as there are clusters (every cluster is woken once
    /// per full pass). Covers listing, the store read, waking and
    /// reconciling.
    passes: Vec<Duration>,
    /// Per pass: the cloud listing alone.
    listings: Vec<Duration>,
    /// Per pass: the read of desired state from the store.
    store_reads: Vec<Duration>,
    /// Per pass: node probes made during it (the engine probes a node
    /// every probe interval, from whichever reconcile finds it due).
    probes: Vec<u64>,
    /// From the first measured listing to the one after the last.
    window: Duration,
    cloud: FakeStats,
    store: StoreCounts,
    reconciles: u64,
    reconcile_errors: u64,
    reconcile_seconds: f64,
}

async fn steady_state(b: &Bench, args: &Args) -> Result<Steady> {
    let limit = args.resync_interval * 3 + Duration::from_secs(30);
    // Start at a listing that begins from now on, so every pass measured is
    // whole.
    let first = b.tap.list_count();
    let lists = || b.tap.lists();
    let start = poll_until(limit, "a resync listing", || lists().get(first).cloned()).await?;
    let (cloud0, store0, counters0) = (b.cloud.stats(), b.store.counts(), b.counters());

    let clusters = args.clusters as u64;
    let mut passes = Vec::new();
    let mut listings = Vec::new();
    let mut probes = Vec::new();
    let mut store_reads = Vec::new();
    for k in 0..args.passes {
        let listing = poll_until(limit, "a resync listing", || {
            lists().get(first + k).cloned()
        })
        .await?;
        let before = listing
            .reconciles_before
            .context("a listing began before the engine's metrics were attached")?;
        let reconciles = b.engine.reconcile_count();
        let end = poll_until(limit, "a resync pass to finish", || {
            (reconciles.get() >= before + clusters).then(Instant::now)
        })
        .await?;
        // Read again: the copy above was taken while the listing ran.
        let finished = lists()[first + k].finished.unwrap_or(end);
        passes.push(end - listing.started);
        listings.push(finished - listing.started);
        probes.push(b.tap.probes() - listing.probes_before);
        store_reads.push(b.store.list_time_near(listing.started).unwrap_or_default());
    }
    let after = poll_until(limit, "the listing after the last pass", || {
        lists().get(first + args.passes).cloned()
    })
    .await?;
    let (cloud1, store1, counters1) = (b.cloud.stats(), b.store.counts(), b.counters());

    Ok(Steady {
        passes,
        listings,
        probes,
        store_reads,
        window: after.started - start.started,
        cloud: FakeStats {
            creates: cloud1.creates - cloud0.creates,
            lists: cloud1.lists - cloud0.lists,
            destroys: cloud1.destroys - cloud0.destroys,
            set_tags: cloud1.set_tags - cloud0.set_tags,
            ..FakeStats::default()
        },
        store: store1.since(&store0),
        reconciles: after.reconciles_before.unwrap_or(counters1.reconciles)
            - start.reconciles_before.unwrap_or(counters0.reconciles),
        reconcile_errors: counters1.reconcile_errors - counters0.reconcile_errors,
        reconcile_seconds: counters1.reconcile_seconds - counters0.reconcile_seconds,
    })
}

/// Phase 3: request → first create, for single-node deploys one at a time.
struct Requests {
    /// Deploy call returning → the first create call for that cluster
    /// reaching the cloud (0 if the create came first).
    from_return: Vec<Duration>,
    /// Deploy call starting → the first create call.
    from_request: Vec<Duration>,
    /// The deploy call itself (store write included).
    deploy_call: Vec<Duration>,
    /// Creates that reached the cloud before the deploy call returned.
    create_before_return: usize,
    /// Create calls beyond the one each single-node cluster needs.
    surplus_creates: usize,
}

/// Deploys through `engine` (the leader, or a server that follows) and
/// times the leader's first create.
async fn request_latency(
    b: &Bench,
    args: &Args,
    engine: &Engine,
    prefix: &str,
) -> Result<Requests> {
    let mut sent = Vec::with_capacity(args.requests);
    for i in 0..args.requests {
        let name = ClusterName::new(format!("{prefix}-{i:04}"))?;
        let command = b.command(&name, 1)?;
        let requested = Instant::now();
        Control::new(engine.clone(), fake_catalog())
            .run(&b.caller, command)
            .await?;
        let returned = Instant::now();
        // One at a time: the next request waits until this one's create.
        b.tap
            .first_create(&name, args.phase_limit)
            .await
            .with_context(|| format!("no create for {name}"))?;
        sent.push((name, requested, returned));
        tokio::time::sleep(args.request_gap).await;
    }
    let creates = b.creates_by_cluster();
    let mut r = Requests {
        from_return: Vec::new(),
        from_request: Vec::new(),
        deploy_call: Vec::new(),
        create_before_return: 0,
        surplus_creates: 0,
    };
    for (name, requested, returned) in sent {
        let calls = creates.get(name.as_str()).map_or(&[][..], Vec::as_slice);
        let first = *calls
            .iter()
            .min()
            .with_context(|| format!("the cloud logged no create for {name}"))?;
        r.surplus_creates += calls.len() - 1;
        if first < returned {
            r.create_before_return += 1;
        }
        r.from_return
            .push(first.saturating_duration_since(returned));
        r.from_request.push(first - requested);
        r.deploy_call.push(returned - requested);
    }
    Ok(r)
}

/// Phase 4: one wide cluster deployed with --wait.
struct Wide {
    took: Duration,
    settled: bool,
    state: ClusterState,
    creates: usize,
}

async fn deploy_wait(b: &Bench, args: &Args) -> Result<Wide> {
    let name = ClusterName::new(format!("wide-{}", args.wide_nodes))?;
    let command = b.command(&name, args.wide_nodes)?;
    let start = Instant::now();
    let control = Control::new(b.engine.clone(), fake_catalog());
    control.run(&b.caller, command).await?;
    let view = control.wait_settled(&name).await;
    let took = start.elapsed();
    Ok(Wide {
        took,
        settled: view.settled == Some(true),
        state: view.state,
        creates: b
            .creates_by_cluster()
            .get(name.as_str())
            .map_or(0, Vec::len),
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.mode {
        Some(Mode::Http(args)) => http::run(args),
        Some(Mode::Ec2(args)) => ec2::run(args),
        Some(Mode::Orgs(args)) => orgs::run(args),
        Some(Mode::Takeover(args)) => takeover::run(args),
        Some(Mode::Pools(args)) => pools::run(args),
        Some(Mode::Rollout(args)) => rollout::run(args),
        Some(Mode::Schedule(args)) => schedule::run(args),
        Some(Mode::Jobs(args)) => jobs::run(args),
        Some(Mode::LocalJobs(args)) => local_jobs::run(args),
        Some(Mode::Dropbox(args)) => dropbox::run(args),
        // What `#[tokio::main]` builds: a worker per CPU.
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?
            .block_on(engine_bench(cli.engine)),
    }
}

async fn engine_bench(args: Args) -> Result<()> {
    let machine = Machine::read();
    machine.print_header("flotilla-bench");
    println!(
        "- run: {} clusters × {} nodes, store {:?}, resync every {}, probe every {}, boot delay {}, engine concurrency {}, {} deploys in flight",
        args.clusters,
        args.nodes,
        args.store,
        humantime::format_duration(args.resync_interval),
        humantime::format_duration(args.probe_interval),
        humantime::format_duration(args.boot_delay),
        args.concurrency,
        args.deploy_concurrency,
    );
    println!();

    let b = Bench::start(&args).await?;
    let mut report = Report::default();
    let nodes_total = args.clusters as u64 * u64::from(args.nodes);

    eprintln!(
        "1. converging {} clusters × {} nodes ...",
        args.clusters, args.nodes
    );
    let c = converge(&b, &args).await?;
    let per_cluster_bound = args.nodes.div_ceil(MAX_BATCH) as usize + 2;
    report.info(
        "1",
        format!(
            "Converge {} clusters × {} nodes: wall time",
            args.clusters, args.nodes
        ),
        fmt_duration(c.wall),
    );
    report.info(
        "1",
        "… of which all deploy calls returned after",
        fmt_duration(c.deploys_returned),
    );
    report.info(
        "1",
        "Deploy returned → cluster running, p50 / p99",
        format!(
            "{} / {}",
            fmt_duration(percentile(&c.to_running, 50.0)),
            fmt_duration(percentile(&c.to_running, 99.0))
        ),
    );
    report.row(
        "1",
        "Create calls",
        format!(
            "{} (minimum {}; most for one cluster {})",
            c.creates, c.min_creates, c.most_creates_for_one_cluster
        ),
        format!(
            "≤ ⌈{}/{MAX_BATCH}⌉ + 2 = {per_cluster_bound} per cluster",
            args.nodes
        ),
        Verdict::check(c.most_creates_for_one_cluster <= per_cluster_bound),
    );

    report.row(
        "1",
        "Live instances once converged",
        c.instances.to_string(),
        nodes_total.to_string(),
        Verdict::check(c.instances as u64 == nodes_total),
    );
    report.row(
        "1",
        "Surplus nodes created (then destroyed); destroy calls",
        format!(
            "{}; {}",
            c.instances_created.saturating_sub(nodes_total),
            c.destroys
        ),
        "0; 0",
        Verdict::check(c.instances_created == nodes_total && c.destroys == 0),
    );
    report.row(
        "1",
        "`wait` answers other than running for a just-deployed cluster",
        c.spurious_settles.to_string(),
        "0",
        Verdict::check(c.spurious_settles == 0),
    );

    let rss_converged = machine::peak_rss_kib();

    let late = quiesce(&b, &args).await?;
    report.info(
        "1",
        "Last cloud write after convergence was declared",
        fmt_duration(late),
    );

    report.info(
        "5",
        format!("Peak RSS after converging {nodes_total} nodes (VmHWM)"),
        fmt_kib(rss_converged),
    );

    eprintln!("2. observing {} resync passes ...", args.passes);
    let s = steady_state(&b, &args).await?;
    let (median, worst) = (percentile(&s.passes, 50.0), max(&s.passes));
    // The target for the median; the slowest pass must still end
    // long before the next is due.
    let (typical_bound, worst_bound) = (Duration::from_millis(50), PRODUCTION_RESYNC / 2);
    report.row(
        "2",
        format!(
            "Resync pass over {} clusters, median / max ({} passes)",
            args.clusters,
            s.passes.len()
        ),
        format!("{} / {}", fmt_duration(median), fmt_duration(worst)),
        format!(
            "median ≤ {}; max < {} (half the {} interval)",
            fmt_duration(typical_bound),
            fmt_duration(worst_bound),
            humantime::format_duration(PRODUCTION_RESYNC)
        ),
        Verdict::check(median <= typical_bound && worst < worst_bound),
    );
    report.info(
        "2",
        "… of which the cloud listing, median / max",
        format!(
            "{} / {}",
            fmt_duration(percentile(&s.listings, 50.0)),
            fmt_duration(max(&s.listings))
        ),
    );
    report.info(
        "2",
        "… of which the store read of desired state, median / max",
        format!(
            "{} / {}",
            fmt_duration(percentile(&s.store_reads, 50.0)),
            fmt_duration(max(&s.store_reads))
        ),
    );
    let quiet: Vec<Duration> = (0..s.passes.len())
        .filter(|k| s.probes[*k] == 0)
        .map(|k| s.passes[k])
        .collect();
    report.info(
        "2",
        format!(
            "… passes that probed no node ({}), median / max",
            quiet.len()
        ),
        format!(
            "{} / {}",
            fmt_duration(percentile(&quiet, 50.0)),
            fmt_duration(max(&quiet))
        ),
    );
    let slowest = (0..s.passes.len())
        .max_by_key(|k| s.passes[*k])
        .unwrap_or(0);
    report.info(
        "2",
        "… node probes made during the slowest pass",
        s.probes.get(slowest).copied().unwrap_or(0).to_string(),
    );
    let mean_reconcile = if s.reconciles > 0 {
        Duration::from_secs_f64(s.reconcile_seconds / s.reconciles as f64)
    } else {
        Duration::ZERO
    };
    report.info(
        "2",
        "Reconciles per pass; mean reconcile time",
        format!(
            "{:.0} (of {} clusters); {}",
            s.reconciles as f64 / args.passes.max(1) as f64,
            args.clusters,
            fmt_duration(mean_reconcile)
        ),
    );
    report.row(
        "2",
        format!(
            "Cloud writes over {} passes ({} window)",
            args.passes,
            fmt_duration(s.window)
        ),
        format!(
            "{} creates, {} destroys, {} set_tags ({} lists)",
            s.cloud.creates, s.cloud.destroys, s.cloud.set_tags, s.cloud.lists
        ),
        "0",
        Verdict::check(s.cloud.writes() == 0),
    );
    report.row(
        "2",
        format!("Store writes over {} passes", args.passes),
        format!(
            "{} ({} deploys, {} destroys, {} forgets, {} expired, {} obstacles; {} expire_due calls, {} reads)",
            s.store.writes(),
            s.store.deploys,
            s.store.destroys,
            s.store.forgets,
            s.store.expired_rows,
            s.store.obstacle_writes,
            s.store.expire_calls,
            s.store.list_clusters
        ),
        "0",
        Verdict::check(s.store.writes() == 0),
    );
    report.row(
        "2",
        "Failed reconciles in steady state",
        s.reconcile_errors.to_string(),
        "0",
        Verdict::check(s.reconcile_errors == 0),
    );

    eprintln!("3. timing {} single-node deploys ...", args.requests);
    let r = request_latency(&b, &args, &b.engine, "request").await?;
    let p99 = percentile(&r.from_return, 99.0);
    report.row(
        "3",
        format!(
            "Deploy returned → first create, p50 / p99 / max ({} deploys)",
            r.from_return.len()
        ),
        format!(
            "{} / {} / {}",
            fmt_duration(percentile(&r.from_return, 50.0)),
            fmt_duration(p99),
            fmt_duration(max(&r.from_return))
        ),
        "no polling delay",
        Verdict::check(p99 < Duration::from_secs(1)),
    );
    let request_p99 = percentile(&r.from_request, 99.0);
    report.row(
        "3",
        "Deploy requested → first create (includes the durable commit), p50 / p99",
        format!(
            "{} / {}",
            fmt_duration(percentile(&r.from_request, 50.0)),
            fmt_duration(request_p99)
        ),
        format!("p99 ≤ {}", fmt_duration(args.store.first_create_target())),
        Verdict::check(request_p99 <= args.store.first_create_target()),
    );
    report.info(
        "3",
        "The deploy call itself, p50 / p99",
        format!(
            "{} / {}",
            fmt_duration(percentile(&r.deploy_call, 50.0)),
            fmt_duration(percentile(&r.deploy_call, 99.0))
        ),
    );
    report.info(
        "3",
        "Creates that reached the cloud before the deploy call returned",
        r.create_before_return.to_string(),
    );
    report.row(
        "3",
        "Surplus create calls for these single-node clusters",
        r.surplus_creates.to_string(),
        "0",
        Verdict::check(r.surplus_creates == 0),
    );

    if let Some((follower, _)) = &b.follower {
        eprintln!(
            "3f. timing {} single-node deploys sent to a second server that follows ...",
            args.requests
        );
        let f = request_latency(&b, &args, follower, "follower").await?;
        let p99 = percentile(&f.from_request, 99.0);
        report.row(
            "3f",
            "Deploy at a following server requested → first create by the leader, p50 / p99 / max",
            format!(
                "{} / {} / {}",
                fmt_duration(percentile(&f.from_request, 50.0)),
                fmt_duration(p99),
                fmt_duration(max(&f.from_request))
            ),
            format!("p99 ≤ {}", fmt_duration(args.store.first_create_target())),
            Verdict::check(p99 <= args.store.first_create_target()),
        );
        report.row(
            "3f",
            "Surplus create calls for those clusters",
            f.surplus_creates.to_string(),
            "0",
            Verdict::check(f.surplus_creates == 0),
        );
    }

    eprintln!("4. deploying {} nodes with --wait ...", args.wide_nodes);
    let w = deploy_wait(&b, &args).await?;
    report.row(
        "4",
        format!(
            "deploy --wait of one {}-node cluster: request → settled",
            args.wide_nodes
        ),
        format!("{} ({})", fmt_duration(w.took), w.state.as_str()),
        "settled and running, ≤ 250 ms",
        Verdict::check(
            w.settled && w.state == ClusterState::Running && w.took <= Duration::from_millis(250),
        ),
    );
    let wide_bound = (args.wide_nodes / MAX_BATCH) as usize + 2;
    report.row(
        "4",
        "… its create calls",
        w.creates.to_string(),
        format!("≤ {}/{MAX_BATCH} + 2 = {wide_bound}", args.wide_nodes),
        Verdict::check(w.creates <= wide_bound),
    );

    let peak_kib = machine::peak_rss_kib();
    report.row(
        "5",
        "Peak RSS at the end of the run (VmHWM); RSS now",
        format!("{}; {}", fmt_kib(peak_kib), fmt_kib(machine::rss_kib())),
        "≤ 150 MB",
        Verdict::check(peak_kib.is_some_and(|k| k * 1024 <= 150_000_000)),
    );

    if let Some((_, tasks)) = b.follower {
        tasks.shutdown().await;
    }
    b.tasks.shutdown().await;
    println!("{}", report.markdown());
    println!("Resync passes (pass; listing; store read; probes during the pass):");
    println!();
    for (k, took) in s.passes.iter().enumerate() {
        println!(
            "- {}; {}; {}; {}",
            fmt_duration(*took),
            fmt_duration(s.listings[k]),
            fmt_duration(s.store_reads[k]),
            s.probes[k]
        );
    }
    println!();
    if report.failed() {
        bail!("a figure missed its target");
    }
    Ok(())
}
