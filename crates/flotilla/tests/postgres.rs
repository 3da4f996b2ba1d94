//! The real binary on PostgreSQL (`FLOTILLA_DATABASE_URL`), against a
//! server the test starts from the machine's PostgreSQL binaries.

mod support;

use std::process::Command;

use flotilla_store_postgres::testing::TempPostgres;
use support::{
    code, database, node_processes, ready_nodes, shared_config, wait_for, Sandbox, Server, BIN,
    CONFIG,
};

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

/// Tokens signed by one server are good at every other, and a key rotated
/// or retired at one is rotated or retired at all: the keys live in the
/// database, not in each server's data directory. An account changed at
/// one server has its tokens refused at every other.
#[test]
fn every_server_signs_verifies_and_revokes_alike() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let url = database(&pg);
    let env = [("FLOTILLA_DATABASE_URL", url.as_str())];
    let (first, second) = (Sandbox::new(), Sandbox::new());
    let a = Server::start_with_env(&first.path(), CONFIG, &env);
    let b = Server::start_with_env(&second.path(), CONFIG, &env);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let login = |server: &str| {
            let http = http.clone();
            let url = format!("{server}/api/v1/auth/login");
            async move {
                let reply: serde_json::Value = http
                    .post(url)
                    .json(&serde_json::json!({"username": "admin", "password": support::ADMIN_PASSWORD}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                reply["access_token"].as_str().expect("a token").to_owned()
            }
        };
        let whoami = |server: &str, token: &str| {
            let req = http
                .get(format!("{server}/api/v1/auth/whoami"))
                .bearer_auth(token);
            async move { req.send().await.unwrap().status().as_u16() }
        };
        let kid = |token: &str| {
            use base64::Engine;
            let header = token.split('.').next().unwrap();
            let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&header).unwrap()["kid"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let jwks = |server: &str| {
            let req = http.get(format!("{server}/.well-known/jwks.json"));
            async move { req.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
        };

        let old = login(&a.url).await;
        assert_eq!(whoami(&b.url, &old).await, 200, "A's token is good at B");
        assert_eq!(jwks(&a.url).await, jwks(&b.url).await);

        // Rotate at B: A signs with the new key as soon as it hears.
        let rotated: serde_json::Value = http
            .post(format!("{}/api/v1/auth/keys", b.url))
            .bearer_auth(&old)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let new_kid = rotated["kid"].as_str().expect("the new kid").to_owned();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let fresh = loop {
            let token = login(&a.url).await;
            if kid(&token) == new_kid {
                break token;
            }
            assert!(std::time::Instant::now() < deadline, "A still signs with the old key");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(whoami(&b.url, &fresh).await, 200);
        assert_eq!(whoami(&a.url, &old).await, 200, "the old key still verifies");

        // Retire the old key at A: its tokens are refused at B too.
        let retired = http
            .delete(format!("{}/api/v1/auth/keys/{}", a.url, kid(&old)))
            .bearer_auth(&fresh)
            .send()
            .await
            .unwrap();
        assert_eq!(retired.status().as_u16(), 204);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while whoami(&b.url, &old).await != 401 {
            assert!(std::time::Instant::now() < deadline, "B still accepts the retired key");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(whoami(&b.url, &fresh).await, 200);
        assert_eq!(jwks(&a.url).await, jwks(&b.url).await);

        // An account changed at A: its tokens from B are refused at B.
        let created = http
            .post(format!("{}/api/v1/users", a.url))
            .bearer_auth(&fresh)
            .json(&serde_json::json!({"username": "alice", "password": "alice-password-1", "level": "org_member"}))
            .send()
            .await
            .unwrap();
        assert!(created.status().is_success(), "{}", created.text().await.unwrap());
        let alices: serde_json::Value = http
            .post(format!("{}/api/v1/auth/login", b.url))
            .json(&serde_json::json!({"username": "alice", "password": "alice-password-1"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let alices = alices["access_token"].as_str().unwrap().to_owned();
        assert_eq!(whoami(&b.url, &alices).await, 200);
        // Tokens are dated in whole seconds: a change in the same second as
        // the sign-in would revoke it anyway.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let changed = http
            .patch(format!("{}/api/v1/users/alice", a.url))
            .bearer_auth(&fresh)
            .json(&serde_json::json!({"level": "github_member"}))
            .send()
            .await
            .unwrap();
        assert!(changed.status().is_success(), "{}", changed.text().await.unwrap());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while whoami(&b.url, &alices).await != 401 {
            assert!(std::time::Instant::now() < deadline, "B still accepts the changed account's token");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
}

/// An organisation's budget holds with two servers taking capacity
/// requests at once: ten members each ask for a node, five at each server,
/// all at the same moment, and the balance pays for three. Exactly three
/// are granted (the affordability check and the write are one transaction
/// in the shared database), the others are refused as insufficient funds,
/// and both servers answer the same size.
#[test]
fn two_servers_racing_capacity_requests_never_overspend() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let url = database(&pg);
    let env = [("FLOTILLA_DATABASE_URL", url.as_str())];
    let shared = Sandbox::new();
    // $1 a node-hour; a request must pay for an hour; nothing held back.
    let config = shared_config(&shared.path().join("instances")).replace(
        "instance_type = \"local.small\"\n",
        "instance_type = \"local.small\"\nprice_per_hour = \"1.00\"\n\n[orgs]\nshutdown_threshold = \"0\"\nmin_runway = \"1h\"\n",
    );
    let (first, second) = (Sandbox::new(), Sandbox::new());
    let a = Server::start_with_env(&first.path(), &config, &env);
    let b = Server::start_with_env(&second.path(), &config, &env);
    let users: Vec<String> = (0..10).map(|i| format!("member{i}")).collect();
    const PASSWORD: &str = "member-password-1234";

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let login = |server: &str, user: &str, password: &str| {
            let req = http
                .post(format!("{server}/api/v1/auth/login"))
                .json(&serde_json::json!({"username": user, "password": password}));
            async move {
                let reply: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
                reply["access_token"].as_str().expect("a token").to_owned()
            }
        };
        let admin = login(&a.url, "admin", support::ADMIN_PASSWORD).await;
        let send = |req: reqwest::RequestBuilder, token: &str| {
            let req = req.bearer_auth(token);
            async move {
                let reply = req.send().await.unwrap();
                let status = reply.status().as_u16();
                (
                    status,
                    reply.json::<serde_json::Value>().await.unwrap_or_default(),
                )
            }
        };
        for user in &users {
            let (status, body) = send(
                http.post(format!("{}/api/v1/users", a.url))
                    .json(&serde_json::json!({
                        "username": user, "password": PASSWORD, "level": "org_member"
                    })),
                &admin,
            )
            .await;
            assert_eq!(status, 201, "{body}");
        }
        let (status, body) = send(
            http.post(format!("{}/api/v1/orgs", b.url))
                .json(&serde_json::json!({"name": "team", "owners": users})),
            &admin,
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = send(
            http.post(format!("{}/api/v1/orgs/team/credits", a.url))
                .json(&serde_json::json!({"amount": "3.00", "reason": "three node-hours"})),
            &admin,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["budget"]["balance"], "3.00", "{body}");

        let mut tokens = Vec::new();
        for (i, user) in users.iter().enumerate() {
            let server = if i % 2 == 0 { &a.url } else { &b.url };
            tokens.push((server.clone(), login(server, user, PASSWORD).await));
        }
        let requests = tokens.iter().map(|(server, token)| {
            send(
                http.post(format!("{server}/api/v1/clusters/team/capacity"))
                    .json(&serde_json::json!({"nodes": 1, "time_to_live": 3600})),
                token,
            )
        });
        let answers = futures::future::join_all(requests).await;
        let granted = answers.iter().filter(|(s, _)| *s == 200).count();
        let refused: Vec<&serde_json::Value> = answers
            .iter()
            .filter(|(s, _)| *s != 200)
            .map(|(_, body)| body)
            .collect();
        assert_eq!(granted, 3, "answers: {answers:?}");
        assert!(
            refused.iter().all(|b| b["error"] == "insufficient_funds"),
            "refusals: {refused:?}"
        );
        for server in [&a.url, &b.url] {
            // The server that did not take a request reads it from the
            // change feed: within moments, not at once.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let body = loop {
                let (status, body) =
                    send(http.get(format!("{server}/api/v1/clusters/team")), &admin).await;
                assert_eq!(status, 200, "{body}");
                if body["node_capacity"] == 3 || std::time::Instant::now() > deadline {
                    break body;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            };
            assert_eq!(body["node_capacity"], 3, "{server}: {body}");
            assert_eq!(
                body["org"]["requests"].as_array().map(Vec::len),
                Some(3),
                "{body}"
            );
        }

        // The owner stops it; its nodes go.
        let (status, body) = send(
            http.delete(format!("{}/api/v1/clusters/team?wait=true", b.url)),
            &tokens[0].1,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    });
    wait_for("the nodes gone", || {
        node_processes(&shared.path()).is_empty()
    });
}
