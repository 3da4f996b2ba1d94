//! Pools written through the API, every version kept. A pool's latest
//! version is what it is now; a version without a document retired it.
//! Pools of the config file are not stored: each server reads its own.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{ChangeKind, LaunchVersion, NewChange, PoolName, SharedConfigName};

use crate::{Fence, StoreError};

/// One version of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRecord {
    pub name: PoolName,
    /// 1 for its first write, one more for each after (retiring included).
    pub version: u64,
    /// The pool as written (a `PoolDocument`'s JSON); None: retired.
    pub document: Option<serde_json::Value>,
    /// The version of the document's schema it was written under.
    pub schema_version: u32,
    pub at: DateTime<Utc>,
    /// Who wrote it (an account's name).
    pub by: String,
}

/// A write of one pool: a new version of it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolWrite {
    pub name: PoolName,
    /// The version the writer read (0: none), so that two writers who read
    /// the same version cannot both write the next.
    pub expected: u64,
    /// None retires the pool.
    pub document: Option<serde_json::Value>,
    pub schema_version: u32,
    pub by: String,
}

#[async_trait]
pub trait PoolStore: Send + Sync {
    /// Writes version `expected + 1` of the pool, with its change
    /// (`pool.applied`, or `pool.retired` for no document). Refused,
    /// changing nothing: [`StoreError::Stale`] if the pool's latest
    /// version is not `expected`; [`StoreError::InUse`] to retire a pool
    /// that a cluster's record names.
    async fn write_pool(
        &self,
        write: &PoolWrite,
        now: DateTime<Utc>,
    ) -> Result<PoolRecord, StoreError>;

    /// Each pool's latest version, retired ones included, by name.
    async fn pools(&self) -> Result<Vec<PoolRecord>, StoreError>;

    /// Every version of pool `name`, oldest first (empty: never written).
    async fn pool_history(&self, name: &PoolName) -> Result<Vec<PoolRecord>, StoreError>;
}

/// The change feed's entry for a pool's new version.
pub fn pool_change(record: &PoolRecord) -> NewChange {
    NewChange {
        kind: if record.document.is_some() {
            ChangeKind::PoolApplied
        } else {
            ChangeKind::PoolRetired
        },
        key: record.name.to_string(),
        payload: serde_json::json!({ "version": record.version, "by": record.by }),
    }
}

/// The refusal to retire pool `pool` that the clusters `users` name.
pub fn in_use(pool: &PoolName, mut users: Vec<String>) -> StoreError {
    let more = users.len().saturating_sub(5);
    users.truncate(5);
    let mut list = users.join(", ");
    if more > 0 {
        list.push_str(&format!(" and {more} more"));
    }
    StoreError::InUse {
        what: format!("pool {pool}"),
        users: format!("clusters {list}; destroy them (and wait until they are gone) first"),
    }
}

/// The record `write` makes as the version after `found`, at `now`.
pub fn next_version(write: &PoolWrite, found: u64, now: DateTime<Utc>) -> PoolRecord {
    PoolRecord {
        name: write.name.clone(),
        version: found + 1,
        document: write.document.clone(),
        schema_version: write.schema_version,
        at: now,
        by: write.by.clone(),
    }
}

/// `Stale` unless the pool's latest version `found` is the one `write` read.
pub fn check_stale(write: &PoolWrite, found: u64) -> Result<(), StoreError> {
    if found == write.expected {
        Ok(())
    } else {
        Err(StoreError::Stale {
            what: format!("pool {}", write.name),
            expected: write.expected,
            found,
        })
    }
}

/// One version of a shared config: a value many pools use (say, the image
/// per region), checked against its schema, which is fixed when it is
/// created. None is ever deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedConfigRecord {
    pub name: SharedConfigName,
    /// 1 at creation, one more for each update.
    pub version: u64,
    /// Which published schema it follows (`DRIVER/KIND`, as `aws/images`).
    pub kind: String,
    /// That schema as it was when the config was created.
    pub schema: serde_json::Value,
    pub value: serde_json::Value,
    pub at: DateTime<Utc>,
    pub by: String,
}

/// A write of one shared config: its next version.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedConfigWrite {
    pub name: SharedConfigName,
    /// The version the writer read (0: creating it).
    pub expected: u64,
    /// For a creation; an update keeps the config's.
    pub kind: String,
    pub schema: serde_json::Value,
    pub value: serde_json::Value,
    pub by: String,
}

#[async_trait]
pub trait SharedConfigStore: Send + Sync {
    /// Writes version `expected + 1` of the config, with its change
    /// (`shared_config.created` or `.updated`); an update keeps the kind
    /// and schema of the config's first version, whatever `write` says.
    /// Refused, changing nothing, as [`StoreError::Stale`] if the config's
    /// latest version is not `expected`.
    async fn write_shared_config(
        &self,
        write: &SharedConfigWrite,
        now: DateTime<Utc>,
    ) -> Result<SharedConfigRecord, StoreError>;

    /// Each shared config's latest version, by name.
    async fn shared_configs(&self) -> Result<Vec<SharedConfigRecord>, StoreError>;

    /// Every version of config `name`, oldest first (empty: none).
    async fn shared_config_versions(
        &self,
        name: &SharedConfigName,
    ) -> Result<Vec<SharedConfigRecord>, StoreError>;
}

/// The change feed's entry for a shared config's new version.
pub fn shared_config_change(record: &SharedConfigRecord) -> NewChange {
    NewChange {
        kind: if record.version == 1 {
            ChangeKind::SharedConfigCreated
        } else {
            ChangeKind::SharedConfigUpdated
        },
        key: record.name.to_string(),
        payload: serde_json::json!({ "version": record.version, "by": record.by, "kind": record.kind }),
    }
}

/// The record `write` makes as the version after `first` (the config's
/// first version, whose kind and schema it keeps; None: creating it), at
/// `now`. `Stale` unless `found` is the version `write` read.
pub fn next_shared_version(
    write: &SharedConfigWrite,
    found: u64,
    first: Option<&SharedConfigRecord>,
    now: DateTime<Utc>,
) -> Result<SharedConfigRecord, StoreError> {
    if found != write.expected {
        return Err(StoreError::Stale {
            what: format!("shared config {}", write.name),
            expected: write.expected,
            found,
        });
    }
    let (kind, schema) = match first {
        Some(first) => (first.kind.clone(), first.schema.clone()),
        None => (write.kind.clone(), write.schema.clone()),
    };
    Ok(SharedConfigRecord {
        name: write.name.clone(),
        version: found + 1,
        kind,
        schema,
        value: write.value.clone(),
        at: now,
        by: write.by.clone(),
    })
}

/// What holds a pool's rollout back, if anything: its clusters then keep
/// their outdated nodes (see `Rollout` in the domain).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutHold {
    pub pool: PoolName,
    /// Paused by an account, until resumed.
    pub paused: Option<RolloutPause>,
    /// Stopped by the leader, until resumed or the pool's launch
    /// configuration changes again.
    pub stopped: Option<RolloutStop>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPause {
    pub by: String,
    pub at: DateTime<Utc>,
}

/// Replacements at `version` kept failing; `reason` is the last failure.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutStop {
    pub version: LaunchVersion,
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[async_trait]
pub trait RolloutStore: Send + Sync {
    /// Pauses pool `pool`'s rollout, with its change
    /// (`pool.rollout_paused`). Pausing a paused rollout keeps the first
    /// pause's account and time.
    async fn pause_rollout(
        &self,
        pool: &PoolName,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<RolloutHold, StoreError>;

    /// Resumes pool `pool`'s rollout: clears a pause and a stop, with its
    /// change (`pool.rollout_resumed`). True if something held it.
    async fn resume_rollout(
        &self,
        pool: &PoolName,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// The leader of `fence`'s term stops pool `pool`'s rollout, with its
    /// change (`pool.rollout_stopped`); a pause stays as it is.
    async fn stop_rollout(
        &self,
        fence: Fence,
        pool: &PoolName,
        stop: &RolloutStop,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Every pool whose rollout something holds, by name.
    async fn rollout_holds(&self) -> Result<Vec<RolloutHold>, StoreError>;
}

/// The change feed's entry for a rollout paused, resumed or stopped.
pub fn rollout_change(kind: ChangeKind, pool: &PoolName, payload: serde_json::Value) -> NewChange {
    NewChange {
        kind,
        key: pool.to_string(),
        payload,
    }
}

/// The change of a pause by `by`.
pub fn pause_change(pool: &PoolName, by: &str) -> NewChange {
    rollout_change(
        ChangeKind::PoolRolloutPaused,
        pool,
        serde_json::json!({ "by": by }),
    )
}

/// The change of a resumption by `by`.
pub fn resume_change(pool: &PoolName, by: &str) -> NewChange {
    rollout_change(
        ChangeKind::PoolRolloutResumed,
        pool,
        serde_json::json!({ "by": by }),
    )
}

/// The change of a stop.
pub fn stop_change(pool: &PoolName, stop: &RolloutStop) -> NewChange {
    rollout_change(
        ChangeKind::PoolRolloutStopped,
        pool,
        serde_json::json!({ "version": stop.version, "reason": stop.reason }),
    )
}
