//! The HTTP API against the contract of `product.md`: every refusal is a
//! JSON `{error, message}` with the fitting status and a stable code, and a
//! refused mutation changes nothing. The router runs in-process on the fake
//! cloud under paused time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::http::{header, Method, StatusCode};
use common::{deploy_body, empty_request, json_request, TestApi, MAX_NODES, MAX_TTL, MIN_TTL};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Asserts a cluster was never touched: no record, no nodes, in the API
/// and in the cloud.
async fn assert_not_running(api: &TestApi, cluster: &str) {
    let s = api.status(cluster).await;
    assert_eq!(s["state"], "not_running", "{s}");
    assert_eq!(s["node_capacity"], 0, "{s}");
    assert_eq!(s["nodes"], json!([]), "{s}");
    assert_eq!(s["expires_at"], Value::Null, "{s}");
    assert_eq!(api.cloud.instance_count(), 0, "nothing reached the cloud");
}

/// The fields of a Status that a refused DEPLOY must leave alone.
fn desired(s: &Value) -> Value {
    json!({
        "cluster": s["cluster"],
        "is_public": s["is_public"],
        "node_capacity": s["node_capacity"],
        "pool": s["pool"],
        "expires_at": s["expires_at"],
    })
}

/// A running cluster of two nodes to aim refused redeploys at.
async fn running_demo(api: &TestApi) -> Value {
    let s = api.deploy("demo", &deploy_body(2), true).await;
    assert_eq!(s["state"], "running", "{s}");
    s
}

// ---- names ---------------------------------------------------------------

const BAD_NAMES: [&str; 4] = [
    "-bad",
    "a_b",
    "a%20b",                                     // decodes to "a b"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", // 41 characters
];

/// Every method refuses a name that breaks the rule, before doing anything.
#[tokio::test(start_paused = true)]
async fn bad_cluster_names_are_422_on_every_method() {
    let api = TestApi::start().await;
    assert_eq!(BAD_NAMES[3].len(), 41);
    for name in BAD_NAMES {
        let uri = format!("/api/v1/clusters/{name}");
        let message = api
            .put_json(&uri, &deploy_body(1))
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_cluster_name");
        assert!(
            message.contains("cluster name"),
            "the message says what is wrong: {message}"
        );
        api.get(&uri)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_cluster_name");
        api.delete(&uri)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_cluster_name");
    }
    let list = api.get("/api/v1/clusters").await.json();
    assert_eq!(list, json!({"clusters": []}), "nothing was deployed");
    assert_eq!(api.cloud.instance_count(), 0);
}

/// The edges of the name rule are accepted: 40 characters, digits first,
/// inner dashes.
#[tokio::test(start_paused = true)]
async fn names_at_the_edge_of_the_rule_are_accepted() {
    let api = TestApi::start().await;
    for name in ["a".repeat(40), "0-a-B".to_owned(), "x".to_owned()] {
        let s = api.status(&name).await;
        assert_eq!(s["cluster"], name.as_str());
    }
}

/// A path segment that is not UTF-8 once decoded still gets the JSON error
/// shape, not axum's plain-text rejection.
#[tokio::test(start_paused = true)]
async fn a_name_that_is_not_utf8_is_a_json_error() {
    let api = TestApi::start().await;
    let uri = "/api/v1/clusters/%FF";
    api.get(uri)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "malformed_request");
    api.put_json(uri, &deploy_body(1))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "malformed_request");
    api.delete(uri)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "malformed_request");
    assert_eq!(api.cloud.instance_count(), 0);
}

// ---- values --------------------------------------------------------------

/// A capacity of the right type but out of range is an invalid value; the
/// deployed capacity and scheduled deletion stay as they were.
#[tokio::test(start_paused = true)]
async fn node_capacity_out_of_range_is_422_and_changes_nothing() {
    let api = TestApi::start().await;
    let before = running_demo(&api).await;
    for nodes in [0, -1, MAX_NODES + 1, i64::from(u32::MAX) + 1] {
        let message = api
            .put_json("/api/v1/clusters/demo", &deploy_body(nodes))
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_node_capacity");
        assert!(
            message.contains(&format!("between 1 and {MAX_NODES}")),
            "names the range: {message}"
        );
        // A fresh name is not created either.
        api.put_json("/api/v1/clusters/fresh", &deploy_body(nodes))
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_node_capacity");
    }
    assert_eq!(desired(&api.status("demo").await), desired(&before));
    assert_eq!(api.status("fresh").await["state"], "not_running");
    assert_eq!(api.cloud.instance_count(), 2);
}

/// A capacity that is not an integer is the wrong shape: 400, not 422.
#[tokio::test(start_paused = true)]
async fn node_capacity_of_the_wrong_type_is_400() {
    let api = TestApi::start().await;
    for nodes in [
        json!("three"),
        json!(2.5),
        json!(null),
        json!("3"),
        json!(1e20),
    ] {
        let body = json!({"node_capacity": nodes, "time_to_live": 3600});
        let message = api
            .put_json("/api/v1/clusters/demo", &body)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
        assert!(
            message.contains("node_capacity")
                || message.contains("invalid type")
                || message.contains("expected a whole number"),
            "{message}"
        );
    }
    assert_not_running(&api, "demo").await;
}

/// The time-to-live must lie within the configured bounds, inclusive.
#[tokio::test(start_paused = true)]
async fn time_to_live_out_of_range_is_422_and_changes_nothing() {
    let api = TestApi::start().await;
    let before = running_demo(&api).await;
    for ttl in [MIN_TTL - 1, MAX_TTL + 1, 0, -3600] {
        let body = json!({"node_capacity": 3, "time_to_live": ttl});
        let message = api
            .put_json("/api/v1/clusters/demo", &body)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_time_to_live");
        // In the units people type (the command line's --ttl), and the
        // seconds the API was sent.
        assert!(
            message.contains("between 1m and 7days"),
            "names the range: {message}"
        );
        assert!(message.contains(&format!("({ttl} s)")), "{message}");
    }
    assert_eq!(
        desired(&api.status("demo").await),
        desired(&before),
        "capacity and deadline unchanged"
    );
    for ttl in [MIN_TTL, MAX_TTL] {
        let s = api
            .deploy(
                "edge",
                &json!({"node_capacity": 1, "time_to_live": ttl}),
                false,
            )
            .await;
        assert_eq!(s["node_capacity"], 1, "the bound {ttl} itself is allowed");
    }
}

/// An unknown pool is an invalid value; the message lists the pools there
/// are, so the caller can pick one.
#[tokio::test(start_paused = true)]
async fn unknown_pool_is_422_and_names_the_known_pools() {
    let api = TestApi::start().await;
    for pool in ["nope", "not a pool name"] {
        let body = json!({"node_capacity": 1, "time_to_live": 3600, "pool": pool});
        let message = api
            .put_json("/api/v1/clusters/demo", &body)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "unknown_pool");
        assert!(message.contains(pool), "{message}");
        assert!(
            message.contains("big") && message.contains("default"),
            "lists the pools: {message}"
        );
    }
    assert_not_running(&api, "demo").await;
}

// ---- request shape -------------------------------------------------------

/// Bodies that are not the shape DEPLOY takes are 400, with `malformed_json`
/// for bytes that are not JSON and `invalid_request` for JSON of the wrong
/// shape.
#[tokio::test(start_paused = true)]
async fn malformed_bodies_are_400() {
    let api = TestApi::start().await;
    let cases: [(&str, &str); 7] = [
        (
            r#"{"node_capacity": 1, "time_to_live": 3600, "nodes": 3}"#,
            "invalid_request",
        ),
        (r#" [1, 3600, false, null]"#, "invalid_request"),
        (r#"{"node_capacity": 1}"#, "invalid_request"),
        (
            r#"{"node_capacity": 1, "time_to_live": 3600, "is_public": "yes"}"#,
            "invalid_request",
        ),
        (
            r#"{"node_capacity": 1, "time_to_live": 3600"#,
            "malformed_json",
        ),
        (r#"node_capacity=1&time_to_live=3600"#, "malformed_json"),
        ("", "malformed_json"),
    ];
    for (body, code) in cases {
        let message = api
            .put_raw(
                "/api/v1/clusters/demo",
                Some("application/json"),
                body.to_owned(),
            )
            .await
            .expect_error(StatusCode::BAD_REQUEST, code);
        assert!(!message.is_empty(), "{body}");
    }
    let unknown = api
        .put_json(
            "/api/v1/clusters/demo",
            &json!({"node_capacity": 1, "time_to_live": 3600, "nodes": 3}),
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        unknown.contains("nodes"),
        "names the unknown field: {unknown}"
    );
    assert_not_running(&api, "demo").await;
}

/// The API takes JSON only: a body without a JSON content type is refused
/// with the JSON error shape (axum's own rejection would be plain text),
/// and a JSON content type with parameters or a `+json` suffix is fine.
#[tokio::test(start_paused = true)]
async fn deploy_needs_a_json_content_type() {
    let api = TestApi::start().await;
    let body = deploy_body(1).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let message = api
            .put_raw("/api/v1/clusters/demo", content_type, body.clone())
            .await
            .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
        assert!(
            message.contains("application/json"),
            "says what to send: {message}"
        );
    }
    assert_not_running(&api, "demo").await;
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.flotilla+json",
    ] {
        let reply = api
            .put_raw("/api/v1/clusters/demo", Some(content_type), body.clone())
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{content_type}: {}",
            reply.text()
        );
    }
}

/// Bodies over 64 KiB are refused before they are parsed.
#[tokio::test(start_paused = true)]
async fn body_over_64_kib_is_413() {
    let api = TestApi::start().await;
    // Valid JSON padded with spaces, so only the size is wrong.
    let mut body = deploy_body(1).to_string();
    body.push_str(&" ".repeat(flotilla_api::MAX_BODY_BYTES + 1 - body.len()));
    let req = axum::http::Request::put("/api/v1/clusters/demo")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(axum::body::Body::from(body.clone()))
        .unwrap();
    api.send(req)
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    assert_not_running(&api, "demo").await;
    // One byte less is accepted.
    body.pop();
    let reply = api
        .put_raw("/api/v1/clusters/demo", Some("application/json"), body)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

/// `wait` is a boolean; anything else is a JSON 400 and nothing is done.
#[tokio::test(start_paused = true)]
async fn wait_must_be_a_boolean() {
    let api = TestApi::start().await;
    let message = api
        .put_json("/api/v1/clusters/demo?wait=maybe", &deploy_body(1))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "malformed_query");
    assert!(
        message.contains("wait=true"),
        "says what to send: {message}"
    );
    assert_not_running(&api, "demo").await;

    api.deploy("demo", &deploy_body(1), true).await;
    api.delete("/api/v1/clusters/demo?wait=maybe")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "malformed_query");
    assert_eq!(
        api.status("demo").await["state"],
        "running",
        "the destroy was refused"
    );
}

// ---- conflicts -----------------------------------------------------------

/// `is_public` and `pool` are fixed once deployed: a redeploy that changes
/// either is a 409 and leaves capacity and deadline as they were.
#[tokio::test(start_paused = true)]
async fn redeploy_cannot_change_is_public_or_pool() {
    let api = TestApi::start().await;
    let before = running_demo(&api).await;
    assert_eq!(before["is_public"], false);
    assert_eq!(before["pool"], "default");

    let public = json!({"node_capacity": 5, "time_to_live": 7200, "is_public": true});
    let message = api
        .put_json("/api/v1/clusters/demo", &public)
        .await
        .expect_error(StatusCode::CONFLICT, "is_public_immutable");
    assert!(message.contains("destroy"), "says what to do: {message}");

    let other_pool = json!({"node_capacity": 5, "time_to_live": 7200, "pool": "big"});
    api.put_json("/api/v1/clusters/demo", &other_pool)
        .await
        .expect_error(StatusCode::CONFLICT, "pool_immutable");

    assert_eq!(desired(&api.status("demo").await), desired(&before));
    assert_eq!(api.cloud.instance_count(), 2);

    // Naming the same pool explicitly is no change.
    let same =
        json!({"node_capacity": 3, "time_to_live": 3600, "pool": "default", "is_public": false});
    assert_eq!(api.deploy("demo", &same, false).await["node_capacity"], 3);
}

/// A redeploy that leaves out `is_public` and `pool` keeps the cluster's:
/// resizing a public cluster on another pool needs neither repeated.
#[tokio::test(start_paused = true)]
async fn a_redeploy_that_leaves_out_the_fixed_fields_keeps_them() {
    let api = TestApi::start().await;
    let first = json!({"node_capacity": 1, "time_to_live": 3600, "is_public": true, "pool": "big"});
    api.deploy("wide", &first, true).await;
    let resize = json!({"node_capacity": 3, "time_to_live": 7200});
    let s = api.deploy("wide", &resize, true).await;
    assert_eq!(s["is_public"], true, "{s}");
    assert_eq!(s["pool"], "big", "{s}");
    assert_eq!(s["node_capacity"], 3, "{s}");
    assert_eq!(s["state"], "running", "{s}");

    // A new cluster deployed that way is private, on the default pool.
    let s = api.deploy("fresh", &resize, false).await;
    assert_eq!(s["is_public"], false, "{s}");
    assert_eq!(s["pool"], "default", "{s}");
}

/// EXTEND moves only the deadline, of a deployed cluster only.
#[tokio::test(start_paused = true)]
async fn extend_moves_only_the_deadline() {
    let api = TestApi::start().await;
    let before = running_demo(&api).await;
    let extend = |cluster: &str, ttl: i64| {
        let uri = format!("/api/v1/clusters/{cluster}/extend");
        let body = json!({ "time_to_live": ttl });
        api.send(json_request(Method::POST, &uri, &body))
    };
    let reply = extend("demo", 7200).await;
    assert_eq!(reply.status, StatusCode::OK);
    let after = reply.json();
    assert_eq!(after["node_capacity"], before["node_capacity"]);
    assert_eq!(after["nodes"], before["nodes"]);
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(after["expires_at"].clone()).unwrap();
    let ttl = (expires - chrono::Utc::now()).num_seconds();
    assert!((7190..=7210).contains(&ttl), "expires in two hours: {ttl}");
    assert_eq!(api.status("demo").await["expires_at"], after["expires_at"]);

    extend("demo", 0)
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_time_to_live");
    extend("ghost", 60)
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    api.delete("/api/v1/clusters/demo?wait=true").await;
    let message = extend("demo", 60)
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    assert!(message.contains("deploy it first"), "{message}");
}

// ---- success -------------------------------------------------------------

/// Asserts a value has the Status shape of `product.md`.
fn assert_status_shape(s: &Value) {
    let s = s.as_object().expect("Status is an object");
    assert!(s["cluster"].is_string());
    assert!(["not_running", "deploying", "running", "destroying"]
        .contains(&s["state"].as_str().unwrap()));
    assert!(s["is_public"].is_boolean());
    assert!(s["node_capacity"].is_u64());
    match &s["expires_at"] {
        Value::Null => {}
        Value::String(t) => {
            chrono::DateTime::parse_from_rfc3339(t).expect("expires_at is RFC 3339");
        }
        other => panic!("expires_at: {other}"),
    }
    for node in s["nodes"].as_array().expect("nodes is an array") {
        let keys: BTreeSet<&str> = node
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let optional = BTreeSet::from(["pool_version", "outdated", "workload_address"]);
        assert_eq!(
            keys.difference(&optional)
                .copied()
                .collect::<BTreeSet<&str>>(),
            BTreeSet::from(["id", "state", "address", "instance_type", "launched_at"])
        );
        if let Some(v) = node.get("pool_version") {
            assert!(v.as_str().is_some_and(|v| v.len() == 16), "{v}");
        }
        assert!(node["id"].is_string());
        assert!(["booting", "ready", "unhealthy", "shutting_down"]
            .contains(&node["state"].as_str().unwrap()));
        assert!(node["address"].is_string() || node["address"].is_null());
        assert!(node["instance_type"].is_string());
        chrono::DateTime::parse_from_rfc3339(node["launched_at"].as_str().unwrap())
            .expect("launched_at is RFC 3339");
    }
}

/// A DEPLOY without `wait` answers at once with the Status, its deadline
/// `time_to_live` from now, and no `settled`.
#[tokio::test(start_paused = true)]
async fn deploy_returns_the_status() {
    let api = TestApi::start().await;
    let s = api
        .deploy(
            "demo",
            &json!({"node_capacity": 3, "time_to_live": 3600}),
            false,
        )
        .await;
    assert_status_shape(&s);
    assert_eq!(s["cluster"], "demo");
    // As of the answer: the fake cloud's nodes may be up already.
    assert!(
        s["state"] == "deploying" || s["state"] == "running",
        "{}",
        s["state"]
    );
    assert_eq!(s["is_public"], false);
    assert_eq!(s["node_capacity"], 3);
    assert!(
        s.get("settled").is_none(),
        "settled only when the request waited: {s}"
    );
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(s["expires_at"].clone()).unwrap();
    let ttl = expires - chrono::Utc::now();
    assert!(
        (3590..=3610).contains(&ttl.num_seconds()),
        "expires in an hour: {ttl}"
    );

    // The reply parses as the type the command line reads.
    let typed: flotilla_api_types::ClusterStatus = serde_json::from_value(s).unwrap();
    assert_eq!(typed.node_capacity, 3);
}

/// `wait=true` returns once the cluster settles, with every node ready; a
/// DESTROY with `wait=true` returns once it is gone. Both settle promptly,
/// not by running out `max_wait`.
#[tokio::test(start_paused = true)]
async fn deploy_and_destroy_with_wait_settle() {
    let api = TestApi::start().await;
    let started = Instant::now();
    let s = api
        .deploy(
            "demo",
            &json!({"node_capacity": 3, "time_to_live": 3600, "is_public": true}),
            true,
        )
        .await;
    assert_status_shape(&s);
    assert_eq!(s["settled"], true, "{s}");
    assert_eq!(s["state"], "running");
    assert_eq!(s["is_public"], true);
    let nodes = s["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        assert_eq!(n["state"], "ready", "{n}");
        assert!(n["address"].is_string(), "a ready node has an address: {n}");
        assert_eq!(n["instance_type"], "fake.small");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "settled by a wake-up, not max_wait"
    );
    assert_eq!(api.status("demo").await["state"], "running");

    let started = Instant::now();
    let reply = api.delete("/api/v1/clusters/demo?wait=true").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let s = reply.json();
    assert_status_shape(&s);
    assert_eq!(s["settled"], true, "{s}");
    assert_eq!(s["state"], "not_running");
    assert_eq!(s["nodes"], json!([]));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "settled by a wake-up, not max_wait"
    );
    assert_not_running(&api, "demo").await;
}

/// DESTROY without `wait` answers at once; of a name never deployed, it is
/// a no-op that still answers with the Status.
#[tokio::test(start_paused = true)]
async fn destroy_without_wait_answers_at_once() {
    let api = TestApi::start().await;
    let reply = api.delete("/api/v1/clusters/ghost").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["state"], "not_running");

    running_demo(&api).await;
    let s = api.delete("/api/v1/clusters/demo").await.json();
    assert_eq!(s["state"], "destroying", "{s}");
    assert_eq!(
        s["expires_at"],
        Value::Null,
        "destroy clears the scheduled deletion"
    );
    assert!(s.get("settled").is_none());
}

/// STATUS of a valid name never deployed is `not_running`, not 404.
#[tokio::test(start_paused = true)]
async fn never_deployed_name_is_not_running() {
    let api = TestApi::start().await;
    let s = api.status("never").await;
    assert_status_shape(&s);
    assert_eq!(s["cluster"], "never");
    assert_eq!(s["is_public"], false);
    assert_not_running(&api, "never").await;
}

/// LIST shows every deployed cluster, by name.
#[tokio::test(start_paused = true)]
async fn list_shows_deployed_clusters() {
    let api = TestApi::start().await;
    let reply = api.get("/api/v1/clusters").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"clusters": []}));

    api.deploy("beta", &deploy_body(1), true).await;
    api.deploy(
        "alpha",
        &json!({"node_capacity": 2, "time_to_live": 600, "pool": "big"}),
        true,
    )
    .await;
    let list = api.get("/api/v1/clusters").await.json();
    let clusters = list["clusters"].as_array().unwrap();
    let names: Vec<&str> = clusters
        .iter()
        .map(|c| c["cluster"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    for c in clusters {
        assert_status_shape(c);
        assert_eq!(c["state"], "running");
    }
    assert_eq!(clusters[0]["pool"], "big");
    assert_eq!(clusters[0]["node_capacity"], 2);
    assert_eq!(clusters[0]["nodes"][0]["instance_type"], "fake.big");
}

// ---- routes --------------------------------------------------------------

/// Unknown routes are a JSON 404 rather than an empty body.
#[tokio::test(start_paused = true)]
async fn unknown_route_is_json_404() {
    let api = TestApi::start().await;
    for uri in [
        "/",
        "/api/v1/nope",
        "/api/v1/clusters/demo/nodes",
        "/api/v2/clusters",
        "/api/v1/clusters/",
    ] {
        api.get(uri)
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found");
    }
}

/// A known route with a method it does not take is a JSON 405 that still
/// says, in `Allow`, which methods it does take.
#[tokio::test(start_paused = true)]
async fn wrong_method_is_json_405() {
    let api = TestApi::start().await;
    let cases = [
        (Method::POST, "/api/v1/clusters/demo"),
        (Method::PATCH, "/api/v1/clusters/demo"),
        (Method::PUT, "/api/v1/clusters"),
        (Method::DELETE, "/api/v1/clusters"),
        (Method::POST, "/healthz"),
    ];
    for (method, uri) in cases {
        let reply = api.request(method.clone(), uri).await;
        reply.expect_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        let allow = reply
            .headers
            .get(header::ALLOW)
            .map(|v| v.to_str().unwrap().to_owned());
        let allow = allow.unwrap_or_else(|| panic!("{method} {uri}: a 405 says what is allowed"));
        assert!(allow.contains("GET"), "{method} {uri}: Allow: {allow}");
    }
    assert_not_running(&api, "demo").await;
}

#[tokio::test(start_paused = true)]
async fn healthz_is_ok() {
    let api = TestApi::start().await;
    let reply = api.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["status"], "ok");
    assert!(body["version"].is_string());
}

/// `/metrics` is OpenMetrics text with the engine's metrics in it.
#[tokio::test(start_paused = true)]
async fn metrics_include_the_engines() {
    let api = TestApi::start().await;
    api.deploy("demo", &deploy_body(2), true).await;
    let reply = api.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    let content_type = reply.headers[header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = reply.text();
    for name in [
        "flotilla_nodes",
        "flotilla_reconciles",
        "flotilla_scheduled_deletions_fired",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from:\n{text}"
        );
    }
    // The node gauges follow listings, but every reconcile is counted.
    assert!(
        text.contains(r#"flotilla_reconciles_total{outcome="ok"} "#),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"));
}

/// The OpenAPI document describes exactly the routes the router serves,
/// with exactly the methods each takes: each documented method is routed,
/// and each other method is a 405.
#[tokio::test(start_paused = true)]
async fn openapi_document_matches_the_router() {
    let api = TestApi::start().await;
    let reply = api.get("/api/v1/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];
    let documented: BTreeMap<String, BTreeSet<String>> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| METHODS.contains(&k.as_str()))
                .cloned()
                .collect();
            (path.clone(), methods)
        })
        .collect();
    // Every documented route has an access decision, and every route with
    // one is documented.
    let mut decided: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (method, path, _) in flotilla_api::access::ROUTES {
        decided
            .entry(path.to_string())
            .or_default()
            .insert(method.to_lowercase());
    }
    assert_eq!(documented, decided);

    // The document says which routes take a bearer token: all but the open
    // and sign-in ones, which opt out of the global requirement.
    assert_eq!(doc["security"], serde_json::json!([{"bearer": []}]));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (method, path, access) in flotilla_api::access::ROUTES {
        use flotilla_api::access::Access;
        let operation = &doc["paths"][path][method.to_lowercase()];
        let expected = match access {
            Access::Open | Access::SignIn | Access::Attempt => serde_json::json!([{}]),
            // Anonymous callers are served too: the token is optional.
            Access::Rule(_) => serde_json::json!([{}, {"bearer": []}]),
            Access::SignedIn(_) => serde_json::Value::Null,
        };
        assert_eq!(operation["security"], expected, "{method} {path}");
        if !matches!(access, Access::Open) {
            assert!(operation["responses"]["429"].is_object(), "{method} {path}");
        }
        if matches!(access, Access::SignedIn(_)) {
            assert!(operation["responses"]["401"].is_object(), "{method} {path}");
        }
        if operation["requestBody"].is_object() {
            for status in ["400", "415", "422"] {
                assert!(
                    operation["responses"][status].is_object(),
                    "{method} {path} {status}"
                );
            }
        }
    }
    // Names in paths and bodies carry the rules their constructors check.
    let cluster = &doc["paths"]["/api/v1/clusters/{cluster}"]["get"]["parameters"][0]["schema"];
    assert_eq!(cluster["pattern"], flotilla_domain::ClusterName::PATTERN);
    assert_eq!(cluster["maxLength"], 40);
    let schemas = &doc["components"]["schemas"];
    for (schema, field, pattern) in [
        (
            "CreateOrgRequest",
            "name",
            flotilla_domain::ClusterName::PATTERN,
        ),
        (
            "CreateUserRequest",
            "username",
            flotilla_domain::Username::PATTERN,
        ),
        ("DeployRequest", "pool", flotilla_domain::PoolName::PATTERN),
        (
            "CreateOrgRequest",
            "pool",
            flotilla_domain::PoolName::PATTERN,
        ),
        (
            "UpdateOrgRequest",
            "pool",
            flotilla_domain::PoolName::PATTERN,
        ),
    ] {
        assert_eq!(
            schemas[schema]["properties"][field]["pattern"], pattern,
            "{schema}.{field}"
        );
    }
    // Amounts the pattern admits parse as money.
    let amount = schemas["CreditRequest"]["properties"]["amount"]["pattern"]
        .as_str()
        .unwrap();
    assert_eq!(amount, "^[-+]?[0-9]{1,12}([.][0-9]{1,6})?$");
    for ok in ["0", "-3.50", "+25", "999999999999.999999"] {
        assert!(ok.parse::<flotilla_domain::Money>().is_ok(), "{ok}");
    }
    // This server's limits bound every time-to-live and node count.
    let deploy = &schemas["DeployRequest"]["properties"];
    assert_eq!(
        deploy["time_to_live"]["minimum"], 60,
        "the harness's min_ttl"
    );
    assert!(
        deploy["time_to_live"]["maximum"].as_u64().is_some(),
        "{deploy}"
    );
    assert!(
        deploy["node_capacity"]["maximum"].as_u64().is_some(),
        "{deploy}"
    );
    assert_eq!(deploy["pool"]["enum"][0], "big", "{deploy}");
    // Every property the served document patches is one the types have.
    for schema in ["ExtendRequest", "CapacityRequest"] {
        let ttl = &schemas[schema]["properties"]["time_to_live"];
        assert!(
            ttl["type"].is_string() && ttl["maximum"].is_u64(),
            "{schema}: {ttl}"
        );
    }
    for (schema, field) in [
        ("CreateOrgRequest", "owners"),
        ("CreateUserRequest", "grants"),
        ("UpdateUserRequest", "grants"),
    ] {
        let list = &schemas[schema]["properties"][field];
        assert!(
            list["type"].is_string() || list["type"].is_array(),
            "{schema}.{field}: {list}"
        );
        assert_eq!(
            list["items"]["pattern"],
            flotilla_domain::ClusterName::PATTERN
        );
    }
    let levels = &schemas["CreateUserRequest"]["properties"]["level"]["enum"];
    assert_eq!(
        levels,
        &serde_json::json!(["github_member", "org_member", "admin"])
    );
    assert!(schemas["UpdateUserRequest"]["properties"]["level"]["enum"]
        .as_array()
        .is_some_and(|l| !l.contains(&serde_json::json!("anonymous"))));

    // Tie the document to the router itself, both ways: a documented method
    // reaches a handler (whatever it then answers), any other is a 405.
    for (path, methods) in &documented {
        let uri = path
            .replace("{cluster}", "demo")
            .replace("{username}", "nobody")
            .replace("{kid}", "no-such-key");
        for method in ["get", "put", "post", "delete", "patch"] {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let reply = if m == Method::PUT {
                api.put_json(&uri, &deploy_body(1)).await
            } else {
                api.request(m, &uri).await
            };
            if methods.contains(method) {
                assert_ne!(
                    reply.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}"
                );
                let routed =
                    reply.status != StatusCode::NOT_FOUND || reply.json()["error"] != "not_found";
                assert!(routed, "{method} {path} is documented: {}", reply.text());
            } else {
                reply.expect_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
            }
        }
    }
}

// ---- shutdown ------------------------------------------------------------

/// Once the engine has begun shutting down, mutations are refused with 503
/// (a client can retry against the next server) while STATUS still works.
#[tokio::test(start_paused = true)]
async fn mutations_after_shutdown_are_503() {
    let mut api = TestApi::start().await;
    running_demo(&api).await;
    api.stop().await;

    let message = api
        .put_json("/api/v1/clusters/fresh", &deploy_body(1))
        .await
        .expect_error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down");
    assert!(message.contains("shutting down"), "{message}");
    api.put_json("/api/v1/clusters/demo?wait=true", &deploy_body(5))
        .await
        .expect_error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down");
    api.delete("/api/v1/clusters/demo")
        .await
        .expect_error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down");

    let fresh = api.status("fresh").await;
    assert_eq!(fresh["state"], "not_running", "{fresh}");
    let demo = api.status("demo").await;
    assert_eq!(demo["state"], "running", "{demo}");
    assert_eq!(demo["node_capacity"], 2, "{demo}");
    assert_eq!(api.cloud.instance_count(), 2);
}

/// The pools, with their price and what the driver says of their nodes (the fake gives
/// every type the same shape and has no spot market), to anyone.
#[tokio::test(start_paused = true)]
async fn pools_are_listed_with_their_shapes() {
    let api = TestApi::start().await;
    let shape = json!({"vcpus": 2, "memory_mib": 4096});
    let types = |ty: &str| json!([{"instance_type": ty, "price_per_hour": "0.10", "shape": shape}]);
    let expected = json!({"pools": [
        {"name": "big", "driver": "fake", "instance_type": "fake.big",
         "default": false, "price_per_hour": "0.10", "shape": shape, "source": "config",
         "types": types("fake.big")},
        {"name": "default", "driver": "fake", "instance_type": "fake.small",
         "default": true, "price_per_hour": "0.10", "shape": shape, "source": "config",
         "types": types("fake.small")},
    ]});
    let reply = api.get("/api/v1/pools").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), expected);
    let reply = api
        .send_anonymous(empty_request(Method::GET, "/api/v1/pools"))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), expected);
    // The body is the shared type the command line reads.
    let list: flotilla_api_types::PoolList = serde_json::from_value(expected).unwrap();
    assert_eq!(list.pools[1].shape.map(|s| s.memory_mib), Some(4096));
    assert_eq!(list.pools[1].spot_price, None);
}

/// A pool's errors are data: each failure counted on one row, and a caller
/// sees those of the clusters it may see.
#[tokio::test]
async fn pool_errors_are_counted_and_shown_to_who_may_see_the_cluster() {
    let api = TestApi::start().await;
    api.cloud
        .reconfigure(|c| c.refuse_creates = Some("no such image (fake)".into()));
    let bob = api.user_token("bob", "org_member").await;
    api.deploy("ops", &deploy_body(1), false).await;
    let reply = api
        .send_as(
            &bob,
            json_request(Method::PUT, "/api/v1/clusters/bob", &deploy_body(1)),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    let deadline = Instant::now() + Duration::from_secs(20);
    let errors = loop {
        let reply = api.get("/api/v1/pools/default/errors").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let errors = reply.json()["errors"].as_array().unwrap().clone();
        if errors.len() == 2 && errors.iter().all(|e| e["count"].as_u64() >= Some(2)) {
            break errors;
        }
        assert!(Instant::now() < deadline, "{errors:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for e in &errors {
        assert_eq!(e["kind"], "create_failed");
        assert_eq!(e["code"], "cloud_refused");
        assert_eq!(e["instance_type"], "fake.small");
        assert!(e["message"].as_str().unwrap().contains("no such image"));
    }

    let mine = api
        .send_as(
            &bob,
            empty_request(Method::GET, "/api/v1/pools/default/errors"),
        )
        .await;
    let mine = mine.json()["errors"].as_array().unwrap().clone();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["cluster"], "bob", "not the admin's cluster");

    api.get("/api/v1/pools/nonesuch/errors")
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_pool");
    api.get("/api/v1/pools/default/errors?limit=0")
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_limit");
    let one = api.get("/api/v1/pools/default/errors?limit=1").await;
    assert_eq!(one.json()["errors"].as_array().unwrap().len(), 1);
}
