//! Instrumentation wrapped around what the engine is given, so the
//! benchmark sees what the engine does without any hook inside it:
//!
//! - [`Tap`] wraps the instance set (outermost, around the production
//!   `Metered(Throttled(..))` stack) and records when listings start and end
//!   and when the first create for each cluster is asked for;
//! - [`CountingStore`] wraps the store and counts every write, so steady
//!   state can be shown to write nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_cloud::{CloudError, CreateRequest, Health, Instance, InstanceSet, Offering, Tags};
use flotilla_domain::{
    Change, ChangeEntity, ClusterName, ClusterRecord, DeployCommand, InstanceId, InstanceSetId,
    InstanceType, LedgerEntry, Level, NodeMeter, NodeRecord, OrgEvent, OrgName, Organisation,
    PoolName, Username,
};
use flotilla_engine::ReconcileCount;
use flotilla_store::{
    AccountRecord, AccountStore, ChangeFeed, CostRow, Fence, Lease, LeaseStore, OrgChange,
    OrgChanged, OrgStore, OrgUsage, RefreshTokenRecord, Rotation, Store, StoreError,
};
use tokio::sync::Notify;
use tokio::time::Instant;

/// One listing of the instance set, as the engine asked for it.
#[derive(Debug, Clone)]
pub struct ListEvent {
    pub started: Instant,
    pub finished: Option<Instant>,
    /// Reconciles the engine had completed when the listing began (read from
    /// its metrics), so a pass's own reconciles can be told apart.
    pub reconciles_before: Option<u64>,
    /// Probe calls made before the listing began.
    pub probes_before: u64,
}

/// The instance set the engine drives, with a recorder in front.
pub struct Tap {
    inner: Arc<dyn InstanceSet>,
    reconciles: OnceLock<ReconcileCount>,
    lists: Mutex<Vec<ListEvent>>,
    first_create: Mutex<HashMap<ClusterName, Instant>>,
    created: Notify,
    probes: AtomicU64,
    /// Destroy calls the engine made (a batch is one).
    destroy_calls: AtomicU64,
}

impl Tap {
    pub fn new(inner: Arc<dyn InstanceSet>) -> Self {
        Self {
            inner,
            reconciles: OnceLock::new(),
            lists: Mutex::new(Vec::new()),
            first_create: Mutex::new(HashMap::new()),
            created: Notify::new(),
            probes: AtomicU64::new(0),
            destroy_calls: AtomicU64::new(0),
        }
    }

    /// Destroy calls so far, a batch counted once.
    pub fn destroy_calls(&self) -> u64 {
        self.destroy_calls.load(Ordering::SeqCst)
    }

    /// Probe calls so far.
    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::SeqCst)
    }

    /// Gives the tap the engine's reconcile count, once the engine has
    /// started, so each later listing records it at its start. The first
    /// engine attached (the leader) is the one counted.
    pub fn attach(&self, reconciles: ReconcileCount) {
        let _ = self.reconciles.set(reconciles);
    }

    /// Every listing so far, oldest first.
    pub fn lists(&self) -> Vec<ListEvent> {
        self.lists.lock().unwrap().clone()
    }

    pub fn list_count(&self) -> usize {
        self.lists.lock().unwrap().len()
    }

    /// Waits until a create for `cluster` has been asked for, or `limit`
    /// passes; returns when the first one was.
    pub async fn first_create(&self, cluster: &ClusterName, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.created.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(at) = self.first_create.lock().unwrap().get(cluster) {
                return Some(*at);
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }
}

#[async_trait]
impl InstanceSet for Tap {
    fn id(&self) -> &InstanceSetId {
        self.inner.id()
    }

    fn max_batch(&self) -> u32 {
        self.inner.max_batch()
    }

    async fn create(&self, request: &CreateRequest) -> Result<Vec<Instance>, CloudError> {
        let now = Instant::now();
        self.first_create
            .lock()
            .unwrap()
            .entry(request.cluster.clone())
            .or_insert(now);
        self.created.notify_waiters();
        self.inner.create(request).await
    }

    async fn list(&self, filter: &Tags) -> Result<Vec<Instance>, CloudError> {
        let reconciles_before = self.reconciles.get().map(ReconcileCount::get);
        let index = {
            let mut lists = self.lists.lock().unwrap();
            lists.push(ListEvent {
                started: Instant::now(),
                finished: None,
                reconciles_before,
                probes_before: self.probes(),
            });
            lists.len() - 1
        };
        let result = self.inner.list(filter).await;
        self.lists.lock().unwrap()[index].finished = Some(Instant::now());
        result
    }

    async fn destroy(&self, id: &InstanceId) -> Result<(), CloudError> {
        self.destroy_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.destroy(id).await
    }

    async fn destroy_many(&self, ids: &[InstanceId]) -> Vec<Result<(), CloudError>> {
        self.destroy_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.destroy_many(ids).await
    }

    async fn set_tags(&self, id: &InstanceId, tags: &Tags) -> Result<(), CloudError> {
        self.inner.set_tags(id, tags).await
    }

    async fn probe(&self, instance: &Instance) -> Health {
        self.probes.fetch_add(1, Ordering::SeqCst);
        self.inner.probe(instance).await
    }

    async fn address(&self, instance: &Instance) -> Option<String> {
        self.inner.address(instance).await
    }

    async fn offering(
        &self,
        pool: &PoolName,
        instance_type: &InstanceType,
    ) -> Result<Offering, CloudError> {
        self.inner.offering(pool, instance_type).await
    }
}

/// Counts of what reached the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub deploys: u64,
    pub destroys: u64,
    pub forgets: u64,
    /// Calls of `expire_due`: each is an UPDATE statement on SQLite even
    /// when nothing is due, but only rows it fires change anything.
    pub expire_calls: u64,
    pub expired_rows: u64,
    pub instance_set_ids: u64,
    pub list_clusters: u64,
    /// Calls that may change accounts, grants or refresh tokens.
    pub account_writes: u64,
    /// Calls that may change organisations (changes, expiries, accrual
    /// passes).
    pub org_writes: u64,
    /// Publications of what stands in clusters' way, one per cluster.
    pub obstacle_writes: u64,
    /// Pool errors counted into the store.
    pub pool_error_writes: u64,
}

impl StoreCounts {
    /// Writes that change stored state.
    pub fn writes(&self) -> u64 {
        self.deploys
            + self.destroys
            + self.forgets
            + self.expired_rows
            + self.account_writes
            + self.org_writes
            + self.obstacle_writes
            + self.pool_error_writes
    }

    pub fn since(&self, earlier: &StoreCounts) -> StoreCounts {
        StoreCounts {
            deploys: self.deploys - earlier.deploys,
            destroys: self.destroys - earlier.destroys,
            forgets: self.forgets - earlier.forgets,
            expire_calls: self.expire_calls - earlier.expire_calls,
            expired_rows: self.expired_rows - earlier.expired_rows,
            instance_set_ids: self.instance_set_ids - earlier.instance_set_ids,
            list_clusters: self.list_clusters - earlier.list_clusters,
            account_writes: self.account_writes - earlier.account_writes,
            org_writes: self.org_writes - earlier.org_writes,
            obstacle_writes: self.obstacle_writes - earlier.obstacle_writes,
            pool_error_writes: self.pool_error_writes - earlier.pool_error_writes,
        }
    }
}

#[derive(Default)]
struct Counters {
    deploys: AtomicU64,
    destroys: AtomicU64,
    forgets: AtomicU64,
    expire_calls: AtomicU64,
    expired_rows: AtomicU64,
    instance_set_ids: AtomicU64,
    list_clusters: AtomicU64,
    account_writes: AtomicU64,
    org_writes: AtomicU64,
    obstacle_writes: AtomicU64,
    pool_error_writes: AtomicU64,
}

/// A store that counts the calls made to the store it wraps.
pub struct CountingStore {
    inner: Arc<dyn Store>,
    counters: Counters,
    /// When each `list_clusters` (the resync's read of desired state)
    /// began and how long it took, in call order.
    list_times: Mutex<Vec<(Instant, Duration)>>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            counters: Counters::default(),
            list_times: Mutex::new(Vec::new()),
        }
    }

    pub fn counts(&self) -> StoreCounts {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        StoreCounts {
            deploys: get(&c.deploys),
            destroys: get(&c.destroys),
            forgets: get(&c.forgets),
            expire_calls: get(&c.expire_calls),
            expired_rows: get(&c.expired_rows),
            instance_set_ids: get(&c.instance_set_ids),
            list_clusters: get(&c.list_clusters),
            account_writes: get(&c.account_writes),
            org_writes: get(&c.org_writes),
            obstacle_writes: get(&c.obstacle_writes),
            pool_error_writes: get(&c.pool_error_writes),
        }
    }

    /// How long the `list_clusters` call that began nearest to `at` took
    /// (a resync pass reads desired state while its listing runs).
    pub fn list_time_near(&self, at: Instant) -> Option<Duration> {
        let distance = |t: Instant| t.max(at) - t.min(at);
        self.list_times
            .lock()
            .unwrap()
            .iter()
            .min_by_key(|(started, _)| distance(*started))
            .map(|(_, took)| *took)
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::SeqCst);
}

#[async_trait]
impl Store for CountingStore {
    async fn instance_set_id(&self, driver: &str) -> Result<InstanceSetId, StoreError> {
        bump(&self.counters.instance_set_ids, 1);
        self.inner.instance_set_id(driver).await
    }

    async fn get_cluster(&self, name: &ClusterName) -> Result<Option<ClusterRecord>, StoreError> {
        self.inner.get_cluster(name).await
    }

    async fn list_clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        bump(&self.counters.list_clusters, 1);
        let started = Instant::now();
        let result = self.inner.list_clusters().await;
        self.list_times
            .lock()
            .unwrap()
            .push((started, started.elapsed()));
        result
    }

    async fn deploy(
        &self,
        command: &DeployCommand,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<ClusterRecord, StoreError> {
        bump(&self.counters.deploys, 1);
        self.inner.deploy(command, now, expires_at).await
    }

    async fn extend(
        &self,
        name: &ClusterName,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<ClusterRecord>, StoreError> {
        self.inner.extend(name, now, expires_at).await
    }

    async fn destroy(
        &self,
        name: &ClusterName,
        now: DateTime<Utc>,
    ) -> Result<Option<ClusterRecord>, StoreError> {
        bump(&self.counters.destroys, 1);
        self.inner.destroy(name, now).await
    }

    async fn expire_due(
        &self,
        now: DateTime<Utc>,
        fence: Fence,
    ) -> Result<Vec<ClusterRecord>, StoreError> {
        bump(&self.counters.expire_calls, 1);
        let fired = self.inner.expire_due(now, fence).await?;
        bump(&self.counters.expired_rows, fired.len() as u64);
        Ok(fired)
    }

    async fn next_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner.next_expiry().await
    }

    async fn forget(
        &self,
        name: &ClusterName,
        generation: i64,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        bump(&self.counters.forgets, 1);
        self.inner.forget(name, generation, fence).await
    }
}

#[async_trait]
impl OrgStore for CountingStore {
    async fn create_org(&self, org: &Organisation) -> Result<(), StoreError> {
        bump(&self.counters.org_writes, 1);
        self.inner.create_org(org).await
    }

    async fn get_org(&self, name: &OrgName) -> Result<Option<Organisation>, StoreError> {
        self.inner.get_org(name).await
    }

    async fn list_orgs(&self) -> Result<Vec<Organisation>, StoreError> {
        self.inner.list_orgs().await
    }

    async fn change_org(
        &self,
        name: &OrgName,
        now: DateTime<Utc>,
        change: OrgChange<'_>,
    ) -> Result<OrgChanged, StoreError> {
        bump(&self.counters.org_writes, 1);
        self.inner.change_org(name, now, change).await
    }

    async fn expire_capacity(
        &self,
        now: DateTime<Utc>,
        fence: Fence,
    ) -> Result<Vec<OrgChanged>, StoreError> {
        let changed = self.inner.expire_capacity(now, fence).await?;
        bump(&self.counters.org_writes, changed.len() as u64);
        Ok(changed)
    }

    async fn next_capacity_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner.next_capacity_expiry().await
    }

    async fn accrue(
        &self,
        usage: &[OrgUsage],
        now: DateTime<Utc>,
        fence: Fence,
    ) -> Result<Vec<OrgChanged>, StoreError> {
        bump(&self.counters.org_writes, 1);
        self.inner.accrue(usage, now, fence).await
    }

    async fn ledger(&self, org: &OrgName) -> Result<Vec<LedgerEntry>, StoreError> {
        self.inner.ledger(org).await
    }

    async fn costs(&self, org: &OrgName) -> Result<Vec<CostRow>, StoreError> {
        self.inner.costs(org).await
    }

    async fn usage(&self, org: &OrgName) -> Result<Vec<NodeMeter>, StoreError> {
        self.inner.usage(org).await
    }

    async fn events(&self, org: &OrgName, limit: usize) -> Result<Vec<OrgEvent>, StoreError> {
        self.inner.events(org, limit).await
    }
}

#[async_trait]
impl LeaseStore for CountingStore {
    async fn acquire_lease(
        &self,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<Fence>, StoreError> {
        self.inner.acquire_lease(holder, ttl, now).await
    }

    async fn renew_lease(
        &self,
        holder: &str,
        fence: Fence,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.inner.renew_lease(holder, fence, ttl, now).await
    }

    async fn release_lease(&self, holder: &str, fence: Fence) -> Result<(), StoreError> {
        self.inner.release_lease(holder, fence).await
    }

    async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        self.inner.lease().await
    }

    async fn publish_nodes(
        &self,
        fence: Fence,
        clusters: &[flotilla_store::ClusterNodes],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.publish_nodes(fence, clusters, now).await
    }

    async fn published_nodes(
        &self,
        cluster: Option<&ClusterName>,
    ) -> Result<Vec<(ClusterName, NodeRecord)>, StoreError> {
        self.inner.published_nodes(cluster).await
    }

    async fn publish_obstacles(
        &self,
        fence: Fence,
        obstacles: &[flotilla_store::ClusterObstacle],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        bump(&self.counters.obstacle_writes, obstacles.len() as u64);
        self.inner.publish_obstacles(fence, obstacles, now).await
    }

    async fn published_obstacles(
        &self,
    ) -> Result<Vec<(ClusterName, flotilla_domain::Obstacle)>, StoreError> {
        self.inner.published_obstacles().await
    }

    async fn record_pool_errors(
        &self,
        fence: Fence,
        errors: &[flotilla_domain::PoolError],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        bump(&self.counters.pool_error_writes, errors.len() as u64);
        self.inner.record_pool_errors(fence, errors, now).await
    }

    async fn pool_errors(
        &self,
        pool: &PoolName,
        only: Option<&[ClusterName]>,
        limit: usize,
    ) -> Result<Vec<flotilla_domain::PoolError>, StoreError> {
        self.inner.pool_errors(pool, only, limit).await
    }

    async fn prune_pool_errors(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.prune_pool_errors(before).await
    }
}

#[async_trait]
impl flotilla_store::SharedConfigStore for CountingStore {
    async fn write_shared_config(
        &self,
        write: &flotilla_store::SharedConfigWrite,
        now: DateTime<Utc>,
    ) -> Result<flotilla_store::SharedConfigRecord, StoreError> {
        self.inner.write_shared_config(write, now).await
    }

    async fn shared_configs(&self) -> Result<Vec<flotilla_store::SharedConfigRecord>, StoreError> {
        self.inner.shared_configs().await
    }

    async fn shared_config_versions(
        &self,
        name: &flotilla_domain::SharedConfigName,
    ) -> Result<Vec<flotilla_store::SharedConfigRecord>, StoreError> {
        self.inner.shared_config_versions(name).await
    }
}

#[async_trait]
impl flotilla_store::RolloutStore for CountingStore {
    async fn pause_rollout(
        &self,
        pool: &PoolName,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<flotilla_store::RolloutHold, StoreError> {
        self.inner.pause_rollout(pool, by, now).await
    }

    async fn resume_rollout(
        &self,
        pool: &PoolName,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.inner.resume_rollout(pool, by, now).await
    }

    async fn stop_rollout(
        &self,
        fence: Fence,
        pool: &PoolName,
        stop: &flotilla_store::RolloutStop,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.stop_rollout(fence, pool, stop, now).await
    }

    async fn rollout_holds(&self) -> Result<Vec<flotilla_store::RolloutHold>, StoreError> {
        self.inner.rollout_holds().await
    }
}

#[async_trait]
impl flotilla_store::PoolStore for CountingStore {
    async fn write_pool(
        &self,
        write: &flotilla_store::PoolWrite,
        now: DateTime<Utc>,
    ) -> Result<flotilla_store::PoolRecord, StoreError> {
        self.inner.write_pool(write, now).await
    }

    async fn pools(&self) -> Result<Vec<flotilla_store::PoolRecord>, StoreError> {
        self.inner.pools().await
    }

    async fn pool_history(
        &self,
        name: &PoolName,
    ) -> Result<Vec<flotilla_store::PoolRecord>, StoreError> {
        self.inner.pool_history(name).await
    }
}

#[async_trait]
impl ChangeFeed for CountingStore {
    fn change_notices(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.change_notices()
    }

    async fn changes(
        &self,
        after: i64,
        limit: usize,
        only: Option<(ChangeEntity, &str)>,
    ) -> Result<Vec<Change>, StoreError> {
        self.inner.changes(after, limit, only).await
    }

    async fn last_change(&self) -> Result<i64, StoreError> {
        self.inner.last_change().await
    }

    async fn prune_changes(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.prune_changes(before).await
    }
}

#[async_trait]
impl AccountStore for CountingStore {
    async fn create_account(&self, account: &AccountRecord) -> Result<(), StoreError> {
        bump(&self.counters.account_writes, 1);
        self.inner.create_account(account).await
    }

    async fn create_first_admin(&self, account: &AccountRecord) -> Result<bool, StoreError> {
        bump(&self.counters.account_writes, 1);
        self.inner.create_first_admin(account).await
    }

    async fn get_account(&self, username: &Username) -> Result<Option<AccountRecord>, StoreError> {
        self.inner.get_account(username).await
    }

    async fn list_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        self.inner.list_accounts().await
    }

    async fn set_level(
        &self,
        username: &Username,
        level: Level,
    ) -> Result<Option<AccountRecord>, StoreError> {
        bump(&self.counters.account_writes, 1);
        self.inner.set_level(username, level).await
    }

    async fn set_grants(
        &self,
        username: &Username,
        grants: &BTreeSet<ClusterName>,
    ) -> Result<Option<AccountRecord>, StoreError> {
        bump(&self.counters.account_writes, 1);
        self.inner.set_grants(username, grants).await
    }

    async fn delete_account(&self, username: &Username) -> Result<bool, StoreError> {
        bump(&self.counters.account_writes, 1);
        self.inner.delete_account(username).await
    }

    async fn upsert_github_account(
        &self,
        username: &Username,
        level: Level,
        now: DateTime<Utc>,
    ) -> Result<AccountRecord, StoreError> {
        bump(&self.counters.account_writes, 1);
        self.inner.upsert_github_account(username, level, now).await
    }

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> Result<(), StoreError> {
        bump(&self.counters.account_writes, 1);
        self.inner.insert_refresh_token(token).await
    }

    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next_id: &str,
        next_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Rotation, StoreError> {
        bump(&self.counters.account_writes, 1);
        self.inner
            .rotate_refresh_token(presented, next_id, next_expires_at, now)
            .await
    }

    async fn revoke_refresh_family(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        bump(&self.counters.account_writes, 1);
        self.inner.revoke_refresh_family(presented, now).await
    }

    async fn revoke_refresh_tokens(
        &self,
        username: &Username,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        bump(&self.counters.account_writes, 1);
        self.inner.revoke_refresh_tokens(username, now).await
    }

    async fn signing_keys(&self) -> Result<Vec<flotilla_store::SigningKeyRecord>, StoreError> {
        self.inner.signing_keys().await
    }

    async fn add_signing_keys(
        &self,
        keys: &[flotilla_store::SigningKeyRecord],
        how: flotilla_store::AddKeys,
    ) -> Result<bool, StoreError> {
        bump(&self.counters.account_writes, 1);
        self.inner.add_signing_keys(keys, how).await
    }

    async fn retire_signing_key(&self, kid: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        bump(&self.counters.account_writes, 1);
        self.inner.retire_signing_key(kid, now).await
    }
}

#[async_trait]
impl flotilla_store::JobStore for CountingStore {
    async fn submit_job(
        &self,
        job: &flotilla_store::NewJob,
        now: DateTime<Utc>,
    ) -> Result<flotilla_store::JobRecord, StoreError> {
        self.inner.submit_job(job, now).await
    }

    async fn job(
        &self,
        id: flotilla_store::JobId,
    ) -> Result<Option<flotilla_store::JobRecord>, StoreError> {
        self.inner.job(id).await
    }

    async fn jobs(
        &self,
        submitted_by: Option<&str>,
        limit: usize,
    ) -> Result<Vec<flotilla_store::JobRecord>, StoreError> {
        self.inner.jobs(submitted_by, limit).await
    }

    async fn live_jobs(&self) -> Result<Vec<flotilla_store::JobRecord>, StoreError> {
        self.inner.live_jobs().await
    }

    async fn step_job(
        &self,
        id: flotilla_store::JobId,
        version: Option<u64>,
        step: &flotilla_store::JobStep,
        fence: Option<Fence>,
        now: DateTime<Utc>,
    ) -> Result<flotilla_store::JobRecord, StoreError> {
        self.inner.step_job(id, version, step, fence, now).await
    }

    async fn meter_job_instances(
        &self,
        fence: Fence,
        listed: &[flotilla_domain::NodeMeter],
        unwatched: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner
            .meter_job_instances(fence, listed, unwatched, now)
            .await
    }
}

#[async_trait]
impl flotilla_store::DropboxStore for CountingStore {
    async fn note_trigger(
        &self,
        trigger: &flotilla_store::HandledTrigger,
        fence: flotilla_store::Fence,
    ) -> Result<bool, StoreError> {
        self.inner.note_trigger(trigger, fence).await
    }

    async fn handled_trigger(
        &self,
        path: &str,
        digest: &str,
    ) -> Result<Option<flotilla_store::HandledTrigger>, StoreError> {
        self.inner.handled_trigger(path, digest).await
    }

    async fn handled_triggers(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<flotilla_store::HandledTrigger>, StoreError> {
        self.inner.handled_triggers(since).await
    }

    async fn forget_triggers(
        &self,
        before: DateTime<Utc>,
        fence: flotilla_store::Fence,
    ) -> Result<u64, StoreError> {
        self.inner.forget_triggers(before, fence).await
    }
}

#[async_trait]
impl flotilla_store::NotifyStore for CountingStore {
    async fn add_subscription(
        &self,
        new: &flotilla_store::NewSubscription,
        at: DateTime<Utc>,
    ) -> Result<flotilla_store::Subscription, StoreError> {
        self.inner.add_subscription(new, at).await
    }

    async fn subscriptions(
        &self,
        account: Option<&str>,
    ) -> Result<Vec<flotilla_store::Subscription>, StoreError> {
        self.inner.subscriptions(account).await
    }

    async fn remove_subscription(&self, id: i64) -> Result<bool, StoreError> {
        self.inner.remove_subscription(id).await
    }

    async fn enable_subscription(&self, id: i64) -> Result<bool, StoreError> {
        self.inner.enable_subscription(id).await
    }

    async fn notify_cursor(&self) -> Result<Option<i64>, StoreError> {
        self.inner.notify_cursor().await
    }

    async fn queue_deliveries(
        &self,
        upto: i64,
        deliveries: &[flotilla_store::NewDelivery],
        at: DateTime<Utc>,
        fence: flotilla_store::Fence,
    ) -> Result<u64, StoreError> {
        self.inner
            .queue_deliveries(upto, deliveries, at, fence)
            .await
    }

    async fn queue_test(
        &self,
        subscription: i64,
        event: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<Option<flotilla_store::Delivery>, StoreError> {
        self.inner.queue_test(subscription, event, at).await
    }

    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        per_subscription: usize,
    ) -> Result<Vec<flotilla_store::Delivery>, StoreError> {
        self.inner
            .due_deliveries(now, limit, per_subscription)
            .await
    }

    async fn deliveries(
        &self,
        account: Option<&str>,
        limit: usize,
    ) -> Result<Vec<flotilla_store::Delivery>, StoreError> {
        self.inner.deliveries(account, limit).await
    }

    async fn recent_deliveries(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<flotilla_store::Delivery>, StoreError> {
        self.inner.recent_deliveries(since).await
    }

    async fn finish_delivery(
        &self,
        id: i64,
        outcome: &flotilla_store::DeliveryOutcome,
        at: DateTime<Utc>,
        counts: Option<u32>,
        fence: flotilla_store::Fence,
    ) -> Result<Option<flotilla_store::Subscription>, StoreError> {
        self.inner
            .finish_delivery(id, outcome, at, counts, fence)
            .await
    }

    async fn forget_deliveries(
        &self,
        before: DateTime<Utc>,
        fence: flotilla_store::Fence,
    ) -> Result<u64, StoreError> {
        self.inner.forget_deliveries(before, fence).await
    }
}

#[async_trait]
impl flotilla_store::ScheduleStore for CountingStore {
    async fn create_schedule(
        &self,
        schedule: &flotilla_domain::Schedule,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.create_schedule(schedule, now).await
    }

    async fn schedules(&self) -> Result<Vec<flotilla_domain::Schedule>, StoreError> {
        self.inner.schedules().await
    }

    async fn update_schedule(
        &self,
        before: &flotilla_domain::Schedule,
        after: &flotilla_domain::Schedule,
        kind: flotilla_domain::ChangeKind,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.update_schedule(before, after, kind, now).await
    }

    async fn delete_schedule(&self, name: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.inner.delete_schedule(name, now).await
    }

    async fn fire_schedule(
        &self,
        before: &flotilla_domain::Schedule,
        after: &flotilla_domain::Schedule,
        job: Option<&flotilla_store::NewJob>,
        fence: Fence,
        now: DateTime<Utc>,
    ) -> Result<Option<flotilla_store::JobRecord>, StoreError> {
        self.inner
            .fire_schedule(before, after, job, fence, now)
            .await
    }
}
