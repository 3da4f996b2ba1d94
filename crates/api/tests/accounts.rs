//! Account management over HTTP (admins): create, list, get, change level
//! and grants, delete; the last admin; the first admin's bootstrap.

mod common;

use axum::http::{Method, StatusCode};
use common::{empty_request, json_request, Reply, TestApi, ADMIN_PASSWORD, USER_PASSWORD};
use flotilla_identity::MIN_PASSWORD_CHARS;
use serde_json::{json, Value};

async fn create(api: &TestApi, body: Value) -> Reply {
    api.send(json_request(Method::POST, "/api/v1/users", &body))
        .await
}

async fn patch(api: &TestApi, username: &str, body: Value) -> Reply {
    api.send(json_request(
        Method::PATCH,
        &format!("/api/v1/users/{username}"),
        &body,
    ))
    .await
}

async fn usernames(api: &TestApi) -> Vec<String> {
    let reply = api.get("/api/v1/users").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect()
}

/// Every object key anywhere in `value` that mentions a secret.
fn secret_keys(value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let lower = k.to_lowercase();
                if lower.contains("password") || lower.contains("hash") || lower.contains("secret")
                {
                    found.push(k.clone());
                }
                found.extend(secret_keys(v));
            }
        }
        Value::Array(items) => items.iter().for_each(|v| found.extend(secret_keys(v))),
        _ => {}
    }
    found
}

#[track_caller]
fn assert_no_secrets(reply: &Reply) {
    assert_eq!(
        secret_keys(&reply.json()),
        Vec::<String>::new(),
        "{}",
        reply.text()
    );
    let text = reply.text();
    for secret in ["$argon2", USER_PASSWORD, ADMIN_PASSWORD] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[tokio::test(start_paused = true)]
async fn create_user_answers_201_with_the_account() {
    let api = TestApi::start().await;
    let reply = create(
        &api,
        json!({
            "username": "dora",
            "password": USER_PASSWORD,
            "level": "org_member",
            "grants": ["shared", "demo"],
        }),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_no_secrets(&reply);
    let user = reply.json();
    assert_eq!(user["username"], "dora");
    assert_eq!(user["kind"], "local");
    assert_eq!(user["level"], "org_member");
    assert_eq!(user["grants"], json!(["demo", "shared"]));
    assert_eq!(user["clusters"], json!(["demo", "dora", "shared"]));
    let created_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(user["created_at"].clone()).unwrap();
    assert!((api.engine.now() - created_at).num_seconds().abs() <= 1);

    let login = api.login("dora", USER_PASSWORD).await;
    assert_eq!(login["level"], "org_member");
    assert_eq!(login["clusters"], json!(["demo", "dora", "shared"]));
    // Grants default to none.
    let reply = create(
        &api,
        json!({"username": "erin", "password": USER_PASSWORD, "level": "github_member"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.json()["grants"], json!([]));
    assert_eq!(usernames(&api).await, ["admin", "dora", "erin"]);
}

/// Every way a creation can be wrong, with its status and code; none of
/// them creates anything.
#[tokio::test(start_paused = true)]
async fn create_user_refusals() {
    let api = TestApi::start().await;
    api.create_user("dora", "org_member").await;
    let ok = |username: &str| json!({"username": username, "password": USER_PASSWORD, "level": "org_member"});
    let with = |key: &str, value: Value| {
        let mut body = ok("fresh");
        body[key] = value;
        body
    };
    let short = "x".repeat(MIN_PASSWORD_CHARS - 1);
    let long = "x".repeat(1025);
    let mut unknown = ok("fresh");
    unknown["is_admin"] = json!(true);
    let mut missing = ok("fresh");
    missing.as_object_mut().unwrap().remove("password");
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        ("duplicate", ok("dora"), StatusCode::CONFLICT, "user_exists"),
        (
            "the admin's name",
            ok("admin"),
            StatusCode::CONFLICT,
            "user_exists",
        ),
        (
            "underscore",
            ok("bad_name"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_username",
        ),
        (
            "leading dash",
            ok("-dora"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_username",
        ),
        (
            "empty name",
            ok(""),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_username",
        ),
        (
            "41 characters",
            ok(&"a".repeat(41)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_username",
        ),
        (
            "a space",
            ok("do ra"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_username",
        ),
        (
            "short password",
            with("password", json!(short)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_password",
        ),
        (
            "long password",
            with("password", json!(long)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_password",
        ),
        (
            "level anonymous",
            with("level", json!("anonymous")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_level",
        ),
        (
            "bad grant",
            with("grants", json!(["no_such name"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_cluster_name",
        ),
        (
            "level root",
            with("level", json!("root")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "unknown field",
            unknown,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "missing password",
            missing,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "grants not a list",
            with("grants", json!("shared")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (what, body, status, code) in cases {
        let reply = create(&api, body).await;
        assert_eq!(
            (reply.status, reply.code().as_deref()),
            (status, Some(code)),
            "{what}: {}",
            reply.text()
        );
        reply.expect_error(status, code);
        assert_no_secrets(&reply);
    }
    assert_eq!(usernames(&api).await, ["admin", "dora"]);
    // The duplicate did not change the existing account.
    let dora = api.get("/api/v1/users/dora").await.json();
    assert_eq!(dora["level"], "org_member");
    api.login("dora", USER_PASSWORD).await;
}

/// LIST and GET show accounts, never a password or its hash.
#[tokio::test(start_paused = true)]
async fn list_and_get_never_show_a_password() {
    let api = TestApi::start().await;
    api.create_user_with_grants("dora", "org_member", &["shared"])
        .await;
    api.create_user("erin", "github_member").await;
    let reply = api.get("/api/v1/users").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_no_secrets(&reply);
    let users = reply.json()["users"].as_array().unwrap().clone();
    assert_eq!(users.len(), 3);
    for user in &users {
        let mut fields: Vec<&str> = user
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "clusters",
                "created_at",
                "grants",
                "kind",
                "level",
                "username"
            ],
            "{user}"
        );
    }
    let admin = users.iter().find(|u| u["username"] == "admin").unwrap();
    assert_eq!(admin["level"], "admin");
    assert_eq!(admin["kind"], "local");

    let reply = api.get("/api/v1/users/dora").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_no_secrets(&reply);
    let dora = reply.json();
    assert_eq!(dora["grants"], json!(["shared"]));
    assert_eq!(dora["clusters"], json!(["dora", "shared"]));
    assert_eq!(users.iter().find(|u| u["username"] == "dora"), Some(&dora));

    api.get("/api/v1/users/nobody")
        .await
        .expect_error(StatusCode::NOT_FOUND, "user_not_found");
    api.get("/api/v1/users/bad_name")
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_username");
}

/// PATCH changes the level, the grants, or both; absent fields stay.
#[tokio::test(start_paused = true)]
async fn set_level_and_grants() {
    let api = TestApi::start().await;
    api.create_user_with_grants("dora", "github_member", &["old"])
        .await;

    let reply = patch(&api, "dora", json!({"level": "org_member"})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_no_secrets(&reply);
    let user = reply.json();
    assert_eq!(user["level"], "org_member");
    assert_eq!(user["grants"], json!(["old"]), "grants left alone");

    let reply = patch(&api, "dora", json!({"grants": ["b", "a"]})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let user = reply.json();
    assert_eq!(user["level"], "org_member", "level left alone");
    assert_eq!(user["grants"], json!(["a", "b"]), "grants replaced");

    let reply = patch(&api, "dora", json!({"level": "admin", "grants": []})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let user = reply.json();
    assert_eq!(user["level"], "admin");
    assert_eq!(user["grants"], json!([]));
    assert_eq!(api.get("/api/v1/users/dora").await.json(), user);
    // The new admin can act as one.
    let token = api.login("dora", USER_PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = api
        .send_as(&token, empty_request(Method::GET, "/api/v1/users"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    patch(&api, "dora", json!({"level": "anonymous"}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_level");
    patch(&api, "dora", json!({"grants": ["Not Valid"]}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_cluster_name");
    patch(&api, "dora", json!({"password": "new-password-123"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    patch(&api, "nobody", json!({"level": "org_member"}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "user_not_found");
    let after = api.get("/api/v1/users/dora").await.json();
    assert_eq!(after, user, "the refused changes changed nothing");
}

#[tokio::test(start_paused = true)]
async fn delete_user() {
    let api = TestApi::start().await;
    api.create_user("dora", "org_member").await;
    let reply = api.delete("/api/v1/users/dora").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    assert!(reply.body.is_empty());
    api.get("/api/v1/users/dora")
        .await
        .expect_error(StatusCode::NOT_FOUND, "user_not_found");
    api.delete("/api/v1/users/dora")
        .await
        .expect_error(StatusCode::NOT_FOUND, "user_not_found");
    assert_eq!(usernames(&api).await, ["admin"]);
    api.try_login("dora", USER_PASSWORD)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    // The name is free again.
    api.create_user("dora", "github_member").await;
    assert_eq!(
        api.login("dora", USER_PASSWORD).await["level"],
        "github_member"
    );
}

/// There is always an admin: the last one can be neither deleted nor
/// demoted, by itself or anyone.
#[tokio::test(start_paused = true)]
async fn the_last_admin_stays() {
    let mut api = TestApi::start().await;
    api.delete("/api/v1/users/admin")
        .await
        .expect_error(StatusCode::CONFLICT, "last_admin");
    for level in ["org_member", "github_member"] {
        patch(&api, "admin", json!({"level": level}))
            .await
            .expect_error(StatusCode::CONFLICT, "last_admin");
    }
    // Refused changes revoke nothing.
    let reply = api.get("/api/v1/users/admin").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["level"], "admin");
    // Grants of the last admin may change; it stays admin.
    let reply = patch(&api, "admin", json!({"grants": ["ops"], "level": "admin"})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["level"], "admin");
    // That change revoked the admin's token; sign in again.
    api.send(empty_request(Method::GET, "/api/v1/users"))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "token_revoked");
    api.admin_token = api.admin_login().await;
    let admin = api.admin_token.clone();

    // With a second admin, the first may go.
    api.create_user("root", "admin").await;
    let root = api.login("root", USER_PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = api
        .send_as(
            &root,
            json_request(
                Method::PATCH,
                "/api/v1/users/admin",
                &json!({"level": "org_member"}),
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["level"], "org_member");
    api.send_as(&admin, empty_request(Method::GET, "/api/v1/users"))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "token_revoked");
    // Now root is the last.
    for req in [
        empty_request(Method::DELETE, "/api/v1/users/root"),
        json_request(
            Method::PATCH,
            "/api/v1/users/root",
            &json!({"level": "github_member"}),
        ),
    ] {
        api.send_as(&root, req)
            .await
            .expect_error(StatusCode::CONFLICT, "last_admin");
    }
    let reply = api
        .send_as(&root, empty_request(Method::DELETE, "/api/v1/users/admin"))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    let reply = api
        .send_as(&root, empty_request(Method::GET, "/api/v1/users"))
        .await;
    let users = reply.json();
    assert_eq!(users["users"].as_array().unwrap().len(), 1, "{users}");
    assert_eq!(users["users"][0]["username"], "root");
}

/// The first admin is created once: with an admin present, bootstrapping
/// again does nothing, and the password stays.
#[tokio::test(start_paused = true)]
async fn the_first_admin_is_bootstrapped_once() {
    let api = TestApi::start().await;
    let now = api.engine.now();
    let again = api
        .identity
        .bootstrap_admin("another-admin-password", now)
        .await
        .unwrap();
    assert!(!again, "the harness already made the first admin");
    api.try_login("admin", "another-admin-password")
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    api.login("admin", ADMIN_PASSWORD).await;

    // Not even when the admin account is gone but another admin exists.
    api.create_user("root", "admin").await;
    let reply = api.delete("/api/v1/users/admin").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    let again = api
        .identity
        .bootstrap_admin("another-admin-password", now)
        .await
        .unwrap();
    assert!(!again, "an admin (root) exists");
    api.try_login("admin", "another-admin-password")
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    // A bootstrap password must follow the password rules.
    assert!(api.identity.bootstrap_admin("short", now).await.is_err());
}
