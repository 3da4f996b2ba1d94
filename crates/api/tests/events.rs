//! The change feed through the API: who sees which changes, paging,
//! following, one cluster's changes in its status, and bad queries.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{deploy_body, empty_request, json_request, TestApi};
use serde_json::{json, Value};

fn kinds(list: &Value) -> Vec<(String, String)> {
    list["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(kind: &str, key: &str) -> (String, String) {
    (kind.to_owned(), key.to_owned())
}

async fn events_as(api: &TestApi, token: Option<&str>, query: &str) -> common::Reply {
    let req = empty_request(Method::GET, &format!("/api/v1/events{query}"));
    match token {
        Some(t) => api.send_as(t, req).await,
        None => api.send_anonymous(req).await,
    }
}

#[tokio::test(start_paused = true)]
async fn each_caller_sees_the_changes_of_what_it_may_see() {
    let api = TestApi::start().await;
    let alice = api.user_token("alice", "org_member").await;
    let bob = api.user_token("bob", "org_member").await;
    api.deploy("alice", &deploy_body(1), false).await;
    api.deploy("bob", &deploy_body(1), false).await;
    let mut public = deploy_body(1);
    public["is_public"] = json!(true);
    api.deploy("showcase", &public, false).await;

    let all = events_as(&api, Some(&api.admin_token), "").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text());
    let all = all.json();
    assert_eq!(
        kinds(&all),
        vec![
            pair("server.lease_taken", "flotilla"),
            pair("account.created", "admin"),
            pair("account.created", "alice"),
            pair("account.created", "bob"),
            pair("cluster.deployed", "alice"),
            pair("cluster.deployed", "bob"),
            pair("cluster.deployed", "showcase"),
        ]
    );
    assert_eq!(all["latest"], all["next"]);
    assert_eq!(all["more"], false);
    assert_eq!(all["events"][4]["details"]["nodes"], 1);

    let mine = events_as(&api, Some(&alice), "").await.json();
    assert_eq!(
        kinds(&mine),
        vec![
            pair("account.created", "alice"),
            pair("cluster.deployed", "alice"),
            pair("cluster.deployed", "showcase"),
        ]
    );
    // Paging skips what the caller may not see, and says where to go on.
    assert_eq!(mine["next"], all["next"]);

    let anonymous = events_as(&api, None, "").await.json();
    assert_eq!(
        kinds(&anonymous),
        vec![pair("cluster.deployed", "showcase")]
    );

    // One cluster's: needs STATUS's permission on it.
    let bobs = events_as(&api, Some(&bob), "?cluster=bob").await.json();
    assert_eq!(kinds(&bobs), vec![pair("cluster.deployed", "bob")]);
    let refused = events_as(&api, Some(&alice), "?cluster=bob").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
    assert_eq!(refused.code().as_deref(), Some("cluster_not_allowed"));
}

#[tokio::test(start_paused = true)]
async fn pages_resume_after_the_last_change_seen() {
    let api = TestApi::start().await;
    for name in ["c1", "c2", "c3", "c4", "c5"] {
        api.deploy(name, &deploy_body(1), false).await;
    }
    // Let the leader publish the nodes it brings up, so the feed stands
    // still while it is paged through.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let all = events_as(&api, Some(&api.admin_token), "").await.json();
    let all_kinds = kinds(&all);
    assert_eq!(
        all_kinds[..3],
        [
            pair("server.lease_taken", "flotilla"),
            pair("account.created", "admin"),
            pair("cluster.deployed", "c1")
        ]
    );
    let first = events_as(&api, Some(&api.admin_token), "?limit=3")
        .await
        .json();
    assert_eq!(first["more"], true);
    assert_eq!(kinds(&first), all_kinds[..3]);
    let next = first["next"].as_i64().unwrap();
    let second = events_as(
        &api,
        Some(&api.admin_token),
        &format!("?limit=2&after={next}"),
    )
    .await
    .json();
    assert_eq!(kinds(&second), all_kinds[3..5]);
    // limit=0 answers only where the feed is.
    let latest = events_as(&api, Some(&api.admin_token), "?limit=0")
        .await
        .json();
    assert_eq!(kinds(&latest), vec![]);
    assert_eq!(latest["latest"], all["latest"]);
    assert_eq!(latest["latest"], all_kinds.len() as i64);
}

#[tokio::test(start_paused = true)]
async fn a_follower_gets_the_next_change_as_it_happens() {
    let api = TestApi::start().await;
    let latest = events_as(&api, Some(&api.admin_token), "?limit=0")
        .await
        .json()["latest"]
        .as_i64()
        .unwrap();
    let follow = {
        let router = api.router.clone();
        let token = api.admin_token.clone();
        tokio::spawn(async move {
            use tower::ServiceExt;
            let mut req = empty_request(
                Method::GET,
                &format!("/api/v1/events?follow=true&after={latest}"),
            );
            req.headers_mut().insert(
                axum::http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            let res = router.oneshot(req).await.unwrap();
            let body = axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&body).unwrap()
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!follow.is_finished(), "nothing happened yet: still waiting");
    api.deploy("late", &deploy_body(1), false).await;
    let got = tokio::time::timeout(Duration::from_secs(2), follow)
        .await
        .expect("answered once the change was committed")
        .unwrap();
    assert_eq!(kinds(&got), vec![pair("cluster.deployed", "late")]);

    // The leader publishes the new cluster's nodes as they come up; once
    // they are up, nothing happens, and a follower gets an empty page after
    // max_wait.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = events_as(&api, Some(&api.admin_token), "?limit=0")
        .await
        .json();
    assert!(settled["latest"].as_i64() > got["next"].as_i64());
    let idle = events_as(
        &api,
        Some(&api.admin_token),
        &format!("?follow=true&after={}", settled["latest"]),
    )
    .await
    .json();
    assert_eq!(kinds(&idle), vec![]);
}

#[tokio::test(start_paused = true)]
async fn status_shows_a_clusters_recent_changes() {
    let api = TestApi::start().await;
    api.deploy("demo", &deploy_body(1), false).await;
    api.deploy("demo", &deploy_body(2), false).await;
    let reply = api.delete("/api/v1/clusters/demo").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(
        api.status("demo").await.get("recent_events").is_none(),
        "only when asked for"
    );
    let status = api.get("/api/v1/clusters/demo?events=10").await.json();
    let recent: Vec<&str> = status["recent_events"]
        .as_array()
        .expect("recent_events")
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        recent,
        ["cluster.deployed", "cluster.resized", "cluster.destroyed"]
    );
    // The latest N, oldest first.
    let two = api.get("/api/v1/clusters/demo?events=2").await.json();
    let kinds: Vec<&str> = two["recent_events"]
        .as_array()
        .expect("recent_events")
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["cluster.resized", "cluster.destroyed"]);

    // Once older than the retention, they are pruned.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let removed = api
        .engine
        .prune_events(Duration::from_secs(60))
        .await
        .unwrap();
    assert!(removed >= 3, "{removed}");
    let status = api.get("/api/v1/clusters/demo?events=10").await.json();
    assert!(status.get("recent_events").is_none(), "{status}");
    let too_many = api.get("/api/v1/clusters/demo?events=101").await;
    assert_eq!(too_many.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(too_many.code().as_deref(), Some("invalid_limit"));
    let malformed = api.get("/api/v1/clusters/demo?events=some").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);

    // Listing all clusters leaves them out.
    let list = api.get("/api/v1/clusters").await.json();
    assert!(list["clusters"][0].get("recent_events").is_none(), "{list}");
}

#[tokio::test(start_paused = true)]
async fn bad_queries_are_refused_and_say_how_to_ask() {
    let api = TestApi::start().await;
    for (query, status, code) in [
        ("?after=soon", StatusCode::BAD_REQUEST, "malformed_query"),
        ("?follow=maybe", StatusCode::BAD_REQUEST, "malformed_query"),
        ("?limit=-1", StatusCode::BAD_REQUEST, "malformed_query"),
        (
            "?limit=1001",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
        ),
        (
            "?cluster=no%20spaces",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_cluster_name",
        ),
    ] {
        let reply = events_as(&api, Some(&api.admin_token), query).await;
        assert_eq!(reply.status, status, "{query}: {}", reply.text());
        assert_eq!(reply.code().as_deref(), Some(code), "{query}");
    }
    // A change made meanwhile by an account the admin creates is there.
    let reply = api
        .send(json_request(
            Method::POST,
            "/api/v1/users",
            &json!({"username": "carol", "password": "a-long-password", "level": "org_member"}),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let all = events_as(&api, Some(&api.admin_token), "").await.json();
    assert!(kinds(&all).contains(&pair("account.created", "carol")));
}
