//! The engine: turns durable desired state into instances and keeps them
//! converged.
//!
//! - [`runtime`] runs reconciles with per-cluster exclusion, deduplicated
//!   wake-ups, bounded concurrency and back-off;
//! - [`reconcile`] is the per-cluster reconcile: probe, plan, act;
//! - [`sync`] lists every instance set on a timer (and on demand) and wakes
//!   every cluster, so drift is caught;
//! - [`expiry`] fires stored deadlines (clusters' TTLs, capacity
//!   requests) with one generic loop;
//! - [`budget`] has capacity requests' deadlines and the accrual pass that
//!   charges organisations for their nodes and shuts down those out of
//!   money; [`orgs`] is the copy of organisations;
//! - [`views`] is what STATUS shows of a cluster, from the copies;
//! - [`pools`] lists the pools with what their drivers say of their nodes;
//! - [`lease`] decides whether this server leads: only the holder of the
//!   store's lease runs the loops above that act on the cloud or write what
//!   only the leader writes;
//! - [`reflector`] follows the change feed on every server, so each
//!   answers from what any server committed;
//! - [`reach`] asks one node what it printed, or runs a command on it.
//!
//! The engine is the only part of flotilla that calls drivers, and only
//! while it leads, except for [`reach`]'s questions to one node. Commands come in through the front door
//! (`flotilla-control`), which writes them to the store; the engine hears
//! of them from the change feed, like every other change.

mod budget;
mod desired;
mod error;
mod events;
mod expiry;
pub mod inventory;
mod jobs;
mod lease;
mod metrics;
mod orgs;
pub mod pools;
mod reach;
mod reconcile;
mod reflection;
mod reflector;
mod rollout;
pub mod runtime;
mod schedules;
mod sync;
mod views;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_cloud::{Clock, InstanceSet};
use flotilla_domain::{
    Change, ClusterName, LaunchVersion, LevelPolicy, Limits, OrgDefaults, PoolName, Timeouts,
};
use flotilla_store::Store;
use prometheus_client::registry::Registry;
use tokio::sync::{broadcast, watch, Notify};

pub use budget::AccrualStats;
pub use error::EngineError;
pub use flotilla_cloud::{CloudError, Console, ExecOutput};
pub use flotilla_domain::PoolSpec;
pub use jobs::{
    attempt_lifetime, instance_name, spec_of, AttemptBoot, AttemptStart, JobSettings, WarmStart,
};
pub use metrics::ReconcileCount;
pub use orgs::{log_org_events, request_views};
pub use pools::{PoolView, ResolvedImage};
pub use reach::NodeChoice;
pub use views::{ClusterView, NodeView, OrgClusterView, RequestView, RolloutState, RolloutView};

use desired::DesiredCache;
use inventory::SetInventory;
use lease::Leadership;
use metrics::EngineMetrics;
use orgs::OrgCache;
use pools::OfferingCache;
use reflector::PublishedNodes;
use runtime::Runtime;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Full listing and reconcile of everything, on top of event-driven work.
    pub resync_interval: Duration,
    /// How often a ready node is probed.
    pub probe_interval: Duration,
    /// Longest a request with `wait` blocks.
    pub max_wait: Duration,
    /// Reconciles running at once.
    pub concurrency: usize,
    /// Shortest gap between listings asked for by reconciles (to see
    /// destroyed instances leave), so a burst of destroys costs one listing.
    pub min_list_interval: Duration,
    /// How long an instance type (or scope) is avoided after the cloud said
    /// it has no capacity.
    pub capacity_backoff: Duration,
    /// What each user level may deploy.
    pub levels: LevelPolicy,
    /// What new organisations start with.
    pub orgs: OrgDefaults,
    /// How often organisations are charged for their nodes (and budgets
    /// re-evaluated): the longest an exhausted budget keeps running.
    pub accrual_interval: Duration,
    /// This server's name as the holder of the leader's lease: unique
    /// among the servers on one database, and the same across restarts so
    /// a restarted leader takes its lease back at once.
    pub server: String,
    /// How long a lease lasts unless renewed (a third of it between
    /// renewals): the longest the loops stop after the leader dies.
    pub lease_ttl: Duration,
    /// How often a server that does not lead tries to take the lease.
    pub lease_retry: Duration,
    /// How jobs are run.
    pub jobs: JobSettings,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            resync_interval: Duration::from_secs(10),
            probe_interval: Duration::from_secs(10),
            max_wait: Duration::from_secs(600),
            concurrency: 32,
            min_list_interval: Duration::from_millis(250),
            capacity_backoff: Duration::from_secs(60),
            levels: LevelPolicy::default(),
            orgs: OrgDefaults::default(),
            accrual_interval: Duration::from_secs(5),
            server: "flotilla".to_owned(),
            lease_ttl: Duration::from_secs(3),
            lease_retry: Duration::from_millis(500),
            jobs: JobSettings::default(),
        }
    }
}

/// Everything the engine's loops share.
struct Shared {
    config: EngineConfig,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    sets: BTreeMap<String, Arc<dyn InstanceSet>>,
    pools: pools::PoolTable,
    /// The latest version of every shared config.
    shared_configs: pools::SharedConfigs,
    /// What holds each pool's rollout back, and failed replacements.
    rollouts: rollout::Rollouts,
    /// Creates under way per pool with a `max_nodes`.
    pool_places: rollout::PoolPlaces,
    default_pool: PoolName,
    desired: DesiredCache,
    orgs: OrgCache,
    inventory: Mutex<BTreeMap<String, SetInventory>>,
    runtime: Runtime<ClusterName>,
    /// Bumped whenever a cluster may have changed, for `wait`.
    watchers: Mutex<BTreeMap<ClusterName, watch::Sender<u64>>>,
    sync_soon: Notify,
    expiry_changed: Notify,
    capacity_changed: Notify,
    stop: watch::Sender<bool>,
    metrics: EngineMetrics,
    offerings: OfferingCache,
    leadership: Leadership,
    /// The nodes the leader published, for answering while following.
    observed: PublishedNodes,
    /// What stands in each cluster's way, as this server met it while
    /// leading (see `reconcile::note_obstacle`).
    obstacles: Mutex<HashMap<ClusterName, flotilla_domain::Obstacle>>,
    /// What stands in each cluster's way as last published (by this server
    /// or the leader before it), for answering while following.
    published_obstacles: Mutex<HashMap<ClusterName, flotilla_domain::Obstacle>>,
    /// Every change the reflector read, for subscribers.
    changes: broadcast::Sender<Change>,
    /// Asks for a pass of the reflector (a counter), and the last ask a
    /// finished pass served: see [`reflector::catch_up`].
    catch_up: watch::Sender<u64>,
    caught_up: watch::Sender<u64>,
    /// Clusters whose nodes may have changed since last published.
    to_publish: Mutex<std::collections::BTreeSet<ClusterName>>,
    publish_wanted: Notify,
    /// Read-held by every cloud action; a new term takes it to wait for
    /// the actions of this server's last term.
    acting: tokio::sync::RwLock<()>,
    /// Held by a publication from its snapshot of the nodes to its commit.
    publishing: tokio::sync::Mutex<()>,
    /// Pools' errors met since they were last written to the store,
    /// counted by failure (see `reconcile::note_pool_error`).
    pool_errors: Mutex<BTreeMap<flotilla_domain::PoolErrorKey, flotilla_domain::PoolError>>,
    /// The job runner's state.
    jobs: jobs::JobRunner,
}

impl Shared {
    /// What `cluster`'s nodes cost per hour by type, if it is an
    /// organisation's cluster: its nodes are metered.
    fn meter_price(&self, cluster: &ClusterName) -> Option<flotilla_domain::NodePrices> {
        // Called for every cluster published: the organisation is not copied.
        self.orgs.with(cluster, |org| {
            self.pools
                .get(&org.settings.pool)
                .map(|p| p.prices())
                .unwrap_or_default()
        })
    }

    /// Asks the publisher to publish `cluster`'s nodes if they changed.
    fn publish_soon(&self, cluster: &ClusterName) {
        self.to_publish.lock().unwrap().insert(cluster.clone());
        self.publish_wanted.notify_one();
    }

    fn notify_changed(&self, cluster: &ClusterName) {
        let mut watchers = self.watchers.lock().unwrap();
        if let Some(tx) = watchers.get(cluster) {
            if tx.receiver_count() == 0 {
                watchers.remove(cluster);
            } else {
                tx.send_modify(|v| *v += 1);
            }
        }
    }

    fn subscribe(&self, cluster: &ClusterName) -> watch::Receiver<u64> {
        self.watchers
            .lock()
            .unwrap()
            .entry(cluster.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Resolves once shutdown has begun, including when it began before
    /// the caller first looked (a task may be stopped before it first runs).
    async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }
}

/// The running engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

/// The engine's background tasks; [`EngineTasks::shutdown`] drains them.
pub struct EngineTasks {
    shared: Arc<Shared>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl EngineTasks {
    /// Stops taking new work and waits for running reconciles to end.
    pub async fn shutdown(self) {
        // `send` would drop the value when no task is listening yet.
        self.shared.stop.send_replace(true);
        self.shared.runtime.shutdown();
        for h in self.handles {
            let _ = h.await;
        }
    }
}

impl Engine {
    /// Loads desired state and starts the loops. If this server can take
    /// the lease at once it leads, and lists every instance set before it
    /// returns; otherwise it follows until the lease is free.
    pub async fn start(
        config: EngineConfig,
        store: Arc<dyn Store>,
        sets: BTreeMap<String, Arc<dyn InstanceSet>>,
        pools: BTreeMap<PoolName, PoolSpec>,
        default_pool: PoolName,
        clock: Arc<dyn Clock>,
        registry: &mut Registry,
    ) -> Result<(Engine, EngineTasks), EngineError> {
        for (name, pool) in &pools {
            if !sets.contains_key(&pool.driver) {
                return Err(EngineError::Config(format!(
                    "pool {name} uses driver {:?}, which is not configured",
                    pool.driver
                )));
            }
        }
        if !pools.contains_key(&default_pool) {
            return Err(EngineError::Config(format!(
                "the default pool {default_pool} is not configured"
            )));
        }
        // The reflector starts where the feed stood before the first read
        // of the store's records (the term's, or a follower's, below), so
        // nothing committed meanwhile is missed; what that read already
        // saw is read again, harmlessly.
        let feed_at = store.last_change().await?;
        let inventory = sets
            .keys()
            .map(|k| (k.clone(), SetInventory::default()))
            .collect();
        let leadership = Leadership::new(config.server.clone());
        registry.register_collector(Box::new(leadership.gauges()));
        let shared = Arc::new(Shared {
            runtime: Runtime::new(config.concurrency),
            store,
            clock,
            sets,
            pools: pools::PoolTable::new(pools),
            shared_configs: pools::SharedConfigs::default(),
            rollouts: rollout::Rollouts::default(),
            pool_places: rollout::PoolPlaces::default(),
            default_pool,
            desired: DesiredCache::new(Vec::new()),
            orgs: OrgCache::new(Vec::new()),
            inventory: Mutex::new(inventory),
            watchers: Mutex::new(BTreeMap::new()),
            sync_soon: Notify::new(),
            expiry_changed: Notify::new(),
            capacity_changed: Notify::new(),
            stop: watch::channel(false).0,
            metrics: EngineMetrics::register(registry),
            offerings: OfferingCache::default(),
            leadership,
            observed: PublishedNodes::default(),
            obstacles: Mutex::default(),
            published_obstacles: Mutex::default(),
            changes: broadcast::channel(1024).0,
            catch_up: watch::channel(0).0,
            caught_up: watch::channel(0).0,
            to_publish: Mutex::new(Default::default()),
            publish_wanted: Notify::new(),
            acting: tokio::sync::RwLock::new(()),
            publishing: tokio::sync::Mutex::new(()),
            pool_errors: Mutex::new(BTreeMap::new()),
            jobs: jobs::JobRunner::default(),
            config,
        });

        pools::refresh(&shared).await?;
        pools::refresh_shared(&shared).await?;
        rollout::refresh(&shared).await?;

        // A server that can lead at once (the only one, or the leader
        // restarted) begins its term, which reads the records, and lists
        // every set before it serves, as a lone server always did; the
        // others read the records and follow until the lease is free.
        let found = if lease::try_lead(&shared).await {
            sync::sync_all(&shared).await
        } else {
            tracing::info!(server = %shared.config.server, "another server leads; following");
            reflector::refresh(&shared).await?;
            Default::default()
        };

        let mut handles = Vec::new();
        handles.push(tokio::spawn({
            let shared = shared.clone();
            async move {
                let s = shared.clone();
                shared
                    .runtime
                    .run(move |cluster| reconcile::reconcile_cluster(s.clone(), cluster))
                    .await
            }
        }));
        handles.push(tokio::spawn(lease::run(shared.clone())));
        handles.push(tokio::spawn(reflector::run(shared.clone(), feed_at)));
        handles.push(tokio::spawn(sync::run(shared.clone())));
        handles.push(tokio::spawn(reconcile::run_publisher(shared.clone())));
        handles.push(tokio::spawn(expiry::run::<expiry::Ttl>(shared.clone())));
        handles.push(tokio::spawn(expiry::run::<budget::CapacityRequests>(
            shared.clone(),
        )));
        handles.push(tokio::spawn(budget::run_accrual(shared.clone())));
        handles.push(tokio::spawn(jobs::run(shared.clone())));
        handles.push(tokio::spawn(schedules::run(shared.clone())));
        for name in shared.desired.names().into_iter().chain(found) {
            shared.runtime.wake(name);
        }
        Ok((
            Engine {
                shared: shared.clone(),
            },
            EngineTasks { shared, handles },
        ))
    }

    /// The engine's clock (injected), for the edges that stamp times too.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.shared.clock.now()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Every pool's name: the config file's and those written through
    /// the API.
    pub fn pools(&self) -> Vec<PoolName> {
        self.shared.pools.snapshot().keys().cloned().collect()
    }

    /// The store this engine's desired state lives in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// A pool, of the config file or written through the API, as this
    /// server's copy has it now.
    pub fn pool(&self, name: &PoolName) -> Option<Arc<PoolSpec>> {
        self.shared.pools.get(name)
    }

    /// The image `pool` launches with now, and the shared config version
    /// it comes from, if any (None: the driver's image); or why it has
    /// none.
    pub fn resolve_image(&self, pool: &PoolSpec) -> Result<Option<ResolvedImage>, String> {
        pools::resolve_image(&self.shared.shared_configs, pool)
    }

    /// What `pool`'s nodes are launched at now: the version of its launch
    /// configuration (its image resolved); or why its image cannot be.
    pub fn launch_version(&self, pool: &PoolSpec) -> Result<LaunchVersion, String> {
        self.launch(pool).map(|l| l.version)
    }

    /// What `pool`'s nodes are launched with now, type by type; or why
    /// its image cannot be resolved.
    pub fn launch(&self, pool: &PoolSpec) -> Result<flotilla_domain::PoolLaunch, String> {
        pools::launch(&self.shared.shared_configs, pool)
    }

    /// What holds `pool`'s rollout back, as this server's copy has it.
    pub fn rollout_hold(&self, pool: &PoolName) -> Option<flotilla_store::RolloutHold> {
        self.shared.rollouts.hold(pool)
    }

    /// The pool a deploy that names none uses.
    pub fn default_pool(&self) -> &PoolName {
        &self.shared.default_pool
    }

    /// A cluster's desired state, as this server's copy has it.
    pub fn record(&self, cluster: &ClusterName) -> Option<flotilla_domain::ClusterRecord> {
        self.shared.desired.get(cluster)
    }

    /// Every cluster with a record, with nodes, or of an organisation.
    pub fn cluster_names(&self) -> std::collections::BTreeSet<ClusterName> {
        let mut names: std::collections::BTreeSet<ClusterName> =
            self.shared.desired.names().into_iter().collect();
        names.extend(self.shared.observed.names());
        for set in self.shared.inventory.lock().unwrap().values() {
            names.extend(set.clusters.keys().cloned());
        }
        names.extend(self.shared.orgs.names());
        names
    }

    /// Whether shutdown has begun (commands are refused from then on).
    pub fn is_stopping(&self) -> bool {
        *self.shared.stop.borrow()
    }

    /// Resolves once this server's copies hold every change committed
    /// before the call (and, if it leads, its loops are woken for them).
    pub async fn catch_up(&self) {
        reflector::catch_up(&self.shared).await;
    }

    /// The count of reconciles completed since the engine started (as
    /// `flotilla_reconciles_total`), cheap enough for the benchmarks to
    /// poll every millisecond without taking the engine's CPU.
    pub fn reconcile_count(&self) -> ReconcileCount {
        self.shared.metrics.reconcile_count()
    }

    /// Whether this server holds the lease now (and runs the loops).
    pub fn leading(&self) -> bool {
        self.shared.leadership.fence().is_some()
    }

    /// The lease this server holds now, if it leads: what a loop run
    /// outside the engine (the drop box) writes under.
    pub fn fence(&self) -> Option<flotilla_store::Fence> {
        self.shared.leadership.fence()
    }

    /// Gives the job runner how attempts' instances start their agent
    /// (once; until then jobs wait, saying so). False if it had one.
    pub fn set_attempt_boot(&self, boot: Arc<dyn AttemptBoot>) -> bool {
        self.shared.jobs.set_boot(boot)
    }

    /// Every change any server commits, as this server's reflector reads
    /// it (a lagging subscriber misses the oldest).
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Change> {
        self.shared.changes.subscribe()
    }
}
