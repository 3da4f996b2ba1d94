//! Rows as the database holds them, and their conversion to and from domain
//! values. Shared by every backend so they agree on the encoding: times are
//! unix milliseconds, capacities plain integers.

use chrono::{DateTime, Utc};
use flotilla_domain::{ClusterName, ClusterRecord, InstanceSetId, NodeCapacity, PoolName};

use crate::StoreError;

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
            .filter(|n| *n >= 1)
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
            (|r| r.node_capacity = 0, "\"demo\", column node_capacity"),
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
}
