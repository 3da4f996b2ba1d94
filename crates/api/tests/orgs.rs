//! Organisations over HTTP, with real tokens: the membership flow under the
//! access rules, capacity requests, money, and bad input that changes
//! nothing.

mod common;

use axum::http::{header, Method, StatusCode};
use common::{empty_request, json_request, TestApi};
use serde_json::{json, Value};

async fn post(api: &TestApi, token: &str, uri: &str, body: &Value) -> common::Reply {
    api.send_as(token, json_request(Method::POST, uri, body))
        .await
}

async fn call(api: &TestApi, token: &str, method: Method, uri: &str) -> common::Reply {
    api.send_as(token, empty_request(method, uri)).await
}

/// Admin-made `lab` owned by ann; bob a member after asking; eve outside.
struct Lab {
    api: TestApi,
    admin: String,
    ann: String,
    bob: String,
    eve: String,
}

impl Lab {
    async fn new() -> Self {
        let api = TestApi::start().await;
        let admin = api.admin_token.clone();
        let ann = api.user_token("ann", "github_member").await;
        let bob = api.user_token("bob", "github_member").await;
        let eve = api.user_token("eve", "github_member").await;
        let created = post(
            &api,
            &admin,
            "/api/v1/orgs",
            &json!({"name": "lab", "owners": ["ann"]}),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
        let asked = post(
            &api,
            &bob,
            "/api/v1/orgs/lab/membership-requests",
            &json!({}),
        )
        .await;
        assert_eq!(asked.status, StatusCode::ACCEPTED, "{}", asked.text());
        let approved = call(
            &api,
            &ann,
            Method::POST,
            "/api/v1/orgs/lab/membership-requests/bob/approve",
        )
        .await;
        assert_eq!(
            approved.status,
            StatusCode::NO_CONTENT,
            "{}",
            approved.text()
        );
        Self {
            api,
            admin,
            ann,
            bob,
            eve,
        }
    }

    async fn credit(&self, amount: &str) -> common::Reply {
        post(
            &self.api,
            &self.admin,
            "/api/v1/orgs/lab/credits",
            &json!({"amount": amount, "reason": "grant"}),
        )
        .await
    }

    async fn ask(&self, token: &str, nodes: i64, ttl: i64) -> common::Reply {
        post(
            &self.api,
            token,
            "/api/v1/clusters/lab/capacity",
            &json!({"nodes": nodes, "time_to_live": ttl}),
        )
        .await
    }

    async fn org(&self) -> Value {
        let reply = call(&self.api, &self.ann, Method::GET, "/api/v1/orgs/lab").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()
    }
}

#[tokio::test(start_paused = true)]
async fn membership_admits_at_once_and_removal_revokes_at_once() {
    let lab = Lab::new().await;
    let api = &lab.api;
    lab.credit("100").await;

    // eve is outside: no status, no capacity, no details, no costs.
    call(api, &lab.eve, Method::GET, "/api/v1/clusters/lab")
        .await
        .expect_error(StatusCode::FORBIDDEN, "cluster_not_allowed");
    lab.ask(&lab.eve, 1, 600)
        .await
        .expect_error(StatusCode::FORBIDDEN, "not_org_member");
    call(api, &lab.eve, Method::GET, "/api/v1/orgs/lab")
        .await
        .expect_error(StatusCode::FORBIDDEN, "not_org_member");
    call(api, &lab.eve, Method::GET, "/api/v1/orgs/lab/costs")
        .await
        .expect_error(StatusCode::FORBIDDEN, "not_org_member");
    let listed = call(api, &lab.eve, Method::GET, "/api/v1/orgs")
        .await
        .json();
    assert_eq!(listed["orgs"], json!([]));

    // eve asks; only an owner decides; once approved her old token works.
    post(
        api,
        &lab.eve,
        "/api/v1/orgs/lab/membership-requests",
        &json!({}),
    )
    .await;
    let listed = call(api, &lab.eve, Method::GET, "/api/v1/orgs")
        .await
        .json();
    assert_eq!(listed["orgs"][0]["role"], "pending");
    call(
        api,
        &lab.bob,
        Method::POST,
        "/api/v1/orgs/lab/membership-requests/eve/approve",
    )
    .await
    .expect_error(StatusCode::FORBIDDEN, "not_org_owner");
    assert_eq!(lab.org().await["pending"][0]["username"], "eve");
    call(
        api,
        &lab.ann,
        Method::POST,
        "/api/v1/orgs/lab/membership-requests/eve/approve",
    )
    .await;
    let asked = lab.ask(&lab.eve, 2, 600).await;
    assert_eq!(asked.status, StatusCode::OK, "{}", asked.text());
    assert_eq!(asked.json()["status"]["node_capacity"], 2);
    let status = call(api, &lab.eve, Method::GET, "/api/v1/clusters/lab").await;
    assert_eq!(status.status, StatusCode::OK);
    assert_eq!(status.json()["org"]["requests"][0]["user"], "eve");
    let token = call(api, &lab.eve, Method::POST, "/api/v1/clusters/lab/token").await;
    assert_eq!(token.status, StatusCode::OK, "{}", token.text());

    // Removed: the same token is refused at once and her request is gone.
    let removed = call(
        api,
        &lab.ann,
        Method::DELETE,
        "/api/v1/orgs/lab/members/eve",
    )
    .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.text());
    call(api, &lab.eve, Method::GET, "/api/v1/clusters/lab")
        .await
        .expect_error(StatusCode::FORBIDDEN, "cluster_not_allowed");
    lab.ask(&lab.eve, 1, 600)
        .await
        .expect_error(StatusCode::FORBIDDEN, "not_org_member");
    let org = lab.org().await;
    assert_eq!(org["requests"], json!([]));
    assert_eq!(org["size"], 0);

    // The last owner stays; a member cannot remove another; bob may leave.
    call(
        api,
        &lab.admin,
        Method::DELETE,
        "/api/v1/orgs/lab/members/ann",
    )
    .await
    .expect_error(StatusCode::CONFLICT, "last_owner");
    call(
        api,
        &lab.bob,
        Method::DELETE,
        "/api/v1/orgs/lab/members/ann",
    )
    .await
    .expect_error(StatusCode::FORBIDDEN, "not_org_owner");
    let left = call(
        api,
        &lab.bob,
        Method::DELETE,
        "/api/v1/orgs/lab/members/bob",
    )
    .await;
    assert_eq!(left.status, StatusCode::NO_CONTENT);
    // An account named like the organisation has no claim on its cluster,
    // whatever its token lists.
    let lab_user = api.user_token("lab", "org_member").await;
    call(api, &lab_user, Method::GET, "/api/v1/clusters/lab")
        .await
        .expect_error(StatusCode::FORBIDDEN, "cluster_not_allowed");
    call(api, &lab_user, Method::POST, "/api/v1/clusters/lab/token")
        .await
        .expect_error(StatusCode::FORBIDDEN, "cluster_not_allowed");
    lab.ask(&lab_user, 1, 600)
        .await
        .expect_error(StatusCode::FORBIDDEN, "not_org_member");
    // Anonymous callers are asked to sign in.
    api.send_anonymous(empty_request(Method::GET, "/api/v1/orgs/lab"))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "not_authenticated");
}

#[tokio::test(start_paused = true)]
async fn money_refuses_what_cannot_be_paid_and_reports_costs() {
    let lab = Lab::new().await;
    let api = &lab.api;

    // No money: 402 saying what is missing; nothing recorded.
    let msg = lab
        .ask(&lab.bob, 2, 3600)
        .await
        .expect_error(StatusCode::PAYMENT_REQUIRED, "insufficient_funds");
    assert!(msg.contains("missing"), "{msg}");
    assert_eq!(lab.org().await["requests"], json!([]));

    // Credits are for admins; a zero, a bad amount or no reason is refused.
    post(
        api,
        &lab.ann,
        "/api/v1/orgs/lab/credits",
        &json!({"amount": "5", "reason": "gift"}),
    )
    .await
    .expect_error(StatusCode::FORBIDDEN, "admin_only");
    post(
        api,
        &lab.admin,
        "/api/v1/orgs/lab/credits",
        &json!({"amount": "1e3", "reason": "x"}),
    )
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_amount");
    post(
        api,
        &lab.admin,
        "/api/v1/orgs/lab/credits",
        &json!({"amount": "0", "reason": "x"}),
    )
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value");
    post(
        api,
        &lab.admin,
        "/api/v1/orgs/lab/credits",
        &json!({"amount": "5", "reason": " "}),
    )
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value");
    post(
        api,
        &lab.admin,
        "/api/v1/orgs/nope/credits",
        &json!({"amount": "5", "reason": "x"}),
    )
    .await
    .expect_error(StatusCode::NOT_FOUND, "unknown_org");
    assert_eq!(lab.org().await["budget"]["balance"], "0.00");

    let credited = lab.credit("10.00").await;
    assert_eq!(credited.json()["budget"]["balance"], "10.00");
    // 2 nodes at $0.10/h over the 8 h runway is $1.60: fine.
    let asked = lab.ask(&lab.bob, 2, 24 * 3600).await;
    assert_eq!(asked.status, StatusCode::OK, "{}", asked.text());
    // Over max_nodes: clamped, and the answer says so.
    let asked = lab.ask(&lab.ann, 50, 600).await.json();
    assert_eq!(asked["clamped"], true);
    assert!(asked["message"].as_str().unwrap().contains("max_nodes"));
    assert_eq!(asked["status"]["node_capacity"], 10);

    // A correction below the threshold shuts the cluster down.
    post(
        api,
        &lab.admin,
        "/api/v1/orgs/lab/credits",
        &json!({"amount": "-9.60", "reason": "refund"}),
    )
    .await;
    let org = lab.org().await;
    assert_eq!(org["budget"]["balance"], "0.40");
    assert!(org["budget"]["exhausted_at"].is_string());
    let status = call(api, &lab.bob, Method::GET, "/api/v1/clusters/lab")
        .await
        .json();
    assert_eq!(status["state"], "destroying", "{status}");
    assert_eq!(status["org"]["shut_down"], true);
    assert!(status["org"]["hint"].as_str().unwrap().contains("credit"));

    // The ledger adds up to the balance; costs come as JSON or CSV.
    let ledger = call(api, &lab.ann, Method::GET, "/api/v1/orgs/lab/ledger")
        .await
        .json();
    assert_eq!(ledger["balance"], "0.40");
    let kinds: Vec<&str> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["credit", "correction"]);
    let costs = call(api, &lab.bob, Method::GET, "/api/v1/orgs/lab/costs")
        .await
        .json();
    assert_eq!(costs["org"], "lab");
    let mut req = empty_request(Method::GET, "/api/v1/orgs/lab/costs");
    req.headers_mut()
        .insert(header::ACCEPT, "text/csv".parse().unwrap());
    let csv = api.send_as(&lab.bob, req).await;
    assert_eq!(csv.headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    assert!(
        csv.text().starts_with("day,cluster,user,amount\n"),
        "{}",
        csv.text()
    );
}

#[tokio::test(start_paused = true)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let lab = Lab::new().await;
    let api = &lab.api;
    lab.credit("100").await;
    let before = lab.org().await;

    lab.ask(&lab.bob, 0, 600)
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value");
    lab.ask(&lab.bob, -3, 600)
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value");
    lab.ask(&lab.bob, 1, 0)
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_time_to_live");
    lab.ask(&lab.bob, 1, 10 * 365 * 24 * 3600)
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_time_to_live");
    post(
        api,
        &lab.bob,
        "/api/v1/clusters/lab/capacity",
        &json!({"nodes": 1}),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    post(
        api,
        &lab.bob,
        "/api/v1/clusters/bob/capacity",
        &json!({"nodes": 1, "time_to_live": 600}),
    )
    .await
    .expect_error(StatusCode::NOT_FOUND, "not_an_org_cluster");
    let patch = |body: Value| {
        api.send_as(
            &lab.ann,
            json_request(Method::PATCH, "/api/v1/orgs/lab", &body),
        )
    };
    patch(json!({"min_nodes": 5, "max_nodes": 3}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value");
    patch(json!({"max_nodes": 11}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value");
    patch(json!({"max_nodes": -1}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value");
    patch(json!({"pool": "nope"}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "unknown_pool");
    patch(json!({"node_limit": 50}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "admin_only");
    patch(json!({"min_nodes": 1, "colour": "red"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    call(api, &lab.ann, Method::GET, "/api/v1/orgs/no-such")
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_org");
    call(
        api,
        &lab.ann,
        Method::POST,
        "/api/v1/orgs/lab/membership-requests/eve/approve",
    )
    .await
    .expect_error(StatusCode::NOT_FOUND, "no_membership_request");
    post(
        api,
        &lab.bob,
        "/api/v1/orgs/lab/membership-requests",
        &json!({}),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "already_member");
    // Creating: admins only, names taken by an organisation or an account
    // or a deployed cluster, owners that do not exist.
    post(
        api,
        &lab.ann,
        "/api/v1/orgs",
        &json!({"name": "lab2", "owners": ["ann"]}),
    )
    .await
    .expect_error(StatusCode::FORBIDDEN, "admin_only");
    post(
        api,
        &lab.admin,
        "/api/v1/orgs",
        &json!({"name": "lab", "owners": ["ann"]}),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "org_exists");
    post(
        api,
        &lab.admin,
        "/api/v1/orgs",
        &json!({"name": "bob", "owners": ["ann"]}),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "org_name_taken");
    post(
        api,
        &lab.admin,
        "/api/v1/orgs",
        &json!({"name": "lab2", "owners": ["nobody"]}),
    )
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "unknown_account");
    post(
        api,
        &lab.admin,
        "/api/v1/orgs",
        &json!({"name": "-bad", "owners": ["ann"]}),
    )
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_org_name");
    api.deploy("taken", &common::deploy_body(1), false).await;
    post(
        api,
        &lab.admin,
        "/api/v1/orgs",
        &json!({"name": "taken", "owners": ["ann"]}),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "cluster_exists");
    // DEPLOY on the organisation's cluster cannot make it public or move it.
    api.send_as(
        &lab.bob,
        json_request(
            Method::PUT,
            "/api/v1/clusters/lab",
            &json!({"node_capacity": 1, "time_to_live": 600, "is_public": true}),
        ),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "org_cluster");

    let after = lab.org().await;
    assert_eq!(before["settings"], after["settings"]);
    assert_eq!(before["requests"], after["requests"]);
    assert_eq!(before["members"], after["members"]);
    assert_eq!(before["budget"], after["budget"]);
    let listed = call(api, &lab.admin, Method::GET, "/api/v1/orgs")
        .await
        .json();
    assert_eq!(listed["orgs"].as_array().unwrap().len(), 1);
}

/// A member may run commands on the organisation's nodes only where its
/// pool allows that; someone outside may not at all.
#[tokio::test]
async fn members_exec_on_the_cluster_where_its_pool_allows() {
    let lab = Lab::new().await;
    let exec = |token: String| {
        let api = &lab.api;
        async move {
            post(
                api,
                &token,
                "/api/v1/clusters/lab/exec",
                &json!({"command": ["true"]}),
            )
            .await
        }
    };
    exec(lab.bob.clone())
        .await
        .expect_error(StatusCode::FORBIDDEN, "exec_not_allowed");
    exec(lab.eve.clone())
        .await
        .expect_error(StatusCode::FORBIDDEN, "cluster_not_allowed");
    // Admins pass the rules; the cluster has no nodes yet.
    exec(lab.admin.clone())
        .await
        .expect_error(StatusCode::NOT_FOUND, "no_nodes");

    // On a pool that allows it, a member passes the rules too.
    let moved = call_json(
        &lab,
        Method::PATCH,
        "/api/v1/orgs/lab",
        &json!({"pool": "big"}),
    )
    .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text());
    exec(lab.bob.clone())
        .await
        .expect_error(StatusCode::NOT_FOUND, "no_nodes");
}

async fn call_json(lab: &Lab, method: Method, uri: &str, body: &Value) -> common::Reply {
    lab.api
        .send_as(&lab.ann, json_request(method, uri, body))
        .await
}
