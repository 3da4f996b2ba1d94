//! The store contract on SQLite, plus what only a file-backed store can
//! show: durability settings, reopening, and errors on opening.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flotilla_domain::{
    AccountKind, ClusterName, DeployCommand, Level, Limits, NodeCapacity, PoolName, TimeToLive,
    Username,
};
use flotilla_store::contract::Harness;
use flotilla_store::{
    AccountRecord, AccountStore, RefreshTokenRecord, Rotation, Store, StoreError,
};
use flotilla_store_sqlite::SqliteStore;
use sqlx::ConnectOptions;
use tokio::task::JoinSet;

async fn sqlite_harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory that does not exist yet: open creates it.
    let path = dir.path().join("state").join("flotilla.db");
    let store = SqliteStore::open(&path).await.expect("open");
    let second = SqliteStore::open(&path).await.expect("open again");
    Harness {
        store: Arc::new(store),
        second: Arc::new(second),
        guard: Box::new(dir),
    }
}

flotilla_store::store_contract_tests!(sqlite_harness);

fn t(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("valid time")
}

fn command(cluster: &str, nodes: i64) -> DeployCommand {
    let limits = Limits::default();
    DeployCommand {
        cluster: ClusterName::new(cluster).unwrap(),
        node_capacity: NodeCapacity::new(nodes, &limits).unwrap(),
        time_to_live: TimeToLive::new(3600, &limits).unwrap(),
        is_public: None,
        pool: None,
        workload: None,
        default_pool: PoolName::new("default").unwrap(),
    }
}

#[tokio::test]
async fn clusters_and_instance_set_ids_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flotilla.db");

    let store = SqliteStore::open(&path).await.unwrap();
    store
        .deploy(&command("kept", 3), t(0), t(600))
        .await
        .unwrap();
    store
        .deploy(&command("going", 1), t(0), t(600))
        .await
        .unwrap();
    store
        .destroy(&ClusterName::new("going").unwrap(), t(5))
        .await
        .unwrap();
    let local = store.instance_set_id("local").await.unwrap();
    let ec2 = store.instance_set_id("ec2").await.unwrap();
    let before = store.list_clusters().await.unwrap();
    store.close().await;

    let reopened = SqliteStore::open(&path).await.unwrap();
    assert_eq!(reopened.list_clusters().await.unwrap(), before);
    assert_eq!(reopened.instance_set_id("local").await.unwrap(), local);
    assert_eq!(reopened.instance_set_id("ec2").await.unwrap(), ec2);
    assert_eq!(reopened.next_expiry().await.unwrap(), Some(t(600)));
    // And it is still writable after the migrations ran a second time.
    let again = reopened
        .deploy(&command("kept", 4), t(10), t(700))
        .await
        .unwrap();
    assert_eq!(again.generation, 2);
    reopened.close().await;
}

fn user(name: &str) -> Username {
    Username::new(name).unwrap()
}

fn refresh_token(id: &str, username: &str, family: &str) -> RefreshTokenRecord {
    RefreshTokenRecord {
        id: id.to_owned(),
        username: user(username),
        family: family.to_owned(),
        issued_at: t(0),
        expires_at: t(600),
    }
}

#[tokio::test]
async fn accounts_and_refresh_tokens_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flotilla.db");

    let store = SqliteStore::open(&path).await.unwrap();
    let admin = AccountRecord {
        username: user("root"),
        kind: AccountKind::Local,
        level: Level::Admin,
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned()),
        grants: ["ops", "shared"]
            .into_iter()
            .map(|c| ClusterName::new(c).unwrap())
            .collect::<BTreeSet<_>>(),
        created_at: t(0),
    };
    assert!(store.create_first_admin(&admin).await.unwrap());
    store
        .upsert_github_account(&user("octocat"), Level::OrgMember, t(1))
        .await
        .unwrap();
    store
        .insert_refresh_token(&refresh_token("root-1", "root", "fr"))
        .await
        .unwrap();
    store
        .insert_refresh_token(&refresh_token("cat-1", "octocat", "fc"))
        .await
        .unwrap();
    store
        .insert_refresh_token(&refresh_token("cat-gone", "octocat", "fg"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .rotate_refresh_token("cat-1", "cat-2", t(600), t(10))
            .await
            .unwrap(),
        Rotation::Rotated { .. }
    ));
    assert!(store
        .revoke_refresh_family("cat-gone", t(11))
        .await
        .unwrap());
    let before = store.list_accounts().await.unwrap();
    assert_eq!(before.len(), 2);
    store.close().await;

    let reopened = SqliteStore::open(&path).await.unwrap();
    assert_eq!(reopened.list_accounts().await.unwrap(), before);
    assert_eq!(
        reopened.get_account(&user("root")).await.unwrap(),
        Some(admin)
    );
    assert!(
        !reopened
            .create_first_admin(&AccountRecord {
                username: user("second"),
                ..before[1].clone()
            })
            .await
            .unwrap(),
        "the admin is still there"
    );
    // Used, revoked and live tokens all kept their state.
    assert_eq!(
        reopened
            .rotate_refresh_token("cat-gone", "x", t(600), t(20))
            .await
            .unwrap(),
        Rotation::Invalid
    );
    assert!(matches!(
        reopened
            .rotate_refresh_token("root-1", "root-2", t(600), t(20))
            .await
            .unwrap(),
        Rotation::Rotated { account: a, .. } if a.username == user("root")
    ));
    assert!(matches!(
        reopened
            .rotate_refresh_token("cat-2", "cat-3", t(600), t(20))
            .await
            .unwrap(),
        Rotation::Rotated { account: a, .. } if a.username == user("octocat")
    ));
    assert_eq!(
        reopened
            .rotate_refresh_token("cat-1", "cat-x", t(600), t(30))
            .await
            .unwrap(),
        Rotation::Reused
    );
    reopened.close().await;
}

#[tokio::test]
async fn writes_are_visible_after_reopening_without_close() {
    // Dropping without `close` is what a crash looks like to the file: the
    // commit must already be there.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flotilla.db");
    let made = {
        let store = SqliteStore::open(&path).await.unwrap();
        store
            .deploy(&command("kept", 2), t(0), t(600))
            .await
            .unwrap()
    };
    let reopened = SqliteStore::open(&path).await.unwrap();
    assert_eq!(reopened.get_cluster(&made.name).await.unwrap(), Some(made));
}

#[tokio::test]
async fn instance_set_ids_have_the_documented_form() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("f.db")).await.unwrap();
    let id = store.instance_set_id("local").await.unwrap();
    let id = id.as_str();
    assert_eq!(id.len(), 19, "{id}");
    assert!(id.starts_with("fl-"), "{id}");
    assert!(
        id[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id}"
    );
}

#[tokio::test]
async fn connections_run_in_wal_mode_with_durable_commits_and_foreign_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flotilla.db");
    let store = SqliteStore::open(&path).await.unwrap();

    let write = store.write_settings().await.unwrap();
    assert_eq!(write.journal_mode, "wal");
    assert!(write.foreign_keys);
    assert_eq!(write.synchronous, "full");
    assert_eq!(write.busy_timeout, Duration::from_secs(5));
    assert!(!write.query_only);

    let read = store.read_settings().await.unwrap();
    assert_eq!(read.journal_mode, "wal");
    assert!(read.foreign_keys);
    assert_eq!(read.busy_timeout, Duration::from_secs(5));
    assert!(read.query_only, "the read pool must not write");

    // WAL is a property of the file, so any later opener gets it too.
    let mut raw = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(mode.to_ascii_lowercase(), "wal");
}

#[tokio::test]
async fn opening_under_a_file_fails_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, b"").unwrap();
    let path = blocker.join("state").join("flotilla.db");

    let err = SqliteStore::open(&path)
        .await
        .expect_err("cannot create the directory");
    assert!(
        matches!(&err, StoreError::Open { location, .. } if location == &path.display().to_string()),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("cannot create directory"), "{message}");
}

#[tokio::test]
async fn opening_a_directory_fails_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteStore::open(dir.path())
        .await
        .expect_err("a directory is no database");
    assert!(matches!(&err, StoreError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_stored_rows_are_reported_as_corrupt_naming_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flotilla.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .deploy(&command("fine", 1), t(0), t(600))
        .await
        .unwrap();

    let mut raw = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO clusters (name, is_public, node_capacity, pool, expires_at, destroying, \
                               created_at, updated_at, generation) \
         VALUES ('bad name', FALSE, 1, 'default', NULL, FALSE, 0, 0, 1)",
    )
    .execute(&mut raw)
    .await
    .unwrap();
    sqlx::query("INSERT INTO instance_sets (driver, id, created_at) VALUES ('odd', '-x', 0)")
        .execute(&mut raw)
        .await
        .unwrap();

    match store.list_clusters().await {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("\"bad name\""), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    match store.instance_set_id("odd").await {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("\"odd\""), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Valid rows are still readable one by one.
    assert!(store
        .get_cluster(&ClusterName::new("fine").unwrap())
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn invalid_stored_accounts_are_reported_as_corrupt_naming_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flotilla.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .upsert_github_account(&user("fine"), Level::GithubMember, t(0))
        .await
        .unwrap();

    let mut raw = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    for statement in [
        "INSERT INTO accounts (username, kind, level, password_hash, created_at) \
         VALUES ('odd-level', 'local', 'superuser', NULL, 0)",
        "INSERT INTO accounts (username, kind, level, password_hash, created_at) \
         VALUES ('odd-kind', 'ldap', 'admin', NULL, 0)",
        "INSERT INTO accounts (username, kind, level, password_hash, created_at) \
         VALUES ('odd-grant', 'local', 'admin', NULL, 0)",
        "INSERT INTO grants (username, cluster) VALUES ('odd-grant', 'bad cluster')",
    ] {
        sqlx::query(statement).execute(&mut raw).await.unwrap();
    }

    let cases = [
        ("odd-level", "\"odd-level\", column level"),
        ("odd-kind", "\"odd-kind\", column kind"),
        ("odd-grant", "\"bad cluster\""),
    ];
    for (name, expect) in cases {
        match store.get_account(&user(name)).await {
            Err(StoreError::Corrupt(msg)) => assert!(msg.contains(expect), "{msg}"),
            other => panic!("expected Corrupt containing {expect:?}, got {other:?}"),
        }
    }
    assert!(matches!(
        store.list_accounts().await,
        Err(StoreError::Corrupt(_))
    ));
    // A local account of an unreadable kind still blocks its name, and the
    // error says what is wrong with it.
    match store
        .upsert_github_account(&user("odd-kind"), Level::GithubMember, t(1))
        .await
    {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("\"odd-kind\""), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(store.get_account(&user("fine")).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_wait_for_each_other_instead_of_failing() {
    // Two processes on one file (say, a server and a restarting one) each
    // have their own writer; BEGIN IMMEDIATE and the busy timeout make them
    // take turns.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flotilla.db");
    let first: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let second: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());

    let mut tasks = JoinSet::new();
    for i in 0..40 {
        let store = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tasks.spawn(async move {
            store
                .deploy(&command(&format!("c{i:02}"), 1), t(0), t(600))
                .await?;
            store
                .deploy(&command("shared", i % 5 + 1), t(i), t(600 + i))
                .await?;
            store.instance_set_id("local").await
        });
    }
    let mut ids = std::collections::BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        ids.insert(joined.unwrap().expect("no lock errors across stores"));
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(first.list_clusters().await.unwrap().len(), 41);
    assert_eq!(
        second.list_clusters().await.unwrap(),
        first.list_clusters().await.unwrap()
    );
    let shared = first
        .get_cluster(&ClusterName::new("shared").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shared.generation, 40);
}

/// A database a newer flotilla migrated (a migration this one does not
/// know) is refused, naming both versions, and left as it was.
#[tokio::test]
async fn a_database_migrated_by_a_newer_flotilla_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flotilla.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .deploy(&command("kept", 2), t(0), t(600))
        .await
        .unwrap();
    store.close().await;

    let mut raw = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, x'00', 0)",
    )
    .execute(&mut raw)
    .await
    .unwrap();

    let err = SqliteStore::open(&path).await.unwrap_err();
    match &err {
        StoreError::SchemaTooNew { found: 9999, known } => assert!(*known >= 3, "{err}"),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert!(err.to_string().contains("9999"), "{err}");
    let kept: i64 = sqlx::query_scalar("SELECT node_capacity FROM clusters WHERE name = 'kept'")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(kept, 2);
}

/// An organisation's events kept before the change feed existed move into
/// it on upgrade, in order, and read back as before.
#[tokio::test]
async fn organisation_events_move_into_the_feed_on_upgrade() {
    use flotilla_domain::OrgEventKind;
    use flotilla_store::OrgStore;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flotilla.db");
    // The database as the release before the feed left it: migrations
    // 0001 to 0003 only.
    let old = dir.path().join("old-migrations");
    std::fs::create_dir(&old).unwrap();
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&here).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.as_str() < "0004" {
            std::fs::copy(entry.path(), old.join(&name)).unwrap();
        }
    }
    let mut raw = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&mut raw)
        .await
        .unwrap();
    for statement in [
        "INSERT INTO accounts (username, kind, level, password_hash, created_at) \
         VALUES ('ann', 'github', 'github_member', NULL, 0)",
        "INSERT INTO orgs (name, min_nodes, max_nodes, node_limit, pool, balance, \
             monthly_allowance, max_balance, shutdown_threshold, min_runway_secs, created_at) \
         VALUES ('lab', 0, 2, 10, 'default', 0, 0, 0, 0, 0, 1700000000000)",
        "INSERT INTO org_people (org, username, role, since) VALUES ('lab', 'ann', 'owner', 0)",
        "INSERT INTO org_events (org, at, kind, message) \
         VALUES ('lab', 1700000000000, 'created', 'organisation created with owners ann')",
        "INSERT INTO org_events (org, at, kind, message) \
         VALUES ('lab', 1700000001000, 'woke', 'ann''s request woke it')",
    ] {
        sqlx::query(statement).execute(&mut raw).await.unwrap();
    }

    let store = SqliteStore::open(&path).await.unwrap();
    let events = store
        .events(&ClusterName::new("lab").unwrap(), 10)
        .await
        .unwrap();
    let kinds: Vec<OrgEventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [OrgEventKind::Created, OrgEventKind::Woke]);
    assert_eq!(events[1].message, "ann's request woke it");
    assert_eq!(events[1].at, t(1));
    let table: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'org_events'",
    )
    .fetch_optional(&mut raw)
    .await
    .unwrap();
    assert_eq!(table, None, "the old table is gone");
}
