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

/// The config of servers that share the local driver's instances.
pub fn shared_config(instances: &std::path::Path) -> String {
    CONFIG.replace(
        "type = \"local\"\n",
        &format!(
            "type = \"local\"\ndir = {:?}\n",
            instances.display().to_string()
        ),
    )
}

#[test]
fn two_servers_on_one_database_share_the_work() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let url = database(&pg);
    let env = [("FLOTILLA_DATABASE_URL", url.as_str())];
    let shared = Sandbox::new();
    let config = shared_config(&shared.path().join("instances"));
    let (first, second) = (Sandbox::new(), Sandbox::new());
    let leader = Server::start_with_env(&first.path(), &config, &env);
    let follower = Server::start_with_env(&second.path(), &config, &env);

    // A deploy at the server that follows: the leader acts, and both answer.
    let out = follower.cli(&["deploy", "two", "--nodes", "2", "--ttl", "10m", "--wait"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ready_nodes(&follower.status("two")), 2);
    assert_eq!(ready_nodes(&leader.status("two")), 2);
    assert_eq!(
        follower.status("two")["nodes"],
        leader.status("two")["nodes"],
        "both answer what the leader observes"
    );
    assert_eq!(node_processes(&shared.path()).len(), 2);
    assert_eq!(code(&follower.cli(&["destroy", "two", "--wait"])), 0);
    wait_for("the nodes gone", || {
        node_processes(&shared.path()).is_empty()
    });
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
