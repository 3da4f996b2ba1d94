//! `flotilla-bench http`: the HTTP API under load, on loopback.
//!
//! The server is wired the way `flotilla serve` wires it: the SQLite store
//! in a temporary directory, the fake cloud behind `Metered(Throttled(..))`,
//! the engine with its default configuration, `Identity` with a key ring in
//! the temporary directory, the rate limits, and `flotilla_api::router`
//! served by axum on 127.0.0.1 with the peer address. It runs in this
//! process on its own tokio runtime with `--server-threads` workers (2, as
//! the target says). The rate limits are set so high that they count every
//! request (their cost is in the figures) but never refuse one.
//!
//! Setup goes through the API like a user would: the first admin signs in,
//! creates an `org_member` account, and deploys that account's own cluster
//! (3 nodes on the fake) with `wait`; the member signs in and reads it.
//!
//! The load generator runs on a second runtime in the same process (so it
//! shares the machine's cores with the server): `--connections` keep-alive
//! HTTP/1.1 connections, each sending one request at a time, for
//! `--warmup` unrecorded and then `--duration` recorded. Each request's
//! latency (request handed to the connection → whole response read) goes
//! into an HDR histogram; any status other than 200 is counted. Three runs:
//!
//! 1. `GET /api/v1/clusters/{cluster}` with the member's one access token,
//!    as a client that reuses its token: after the first request the
//!    server's cache of verified tokens answers, so this is the target's
//!    steady state;
//! 2. the same with `--tokens` distinct access tokens for the same account,
//!    round-robin: more tokens than the cache holds, in a cycle, so each is
//!    evicted before it comes round again and every request verifies an
//!    Ed25519 signature;
//! 3. `GET /healthz` without a token, which the access layer lets through
//!    untouched: the floor that axum, hyper and the loopback cost.
//!
//! With `--two-servers`, a fourth part: two servers on one PostgreSQL
//! (started for the run), each on its own runtime, set up through the
//! first; the member's one token read at the first alone, then at both at
//! once, each server's figures apart. The second verifies tokens the first
//! signed, with the keys they share through the database.
//!
//! The exit status is 1 if run 1 misses the target (≥ 20,000 requests/s
//! with p99 ≤ 5 ms) or any run saw an answer other than 200.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use flotilla_api::ratelimit::{RateClock, RateLimits};
use flotilla_api::AppState;
use flotilla_api_types as types;
use flotilla_cloud::fake::{FakeCloud, FakeConfig};
use flotilla_cloud::{CloudMetrics, InstanceSet, Metered, SystemClock, Throttled};
use flotilla_domain::{allowed_clusters, InstanceType, Level, PoolName, Username};
use flotilla_engine::{Engine, EngineConfig, EngineTasks, PoolSpec};
use flotilla_identity::{
    Identity, IdentityConfig, KeyRing, TokenIssuer, FIRST_ADMIN, VERIFIED_CACHE_CAPACITY,
};
use flotilla_store::Store;
use flotilla_store_postgres::testing::TempPostgres;
use flotilla_store_postgres::PostgresStore;
use flotilla_store_sqlite::SqliteStore;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::machine::{self, Machine};
use crate::report::{fmt_duration, fmt_kib, Report, Verdict};
use crate::DRIVER;

/// The target of the identity issue for authenticated cluster status.
const TARGET_RPS: f64 = 20_000.0;
const TARGET_P99: Duration = Duration::from_millis(5);
/// Requests per minute allowed at every level: far beyond what two cores
/// can serve, so the limiter counts each request but refuses none.
const UNLIMITED_PER_MINUTE: u32 = 1_000_000_000;
/// `flotilla serve`'s defaults ([auth] in the config).
const ISSUER: &str = "flotilla";
const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
const CLUSTER_TOKEN_TTL: Duration = Duration::from_secs(3600);
const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const LOGIN_FAILURES: u32 = 10;
const LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
const ADMIN_PASSWORD: &str = "flotilla-bench-admin";
/// The signed-in account; its own cluster has the same name.
const MEMBER: &str = "bench";
const MEMBER_PASSWORD: &str = "flotilla-bench-member";
/// Thread names, by which CPU time is told apart.
const SERVER_THREAD: &str = "srv";
const LOADGEN_THREAD: &str = "loadgen";
/// Longest latency the histograms hold (more is clamped), ns.
const MAX_RECORDED_NS: u64 = 60_000_000_000;

#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    /// Connections the load generator keeps open, each with one request in
    /// flight at a time.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Recorded time of each run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unrecorded load before each run (connections open, caches warm).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Distinct access tokens for the second run, used round-robin. Above
    /// the server's cache of verified tokens (10000), every request
    /// verifies a signature.
    #[arg(long, default_value_t = 20_000)]
    tokens: usize,
    /// Worker threads of the server's runtime (the target is for 2 cores).
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Nodes of the cluster whose status is read.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Also serve from two servers on one PostgreSQL (started for the run)
    /// and read status from both at once, after one of them alone.
    #[arg(long)]
    two_servers: bool,
}

/// The server, running on its own runtime.
struct Server {
    runtime: Runtime,
    addr: SocketAddr,
    identity: Arc<Identity>,
    tasks: EngineTasks,
    shutdown: oneshot::Sender<()>,
    serving: JoinHandle<std::io::Result<()>>,
    housekeeping: JoinHandle<()>,
    /// Holds the database and the keys until the run ends.
    _dir: tempfile::TempDir,
}

impl Server {
    /// A server on its own runtime: SQLite in a temporary directory, or
    /// the PostgreSQL database at `database_url`.
    fn start(threads: usize, database_url: Option<&str>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(SERVER_THREAD)
            .enable_all()
            .build()
            .context("cannot start the server's runtime")?;
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let started = runtime.block_on(async {
            let store: Arc<dyn Store> = match database_url {
                None => Arc::new(SqliteStore::open(&dir.path().join("flotilla.db")).await?),
                Some(url) => Arc::new(PostgresStore::connect(url).await?),
            };
            serve(dir.path(), store).await
        })?;
        Ok(Self {
            runtime,
            addr: started.addr,
            identity: started.identity,
            tasks: started.tasks,
            shutdown: started.shutdown,
            serving: started.serving,
            housekeeping: started.housekeeping,
            _dir: dir,
        })
    }

    fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(());
        self.runtime.block_on(async {
            // Every client connection is closed by now; do not hang on one
            // that is not.
            match tokio::time::timeout(Duration::from_secs(5), self.serving).await {
                Ok(joined) => joined.context("the server task panicked")??,
                Err(_) => eprintln!("the server did not stop within 5 s; leaving it"),
            }
            self.housekeeping.abort();
            self.tasks.shutdown().await;
            Ok::<_, anyhow::Error>(())
        })
    }
}

struct Started {
    addr: SocketAddr,
    identity: Arc<Identity>,
    tasks: EngineTasks,
    shutdown: oneshot::Sender<()>,
    serving: JoinHandle<std::io::Result<()>>,
    housekeeping: JoinHandle<()>,
}

/// `serve::run` of the flotilla binary, with its defaults, a fake driver
/// and no GitHub sign-in. The signing keys are the database's, shared by
/// every server on it, as `flotilla serve` keeps them.
async fn serve(dir: &Path, store: Arc<dyn Store>) -> Result<Started> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("cannot listen on 127.0.0.1")?;

    let key_dir = dir.join("keys");
    let stored = store.signing_keys().await?;
    let keys = if stored.is_empty() {
        KeyRing::load_or_create(&key_dir)?
    } else {
        flotilla_identity::stored_key_ring(&stored)?
    };
    let tokens = TokenIssuer::new(keys, ISSUER, ACCESS_TOKEN_TTL, CLUSTER_TOKEN_TTL);
    flotilla_identity::prepare_password_verifier();
    let identity = Arc::new(Identity::new(
        store.clone(),
        tokens,
        None,
        IdentityConfig {
            refresh_token_ttl: REFRESH_TOKEN_TTL,
            max_concurrent_hashes: 2,
        },
    ));
    let now = chrono::Utc::now();
    identity.share_keys(&key_dir, now).await?;
    // The second server on a database finds the first admin there.
    identity.bootstrap_admin(ADMIN_PASSWORD, now).await?;
    let limits = Arc::new(RateLimits::new(
        [UNLIMITED_PER_MINUTE; 4],
        LOGIN_FAILURES,
        LOGIN_FAILURE_WINDOW,
        RateClock::real(),
    ));

    let mut registry = Registry::default();
    let cloud_metrics = Arc::new(CloudMetrics::register(&mut registry));
    let id = store.instance_set_id(DRIVER).await?;
    let fake = FakeCloud::new(FakeConfig::default()).instance_set(id.as_str());
    let set: Arc<dyn InstanceSet> = Arc::new(Metered::new(
        Throttled::new(fake, None),
        DRIVER,
        cloud_metrics,
    ));
    let pool = PoolName::new("default")?;
    let pools = BTreeMap::from([(
        pool.clone(),
        PoolSpec::new(DRIVER.to_owned(), InstanceType::new("fake.small")?)
            .with_price(flotilla_domain::Money::from_micros(100_000)),
    )]);
    let (engine, tasks) = Engine::start(
        EngineConfig::default(),
        store,
        BTreeMap::from([(DRIVER.to_owned(), set)]),
        pools,
        pool,
        Arc::new(SystemClock),
        &mut registry,
    )
    .await?;

    let housekeeping = {
        let limits = limits.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                limits.housekeeping();
            }
        })
    };
    let app = flotilla_api::router(AppState {
        control: flotilla_control::Control::new(engine.clone(), crate::fake_catalog()),
        engine,
        identity: identity.clone(),
        limits,
        registry: Arc::new(registry),
    });
    let addr = listener.local_addr()?;
    let (shutdown, stop) = oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stop.await;
        })
        .await
    });
    Ok(Started {
        addr,
        identity,
        tasks,
        shutdown,
        serving,
        housekeeping,
    })
}

/// What setup leaves for the runs.
struct Setup {
    cluster: String,
    /// The member's access token, from LOGIN.
    token: String,
    /// The status answered to the same request without a token.
    anonymous_status: StatusCode,
    /// The status answered to the member's token with its signature altered.
    forged_status: StatusCode,
    /// Bytes of one status answer.
    body_bytes: usize,
}

async fn sign_in(
    http: &reqwest::Client,
    base: &str,
    username: &str,
    password: &str,
) -> Result<types::TokenResponse> {
    let response = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&types::LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        })
        .send()
        .await?;
    let status = response.status();
    ensure!(
        status.is_success(),
        "login as {username}: {status}: {}",
        response.text().await.unwrap_or_default()
    );
    Ok(response.json().await?)
}

/// Through the API: the admin creates the member and deploys its cluster;
/// the member signs in and reads it.
async fn setup(addr: SocketAddr, nodes: u32) -> Result<Setup> {
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let admin = sign_in(&http, &base, FIRST_ADMIN, ADMIN_PASSWORD).await?;

    let response = http
        .post(format!("{base}/api/v1/users"))
        .bearer_auth(&admin.access_token)
        .json(&types::CreateUserRequest {
            username: MEMBER.to_owned(),
            password: MEMBER_PASSWORD.to_owned(),
            level: types::Level::OrgMember,
            grants: Vec::new(),
        })
        .send()
        .await?;
    let status = response.status();
    ensure!(
        status.is_success(),
        "creating account {MEMBER}: {status}: {}",
        response.text().await.unwrap_or_default()
    );

    let cluster = Username::new(MEMBER)?.own_cluster().to_string();
    let url = format!("{base}/api/v1/clusters/{cluster}");
    let response = http
        .put(format!("{url}?wait=true"))
        .bearer_auth(&admin.access_token)
        .json(&types::DeployRequest {
            node_capacity: i64::from(nodes),
            time_to_live: 3600,
            is_public: None,
            pool: None,
            workload: None,
        })
        .send()
        .await?;
    let status = response.status();
    ensure!(
        status.is_success(),
        "deploying {cluster}: {status}: {}",
        response.text().await.unwrap_or_default()
    );
    let deployed: types::ClusterStatus = response.json().await?;
    ensure!(
        deployed.state == types::ClusterState::Running,
        "{cluster} settled as {:?}, not running",
        deployed.state
    );

    let member = sign_in(&http, &base, MEMBER, MEMBER_PASSWORD).await?;
    ensure!(
        member.level == types::Level::OrgMember && member.clusters == [cluster.clone()],
        "{MEMBER} signed in as {:?} for {:?}",
        member.level,
        member.clusters
    );
    let response = http
        .get(&url)
        .bearer_auth(&member.access_token)
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::OK,
        "{MEMBER} reading {cluster}: {}",
        response.status()
    );
    let body = response.bytes().await?;
    let seen: types::ClusterStatus = serde_json::from_slice(&body)?;
    ensure!(
        seen.state == types::ClusterState::Running && seen.nodes.len() == nodes as usize,
        "{cluster} is {:?} with {} nodes",
        seen.state,
        seen.nodes.len()
    );
    let anonymous_status = http.get(&url).send().await?.status();
    ensure!(
        !anonymous_status.is_success(),
        "{cluster} is private, yet an anonymous read was answered {anonymous_status}"
    );
    // The same token with one character of its signature changed.
    let mut forged = member.access_token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged)?;
    let forged_status = http.get(&url).bearer_auth(&forged).send().await?.status();
    ensure!(
        forged_status == StatusCode::UNAUTHORIZED,
        "a token with a forged signature was answered {forged_status}"
    );
    Ok(Setup {
        cluster,
        token: member.access_token,
        anonymous_status,
        forged_status,
        body_bytes: body.len(),
    })
}

/// One load run: a path, and the tokens to send (none: no header).
struct Load {
    label: String,
    path: String,
    tokens: Arc<[HeaderValue]>,
}

/// What one connection saw in the recorded window.
struct ConnOutcome {
    latencies: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    /// The connection failed mid-run (counted as an error).
    lost: bool,
    last_done: Instant,
}

/// One keep-alive connection sending requests back to back until `until`;
/// requests started from `record_from` on are recorded.
async fn drive(
    addr: SocketAddr,
    load: Arc<Load>,
    next: Arc<AtomicUsize>,
    record_from: Instant,
    until: Instant,
) -> Result<ConnOutcome> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let host = HeaderValue::from_str(&addr.to_string())?;
    let mut out = ConnOutcome {
        latencies: Histogram::new_with_bounds(1, MAX_RECORDED_NS, 3)?,
        statuses: BTreeMap::new(),
        lost: false,
        last_done: record_from,
    };
    while Instant::now() < until {
        let mut request = Request::get(load.path.as_str()).header(HOST, host.clone());
        if !load.tokens.is_empty() {
            let k = next.fetch_add(1, Ordering::Relaxed) % load.tokens.len();
            request = request.header(AUTHORIZATION, load.tokens[k].clone());
        }
        let request = request.body(Empty::new())?;
        let sent = Instant::now();
        let answered = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        let done = Instant::now();
        let recorded = sent >= record_from;
        match answered {
            Ok(status) if recorded => {
                let ns = u64::try_from((done - sent).as_nanos()).unwrap_or(u64::MAX);
                out.latencies.saturating_record(ns.max(1));
                *out.statuses.entry(status.as_u16()).or_default() += 1;
                out.last_done = done;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("a load connection failed: {e}");
                out.lost = true;
                break;
            }
        }
    }
    drop(sender);
    let _ = connection.await;
    Ok(out)
}

/// CPU time over a run, by who used it.
#[derive(Debug, Default, Clone, Copy)]
struct CpuUse {
    /// The server's runtime threads (workers and blocking pool).
    server: f64,
    /// SQLite's worker threads (the store).
    sqlite: f64,
    load_generator: f64,
    /// Everything else in this process (the main thread, mostly asleep).
    rest_of_process: f64,
    /// The whole machine, this process included.
    machine: f64,
    /// Time the hypervisor gave to other guests.
    steal: f64,
    /// Time the server's threads were runnable but had no CPU.
    server_waiting: f64,
    process: f64,
}

struct CpuMark {
    threads: HashMap<u32, (String, u64, u64)>,
    machine: machine::MachineCpu,
    process: f64,
}

impl CpuMark {
    fn now() -> Self {
        Self {
            threads: machine::thread_cpu()
                .into_iter()
                .map(|t| (t.tid, (t.name, t.run_ns, t.wait_ns)))
                .collect(),
            machine: machine::machine_cpu(),
            process: machine::process_cpu_seconds(),
        }
    }

    /// Seconds used since `before`.
    fn since(&self, before: &CpuMark) -> CpuUse {
        let mut used = CpuUse {
            machine: self.machine.busy - before.machine.busy,
            steal: self.machine.steal - before.machine.steal,
            process: self.process - before.process,
            ..CpuUse::default()
        };
        for (tid, (name, run, wait)) in &self.threads {
            let (run0, wait0) = before
                .threads
                .get(tid)
                .map_or((0, 0), |(_, run, wait)| (*run, *wait));
            let run = run.saturating_sub(run0) as f64 / 1e9;
            let wait = wait.saturating_sub(wait0) as f64 / 1e9;
            if name.starts_with(SERVER_THREAD) {
                used.server += run;
                used.server_waiting += wait;
            } else if name.starts_with("sqlx") {
                used.sqlite += run;
            } else if name.starts_with(LOADGEN_THREAD) {
                used.load_generator += run;
            } else {
                used.rest_of_process += run;
            }
        }
        used
    }
}

struct Outcome {
    label: String,
    latencies: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    lost_connections: usize,
    window: Duration,
    cpu: CpuUse,
    /// Verified tokens the server's cache held after the run.
    cached_after: usize,
}

impl Outcome {
    fn requests(&self) -> u64 {
        self.latencies.len()
    }

    fn per_second(&self) -> f64 {
        self.requests() as f64 / self.window.as_secs_f64().max(1e-9)
    }

    fn not_ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| **status != 200)
            .map(|(_, n)| n)
            .sum::<u64>()
            + self.lost_connections as u64
    }

    fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.latencies.value_at_quantile(q))
    }

    fn max(&self) -> Duration {
        Duration::from_nanos(self.latencies.max())
    }

    /// CPU time per request, µs.
    fn cost_us(&self, seconds: f64) -> f64 {
        seconds * 1e6 / self.requests().max(1) as f64
    }

    fn cores(&self, seconds: f64) -> f64 {
        seconds / self.window.as_secs_f64().max(1e-9)
    }
}

async fn run_load(
    addr: SocketAddr,
    load: Load,
    args: &HttpArgs,
    identity: &Identity,
) -> Result<Outcome> {
    let mut outcomes = run_load_on(&[(addr, identity)], load, args).await?;
    Ok(outcomes.remove(0))
}

/// One load run spread over several servers, the connections dealt out in
/// turn; what each server answered.
async fn run_load_on(
    servers: &[(SocketAddr, &Identity)],
    load: Load,
    args: &HttpArgs,
) -> Result<Vec<Outcome>> {
    let load = Arc::new(load);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let record_from = start + args.warmup;
    let until = record_from + args.duration;
    let mut connections = JoinSet::new();
    for k in 0..args.connections.max(servers.len()) {
        let which = k % servers.len();
        let addr = servers[which].0;
        let (conn_load, conn_next) = (load.clone(), next.clone());
        connections.spawn(async move {
            let outcome = drive(addr, conn_load, conn_next, record_from, until).await;
            (which, outcome)
        });
    }
    tokio::time::sleep_until(record_from.into()).await;
    let before = CpuMark::now();
    struct Gathered {
        latencies: Histogram<u64>,
        statuses: BTreeMap<u16, u64>,
        lost_connections: usize,
        last_done: Instant,
    }
    let mut gathered = Vec::new();
    for _ in servers {
        gathered.push(Gathered {
            latencies: Histogram::new_with_bounds(1, MAX_RECORDED_NS, 3)?,
            statuses: BTreeMap::new(),
            lost_connections: 0,
            last_done: record_from,
        });
    }
    let mut cpu_after = None;
    while let Some(joined) = connections.join_next().await {
        // The first connection to finish marks the end of the load.
        cpu_after.get_or_insert_with(CpuMark::now);
        let (which, conn) = joined.context("a load connection panicked")?;
        let conn = conn?;
        let g = &mut gathered[which];
        g.latencies.add(&conn.latencies)?;
        for (status, n) in conn.statuses {
            *g.statuses.entry(status).or_default() += n;
        }
        g.lost_connections += usize::from(conn.lost);
        g.last_done = g.last_done.max(conn.last_done);
    }
    let after = cpu_after.unwrap_or_else(CpuMark::now);
    let cpu = after.since(&before);
    let window = gathered
        .iter()
        .map(|g| g.last_done)
        .max()
        .unwrap_or(record_from)
        - record_from;
    Ok(gathered
        .into_iter()
        .zip(servers)
        .map(|(g, (_, identity))| Outcome {
            label: load.label.clone(),
            latencies: g.latencies,
            statuses: g.statuses,
            lost_connections: g.lost_connections,
            window,
            cpu,
            cached_after: identity.tokens().cached_tokens(),
        })
        .collect())
}

/// `--two-servers`: two servers on one PostgreSQL (each on its own
/// runtime, as two `flotilla serve` would be on one machine), set up
/// through the first; the member's one token read at the first alone, then
/// at both at once, the connections dealt out in turn. Every server
/// verifies the first's tokens with the keys they share.
fn run_two_servers(args: &HttpArgs, machine: &Machine) -> Result<Report> {
    eprintln!("two servers: starting PostgreSQL ...");
    let pg = TempPostgres::start_durable().context("cannot start PostgreSQL")?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name(LOADGEN_THREAD)
        .enable_all()
        .build()
        .context("cannot start the load generator's runtime")?;
    let url = client.block_on(pg.create_database())?;
    let threads = args.server_threads.max(1);
    let first = Server::start(threads, Some(&url))?;
    let second = Server::start(threads, Some(&url))?;
    eprintln!("two servers: setting up through the first ...");
    let setup = client.block_on(setup(first.addr, args.nodes))?;
    let path = format!("/api/v1/clusters/{}", setup.cluster);
    let load = |label: &str| -> Result<Load> {
        Ok(Load {
            label: label.to_owned(),
            path: path.clone(),
            tokens: Arc::from(vec![bearer(&setup.token)?]),
        })
    };
    eprintln!("two servers: the first alone ...");
    let alone = client.block_on(run_load_on(
        &[(first.addr, &*first.identity)],
        load("first server alone")?,
        args,
    ))?;
    eprintln!("two servers: both at once ...");
    let both = client.block_on(run_load_on(
        &[
            (first.addr, &*first.identity),
            (second.addr, &*second.identity),
        ],
        load("both servers at once")?,
        args,
    ))?;
    drop(client);
    first.stop()?;
    second.stop()?;
    drop(pg);

    println!("## Two servers on one PostgreSQL");
    println!();
    println!(
        "- each server on its own tokio runtime with {threads} worker threads, all sharing the {} CPUs with each other, PostgreSQL and the load generator; \
         the member's one token (signed by the first server) for `GET {path}`; {} connections in all",
        machine.cpus, args.connections
    );
    println!();
    println!("| Run | Server | Requests/s | p50 | p99 | max | Not 200 |");
    println!("|---|---|---|---|---|---|---|");
    let rows = alone.iter().map(|o| ("first alone", "first", o)).chain(
        both.iter()
            .zip(["first", "second"])
            .map(|(o, s)| ("both", s, o)),
    );
    for (run, server, o) in rows {
        println!(
            "| {run} | {server} | {} | {} | {} | {} | {} |",
            fmt_rate(o.per_second()),
            fmt_duration(o.quantile(0.50)),
            fmt_duration(o.quantile(0.99)),
            fmt_duration(o.max()),
            fmt_statuses(o)
        );
    }
    println!();
    let total: f64 = both.iter().map(Outcome::per_second).sum();
    let mut report = Report::default();
    report.info(
        "4",
        "Two servers, one token: requests/s, first + second = sum; the first alone in the same run",
        format!(
            "{} + {} = {}; alone {}",
            fmt_rate(both[0].per_second()),
            fmt_rate(both[1].per_second()),
            fmt_rate(total),
            fmt_rate(alone[0].per_second())
        ),
    );
    report.row(
        "4",
        "… answers other than 200 (the second verifies the first's tokens)",
        format!("{}; {}", fmt_statuses(&both[0]), fmt_statuses(&both[1])),
        "0",
        Verdict::check(both.iter().chain(&alone).all(|o| o.not_ok() == 0)),
    );
    Ok(report)
}

fn bearer(token: &str) -> Result<HeaderValue> {
    Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
}

/// `n` access tokens for the member, made by the server's own issuer with
/// the claims LOGIN gives it (without `n` password checks).
fn many_tokens(identity: &Identity, n: usize) -> Result<Vec<HeaderValue>> {
    let username = Username::new(MEMBER)?;
    let allowed = allowed_clusters(&username, &BTreeSet::new());
    let now = chrono::Utc::now();
    (0..n)
        .map(|_| {
            let issued =
                identity
                    .tokens()
                    .issue_access(&username, Level::OrgMember, &allowed, now)?;
            bearer(&issued.token)
        })
        .collect()
}

fn fmt_rate(per_second: f64) -> String {
    let whole = per_second.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_statuses(o: &Outcome) -> String {
    let mut parts: Vec<String> = o
        .statuses
        .iter()
        .filter(|(status, _)| **status != 200)
        .map(|(status, n)| format!("{n} × {status}"))
        .collect();
    if o.lost_connections > 0 {
        parts.push(format!("{} connections lost", o.lost_connections));
    }
    if parts.is_empty() {
        "0".to_owned()
    } else {
        format!("{} ({})", o.not_ok(), parts.join(", "))
    }
}

pub fn run(args: HttpArgs) -> Result<()> {
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(!args.duration.is_zero(), "--duration must be above zero");
    let machine = Machine::read();
    let began = chrono::Local::now();
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned());

    eprintln!(
        "starting the server ({} worker threads) ...",
        args.server_threads
    );
    let server = Server::start(args.server_threads.max(1), None)?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name(LOADGEN_THREAD)
        .enable_all()
        .build()
        .context("cannot start the load generator's runtime")?;
    let addr = server.addr;

    eprintln!("setting up through the API (sign-ins hash passwords) ...");
    let setup = client.block_on(setup(addr, args.nodes))?;
    let path = format!("/api/v1/clusters/{}", setup.cluster);

    let issuing = Instant::now();
    let tokens = many_tokens(&server.identity, args.tokens.max(1))?;
    let issuing = issuing.elapsed();
    let every_one_verified = tokens.len() > VERIFIED_CACHE_CAPACITY;

    let loads = [
        Load {
            label: format!("`GET {path}`, one token (verified once, then cached)"),
            path: path.clone(),
            tokens: Arc::from(vec![bearer(&setup.token)?]),
        },
        Load {
            label: if every_one_verified {
                format!(
                    "`GET {path}`, {} distinct tokens round-robin (every request verifies a signature)",
                    tokens.len()
                )
            } else {
                format!(
                    "`GET {path}`, {} distinct tokens round-robin (each verified once, then cached)",
                    tokens.len()
                )
            },
            path: path.clone(),
            tokens: Arc::from(tokens),
        },
        Load {
            label: "`GET /healthz`, no token".to_owned(),
            path: "/healthz".to_owned(),
            tokens: Arc::from(Vec::new()),
        },
    ];
    let mut outcomes = Vec::new();
    for (k, load) in loads.into_iter().enumerate() {
        eprintln!(
            "{}. {} — {} connections, {} warm-up + {} ...",
            k + 1,
            load.label,
            args.connections,
            humantime::format_duration(args.warmup),
            humantime::format_duration(args.duration)
        );
        outcomes.push(client.block_on(run_load(addr, load, &args, &server.identity))?);
    }
    let load_average_after = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned());
    drop(client);
    server.stop()?;

    println!("# flotilla-bench http");
    println!();
    println!("- date: {}", began.format("%Y-%m-%d %H:%M:%S %z"));
    println!("- cpu: {} × {}", machine.cpus, machine.cpu_model);
    println!("- memory: {}", fmt_kib(machine.memory_total_kib));
    println!("- kernel: {}", machine.kernel);
    println!("- load average before / after: {load_average} / {load_average_after}");
    println!(
        "- server: in this process, tokio runtime with {} worker threads; SQLite store, fake cloud, engine defaults, \
         rate limits raised to {} requests/minute per level (every request is counted, none refused); \
         cluster `{}` with {} nodes, read by `org_member` {MEMBER} (its own cluster); {} bytes per status answer; \
         without a token the same request is answered {}, with the token's signature altered {}",
        args.server_threads,
        fmt_rate(f64::from(UNLIMITED_PER_MINUTE)),
        setup.cluster,
        args.nodes,
        setup.body_bytes,
        setup.anonymous_status,
        setup.forged_status
    );
    println!(
        "- load generator: in the same process on its own tokio runtime with {} worker threads, sharing the {} CPUs with the server; \
         {} keep-alive HTTP/1.1 connections (hyper), one request in flight on each; {} warm-up, then {} recorded per run; \
         latency is request handed to the connection → whole response read",
        args.client_threads,
        machine.cpus,
        args.connections,
        humantime::format_duration(args.warmup),
        humantime::format_duration(args.duration)
    );
    println!(
        "- distinct tokens: {} issued by the server's own token issuer in {} (the claims LOGIN gives); the cache of verified tokens holds {VERIFIED_CACHE_CAPACITY} and forgets the oldest first",
        args.tokens.max(1),
        fmt_duration(issuing)
    );
    println!();

    println!("| # | Run | Requests | Requests/s | p50 | p90 | p99 | p99.9 | max | Not 200 | Cached tokens after |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (k, o) in outcomes.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            k + 1,
            o.label,
            o.requests(),
            fmt_rate(o.per_second()),
            fmt_duration(o.quantile(0.50)),
            fmt_duration(o.quantile(0.90)),
            fmt_duration(o.quantile(0.99)),
            fmt_duration(o.quantile(0.999)),
            fmt_duration(o.max()),
            fmt_statuses(o),
            o.cached_after
        );
    }
    println!();
    println!(
        "CPU over each recorded window, in cores busy (of {}) and µs per request:",
        machine.cpus
    );
    println!();
    println!("| # | Server runtime | SQLite threads | Load generator | Rest of this process | Other processes | Steal | Server threads waiting for a CPU |");
    println!("|---|---|---|---|---|---|---|---|");
    for (k, o) in outcomes.iter().enumerate() {
        let c = &o.cpu;
        let others = (c.machine - c.process).max(0.0);
        println!(
            "| {} | {:.2} ({:.1} µs) | {:.2} | {:.2} ({:.1} µs) | {:.2} | {:.2} | {:.2} | {:.2} |",
            k + 1,
            o.cores(c.server),
            o.cost_us(c.server),
            o.cores(c.sqlite),
            o.cores(c.load_generator),
            o.cost_us(c.load_generator),
            o.cores(c.rest_of_process),
            o.cores(others),
            o.cores(c.steal),
            o.cores(c.server_waiting),
        );
    }
    println!();

    let mut report = Report::default();
    let cached = &outcomes[0];
    let p99 = cached.quantile(0.99);
    report.row(
        "1",
        "Authenticated cluster status, one token: requests/s",
        fmt_rate(cached.per_second()),
        format!("≥ {}", fmt_rate(TARGET_RPS)),
        Verdict::check(cached.per_second() >= TARGET_RPS),
    );
    report.row(
        "1",
        "… p50 / p99 / max",
        format!(
            "{} / {} / {}",
            fmt_duration(cached.quantile(0.5)),
            fmt_duration(p99),
            fmt_duration(cached.max())
        ),
        format!("p99 ≤ {}", fmt_duration(TARGET_P99)),
        Verdict::check(p99 <= TARGET_P99),
    );
    for (k, (section, o)) in ["1", "2", "3"].into_iter().zip(&outcomes).enumerate() {
        if k > 0 {
            report.info(
                section,
                format!("{}: requests/s; p50 / p99 / max", o.label),
                format!(
                    "{}; {} / {} / {}",
                    fmt_rate(o.per_second()),
                    fmt_duration(o.quantile(0.5)),
                    fmt_duration(o.quantile(0.99)),
                    fmt_duration(o.max())
                ),
            );
        }
        report.row(
            section,
            "… answers other than 200",
            fmt_statuses(o),
            "0",
            Verdict::check(o.not_ok() == 0),
        );
    }
    println!("{}", report.markdown());
    println!(
        "The load generator runs on the same {} CPUs as the server: every µs it spends is a µs the server does not get.",
        machine.cpus
    );
    println!();
    let mut failed = report.failed();
    if args.two_servers {
        let two = run_two_servers(&args, &machine)?;
        println!("{}", two.markdown());
        failed |= two.failed();
    }
    if failed {
        bail!("a figure missed its target");
    }
    Ok(())
}
