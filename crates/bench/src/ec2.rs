//! `flotilla-bench ec2`: the EC2 calls the engine makes through the ec2
//! driver, counted by the EC2 endpoint that answers them.
//!
//! The engine is wired the way `flotilla serve` wires an ec2 pool: the
//! SQLite store in a temporary directory, `Ec2InstanceSet` (the real
//! driver, over the AWS SDK) behind `Metered(Throttled(..))` with no budget,
//! the system clock. The endpoint is an EC2 imitation on loopback, in this
//! process: moto launches only MinCount instances per RunInstances call, so
//! it cannot show batching; this one keeps state and answers as EC2 does
//! what the driver asks (RunInstances launching MaxCount instances, tagged
//! from the TagSpecifications; DescribeInstances with its filters and
//! MaxResults/NextToken pages; TerminateInstances; CreateTags), with the
//! request parsing and XML of the driver's scripted test endpoint
//! (`crates/driver-ec2/tests/support/fake_ec2.rs`). Instances run at once.
//! Every request is counted by action there, so the counts do not depend on
//! the driver's own bookkeeping.
//!
//! 1. **Wide deploy**: one `--nodes`-node cluster deployed with wait: its
//!    RunInstances calls (target ≤ 4 for 100 nodes with `max_batch` 50) and
//!    how long until running.
//! 2. **Fill**: `--clusters` − 1 more such clusters, so the endpoint holds
//!    `--clusters` × `--nodes` instances (1000 by default).
//! 3. **Steady state**: `--passes` full resyncs over them: every EC2 call
//!    made is a DescribeInstances page of a listing (exactly passes × pages,
//!    no RunInstances, TerminateInstances or CreateTags, nothing else), the
//!    store is not written, and how long a listing and a pass take.
//! 4. **Destroy**: every cluster destroyed; the calls and the time, for
//!    reference.
//!
//! The exit status is 1 if a target is missed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use flotilla_cloud::{CloudMetrics, InstanceSet, Metered, Throttled};
use flotilla_control::{Control, Deploy, Destroy};
use flotilla_domain::{Caller, ClusterName, ClusterState, InstanceType, Limits, PoolName};
use flotilla_driver_ec2::{Credentials, Ec2Config, Ec2InstanceSet, SharedCredentialsProvider};
use flotilla_engine::{Engine, EngineConfig, EngineTasks, PoolSpec};
use flotilla_store::Store;
use flotilla_store_sqlite::SqliteStore;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::machine::{self, Machine};
use crate::metrics::EngineCounters;
use crate::report::{fmt_duration, fmt_kib, max, percentile, Report, Verdict};
use crate::tap::{CountingStore, Tap};
use crate::{poll_until, TTL_SECONDS};

#[allow(dead_code)]
#[path = "../../driver-ec2/tests/support/fake_ec2.rs"]
mod fake_ec2;

use fake_ec2::{create_tags, error, terminate_instances, FakeEc2, FakeInstance, Request, NS};

/// The driver name (and instance set) the engine is given.
const DRIVER: &str = "aws";
const REGION: &str = "us-east-1";
const IMAGE: &str = "ami-12c6146b";
const INSTANCE_TYPE: &str = "t3.micro";
/// The target of the EC2 issue, for 100 nodes of one type.
const MAX_RUN_INSTANCES_PER_100: u64 = 4;

#[derive(Debug, clap::Args)]
pub struct Ec2Args {
    /// Clusters in steady state (the first is the wide deploy).
    #[arg(long, default_value_t = 10)]
    clusters: usize,
    /// Nodes per cluster.
    #[arg(long, default_value_t = 100)]
    nodes: u32,
    /// The driver's `max_batch`: most instances per RunInstances call
    /// (production default 50).
    #[arg(long, default_value_t = 50)]
    max_batch: u32,
    /// The driver's `list_page_size`: instances per DescribeInstances page
    /// (production default 1000; smaller here so listings are paginated).
    #[arg(long, default_value_t = 100)]
    page_size: u32,
    /// The engine's full resync interval (production default: 10s).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    resync_interval: Duration,
    /// Full resync passes observed in steady state.
    #[arg(long, default_value_t = 10)]
    passes: usize,
    /// Longest any phase may take before the run is abandoned.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    phase_limit: Duration,
}

/// One instance the endpoint holds.
struct Held {
    instance: FakeInstance,
    reservation: String,
}

/// What the endpoint holds and has been asked.
#[derive(Default)]
struct State {
    instances: Vec<Held>,
    by_id: BTreeMap<String, usize>,
    launched: u64,
    calls: BTreeMap<String, u64>,
}

/// Requests by action since the start.
type Calls = BTreeMap<String, u64>;

fn delta(after: &Calls, before: &Calls) -> Calls {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn count(calls: &Calls, action: &str) -> u64 {
    calls.get(action).copied().unwrap_or(0)
}

fn fmt_calls(calls: &Calls) -> String {
    if calls.is_empty() {
        return "none".to_owned();
    }
    calls
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A stateful EC2 imitation: see the module documentation.
struct Endpoint {
    server: FakeEc2,
    state: Arc<Mutex<State>>,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let server = FakeEc2::start(move |r| {
            let mut s = shared.lock().unwrap();
            *s.calls.entry(r.action.clone()).or_insert(0) += 1;
            match r.action.as_str() {
                "RunInstances" => s.run_instances(r),
                "DescribeInstances" => s.describe_instances(r),
                "TerminateInstances" => {
                    for id in r.list("InstanceId") {
                        if let Some(&i) = s.by_id.get(id) {
                            s.instances[i].instance.state = "terminated";
                        }
                    }
                    terminate_instances(r)
                }
                "CreateTags" => {
                    let tags: Vec<(String, String)> = (1..)
                        .map_while(|n| {
                            let key = r.param(&format!("Tag.{n}.Key"))?;
                            let value = r.param(&format!("Tag.{n}.Value")).unwrap_or("");
                            Some((key.to_owned(), value.to_owned()))
                        })
                        .collect();
                    for id in r.list("ResourceId") {
                        if let Some(&i) = s.by_id.get(id) {
                            s.instances[i].instance.tags.extend(tags.iter().cloned());
                        }
                    }
                    create_tags()
                }
                other => error(
                    400,
                    "InvalidAction",
                    &format!("the benchmark's endpoint does not answer {other}"),
                ),
            }
        })
        .await;
        Endpoint { server, state }
    }

    fn calls(&self) -> Calls {
        self.state.lock().unwrap().calls.clone()
    }

    /// Instances not terminated.
    fn live(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .instances
            .iter()
            .filter(|h| h.instance.state != "terminated")
            .count()
    }

    fn launched(&self) -> u64 {
        self.state.lock().unwrap().launched
    }
}

impl State {
    /// Launches MaxCount instances, as EC2 does when it has the capacity.
    fn run_instances(&mut self, r: &Request) -> fake_ec2::Reply {
        let count: usize = r
            .param("MaxCount")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        let tags = r.tag_spec("instance");
        let ty = r.param("InstanceType").unwrap_or(INSTANCE_TYPE).to_owned();
        let reservation = format!("r-{:017x}", self.calls["RunInstances"]);
        let now = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        let mut items = String::new();
        for _ in 0..count {
            self.launched += 1;
            let n = self.launched;
            let mut instance = FakeInstance::new(&format!("i-{n:017x}"), "pending", &[]);
            instance.instance_type = ty.clone();
            instance.private_ip = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
            instance.tags = tags.clone();
            instance.launch_time = now.clone();
            items.push_str(&instance.xml());
            // Running at once, as moto has it.
            instance.state = "running";
            self.by_id.insert(instance.id.clone(), self.instances.len());
            self.instances.push(Held {
                instance,
                reservation: reservation.clone(),
            });
        }
        fake_ec2::Reply {
            status: 200,
            body: format!(
                "<RunInstancesResponse xmlns=\"{NS}\"><requestId>r</requestId>\
                 <reservationId>{reservation}</reservationId><ownerId>123456789012</ownerId>\
                 <groupSet/><instancesSet>{items}</instancesSet></RunInstancesResponse>"
            ),
        }
    }

    /// One page of the instances matching the filters, oldest first, with
    /// a NextToken while more remain.
    fn describe_instances(&self, r: &Request) -> fake_ec2::Reply {
        let mut filters: Vec<(&str, Vec<&str>)> = Vec::new();
        for n in 1.. {
            let Some(name) = r.param(&format!("Filter.{n}.Name")) else {
                break;
            };
            filters.push((name, r.list(&format!("Filter.{n}.Value"))));
        }
        let matches = |h: &Held| {
            let i = &h.instance;
            filters.iter().all(|(name, values)| match *name {
                "instance-state-name" => values.contains(&i.state),
                "instance-id" => values.contains(&i.id.as_str()),
                "tag-key" => values.iter().any(|k| i.tags.contains_key(*k)),
                name => match name.strip_prefix("tag:") {
                    Some(key) => i
                        .tags
                        .get(key)
                        .is_some_and(|v| values.contains(&v.as_str())),
                    None => false,
                },
            })
        };
        let page: usize = r
            .param("MaxResults")
            .and_then(|m| m.parse().ok())
            .unwrap_or(1000);
        let skip: usize = r
            .param("NextToken")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let found: Vec<&Held> = self.instances.iter().filter(|h| matches(h)).collect();
        let end = (skip + page).min(found.len());
        let mut reservations = String::new();
        let mut open: Option<&str> = None;
        for h in found.get(skip..end).unwrap_or_default() {
            if open != Some(h.reservation.as_str()) {
                if open.is_some() {
                    reservations.push_str("</instancesSet></item>");
                }
                reservations.push_str(&format!(
                    "<item><reservationId>{}</reservationId><ownerId>123456789012</ownerId>\
                     <groupSet/><instancesSet>",
                    h.reservation
                ));
                open = Some(h.reservation.as_str());
            }
            reservations.push_str(&h.instance.xml());
        }
        if open.is_some() {
            reservations.push_str("</instancesSet></item>");
        }
        let next = if end < found.len() {
            format!("<nextToken>{end}</nextToken>")
        } else {
            String::new()
        };
        fake_ec2::Reply {
            status: 200,
            body: format!(
                "<DescribeInstancesResponse xmlns=\"{NS}\"><requestId>r</requestId>\
                 <reservationSet>{reservations}</reservationSet>{next}</DescribeInstancesResponse>"
            ),
        }
    }
}

struct Bench {
    endpoint: Endpoint,
    engine: Engine,
    tasks: EngineTasks,
    tap: Arc<Tap>,
    store: Arc<CountingStore>,
    registry: Arc<Registry>,
    caller: Caller,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn start(args: &Ec2Args) -> Result<Bench> {
        let endpoint = Endpoint::start().await;
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let inner: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("flotilla.db")).await?);
        let store = Arc::new(CountingStore::new(inner));
        let mut registry = Registry::default();
        let cloud_metrics = Arc::new(CloudMetrics::register(&mut registry));
        let id = store.instance_set_id(DRIVER).await?;
        let config = Ec2Config {
            endpoint_url: Some(endpoint.server.endpoint.clone()),
            image: Some(IMAGE.to_owned()),
            max_batch: args.max_batch,
            list_page_size: args.page_size,
            ..Ec2Config::new(REGION)
        };
        let credentials =
            SharedCredentialsProvider::new(Credentials::new("bench", "bench", None, None, "bench"));
        let set = Ec2InstanceSet::open_with(config, id, Some(credentials))
            .await
            .context("cannot open the ec2 driver")?;
        let driver: Arc<dyn InstanceSet> = Arc::new(Metered::new(
            Throttled::new(set, None),
            DRIVER,
            cloud_metrics,
        ));
        let tap = Arc::new(Tap::new(driver));
        let pool = PoolName::new("default")?;
        let pools = BTreeMap::from([(
            pool.clone(),
            PoolSpec::new(DRIVER.to_owned(), InstanceType::new(INSTANCE_TYPE)?)
                .with_price(flotilla_domain::Money::from_micros(100_000)),
        )]);
        let config = EngineConfig {
            limits: Limits {
                max_nodes: args.nodes,
                ..Limits::default()
            },
            resync_interval: args.resync_interval,
            max_wait: args.phase_limit,
            ..EngineConfig::default()
        };
        let (engine, tasks, registry) =
            crate::start_engine(config, store.clone(), DRIVER, &tap, pools, pool, registry).await?;
        Ok(Bench {
            endpoint,
            engine,
            tasks,
            tap,
            store,
            registry,
            caller: Caller::local_operator(),
            _dir: dir,
        })
    }

    fn counters(&self) -> EngineCounters {
        EngineCounters::read(&self.registry)
    }

    /// Deploys `cluster` with wait; how long it took and the calls made.
    async fn deploy(&self, cluster: &str, nodes: u32) -> Result<(Duration, Calls)> {
        let name = ClusterName::new(cluster)?;
        let command = Deploy {
            cluster: name.clone(),
            node_capacity: i64::from(nodes),
            time_to_live: TTL_SECONDS,
            is_public: None,
            pool: None,
            workload: None,
        };
        let control = Control::new(self.engine.clone(), ec2_catalog());
        let before = self.endpoint.calls();
        let start = Instant::now();
        control.run(&self.caller, command).await?;
        let view = control.wait_settled(&name).await;
        let took = start.elapsed();
        ensure!(
            view.state == ClusterState::Running && view.settled == Some(true),
            "{cluster} did not settle running: {}",
            view.state.as_str()
        );
        Ok((took, delta(&self.endpoint.calls(), &before)))
    }

    /// Waits until the endpoint has seen no write for two resync intervals.
    async fn quiesce(&self, args: &Ec2Args) -> Result<()> {
        let writes = || {
            let c = self.endpoint.calls();
            count(&c, "RunInstances") + count(&c, "TerminateInstances") + count(&c, "CreateTags")
        };
        let quiet = args.resync_interval * 2;
        let mut last = (writes(), Instant::now());
        poll_until(args.phase_limit, "EC2 writes to stop", || {
            let w = writes();
            if w != last.0 {
                last = (w, Instant::now());
            }
            (last.1.elapsed() >= quiet).then_some(())
        })
        .await
    }
}

pub fn run(args: Ec2Args) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(bench(args))
}

async fn bench(args: Ec2Args) -> Result<()> {
    ensure!(args.clusters >= 1 && args.nodes >= 1, "nothing to deploy");
    let machine = Machine::read();
    let total = args.clusters as u64 * u64::from(args.nodes);
    machine.print_header("flotilla-bench ec2");
    println!(
        "- run: {} clusters × {} nodes of {INSTANCE_TYPE}, max_batch {}, list_page_size {}, resync every {}, {} passes, store SQLite",
        args.clusters,
        args.nodes,
        args.max_batch,
        args.page_size,
        humantime::format_duration(args.resync_interval),
        args.passes,
    );
    println!();

    let b = Bench::start(&args).await?;
    let mut report = Report::default();

    // 1. One wide deploy.
    eprintln!("1. deploying {} nodes with wait ...", args.nodes);
    poll_until(args.phase_limit, "the first listing", || {
        (b.tap.list_count() > 0).then_some(())
    })
    .await?;
    let (took, calls) = b.deploy("wide-0", args.nodes).await?;
    let runs = count(&calls, "RunInstances");
    let bound = if args.nodes == 100 {
        MAX_RUN_INSTANCES_PER_100
    } else {
        u64::from(args.nodes.div_ceil(args.max_batch)) + 2
    };
    report.row(
        "1",
        format!(
            "Deploy {} nodes of one type (max_batch {}): RunInstances calls",
            args.nodes, args.max_batch
        ),
        runs.to_string(),
        format!("≤ {bound}"),
        Verdict::check(runs <= bound),
    );
    report.row(
        "1",
        "… instances launched; live",
        format!("{}; {}", b.endpoint.launched(), b.endpoint.live()),
        format!("{0}; {0}", args.nodes),
        Verdict::check(
            b.endpoint.launched() == u64::from(args.nodes)
                && b.endpoint.live() == args.nodes as usize,
        ),
    );
    report.info(
        "1",
        "… deploy with wait → running, all nodes ready",
        fmt_duration(took),
    );
    report.info("1", "… every EC2 call made meanwhile", fmt_calls(&calls));

    // 2. Fill up to clusters × nodes.
    eprintln!("2. deploying {} more clusters ...", args.clusters - 1);
    let fill_start = Instant::now();
    let before = b.endpoint.calls();
    let mut most_runs = runs;
    for i in 1..args.clusters {
        let (_, calls) = b.deploy(&format!("wide-{i}"), args.nodes).await?;
        most_runs = most_runs.max(count(&calls, "RunInstances"));
    }
    let fill = delta(&b.endpoint.calls(), &before);
    report.row(
        "2",
        format!(
            "Deploy {} more clusters of {} one after another: most RunInstances calls for one",
            args.clusters - 1,
            args.nodes
        ),
        most_runs.to_string(),
        format!("≤ {bound}"),
        Verdict::check(most_runs <= bound),
    );
    report.info(
        "2",
        "… wall time; every EC2 call made",
        format!(
            "{}; {}",
            fmt_duration(fill_start.elapsed()),
            fmt_calls(&fill)
        ),
    );
    report.row(
        "2",
        "Live instances",
        b.endpoint.live().to_string(),
        total.to_string(),
        Verdict::check(b.endpoint.live() as u64 == total),
    );

    // 3. Steady state.
    eprintln!(
        "3. {} resync passes over {total} instances ...",
        args.passes
    );
    b.quiesce(&args).await?;
    let limit = args.resync_interval * 3 + Duration::from_secs(30);
    let lists = || b.tap.lists();
    // From the end of a listing to the end of the listing `passes` later:
    // the calls in between are exactly `passes` listings' and whatever else
    // happened.
    let first = b.tap.list_count();
    let finished = |k: usize| lists().get(k).and_then(|l| l.finished.map(|_| ()));
    poll_until(limit, "a resync listing", || finished(first)).await?;
    let (calls0, store0, counters0) = (b.endpoint.calls(), b.store.counts(), b.counters());
    let clusters = args.clusters as u64;
    let mut passes = Vec::new();
    let mut listings = Vec::new();
    for k in 1..=args.passes {
        let listing = poll_until(limit, "a resync listing", || {
            lists().get(first + k).cloned()
        })
        .await?;
        let reconciles_before = listing
            .reconciles_before
            .context("a listing began before the engine's metrics were attached")?;
        let reconciles = b.engine.reconcile_count();
        let end = poll_until(limit, "a resync pass to finish", || {
            (reconciles.get() >= reconciles_before + clusters).then(Instant::now)
        })
        .await?;
        poll_until(limit, "the listing to finish", || finished(first + k)).await?;
        let done = lists()[first + k].finished.unwrap_or(end);
        listings.push(done - listing.started);
        passes.push(end.max(done) - listing.started);
    }
    let (calls1, store1, counters1) = (b.endpoint.calls(), b.store.counts(), b.counters());
    let steady = delta(&calls1, &calls0);
    let pages = total.div_ceil(u64::from(args.page_size));
    let describes = count(&steady, "DescribeInstances");
    let writes = count(&steady, "RunInstances")
        + count(&steady, "TerminateInstances")
        + count(&steady, "CreateTags");
    let others = steady
        .iter()
        .filter(|(k, _)| k.as_str() != "DescribeInstances")
        .map(|(_, v)| v)
        .sum::<u64>();
    report.row(
        "3",
        format!(
            "{} resync passes over {total} instances: EC2 write calls",
            args.passes
        ),
        writes.to_string(),
        "0".to_owned(),
        Verdict::check(writes == 0),
    );
    report.row(
        "3",
        format!(
            "… DescribeInstances calls ({} listings of {pages} pages of ≤ {})",
            args.passes, args.page_size
        ),
        describes.to_string(),
        (args.passes as u64 * pages).to_string(),
        Verdict::check(describes == args.passes as u64 * pages),
    );
    report.row(
        "3",
        "… any other EC2 call",
        others.to_string(),
        "0".to_owned(),
        Verdict::check(others == 0),
    );
    let store = store1.since(&store0);
    report.row(
        "3",
        "… store writes",
        store.writes().to_string(),
        "0".to_owned(),
        Verdict::check(store.writes() == 0),
    );
    report.info(
        "3",
        format!("… listing of {total} instances, median / max"),
        format!(
            "{} / {}",
            fmt_duration(percentile(&listings, 50.0)),
            fmt_duration(max(&listings))
        ),
    );
    report.info(
        "3",
        "… resync pass (listing to every cluster reconciled), median / max",
        format!(
            "{} / {}",
            fmt_duration(percentile(&passes, 50.0)),
            fmt_duration(max(&passes))
        ),
    );
    report.info(
        "3",
        "… reconciles; errors",
        format!(
            "{}; {}",
            counters1.reconciles - counters0.reconciles,
            counters1.reconcile_errors - counters0.reconcile_errors
        ),
    );

    // 4. Destroy.
    eprintln!("4. destroying every cluster ...");
    let before = b.endpoint.calls();
    let start = Instant::now();
    for i in 0..args.clusters {
        let name = ClusterName::new(format!("wide-{i}"))?;
        Control::new(b.engine.clone(), ec2_catalog())
            .run(&b.caller, Destroy { cluster: name })
            .await?;
    }
    poll_until(args.phase_limit, "every instance terminated", || {
        (b.endpoint.live() == 0).then_some(())
    })
    .await?;
    let took = start.elapsed();
    let destroy = delta(&b.endpoint.calls(), &before);
    report.info(
        "4",
        format!(
            "Destroy {} clusters ({total} instances): wall time",
            args.clusters
        ),
        fmt_duration(took),
    );
    report.info("4", "… every EC2 call made", fmt_calls(&destroy));
    report.info(
        "",
        "Peak RSS of the run (VmHWM)",
        fmt_kib(machine::peak_rss_kib()),
    );

    println!("{}", report.markdown());
    b.tasks.shutdown().await;
    if report.failed() {
        std::process::exit(1);
    }
    Ok(())
}

/// The catalogue of the bench's one ec2 driver (pools are not written
/// through it here).
fn ec2_catalog() -> Arc<flotilla_control::PoolCatalog> {
    Arc::new(flotilla_control::PoolCatalog::plain([(DRIVER, "ec2")]))
}
