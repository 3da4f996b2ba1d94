//! Durable desired state: which clusters should exist, with how many nodes,
//! until when, and identity: accounts, their grants and refresh tokens
//! ([`AccountStore`]), and organisations ([`OrgStore`]). The [`Store`] trait
//! is what the engine needs; the backends live in their own crates
//! (`flotilla-store-sqlite`, the embedded default, and
//! `flotilla-store-postgres`), sharing the row encoding in `sql`, and
//! [`MemoryStore`] here serves tests. Every backend runs the same contract
//! suite in [`contract`].
//!
//! Observed state (which instances exist) is the cloud's: its own listing
//! is the source of truth, so a crash cannot make the two disagree. The
//! store keeps only a copy the leader publishes for the other servers to
//! answer STATUS from ([`LeaseStore::publish_nodes`]); no decision is made
//! from it.

mod accounts;
mod artifacts;
pub mod contract;
mod dropbox;
mod jobs;
mod keys;
mod lease;
mod memory;
pub mod meters;
mod notify;
mod orgs;
mod pools;
mod schedules;
#[cfg(feature = "sql")]
pub mod sql;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{
    AccountKind, Change, ChangeEntity, ClusterName, ClusterRecord, DeployCommand, FixedField,
    InstanceSetId, Username,
};

pub use accounts::{
    account_change, left_with_account, AccountRecord, AccountStore, RefreshTokenRecord, Rotation,
};
pub use artifacts::{checked_path, ArtifactStore, KeptFile, LocalArtifacts};
pub use dropbox::{DropboxStore, HandledTrigger};
pub use flotilla_domain::CostRow;
pub use jobs::{
    next_job, step_change, submitted, AttemptRecord, JobId, JobRecord, JobStep, JobStore,
    NewAttempt, NewJob,
};
pub use keys::{keys_change, AddKeys, SigningKeyRecord};
pub use lease::{ClusterNodes, ClusterObstacle, Fence, GoneNode, Lease, LeaseStore};
pub use memory::MemoryStore;
pub use notify::{
    disabled_change, disabled_reason, failed_with_subscription, Delivery, DeliveryOutcome,
    NewDelivery, NewSubscription, NotifyStore, Subscription, ADMIN_SUBSCRIPTION,
};
pub use orgs::{OrgChange, OrgChanged, OrgStore, OrgUsage, UsedNode};
pub use pools::{
    check_stale, in_use, next_shared_version, next_version, pause_change, pool_change,
    resume_change, shared_config_change, stop_change, PoolRecord, PoolStore, PoolWrite,
    RolloutHold, RolloutPause, RolloutStop, RolloutStore, SharedConfigRecord, SharedConfigStore,
    SharedConfigWrite,
};
pub use schedules::{
    check_revision, fired_change, schedule_change, schedule_from, schedule_json, ScheduleStore,
};

/// Why a store call failed. Backend-neutral: each backend maps its own
/// errors into these, so callers (and the contract suite) see one
/// behaviour whatever holds the data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request would change something that is fixed once deployed.
    #[error("cluster {cluster}: {field} cannot change once deployed (it is {current}); leave it out to keep it, or destroy the cluster and wait until it is gone to deploy it anew")]
    Conflict {
        cluster: ClusterName,
        field: FixedField,
        current: String,
    },
    /// The database could not be opened, created or reached where
    /// configured. `location` is a path or a URL without its password.
    #[error("cannot open the database at {location}: {source}")]
    Open {
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The username is taken.
    #[error("an account named {username} already exists ({kind} account); choose another name")]
    AccountExists {
        username: Username,
        kind: AccountKind,
    },
    /// The change would leave no admin account.
    #[error("{0} is the last admin; make another account admin first")]
    LastAdmin(Username),
    /// An organisation's rules refused the change.
    #[error(transparent)]
    Org(flotilla_domain::OrgError),
    /// A record with the same key exists already; nothing was changed.
    #[error("already exists: {0}")]
    Duplicate(String),
    /// The change refers to a record that does not exist; nothing was
    /// changed.
    #[error("refers to a missing record: {0}")]
    NotFound(String),
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database's schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migrate(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database was migrated by a newer flotilla: this one does not
    /// know its schema and refuses to touch it.
    #[error("the database's schema is version {found}, newer than this flotilla knows (up to {known}); run a flotilla at least as new as the one that migrated it")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The artifact store (jobs' logs) failed.
    #[error("the artifact store failed: {0}")]
    Artifacts(String),
    /// The record changed since the writer read it; nothing was changed.
    #[error("{what} was changed by another request while this one ran (it read version {expected}; {found} or later now); look at it again and retry")]
    Stale {
        what: String,
        expected: u64,
        found: u64,
    },
    /// The record is in use and cannot go; nothing was changed.
    #[error("{what} is in use by {users}")]
    InUse { what: String, users: String },
    /// The key signs new tokens: rotate to a new one before retiring it.
    #[error("the key {0} signs new tokens; rotate to a new key first, then retire it")]
    KeyActive(String),
    /// A job cannot take the step asked for in the state it is in.
    #[error("job {id} is {state}: {what}")]
    JobState {
        id: u64,
        state: flotilla_domain::JobState,
        what: String,
    },
    /// A write only the leader makes, by a server whose term is over:
    /// another server took the lease. Nothing was changed.
    #[error("this server's term as leader ({fence}) is over: epoch {current} leads now")]
    Fenced { fence: Fence, current: i64 },
}

impl StoreError {
    /// The conflict `command` has with the deployed `current` record, if it
    /// would change a field that is fixed once deployed.
    pub fn fixed_field_conflict(current: &ClusterRecord, command: &DeployCommand) -> Option<Self> {
        current
            .fixed_field_conflict(command)
            .map(|(field, value)| Self::Conflict {
                cluster: command.cluster.clone(),
                field,
                current: value,
            })
    }
}

/// The change feed: every change the store commits, recorded in the same
/// transaction, numbered in commit order. A reader remembers the last
/// `seq` it saw and asks for what came after; it can miss nothing, since a
/// change with a lower number is always committed before one with a
/// higher.
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// Up to `limit` changes after `after` (0: from the oldest kept),
    /// oldest first; only those of `only`'s entity and key, if given.
    async fn changes(
        &self,
        after: i64,
        limit: usize,
        only: Option<(ChangeEntity, &str)>,
    ) -> Result<Vec<Change>, StoreError>;

    /// The number of the latest change kept, 0 if there is none. A reader
    /// that starts here sees every change committed after.
    async fn last_change(&self) -> Result<i64, StoreError>;

    /// A counter bumped when a change may have been committed: by this
    /// store at once, by other servers on the same database as soon as it
    /// hears of it (PostgreSQL's NOTIFY). A reader marks it seen, reads the
    /// feed, and waits for the next bump before reading again, with a
    /// timeout of its own as the fallback, since a notice can be lost
    /// (a connection dropped) while a change never is.
    fn change_notices(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Removes the changes made before `before`; numbers are never reused.
    /// Returns how many were removed.
    async fn prune_changes(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// Everything the server keeps: desired state here, identity in
/// [`AccountStore`], organisations in [`OrgStore`] and the feed of their
/// changes in [`ChangeFeed`], so one backend (one database) holds them all.
#[async_trait]
pub trait Store:
    AccountStore
    + OrgStore
    + ChangeFeed
    + LeaseStore
    + PoolStore
    + SharedConfigStore
    + RolloutStore
    + JobStore
    + ScheduleStore
    + DropboxStore
    + NotifyStore
    + Send
    + Sync
    + 'static
{
    /// The ownership ID of the instance set behind driver `driver`: created
    /// on first use and the same forever after, so a restarted server adopts
    /// the instances it created before.
    async fn instance_set_id(&self, driver: &str) -> Result<InstanceSetId, StoreError>;

    async fn get_cluster(&self, name: &ClusterName) -> Result<Option<ClusterRecord>, StoreError>;

    /// Every cluster with a record, ordered by name.
    async fn list_clusters(&self) -> Result<Vec<ClusterRecord>, StoreError>;

    /// DEPLOY, atomically: creates the cluster or sets its capacity, clears
    /// any scheduled deletion and schedules one at `expires_at`, and revives
    /// a cluster that was being destroyed. Refuses (`Conflict`) to change
    /// `is_public` or `pool` of an existing record, changing nothing.
    async fn deploy(
        &self,
        command: &DeployCommand,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<ClusterRecord, StoreError>;

    /// EXTEND: moves a deployed cluster's scheduled deletion to
    /// `expires_at` and changes nothing else. `None` if there is no record
    /// or it is being destroyed (nothing to extend).
    async fn extend(
        &self,
        name: &ClusterName,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<ClusterRecord>, StoreError>;

    /// DESTROY: marks the cluster destroying and clears its scheduled
    /// deletion. `None` if there is no record (nothing to do).
    async fn destroy(
        &self,
        name: &ClusterName,
        now: DateTime<Utc>,
    ) -> Result<Option<ClusterRecord>, StoreError>;

    /// Fires every scheduled deletion due at `now`: those clusters become
    /// destroying, exactly as by DESTROY. Returns them. The leader's write:
    /// refused once the term `fence` is over.
    async fn expire_due(
        &self,
        now: DateTime<Utc>,
        fence: Fence,
    ) -> Result<Vec<ClusterRecord>, StoreError>;

    /// The earliest scheduled deletion, if any.
    async fn next_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Removes the record of a destroying cluster whose nodes are all gone.
    /// Does nothing (returns false) if the record changed since `generation`
    /// was read, e.g. because the cluster was deployed again meanwhile.
    /// Its published nodes go with it. The leader's write: refused once
    /// the term `fence` is over.
    async fn forget(
        &self,
        name: &ClusterName,
        generation: i64,
        fence: Fence,
    ) -> Result<bool, StoreError>;
}
