//! What the SQL backends share (feature `sql`): rows as the database holds
//! them and their conversion to and from domain values, so every backend
//! agrees on the encoding (times are unix milliseconds, capacities and
//! money plain integers, levels, kinds and roles the domain's names for
//! them), and the mapping of sqlx's errors into the neutral [`StoreError`].

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flotilla_domain::{
    AccountKind, Budget, CapacityRequest, Change, ChangeEntity, ChangeKind, ClusterName,
    ClusterRecord, InstanceId, InstanceSetId, InstanceType, JobMeter, LaunchVersion, Level, Money,
    NodeCapacity, NodeEnd, NodeEndSeen, NodeMeter, NodeRecord, NodeState, Obstacle, ObstacleCode,
    OrgRole, OrgSettings, Organisation, PoolError, PoolErrorKey, PoolErrorKind, PoolName, Username,
};
use sqlx::error::ErrorKind;
use sqlx::migrate::{MigrateError, Migrator};

use crate::{AccountRecord, Lease, SigningKeyRecord, StoreError};

/// The columns [`ClusterRow`] is read from. A macro rather than a `const`
/// so queries can `concat!` it into one `&'static str`.
#[macro_export]
macro_rules! cluster_columns {
    () => {
        "name, is_public, node_capacity, pool, expires_at, destroying, created_at, updated_at, generation, workload"
    };
}

#[derive(Debug, sqlx::FromRow)]
pub struct ClusterRow {
    pub name: String,
    pub is_public: bool,
    pub node_capacity: i64,
    pub pool: String,
    pub expires_at: Option<i64>,
    pub destroying: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub generation: i64,
    /// The cluster's `Workload` as JSON, if it has one.
    pub workload: Option<String>,
}

/// A cluster's workload as the `workload` column keeps it.
pub fn workload_json(workload: Option<&flotilla_domain::Workload>) -> Option<String> {
    workload.map(|w| serde_json::to_string(w).expect("a workload serialises"))
}

/// Stored times are whole milliseconds: anything finer is dropped on the way
/// in, so a record read back equals the one returned by the write.
pub fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_millis(ms: i64, what: impl FnOnce() -> String) -> Result<DateTime<Utc>, StoreError> {
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
        let workload = match &row.workload {
            Some(json) => Some(
                serde_json::from_str(json)
                    .map_err(|e| StoreError::Corrupt(format!("{}: {e}", at("workload"))))?,
            ),
            None => None,
        };
        Ok(ClusterRecord {
            name,
            is_public: row.is_public,
            node_capacity,
            pool,
            workload,
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
#[macro_export]
macro_rules! account_select {
    () => {
        "SELECT a.username, a.kind, a.level, a.password_hash, a.created_at, \
                g.cluster AS grant_cluster \
         FROM accounts a LEFT JOIN grants g ON g.username = a.username"
    };
}

#[derive(Debug, sqlx::FromRow)]
pub struct AccountRow {
    pub username: String,
    pub kind: String,
    pub level: String,
    pub password_hash: Option<String>,
    pub created_at: i64,
    pub grant_cluster: Option<String>,
}

pub fn account_kind(stored: &str) -> Option<AccountKind> {
    [AccountKind::Local, AccountKind::Github]
        .into_iter()
        .find(|k| k.as_str() == stored)
}

/// The kind column of the account `username`.
pub fn stored_account_kind(username: &str, stored: &str) -> Result<AccountKind, StoreError> {
    account_kind(stored).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "accounts row {username:?}, column kind: {stored:?} is not an account kind"
        ))
    })
}

/// Folds joined rows into accounts, ordered by username (bytewise, as
/// `Username` orders, whatever the database's collation says).
pub fn accounts(rows: Vec<AccountRow>) -> Result<Vec<AccountRecord>, StoreError> {
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
pub struct RefreshTokenRow {
    pub username: String,
    pub family: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

pub fn instance_set_id(driver: &str, stored: String) -> Result<InstanceSetId, StoreError> {
    InstanceSetId::new(stored)
        .map_err(|e| StoreError::Corrupt(format!("instance_sets row {driver:?}, column id: {e}")))
}

/// A fresh ownership ID: `fl-` and 64 random bits in hex, short enough for
/// any cloud's tag values and unguessable enough that two servers never
/// share one by accident.
pub fn new_instance_set_id() -> String {
    format!("fl-{:016x}", rand::random::<u64>())
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            match db.kind() {
                ErrorKind::UniqueViolation => {
                    return StoreError::Duplicate(db.message().to_owned())
                }
                ErrorKind::ForeignKeyViolation => {
                    return StoreError::NotFound(db.message().to_owned())
                }
                _ => {}
            }
        }
        StoreError::Database(Box::new(e))
    }
}

/// An insert of version `expected + 1` of `what` refused because another
/// writer inserted it first (the key `(name, version)` is taken) as
/// [`StoreError::Stale`]; any other error as it is.
pub fn stale_if_taken(e: sqlx::Error, what: String, expected: u64) -> StoreError {
    match StoreError::from(e) {
        StoreError::Duplicate(_) => StoreError::Stale {
            what,
            expected,
            found: expected + 1,
        },
        other => other,
    }
}

/// A failed migration as a [`StoreError`]: a database that has applied a
/// migration `migrator` does not know was migrated by a newer flotilla.
pub fn migrate_error(e: MigrateError, migrator: &Migrator) -> StoreError {
    match e {
        MigrateError::VersionMissing(found) => StoreError::SchemaTooNew {
            found,
            known: migrator.iter().map(|m| m.version).max().unwrap_or(0),
        },
        other => StoreError::Migrate(Box::new(other)),
    }
}

// The change feed.

/// A row of `changes`.
#[derive(Debug, sqlx::FromRow)]
pub struct ChangeRow {
    pub seq: i64,
    pub kind: String,
    pub key: String,
    pub at: i64,
    pub payload: String,
}

impl TryFrom<ChangeRow> for Change {
    type Error = StoreError;

    fn try_from(row: ChangeRow) -> Result<Change, StoreError> {
        let key = row.seq.to_string();
        Ok(Change {
            seq: row.seq,
            kind: ChangeKind::parse(&row.kind)
                .ok_or_else(|| corrupt("changes", &key, format!("kind {:?}", row.kind)))?,
            at: time("changes", &key, "at", row.at)?,
            payload: serde_json::from_str(&row.payload)
                .map_err(|e| corrupt("changes", &key, format!("payload: {e}")))?,
            key: row.key,
        })
    }
}

// Signing keys.

/// A row of `signing_keys`.
#[derive(sqlx::FromRow)]
pub struct SigningKeyRow {
    pub kid: String,
    pub pem: String,
    pub active: bool,
    pub created_at: i64,
}

impl TryFrom<SigningKeyRow> for SigningKeyRecord {
    type Error = StoreError;

    fn try_from(row: SigningKeyRow) -> Result<SigningKeyRecord, StoreError> {
        Ok(SigningKeyRecord {
            created_at: time("signing_keys", &row.kid, "created_at", row.created_at)?,
            kid: row.kid,
            pem: row.pem,
            active: row.active,
        })
    }
}

/// Every signing key, oldest first; the SQL both backends run.
pub const SIGNING_KEYS_SELECT: &str =
    "SELECT kid, pem, active, created_at FROM signing_keys ORDER BY created_at, kid";

// Pools written through the API.

/// A row of `pools`: one version of a pool.
#[derive(Debug, sqlx::FromRow)]
pub struct PoolRow {
    pub name: String,
    pub version: i64,
    pub document: Option<String>,
    pub schema_version: i64,
    pub at: i64,
    pub by_account: String,
}

impl TryFrom<PoolRow> for crate::PoolRecord {
    type Error = StoreError;

    fn try_from(row: PoolRow) -> Result<crate::PoolRecord, StoreError> {
        let corrupt = |what: &str| {
            StoreError::Corrupt(format!("pools row {:?} v{}: {what}", row.name, row.version))
        };
        Ok(crate::PoolRecord {
            name: flotilla_domain::PoolName::new(row.name.as_str())
                .map_err(|e| corrupt(&e.to_string()))?,
            version: u64::try_from(row.version).map_err(|_| corrupt("negative version"))?,
            document: row
                .document
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| corrupt(&format!("document: {e}")))?,
            schema_version: u32::try_from(row.schema_version)
                .map_err(|_| corrupt("schema_version out of range"))?,
            at: time("pools", &row.name, "at", row.at)?,
            by: row.by_account,
        })
    }
}

/// The columns of a [`PoolRow`].
const POOL_COLUMNS: &str = "name, version, document, schema_version, at, by_account";

/// Each pool's latest version, by name.
pub fn pools_latest_select() -> String {
    format!(
        "SELECT {POOL_COLUMNS} FROM pools p \
         WHERE version = (SELECT MAX(version) FROM pools q WHERE q.name = p.name) ORDER BY name"
    )
}

/// Every version of pool `$1`, oldest first.
pub fn pool_history_select() -> String {
    format!("SELECT {POOL_COLUMNS} FROM pools WHERE name = $1 ORDER BY version")
}

/// The latest version of pool `$1` (0: never written).
pub const POOL_VERSION: &str =
    "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM pools WHERE name = $1";

/// The clusters whose records name pool `$1`.
pub const POOL_USERS: &str = "SELECT name FROM clusters WHERE pool = $1 ORDER BY name";

pub const POOL_INSERT: &str =
    "INSERT INTO pools (name, version, document, schema_version, at, by_account) \
     VALUES ($1, $2, $3, $4, $5, $6)";

/// A row of `pool_rollouts`: what holds one pool's rollout back.
#[derive(Debug, sqlx::FromRow)]
pub struct RolloutRow {
    pub pool: String,
    pub paused_by: Option<String>,
    pub paused_at: Option<i64>,
    pub stopped_version: Option<String>,
    pub stopped_reason: Option<String>,
    pub stopped_at: Option<i64>,
}

impl TryFrom<RolloutRow> for crate::RolloutHold {
    type Error = StoreError;

    fn try_from(row: RolloutRow) -> Result<crate::RolloutHold, StoreError> {
        let key = row.pool.clone();
        let pool = PoolName::new(row.pool.as_str())
            .map_err(|e| corrupt("pool_rollouts", &key, format!("pool: {e}")))?;
        let paused = match (row.paused_by, row.paused_at) {
            (Some(by), Some(at)) => Some(crate::RolloutPause {
                by,
                at: time("pool_rollouts", &key, "paused_at", at)?,
            }),
            _ => None,
        };
        let stopped = match (row.stopped_version, row.stopped_reason, row.stopped_at) {
            (Some(version), Some(reason), Some(at)) => Some(crate::RolloutStop {
                version: LaunchVersion::parse(&version).ok_or_else(|| {
                    corrupt(
                        "pool_rollouts",
                        &key,
                        format!("stopped_version {version:?}"),
                    )
                })?,
                reason,
                at: time("pool_rollouts", &key, "stopped_at", at)?,
            }),
            _ => None,
        };
        Ok(crate::RolloutHold {
            pool,
            paused,
            stopped,
        })
    }
}

/// Every held rollout, by pool.
pub const ROLLOUTS_SELECT: &str = "SELECT pool, paused_by, paused_at, stopped_version, \
     stopped_reason, stopped_at FROM pool_rollouts ORDER BY pool";

/// One pool's held rollout.
pub const ROLLOUT_SELECT: &str = "SELECT pool, paused_by, paused_at, stopped_version, \
     stopped_reason, stopped_at FROM pool_rollouts WHERE pool = $1";

/// Pauses `$1`'s rollout by `$2` at `$3`, keeping an earlier pause.
pub const ROLLOUT_PAUSE: &str = "INSERT INTO pool_rollouts (pool, paused_by, paused_at) \
     VALUES ($1, $2, $3) ON CONFLICT (pool) DO UPDATE SET \
     paused_by = COALESCE(pool_rollouts.paused_by, excluded.paused_by), \
     paused_at = COALESCE(pool_rollouts.paused_at, excluded.paused_at)";

/// Resumes `$1`'s rollout.
pub const ROLLOUT_RESUME: &str = "DELETE FROM pool_rollouts WHERE pool = $1";

/// Stops `$1`'s rollout at version `$2` for reason `$3` at `$4`, keeping
/// a pause.
pub const ROLLOUT_STOP: &str =
    "INSERT INTO pool_rollouts (pool, stopped_version, stopped_reason, stopped_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (pool) DO UPDATE SET \
     stopped_version = excluded.stopped_version, stopped_reason = excluded.stopped_reason, \
     stopped_at = excluded.stopped_at";

/// A row of `shared_configs`: one version of a shared config.
#[derive(Debug, sqlx::FromRow)]
pub struct SharedConfigRow {
    pub name: String,
    pub version: i64,
    pub kind: String,
    pub schema: String,
    pub value: String,
    pub at: i64,
    pub by_account: String,
}

impl TryFrom<SharedConfigRow> for crate::SharedConfigRecord {
    type Error = StoreError;

    fn try_from(row: SharedConfigRow) -> Result<crate::SharedConfigRecord, StoreError> {
        let corrupt = |what: &str| {
            StoreError::Corrupt(format!(
                "shared_configs row {:?} v{}: {what}",
                row.name, row.version
            ))
        };
        let json = |text: &str, what: &str| {
            serde_json::from_str(text).map_err(|e| corrupt(&format!("{what}: {e}")))
        };
        Ok(crate::SharedConfigRecord {
            name: flotilla_domain::SharedConfigName::new(row.name.as_str())
                .map_err(|e| corrupt(&e.to_string()))?,
            version: u64::try_from(row.version).map_err(|_| corrupt("negative version"))?,
            schema: json(&row.schema, "schema")?,
            value: json(&row.value, "value")?,
            at: time("shared_configs", &row.name, "at", row.at)?,
            kind: row.kind,
            by: row.by_account,
        })
    }
}

const SHARED_COLUMNS: &str = "name, version, kind, schema, value, at, by_account";

/// Each shared config's latest version, by name.
pub fn shared_configs_latest_select() -> String {
    format!(
        "SELECT {SHARED_COLUMNS} FROM shared_configs s \
         WHERE version = (SELECT MAX(version) FROM shared_configs t WHERE t.name = s.name) \
         ORDER BY name"
    )
}

/// Every version of shared config `$1`, oldest first.
pub fn shared_config_versions_select() -> String {
    format!("SELECT {SHARED_COLUMNS} FROM shared_configs WHERE name = $1 ORDER BY version")
}

pub const SHARED_CONFIG_INSERT: &str = "INSERT INTO shared_configs \
     (name, version, kind, schema, value, at, by_account) VALUES ($1, $2, $3, $4, $5, $6, $7)";

// The leader's lease and published nodes.

/// A row of `leases`.
#[derive(Debug, sqlx::FromRow)]
pub struct LeaseRow {
    pub holder: String,
    pub epoch: i64,
    pub expires_at: i64,
}

impl TryFrom<LeaseRow> for Lease {
    type Error = StoreError;

    fn try_from(row: LeaseRow) -> Result<Lease, StoreError> {
        Ok(Lease {
            expires_at: time("leases", "leader", "expires_at", row.expires_at)?,
            holder: row.holder,
            epoch: row.epoch,
        })
    }
}

/// The lease's row, by the same name on both backends.
pub const LEASE_SELECT: &str = "SELECT holder, epoch, expires_at FROM leases WHERE name = 'leader'";

/// A row of `nodes`.
#[derive(Debug, sqlx::FromRow)]
pub struct NodeRow {
    pub cluster: String,
    pub id: String,
    pub instance_type: String,
    pub launched_at: i64,
    pub state: String,
    pub state_since: i64,
    pub address: Option<String>,
    pub pool_version: Option<String>,
}

impl TryFrom<NodeRow> for (ClusterName, NodeRecord) {
    type Error = StoreError;

    fn try_from(row: NodeRow) -> Result<(ClusterName, NodeRecord), StoreError> {
        let key = format!("{}/{}", row.cluster, row.id);
        let cluster = ClusterName::new(row.cluster.as_str())
            .map_err(|e| corrupt("nodes", &key, format!("cluster: {e}")))?;
        let node = NodeRecord {
            instance_type: InstanceType::new(row.instance_type.as_str())
                .map_err(|e| corrupt("nodes", &key, format!("instance_type: {e}")))?,
            launched_at: time("nodes", &key, "launched_at", row.launched_at)?,
            state: NodeState::parse(&row.state)
                .ok_or_else(|| corrupt("nodes", &key, format!("state {:?}", row.state)))?,
            state_since: time("nodes", &key, "state_since", row.state_since)?,
            address: row.address,
            pool_version: match row.pool_version {
                Some(v) => Some(
                    LaunchVersion::parse(&v)
                        .ok_or_else(|| corrupt("nodes", &key, format!("pool_version {v:?}")))?,
                ),
                None => None,
            },
            id: InstanceId::new(row.id),
        };
        Ok((cluster, node))
    }
}

/// The published nodes of cluster `$2`, or of all if `$1`; the SQL both
/// backends run.
/// The columns [`MeterRow`] is read from, by name, from [`METERS_FROM`]: a
/// following meter is charged up to its organisation's `accrued_until`.
pub const METER_COLUMNS_NAMED: &str = "m.org AS org, m.id AS id, m.launched_at AS launched_at, \
    m.price AS price, \
    CASE WHEN m.follows THEN o.accrued_until ELSE m.charged_until END AS charged_until, \
    m.ended_at AS ended_at, m.ended AS ended, m.job AS job, m.charged_to AS charged_to";

/// What [`METER_COLUMNS_NAMED`] are read from.
pub const METERS_FROM: &str = "meters AS m JOIN orgs AS o ON o.name = m.org";

/// A row of `meters`, a following meter's charge resolved.
#[derive(Debug, serde::Deserialize, sqlx::FromRow)]
pub struct MeterRow {
    pub org: String,
    pub id: String,
    pub launched_at: i64,
    pub price: i64,
    pub charged_until: Option<i64>,
    pub ended_at: Option<i64>,
    pub ended: Option<String>,
    /// A job attempt's instance: `JOB/ATTEMPT`.
    pub job: Option<String>,
    /// Who a job attempt's instance is charged to.
    pub charged_to: Option<String>,
}

impl TryFrom<MeterRow> for NodeMeter {
    type Error = StoreError;

    fn try_from(row: MeterRow) -> Result<Self, StoreError> {
        let key = format!("{}/{}", row.org, row.id);
        let end = match (row.ended_at, row.ended.as_deref()) {
            (None, None) => None,
            (Some(at), Some(seen)) => Some(NodeEnd {
                at: time("meters", &key, "ended_at", at)?,
                seen: NodeEndSeen::parse(seen)
                    .ok_or_else(|| corrupt("meters", &key, format!("ended {seen:?}")))?,
            }),
            _ => return Err(corrupt("meters", &key, "ended_at and ended disagree")),
        };
        let job = match row.job {
            None => None,
            Some(attempt) => Some(JobMeter {
                attempt,
                user: row
                    .charged_to
                    .map(|u| Username::new(u.as_str()).map_err(|e| corrupt("meters", &key, e)))
                    .transpose()?,
            }),
        };
        Ok(NodeMeter {
            cluster: ClusterName::new(row.org.as_str()).map_err(|e| corrupt("meters", &key, e))?,
            id: InstanceId::new(row.id),
            launched_at: time("meters", &key, "launched_at", row.launched_at)?,
            price_per_hour: Money::from_micros(row.price),
            charged_until: opt_time("meters", &key, "charged_until", row.charged_until)?,
            end,
            job,
        })
    }
}

/// The columns [`StoredMeterRow`] is read from, in order, from `meters AS
/// m`: as stored, a following meter's `charged_until` unresolved.
pub const STORED_METER_COLUMNS: &str = "m.org, m.id, m.launched_at, m.price, m.charged_until, \
    m.ended_at, m.ended, m.follows, m.job, m.charged_to";

/// A row of `meters` as stored (see [`STORED_METER_COLUMNS`]); also read by
/// field order from a JSON array, where SQLite writes `follows` as 0 or 1.
#[derive(Debug, serde::Deserialize, sqlx::FromRow)]
pub struct StoredMeterRow {
    pub org: String,
    pub id: String,
    pub launched_at: i64,
    pub price: i64,
    pub charged_until: Option<i64>,
    pub ended_at: Option<i64>,
    pub ended: Option<String>,
    #[serde(deserialize_with = "bool_or_int")]
    pub follows: bool,
    pub job: Option<String>,
    pub charged_to: Option<String>,
}

fn bool_or_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Int(i64),
    }
    Ok(match <Flag as serde::Deserialize>::deserialize(d)? {
        Flag::Bool(b) => b,
        Flag::Int(i) => i != 0,
    })
}

impl TryFrom<StoredMeterRow> for crate::meters::StoredMeter {
    type Error = StoreError;

    fn try_from(row: StoredMeterRow) -> Result<Self, StoreError> {
        let follows = row.follows;
        let meter = NodeMeter::try_from(MeterRow {
            org: row.org,
            id: row.id,
            launched_at: row.launched_at,
            price: row.price,
            charged_until: row.charged_until,
            ended_at: row.ended_at,
            ended: row.ended,
            job: row.job,
            charged_to: row.charged_to,
        })?;
        Ok(Self { meter, follows })
    }
}

/// Meters as the columns of [`MeterRow`] plus `settled` (in the JSON,
/// `settled` comes before `job` and `charged_to`), one vector
/// per column, for writing many rows in one statement.
#[derive(Debug, Default)]
pub struct MeterColumns {
    pub org: Vec<String>,
    pub id: Vec<String>,
    pub launched_at: Vec<i64>,
    pub price: Vec<i64>,
    pub charged_until: Vec<Option<i64>>,
    pub ended_at: Vec<Option<i64>>,
    pub ended: Vec<Option<&'static str>>,
    pub settled: Vec<bool>,
    pub job: Vec<Option<String>>,
    pub charged_to: Vec<Option<String>>,
}

impl MeterColumns {
    pub fn push(&mut self, m: &NodeMeter) {
        self.org.push(m.cluster.to_string());
        self.id.push(m.id.to_string());
        self.launched_at.push(to_millis(m.launched_at));
        self.price.push(m.price_per_hour.micros());
        self.charged_until.push(m.charged_until.map(to_millis));
        self.ended_at.push(m.end.map(|e| to_millis(e.at)));
        self.ended.push(m.end.map(|e| e.seen.as_str()));
        self.settled.push(m.settled());
        self.job.push(m.job.as_ref().map(|j| j.attempt.clone()));
        self.charged_to.push(
            m.job
                .as_ref()
                .and_then(|j| j.user.as_ref())
                .map(ToString::to_string),
        );
    }

    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    /// The rows as one JSON array of arrays, in column order.
    pub fn to_json(&self) -> String {
        let rows: Vec<serde_json::Value> = (0..self.id.len())
            .map(|i| {
                serde_json::json!([
                    self.org[i],
                    self.id[i],
                    self.launched_at[i],
                    self.price[i],
                    self.charged_until[i],
                    self.ended_at[i],
                    self.ended[i],
                    self.settled[i],
                    self.job[i],
                    self.charged_to[i]
                ])
            })
            .collect();
        serde_json::Value::Array(rows).to_string()
    }
}

/// Writes one cluster's obstacle, replacing any: `$1` cluster, then the
/// fields of [`ObstacleRow`] in order. Both backends run it.
pub const OBSTACLE_UPSERT: &str = "INSERT INTO obstacles \
     (cluster, code, message, since, last_at, count, retry_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (cluster) DO UPDATE SET code = excluded.code, message = excluded.message, \
         since = excluded.since, last_at = excluded.last_at, count = excluded.count, \
         retry_at = excluded.retry_at";

pub const OBSTACLES_SELECT: &str =
    "SELECT cluster, code, message, since, last_at, count, retry_at FROM obstacles";

/// A row of `obstacles`.
#[derive(Debug, sqlx::FromRow)]
pub struct ObstacleRow {
    pub cluster: String,
    pub code: String,
    pub message: String,
    pub since: i64,
    pub last_at: i64,
    pub count: i64,
    pub retry_at: Option<i64>,
}

impl TryFrom<ObstacleRow> for (ClusterName, Obstacle) {
    type Error = StoreError;

    fn try_from(row: ObstacleRow) -> Result<Self, StoreError> {
        let key = row.cluster.clone();
        let cluster =
            ClusterName::new(row.cluster.as_str()).map_err(|e| corrupt("obstacles", &key, e))?;
        let obstacle = Obstacle {
            code: ObstacleCode::parse(&row.code)
                .ok_or_else(|| corrupt("obstacles", &key, format!("code {:?}", row.code)))?,
            message: row.message,
            since: time("obstacles", &key, "since", row.since)?,
            last_at: time("obstacles", &key, "last_at", row.last_at)?,
            count: u32::try_from(row.count)
                .map_err(|_| corrupt("obstacles", &key, format!("count {}", row.count)))?,
            retry_at: opt_time("obstacles", &key, "retry_at", row.retry_at)?,
        };
        Ok((cluster, obstacle))
    }
}

/// Counts one failure into `pool_errors`: the backend's `least`/`greatest`
/// (SQLite: `min`/`max`) at `{min}`/`{max}`.
pub fn pool_error_upsert(min: &str, max: &str) -> String {
    format!(
        "INSERT INTO pool_errors \
         (pool, kind, code, cluster, instance_type, message, count, first_at, last_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (pool, kind, code, cluster, instance_type) DO UPDATE SET \
             count = pool_errors.count + excluded.count, \
             first_at = {min}(pool_errors.first_at, excluded.first_at), \
             message = CASE WHEN excluded.last_at >= pool_errors.last_at \
                 THEN excluded.message ELSE pool_errors.message END, \
             last_at = {max}(pool_errors.last_at, excluded.last_at)"
    )
}

/// A pool's errors: `$3` true for all, else those of the clusters in `$4`,
/// which `{only}` tests (the backend's way of matching a list).
pub fn pool_errors_select(only: &str) -> String {
    format!(
        "SELECT pool, kind, code, cluster, instance_type, message, \
         count, first_at, last_at FROM pool_errors WHERE pool = $1 AND ($3 OR {only}) \
         ORDER BY last_at DESC, kind, code, cluster, instance_type LIMIT $2"
    )
}

/// A pool error's code as stored: '' for none (it is part of the key).
pub fn pool_error_code(error: &PoolError) -> &'static str {
    error.key.code.map_or("", ObstacleCode::as_str)
}

/// A row of `pool_errors`.
#[derive(Debug, sqlx::FromRow)]
pub struct PoolErrorRow {
    pub pool: String,
    pub kind: String,
    pub code: String,
    pub cluster: String,
    pub instance_type: String,
    pub message: String,
    pub count: i64,
    pub first_at: i64,
    pub last_at: i64,
}

impl TryFrom<PoolErrorRow> for PoolError {
    type Error = StoreError;

    fn try_from(row: PoolErrorRow) -> Result<Self, StoreError> {
        let key = format!("{}/{}", row.pool, row.cluster);
        let bad =
            |what: &str, value: &str| corrupt("pool_errors", &key, format!("{what} {value:?}"));
        Ok(PoolError {
            key: PoolErrorKey {
                pool: PoolName::new(row.pool.as_str()).map_err(|_| bad("pool", &row.pool))?,
                kind: PoolErrorKind::parse(&row.kind).ok_or_else(|| bad("kind", &row.kind))?,
                code: match row.code.as_str() {
                    "" => None,
                    code => Some(ObstacleCode::parse(code).ok_or_else(|| bad("code", code))?),
                },
                cluster: ClusterName::new(row.cluster.as_str())
                    .map_err(|_| bad("cluster", &row.cluster))?,
                instance_type: InstanceType::new(row.instance_type.as_str())
                    .map_err(|_| bad("instance_type", &row.instance_type))?,
            },
            message: row.message,
            count: u64::try_from(row.count).map_err(|_| bad("count", &row.count.to_string()))?,
            first_at: time("pool_errors", &key, "first_at", row.first_at)?,
            last_at: time("pool_errors", &key, "last_at", row.last_at)?,
        })
    }
}

pub const NODES_SELECT: &str = "SELECT cluster, id, instance_type, launched_at, state, \
     state_since, address, pool_version FROM nodes WHERE $1 OR cluster = $2";

/// Published nodes in cluster order, each cluster's by launch time, as
/// bytes compare (whatever the database's collation).
pub fn published_nodes(rows: Vec<NodeRow>) -> Result<Vec<(ClusterName, NodeRecord)>, StoreError> {
    let mut nodes = rows
        .into_iter()
        .map(<(ClusterName, NodeRecord)>::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    nodes.sort_by(|(a, x), (b, y)| {
        a.cmp(b)
            .then(x.launched_at.cmp(&y.launched_at))
            .then(x.id.cmp(&y.id))
    });
    Ok(nodes)
}

/// The `LIKE` pattern of an entity's kinds (`cluster.%`).
pub fn entity_pattern(entity: ChangeEntity) -> &'static str {
    match entity {
        ChangeEntity::Cluster => "cluster.%",
        ChangeEntity::Org => "org.%",
        ChangeEntity::Account => "account.%",
        ChangeEntity::Server => "server.%",
        ChangeEntity::Pool => "pool.%",
        ChangeEntity::SharedConfig => "shared_config.%",
        ChangeEntity::Job => "job.%",
        ChangeEntity::Schedule => "schedule.%",
        ChangeEntity::Dropbox => "dropbox.%",
        ChangeEntity::Notification => "notification.%",
    }
}

/// Reads `changes` after `after`, oldest first: the SQL both backends run.
pub const CHANGES_SELECT: &str = "SELECT seq, kind, key, at, payload FROM changes \
     WHERE seq > $1 AND ($3 OR (kind LIKE $4 AND key = $5)) ORDER BY seq LIMIT $2";

/// An organisation's latest `$2` events, oldest first: they are its
/// changes of kind `org.*`.
pub const ORG_EVENTS_SELECT: &str = "SELECT seq, kind, key, at, payload FROM \
     (SELECT seq, kind, key, at, payload FROM changes \
      WHERE key = $1 AND kind LIKE 'org.%' ORDER BY seq DESC LIMIT $2) AS recent \
     ORDER BY seq";

/// Organisation events from their changes.
pub fn org_events(rows: Vec<ChangeRow>) -> Result<Vec<flotilla_domain::OrgEvent>, StoreError> {
    rows.into_iter()
        .map(|row| {
            let key = row.seq.to_string();
            let change = Change::try_from(row)?;
            change
                .org_event()
                .ok_or_else(|| corrupt("changes", &key, "not an organisation's event"))
        })
        .collect()
}

// Organisations.

/// A row of `ledger`, as `LEDGER_SELECT` reads it.
pub type LedgerRow = (i64, String, i64, String, Option<String>);

/// An organisation's stored ledger entries, in order.
pub const LEDGER_SELECT: &str =
    "SELECT at, kind, amount, reason, actor FROM ledger WHERE org = $1 ORDER BY at, id";

/// A row of `costs`, as the backends read it: cluster, user ('' for
/// none), day, amount.
pub type CostTuple = (String, String, String, i64);

/// The ledger as readers see it, from the stored entries of `org`, its
/// costs and how far it is charged.
pub fn ledger_entries(
    org: &str,
    rows: Vec<LedgerRow>,
    costs: &[flotilla_domain::CostRow],
    accrued_until: Option<i64>,
) -> Result<Vec<flotilla_domain::LedgerEntry>, StoreError> {
    let until = opt_time("orgs", org, "accrued_until", accrued_until)?;
    rows.into_iter()
        .map(|(at, kind, amount, reason, actor)| {
            Ok(flotilla_domain::LedgerEntry {
                at: time("ledger", org, "at", at)?,
                kind: flotilla_domain::LedgerKind::parse(&kind)
                    .ok_or_else(|| corrupt("ledger", org, format!("kind {kind:?}")))?,
                amount: Money::from_micros(amount),
                reason,
                actor: actor.map(|a| user("ledger", org, &a)).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()
        .map(|entries| flotilla_domain::with_daily_spend(entries, costs, until))
}

/// The cost rows of `org`.
pub fn cost_rows(
    org: &str,
    rows: Vec<CostTuple>,
) -> Result<Vec<flotilla_domain::CostRow>, StoreError> {
    rows.into_iter()
        .map(|(cluster, username, day, amount)| {
            Ok(flotilla_domain::CostRow {
                cluster: ClusterName::new(cluster.as_str())
                    .map_err(|e| corrupt("costs", org, e))?,
                user: (!username.is_empty())
                    .then(|| user("costs", org, &username))
                    .transpose()?,
                day: day
                    .parse()
                    .map_err(|e| corrupt("costs", org, format!("day {day:?}: {e}")))?,
                amount: Money::from_micros(amount),
            })
        })
        .collect()
}

/// Changes read with `CHANGES_SELECT`.
pub fn changes(rows: Vec<ChangeRow>) -> Result<Vec<Change>, StoreError> {
    rows.into_iter().map(Change::try_from).collect()
}

pub const ORG_COLUMNS: &str = "name, min_nodes, max_nodes, node_limit, pool, balance, \
    monthly_allowance, max_balance, shutdown_threshold, min_runway_secs, allowance_month, \
    exhausted_at, accrued_until, created_at";

/// Rows are read as one JSON array of arrays (see [`fetch_rows`]), which
/// serde reads into these by field order.
#[derive(Debug, serde::Deserialize, sqlx::FromRow)]
pub struct OrgRow {
    pub name: String,
    pub min_nodes: i64,
    pub max_nodes: i64,
    pub node_limit: i64,
    pub pool: String,
    pub balance: i64,
    pub monthly_allowance: i64,
    pub max_balance: i64,
    pub shutdown_threshold: i64,
    pub min_runway_secs: i64,
    pub allowance_month: Option<i64>,
    pub exhausted_at: Option<i64>,
    pub accrued_until: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, serde::Deserialize, sqlx::FromRow)]
pub struct PersonRow {
    pub org: String,
    pub username: String,
    pub role: String,
    pub since: i64,
}

#[derive(Debug, serde::Deserialize, sqlx::FromRow)]
pub struct RequestRow {
    pub org: String,
    pub username: String,
    pub nodes: i64,
    pub created_at: i64,
    pub expires_at: i64,
}

pub fn corrupt(table: &str, key: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{table} row {key:?}: {what}"))
}

pub fn count(table: &str, key: &str, column: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(table, key, format!("{column} {v} is not a count")))
}

pub fn time(table: &str, key: &str, column: &str, ms: i64) -> Result<DateTime<Utc>, StoreError> {
    from_millis(ms, || format!("{table} row {key:?}, column {column}"))
}

pub fn opt_time(
    table: &str,
    key: &str,
    column: &str,
    ms: Option<i64>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    ms.map(|ms| time(table, key, column, ms)).transpose()
}

pub fn user(table: &str, key: &str, name: &str) -> Result<Username, StoreError> {
    Username::new(name).map_err(|e| corrupt(table, key, e))
}

pub fn encode_month(m: (i32, u32)) -> i64 {
    i64::from(m.0) * 12 + i64::from(m.1) - 1
}

pub fn decode_month(v: i64) -> (i32, u32) {
    ((v.div_euclid(12)) as i32, (v.rem_euclid(12) + 1) as u32)
}

impl OrgRow {
    pub fn into_org(self) -> Result<Organisation, StoreError> {
        let key = self.name.as_str();
        let t = "orgs";
        Ok(Organisation {
            name: ClusterName::new(key).map_err(|e| corrupt(t, key, e))?,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            settings: OrgSettings {
                min_nodes: count(t, key, "min_nodes", self.min_nodes)?,
                max_nodes: count(t, key, "max_nodes", self.max_nodes)?,
                node_limit: count(t, key, "node_limit", self.node_limit)?,
                pool: PoolName::new(self.pool.as_str()).map_err(|e| corrupt(t, key, e))?,
            },
            budget: Budget {
                balance: Money::from_micros(self.balance),
                monthly_allowance: Money::from_micros(self.monthly_allowance),
                max_balance: Money::from_micros(self.max_balance),
                shutdown_threshold: Money::from_micros(self.shutdown_threshold),
                min_runway: Duration::from_secs(self.min_runway_secs.max(0) as u64),
                allowance_month: self.allowance_month.map(decode_month),
                exhausted_at: opt_time(t, key, "exhausted_at", self.exhausted_at)?,
            },
            requests: Vec::new(),
            accrued_until: opt_time(t, key, "accrued_until", self.accrued_until)?,
            created_at: time(t, key, "created_at", self.created_at)?,
        })
    }
}

pub fn add_person(org: &mut Organisation, p: PersonRow) -> Result<(), StoreError> {
    let key = format!("{}/{}", p.org, p.username);
    let who = user("org_people", &key, &p.username)?;
    match p.role.as_str() {
        "pending" => {
            org.pending
                .insert(who, time("org_people", &key, "since", p.since)?);
        }
        role => {
            let role = OrgRole::parse(role)
                .ok_or_else(|| corrupt("org_people", &key, format!("role {role:?}")))?;
            org.members.insert(who, role);
        }
    }
    Ok(())
}

pub fn add_request(org: &mut Organisation, r: RequestRow) -> Result<(), StoreError> {
    let key = format!("{}/{}", r.org, r.username);
    let t = "capacity_requests";
    org.requests.push(CapacityRequest {
        user: user(t, &key, &r.username)?,
        nodes: count(t, &key, "nodes", r.nodes)?,
        created_at: time(t, &key, "created_at", r.created_at)?,
        expires_at: time(t, &key, "expires_at", r.expires_at)?,
    });
    Ok(())
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
            workload: None,
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

// Jobs.

/// A row of `jobs`.
#[derive(Debug, sqlx::FromRow)]
pub struct JobRow {
    pub id: i64,
    pub name: String,
    pub document: String,
    pub submitted_by: String,
    pub org: Option<String>,
    pub priority: i64,
    pub state: String,
    pub reason: Option<String>,
    pub cancel_by: Option<String>,
    pub attempts: String,
    pub submitted_at: i64,
    pub updated_at: i64,
    pub version: i64,
}

impl TryFrom<JobRow> for crate::JobRecord {
    type Error = StoreError;

    fn try_from(row: JobRow) -> Result<crate::JobRecord, StoreError> {
        let key = row.id.to_string();
        let corrupt = |what: String| StoreError::Corrupt(format!("jobs row {}: {what}", row.id));
        Ok(crate::JobRecord {
            id: u64::try_from(row.id).map_err(|_| corrupt("negative id".into()))?,
            document: serde_json::from_str(&row.document)
                .map_err(|e| corrupt(format!("document: {e}")))?,
            org: row
                .org
                .as_deref()
                .map(flotilla_domain::OrgName::new)
                .transpose()
                .map_err(|e| corrupt(e.to_string()))?,
            priority: i32::try_from(row.priority).map_err(|_| corrupt("priority".into()))?,
            state: flotilla_domain::JobState::parse(&row.state)
                .ok_or_else(|| corrupt(format!("state {:?}", row.state)))?,
            attempts: serde_json::from_str(&row.attempts)
                .map_err(|e| corrupt(format!("attempts: {e}")))?,
            submitted_at: time("jobs", &key, "submitted_at", row.submitted_at)?,
            updated_at: time("jobs", &key, "updated_at", row.updated_at)?,
            version: u64::try_from(row.version).map_err(|_| corrupt("negative version".into()))?,
            name: row.name,
            submitted_by: row.submitted_by,
            reason: row.reason,
            cancel_by: row.cancel_by,
        })
    }
}

/// The columns of a job, in [`JobRow`]'s order.
pub const JOB_SELECT: &str = "SELECT id, name, document, submitted_by, org, priority, state, \
     reason, cancel_by, attempts, submitted_at, updated_at, version FROM jobs";

pub const JOB_INSERT: &str = "INSERT INTO jobs (name, document, submitted_by, org, priority, \
     state, reason, cancel_by, attempts, submitted_at, updated_at, version) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id";

/// Writes a job's step, if the row is still at the version read (`$8`).
pub const JOB_UPDATE: &str = "UPDATE jobs SET state = $2, reason = $3, cancel_by = $4, \
     attempts = $5, updated_at = $6, version = $7 WHERE id = $1 AND version = $8";

/// Up to `$2` jobs, the newest first, of `$1` if not null.
pub fn jobs_select() -> String {
    format!(
        "{JOB_SELECT} WHERE (CAST($1 AS TEXT) IS NULL OR submitted_by = $1) \
         ORDER BY id DESC LIMIT $2"
    )
}

/// Every job not ended, in queue order.
pub fn live_jobs_select() -> String {
    format!(
        "{JOB_SELECT} WHERE state IN ('queued', 'starting', 'running') \
         ORDER BY priority DESC, submitted_at, id"
    )
}

/// The attempts of `job` as stored.
pub fn attempts_json(job: &crate::JobRecord) -> String {
    serde_json::to_string(&job.attempts).expect("attempts serialise")
}

/// Drop-box triggers (`dropbox_triggers`), the same SQL on every backend.
pub mod triggers {
    use crate::{HandledTrigger, StoreError};

    /// A trigger's row: path, digest, account, cluster, outcome, message,
    /// handled_at (ms).
    pub type Row = (String, String, String, String, String, String, i64);

    /// Notes a trigger, doing nothing if its path and digest are there.
    pub const NOTE: &str = "INSERT INTO dropbox_triggers \
             (path, digest, account, cluster, outcome, message, handled_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (path, digest) DO NOTHING";
    /// One trigger by path ($1) and digest ($2).
    pub const ONE: &str = "SELECT path, digest, account, cluster, outcome, message, handled_at \
         FROM dropbox_triggers WHERE path = $1 AND digest = $2";
    /// The triggers handled since $1, the oldest first.
    pub const SINCE: &str = "SELECT path, digest, account, cluster, outcome, message, handled_at \
         FROM dropbox_triggers WHERE handled_at >= $1 \
         ORDER BY handled_at, path, digest";
    /// Forgets the triggers handled before $1.
    pub const FORGET: &str = "DELETE FROM dropbox_triggers WHERE handled_at < $1";

    pub fn trigger(row: Row) -> Result<HandledTrigger, StoreError> {
        let (path, digest, account, cluster, outcome, message, at) = row;
        let handled_at = super::from_millis(at, || format!("the handling of trigger {path}"))?;
        Ok(HandledTrigger {
            path,
            digest,
            account,
            cluster,
            outcome,
            message,
            handled_at,
        })
    }
}

/// Subscriptions and deliveries (`subscriptions`, `deliveries`,
/// `notify_cursor`), the same SQL on every backend.
pub mod notify {
    use flotilla_domain::{Channel, DeliveryState, Pattern};

    use super::{from_millis, StoreError};
    use crate::{Delivery, Subscription};

    pub const SUBSCRIPTION_COLUMNS: &str = "id, account, channel, target, secret, events, \
         created_at, failures, disabled_at, disabled_reason, last_sent_at";
    /// A subscription's row, in [`SUBSCRIPTION_COLUMNS`] order.
    pub type SubscriptionRow = (
        i64,
        String,
        String,
        String,
        Option<String>,
        String,
        i64,
        i64,
        Option<i64>,
        Option<String>,
        Option<i64>,
    );

    pub const DELIVERY_COLUMNS: &str = "id, subscription, seq, kind, key, event, state, attempts, \
         next_at, last_error, created_at, finished_at";
    /// A delivery's row, in [`DELIVERY_COLUMNS`] order.
    pub type DeliveryRow = (
        i64,
        i64,
        Option<i64>,
        String,
        String,
        String,
        String,
        i64,
        i64,
        Option<String>,
        i64,
        Option<i64>,
    );

    pub const ADD: &str = "INSERT INTO subscriptions \
             (account, channel, target, secret, events, created_at, failures) \
         VALUES ($1, $2, $3, $4, $5, $6, 0) RETURNING id";
    pub const ONE: &str = "SELECT id, account, channel, target, secret, events, created_at, \
         failures, disabled_at, disabled_reason, last_sent_at FROM subscriptions WHERE id = $1";
    pub const ALL: &str = "SELECT id, account, channel, target, secret, events, created_at, \
         failures, disabled_at, disabled_reason, last_sent_at FROM subscriptions ORDER BY id";
    pub const OF_ACCOUNT: &str = "SELECT id, account, channel, target, secret, events, \
         created_at, failures, disabled_at, disabled_reason, last_sent_at FROM subscriptions \
         WHERE account = $1 ORDER BY id";
    pub const REMOVE: &str = "DELETE FROM subscriptions WHERE id = $1";
    pub const DROP_PENDING: &str =
        "DELETE FROM deliveries WHERE subscription = $1 AND state = 'pending'";
    pub const ENABLE: &str = "UPDATE subscriptions \
         SET failures = 0, disabled_at = NULL, disabled_reason = NULL WHERE id = $1";
    pub const CURSOR: &str = "SELECT seq FROM notify_cursor WHERE id = 1";
    /// Moves the cursor to $1, never back.
    pub const MOVE_CURSOR: &str = "INSERT INTO notify_cursor (id, seq) VALUES (1, $1) \
         ON CONFLICT (id) DO UPDATE SET seq = CASE WHEN excluded.seq > notify_cursor.seq \
             THEN excluded.seq ELSE notify_cursor.seq END";
    /// Queues a delivery (due at once), doing nothing if the subscription
    /// has it already, or is gone or disabled (removed after the notifier
    /// read it).
    pub const QUEUE: &str = "INSERT INTO deliveries \
             (subscription, seq, kind, key, event, state, attempts, next_at, created_at) \
         SELECT $1, $2, $3, $4, $5, $6, 0, $7, $7 \
         WHERE $1 = 0 OR EXISTS \
             (SELECT 1 FROM subscriptions WHERE id = $1 AND disabled_at IS NULL) \
         ON CONFLICT (subscription, seq) DO NOTHING";
    /// Queues a test of subscription $1, if it is there.
    pub const QUEUE_TEST: &str = "INSERT INTO deliveries \
             (subscription, seq, kind, key, event, state, attempts, next_at, created_at) \
         SELECT $1, NULL, $2, $3, $4, 'pending', 0, $5, $5 \
         WHERE EXISTS (SELECT 1 FROM subscriptions WHERE id = $1) RETURNING id";
    pub const DELIVERY: &str = "SELECT id, subscription, seq, kind, key, event, state, attempts, \
         next_at, last_error, created_at, finished_at FROM deliveries WHERE id = $1";
    /// Up to $2 pending deliveries due at $1, at most $3 of each
    /// subscription (one with a backlog takes no others' turn).
    pub const DUE: &str = "SELECT id, subscription, seq, kind, key, event, state, attempts, \
         next_at, last_error, created_at, finished_at FROM \
             (SELECT *, ROW_NUMBER() OVER (PARTITION BY subscription ORDER BY id) AS nth \
              FROM deliveries WHERE state = 'pending' AND next_at <= $1) AS due \
         WHERE nth <= $3 ORDER BY id LIMIT $2";
    pub const LATEST: &str = "SELECT id, subscription, seq, kind, key, event, state, attempts, \
         next_at, last_error, created_at, finished_at FROM deliveries \
         ORDER BY id DESC LIMIT $1";
    pub const LATEST_OF_ACCOUNT: &str = "SELECT id, subscription, seq, kind, key, event, state, \
         attempts, next_at, last_error, created_at, finished_at FROM deliveries \
         WHERE subscription IN (SELECT id FROM subscriptions WHERE account = $1) \
         ORDER BY id DESC LIMIT $2";
    pub const SINCE: &str = "SELECT id, subscription, seq, kind, key, event, state, attempts, \
         next_at, last_error, created_at, finished_at FROM deliveries \
         WHERE created_at >= $1 ORDER BY id";
    /// Ends pending delivery $1 as $2 at $3 with error $4; gives its
    /// subscription.
    pub const FINISH: &str = "UPDATE deliveries \
         SET state = $2, attempts = attempts + 1, finished_at = $3, last_error = $4 \
         WHERE id = $1 AND state = 'pending' RETURNING subscription";
    /// Puts pending delivery $1 off until $2, with error $3.
    pub const RETRY: &str = "UPDATE deliveries \
         SET attempts = attempts + 1, next_at = $2, last_error = $3 \
         WHERE id = $1 AND state = 'pending'";
    /// Puts pending delivery $1 off until $2, untried.
    pub const HOLD: &str = "UPDATE deliveries SET next_at = $2 WHERE id = $1 AND state = 'pending'";
    /// Forgets an account's subscriptions ($1) and what is pending for
    /// them, with the account.
    pub const DROP_ACCOUNTS_PENDING: &str = "DELETE FROM deliveries WHERE state = 'pending' \
         AND subscription IN (SELECT id FROM subscriptions WHERE account = $1)";
    pub const DROP_ACCOUNTS: &str = "DELETE FROM subscriptions WHERE account = $1";
    pub const ARRIVED: &str =
        "UPDATE subscriptions SET failures = 0, last_sent_at = $2 WHERE id = $1";
    /// Counts one more failure of subscription $1; gives the count.
    pub const FAILED: &str = "UPDATE subscriptions SET failures = failures + 1 \
         WHERE id = $1 AND disabled_at IS NULL RETURNING failures";
    pub const DISABLE: &str =
        "UPDATE subscriptions SET disabled_at = $2, disabled_reason = $3 WHERE id = $1";
    /// Fails what is pending for subscription $1, at $2, saying $3.
    pub const FAIL_PENDING: &str = "UPDATE deliveries \
         SET state = 'failed', finished_at = $2, last_error = $3 \
         WHERE subscription = $1 AND state = 'pending'";
    pub const FORGET: &str = "DELETE FROM deliveries WHERE state <> 'pending' AND created_at < $1";

    pub fn subscription(row: SubscriptionRow) -> Result<Subscription, StoreError> {
        let (
            id,
            account,
            channel,
            target,
            secret,
            events,
            created,
            failures,
            disabled_at,
            why,
            last,
        ) = row;
        let what = || format!("subscription {id}");
        let corrupt = |field: &str| StoreError::Corrupt(format!("subscription {id}: bad {field}"));
        let channel = Channel::from_stored(&channel, &target).ok_or_else(|| corrupt("channel"))?;
        let patterns = events
            .split(',')
            .map(Pattern::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| corrupt("events"))?;
        let disabled = match disabled_at {
            Some(at) => Some((from_millis(at, what)?, why.unwrap_or_default())),
            None => None,
        };
        Ok(Subscription {
            id,
            account,
            channel,
            patterns,
            secret,
            created_at: from_millis(created, what)?,
            failures: u32::try_from(failures).map_err(|_| corrupt("failures"))?,
            disabled,
            last_sent_at: last.map(|t| from_millis(t, what)).transpose()?,
        })
    }

    pub fn delivery(row: DeliveryRow) -> Result<Delivery, StoreError> {
        let (id, subscription, seq, kind, key, event, state, attempts, next, error, created, done) =
            row;
        let what = || format!("delivery {id}");
        let corrupt = |field: &str| StoreError::Corrupt(format!("delivery {id}: bad {field}"));
        Ok(Delivery {
            id,
            subscription,
            seq,
            kind,
            key,
            event: serde_json::from_str(&event).map_err(|_| corrupt("event"))?,
            state: DeliveryState::parse(&state).ok_or_else(|| corrupt("state"))?,
            attempts: u32::try_from(attempts).map_err(|_| corrupt("attempts"))?,
            next_at: from_millis(next, what)?,
            last_error: error,
            created_at: from_millis(created, what)?,
            finished_at: done.map(|t| from_millis(t, what)).transpose()?,
        })
    }
}
