//! The real binary on PostgreSQL (`FLOTILLA_DATABASE_URL`), against a
//! server the test starts from the machine's PostgreSQL binaries.

mod support;

use std::process::Command;

use flotilla_store_postgres::testing::TempPostgres;
use support::{code, node_processes, ready_nodes, wait_for, Sandbox, Server, BIN, CONFIG};

fn database(pg: &TempPostgres) -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pg.create_database())
        .expect("create a database")
}

#[test]
fn serve_on_postgres_keeps_its_state_there_across_a_sigkill() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let url = database(&pg);
    let env = [("FLOTILLA_DATABASE_URL", url.as_str())];
    let sandbox = Sandbox::new();
    let server = Server::start_with_env(&sandbox.path(), CONFIG, &env);
    assert_eq!(
        code(&server.cli(&["deploy", "pg", "--nodes", "2", "--ttl", "10m", "--wait"])),
        0
    );
    server.kill();
    assert!(
        !sandbox.path().join("data").join("flotilla.db").exists(),
        "state went to PostgreSQL, not SQLite"
    );

    let server = Server::start_with_env(&sandbox.path(), CONFIG, &env);
    let status = server.status("pg");
    assert_eq!(status["state"], "running", "{status}");
    wait_for("both nodes ready again", || {
        ready_nodes(&server.status("pg")) == 2
    });
    assert_eq!(node_processes(&sandbox.path()).len(), 2, "no duplicates");
    assert_eq!(code(&server.cli(&["destroy", "pg", "--wait"])), 0);
    assert!(node_processes(&sandbox.path()).is_empty());
}

#[test]
fn a_second_server_on_one_database_is_refused_until_servers_share_the_work() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let url = database(&pg);
    let first = Sandbox::new();
    let _server = Server::start_with_env(
        &first.path(),
        CONFIG,
        &[("FLOTILLA_DATABASE_URL", url.as_str())],
    );
    let second = Sandbox::new();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(second.path().join("data"))
        .env("FLOTILLA_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another flotilla server is already running on the database"),
        "{stderr}"
    );
}

#[test]
fn a_database_url_that_is_not_postgresql_is_a_usage_error() {
    let sandbox = Sandbox::new();
    let config = sandbox.path().join("flotilla.toml");
    std::fs::write(&config, "database_url = \"mysql://u:secret@h/db\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("database_url"), "{stderr}");
    assert!(stderr.contains("not a PostgreSQL URL"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");

    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(sandbox.path().join("data"))
        .env("FLOTILLA_DATABASE_URL", "sqlite://x.db")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FLOTILLA_DATABASE_URL"), "{stderr}");
}
