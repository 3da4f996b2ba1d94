//! Pools written through the API, every version kept. A pool's latest
//! version is what it is now; a version without a document retired it.
//! Pools of the config file are not stored: each server reads its own.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{ChangeKind, NewChange, PoolName};

use crate::StoreError;

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
