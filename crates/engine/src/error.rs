use flotilla_domain::{ClusterName, Denied, NameError, ObstacleCode, OrgError, ValidationError};
use flotilla_store::StoreError;

/// Why the engine refused or failed a command. The API maps each variant to
/// a status code and a stable error code in one place.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("unknown pool {pool:?}; configured pools: {known}")]
    UnknownPool { pool: String, known: String },
    /// A pool as written is wrong: every problem, each at its JSON pointer.
    #[error("pool {pool} is not valid: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidPool {
        pool: String,
        problems: Vec<flotilla_domain::Problem>,
    },
    /// A pool's image names a shared config that gives none now (it does
    /// not exist, holds other images, or lacks the key): the pool is valid,
    /// the config's state is not what it needs.
    #[error("pool {pool}: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    PoolImageUnresolved {
        pool: String,
        problems: Vec<flotilla_domain::Problem>,
    },
    /// A shared config as written does not follow its schema.
    #[error("shared config {name} is not valid: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidSharedConfig {
        name: String,
        problems: Vec<flotilla_domain::Problem>,
    },
    #[error("{}", match (version, latest) {
        (Some(v), Some(latest)) => format!("shared config {name} has no version {v}; its versions are 1 to {latest}"),
        _ => format!("no shared config {name}; create it naming the schema it follows (DRIVER/KIND, e.g. aws/images), or see `flotilla shared-config list`"),
    })]
    UnknownSharedConfig {
        name: String,
        version: Option<u64>,
        /// Its latest version, if it exists.
        latest: Option<u64>,
    },
    #[error("shared config {name} follows {kind}, fixed when it was created; it cannot become {asked} (leave the schema out, or create another config)")]
    SharedConfigSchemaFixed {
        name: String,
        kind: String,
        asked: String,
    },
    /// The pool is the config file's: changed there, not through the API.
    #[error("pool {0} is defined in the server's config file; change it there (and restart), or apply a pool of another name")]
    PoolInConfig(flotilla_domain::PoolName),
    #[error(transparent)]
    Conflict(StoreError),
    /// The caller may not do this (401 or 403, by the rule that refused).
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("cluster {0} is not deployed (or is being destroyed); deploy it first")]
    NotFound(ClusterName),
    /// An organisation's rules refused (the code says which).
    #[error(transparent)]
    Org(#[from] OrgError),
    #[error("{0} is not an organisation's cluster; capacity requests are for organisation clusters (deploy other clusters with PUT /api/v1/clusters/{0})")]
    NotAnOrgCluster(ClusterName),
    /// A request that does not fit an organisation's cluster.
    #[error("{0}")]
    OrgCluster(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Only the server that holds the lease does this; this one follows.
    #[error("this server does not lead now; another server runs the loops")]
    NotLeading,
    #[error("storage failed: {0}")]
    Store(StoreError),
    #[error("configuration error: {0}")]
    Config(String),
    #[error("cluster {0} has no nodes now")]
    NoNodes(ClusterName),
    #[error("cluster {cluster} has no node {node:?}; its nodes: {known}")]
    NoSuchNode {
        cluster: ClusterName,
        node: String,
        known: String,
    },
    /// The cluster's driver cannot do this.
    #[error("driver {driver} {what}")]
    Unsupported { driver: String, what: String },
    #[error("no command to run: give one after `--`, e.g. `flotilla exec CLUSTER -- uptime`")]
    NoCommand,
    /// A job as written is wrong: every problem, each at its JSON pointer.
    #[error("the job is not valid: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidJob {
        problems: Vec<flotilla_domain::Problem>,
    },
    #[error("no job {0}; `flotilla job list` shows yours")]
    UnknownJob(u64),
    #[error("job {job}'s attempt {attempt} kept no file {path:?}; `flotilla job files {job} [--attempt N]` lists what an attempt kept")]
    NoSuchFile {
        job: u64,
        attempt: u32,
        path: String,
    },
    #[error("no schedule {0:?}; `flotilla schedule list` shows them")]
    UnknownSchedule(String),
    #[error("{0}")]
    InvalidSchedule(String),
    #[error("no subscription {0} of yours; `flotilla notify list` shows them")]
    UnknownSubscription(i64),
    #[error("{0}")]
    InvalidSubscription(String),
    #[error("no job template {template:?}; the server's config has {}", if known.is_empty() { "none ([jobs.templates.NAME])".to_owned() } else { known.clone() })]
    UnknownTemplate { template: String, known: String },
    /// The cloud refused or failed a question to a node.
    #[error(transparent)]
    Cloud(flotilla_cloud::CloudError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. }
            | StoreError::Stale { .. }
            | StoreError::InUse { .. }
            | StoreError::JobState { .. } => EngineError::Conflict(e),
            StoreError::Org(org) => EngineError::Org(org),
            other => EngineError::Store(other),
        }
    }
}

/// Why one reconcile failed (the runtime backs off and retries).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    #[error("cluster {cluster}: {message}")]
    Cloud {
        cluster: ClusterName,
        code: ObstacleCode,
        message: String,
    },
    #[error("cluster {cluster}: {source}")]
    Store {
        cluster: ClusterName,
        source: StoreError,
    },
    #[error("cluster {cluster} uses pool {pool}, which is no longer configured; its nodes are left as they are")]
    PoolGone { cluster: ClusterName, pool: String },
}

impl ReconcileError {
    /// What STATUS calls it.
    pub(crate) fn obstacle(&self) -> (ObstacleCode, String) {
        match self {
            ReconcileError::Cloud { code, message, .. } => (*code, message.clone()),
            ReconcileError::Store { source, .. } => (
                ObstacleCode::StoreFailed,
                format!("the server could not write to its store: {source}"),
            ),
            ReconcileError::PoolGone { pool, .. } => (
                ObstacleCode::PoolGone,
                format!("its pool {pool} is no longer configured; its nodes are left as they are (configure the pool again, or destroy the cluster)"),
            ),
        }
    }
}
