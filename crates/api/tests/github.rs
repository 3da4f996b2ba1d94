//! LOGIN with a GitHub token through the API, against a local fake of the
//! GitHub REST API (`common::fake_github`). These run in real time: the
//! GitHub client talks over a socket.

mod common;

use axum::http::{Method, StatusCode};
use common::fake_github::FakeGithub;
use common::{empty_request, from_addr, json_request, Options, Reply, TestApi, USER_PASSWORD};
use serde_json::{json, Value};

async fn start() -> (TestApi, FakeGithub) {
    let github = FakeGithub::start().await;
    let api = TestApi::start_with(Options {
        github: Some(github.client()),
        ..Options::default()
    })
    .await;
    (api, github)
}

fn github_request(token: &str) -> axum::http::Request<axum::body::Body> {
    json_request(
        Method::POST,
        "/api/v1/auth/github",
        &json!({"token": token}),
    )
}

async fn github_login(api: &TestApi, token: &str) -> Reply {
    api.send_anonymous(github_request(token)).await
}

/// Every account, as the admin lists it.
async fn accounts(api: &TestApi) -> Value {
    let reply = api.get("/api/v1/users").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

/// Active members of the organisation are org_member; anyone else GitHub
/// knows (not a member, or an invitation pending) is github_member.
#[tokio::test]
async fn github_login_sets_the_level_from_the_membership() {
    let (api, github) = start().await;
    for (token, username, level) in [
        ("ghp_active_alice", "alice", "org_member"),
        ("ghp_outsider_bob", "bob", "github_member"),
        ("ghp_pending_carol", "carol", "github_member"),
    ] {
        let reply = github_login(&api, token).await;
        assert_eq!(reply.status, StatusCode::OK, "{token}: {}", reply.text());
        let login = reply.json();
        assert_eq!(login["username"], username, "{login}");
        assert_eq!(login["level"], level, "{login}");
        assert_eq!(login["clusters"], json!([username]));
        assert_eq!(login["token_type"], "Bearer");
        assert!(login["refresh_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty()));

        let token = login["access_token"].as_str().unwrap();
        let me = api
            .send_as(token, empty_request(Method::GET, "/api/v1/auth/whoami"))
            .await;
        assert_eq!(
            me.json(),
            json!({"username": username, "level": level, "clusters": [username]})
        );
        let account = api.get(&format!("/api/v1/users/{username}")).await.json();
        assert_eq!(account["kind"], "github", "{account}");
        assert_eq!(account["level"], level, "{account}");
    }
    assert_eq!(github.requests(), 6, "two calls per login");

    // The refresh token of a GitHub sign-in works like any other.
    let login = github_login(&api, "ghp_active_alice").await.json();
    let reply = api
        .send_anonymous(json_request(
            Method::POST,
            "/api/v1/auth/refresh",
            &json!({"refresh_token": login["refresh_token"]}),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["level"], "org_member");

    // GitHub's answer at each login sets the level: a member who left is
    // github_member from the next login on.
    let reply = github_login(&api, "ghp_outsider_alice").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["level"], "github_member");
    let reply = github_login(&api, "ghp_active_bob").await;
    assert_eq!(reply.json()["level"], "org_member");
}

/// A token GitHub refuses is 401, and no account is made.
#[tokio::test]
async fn a_token_github_refuses_is_401() {
    let (api, github) = start().await;
    let before = accounts(&api).await;
    // Each from its own network, so that none is blocked by the others'
    // failures.
    let from =
        |token: &str, network: u8| from_addr(github_request(token), &format!("10.{network}.0.1"));
    for (i, token) in ["ghp_revoked", "not-even-a-github-token"]
        .into_iter()
        .enumerate()
    {
        api.send_anonymous(from(token, i as u8))
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "invalid_github_token");
    }
    assert_eq!(github.requests(), 2);
    // A token that cannot be a header value is refused without asking.
    for (i, token) in ["", "has space", "new\nline"].into_iter().enumerate() {
        api.send_anonymous(from(token, 10 + i as u8))
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "invalid_github_token");
    }
    assert_eq!(github.requests(), 2);
    assert_eq!(accounts(&api).await, before);
}

/// Rate limits and faults on GitHub's side are 503, never a downgrade:
/// an existing member keeps their level, and no account is made for a new
/// one. They are not counted as failed logins.
#[tokio::test]
async fn github_trouble_is_503_and_never_a_downgrade() {
    let (api, _github) = start().await;
    let first = github_login(&api, "ghp_active_alice").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let alice_token = first.json()["access_token"].as_str().unwrap().to_owned();
    let before = accounts(&api).await;
    assert_eq!(before["users"].as_array().unwrap().len(), 2, "{before}");

    for token in [
        "ghp_m429_alice",
        "ghp_m502_alice",
        "ghp_m503_alice",
        "ghp_u429",
        "ghp_u500",
        "ghp_m429_dave",
        "ghp_m503_dave",
    ] {
        let reply = api
            .send_anonymous(from_addr(github_request(token), "10.0.0.1"))
            .await;
        let message = reply.expect_error(StatusCode::SERVICE_UNAVAILABLE, "github_unavailable");
        assert!(message.contains("GitHub"), "{token}: {message}");
    }
    assert_eq!(accounts(&api).await, before, "no account made or changed");
    api.get("/api/v1/users/dave")
        .await
        .expect_error(StatusCode::NOT_FOUND, "user_not_found");
    let alice = api.get("/api/v1/users/alice").await.json();
    assert_eq!(alice["level"], "org_member", "{alice}");
    // Alice's token was not revoked, and the network was not blocked.
    let me = api
        .send_as(
            &alice_token,
            empty_request(Method::GET, "/api/v1/auth/whoami"),
        )
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(me.json()["level"], "org_member");
    let reply = api
        .send_anonymous(from_addr(github_request("ghp_active_alice"), "10.0.0.1"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["level"], "org_member");
}

/// A GitHub login cannot take over a local account of the same name, nor
/// a local account the name of a GitHub one.
#[tokio::test]
async fn github_and_local_accounts_do_not_share_names() {
    let (api, _github) = start().await;
    api.create_user("localuser", "github_member").await;
    let before = accounts(&api).await;
    github_login(&api, "ghp_active_localuser")
        .await
        .expect_error(StatusCode::CONFLICT, "user_exists");
    github_login(&api, "ghp_active_admin")
        .await
        .expect_error(StatusCode::CONFLICT, "user_exists");
    assert_eq!(
        accounts(&api).await,
        before,
        "the local accounts are unchanged"
    );
    assert_eq!(
        api.login("localuser", USER_PASSWORD).await["level"],
        "github_member"
    );

    let reply = github_login(&api, "ghp_active_alice").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = api
        .send(json_request(
            Method::POST,
            "/api/v1/users",
            &json!({"username": "alice", "password": USER_PASSWORD, "level": "admin"}),
        ))
        .await;
    reply.expect_error(StatusCode::CONFLICT, "user_exists");
    let alice = api.get("/api/v1/users/alice").await.json();
    assert_eq!(
        (alice["kind"].as_str(), alice["level"].as_str()),
        (Some("github"), Some("org_member"))
    );
    // A GitHub account has no password to log in with.
    api.try_login("alice", USER_PASSWORD)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
}

/// A GitHub login that cannot be a flotilla name (a bot) is 422.
#[tokio::test]
async fn a_github_login_that_is_no_username_is_422() {
    let (api, _github) = start().await;
    let before = accounts(&api).await;
    github_login(&api, "ghp_active_renovate[bot]")
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "unsupported_github_login");
    assert_eq!(accounts(&api).await, before);
}

/// Tokens GitHub refuses count as failed logins of the network.
#[tokio::test]
async fn refused_github_tokens_count_as_failed_logins() {
    let (api, _github) = start().await;
    for _ in 0..common::LOGIN_FAILURES {
        api.send_anonymous(from_addr(github_request("ghp_bad"), "10.0.0.1"))
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "invalid_github_token");
    }
    let reply = api
        .send_anonymous(from_addr(github_request("ghp_active_alice"), "10.0.0.2"))
        .await;
    reply.expect_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(reply.retry_after(), Some(20));
    let reply = api
        .send_anonymous(from_addr(github_request("ghp_active_alice"), "10.0.1.1"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

/// Without a `[github]` section, GitHub sign-in is 404.
#[tokio::test(start_paused = true)]
async fn github_login_is_404_when_not_configured() {
    let api = TestApi::start().await;
    github_login(&api, "ghp_active_alice")
        .await
        .expect_error(StatusCode::NOT_FOUND, "github_login_disabled");
    api.get("/api/v1/users/alice")
        .await
        .expect_error(StatusCode::NOT_FOUND, "user_not_found");
}
