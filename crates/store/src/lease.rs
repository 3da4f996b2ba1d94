//! The leader's lease and what only the leader writes. Several servers may
//! share one database; exactly one of them, the holder of the lease, runs
//! the loops that act on the cloud. A term of leadership is numbered (its
//! epoch); every write only the leader makes carries the term's [`Fence`],
//! and the store refuses it once another term has begun, so a leader that
//! was paused past its lease and wakes up cannot act on the store twice.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{
    ClusterName, InstanceId, InstanceType, NodePrices, NodeRecord, Obstacle, PoolError, PoolName,
};

use crate::StoreError;

/// A term of leadership, by its epoch: the fencing token of the leader's
/// writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fence(pub i64);

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

/// One cluster's nodes as the leader publishes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNodes {
    pub cluster: ClusterName,
    /// The cluster's, so its change is as readable as its status.
    pub is_public: bool,
    pub nodes: Vec<NodeRecord>,
    /// What its nodes cost per hour, by type, when the cluster is an
    /// organisation's: its nodes are metered (see [`crate::meters`]), each
    /// at its type's price when first seen. None: not charged.
    pub meter: Option<NodePrices>,
    /// Nodes a listing stopped showing since the cluster was last
    /// published, with when; each one's meter ends there.
    pub gone: Vec<GoneNode>,
}

/// A node a listing no longer showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoneNode {
    pub id: InstanceId,
    pub instance_type: InstanceType,
    pub launched_at: DateTime<Utc>,
    /// When the listing that no longer showed it was taken in.
    pub gone_at: DateTime<Utc>,
}

/// Who holds the lease, in which term, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub epoch: i64,
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes the lease for `holder` until `ttl` from now if nobody holds it:
    /// never taken, expired, released, or held by `holder` itself (a server
    /// restarted under the same name). Each take begins a new term, whose
    /// fence it returns, and records it in the change feed. `None` while
    /// another holds it.
    ///
    /// `now` is the caller's clock; a backend that several machines share
    /// reads its own clock instead, so that servers whose clocks disagree
    /// still agree on when a lease ends.
    async fn acquire_lease(
        &self,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<Fence>, StoreError>;

    /// Extends the term `fence` of `holder` to `ttl` from now. False when
    /// the term is over (another server took the lease).
    async fn renew_lease(
        &self,
        holder: &str,
        fence: Fence,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Ends the term `fence` of `holder` at once, so another server can
    /// take over without waiting for the lease to run out. Does nothing if
    /// the term is already over.
    async fn release_lease(&self, holder: &str, fence: Fence) -> Result<(), StoreError>;

    /// The lease as it stands, if it was ever taken.
    async fn lease(&self) -> Result<Option<Lease>, StoreError>;

    /// Replaces what the leader observes of each cluster's nodes (none:
    /// the cluster has no nodes left) and records each in the change feed,
    /// so that every server answers STATUS alike; one transaction for the
    /// lot. Written when nodes change, not on every probe. A metered
    /// cluster's meters move in the same transaction (see
    /// [`crate::meters::on_publish`]). Refused (`Fenced`) after the term
    /// ends.
    async fn publish_nodes(
        &self,
        fence: Fence,
        clusters: &[ClusterNodes],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// The nodes last published, of one cluster or of all, in cluster
    /// order, each cluster's by launch time.
    async fn published_nodes(
        &self,
        cluster: Option<&ClusterName>,
    ) -> Result<Vec<(ClusterName, NodeRecord)>, StoreError>;

    /// Replaces what stands in each cluster's way (none: nothing does), as
    /// the leader met it, and records each as a `cluster.error` or
    /// `cluster.error_cleared` change; one transaction for the lot. A
    /// cluster with no record is skipped: it was forgotten, and its
    /// obstacle with it. Refused (`Fenced`) after the term ends.
    async fn publish_obstacles(
        &self,
        fence: Fence,
        obstacles: &[ClusterObstacle],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// What stands in each cluster's way, as last published, by cluster.
    async fn published_obstacles(&self) -> Result<Vec<(ClusterName, Obstacle)>, StoreError>;

    /// Counts `errors` into the pools' errors: one row per failure (its
    /// key), its count the sum, its message the latest. One transaction.
    /// Refused (`Fenced`) after the term ends.
    async fn record_pool_errors(
        &self,
        fence: Fence,
        errors: &[PoolError],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// A pool's errors, latest first, at most `limit`; with `only`, just
    /// those of these clusters.
    async fn pool_errors(
        &self,
        pool: &PoolName,
        only: Option<&[ClusterName]>,
        limit: usize,
    ) -> Result<Vec<PoolError>, StoreError>;

    /// Forgets errors last met before `before`; how many.
    async fn prune_pool_errors(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// One cluster's obstacle to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterObstacle {
    pub cluster: ClusterName,
    /// For the change feed's access rule.
    pub is_public: bool,
    pub obstacle: Option<Obstacle>,
}
