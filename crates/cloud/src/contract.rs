use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{
    ClusterName, InstanceId, InstanceSetId, InstanceType, LaunchVersion, PoolName,
};
use futures::future::join_all;
use tokio::time::Instant;

/// Tag holding the ID of the instance set that owns an instance.
pub const TAG_INSTANCE_SET: &str = "flotilla-instance-set";
/// Tag holding the name of the cluster an instance belongs to.
pub const TAG_CLUSTER: &str = "flotilla-cluster";
/// Tag holding the instance type the engine asked for.
pub const TAG_INSTANCE_TYPE: &str = "flotilla-instance-type";
/// Tag holding the pool an instance was made from, so what a driver keeps
/// per pool (an EC2 pool's health check) applies to it after a restart too.
/// Set at creation like the ownership tags, and as fixed.
pub const TAG_POOL: &str = "flotilla-pool";
/// Tag holding the version of its pool's launch configuration an instance
/// was made from (a [`LaunchVersion`]), by which the engine tells an
/// outdated node after a pool or a shared config it uses changed. Set at
/// creation, and as fixed.
pub const TAG_POOL_VERSION: &str = "flotilla-pool-version";

/// Tag holding the job and attempt an instance was made for (`ID/N`): an
/// instance of its own for each attempt, which the job runner, not a
/// cluster's reconcile, looks after. Set at creation, or when a job takes
/// an instance kept warm ([`TAG_WARM`]), and never changed after.
pub const TAG_JOB: &str = "flotilla-job";
/// On an instance kept warm for jobs: the hash of the token its agent asks
/// for a job with (`flotilla_domain::warm_token_hash`). Once a job takes
/// it, it carries [`TAG_JOB`] as well.
pub const TAG_WARM: &str = "flotilla-warm";

pub type Tags = BTreeMap<String, String>;

/// The three tags every instance carries from the moment it is created.
pub fn ownership_tags(set: &InstanceSetId, cluster: &ClusterName, ty: &InstanceType) -> Tags {
    Tags::from([
        (TAG_INSTANCE_SET.to_owned(), set.to_string()),
        (TAG_CLUSTER.to_owned(), cluster.to_string()),
        (TAG_INSTANCE_TYPE.to_owned(), ty.to_string()),
    ])
}

/// Ask for `count` instances of one kind for one cluster. The instance set
/// adds the ownership tags itself; `tags` are extra tags of the operator's.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub cluster: ClusterName,
    /// The pool the nodes are made from. A driver may keep settings of its
    /// own per pool (the ec2 driver's `[pools.NAME.ec2]`); the engine knows
    /// only the name.
    pub pool: PoolName,
    pub instance_type: InstanceType,
    pub image: Option<String>,
    pub tags: Tags,
    /// Handed to the node at boot (user data on EC2, the workload command on
    /// `local`).
    pub init_data: Option<String>,
    /// The cluster's own workload, run instead of `init_data` by a driver
    /// that runs workloads (`local`); others refuse a request with one.
    pub workload: Option<flotilla_domain::Workload>,
    /// The version of the pool's launch configuration the nodes get
    /// ([`TAG_POOL_VERSION`]).
    pub pool_version: Option<LaunchVersion>,
    pub count: u32,
    /// An instance that shuts itself down is gone for good (on EC2,
    /// `InstanceInitiatedShutdownBehavior = terminate`), not stopped: a
    /// job attempt's instance ends itself at its deadline even if flotilla
    /// is gone.
    pub shutdown_terminates: bool,
    /// The market the nodes must be bought on (a job's attempt, as the
    /// scheduler chose it); none: as the pool's settings say.
    pub market: Option<flotilla_domain::Market>,
}

impl CreateRequest {
    /// Every tag an instance of this request is created with: the
    /// operator's, then the ownership tags, [`TAG_POOL`] and
    /// [`TAG_POOL_VERSION`], which win.
    pub fn instance_tags(&self, set: &InstanceSetId) -> Tags {
        let mut tags = self.tags.clone();
        tags.extend(ownership_tags(set, &self.cluster, &self.instance_type));
        tags.insert(TAG_POOL.to_owned(), self.pool.to_string());
        if let Some(v) = &self.pool_version {
            tags.insert(TAG_POOL_VERSION.to_owned(), v.to_string());
        }
        tags
    }
}

/// One instance as the cloud lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: InstanceId,
    pub instance_type: InstanceType,
    pub tags: Tags,
    /// Where the node can be reached, once the cloud knows.
    pub address: Option<String>,
    pub launched_at: DateTime<Utc>,
}

impl Instance {
    pub fn cluster(&self) -> Option<ClusterName> {
        self.tags
            .get(TAG_CLUSTER)
            .and_then(|c| ClusterName::new(c.as_str()).ok())
    }

    pub fn instance_set(&self) -> Option<&str> {
        self.tags.get(TAG_INSTANCE_SET).map(String::as_str)
    }

    /// The pool it was made from; None for instances made before pools
    /// were tagged.
    pub fn pool(&self) -> Option<PoolName> {
        self.tags
            .get(TAG_POOL)
            .and_then(|p| PoolName::new(p.as_str()).ok())
    }

    /// The job and attempt it was made for, if it was made for one.
    pub fn job(&self) -> Option<(u64, u32)> {
        let (job, attempt) = self.tags.get(TAG_JOB)?.split_once('/')?;
        Some((job.parse().ok()?, attempt.parse().ok()?))
    }

    /// The hash of its agent's token, if it was made to be kept warm for
    /// jobs (see [`TAG_WARM`]).
    pub fn warm(&self) -> Option<&str> {
        self.tags.get(TAG_WARM).map(String::as_str)
    }

    /// The version of its pool it was made from; None for instances made
    /// before versions were tagged.
    pub fn pool_version(&self) -> Option<LaunchVersion> {
        self.tags
            .get(TAG_POOL_VERSION)
            .and_then(|v| LaunchVersion::parse(v))
    }
}

/// The resources of one instance type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceShape {
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// A spot price as the cloud publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpotPrice {
    /// USD per instance hour.
    pub usd_per_hour: f64,
    pub availability_zone: String,
    /// When the cloud set this price.
    pub since: DateTime<Utc>,
}

/// What a pool's nodes are made of and cost now, as far as the driver can
/// tell; each part is None when it cannot (or, for the spot price, when the
/// pool does not launch spot instances).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Offering {
    pub shape: Option<InstanceShape>,
    pub spot_price: Option<SpotPrice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CapacityScope {
    InstanceType(InstanceType),
    QuotaGroup(String),
    All,
}

impl fmt::Display for CapacityScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapacityScope::InstanceType(t) => write!(f, "instance type {t}"),
            CapacityScope::QuotaGroup(g) => write!(f, "quota group {g}"),
            CapacityScope::All => f.write_str("all instance types"),
        }
    }
}

/// What went wrong in a cloud call, classified by what the caller should do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloudError {
    /// The cloud refuses calls for a while: make none before `earliest_retry`.
    #[error("cloud rate limit: {message}")]
    RateLimited {
        earliest_retry: Instant,
        message: String,
    },
    /// The account cannot hold more instances: create none until one goes.
    #[error("cloud quota exceeded: {message}")]
    QuotaExceeded { message: String },
    /// The cloud has no capacity for `scope` right now.
    #[error("insufficient capacity for {scope}: {message}")]
    InsufficientCapacity {
        scope: CapacityScope,
        message: String,
    },
    /// Worth retrying soon (network error, 5xx).
    #[error("transient cloud error: {message}")]
    Transient { message: String },
    /// Retrying will not help until an operator changes something.
    #[error("cloud error: {message}")]
    Permanent { message: String },
}

impl CloudError {
    pub fn transient(message: impl Into<String>) -> Self {
        CloudError::Transient {
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        CloudError::Permanent {
            message: message.into(),
        }
    }

    /// A short stable label, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CloudError::RateLimited { .. } => "rate_limited",
            CloudError::QuotaExceeded { .. } => "quota_exceeded",
            CloudError::InsufficientCapacity { .. } => "insufficient_capacity",
            CloudError::Transient { .. } => "transient",
            CloudError::Permanent { .. } => "permanent",
        }
    }

    /// The error a driver returns when asked to touch an instance that does
    /// not carry its ID.
    pub fn not_owned(id: &InstanceId, set: &InstanceSetId) -> Self {
        CloudError::permanent(format!(
            "instance {id} is not tagged {TAG_INSTANCE_SET}={set}; refusing to touch it"
        ))
    }
}

/// A stretch of what a node printed (its console), as bytes `from..to` of
/// everything it printed so far. Text that is not UTF-8 is shown with
/// replacement characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    pub text: String,
    pub from: u64,
    pub to: u64,
}

impl Console {
    /// The window of `printed` (everything a node printed) that a
    /// `console(from, limit)` call asks for.
    pub fn window(printed: &[u8], from: Option<u64>, limit: usize) -> Console {
        let len = printed.len();
        let start = match from {
            Some(from) => usize::try_from(from).unwrap_or(usize::MAX).min(len),
            None => len.saturating_sub(limit),
        };
        let end = start.saturating_add(limit).min(len);
        Console {
            text: String::from_utf8_lossy(&printed[start..end]).into_owned(),
            from: start as u64,
            to: end as u64,
        }
    }
}

/// What a command run on a node answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// None when it was killed by a signal (or at its time limit).
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The command ran out of time and was killed.
    pub timed_out: bool,
    /// Output past the limit was dropped.
    pub truncated: bool,
}

/// What a health probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ready,
    NotReady,
    /// The probe could not be made from this side (out of file
    /// descriptors, no local port, no memory): it says nothing of the
    /// node, and is never held against it.
    Unknown,
}

impl Health {
    /// What a probe that failed with `e` found: `Unknown` if the failure
    /// is this process's or this host's ([`is_local_failure`]), else
    /// `NotReady`.
    pub fn of_failure(e: &std::io::Error) -> Health {
        if is_local_failure(e) {
            Health::Unknown
        } else {
            Health::NotReady
        }
    }
}

/// Whether `e` is a failure of this host rather than of the peer: out of
/// file descriptors (EMFILE, ENFILE), buffers or memory, or of local ports
/// and addresses (EADDRNOTAVAIL, EADDRINUSE).
pub fn is_local_failure(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOMEM
                | libc::ENFILE
                | libc::EMFILE
                | libc::ENOBUFS
                | libc::EADDRINUSE
                | libc::EADDRNOTAVAIL
        )
    )
}

/// A set of instances on one cloud owned by one ID.
///
/// Contract (checked by [`crate::conformance`]):
/// - `create` returns between 1 and `count` instances (fewer is a partial
///   fulfilment, not an error), each tagged with [`ownership_tags`] from the
///   start, and never more than [`InstanceSet::max_batch`] per call;
/// - `list` returns every live instance carrying this set's ID and all of
///   `filter`'s tags, and nothing else; it pages internally;
/// - `destroy` is idempotent: an instance already gone is success; it
///   refuses instances without this set's ID; `destroy_many` answers as
///   `destroy` would for each of its instances, in order;
/// - `set_tags` adds or overwrites tags, refuses to change ownership tags,
///   and refuses instances without this set's ID;
/// - `probe` asks the node itself; it is not a cloud API call and is not
///   throttled;
/// - `offering` is optional: a driver that cannot describe instance types
///   says nothing, and one that can caches what it learns, so asking again
///   is cheap;
/// - `console` and `exec` are optional (None: this driver cannot); both
///   refuse instances without this set's ID, as `destroy` does.
#[async_trait]
pub trait InstanceSet: Send + Sync + 'static {
    fn id(&self) -> &InstanceSetId;

    /// The most instances one `create` call may ask for.
    fn max_batch(&self) -> u32 {
        1
    }

    async fn create(&self, request: &CreateRequest) -> Result<Vec<Instance>, CloudError>;

    async fn list(&self, filter: &Tags) -> Result<Vec<Instance>, CloudError>;

    async fn destroy(&self, id: &InstanceId) -> Result<(), CloudError>;

    /// Destroys each of `ids` (at most [`InstanceSet::max_batch`]). A
    /// driver whose cloud terminates several instances in one call
    /// overrides this; the default destroys them one by one, concurrently.
    async fn destroy_many(&self, ids: &[InstanceId]) -> Vec<Result<(), CloudError>> {
        join_all(ids.iter().map(|id| self.destroy(id))).await
    }

    async fn set_tags(&self, id: &InstanceId, tags: &Tags) -> Result<(), CloudError>;

    async fn probe(&self, instance: &Instance) -> Health;

    /// Where `instance` can be reached now. Some clouds know the address
    /// only once the node has booted (a local node picks its own port), so
    /// the engine asks again when a node without one probes ready, rather
    /// than report a ready node nobody can reach until the next listing.
    async fn address(&self, instance: &Instance) -> Option<String>;

    /// The shape of `instance_type` and, if `pool` launches spot instances,
    /// its current spot price. May call the cloud (it is throttled).
    async fn offering(
        &self,
        pool: &PoolName,
        instance_type: &InstanceType,
    ) -> Result<Offering, CloudError> {
        let _ = (pool, instance_type);
        Ok(Offering::default())
    }

    /// What `id` printed, from byte `from` on (the last `limit` bytes when
    /// `from` is None), at most `limit` bytes. None: this driver keeps no
    /// console. May call the cloud (it is throttled).
    async fn console(
        &self,
        id: &InstanceId,
        from: Option<u64>,
        limit: usize,
    ) -> Result<Option<Console>, CloudError> {
        let _ = (id, from, limit);
        Ok(None)
    }

    /// Runs `argv` on the node `id`, killed after `timeout`, keeping at
    /// most `limit` bytes of each output. None: this driver cannot run
    /// commands on its nodes.
    async fn exec(
        &self,
        id: &InstanceId,
        argv: &[String],
        timeout: std::time::Duration,
        limit: usize,
    ) -> Result<Option<ExecOutput>, CloudError> {
        let _ = (id, argv, timeout, limit);
        Ok(None)
    }

    /// Pool `pool`'s section for this driver (`[pools.NAME.ec2]` for ec2),
    /// or None once the pool has none or is gone: how it launches and
    /// checks the pool's nodes from now on. The section was checked when
    /// the pool was written; a driver that reads none ignores it. Makes
    /// no call to the cloud.
    fn configure_pool(&self, pool: &PoolName, section: Option<&serde_json::Value>) {
        let _ = (pool, section);
    }
}

/// The tags set at creation and fixed after.
pub const FIXED_TAGS: [&str; 5] = [
    TAG_INSTANCE_SET,
    TAG_CLUSTER,
    TAG_INSTANCE_TYPE,
    TAG_POOL,
    TAG_POOL_VERSION,
];

/// Refuses changes to the ownership tags; shared by every driver.
pub fn check_tag_update(tags: &Tags) -> Result<(), CloudError> {
    for key in FIXED_TAGS {
        if tags.contains_key(key) {
            return Err(CloudError::permanent(format!(
                "tag {key} is set at creation and cannot be changed"
            )));
        }
    }
    Ok(())
}

/// True if `instance` carries every tag of `filter`.
pub fn matches_filter(tags: &Tags, filter: &Tags) -> bool {
    filter.iter().all(|(k, v)| tags.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_of_this_host_says_nothing_of_the_node() {
        let e = |errno| std::io::Error::from_raw_os_error(errno);
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::EADDRNOTAVAIL,
            libc::ENOBUFS,
        ] {
            assert_eq!(Health::of_failure(&e(errno)), Health::Unknown, "{errno}");
        }
        for errno in [libc::ECONNREFUSED, libc::ETIMEDOUT, libc::EHOSTUNREACH] {
            assert_eq!(Health::of_failure(&e(errno)), Health::NotReady, "{errno}");
        }
        let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "late");
        assert_eq!(Health::of_failure(&timeout), Health::NotReady);
    }
}
