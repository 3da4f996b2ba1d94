//! Authorisation over HTTP: every level against every cluster operation on
//! every kind of cluster, the per-level limits, grants, and every route of
//! `ROUTES` walked without credentials and with a non-admin token.

mod common;

use std::fmt::Write as _;

use axum::http::{Method, StatusCode};
use common::{empty_request, json_request, Options, Reply, TestApi, USER_PASSWORD};
use flotilla_api::access::{Access, Rule, ROUTES};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    GithubMember,
    OrgMember,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Named after the caller's account.
    Own,
    /// Named after another account, deployed by that account.
    Other,
    /// Deployed by the admin with is_public true.
    Public,
    /// Deployed by the admin with is_public false, nobody's own.
    Private,
    /// Never deployed, nobody's own.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Status,
    Token,
    Deploy,
    Destroy,
}

const OK: (u16, &str) = (200, "");
const UNAUTH: (u16, &str) = (401, "not_authenticated");
const NOT_ALLOWED: (u16, &str) = (403, "cluster_not_allowed");
const PUBLIC_NEEDS_ADMIN: (u16, &str) = (403, "public_cluster_needs_admin");
const MAY_NOT_DEPLOY: (u16, &str) = (403, "level_may_not_deploy");

use Kind::*;
use Op::*;
use Who::*;

/// Every cell: who, on which kind of cluster, does what, and the exact
/// answer (status, error code; "" for success). Ordered so that the
/// successful DESTROYs of one row do not change what a later row sees: a
/// non-admin destroys only its own cluster, and the admin comes last.
/// DEPLOY sends `is_public` as the cluster was deployed (true for the public
/// one), so an admin's redeploy is not a conflict.
#[rustfmt::skip]
const MATRIX: &[(Who, Kind, Op, (u16, &str))] = &[
    // Anonymous: only the status of a public cluster.
    (Anonymous,    Other,   Status,  UNAUTH),
    (Anonymous,    Other,   Token,   UNAUTH),
    (Anonymous,    Other,   Deploy,  UNAUTH),
    (Anonymous,    Other,   Destroy, UNAUTH),
    (Anonymous,    Public,  Status,  OK),
    (Anonymous,    Public,  Token,   UNAUTH),
    (Anonymous,    Public,  Deploy,  UNAUTH),
    (Anonymous,    Public,  Destroy, UNAUTH),
    (Anonymous,    Private, Status,  UNAUTH),
    (Anonymous,    Private, Token,   UNAUTH),
    (Anonymous,    Private, Deploy,  UNAUTH),
    (Anonymous,    Private, Destroy, UNAUTH),
    (Anonymous,    Never,   Status,  UNAUTH),
    (Anonymous,    Never,   Token,   UNAUTH),
    (Anonymous,    Never,   Deploy,  UNAUTH),
    (Anonymous,    Never,   Destroy, UNAUTH),
    // GitHub member (max_nodes 0): reads and destroys its own, deploys nothing.
    (GithubMember, Own,     Status,  OK),
    (GithubMember, Own,     Token,   OK),
    (GithubMember, Own,     Deploy,  MAY_NOT_DEPLOY),
    (GithubMember, Own,     Destroy, OK),
    (GithubMember, Other,   Status,  NOT_ALLOWED),
    (GithubMember, Other,   Token,   NOT_ALLOWED),
    (GithubMember, Other,   Deploy,  NOT_ALLOWED),
    (GithubMember, Other,   Destroy, NOT_ALLOWED),
    (GithubMember, Public,  Status,  OK),
    (GithubMember, Public,  Token,   NOT_ALLOWED),
    (GithubMember, Public,  Deploy,  PUBLIC_NEEDS_ADMIN),
    (GithubMember, Public,  Destroy, NOT_ALLOWED),
    (GithubMember, Private, Status,  NOT_ALLOWED),
    (GithubMember, Private, Token,   NOT_ALLOWED),
    (GithubMember, Private, Deploy,  NOT_ALLOWED),
    (GithubMember, Private, Destroy, NOT_ALLOWED),
    (GithubMember, Never,   Status,  NOT_ALLOWED),
    (GithubMember, Never,   Token,   NOT_ALLOWED),
    (GithubMember, Never,   Deploy,  NOT_ALLOWED),
    (GithubMember, Never,   Destroy, NOT_ALLOWED),
    // Organisation member: everything on its own, nothing else but reading
    // public clusters.
    (OrgMember,    Own,     Status,  OK),
    (OrgMember,    Own,     Token,   OK),
    (OrgMember,    Own,     Deploy,  OK),
    (OrgMember,    Own,     Destroy, OK),
    (OrgMember,    Other,   Status,  NOT_ALLOWED),
    (OrgMember,    Other,   Token,   NOT_ALLOWED),
    (OrgMember,    Other,   Deploy,  NOT_ALLOWED),
    (OrgMember,    Other,   Destroy, NOT_ALLOWED),
    (OrgMember,    Public,  Status,  OK),
    (OrgMember,    Public,  Token,   NOT_ALLOWED),
    (OrgMember,    Public,  Deploy,  PUBLIC_NEEDS_ADMIN),
    (OrgMember,    Public,  Destroy, NOT_ALLOWED),
    (OrgMember,    Private, Status,  NOT_ALLOWED),
    (OrgMember,    Private, Token,   NOT_ALLOWED),
    (OrgMember,    Private, Deploy,  NOT_ALLOWED),
    (OrgMember,    Private, Destroy, NOT_ALLOWED),
    (OrgMember,    Never,   Status,  NOT_ALLOWED),
    (OrgMember,    Never,   Token,   NOT_ALLOWED),
    (OrgMember,    Never,   Deploy,  NOT_ALLOWED),
    (OrgMember,    Never,   Destroy, NOT_ALLOWED),
    // Admin: everything everywhere.
    (Admin,        Own,     Status,  OK),
    (Admin,        Own,     Token,   OK),
    (Admin,        Own,     Deploy,  OK),
    (Admin,        Own,     Destroy, OK),
    (Admin,        Other,   Status,  OK),
    (Admin,        Other,   Token,   OK),
    (Admin,        Other,   Deploy,  OK),
    (Admin,        Other,   Destroy, OK),
    (Admin,        Public,  Status,  OK),
    (Admin,        Public,  Token,   OK),
    (Admin,        Public,  Deploy,  OK),
    (Admin,        Public,  Destroy, OK),
    (Admin,        Private, Status,  OK),
    (Admin,        Private, Token,   OK),
    (Admin,        Private, Deploy,  OK),
    (Admin,        Private, Destroy, OK),
    (Admin,        Never,   Status,  OK),
    (Admin,        Never,   Token,   OK),
    (Admin,        Never,   Deploy,  OK),
    (Admin,        Never,   Destroy, OK),
];

/// The accounts and clusters of the matrix.
struct World {
    api: TestApi,
    github_member: String,
    org_member: String,
    bob: String,
}

impl World {
    /// Accounts `gh` (github_member), `org` and `bob` (org_member); clusters
    /// `pub` (public) and `priv` by the admin, `gh` and `org` by the admin
    /// for those accounts, `bob` by bob himself; `ghost` never deployed.
    async fn new() -> Self {
        let api = TestApi::start().await;
        let github_member = api.user_token("gh", "github_member").await;
        let org_member = api.user_token("org", "org_member").await;
        let bob = api.user_token("bob", "org_member").await;
        for (cluster, public) in [
            ("pub", true),
            ("priv", false),
            ("gh", false),
            ("org", false),
        ] {
            api.deploy(cluster, &deploy(public), false).await;
        }
        let reply = api
            .send_as(
                &bob,
                json_request(Method::PUT, "/api/v1/clusters/bob", &deploy(false)),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        Self {
            api,
            github_member,
            org_member,
            bob,
        }
    }

    fn token(&self, who: Who) -> Option<&str> {
        match who {
            Anonymous => None,
            GithubMember => Some(&self.github_member),
            OrgMember => Some(&self.org_member),
            Admin => Some(&self.api.admin_token),
        }
    }

    async fn send(&self, who: Who, req: axum::http::Request<axum::body::Body>) -> Reply {
        match self.token(who) {
            None => self.api.send_anonymous(req).await,
            Some(token) => self.api.send_as(token, req).await,
        }
    }

    /// The desired state of every cluster, as the admin lists it.
    async fn desired(&self) -> Vec<Value> {
        let list = self.api.get("/api/v1/clusters").await;
        assert_eq!(list.status, StatusCode::OK);
        list.json()["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                json!([
                    c["cluster"],
                    c["is_public"],
                    c["node_capacity"],
                    c["expires_at"]
                ])
            })
            .collect()
    }
}

fn deploy(public: bool) -> Value {
    json!({"node_capacity": 1, "time_to_live": 3600, "is_public": public})
}

fn cluster_of(who: Who, kind: Kind) -> &'static str {
    match (kind, who) {
        (Own, GithubMember) => "gh",
        (Own, OrgMember) => "org",
        (Own, Admin) => "admin",
        (Own, Anonymous) => unreachable!("anonymous callers own nothing"),
        (Other, _) => "bob",
        (Public, _) => "pub",
        (Private, _) => "priv",
        (Never, _) => "ghost",
    }
}

fn request(op: Op, kind: Kind, cluster: &str) -> axum::http::Request<axum::body::Body> {
    let uri = format!("/api/v1/clusters/{cluster}");
    match op {
        Status => empty_request(Method::GET, &uri),
        Token => empty_request(Method::POST, &format!("{uri}/token")),
        Deploy => json_request(Method::PUT, &uri, &deploy(kind == Public)),
        Destroy => empty_request(Method::DELETE, &uri),
    }
}

/// Checks what a successful cell answered.
fn check_success(op: Op, cluster: &str, reply: &Reply) -> Result<(), String> {
    let body = reply.json();
    let fine = match op {
        Status | Destroy => body["cluster"] == cluster,
        Deploy => body["cluster"] == cluster && body["node_capacity"] == 1,
        Token => {
            body["audience"] == cluster && body["token"].as_str().is_some_and(|t| !t.is_empty())
        }
    };
    if fine {
        Ok(())
    } else {
        Err(format!("unexpected body {body}"))
    }
}

/// The whole matrix in one table: every cell is checked, and every cell
/// that differs is reported together.
#[tokio::test(start_paused = true)]
async fn authorisation_matrix() {
    let world = World::new().await;
    let mut table = String::new();
    let mut wrong = 0;
    for &(who, kind, op, (status, code)) in MATRIX {
        let cluster = cluster_of(who, kind);
        let before = world.desired().await;
        let reply = world.send(who, request(op, kind, cluster)).await;
        let got_code = reply.code().unwrap_or_default();
        let mut verdict = if reply.status.as_u16() != status || got_code != code {
            Err(format!(
                "got {} {got_code:?}: {}",
                reply.status,
                reply.text()
            ))
        } else if status == 200 {
            check_success(op, cluster, &reply)
        } else {
            Ok(())
        };
        if verdict.is_ok() && status != 200 {
            let after = world.desired().await;
            if after != before {
                verdict = Err(format!(
                    "a refused request changed the clusters: {before:?} -> {after:?}"
                ));
            }
            if status == 401 && !reply.headers.contains_key("www-authenticate") {
                verdict = Err("a 401 without WWW-Authenticate".to_owned());
            }
        }
        let mark = match &verdict {
            Ok(()) => "ok".to_owned(),
            Err(e) => {
                wrong += 1;
                format!("WRONG: {e}")
            }
        };
        writeln!(
            table,
            "{who:<12?} {kind:<7?} {cluster:<6} {op:<7?} expect {status} {code:<27} {mark}"
        )
        .unwrap();
    }
    assert_eq!(wrong, 0, "{wrong} cells differ:\n{table}");
    assert_eq!(
        MATRIX.len(),
        4 * 4 + 3 * 5 * 4,
        "every cell is in the table"
    );
}

fn names(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"].as_str().unwrap().to_owned())
        .collect()
}

/// LIST shows each caller what STATUS would let it read: anonymous callers
/// the public clusters, accounts also their own, admins everything.
#[tokio::test(start_paused = true)]
async fn list_shows_what_each_level_may_read() {
    let world = World::new().await;
    let api = &world.api;
    let list = || empty_request(Method::GET, "/api/v1/clusters");
    assert_eq!(names(&api.send_anonymous(list()).await), ["pub"]);
    assert_eq!(
        names(&api.send_as(&world.github_member, list()).await),
        ["gh", "pub"]
    );
    assert_eq!(
        names(&api.send_as(&world.org_member, list()).await),
        ["org", "pub"]
    );
    assert_eq!(
        names(&api.send_as(&world.bob, list()).await),
        ["bob", "pub"]
    );
    assert_eq!(
        names(&api.send(list()).await),
        ["bob", "gh", "org", "priv", "pub"]
    );
}

// ---- per-level limits -----------------------------------------------------

const HOUR: i64 = 3600;

fn sized(nodes: i64, ttl: i64) -> Value {
    json!({"node_capacity": nodes, "time_to_live": ttl})
}

/// An org_member deploys at most 10 nodes for at most 12 hours; the admin
/// has no level limit; a github_member may not deploy at all, whatever the
/// size. The engine's global limit is raised to 50 so the level's is the
/// one reached.
#[tokio::test(start_paused = true)]
async fn per_level_limits() {
    let api = TestApi::start_with(Options {
        max_nodes: Some(50),
        ..Options::default()
    })
    .await;
    let org = api.user_token("org", "org_member").await;
    let gh = api.user_token("gh", "github_member").await;
    let put = |cluster: &str, body: Value| {
        json_request(Method::PUT, &format!("/api/v1/clusters/{cluster}"), &body)
    };

    let reply = api.send_as(&org, put("org", sized(10, 12 * HOUR))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let accepted = reply.json();
    assert_eq!(accepted["node_capacity"], 10);

    let message = api
        .send_as(&org, put("org", sized(11, HOUR)))
        .await
        .expect_error(StatusCode::FORBIDDEN, "node_limit_exceeded");
    assert!(
        message.contains("10") && message.contains("11"),
        "{message}"
    );
    let message = api
        .send_as(&org, put("org", sized(1, 13 * HOUR)))
        .await
        .expect_error(StatusCode::FORBIDDEN, "ttl_limit_exceeded");
    assert!(message.contains("at most 12h, asked for 13h"), "{message}");
    // The nodes are checked before the time-to-live.
    api.send_as(&org, put("org", sized(11, 13 * HOUR)))
        .await
        .expect_error(StatusCode::FORBIDDEN, "node_limit_exceeded");
    let after = api.status("org").await;
    assert_eq!(after["node_capacity"], 10, "{after}");
    assert_eq!(after["expires_at"], accepted["expires_at"], "{after}");

    for body in [sized(1, HOUR), sized(11, 13 * HOUR)] {
        api.send_as(&gh, put("gh", body))
            .await
            .expect_error(StatusCode::FORBIDDEN, "level_may_not_deploy");
    }

    let reply = api.send(put("big", sized(50, 7 * 24 * HOUR))).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "admins have no level limit: {}",
        reply.text()
    );
}

/// With the harness's global limit of 10 nodes, 11 nodes break the
/// engine's limit first: 422, whoever asks.
#[tokio::test(start_paused = true)]
async fn the_global_limit_is_checked_before_the_level() {
    let api = TestApi::start().await;
    let org = api.user_token("org", "org_member").await;
    api.send_as(
        &org,
        json_request(Method::PUT, "/api/v1/clusters/org", &sized(11, HOUR)),
    )
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_node_capacity");
}

// ---- grants ----------------------------------------------------------------

/// A grant extends the clusters an account may act on, from its next
/// sign-in; the token from before the change is revoked.
#[tokio::test(start_paused = true)]
async fn grants_extend_the_allowed_clusters_after_a_new_login() {
    let api = TestApi::start().await;
    let before = api.user_token("carol", "org_member").await;
    api.deploy("shared", &common::deploy_body(1), false).await;
    let status = || empty_request(Method::GET, "/api/v1/clusters/shared");
    api.send_as(&before, status())
        .await
        .expect_error(StatusCode::FORBIDDEN, "cluster_not_allowed");

    let reply = api
        .send(json_request(
            Method::PATCH,
            "/api/v1/users/carol",
            &json!({"grants": ["shared"]}),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let user = reply.json();
    assert_eq!(user["grants"], json!(["shared"]));
    assert_eq!(user["clusters"], json!(["carol", "shared"]));
    assert_eq!(user["level"], "org_member", "the level is left alone");

    api.send_as(&before, status())
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "token_revoked");

    let login = api.login("carol", USER_PASSWORD).await;
    assert_eq!(login["clusters"], json!(["carol", "shared"]));
    let after = login["access_token"].as_str().unwrap();
    let whoami = api
        .send_as(after, empty_request(Method::GET, "/api/v1/auth/whoami"))
        .await
        .json();
    assert_eq!(whoami["clusters"], json!(["carol", "shared"]));
    assert_eq!(api.send_as(after, status()).await.status, StatusCode::OK);
    let token = api
        .send_as(
            after,
            empty_request(Method::POST, "/api/v1/clusters/shared/token"),
        )
        .await;
    assert_eq!(token.status, StatusCode::OK, "{}", token.text());
    let reply = api
        .send_as(
            after,
            json_request(
                Method::PUT,
                "/api/v1/clusters/shared",
                &common::deploy_body(3),
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["node_capacity"], 3);
    // Others stay out of reach.
    api.send_as(
        after,
        empty_request(Method::DELETE, "/api/v1/clusters/elsewhere"),
    )
    .await
    .expect_error(StatusCode::FORBIDDEN, "cluster_not_allowed");

    // Taking the grant back takes effect the same way.
    let reply = api
        .send(json_request(
            Method::PATCH,
            "/api/v1/users/carol",
            &json!({"grants": []}),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    api.send_as(after, status())
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "token_revoked");
    let again = api.login("carol", USER_PASSWORD).await;
    assert_eq!(again["clusters"], json!(["carol"]));
    api.send_as(again["access_token"].as_str().unwrap(), status())
        .await
        .expect_error(StatusCode::FORBIDDEN, "cluster_not_allowed");
}

/// A grant must name a valid cluster.
#[tokio::test(start_paused = true)]
async fn grants_must_be_cluster_names() {
    let api = TestApi::start().await;
    api.create_user("carol", "org_member").await;
    api.send(json_request(
        Method::PATCH,
        "/api/v1/users/carol",
        &json!({"grants": ["not_a_cluster"]}),
    ))
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_cluster_name");
    let user = api.get("/api/v1/users/carol").await.json();
    assert_eq!(user["grants"], json!([]));
}

// ---- every route -------------------------------------------------------------

/// The concrete URIs to try for a route template.
fn uris(template: &str, kid: &str) -> Vec<String> {
    let clusters: &[&str] = if template.contains("{cluster}") {
        &["pub", "priv", "ghost"]
    } else {
        &[""]
    };
    clusters
        .iter()
        .map(|c| {
            template
                .replace("{cluster}", c)
                .replace("{username}", "org")
                .replace("{user}", "org")
                .replace("{org}", "lab")
                .replace("{kid}", kid)
                .replace("{pool}", "default")
                .replace("{driver}", "fake")
                .replace("{kind}", "images")
                .replace("{name}", "base")
                .replace("{id}", "1")
                .replace("{job}", "1")
                .replace("{attempt}", "1")
                .replace("{template}", "test")
                .replace("{schedule}", "nightly")
        })
        .collect()
}

/// A request with a body of the right shape where the route takes one,
/// so the answer is about the credentials, not the body.
fn route_request(method: &str, template: &str, uri: &str) -> axum::http::Request<axum::body::Body> {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let body = match (method.as_str(), template) {
        ("PUT", "/api/v1/clusters/{cluster}") => Some(deploy(uri.ends_with("/pub"))),
        ("POST", "/api/v1/users") => Some(json!({
            "username": "eve", "password": USER_PASSWORD, "level": "admin",
        })),
        ("PATCH", "/api/v1/users/{username}") => Some(json!({"level": "admin"})),
        ("POST", "/api/v1/orgs") => Some(json!({"name": "lab", "owners": ["org"]})),
        ("POST", "/api/v1/orgs/{org}/credits") => Some(json!({"amount": "5", "reason": "r"})),
        ("PUT", "/api/v1/shared-configs/{name}") => {
            Some(json!({"schema": "fake/images", "value": "img"}))
        }
        ("PUT", "/api/v1/pools/{pool}") => {
            Some(json!({"driver": "fake", "instance_type": "fake.small"}))
        }
        ("POST", "/api/v1/job-templates/{template}") => {
            Some(json!({"cluster": "pub", "version": "main"}))
        }
        ("POST", "/api/v1/jobs") => Some(json!({"name": "j", "script": "true"})),
        ("POST", "/api/v1/schedules") => Some(json!({
            "name": "nightly", "cron": "0 3 * * *", "template": "test",
            "cluster": "pub", "version": "main",
        })),
        _ => None,
    };
    match body {
        Some(body) => json_request(method, uri, &body),
        None => empty_request(method, uri),
    }
}

/// Without a token: open routes answer, sign-in routes ask for their body
/// rather than a token, and every rule route answers 401, except who-am-I,
/// the pools, LIST, the STATUS of a public cluster, and the events of public
/// clusters.
#[tokio::test(start_paused = true)]
async fn every_route_without_credentials() {
    let world = World::new().await;
    let api = &world.api;
    let kid = api.identity.tokens().active_kid();
    let kids_before = api.identity.tokens().kids();
    let mut walked = 0;
    for &(method, template, access) in ROUTES {
        walked += 1;
        for uri in uris(template, &kid) {
            // A fresh anonymous budget for each route, so only access shows.
            api.rate_clock.advance(std::time::Duration::from_secs(60));
            let reply = api
                .send_anonymous(route_request(method, template, &uri))
                .await;
            let what = format!(
                "{method} {uri} ({access:?}): {} {}",
                reply.status,
                reply.text()
            );
            match access {
                Access::Open => assert!(reply.status.is_success(), "{what}"),
                Access::SignIn => {
                    assert_ne!(reply.status, StatusCode::UNAUTHORIZED, "{what}");
                    reply
                        .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
                }
                // An agent's routes take the attempt's token, not an
                // account's: without it, 401.
                Access::Attempt => {
                    reply.expect_error(StatusCode::UNAUTHORIZED, "attempt_token_invalid");
                }
                Access::Rule(Rule::Anyone) if template == "/api/v1/pools" => {
                    assert_eq!(reply.status, StatusCode::OK, "{what}");
                    assert_eq!(reply.json()["pools"][0]["name"], "big", "{what}");
                }
                // The schemas are published to everyone.
                Access::Rule(Rule::Anyone) if template.starts_with("/api/v1/schemas") => {
                    assert_eq!(reply.status, StatusCode::OK, "{what}");
                }
                Access::Rule(Rule::Anyone) => {
                    assert_eq!(reply.status, StatusCode::OK, "{what}");
                    assert_eq!(reply.json(), json!({"level": "anonymous", "clusters": []}));
                }
                Access::Rule(Rule::AuthorizeStatus) if template == "/api/v1/clusters" => {
                    assert_eq!(names(&reply), ["pub"], "{what}");
                }
                Access::Rule(Rule::MayReadChange) => {
                    // Only the public cluster's changes.
                    assert_eq!(reply.status, StatusCode::OK, "{what}");
                    let events = reply.json()["events"].as_array().unwrap().clone();
                    assert!(!events.is_empty(), "{what}");
                    assert!(events.iter().all(|e| e["key"] == "pub"), "{what}");
                }
                // A public cluster's status and its nodes' output.
                Access::Rule(Rule::AuthorizeStatus)
                    if uri.ends_with("/pub") || uri.ends_with("/pub/logs") =>
                {
                    assert_eq!(reply.status, StatusCode::OK, "{what}");
                    assert_eq!(reply.json()["cluster"], "pub");
                }
                Access::Rule(_) | Access::SignedIn(_) => {
                    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}");
                    reply.expect_error(StatusCode::UNAUTHORIZED, "not_authenticated");
                }
            }
            if let Access::SignedIn(_) = access {
                // Refused before the body is read: a malformed one gets 401 too.
                let mut req = empty_request(Method::from_bytes(method.as_bytes()).unwrap(), &uri);
                req.headers_mut().insert(
                    axum::http::header::CONTENT_TYPE,
                    "application/json".parse().unwrap(),
                );
                *req.body_mut() = axum::body::Body::from("{not json");
                api.send_anonymous(req)
                    .await
                    .expect_error(StatusCode::UNAUTHORIZED, "not_authenticated");
            }
        }
    }
    assert_eq!(walked, ROUTES.len());
    assert_eq!(
        api.identity.tokens().kids(),
        kids_before,
        "no key rotated or retired"
    );
    let users = api.get("/api/v1/users").await.json();
    assert_eq!(
        users["users"].as_array().unwrap().len(),
        4,
        "no account made: {users}"
    );
}

/// A non-admin token on every admin route: 403 admin_only, and nothing
/// changes.
#[tokio::test(start_paused = true)]
async fn every_admin_route_refuses_an_org_member() {
    let world = World::new().await;
    let api = &world.api;
    let kid = api.identity.tokens().active_kid();
    let kids_before = api.identity.tokens().kids();
    let admin_routes: Vec<_> = ROUTES
        .iter()
        .filter(|(_, _, access)| *access == Access::SignedIn(Rule::AuthorizeAdmin))
        .collect();
    assert_eq!(admin_routes.len(), 19, "{admin_routes:?}");
    for &&(method, template, _) in &admin_routes {
        for uri in uris(template, &kid) {
            let reply = api
                .send_as(&world.org_member, route_request(method, template, &uri))
                .await;
            assert_eq!(
                reply.code().as_deref(),
                Some("admin_only"),
                "{method} {uri}: {}",
                reply.text()
            );
            reply.expect_error(StatusCode::FORBIDDEN, "admin_only");
        }
    }
    assert_eq!(api.identity.tokens().kids(), kids_before);
    api.get("/api/v1/users/eve")
        .await
        .expect_error(StatusCode::NOT_FOUND, "user_not_found");
    let org = api.get("/api/v1/users/org").await.json();
    assert_eq!(org["level"], "org_member", "{org}");
    // The token still works: nothing was revoked.
    let whoami = api
        .send_as(
            &world.org_member,
            empty_request(Method::GET, "/api/v1/auth/whoami"),
        )
        .await;
    assert_eq!(whoami.status, StatusCode::OK, "{}", whoami.text());
    assert_eq!(whoami.json()["level"], "org_member");
}
