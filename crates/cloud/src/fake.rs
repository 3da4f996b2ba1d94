//! An in-memory cloud with fault knobs, for tests, simulations and
//! benchmarks (after Arvados' `test.StubDriver`). Seeded, and run on tokio's
//! clock, so a test under paused time sees the same faults every run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flotilla_domain::{ClusterName, InstanceId, InstanceSetId, InstanceType, PoolName};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::clock::{Clock, TokioClock};
use crate::contract::{
    check_tag_update, matches_filter, CapacityScope, CloudError, Console, CreateRequest,
    ExecOutput, Health, Instance, InstanceSet, InstanceShape, Offering, Tags,
};

/// The shape the fake gives every instance type, so the engine's and the
/// API's handling of shapes can be seen without a real cloud.
pub const FAKE_SHAPE: InstanceShape = InstanceShape {
    vcpus: 2,
    memory_mib: 4096,
};

/// Fault knobs. Rates are probabilities per call (or per node) in `0..=1`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FakeConfig {
    pub seed: u64,
    /// Time from create until a node answers probes.
    #[serde(with = "humantime_serde")]
    pub boot_delay: Duration,
    /// Time from destroy until the instance leaves the listing.
    #[serde(with = "humantime_serde")]
    pub destroy_delay: Duration,
    pub create_error_rate: f64,
    pub destroy_error_rate: f64,
    /// Calls beyond this many in one second fail with `RateLimited`.
    pub rate_limit_above: Option<u32>,
    /// Most instances (of all sets) alive at once.
    pub quota: Option<usize>,
    /// Instance types the cloud never has capacity for.
    pub unavailable_types: Vec<String>,
    /// Share of nodes that never become healthy.
    pub never_healthy_rate: f64,
    /// Share of nodes that vanish at a random moment within `death_within`.
    pub death_rate: f64,
    #[serde(with = "humantime_serde")]
    pub death_within: Duration,
    pub max_batch: u32,
    /// Every probe fails on this side, as when the server is out of file
    /// descriptors: [`Health::Unknown`].
    pub probes_fail_locally: bool,
    /// Every create is refused with this permanent error, as when a pool
    /// names an instance profile the account does not have.
    pub refuse_creates: Option<String>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            boot_delay: Duration::ZERO,
            destroy_delay: Duration::ZERO,
            create_error_rate: 0.0,
            destroy_error_rate: 0.0,
            rate_limit_above: None,
            quota: None,
            unavailable_types: Vec::new(),
            never_healthy_rate: 0.0,
            death_rate: 0.0,
            death_within: Duration::from_secs(60),
            max_batch: 50,
            probes_fail_locally: false,
            refuse_creates: None,
        }
    }
}

/// Which calls a [`FakeCloud::hold`] blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeOp {
    Create,
    List,
    Destroy,
    SetTags,
    Offering,
}

/// Counters of what reached the fake cloud.
#[derive(Debug, Clone, Default)]
pub struct FakeStats {
    pub creates: u64,
    pub lists: u64,
    pub destroys: u64,
    pub set_tags: u64,
    pub offerings: u64,
    pub instances_created: u64,
    pub injected_errors: u64,
    pub rate_limited: u64,
    pub peak_instances: usize,
}

impl FakeStats {
    pub fn calls(&self) -> u64 {
        self.creates + self.lists + self.destroys + self.set_tags + self.offerings
    }

    pub fn writes(&self) -> u64 {
        self.creates + self.destroys + self.set_tags
    }
}

/// One create call as the cloud saw it, for audits in tests.
#[derive(Debug, Clone)]
pub struct CreateRecord {
    pub cluster: String,
    pub at: Instant,
    pub count: usize,
    /// The image the request named.
    pub image: Option<String>,
}

struct FakeInstance {
    /// Shared so that a listing copies pointers under the world's lock and
    /// the instances themselves after releasing it, as a real cloud would
    /// not stall a create behind a listing.
    instance: Arc<Instance>,
    healthy_from: Option<Instant>,
    dies_at: Option<Instant>,
    destroyed_at: Option<Instant>,
}

struct World {
    config: FakeConfig,
    rng: StdRng,
    next_id: u64,
    instances: BTreeMap<InstanceId, FakeInstance>,
    window: (Instant, u32),
    stats: FakeStats,
    creates: Vec<CreateRecord>,
    holds: HashMap<FakeOp, Arc<Semaphore>>,
    /// When instances are due to leave (death, or the end of shutting
    /// down), so that a sweep costs what is due rather than a scan of every
    /// instance under the lock, which a 10 000-node benchmark would mostly
    /// spend measuring. Entries may be stale; a sweep checks each.
    endings: BTreeSet<(Instant, InstanceId)>,
    /// The destroy delay `endings` was computed with.
    endings_delay: Duration,
    /// Left out of their set's next listing.
    hidden: BTreeSet<InstanceId>,
}

impl FakeInstance {
    fn ending(&self, destroy_delay: Duration) -> Option<Instant> {
        let gone = self.destroyed_at.map(|t| t + destroy_delay);
        match (self.dies_at, gone) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl World {
    fn schedule_ending(&mut self, id: &InstanceId) {
        if let Some(at) = self
            .instances
            .get(id)
            .and_then(|i| i.ending(self.config.destroy_delay))
        {
            self.endings.insert((at, id.clone()));
        }
    }

    /// Drops instances that died or finished shutting down.
    fn sweep(&mut self, now: Instant) {
        let delay = self.config.destroy_delay;
        if delay != self.endings_delay {
            // Reconfigured: every pending ending may have moved.
            self.endings_delay = delay;
            self.endings = self
                .instances
                .iter()
                .filter_map(|(id, i)| i.ending(delay).map(|at| (at, id.clone())))
                .collect();
        }
        while let Some((at, id)) = self.endings.first().cloned() {
            if at > now {
                break;
            }
            self.endings.pop_first();
            if self
                .instances
                .get(&id)
                .and_then(|i| i.ending(delay))
                .is_some_and(|t| t <= now)
            {
                self.instances.remove(&id);
            }
        }
    }

    /// Counts a call against the rate limit; true if it must be refused.
    fn over_rate(&mut self, now: Instant) -> Option<Instant> {
        let limit = self.config.rate_limit_above?;
        if now - self.window.0 >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 += 1;
        (self.window.1 > limit).then(|| self.window.0 + Duration::from_secs(1))
    }

    fn roll(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.rng.gen_bool(rate.min(1.0))
    }
}

/// The fake cloud: one world, shared by any number of instance sets.
#[derive(Clone)]
pub struct FakeCloud {
    world: Arc<Mutex<World>>,
    clock: TokioClock,
}

impl FakeCloud {
    pub fn new(config: FakeConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self {
            world: Arc::new(Mutex::new(World {
                config,
                rng,
                next_id: 1,
                instances: BTreeMap::new(),
                window: (Instant::now(), 0),
                stats: FakeStats::default(),
                creates: Vec::new(),
                holds: HashMap::new(),
                endings: BTreeSet::new(),
                endings_delay: Duration::ZERO,
                hidden: BTreeSet::new(),
            })),
            clock: TokioClock::default(),
        }
    }

    pub fn instance_set(&self, id: &str) -> FakeInstanceSet {
        let id = InstanceSetId::new(id).expect("valid instance set id");
        let foreign = {
            let w = self.world.lock().unwrap();
            w.instances
                .values()
                .filter(|i| i.instance.instance_set() != Some(id.as_str()))
                .count()
        };
        if foreign > 0 {
            tracing::info!(instance_set = %id, foreign, "fake cloud holds instances of other instance sets; leaving them alone");
        }
        FakeInstanceSet {
            cloud: self.clone(),
            id,
        }
    }

    pub fn stats(&self) -> FakeStats {
        self.world.lock().unwrap().stats.clone()
    }

    pub fn create_log(&self) -> Vec<CreateRecord> {
        self.world.lock().unwrap().creates.clone()
    }

    /// Live instances of every set (as a listing would show them).
    pub fn instance_count(&self) -> usize {
        let mut w = self.world.lock().unwrap();
        w.sweep(Instant::now());
        w.instances.len()
    }

    /// Changes the fault knobs from now on.
    pub fn reconfigure(&self, f: impl FnOnce(&mut FakeConfig)) {
        f(&mut self.world.lock().unwrap().config);
    }

    /// The node vanishes from the cloud, as after a hardware failure.
    pub fn kill(&self, id: &InstanceId) {
        self.world.lock().unwrap().instances.remove(id);
    }

    /// The node is left out of its set's next listing, as an eventually
    /// consistent cloud (EC2) may leave out an instance just made.
    pub fn hide_once(&self, id: &InstanceId) {
        self.world.lock().unwrap().hidden.insert(id.clone());
    }

    /// The node stays listed but stops answering probes.
    pub fn sicken(&self, id: &InstanceId) {
        if let Some(i) = self.world.lock().unwrap().instances.get_mut(id) {
            i.healthy_from = None;
        }
    }

    /// Adds an instance as another tool would, with the given tags.
    pub fn insert_foreign(&self, tags: Tags) -> InstanceId {
        let mut w = self.world.lock().unwrap();
        let id = InstanceId::new(format!("fake-{:06}", w.next_id));
        w.next_id += 1;
        let instance = Instance {
            id: id.clone(),
            instance_type: InstanceType::new("foreign").unwrap(),
            tags,
            address: None,
            launched_at: self.clock.now(),
        };
        w.instances.insert(
            id.clone(),
            FakeInstance {
                instance: Arc::new(instance),
                healthy_from: Some(Instant::now()),
                dies_at: None,
                destroyed_at: None,
            },
        );
        id
    }

    /// Blocks every call of `op` until the returned guard is released or
    /// dropped.
    pub fn hold(&self, op: FakeOp) -> Hold {
        let sem = Arc::new(Semaphore::new(0));
        self.world.lock().unwrap().holds.insert(op, sem.clone());
        Hold {
            cloud: self.clone(),
            op,
            sem,
        }
    }

    async fn gate(&self, op: FakeOp) {
        let sem = self.world.lock().unwrap().holds.get(&op).cloned();
        if let Some(sem) = sem {
            // A closed semaphore is the release.
            let _ = sem.acquire().await;
        }
    }
}

/// Calls of one operation wait while this is held.
pub struct Hold {
    cloud: FakeCloud,
    op: FakeOp,
    sem: Arc<Semaphore>,
}

impl Hold {
    pub fn release(self) {}
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.sem.close();
        let mut w = self.cloud.world.lock().unwrap();
        if w.holds
            .get(&self.op)
            .is_some_and(|s| Arc::ptr_eq(s, &self.sem))
        {
            w.holds.remove(&self.op);
        }
    }
}

pub struct FakeInstanceSet {
    cloud: FakeCloud,
    id: InstanceSetId,
}

impl FakeInstanceSet {
    pub fn cloud(&self) -> &FakeCloud {
        &self.cloud
    }

    fn owned<'a>(
        &self,
        w: &'a mut World,
        id: &InstanceId,
    ) -> Result<Option<&'a mut FakeInstance>, CloudError> {
        match w.instances.get_mut(id) {
            None => Ok(None),
            Some(i) if i.instance.instance_set() == Some(self.id.as_str()) => Ok(Some(i)),
            Some(_) => Err(CloudError::not_owned(id, &self.id)),
        }
    }

    /// Common prologue of every cloud call: count it, apply the rate limit.
    fn enter(&self, w: &mut World, op: FakeOp, now: Instant) -> Result<(), CloudError> {
        match op {
            FakeOp::Create => w.stats.creates += 1,
            FakeOp::List => w.stats.lists += 1,
            FakeOp::Destroy => w.stats.destroys += 1,
            FakeOp::SetTags => w.stats.set_tags += 1,
            FakeOp::Offering => w.stats.offerings += 1,
        }
        w.sweep(now);
        if let Some(earliest_retry) = w.over_rate(now) {
            w.stats.rate_limited += 1;
            return Err(CloudError::RateLimited {
                earliest_retry,
                message: "RequestLimitExceeded (fake)".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl InstanceSet for FakeInstanceSet {
    fn id(&self) -> &InstanceSetId {
        &self.id
    }

    fn max_batch(&self) -> u32 {
        self.cloud.world.lock().unwrap().config.max_batch.max(1)
    }

    async fn create(&self, request: &CreateRequest) -> Result<Vec<Instance>, CloudError> {
        let started = Instant::now();
        self.cloud.gate(FakeOp::Create).await;
        let now = Instant::now();
        let mut w = self.cloud.world.lock().unwrap();
        self.enter(&mut w, FakeOp::Create, now)?;
        let max_batch = w.config.max_batch.max(1);
        if request.count == 0 || request.count > max_batch {
            return Err(CloudError::permanent(format!(
                "create count {} is outside 1..={max_batch}",
                request.count
            )));
        }
        if let Some(message) = &w.config.refuse_creates {
            return Err(CloudError::permanent(message.clone()));
        }
        let error_rate = w.config.create_error_rate;
        if w.roll(error_rate) {
            w.stats.injected_errors += 1;
            return Err(CloudError::transient("injected create failure"));
        }
        if w.config
            .unavailable_types
            .iter()
            .any(|t| t == request.instance_type.as_str())
        {
            return Err(CloudError::InsufficientCapacity {
                scope: CapacityScope::InstanceType(request.instance_type.clone()),
                message: format!("no capacity for {} (fake)", request.instance_type),
            });
        }
        let mut count = request.count as usize;
        if let Some(quota) = w.config.quota {
            let room = quota.saturating_sub(w.instances.len());
            if room == 0 {
                return Err(CloudError::QuotaExceeded {
                    message: format!("instance quota of {quota} reached (fake)"),
                });
            }
            count = count.min(room);
        }
        w.creates.push(CreateRecord {
            cluster: request.cluster.to_string(),
            at: started,
            count,
            image: request.image.clone(),
        });
        let tags = request.instance_tags(&self.id);
        let mut made = Vec::with_capacity(count);
        for _ in 0..count {
            let id = InstanceId::new(format!("fake-{:06}", w.next_id));
            w.next_id += 1;
            let never_healthy = w.config.never_healthy_rate;
            let healthy_from = (!w.roll(never_healthy)).then_some(now + w.config.boot_delay);
            let death_rate = w.config.death_rate;
            let dies_at = if w.roll(death_rate) {
                let within = w.config.death_within.as_millis().max(1) as u64;
                Some(now + Duration::from_millis(w.rng.gen_range(0..within)))
            } else {
                None
            };
            let instance = Instance {
                id: id.clone(),
                instance_type: request.instance_type.clone(),
                tags: tags.clone(),
                address: Some(format!("fake://{id}")),
                launched_at: self.cloud.clock.now(),
            };
            made.push(instance.clone());
            w.instances.insert(
                id.clone(),
                FakeInstance {
                    instance: Arc::new(instance),
                    healthy_from,
                    dies_at,
                    destroyed_at: None,
                },
            );
            w.schedule_ending(&id);
        }
        w.stats.instances_created += made.len() as u64;
        w.stats.peak_instances = w.stats.peak_instances.max(w.instances.len());
        Ok(made)
    }

    async fn list(&self, filter: &Tags) -> Result<Vec<Instance>, CloudError> {
        self.cloud.gate(FakeOp::List).await;
        let now = Instant::now();
        let listed: Vec<Arc<Instance>> = {
            let mut w = self.cloud.world.lock().unwrap();
            self.enter(&mut w, FakeOp::List, now)?;
            let listed: Vec<Arc<Instance>> = w
                .instances
                .values()
                .filter(|i| i.instance.instance_set() == Some(self.id.as_str()))
                .filter(|i| !w.hidden.contains(&i.instance.id))
                .map(|i| Arc::clone(&i.instance))
                .collect();
            let set = self.id.as_str();
            let instances = &w.instances;
            let mine: Vec<InstanceId> = w
                .hidden
                .iter()
                .filter(|id| {
                    instances
                        .get(*id)
                        .is_none_or(|i| i.instance.instance_set() == Some(set))
                })
                .cloned()
                .collect();
            for id in mine {
                w.hidden.remove(&id);
            }
            listed
        };
        Ok(listed
            .iter()
            .filter(|i| matches_filter(&i.tags, filter))
            .map(|i| Instance::clone(i))
            .collect())
    }

    async fn destroy(&self, id: &InstanceId) -> Result<(), CloudError> {
        self.cloud.gate(FakeOp::Destroy).await;
        let now = Instant::now();
        let mut w = self.cloud.world.lock().unwrap();
        self.enter(&mut w, FakeOp::Destroy, now)?;
        let error_rate = w.config.destroy_error_rate;
        if w.roll(error_rate) {
            w.stats.injected_errors += 1;
            return Err(CloudError::transient("injected destroy failure"));
        }
        let delay_zero = w.config.destroy_delay.is_zero();
        match self.owned(&mut w, id)? {
            None => Ok(()),
            Some(i) => {
                i.destroyed_at.get_or_insert(now);
                i.healthy_from = None;
                if delay_zero {
                    w.instances.remove(id);
                } else {
                    w.schedule_ending(id);
                }
                Ok(())
            }
        }
    }

    async fn set_tags(&self, id: &InstanceId, tags: &Tags) -> Result<(), CloudError> {
        self.cloud.gate(FakeOp::SetTags).await;
        check_tag_update(tags)?;
        let now = Instant::now();
        let mut w = self.cloud.world.lock().unwrap();
        self.enter(&mut w, FakeOp::SetTags, now)?;
        match self.owned(&mut w, id)? {
            None => Err(CloudError::permanent(format!(
                "instance {id} does not exist"
            ))),
            Some(i) => {
                Arc::make_mut(&mut i.instance).tags.extend(tags.clone());
                Ok(())
            }
        }
    }

    async fn probe(&self, instance: &Instance) -> Health {
        let now = Instant::now();
        let mut w = self.cloud.world.lock().unwrap();
        w.sweep(now);
        if w.config.probes_fail_locally {
            return Health::Unknown;
        }
        match w.instances.get(&instance.id) {
            Some(i) if i.healthy_from.is_some_and(|t| t <= now) => Health::Ready,
            _ => Health::NotReady,
        }
    }

    async fn address(&self, instance: &Instance) -> Option<String> {
        let w = self.cloud.world.lock().unwrap();
        w.instances
            .get(&instance.id)
            .and_then(|i| i.instance.address.clone())
    }

    /// Every type has [`FAKE_SHAPE`]; the fake has no spot market.
    async fn offering(&self, _: &PoolName, _: &InstanceType) -> Result<Offering, CloudError> {
        self.cloud.gate(FakeOp::Offering).await;
        let now = Instant::now();
        self.enter(&mut self.cloud.world.lock().unwrap(), FakeOp::Offering, now)?;
        Ok(Offering {
            shape: Some(FAKE_SHAPE),
            spot_price: None,
        })
    }

    /// One line per node: the fake cloud keeps no real output.
    async fn console(
        &self,
        id: &InstanceId,
        from: Option<u64>,
        limit: usize,
    ) -> Result<Option<Console>, CloudError> {
        let mut w = self.cloud.world.lock().unwrap();
        let printed = match self.owned(&mut w, id)? {
            Some(i) => format!(
                "fake node {id} ({}) launched {}\n",
                i.instance.instance_type,
                i.instance.launched_at.to_rfc3339()
            ),
            None => String::new(),
        };
        Ok(Some(Console::window(printed.as_bytes(), from, limit)))
    }

    /// Echoes the command: the fake cloud runs nothing.
    async fn exec(
        &self,
        id: &InstanceId,
        argv: &[String],
        _timeout: Duration,
        _limit: usize,
    ) -> Result<Option<ExecOutput>, CloudError> {
        let mut w = self.cloud.world.lock().unwrap();
        if self.owned(&mut w, id)?.is_none() {
            return Err(CloudError::permanent(format!("instance {id} is gone")));
        }
        Ok(Some(ExecOutput {
            exit_code: Some(0),
            signal: None,
            stdout: format!("{}\n", argv.join(" ")),
            stderr: String::new(),
            timed_out: false,
            truncated: false,
        }))
    }
}

/// A cluster name for fixtures; panics on an invalid one.
pub fn cluster(name: &str) -> ClusterName {
    ClusterName::new(name).expect("valid cluster name")
}

/// A fixture: `count` instances of type `small` from pool `p` for
/// `cluster_name`, with no image, tags or init data.
pub fn request(cluster_name: &str, count: u32) -> CreateRequest {
    CreateRequest {
        cluster: cluster(cluster_name),
        pool: PoolName::new("p").expect("valid pool name"),
        instance_type: InstanceType::new("small").expect("valid instance type"),
        image: None,
        tags: Tags::new(),
        init_data: None,
        workload: None,
        pool_version: None,
        count,
        shutdown_terminates: false,
        market: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn quota_fulfils_partially_then_refuses() {
        let cloud = FakeCloud::new(FakeConfig {
            quota: Some(3),
            ..FakeConfig::default()
        });
        let set = cloud.instance_set("s");
        assert_eq!(set.create(&request("a", 2)).await.unwrap().len(), 2);
        assert_eq!(set.create(&request("a", 5)).await.unwrap().len(), 1);
        let err = set.create(&request("a", 1)).await.unwrap_err();
        assert!(matches!(err, CloudError::QuotaExceeded { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn boot_delay_and_never_healthy() {
        let cloud = FakeCloud::new(FakeConfig {
            boot_delay: Duration::from_secs(5),
            ..FakeConfig::default()
        });
        let set = cloud.instance_set("s");
        let made = set.create(&request("a", 1)).await.unwrap();
        assert_eq!(set.probe(&made[0]).await, Health::NotReady);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(set.probe(&made[0]).await, Health::Ready);
        cloud.sicken(&made[0].id);
        assert_eq!(set.probe(&made[0]).await, Health::NotReady);
    }

    #[tokio::test(start_paused = true)]
    async fn destroyed_and_dying_nodes_leave_on_time() {
        let cloud = FakeCloud::new(FakeConfig {
            destroy_delay: Duration::from_secs(5),
            death_rate: 1.0,
            death_within: Duration::from_secs(60),
            ..FakeConfig::default()
        });
        let set = cloud.instance_set("s");
        let doomed = set.create(&request("a", 3)).await.unwrap();
        cloud.reconfigure(|c| c.death_rate = 0.0);
        let kept = set.create(&request("a", 2)).await.unwrap();
        set.destroy(&kept[0].id).await.unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            cloud.instance_count(),
            5 - doomed_by(&cloud, &doomed),
            "still shutting down"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let listed = set.list(&Tags::new()).await.unwrap();
        assert!(
            listed.iter().all(|i| i.id != kept[0].id),
            "gone after the destroy delay"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            cloud.instance_count(),
            1,
            "every doomed node died within death_within"
        );
        // A shorter delay applies to a node already shutting down.
        cloud.reconfigure(|c| c.destroy_delay = Duration::from_secs(60));
        set.destroy(&kept[1].id).await.unwrap();
        cloud.reconfigure(|c| c.destroy_delay = Duration::ZERO);
        assert_eq!(cloud.instance_count(), 0);
    }

    /// How many of `made` have already died.
    fn doomed_by(cloud: &FakeCloud, made: &[Instance]) -> usize {
        let w = cloud.world.lock().unwrap();
        made.iter()
            .filter(|i| !w.instances.contains_key(&i.id))
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn same_seed_same_faults() {
        async fn outcomes(seed: u64) -> Vec<bool> {
            let cloud = FakeCloud::new(FakeConfig {
                seed,
                create_error_rate: 0.5,
                ..FakeConfig::default()
            });
            let set = cloud.instance_set("s");
            let mut v = Vec::new();
            for _ in 0..32 {
                v.push(set.create(&request("a", 1)).await.is_ok());
            }
            v
        }
        assert_eq!(outcomes(7).await, outcomes(7).await);
        assert_ne!(outcomes(7).await, outcomes(8).await);
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_type_reports_its_scope() {
        let cloud = FakeCloud::new(FakeConfig {
            unavailable_types: vec!["small".into()],
            ..FakeConfig::default()
        });
        let err = cloud
            .instance_set("s")
            .create(&request("a", 1))
            .await
            .unwrap_err();
        match err {
            CloudError::InsufficientCapacity {
                scope: CapacityScope::InstanceType(t),
                ..
            } => assert_eq!(t.as_str(), "small"),
            other => panic!("unexpected {other}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deaths_happen_within_the_window() {
        let cloud = FakeCloud::new(FakeConfig {
            death_rate: 1.0,
            death_within: Duration::from_secs(10),
            ..FakeConfig::default()
        });
        let set = cloud.instance_set("s");
        set.create(&request("a", 20)).await.unwrap();
        assert!(cloud.instance_count() > 0);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(cloud.instance_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn held_calls_wait_for_release() {
        let cloud = FakeCloud::new(FakeConfig::default());
        let set = Arc::new(cloud.instance_set("s"));
        let hold = cloud.hold(FakeOp::Create);
        let task = tokio::spawn({
            let set = set.clone();
            async move { set.create(&request("a", 1)).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!task.is_finished());
        assert_eq!(cloud.stats().creates, 0);
        hold.release();
        assert_eq!(task.await.unwrap().unwrap().len(), 1);
    }
}
