//! The store contract on PostgreSQL, each check on a fresh server started
//! from the machine's own PostgreSQL binaries, plus what only a shared
//! database server can show.

use std::sync::Arc;

use flotilla_store::contract::Harness;
use flotilla_store_postgres::testing::TempPostgres;
use flotilla_store_postgres::PostgresStore;

async fn postgres_harness() -> Harness {
    let pg = TempPostgres::start_async().await.expect("start PostgreSQL");
    let url = pg.create_database().await.expect("create a database");
    let store = PostgresStore::connect(&url).await.expect("connect");
    let second = PostgresStore::connect(&url).await.expect("connect again");
    Harness {
        store: Arc::new(store),
        second: Arc::new(second),
        guard: Box::new(pg),
    }
}

flotilla_store::store_contract_tests!(postgres_harness);

use chrono::{DateTime, Utc};
use flotilla_domain::{ClusterName, DeployCommand, Limits, NodeCapacity, PoolName, TimeToLive};
use flotilla_store::{ChangeFeed, Store, StoreError};
use sqlx::Connection;

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

/// Servers starting at once on an empty database migrate it once, and all
/// of them work on the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_starting_together_migrate_once() {
    let pg = TempPostgres::start_async().await.unwrap();
    let url = pg.create_database().await.unwrap();
    let stores = futures_join_all(
        (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { PostgresStore::connect(&url).await })
            })
            .collect(),
    )
    .await;
    for (i, store) in stores.iter().enumerate() {
        store
            .deploy(&command(&format!("c{i}"), 1), t(0), t(600))
            .await
            .unwrap();
    }
    assert_eq!(stores[0].list_clusters().await.unwrap().len(), 4);
}

async fn futures_join_all(
    tasks: Vec<tokio::task::JoinHandle<Result<PostgresStore, StoreError>>>,
) -> Vec<PostgresStore> {
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap().unwrap());
    }
    out
}

/// A database a newer flotilla migrated is refused, naming both versions,
/// and left as it was.
#[tokio::test]
async fn a_database_migrated_by_a_newer_flotilla_is_refused() {
    let pg = TempPostgres::start_async().await.unwrap();
    let url = pg.create_database().await.unwrap();
    let store = PostgresStore::connect(&url).await.unwrap();
    store
        .deploy(&command("kept", 2), t(0), t(600))
        .await
        .unwrap();
    store.close().await;

    let mut raw = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, '\\x00', 0)",
    )
    .execute(&mut raw)
    .await
    .unwrap();

    let err = PostgresStore::connect(&url).await.unwrap_err();
    match &err {
        StoreError::SchemaTooNew { found: 9999, known } => assert!(*known >= 3, "{err}"),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let kept: i64 = sqlx::query_scalar("SELECT node_capacity FROM clusters WHERE name = 'kept'")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(kept, 2);
}

/// A server that cannot reach its database says where it looked, without
/// the password.
#[tokio::test]
async fn an_unreachable_database_is_named_without_its_password() {
    // Nothing listens on port 1.
    let err = PostgresStore::connect("postgres://flotilla:hunter2@127.0.0.1:1/flotilla")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(
        message.contains("postgres://flotilla:***@127.0.0.1:1/flotilla"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn redact_hides_only_the_password() {
    use flotilla_store_postgres::redact;
    assert_eq!(
        redact("postgres://u:p@h:5432/db?sslmode=require"),
        "postgres://u:***@h:5432/db?sslmode=require"
    );
    assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    assert_eq!(redact("postgres://u:p%40x@h/db"), "postgres://u:***@h/db");
    assert_eq!(redact("postgres://u:a/b@h/db"), "postgres://u:***@h/db");
    assert_eq!(
        redact("postgres://h/db?user=u&password=secret&sslmode=require"),
        "postgres://h/db?user=u&password=***&sslmode=require"
    );
}

/// A change committed by one server wakes the feed's readers on another
/// (NOTIFY), so a command at a follower reaches the leader at once.
#[tokio::test]
async fn a_change_on_one_server_notifies_the_others() {
    let pg = TempPostgres::start_async().await.unwrap();
    let url = pg.create_database().await.unwrap();
    let leader = PostgresStore::connect(&url).await.unwrap();
    let follower = PostgresStore::connect(&url).await.unwrap();
    // Listening from the moment it is open.
    let mut notices = leader.change_notices();
    notices.borrow_and_update();
    follower
        .deploy(&command("a", 1), t(0), t(3600))
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), notices.changed())
        .await
        .expect("a notice within 5 s")
        .unwrap();
}

/// A server started from one of tokio's blocking threads (which end after
/// ten idle seconds) keeps running as long as its owner holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_from_a_pool_thread_outlives_the_thread() {
    let pg = TempPostgres::start_async().await.unwrap();
    let url = pg.create_database().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    let store = PostgresStore::connect(&url).await.expect("still running");
    store
        .deploy(&command("alive", 1), t(0), t(600))
        .await
        .unwrap();
}
