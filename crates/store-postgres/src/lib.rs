//! The PostgreSQL store backend, for several servers on one database.
//!
//! Every method is one transaction at PostgreSQL's default isolation, READ
//! COMMITTED, where each statement sees what was committed before it began.
//! A method that reads, decides and then writes first takes a lock that
//! makes every other writer of the same thing wait, and reads again after
//! it has it; each lock is named where it is taken:
//!
//! - a row lock (`SELECT … FOR UPDATE`) on the rows decided on: a refresh
//!   token being rotated, an organisation being changed;
//! - a transaction-scoped advisory lock where the row to lock may not
//!   exist yet or the decision spans rows: [`Lock::Admins`] around every
//!   change that could leave no admin or create the first one,
//!   [`Lock::OrgName`] around creating an organisation, [`Lock::Orgs`]
//!   held alone by an accrual pass (which charges every organisation) and
//!   shared by every change of one (locking every row instead would write
//!   each of them on every pass), and [`Lock::Feed`]
//!   from a transaction's change-feed insert, its last step, to its commit
//!   (see [`commit_with`]);
//! - the lease row, read `FOR SHARE` as the first step of every write only
//!   the leader makes, so a takeover waits for them (module `lease`).
//!
//! A single statement (deploy's upsert, destroy, expire_due, forget) needs
//! no more: PostgreSQL runs it atomically against concurrent writers.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{
    AccountKind, Change, ChangeEntity, ChangeKind, ClusterName, ClusterRecord, DeployCommand,
    InstanceSetId, Level, NewChange, Username,
};
use flotilla_store::sql::{self as row, AccountRow, ClusterRow, RefreshTokenRow};
use flotilla_store::{
    account_change, account_select, cluster_columns, left_with_account, AccountRecord,
    AccountStore, ChangeFeed, Fence, RefreshTokenRecord, Rotation, Store, StoreError,
};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::watch;

mod dropbox;
mod jobs;
mod keys;
mod lease;
mod meters;
mod notify;
mod orgs;
mod pools;
mod schedules;
#[cfg(feature = "testing")]
pub mod testing;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Connections per server. Reads and writes share them; writers wait for
/// each other on locks, not on the pool.
const CONNECTIONS: u32 = 16;

/// How long to wait for a connection from the pool (the database
/// unreachable, or every connection busy) before failing the call.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often to draw a fresh instance set ID if the drawn one is taken by
/// another driver.
const ID_ATTEMPTS: usize = 3;

/// The advisory locks this backend takes (`pg_advisory_xact_lock`): held
/// until the transaction ends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lock<'a> {
    /// Changes that count admins: the first admin, demotion, deletion.
    Admins,
    /// Creating the organisation of this name.
    OrgName(&'a str),
    /// Appending to the change feed, from the insert to the commit.
    Feed,
    /// The organisations as a whole: an accrual pass holds it alone, every
    /// change of one organisation holds it shared ([`Lock::share`]).
    Orgs,
    /// The signing keys: adding (the first key, or rotating) and retiring.
    Keys,
}

impl Lock<'_> {
    pub(crate) async fn take(self, conn: &mut PgConnection) -> Result<(), StoreError> {
        // One key space for flotilla's locks: the low bits say which lock.
        let query = match self {
            Lock::Admins => sqlx::query("SELECT pg_advisory_xact_lock(7046134, 1)"),
            Lock::Feed => sqlx::query("SELECT pg_advisory_xact_lock(7046134, 2)"),
            Lock::Orgs => sqlx::query("SELECT pg_advisory_xact_lock(7046134, 3)"),
            Lock::Keys => sqlx::query("SELECT pg_advisory_xact_lock(7046134, 4)"),
            // The one-key form: its key space does not overlap the two-key
            // form of the fixed locks, so no name can hash onto one of them.
            Lock::OrgName(name) => sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtextextended('flotilla-org:' || $1, 0))",
            )
            .bind(name),
        };
        query.execute(conn).await?;
        Ok(())
    }

    /// Takes [`Lock::Orgs`] shared: any number of changes of single
    /// organisations at once, but none while an accrual pass runs.
    pub(crate) async fn share_orgs(conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock_shared(7046134, 3)")
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[derive(Clone)]
pub struct PostgresStore {
    location: String,
    pub(crate) pool: PgPool,
    /// Renews and releases the lease, so that renewal never waits for a
    /// connection behind a busy pool (see `lease.rs`).
    pub(crate) lease_pool: PgPool,
    /// Bumped on every notice of a committed change, from any server.
    notices: Arc<watch::Sender<u64>>,
    _listener: Arc<Listener>,
    /// The unsettled meters as this server's last accrual pass left them;
    /// taken out by a pass and put back once it commits.
    pub(crate) meter_cache: Arc<std::sync::Mutex<Option<flotilla_store::meters::MeterCache>>>,
}

/// How long opening the store waits for its listener to start.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// The NOTIFY channel every commit with changes signals on.
const CHANNEL: &str = "flotilla_changes";

/// The task that listens for the feed's notices; stopped with the last
/// clone of the store.
struct Listener(tokio::task::JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Listens on [`CHANNEL`] and bumps `notices` for each notice. `recv`
/// reconnects by itself after a lost connection; the notices sent
/// meanwhile are lost, which readers cover by reading the feed on a timer
/// as well, so a reconnect only bumps once more to make them look now.
async fn listen(pool: PgPool, notices: std::sync::Weak<watch::Sender<u64>>) {
    let bump = || match notices.upgrade() {
        Some(n) => {
            n.send_modify(|v| *v += 1);
            true
        }
        None => false,
    };
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for the change feed's notices; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "cannot listen for the change feed's notices; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if !bump() {
            return;
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => {
                    if !bump() {
                        return;
                    }
                }
                // The connection was lost; the next call reconnects.
                Ok(None) => {
                    if !bump() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the change feed's notices; listening again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

/// Only where the database is: the pool's options hold its password.
impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// `url` with any password replaced, for messages and logs: the one in
/// `user:password@` and a `password=` parameter.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user information ends at the last '@' (a password may hold a
    // '/' or a '?' nobody encoded).
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => rest.to_owned(),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=***")
                    }
                    _ => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => rest,
    };
    format!("{scheme}://{rest}")
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host/db`,
    /// or `?host=/socket/dir`) and brings its schema up to date. Refuses a
    /// database migrated by a newer flotilla.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let location = redact(url);
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            location: location.clone(),
            source,
        };
        let options = PgConnectOptions::from_str(url).map_err(|e| open_error(e.into()))?;
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|e| open_error(e.into()))?;
        let lease_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| open_error(e.into()))?;
        // sqlx's migrator takes an advisory lock of its own, so servers
        // starting together migrate once.
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| row::migrate_error(e, &MIGRATOR))?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&pool)
            .await?;
        tracing::info!(location = %location, server_version = %version, "opened the PostgreSQL store");
        let notices = Arc::new(watch::channel(0).0);
        let mut listening = notices.subscribe();
        let listener = tokio::spawn(listen(pool.clone(), Arc::downgrade(&notices)));
        // Its first bump says it listens: from here on no change is missed.
        if tokio::time::timeout(LISTEN_WAIT, listening.changed())
            .await
            .is_err()
        {
            tracing::warn!(
                "not listening for the change feed's notices yet; readers poll meanwhile"
            );
        }
        Ok(PostgresStore {
            location,
            pool,
            lease_pool,
            notices,
            _listener: Arc::new(Listener(listener)),
            meter_cache: Arc::default(),
        })
    }

    /// Where the database is, without its password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
        self.lease_pool.close().await;
    }

    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

/// Appends `changes` to the feed and commits. The feed's advisory lock
/// ([`Lock::Feed`]) is taken here, as the transaction's last step, and held
/// until the commit: numbers are handed out in commit order, so a reader
/// that resumes after the last number it saw never skips a change
/// committed late. Taking it last means its holder waits for no other
/// lock, so it cannot be part of a deadlock.
pub(crate) async fn commit_with(
    mut tx: Transaction<'static, Postgres>,
    changes: &[NewChange],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    if !changes.is_empty() {
        Lock::Feed.take(&mut tx).await?;
        let at = row::to_millis(at);
        sqlx::query(
            "INSERT INTO changes (kind, key, at, payload) \
             SELECT k, key, $3, p FROM unnest($1::TEXT[], $2::TEXT[], $4::TEXT[]) \
                 WITH ORDINALITY AS c(k, key, p, i) ORDER BY i",
        )
        .bind(changes.iter().map(|c| c.kind.as_str()).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.key.as_str()).collect::<Vec<_>>())
        .bind(at)
        .bind(
            changes
                .iter()
                .map(|c| c.payload.to_string())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        // Delivered at the commit, to every server listening.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The record of cluster `name`, read inside the caller's transaction and
/// locked (`FOR UPDATE`) until it ends: a change is then judged against
/// the record it replaces.
pub(crate) async fn locked_cluster(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<ClusterRecord>, StoreError> {
    let row: Option<ClusterRow> = sqlx::query_as(concat!(
        "SELECT ",
        cluster_columns!(),
        " FROM clusters WHERE name = $1 FOR UPDATE"
    ))
    .bind(name)
    .fetch_optional(conn)
    .await?;
    row.map(ClusterRecord::try_from).transpose()
}

/// Records in name order, bytewise as `ClusterName` orders (RETURNING
/// gives rows in no order, and a database's collation may not be bytewise).
fn records(rows: Vec<ClusterRow>) -> Result<Vec<ClusterRecord>, StoreError> {
    let mut records = rows
        .into_iter()
        .map(ClusterRecord::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    records.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(records)
}

#[async_trait]
impl Store for PostgresStore {
    async fn instance_set_id(&self, driver: &str) -> Result<InstanceSetId, StoreError> {
        const SELECT: &str = "SELECT id FROM instance_sets WHERE driver = $1";
        let existing: Option<String> = sqlx::query_scalar(SELECT)
            .bind(driver)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(id) = existing {
            return row::instance_set_id(driver, id);
        }
        for _ in 0..ID_ATTEMPTS {
            // Insert-if-absent, then read back: a racing insert of the same
            // driver waits for the first to commit and does nothing, and
            // the read (a new statement, so a new snapshot) sees the
            // winner's ID. An ID taken by another driver is skipped too.
            sqlx::query(
                "INSERT INTO instance_sets (driver, id, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(driver)
            .bind(row::new_instance_set_id())
            .bind(row::to_millis(Utc::now()))
            .execute(&self.pool)
            .await?;
            let id: Option<String> = sqlx::query_scalar(SELECT)
                .bind(driver)
                .fetch_optional(&self.pool)
                .await?;
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
        .fetch_optional(&self.pool)
        .await?;
        row.map(ClusterRecord::try_from).transpose()
    }

    async fn list_clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        let rows: Vec<ClusterRow> =
            sqlx::query_as(concat!("SELECT ", cluster_columns!(), " FROM clusters"))
                .fetch_all(&self.pool)
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
        let mut tx = self.begin().await?;
        let before = locked_cluster(&mut tx, name).await?;
        // As on SQLite: the WHERE makes the upsert a no-op on a fixed-field
        // mismatch, and no row back then means Conflict. A racing insert
        // of the same name waits for the first and then updates it.
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
               AND ($10 = FALSE OR clusters.workload IS NOT DISTINCT FROM excluded.workload) \
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
            commit_with(tx, &[NewChange::cluster(kind, &record)], now).await?;
            return Ok(record);
        }
        // A racing insert of the same name may have come between the
        // SELECT and the upsert, which has now locked it: read it again.
        let current = locked_cluster(&mut tx, name).await?.ok_or_else(|| {
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
        let mut tx = self.begin().await?;
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
            commit_with(
                tx,
                &[NewChange::cluster(ChangeKind::ClusterExtended, r)],
                now,
            )
            .await?;
        }
        Ok(record)
    }

    async fn destroy(
        &self,
        name: &ClusterName,
        now: DateTime<Utc>,
    ) -> Result<Option<ClusterRecord>, StoreError> {
        let mut tx = self.begin().await?;
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
            commit_with(
                tx,
                &[NewChange::cluster(ChangeKind::ClusterDestroyed, r)],
                now,
            )
            .await?;
        }
        Ok(record)
    }

    async fn expire_due(
        &self,
        now: DateTime<Utc>,
        fence: Fence,
    ) -> Result<Vec<ClusterRecord>, StoreError> {
        // One statement: a row a racing caller fired first no longer
        // matches when this one gets its lock, so each fires once.
        let mut tx = self.begin().await?;
        lease::check_fence(&mut tx, fence).await?;
        // The due rows are locked in name order first, so two callers (or
        // a caller and another writer of several records) cannot deadlock.
        let rows: Vec<ClusterRow> = sqlx::query_as(concat!(
            "WITH due AS (SELECT name FROM clusters \
                 WHERE expires_at IS NOT NULL AND expires_at <= $1 \
                 ORDER BY name COLLATE \"C\" FOR UPDATE) \
             UPDATE clusters SET destroying = TRUE, expires_at = NULL, \
                 generation = generation + 1, updated_at = $1 \
             WHERE name IN (SELECT name FROM due) \
                 AND expires_at IS NOT NULL AND expires_at <= $1 RETURNING ",
            cluster_columns!()
        ))
        .bind(row::to_millis(now))
        .fetch_all(&mut *tx)
        .await?;
        let fired = records(rows)?;
        let changes: Vec<NewChange> = fired
            .iter()
            .map(|r| NewChange::cluster(ChangeKind::ClusterExpired, r))
            .collect();
        commit_with(tx, &changes, now).await?;
        Ok(fired)
    }

    async fn next_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let earliest: Option<i64> = sqlx::query_scalar("SELECT MIN(expires_at) FROM clusters")
            .fetch_one(&self.pool)
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
        let mut tx = self.begin().await?;
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
        commit_with(tx, &[change], Utc::now()).await?;
        Ok(true)
    }
}

async fn fetch_account(
    conn: &mut PgConnection,
    username: &Username,
) -> Result<Option<AccountRecord>, StoreError> {
    let rows: Vec<AccountRow> =
        sqlx::query_as(concat!(account_select!(), " WHERE a.username = $1"))
            .bind(username.as_str())
            .fetch_all(conn)
            .await?;
    Ok(row::accounts(rows)?.pop())
}

/// Like [`fetch_account`], for an account the transaction has just seen or
/// written.
async fn fetch_existing_account(
    conn: &mut PgConnection,
    username: &Username,
) -> Result<AccountRecord, StoreError> {
    fetch_account(conn, username).await?.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "accounts row {:?}: gone within its own write transaction",
            username.as_str()
        ))
    })
}

/// `LastAdmin` if `username` is the only admin. Takes [`Lock::Admins`], so
/// two admins demoting each other at once are decided one after the other.
async fn refuse_last_admin(conn: &mut PgConnection, username: &Username) -> Result<(), StoreError> {
    Lock::Admins.take(conn).await?;
    let (target, admins): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(CASE WHEN username = $1 THEN 1 ELSE 0 END), 0)::BIGINT, COUNT(*) \
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

async fn account_exists(conn: &mut PgConnection, username: &Username) -> StoreError {
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

async fn insert_account(
    conn: &mut PgConnection,
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
    conn: &mut PgConnection,
    username: &Username,
    grants: &BTreeSet<ClusterName>,
) -> Result<(), StoreError> {
    let clusters: Vec<&str> = grants.iter().map(|c| c.as_str()).collect();
    sqlx::query("INSERT INTO grants (username, cluster) SELECT $1, unnest($2::TEXT[])")
        .bind(username.as_str())
        .bind(&clusters)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn revoke_family(
    conn: &mut PgConnection,
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

// Every write below runs in one transaction, rolled back on drop, so a
// method that returns an error has changed nothing.
#[async_trait]
impl AccountStore for PostgresStore {
    async fn create_account(&self, account: &AccountRecord) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_account(&mut tx, account).await?;
        let change = account_change(ChangeKind::AccountCreated, account);
        commit_with(tx, &[change], account.created_at).await?;
        Ok(())
    }

    async fn create_first_admin(&self, account: &AccountRecord) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        // Of two servers starting at once, the second counts after the
        // first has committed its admin.
        Lock::Admins.take(&mut tx).await?;
        let admins: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE level = $1")
            .bind(Level::Admin.as_str())
            .fetch_one(&mut *tx)
            .await?;
        if admins > 0 {
            return Ok(false);
        }
        insert_account(&mut tx, account).await?;
        let change = account_change(ChangeKind::AccountCreated, account);
        commit_with(tx, &[change], account.created_at).await?;
        Ok(true)
    }

    async fn get_account(&self, username: &Username) -> Result<Option<AccountRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_account(&mut conn, username).await
    }

    async fn list_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        let rows: Vec<AccountRow> = sqlx::query_as(account_select!())
            .fetch_all(&self.pool)
            .await?;
        row::accounts(rows)
    }

    async fn set_level(
        &self,
        username: &Username,
        level: Level,
    ) -> Result<Option<AccountRecord>, StoreError> {
        let mut tx = self.begin().await?;
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
        commit_with(tx, &[change], Utc::now()).await?;
        Ok(Some(account))
    }

    async fn set_grants(
        &self,
        username: &Username,
        grants: &BTreeSet<ClusterName>,
    ) -> Result<Option<AccountRecord>, StoreError> {
        let mut tx = self.begin().await?;
        // Locks the account, so concurrent replacements apply one by one.
        let exists: Option<String> =
            sqlx::query_scalar("SELECT username FROM accounts WHERE username = $1 FOR UPDATE")
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
        commit_with(tx, &[change], Utc::now()).await?;
        Ok(Some(account))
    }

    async fn delete_account(&self, username: &Username) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        // The deletion cascades into organisations' members, which a change
        // of an organisation rewrites (and checks against accounts): take
        // the organisations alone, first, or the two could deadlock.
        Lock::Orgs.take(&mut tx).await?;
        refuse_last_admin(&mut tx, username).await?;
        let Some(account) = fetch_account(&mut tx, username).await? else {
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
        commit_with(tx, &changes, Utc::now()).await?;
        Ok(true)
    }

    async fn upsert_github_account(
        &self,
        username: &Username,
        level: Level,
        now: DateTime<Utc>,
    ) -> Result<AccountRecord, StoreError> {
        let mut tx = self.begin().await?;
        // Locked (when it exists), so the change is judged against it.
        let before: Option<String> =
            sqlx::query_scalar("SELECT level FROM accounts WHERE username = $1 FOR UPDATE")
                .bind(username.as_str())
                .fetch_optional(&mut *tx)
                .await?;
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
        let kind = match before {
            None => Some(ChangeKind::AccountCreated),
            Some(level) if level != account.level.as_str() => Some(ChangeKind::AccountChanged),
            Some(_) => None,
        };
        let changes: Vec<NewChange> = kind
            .map(|k| account_change(k, &account))
            .into_iter()
            .collect();
        commit_with(tx, &changes, now).await?;
        Ok(account)
    }

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, username, family, issued_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token.id)
        .bind(token.username.as_str())
        .bind(&token.family)
        .bind(row::to_millis(token.issued_at))
        .bind(row::to_millis(token.expires_at))
        .execute(&self.pool)
        .await?;
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
        let mut tx = self.begin().await?;
        // The row lock makes racing presentations of one token take turns:
        // each reads the token as the one before left it.
        let token: Option<RefreshTokenRow> = sqlx::query_as(
            "SELECT username, family, expires_at, used_at, revoked_at \
             FROM refresh_tokens WHERE id = $1 FOR UPDATE",
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
            tx.commit().await?;
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
        tx.commit().await?;
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
        let mut tx = self.begin().await?;
        let family: Option<String> =
            sqlx::query_scalar("SELECT family FROM refresh_tokens WHERE id = $1")
                .bind(presented)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(family) = family else {
            return Ok(false);
        };
        revoke_family(&mut tx, &family, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn revoke_refresh_tokens(
        &self,
        username: &Username,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let now_ms = row::to_millis(now);
        // One statement: it counts exactly the tokens it revokes.
        let live: i64 = sqlx::query_scalar(
            "WITH revoked AS ( \
                 UPDATE refresh_tokens SET revoked_at = $2 \
                 WHERE username = $1 AND revoked_at IS NULL \
                 RETURNING used_at, expires_at) \
             SELECT COUNT(*) FROM revoked WHERE used_at IS NULL AND expires_at > $2",
        )
        .bind(username.as_str())
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?;
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
impl ChangeFeed for PostgresStore {
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
            .fetch_all(&self.pool)
            .await?;
        row::changes(rows)
    }

    async fn last_change(&self) -> Result<i64, StoreError> {
        // Committed rows only: a number handed out to a transaction that
        // has not committed yet is not the feed's until it does.
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(last.unwrap_or(0))
    }

    async fn prune_changes(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM changes WHERE at < $1")
            .bind(row::to_millis(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
