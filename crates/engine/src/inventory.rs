//! What the engine has observed of each instance set: the nodes of every
//! cluster with their states, plus the set's quota and capacity gates.
//! Rebuilt from the cloud's listing, so a restarted server recovers it
//! without any stored copy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flotilla_cloud::{CapacityScope, Health, Instance, TAG_POOL_VERSION};
use flotilla_domain::{
    ClusterName, InstanceId, InstanceType, LaunchVersion, NodeRecord, NodeState, ObservedNode,
};
use flotilla_store::GoneNode;
use tokio::time::Instant;

/// Fastest probe cadence for a node not (yet) ready; doubles to a second.
pub const FIRST_PROBE_DELAY: Duration = Duration::from_millis(100);
const SLOW_PROBE_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct TrackedNode {
    /// The instance as last listed (or created); replaced through
    /// [`set_instance`](Self::set_instance), which keeps `version` with it.
    pub instance: Instance,
    /// `instance.pool_version()`, read once per tag rather than at every
    /// look: a resync's reconciles look at every node.
    version: Option<LaunchVersion>,
    pub state: NodeState,
    pub state_since: DateTime<Utc>,
    pub last_destroy_attempt: Option<DateTime<Utc>>,
    pub next_probe: Instant,
    probe_delay: Duration,
    /// Probes recorded, to vary the jitter from one probe to the next.
    probes: u64,
    /// The inventory's create counter when this server created the node, to
    /// tell a node created while a listing was running from one that has gone.
    created_here: Option<u64>,
}

impl TrackedNode {
    fn new(instance: Instance, now: DateTime<Utc>, created_here: Option<u64>) -> Self {
        Self {
            version: instance.pool_version(),
            instance,
            state: NodeState::Booting,
            state_since: now,
            last_destroy_attempt: None,
            next_probe: Instant::now(),
            probe_delay: FIRST_PROBE_DELAY,
            probes: 0,
            created_here,
        }
    }

    /// `interval` shortened by up to a fifth, differently for each node and
    /// each probe, so that nodes created or adopted together drift apart
    /// instead of all coming due in the same resync pass. Hashed, not
    /// random, so a test run is repeatable.
    fn jittered(&self, interval: Duration) -> Duration {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.instance.id.as_str(), self.probes).hash(&mut h);
        let fraction = (h.finish() % 1000) as f64 / 1000.0;
        interval.mul_f64(1.0 - 0.2 * fraction)
    }

    /// Its pool's version, as the instance's tag says.
    pub fn version(&self) -> Option<&LaunchVersion> {
        self.version.as_ref()
    }

    /// Takes a fresher copy of its instance (from a listing); returns the
    /// one it replaces.
    fn set_instance(&mut self, instance: Instance) -> Instance {
        let tag = instance.tags.get(TAG_POOL_VERSION).map(String::as_str);
        if tag != self.version.as_ref().map(LaunchVersion::as_str) {
            self.version = instance.pool_version();
        }
        std::mem::replace(&mut self.instance, instance)
    }

    pub fn observed(&self) -> ObservedNode {
        ObservedNode {
            id: self.instance.id.clone(),
            instance_type: self.instance.instance_type.clone(),
            launched_at: self.instance.launched_at,
            state: self.state,
            state_since: self.state_since,
            last_destroy_attempt: self.last_destroy_attempt,
            version: self.version.clone(),
        }
    }

    /// The node as the leader publishes it: times to the millisecond, as
    /// the store keeps them, so every server shows the same.
    pub fn record(&self) -> NodeRecord {
        let millis =
            |t: DateTime<Utc>| DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t);
        NodeRecord {
            id: self.instance.id.clone(),
            instance_type: self.instance.instance_type.clone(),
            launched_at: millis(self.instance.launched_at),
            state: self.state,
            state_since: millis(self.state_since),
            address: self.instance.address.clone(),
            pool_version: self.version.clone(),
        }
    }

    /// What [`record`](Self::record) would hash to, without building it:
    /// the same fields in the same order, borrowed.
    pub fn record_hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let millis =
            |t: DateTime<Utc>| DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &self.instance.id,
            &self.instance.instance_type,
            &millis(self.instance.launched_at),
            &self.state,
            &millis(self.state_since),
            &self.instance.address,
            &self.version,
        )
            .hash(&mut h);
        h.finish()
    }

    /// Whether a probe is due. A ready node whose probe falls within
    /// `slack` is probed now too, so that one reconcile probes a cluster's
    /// nodes together rather than waking once per node.
    pub fn wants_probe(&self, now: Instant, slack: Duration) -> bool {
        match self.state {
            NodeState::ShuttingDown => false,
            NodeState::Ready => self.next_probe <= now + slack,
            _ => self.next_probe <= now,
        }
    }

    /// Records a probe's answer; true if the node became ready.
    fn record_probe(
        &mut self,
        health: Health,
        now: DateTime<Utc>,
        probe_interval: Duration,
    ) -> bool {
        self.probes += 1;
        let was_ready = self.state == NodeState::Ready;
        let next = match (self.state, health) {
            (NodeState::ShuttingDown, _) => return false,
            (NodeState::Ready, Health::Ready) => self.jittered(probe_interval),
            (_, Health::Ready) => {
                self.state = NodeState::Ready;
                self.state_since = now;
                self.jittered(probe_interval)
            }
            (NodeState::Ready, Health::NotReady) => {
                self.state = NodeState::Unhealthy;
                self.state_since = now;
                self.probe_delay = FIRST_PROBE_DELAY;
                self.probe_delay
            }
            // Still not ready; or a probe that says nothing of the node, whose
            // state stands: ask again soon.
            (_, Health::NotReady | Health::Unknown) => {
                self.probe_delay = (self.probe_delay * 2).min(SLOW_PROBE_DELAY.min(probe_interval));
                self.probe_delay
            }
        };
        self.next_probe = Instant::now() + next;
        !was_ready && self.state == NodeState::Ready
    }
}

/// A set's listing indexed by instance: built before the inventory's lock
/// is taken, so a pass holds the lock only to fold it in.
pub struct Listing(HashMap<InstanceId, Instance>);

impl Listing {
    pub fn new(instances: Vec<Instance>) -> Self {
        Self(instances.into_iter().map(|i| (i.id.clone(), i)).collect())
    }
}

/// One instance set's view.
#[derive(Debug, Default)]
pub struct SetInventory {
    pub clusters: HashMap<ClusterName, BTreeMap<InstanceId, TrackedNode>>,
    /// Set once the first listing succeeded: until then nothing is planned,
    /// so a restart cannot create duplicates of nodes it has not seen yet.
    pub listed: bool,
    /// Instance count when the cloud last said `QuotaExceeded`; no creates
    /// until the count drops below it.
    pub quota_blocked_at: Option<usize>,
    pub capacity_backoff: HashMap<CapacityScope, Instant>,
    /// Whether [`prober_suspect`](Self::prober_suspect) held at the last
    /// probe, to log its changes once.
    pub prober_suspected: bool,
    /// Nodes a listing stopped showing, by cluster, until the leader
    /// publishes them (which ends their meters).
    pub departed: HashMap<ClusterName, Vec<GoneNode>>,
    /// The instances of job attempts ([`Instance::job`]) and those kept
    /// warm for jobs ([`Instance::warm`]), which the job runner looks
    /// after, with the create that recorded each (as
    /// `TrackedNode::created_here`).
    pub jobs: HashMap<InstanceId, (Instance, Option<u64>)>,
    /// Counts the creates recorded here, so that a listing knows which nodes
    /// it may not have seen. A counter, not a clock: two events can share an
    /// instant, and a paused test clock makes them all share one.
    creates: u64,
    /// Counts the listings applied, so that the job runner can tell one
    /// listing's miss from two (see `jobs::missing_twice`).
    pub listings: u64,
}

/// Where the inventory stood when a listing began; see [`SetInventory::listing_mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListingMark(u64);

impl SetInventory {
    pub fn total(&self) -> usize {
        self.clusters.values().map(BTreeMap::len).sum::<usize>() + self.jobs.len()
    }

    /// Records the instance made for a job's attempt.
    pub fn add_job_instance(&mut self, instance: Instance) {
        self.creates += 1;
        let here = self.creates;
        self.jobs
            .insert(instance.id.clone(), (instance, Some(here)));
    }

    pub fn nodes(&self, cluster: &ClusterName) -> impl Iterator<Item = &TrackedNode> {
        self.clusters
            .get(cluster)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Taken just before a listing is asked for and handed back to
    /// [`apply_listing`](Self::apply_listing): nodes recorded after it are
    /// kept even if the listing lacks them.
    pub fn listing_mark(&self) -> ListingMark {
        ListingMark(self.creates)
    }

    /// Replaces the view with a fresh listing that began at `mark`.
    /// Returns the clusters that gained or lost nodes.
    pub fn apply_listing(
        &mut self,
        listing: Vec<Instance>,
        mark: ListingMark,
        now: DateTime<Utc>,
    ) -> HashSet<ClusterName> {
        self.apply(Listing::new(listing), mark, now).0
    }

    /// [`apply_listing`](Self::apply_listing) of a listing indexed before
    /// the inventory's lock was taken; also returns the instances the
    /// listing replaced, for the caller to drop after releasing it.
    pub fn apply(
        &mut self,
        listing: Listing,
        mark: ListingMark,
        now: DateTime<Utc>,
    ) -> (HashSet<ClusterName>, Vec<Instance>) {
        let mut seen = listing.0;
        let mut replaced = Vec::with_capacity(seen.len());
        let mut changed = HashSet::new();
        for (cluster, nodes) in self.clusters.iter_mut() {
            nodes.retain(|id, node| {
                if let Some(instance) = seen.remove(id) {
                    replaced.push(node.set_instance(instance));
                    true
                } else if node.created_here.is_some_and(|n| n > mark.0) {
                    true
                } else {
                    changed.insert(cluster.clone());
                    self.departed
                        .entry(cluster.clone())
                        .or_default()
                        .push(GoneNode {
                            id: id.clone(),
                            instance_type: node.instance.instance_type.clone(),
                            launched_at: node.instance.launched_at,
                            gone_at: now,
                        });
                    false
                }
            });
        }
        self.clusters.retain(|_, nodes| !nodes.is_empty());
        self.jobs.retain(|id, (instance, here)| {
            if let Some(fresh) = seen.remove(id) {
                replaced.push(std::mem::replace(instance, fresh));
                true
            } else {
                here.is_some_and(|n| n > mark.0)
            }
        });
        for (_, instance) in seen {
            if instance.job().is_some() || instance.warm().is_some() {
                self.jobs.insert(instance.id.clone(), (instance, None));
                continue;
            }
            let Some(cluster) = instance.cluster() else {
                tracing::warn!(instance = %instance.id, "instance carries our ID but no valid cluster tag; leaving it alone");
                continue;
            };
            tracing::info!(instance = %instance.id, %cluster, "adopting instance from the cloud listing");
            changed.insert(cluster.clone());
            self.clusters
                .entry(cluster)
                .or_default()
                .insert(instance.id.clone(), TrackedNode::new(instance, now, None));
        }
        if self.quota_blocked_at.is_some_and(|at| self.total() < at) {
            tracing::info!("an instance went away; creating again after the quota error");
            self.quota_blocked_at = None;
        }
        self.listed = true;
        self.listings += 1;
        (changed, replaced)
    }

    pub fn add_created(
        &mut self,
        cluster: &ClusterName,
        instances: Vec<Instance>,
        now: DateTime<Utc>,
    ) {
        self.creates += 1;
        let here = self.creates;
        let nodes = self.clusters.entry(cluster.clone()).or_default();
        for instance in instances {
            nodes.insert(
                instance.id.clone(),
                TrackedNode::new(instance, now, Some(here)),
            );
        }
    }

    pub fn mark_destroying(&mut self, cluster: &ClusterName, id: &InstanceId, now: DateTime<Utc>) {
        if let Some(node) = self.clusters.get_mut(cluster).and_then(|m| m.get_mut(id)) {
            if node.state != NodeState::ShuttingDown {
                node.state = NodeState::ShuttingDown;
                node.state_since = now;
            }
            node.last_destroy_attempt = Some(now);
        }
    }

    pub fn record_probe(
        &mut self,
        cluster: &ClusterName,
        id: &InstanceId,
        health: Health,
        address: Option<String>,
        now: DateTime<Utc>,
        probe_interval: Duration,
    ) -> bool {
        match self.clusters.get_mut(cluster).and_then(|m| m.get_mut(id)) {
            Some(node) => {
                if address.is_some() {
                    node.instance.address = address;
                }
                node.record_probe(health, now, probe_interval)
            }
            None => false,
        }
    }

    /// Whether every node of this set that was ready has stopped
    /// answering its probe (at least two of them, and none ready now): more
    /// likely the prober's trouble (this host out of descriptors, its
    /// network down) than every node failing at once, so nothing is
    /// destroyed for failing probes until one answers again.
    pub fn prober_suspect(&self) -> bool {
        let mut unhealthy = 0;
        for node in self.clusters.values().flat_map(|m| m.values()) {
            match node.state {
                NodeState::Ready => return false,
                NodeState::Unhealthy => unhealthy += 1,
                _ => {}
            }
        }
        unhealthy >= 2
    }

    /// How many instances of `ty` may be created now.
    pub fn may_create(&self, ty: &InstanceType, now: Instant) -> u32 {
        if self.quota_blocked_at.is_some() || self.capacity_retry(ty, now).is_some() {
            return 0;
        }
        u32::MAX
    }

    /// When the last capacity back-off affecting `ty` ends: one of every
    /// type, of `ty`'s, or of a quota group (which types a group holds
    /// the cloud does not say, so a group's back-off holds every type).
    pub fn capacity_retry(&self, ty: &InstanceType, now: Instant) -> Option<Instant> {
        self.capacity_backoff
            .iter()
            .filter(|(scope, _)| match scope {
                CapacityScope::InstanceType(t) => t == ty,
                CapacityScope::QuotaGroup(_) | CapacityScope::All => true,
            })
            .map(|(_, until)| *until)
            .filter(|until| *until > now)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_cloud::{ownership_tags, Tags};
    use flotilla_domain::InstanceSetId;

    fn instance(id: &str, cluster: &str) -> Instance {
        let set = InstanceSetId::new("s").unwrap();
        let ty = InstanceType::new("small").unwrap();
        Instance {
            id: InstanceId::new(id),
            instance_type: ty.clone(),
            tags: ownership_tags(&set, &ClusterName::new(cluster).unwrap(), &ty),
            address: None,
            launched_at: Utc::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_nodes_record_hash_is_the_hash_of_its_record() {
        use std::hash::{Hash, Hasher};
        let mut with_address = instance("a", "c1");
        with_address.address = Some("127.0.0.1:9".into());
        for i in [instance("b", "c1"), with_address] {
            let node = TrackedNode::new(i, Utc::now(), None);
            let mut h = std::collections::hash_map::DefaultHasher::new();
            node.record().hash(&mut h);
            assert_eq!(node.record_hash(), h.finish());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_nodes_version_follows_its_tag_from_one_listing_to_the_next() {
        let tagged = |version: Option<&str>| {
            let mut i = instance("a", "c");
            if let Some(v) = version {
                i.tags.insert(TAG_POOL_VERSION.to_owned(), v.to_owned());
            }
            i
        };
        let c = ClusterName::new("c").unwrap();
        let mut inv = SetInventory::default();
        let version = |inv: &SetInventory| {
            let node = inv.nodes(&c).next().unwrap();
            assert_eq!(node.version().cloned(), node.instance.pool_version());
            node.version().map(|v| v.as_str().to_owned())
        };
        inv.apply_listing(vec![tagged(None)], inv.listing_mark(), Utc::now());
        assert_eq!(version(&inv), None);
        for (tag, seen) in [
            ("00000000000000aa", Some("00000000000000aa")),
            ("00000000000000bb", Some("00000000000000bb")),
            ("not a version", None),
        ] {
            inv.apply_listing(vec![tagged(Some(tag))], inv.listing_mark(), Utc::now());
            assert_eq!(version(&inv).as_deref(), seen, "tagged {tag}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn listing_adopts_and_forgets() {
        let mut inv = SetInventory::default();
        let changed = inv.apply_listing(
            vec![instance("a", "c1"), instance("b", "c2")],
            inv.listing_mark(),
            Utc::now(),
        );
        assert_eq!((changed.len(), inv.total()), (2, 2));
        assert!(inv
            .nodes(&ClusterName::new("c1").unwrap())
            .all(|n| n.state == NodeState::Booting));
        let changed = inv.apply_listing(vec![instance("a", "c1")], inv.listing_mark(), Utc::now());
        assert_eq!(changed, HashSet::from([ClusterName::new("c2").unwrap()]));
        assert_eq!(inv.total(), 1);
        assert!(!inv.clusters.contains_key(&ClusterName::new("c2").unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_created_during_a_listing_is_not_forgotten() {
        let mut inv = SetInventory::default();
        let c = ClusterName::new("c").unwrap();
        let mark = inv.listing_mark();
        inv.add_created(&c, vec![instance("new", "c")], Utc::now());
        inv.apply_listing(vec![], mark, Utc::now());
        assert_eq!(inv.total(), 1, "the listing began before the create");
        inv.apply_listing(vec![], inv.listing_mark(), Utc::now());
        assert_eq!(
            inv.total(),
            0,
            "a later listing without it means it is gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn quota_block_clears_when_an_instance_goes() {
        let mut inv = SetInventory::default();
        inv.apply_listing(
            vec![instance("a", "c"), instance("b", "c")],
            inv.listing_mark(),
            Utc::now(),
        );
        inv.quota_blocked_at = Some(2);
        let ty = InstanceType::new("small").unwrap();
        assert_eq!(inv.may_create(&ty, Instant::now()), 0);
        inv.apply_listing(
            vec![instance("a", "c"), instance("b", "c")],
            inv.listing_mark(),
            Utc::now(),
        );
        assert_eq!(inv.may_create(&ty, Instant::now()), 0);
        inv.apply_listing(vec![instance("a", "c")], inv.listing_mark(), Utc::now());
        assert_eq!(inv.may_create(&ty, Instant::now()), u32::MAX);
        let _ = Tags::new();
    }

    #[tokio::test(start_paused = true)]
    async fn probes_move_nodes_between_states() {
        let mut inv = SetInventory::default();
        let c = ClusterName::new("c").unwrap();
        let id = InstanceId::new("a");
        inv.apply_listing(vec![instance("a", "c")], inv.listing_mark(), Utc::now());
        let interval = Duration::from_secs(10);
        inv.record_probe(&c, &id, Health::NotReady, None, Utc::now(), interval);
        assert_eq!(inv.nodes(&c).next().unwrap().state, NodeState::Booting);
        inv.record_probe(&c, &id, Health::Ready, None, Utc::now(), interval);
        assert_eq!(inv.nodes(&c).next().unwrap().state, NodeState::Ready);
        inv.record_probe(&c, &id, Health::NotReady, None, Utc::now(), interval);
        assert_eq!(inv.nodes(&c).next().unwrap().state, NodeState::Unhealthy);
        inv.mark_destroying(&c, &id, Utc::now());
        inv.record_probe(&c, &id, Health::Ready, None, Utc::now(), interval);
        assert_eq!(inv.nodes(&c).next().unwrap().state, NodeState::ShuttingDown);
    }

    #[test]
    fn a_capacity_back_off_holds_its_scope() {
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(60);
        let ty = |n: &str| InstanceType::new(n).unwrap();
        let mut inv = SetInventory::default();
        inv.capacity_backoff
            .insert(CapacityScope::InstanceType(ty("a")), later);
        assert_eq!(inv.may_create(&ty("a"), now), 0);
        assert_eq!(inv.may_create(&ty("b"), now), u32::MAX, "another type");
        assert_eq!(inv.may_create(&ty("a"), later), u32::MAX, "once it ends");
        // Which types a quota group holds the cloud does not say: all.
        inv.capacity_backoff
            .insert(CapacityScope::QuotaGroup("standard".into()), later);
        assert_eq!(inv.may_create(&ty("b"), now), 0);
        assert_eq!(inv.capacity_retry(&ty("b"), now), Some(later));
    }
}
