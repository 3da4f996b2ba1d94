//! The embedded store backend: one SQLite file.
//!
//! All writes go through a single connection. SQLite allows one writer at a
//! time anyway; funnelling them through one connection means no two of our
//! own transactions can both hold a read lock and then deadlock upgrading it
//! (which SQLite reports as "database is locked" without waiting). Write
//! transactions still start with `BEGIN IMMEDIATE`, so a second process on
//! the same file waits on the busy timeout instead of failing. Reads use a
//! separate pool; in WAL mode they never wait for the writer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{
    AccountKind, Change, ChangeEntity, ChangeKind, ClusterName, ClusterRecord, DeployCommand,
    InstanceSetId, Level, NewChange, Username,
};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::watch;

use flotilla_store::sql::{self as row, AccountRow, ClusterRow, RefreshTokenRow};
use flotilla_store::{
    account_change, account_select, cluster_columns, left_with_account, AccountRecord,
    AccountStore, ChangeFeed, Fence, RefreshTokenRecord, Rotation, Store, StoreError,
};

mod dropbox;
mod jobs;
mod keys;
mod lease;
mod meters;
mod notify;
mod orgs;
mod pools;
mod schedules;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a statement waits for a lock held by another connection (in
/// practice: another process on the same file, or a checkpoint).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads are short single statements; a few connections are plenty for the
/// API and the engine to read concurrently.
const READ_CONNECTIONS: u32 = 4;

/// How often to draw a fresh instance set ID if the drawn one is taken by
/// another driver. With 64 random bits one draw is all it ever takes.
const ID_ATTEMPTS: usize = 3;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    writer: SqlitePool,
    /// Renews and releases the lease (see `lease.rs`).
    pub(crate) lease_writer: SqlitePool,
    reader: SqlitePool,
    /// Bumped after every commit, for [`ChangeFeed::change_notices`].
    notices: Arc<watch::Sender<u64>>,
    /// The unsettled meters as the last accrual pass left them; taken out
    /// by a pass and put back once it commits.
    pub(crate) meter_cache: Arc<std::sync::Mutex<Option<flotilla_store::meters::MeterCache>>>,
}

/// The settings a connection actually runs with, as SQLite reports them.
/// For the startup log and for tests that the durability settings hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// `wal` for every connection.
    pub journal_mode: String,
    pub foreign_keys: bool,
    /// `full`: a commit is on disk before it returns.
    pub synchronous: String,
    pub busy_timeout: Duration,
    /// True for the read pool, so a write sent there by mistake fails loudly
    /// instead of racing the writer.
    pub query_only: bool,
}

impl SqliteStore {
    /// Opens (creating if missing, with its directory) the database at
    /// `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            location: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                open_error(format!("cannot create directory {}: {e}", dir.display()).into())
            })?;
        }

        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL would be enough for consistency in WAL mode, but may
            // lose the last commits on power loss; a deploy the API
            // acknowledged must survive.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);

        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone().create_if_missing(true))
            .await
            .map_err(|e| open_error(e.into()))?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| row::migrate_error(e, &MIGRATOR))?;

        // Renewing the lease must not wait behind every queued write: it
        // has a connection of its own, and waits only for the write lock.
        let lease_writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|e| open_error(e.into()))?;

        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options.pragma("query_only", "ON"))
            .await
            .map_err(|e| open_error(e.into()))?;

        let store = SqliteStore {
            notices: Arc::new(watch::channel(0).0),
            meter_cache: Arc::default(),
            path: path.to_owned(),
            writer,
            lease_writer,
            reader,
        };
        let settings = store.write_settings().await?;
        tracing::info!(
            path = %path.display(),
            journal_mode = %settings.journal_mode,
            synchronous = %settings.synchronous,
            "opened the SQLite store"
        );
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes every connection, waiting for those in use to be returned.
    /// Dropping the store also closes them, but without waiting.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
        self.lease_writer.close().await;
    }

    /// What the write connection runs with.
    pub async fn write_settings(&self) -> Result<ConnectionSettings, StoreError> {
        settings(&self.writer).await
    }

    /// What a read connection runs with.
    pub async fn read_settings(&self) -> Result<ConnectionSettings, StoreError> {
        settings(&self.reader).await
    }

    /// Commits a write transaction and tells the feed's readers.
    pub(crate) async fn commit(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    ) -> Result<(), StoreError> {
        tx.commit().await?;
        self.notices.send_modify(|n| *n += 1);
        Ok(())
    }

    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        // IMMEDIATE takes the write lock up front: a transaction that reads
        // first and writes later can then never fail to upgrade its lock.
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

async fn settings(pool: &SqlitePool) -> Result<ConnectionSettings, StoreError> {
    // One connection for all pragmas so they describe the same connection.
    let mut conn = pool.acquire().await?;
    let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await?;
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await?;
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await?;
    let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await?;
    let query_only: i64 = sqlx::query_scalar("PRAGMA query_only")
        .fetch_one(&mut *conn)
        .await?;
    Ok(ConnectionSettings {
        journal_mode: journal_mode.to_ascii_lowercase(),
        foreign_keys: foreign_keys != 0,
        synchronous: match synchronous {
            0 => "off".to_owned(),
            1 => "normal".to_owned(),
            2 => "full".to_owned(),
            3 => "extra".to_owned(),
            other => other.to_string(),
        },
        busy_timeout: Duration::from_millis(u64::try_from(busy_timeout).unwrap_or(0)),
        query_only: query_only != 0,
    })
}

fn records(rows: Vec<ClusterRow>) -> Result<Vec<ClusterRecord>, StoreError> {
    let mut records = rows
        .into_iter()
        .map(ClusterRecord::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    // RETURNING gives rows in no particular order.
    records.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(records)
}

/// Appends `changes` to the feed, inside the caller's write transaction.
pub(crate) async fn record_changes(
    conn: &mut SqliteConnection,
    changes: &[NewChange],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    for c in changes {
        sqlx::query("INSERT INTO changes (kind, key, at, payload) VALUES ($1, $2, $3, $4)")
            .bind(c.kind.as_str())
            .bind(&c.key)
            .bind(row::to_millis(at))
            .bind(c.payload.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The record of cluster `name`, read inside the caller's transaction.
pub(crate) async fn cluster_in(
    conn: &mut SqliteConnection,
    name: &str,
) -> Result<Option<ClusterRecord>, StoreError> {
    let row: Option<ClusterRow> = sqlx::query_as(concat!(
        "SELECT ",
        cluster_columns!(),
        " FROM clusters WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(ClusterRecord::try_from).transpose()
}

#[async_trait]
impl Store for SqliteStore {
    async fn instance_set_id(&self, driver: &str) -> Result<InstanceSetId, StoreError> {
        const SELECT: &str = "SELECT id FROM instance_sets WHERE driver = $1";
        let existing: Option<String> = sqlx::query_scalar(SELECT)
            .bind(driver)
            .fetch_optional(&self.reader)
            .await?;
        if let Some(id) = existing {
            return row::instance_set_id(driver, id);
        }
        for _ in 0..ID_ATTEMPTS {
            let mut tx = self.begin_write().await?;
            // Insert-if-absent then read back: whoever inserts first wins
            // and every caller, racing or later, reads the winner's ID. No
            // conflict target, so an ID already used by another driver is
            // skipped too, and the next attempt draws a new one.
            sqlx::query(
                "INSERT INTO instance_sets (driver, id, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(driver)
            .bind(row::new_instance_set_id())
            .bind(row::to_millis(Utc::now()))
            .execute(&mut *tx)
            .await?;
            let id: Option<String> = sqlx::query_scalar(SELECT)
                .bind(driver)
                .fetch_optional(&mut *tx)
                .await?;
            self.commit(tx).await?;
            if let Some(id) = id {
                return row::instance_set_id(driver, id);
            }
        }
        Err(StoreError::Corrupt(format!(
            "instance_sets: no free ID for driver {driver:?} after {ID_ATTEMPTS} random draws"
        )))
    }

    async fn get_cluster(&self, name: &ClusterName) -> Result<Option<ClusterRecord>, StoreError> {
        let row: Option<ClusterRow> = sqlx::query_as(concat!(
            "SELECT ",
            cluster_columns!(),
            " FROM clusters WHERE name = $1"
        ))
        .bind(name.as_str())
        .fetch_optional(&self.reader)
        .await?;
        row.map(ClusterRecord::try_from).transpose()
    }

    async fn list_clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        let rows: Vec<ClusterRow> = sqlx::query_as(concat!(
            "SELECT ",
            cluster_columns!(),
            " FROM clusters ORDER BY name"
        ))
        .fetch_all(&self.reader)
        .await?;
        records(rows)
    }

    async fn deploy(
        &self,
        command: &DeployCommand,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<ClusterRecord, StoreError> {
        let name = command.cluster.as_str();
        let mut tx = self.begin_write().await?;
        let before = cluster_in(&mut tx, name).await?;
        // The WHERE makes the upsert a no-op on a fixed-field mismatch; no
        // row back then means Conflict, and the transaction is rolled back
        // having changed nothing.
        let upserted: Option<ClusterRow> = sqlx::query_as(concat!(
            "INSERT INTO clusters (name, is_public, node_capacity, pool, expires_at, destroying, \
                                   created_at, updated_at, generation, workload) \
             VALUES ($1, $2, $3, $4, $5, FALSE, $6, $6, 1, $9) \
             ON CONFLICT (name) DO UPDATE SET \
                 node_capacity = excluded.node_capacity, \
                 expires_at = excluded.expires_at, \
                 destroying = FALSE, \
                 updated_at = excluded.updated_at, \
                 generation = clusters.generation + 1 \
             WHERE ($7 = FALSE OR clusters.is_public = excluded.is_public) \
               AND ($8 = FALSE OR clusters.pool = excluded.pool) \
               AND ($10 = FALSE OR clusters.workload IS excluded.workload) \
             RETURNING ",
            cluster_columns!()
        ))
        .bind(name)
        .bind(command.new_public())
        .bind(i64::from(command.node_capacity.get()))
        .bind(command.new_pool().as_str())
        .bind(row::to_millis(expires_at))
        .bind(row::to_millis(now))
        .bind(command.is_public.is_some())
        .bind(command.pool.is_some())
        .bind(row::workload_json(command.workload.as_ref()))
        .bind(command.workload.is_some())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = upserted {
            let record = ClusterRecord::try_from(row)?;
            let kind = ChangeKind::of_deploy(before.as_ref(), &record);
            record_changes(&mut tx, &[NewChange::cluster(kind, &record)], now).await?;
            self.commit(tx).await?;
            return Ok(record);
        }

        let current = before.ok_or_else(|| {
            // We hold the write lock, so the row that blocked the upsert
            // cannot have gone away.
            StoreError::Corrupt(format!(
                "clusters row {name:?}: neither inserted, updated nor found"
            ))
        })?;
        if let Some(conflict) = StoreError::fixed_field_conflict(&current, command) {
            return Err(conflict);
        }
        Err(StoreError::Corrupt(format!(
            "clusters row {name:?}: deploy matched is_public, pool and workload but did not update"
        )))
    }

    async fn extend(
        &self,
        name: &ClusterName,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<ClusterRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row: Option<ClusterRow> = sqlx::query_as(concat!(
            "UPDATE clusters SET expires_at = $2, \
                 generation = generation + 1, updated_at = $3 \
             WHERE name = $1 AND NOT destroying RETURNING ",
            cluster_columns!()
        ))
        .bind(name.as_str())
        .bind(row::to_millis(expires_at))
        .bind(row::to_millis(now))
        .fetch_optional(&mut *tx)
        .await?;
        let record = row.map(ClusterRecord::try_from).transpose()?;
        if let Some(r) = &record {
            let change = NewChange::cluster(ChangeKind::ClusterExtended, r);
            record_changes(&mut tx, &[change], now).await?;
            self.commit(tx).await?;
        }
        Ok(record)
    }

    async fn destroy(
        &self,
        name: &ClusterName,
        now: DateTime<Utc>,
    ) -> Result<Option<ClusterRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row: Option<ClusterRow> = sqlx::query_as(concat!(
            "UPDATE clusters SET destroying = TRUE, expires_at = NULL, \
                 generation = generation + 1, updated_at = $2 \
             WHERE name = $1 RETURNING ",
            cluster_columns!()
        ))
        .bind(name.as_str())
        .bind(row::to_millis(now))
        .fetch_optional(&mut *tx)
        .await?;
        let record = row.map(ClusterRecord::try_from).transpose()?;
        if let Some(r) = &record {
            let change = NewChange::cluster(ChangeKind::ClusterDestroyed, r);
            record_changes(&mut tx, &[change], now).await?;
            self.commit(tx).await?;
        }
        Ok(record)
    }

    async fn expire_due(
        &self,
        now: DateTime<Utc>,
        fence: Fence,
    ) -> Result<Vec<ClusterRecord>, StoreError> {
        // One transaction: each due row fires exactly once however many
        // callers race.
        let mut tx = self.begin_write().await?;
        lease::check_fence(&mut tx, fence).await?;
        let rows: Vec<ClusterRow> = sqlx::query_as(concat!(
            "UPDATE clusters SET destroying = TRUE, expires_at = NULL, \
                 generation = generation + 1, updated_at = $1 \
             WHERE expires_at IS NOT NULL AND expires_at <= $1 RETURNING ",
            cluster_columns!()
        ))
        .bind(row::to_millis(now))
        .fetch_all(&mut *tx)
        .await?;
        let fired = records(rows)?;
        if !fired.is_empty() {
            let changes: Vec<NewChange> = fired
                .iter()
                .map(|r| NewChange::cluster(ChangeKind::ClusterExpired, r))
                .collect();
            record_changes(&mut tx, &changes, now).await?;
            self.commit(tx).await?;
        }
        Ok(fired)
    }

    async fn next_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let earliest: Option<i64> = sqlx::query_scalar("SELECT MIN(expires_at) FROM clusters")
            .fetch_one(&self.reader)
            .await?;
        earliest
            .map(|ms| row::from_millis(ms, || "clusters: MIN(expires_at)".to_owned()))
            .transpose()
    }

    async fn forget(
        &self,
        name: &ClusterName,
        generation: i64,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        lease::check_fence(&mut tx, fence).await?;
        let done = sqlx::query(
            "DELETE FROM clusters WHERE name = $1 AND destroying = TRUE AND generation = $2",
        )
        .bind(name.as_str())
        .bind(generation)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM nodes WHERE cluster = $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM obstacles WHERE cluster = $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?;
        let change = NewChange::cluster_gone(ChangeKind::ClusterForgotten, name.as_str());
        record_changes(&mut tx, &[change], Utc::now()).await?;
        self.commit(tx).await?;
        Ok(true)
    }
}

/// The account `username` with its grants, read through `executor` (the
/// read pool, or a write transaction that needs what it just wrote).
async fn fetch_account<'e, E>(
    executor: E,
    username: &Username,
) -> Result<Option<AccountRecord>, StoreError>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows: Vec<AccountRow> =
        sqlx::query_as(concat!(account_select!(), " WHERE a.username = $1"))
            .bind(username.as_str())
            .fetch_all(executor)
            .await?;
    Ok(row::accounts(rows)?.pop())
}

/// Like [`fetch_account`], for an account the caller knows exists because
/// its transaction holds the write lock and has just seen or written it.
async fn fetch_existing_account(
    conn: &mut SqliteConnection,
    username: &Username,
) -> Result<AccountRecord, StoreError> {
    fetch_account(conn, username).await?.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "accounts row {:?}: gone within its own write transaction",
            username.as_str()
        ))
    })
}

/// The `AccountExists` error for `username`, naming the kind of the account
/// that holds the name.
/// `LastAdmin` if `username` is the only admin. Run inside the write
/// transaction, so two admins demoting each other at once cannot both pass.
async fn refuse_last_admin(
    conn: &mut SqliteConnection,
    username: &Username,
) -> Result<(), StoreError> {
    let (target, admins): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(CASE WHEN username = $1 THEN 1 ELSE 0 END), 0), COUNT(*) \
         FROM accounts WHERE level = $2",
    )
    .bind(username.as_str())
    .bind(Level::Admin.as_str())
    .fetch_one(&mut *conn)
    .await?;
    if target == 1 && admins == 1 {
        return Err(StoreError::LastAdmin(username.clone()));
    }
    Ok(())
}

async fn account_exists(conn: &mut SqliteConnection, username: &Username) -> StoreError {
    let kind: Result<Option<String>, sqlx::Error> =
        sqlx::query_scalar("SELECT kind FROM accounts WHERE username = $1")
            .bind(username.as_str())
            .fetch_optional(&mut *conn)
            .await;
    match kind {
        Ok(Some(kind)) => match row::stored_account_kind(username.as_str(), &kind) {
            Ok(kind) => StoreError::AccountExists {
                username: username.clone(),
                kind,
            },
            Err(corrupt) => corrupt,
        },
        Ok(None) => StoreError::Corrupt(format!(
            "accounts row {:?}: blocked an insert but cannot be found",
            username.as_str()
        )),
        Err(e) => e.into(),
    }
}

/// Inserts `account` with its grants; `AccountExists` if the name is taken.
async fn insert_account(
    conn: &mut SqliteConnection,
    account: &AccountRecord,
) -> Result<(), StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO accounts (username, kind, level, password_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (username) DO NOTHING",
    )
    .bind(account.username.as_str())
    .bind(account.kind.as_str())
    .bind(account.level.as_str())
    .bind(account.password_hash.as_deref())
    .bind(row::to_millis(account.created_at))
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(account_exists(conn, &account.username).await);
    }
    insert_grants(conn, &account.username, &account.grants).await
}

async fn insert_grants(
    conn: &mut SqliteConnection,
    username: &Username,
    grants: &BTreeSet<ClusterName>,
) -> Result<(), StoreError> {
    for cluster in grants {
        sqlx::query("INSERT INTO grants (username, cluster) VALUES ($1, $2)")
            .bind(username.as_str())
            .bind(cluster.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Revokes every token of `family` not revoked yet; an earlier revocation
/// keeps its time.
async fn revoke_family(
    conn: &mut SqliteConnection,
    family: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE family = $1 AND revoked_at IS NULL",
    )
    .bind(family)
    .bind(row::to_millis(now))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// Every write below runs in a `begin_write` transaction, so each method is
// atomic however many callers (or processes) race, and a method that returns
// an error has changed nothing: the transaction is rolled back on drop.
#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(&self, account: &AccountRecord) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        insert_account(&mut tx, account).await?;
        let change = account_change(ChangeKind::AccountCreated, account);
        record_changes(&mut tx, &[change], account.created_at).await?;
        self.commit(tx).await?;
        Ok(())
    }

    async fn create_first_admin(&self, account: &AccountRecord) -> Result<bool, StoreError> {
        // BEGIN IMMEDIATE holds the write lock from the count to the insert,
        // so of two servers starting at once the second sees the first's
        // admin.
        let mut tx = self.begin_write().await?;
        let admins: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE level = $1")
            .bind(Level::Admin.as_str())
            .fetch_one(&mut *tx)
            .await?;
        if admins > 0 {
            return Ok(false);
        }
        insert_account(&mut tx, account).await?;
        let change = account_change(ChangeKind::AccountCreated, account);
        record_changes(&mut tx, &[change], account.created_at).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn get_account(&self, username: &Username) -> Result<Option<AccountRecord>, StoreError> {
        fetch_account(&self.reader, username).await
    }

    async fn list_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        let rows: Vec<AccountRow> = sqlx::query_as(account_select!())
            .fetch_all(&self.reader)
            .await?;
        row::accounts(rows)
    }

    async fn set_level(
        &self,
        username: &Username,
        level: Level,
    ) -> Result<Option<AccountRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        if level != Level::Admin {
            refuse_last_admin(&mut tx, username).await?;
        }
        let updated = sqlx::query("UPDATE accounts SET level = $2 WHERE username = $1")
            .bind(username.as_str())
            .bind(level.as_str())
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        let account = fetch_existing_account(&mut tx, username).await?;
        let change = account_change(ChangeKind::AccountChanged, &account);
        record_changes(&mut tx, &[change], Utc::now()).await?;
        self.commit(tx).await?;
        Ok(Some(account))
    }

    async fn set_grants(
        &self,
        username: &Username,
        grants: &BTreeSet<ClusterName>,
    ) -> Result<Option<AccountRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT username FROM accounts WHERE username = $1")
                .bind(username.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Ok(None);
        }
        sqlx::query("DELETE FROM grants WHERE username = $1")
            .bind(username.as_str())
            .execute(&mut *tx)
            .await?;
        insert_grants(&mut tx, username, grants).await?;
        let account = fetch_existing_account(&mut tx, username).await?;
        let change = account_change(ChangeKind::AccountChanged, &account);
        record_changes(&mut tx, &[change], Utc::now()).await?;
        self.commit(tx).await?;
        Ok(Some(account))
    }

    async fn delete_account(&self, username: &Username) -> Result<bool, StoreError> {
        // Grants and refresh tokens go by ON DELETE CASCADE.
        let mut tx = self.begin_write().await?;
        refuse_last_admin(&mut tx, username).await?;
        let Some(account) = fetch_account(&mut *tx, username).await? else {
            return Ok(false);
        };
        // Its memberships go with it (ON DELETE CASCADE): each is a change
        // of that organisation.
        let orgs: Vec<String> =
            sqlx::query_scalar("SELECT org FROM org_people WHERE username = $1 ORDER BY org")
                .bind(username.as_str())
                .fetch_all(&mut *tx)
                .await?;
        // Its subscriptions go too (a later account of the same name
        // must not inherit where they send).
        for forget in [
            flotilla_store::sql::notify::DROP_ACCOUNTS_PENDING,
            flotilla_store::sql::notify::DROP_ACCOUNTS,
        ] {
            sqlx::query(forget)
                .bind(username.as_str())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM accounts WHERE username = $1")
            .bind(username.as_str())
            .execute(&mut *tx)
            .await?;
        let mut changes = vec![account_change(ChangeKind::AccountDeleted, &account)];
        changes.extend(orgs.iter().map(|org| left_with_account(org, username)));
        record_changes(&mut tx, &changes, Utc::now()).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn upsert_github_account(
        &self,
        username: &Username,
        level: Level,
        now: DateTime<Utc>,
    ) -> Result<AccountRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let before = fetch_account(&mut *tx, username).await?;
        // The WHERE makes the upsert a no-op on a local account of that
        // name; no row back then means AccountExists.
        let upserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO accounts (username, kind, level, password_hash, created_at) \
             VALUES ($1, $2, $3, NULL, $4) \
             ON CONFLICT (username) DO UPDATE SET \
                 level = CASE WHEN accounts.level = $5 THEN accounts.level \
                              ELSE excluded.level END \
             WHERE accounts.kind = excluded.kind \
             RETURNING username",
        )
        .bind(username.as_str())
        .bind(AccountKind::Github.as_str())
        .bind(level.as_str())
        .bind(row::to_millis(now))
        .bind(Level::Admin.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if upserted.is_none() {
            return Err(account_exists(&mut tx, username).await);
        }
        let account = fetch_existing_account(&mut tx, username).await?;
        let kind = match &before {
            None => Some(ChangeKind::AccountCreated),
            Some(b) if b.level != account.level => Some(ChangeKind::AccountChanged),
            Some(_) => None,
        };
        if let Some(kind) = kind {
            record_changes(&mut tx, &[account_change(kind, &account)], now).await?;
        }
        self.commit(tx).await?;
        Ok(account)
    }

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (id, username, family, issued_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token.id)
        .bind(token.username.as_str())
        .bind(&token.family)
        .bind(row::to_millis(token.issued_at))
        .bind(row::to_millis(token.expires_at))
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next_id: &str,
        next_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Rotation, StoreError> {
        let now_ms = row::to_millis(now);
        let mut tx = self.begin_write().await?;
        let token: Option<RefreshTokenRow> = sqlx::query_as(
            "SELECT username, family, expires_at, used_at, revoked_at \
             FROM refresh_tokens WHERE id = $1",
        )
        .bind(presented)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(token) = token else {
            return Ok(Rotation::Invalid);
        };
        if token.revoked_at.is_some() || token.expires_at <= now_ms {
            return Ok(Rotation::Invalid);
        }
        if token.used_at.is_some() {
            revoke_family(&mut tx, &token.family, now).await?;
            self.commit(tx).await?;
            return Ok(Rotation::Reused);
        }
        sqlx::query("UPDATE refresh_tokens SET used_at = $2 WHERE id = $1")
            .bind(presented)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let next_expires_ms = row::to_millis(next_expires_at).min(token.expires_at);
        sqlx::query(
            "INSERT INTO refresh_tokens (id, username, family, issued_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(next_id)
        .bind(&token.username)
        .bind(&token.family)
        .bind(now_ms)
        .bind(next_expires_ms)
        .execute(&mut *tx)
        .await?;
        let username = Username::new(token.username.as_str()).map_err(|e| {
            StoreError::Corrupt(format!(
                "refresh_tokens row {presented:?}, column username: {e}"
            ))
        })?;
        let account = fetch_existing_account(&mut tx, &username).await?;
        self.commit(tx).await?;
        Ok(Rotation::Rotated {
            account,
            expires_at: row::from_millis(next_expires_ms, || {
                format!("refresh_tokens row {presented:?}, column expires_at")
            })?,
        })
    }

    async fn revoke_refresh_family(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let family: Option<String> =
            sqlx::query_scalar("SELECT family FROM refresh_tokens WHERE id = $1")
                .bind(presented)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(family) = family else {
            return Ok(false);
        };
        revoke_family(&mut tx, &family, now).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn revoke_refresh_tokens(
        &self,
        username: &Username,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let now_ms = row::to_millis(now);
        let mut tx = self.begin_write().await?;
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM refresh_tokens \
             WHERE username = $1 AND revoked_at IS NULL AND used_at IS NULL AND expires_at > $2",
        )
        .bind(username.as_str())
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE username = $1 AND revoked_at IS NULL",
        )
        .bind(username.as_str())
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        u64::try_from(live)
            .map_err(|_| StoreError::Corrupt(format!("refresh_tokens: COUNT(*) is {live}")))
    }

    async fn signing_keys(&self) -> Result<Vec<flotilla_store::SigningKeyRecord>, StoreError> {
        keys::list(self).await
    }

    async fn add_signing_keys(
        &self,
        keys: &[flotilla_store::SigningKeyRecord],
        how: flotilla_store::AddKeys,
    ) -> Result<bool, StoreError> {
        keys::add(self, keys, how).await
    }

    async fn retire_signing_key(&self, kid: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        keys::retire(self, kid, now).await
    }
}

#[async_trait]
impl ChangeFeed for SqliteStore {
    fn change_notices(&self) -> watch::Receiver<u64> {
        self.notices.subscribe()
    }

    async fn changes(
        &self,
        after: i64,
        limit: usize,
        only: Option<(ChangeEntity, &str)>,
    ) -> Result<Vec<Change>, StoreError> {
        let rows: Vec<row::ChangeRow> = sqlx::query_as(row::CHANGES_SELECT)
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(only.is_none())
            .bind(only.map_or("", |(entity, _)| row::entity_pattern(entity)))
            .bind(only.map_or("", |(_, key)| key))
            .fetch_all(&self.reader)
            .await?;
        row::changes(rows)
    }

    async fn last_change(&self) -> Result<i64, StoreError> {
        // Committed rows only: a number handed out to a transaction that
        // has not committed yet is not the feed's until it does.
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM changes")
            .fetch_one(&self.reader)
            .await?;
        Ok(last.unwrap_or(0))
    }

    async fn prune_changes(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM changes WHERE at < $1")
            .bind(row::to_millis(before))
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }
}
