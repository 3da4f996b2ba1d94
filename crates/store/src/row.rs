//! Rows as the database holds them, and their conversion to and from domain
//! values. Shared by every backend so they agree on the encoding: times are
//! unix milliseconds, capacities plain integers, levels and account kinds
//! the domain's names for them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use flotilla_domain::{
    AccountKind, ClusterName, ClusterRecord, InstanceSetId, Level, NodeCapacity, PoolName, Username,
};

use crate::{AccountRecord, StoreError};

/// The columns [`ClusterRow`] is read from. A macro rather than a `const`
/// so queries can `concat!` it into one `&'static str`.
macro_rules! cluster_columns {
    () => {
        "name, is_public, node_capacity, pool, expires_at, destroying, created_at, updated_at, generation"
    };
}
pub(crate) use cluster_columns;

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ClusterRow {
    name: String,
    is_public: bool,
    node_capacity: i64,
    pool: String,
    expires_at: Option<i64>,
    destroying: bool,
    created_at: i64,
    updated_at: i64,
    generation: i64,
}

/// Stored times are whole milliseconds: anything finer is dropped on the way
/// in, so a record read back equals the one returned by the write.
pub(crate) fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_millis(
    ms: i64,
    what: impl FnOnce() -> String,
) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("{}: {ms} is not a valid time", what())))
}

impl TryFrom<ClusterRow> for ClusterRecord {
    type Error = StoreError;

    fn try_from(row: ClusterRow) -> Result<Self, StoreError> {
        let at = |column: &str| format!("clusters row {:?}, column {column}", row.name);
        let name = ClusterName::new(row.name.as_str())
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", at("name"))))?;
        let pool = PoolName::new(row.pool.as_str())
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", at("pool"))))?;
        let node_capacity = u32::try_from(row.node_capacity)
            .ok()
            .map(NodeCapacity::from_stored)
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "{}: {} is not a node capacity",
                    at("node_capacity"),
                    row.node_capacity
                ))
            })?;
        let expires_at = match row.expires_at {
            Some(ms) => Some(from_millis(ms, || at("expires_at"))?),
            None => None,
        };
        Ok(ClusterRecord {
            name,
            is_public: row.is_public,
            node_capacity,
            pool,
            expires_at,
            destroying: row.destroying,
            created_at: from_millis(row.created_at, || at("created_at"))?,
            updated_at: from_millis(row.updated_at, || at("updated_at"))?,
            generation: row.generation,
        })
    }
}

/// Every account with its grants, one row per grant (or one with a NULL
/// `grant_cluster` for an account without any): a single statement, so an
/// account and its grants are read from one snapshot. Queries append a
/// `WHERE` on `a.username`.
macro_rules! account_select {
    () => {
        "SELECT a.username, a.kind, a.level, a.password_hash, a.created_at, \
                g.cluster AS grant_cluster \
         FROM accounts a LEFT JOIN grants g ON g.username = a.username"
    };
}
pub(crate) use account_select;

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AccountRow {
    username: String,
    kind: String,
    level: String,
    password_hash: Option<String>,
    created_at: i64,
    grant_cluster: Option<String>,
}

pub(crate) fn account_kind(stored: &str) -> Option<AccountKind> {
    [AccountKind::Local, AccountKind::Github]
        .into_iter()
        .find(|k| k.as_str() == stored)
}

/// The kind column of the account `username`.
pub(crate) fn stored_account_kind(username: &str, stored: &str) -> Result<AccountKind, StoreError> {
    account_kind(stored).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "accounts row {username:?}, column kind: {stored:?} is not an account kind"
        ))
    })
}

/// Folds joined rows into accounts, ordered by username (bytewise, as
/// `Username` orders, whatever the database's collation says).
pub(crate) fn accounts(rows: Vec<AccountRow>) -> Result<Vec<AccountRecord>, StoreError> {
    let mut accounts: BTreeMap<String, AccountRecord> = BTreeMap::new();
    for row in rows {
        let at = |column: &str| format!("accounts row {:?}, column {column}", row.username);
        if !accounts.contains_key(&row.username) {
            let record = AccountRecord {
                username: Username::new(row.username.as_str())
                    .map_err(|e| StoreError::Corrupt(format!("{}: {e}", at("username"))))?,
                kind: stored_account_kind(&row.username, &row.kind)?,
                level: row
                    .level
                    .parse::<Level>()
                    .map_err(|e| StoreError::Corrupt(format!("{}: {e}", at("level"))))?,
                password_hash: row.password_hash.clone(),
                grants: Default::default(),
                created_at: from_millis(row.created_at, || at("created_at"))?,
            };
            accounts.insert(row.username.clone(), record);
        }
        if let Some(cluster) = &row.grant_cluster {
            let cluster = ClusterName::new(cluster.as_str()).map_err(|e| {
                StoreError::Corrupt(format!(
                    "grants row ({:?}, {cluster:?}), column cluster: {e}",
                    row.username
                ))
            })?;
            if let Some(account) = accounts.get_mut(&row.username) {
                account.grants.insert(cluster);
            }
        }
    }
    Ok(accounts.into_values().collect())
}

/// What presenting a refresh token needs to know about it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RefreshTokenRow {
    pub username: String,
    pub family: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

pub(crate) fn instance_set_id(driver: &str, stored: String) -> Result<InstanceSetId, StoreError> {
    InstanceSetId::new(stored)
        .map_err(|e| StoreError::Corrupt(format!("instance_sets row {driver:?}, column id: {e}")))
}

/// A fresh ownership ID: `fl-` and 64 random bits in hex, short enough for
/// any cloud's tag values and unguessable enough that two servers never
/// share one by accident.
pub(crate) fn new_instance_set_id() -> String {
    format!("fl-{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = new_instance_set_id();
        let b = new_instance_set_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 19, "{id}");
            assert!(id.starts_with("fl-"), "{id}");
            assert!(
                id[3..]
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
                "{id}"
            );
            assert!(InstanceSetId::new(id.as_str()).is_ok(), "{id}");
        }
    }

    fn row() -> ClusterRow {
        ClusterRow {
            name: "demo".into(),
            is_public: true,
            node_capacity: 3,
            pool: "default".into(),
            expires_at: Some(1_700_000_060_000),
            destroying: false,
            created_at: 1_700_000_000_000,
            updated_at: 1_700_000_000_500,
            generation: 4,
        }
    }

    #[test]
    fn a_valid_row_maps_to_its_record() {
        let r = ClusterRecord::try_from(row()).unwrap();
        assert_eq!(r.name.as_str(), "demo");
        assert!(r.is_public);
        assert_eq!(r.node_capacity.get(), 3);
        assert_eq!(r.pool.as_str(), "default");
        assert_eq!(r.expires_at.map(to_millis), Some(1_700_000_060_000));
        assert!(!r.destroying);
        assert_eq!(to_millis(r.created_at), 1_700_000_000_000);
        assert_eq!(to_millis(r.updated_at), 1_700_000_000_500);
        assert_eq!(r.generation, 4);
    }

    /// A way to spoil a valid row, and what the error must then say.
    type Spoil = (fn(&mut ClusterRow), &'static str);

    #[test]
    fn invalid_rows_are_corrupt_and_named() {
        let cases: [Spoil; 5] = [
            (|r| r.name = "bad name".into(), "\"bad name\", column name"),
            (|r| r.pool = "".into(), "\"demo\", column pool"),
            (|r| r.node_capacity = -1, "\"demo\", column node_capacity"),
            (
                |r| r.node_capacity = i64::from(u32::MAX) + 1,
                "column node_capacity",
            ),
            (
                |r| r.expires_at = Some(i64::MAX),
                "\"demo\", column expires_at",
            ),
        ];
        for (spoil, expect) in cases {
            let mut r = row();
            spoil(&mut r);
            match ClusterRecord::try_from(r) {
                Err(StoreError::Corrupt(msg)) => assert!(msg.contains(expect), "{msg}"),
                other => panic!("expected Corrupt containing {expect:?}, got {other:?}"),
            }
        }
    }

    fn account_row(username: &str, grant: Option<&str>) -> AccountRow {
        AccountRow {
            username: username.into(),
            kind: "github".into(),
            level: "org_member".into(),
            password_hash: None,
            created_at: 1_700_000_000_000,
            grant_cluster: grant.map(Into::into),
        }
    }

    #[test]
    fn joined_rows_fold_into_accounts_ordered_bytewise() {
        let rows = vec![
            account_row("b", Some("two")),
            account_row("B", None),
            account_row("b", Some("one")),
            account_row("a", None),
        ];
        let accounts = accounts(rows).unwrap();
        let names: Vec<&str> = accounts.iter().map(|a| a.username.as_str()).collect();
        assert_eq!(names, ["B", "a", "b"]);
        let b = &accounts[2];
        assert_eq!(b.kind, AccountKind::Github);
        assert_eq!(b.level, Level::OrgMember);
        assert_eq!(to_millis(b.created_at), 1_700_000_000_000);
        assert_eq!(
            b.grants.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
        assert!(accounts[0].grants.is_empty());
    }

    /// A way to spoil a valid account row, and what the error must then say.
    type SpoilAccount = (fn(&mut AccountRow), &'static str);

    #[test]
    fn invalid_account_rows_are_corrupt_and_named() {
        let cases: [SpoilAccount; 5] = [
            (
                |r| r.username = "bad name".into(),
                "\"bad name\", column username",
            ),
            (|r| r.kind = "ldap".into(), "\"demo\", column kind"),
            (|r| r.level = "root".into(), "\"demo\", column level"),
            (|r| r.created_at = i64::MAX, "\"demo\", column created_at"),
            (
                |r| r.grant_cluster = Some("".into()),
                "grants row (\"demo\"",
            ),
        ];
        for (spoil, expect) in cases {
            let mut r = account_row("demo", Some("fine"));
            spoil(&mut r);
            match accounts(vec![r]) {
                Err(StoreError::Corrupt(msg)) => assert!(msg.contains(expect), "{msg}"),
                other => panic!("expected Corrupt containing {expect:?}, got {other:?}"),
            }
        }
    }
}
