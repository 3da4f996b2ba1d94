//! Rate limits over HTTP, deterministic on the harness's `rate_clock`:
//! anonymous callers per network (/24, /48), signed-in callers per account,
//! failed logins per account and per network, and the open routes never.
//! Rates per minute: anonymous 30, github_member 60, org_member 120 (see
//! `common::RATES`); 3 failed logins per 60 s.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{
    empty_request, from_addr, login_request, Reply, TestApi, ADMIN_PASSWORD, LOGIN_FAILURES,
    LOGIN_WINDOW, RATES, USER_PASSWORD,
};

fn whoami() -> Request<Body> {
    empty_request(Method::GET, "/api/v1/auth/whoami")
}

async fn anonymous_from(api: &TestApi, addr: &str) -> Reply {
    api.send_anonymous(from_addr(whoami(), addr)).await
}

#[track_caller]
fn expect_429(reply: &Reply, seconds: u64, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{what}: {}",
        reply.text()
    );
    reply.expect_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(reply.retry_after(), Some(seconds), "{what}: Retry-After");
    assert!(
        reply.text().contains(&format!("{seconds} s")),
        "{what}: the message says how long: {}",
        reply.text()
    );
}

#[track_caller]
fn expect_ok(reply: &Reply, what: &str) {
    assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.text());
}

/// Anonymous callers: one budget per IPv4 /24, whichever address in it.
#[tokio::test(start_paused = true)]
async fn anonymous_callers_share_a_budget_per_ipv4_network() {
    let api = TestApi::start().await;
    let rate = RATES[0];
    for i in 0..rate {
        let addr = format!("10.1.2.{}", 1 + i % 200);
        expect_ok(&anonymous_from(&api, &addr).await, &addr);
    }
    // 30 a minute: one every 2 s.
    expect_429(&anonymous_from(&api, "10.1.2.250").await, 2, "same /24");
    expect_429(
        &anonymous_from(&api, "::ffff:10.1.2.9").await,
        2,
        "the same /24, IPv4-mapped",
    );
    expect_ok(&anonymous_from(&api, "10.1.3.1").await, "the next /24");
    expect_ok(&anonymous_from(&api, "11.1.2.1").await, "another network");

    api.rate_clock.advance(Duration::from_secs(1));
    expect_429(&anonymous_from(&api, "10.1.2.1").await, 1, "after 1 s");
    api.rate_clock.advance(Duration::from_secs(1));
    expect_ok(&anonymous_from(&api, "10.1.2.1").await, "after 2 s");
    expect_429(&anonymous_from(&api, "10.1.2.1").await, 2, "one came back");

    api.rate_clock.advance(Duration::from_secs(60));
    for _ in 0..rate {
        expect_ok(&anonymous_from(&api, "10.1.2.1").await, "after a minute");
    }
    expect_429(
        &anonymous_from(&api, "10.1.2.1").await,
        2,
        "the whole burst again",
    );
}

/// IPv6: one budget per /48.
#[tokio::test(start_paused = true)]
async fn anonymous_callers_share_a_budget_per_ipv6_network() {
    let api = TestApi::start().await;
    for i in 0..RATES[0] {
        let addr = format!("2001:db8:1:{:x}::{:x}", i, i + 1);
        expect_ok(&anonymous_from(&api, &addr).await, &addr);
    }
    expect_429(
        &anonymous_from(&api, "2001:db8:1:ffff:ffff::1").await,
        2,
        "same /48",
    );
    expect_ok(&anonymous_from(&api, "2001:db8:2::1").await, "the next /48");
    expect_ok(&anonymous_from(&api, "10.1.2.3").await, "IPv4");
}

/// Signed-in callers: one budget per account at their level's rate,
/// whichever token and address; others unaffected, and not the network's.
#[tokio::test(start_paused = true)]
async fn signed_in_callers_share_a_budget_per_account() {
    let api = TestApi::start().await;
    api.create_user("dora", "org_member").await;
    let one = api.login("dora", USER_PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let two = api.login("dora", USER_PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let erin = api.user_token("erin", "org_member").await;
    assert_ne!(one, two);

    let rate = RATES[2];
    for i in 0..rate {
        let (token, addr) = if i % 2 == 0 {
            (&one, "10.0.0.1")
        } else {
            (&two, "192.168.7.7")
        };
        expect_ok(
            &api.send_as(token, from_addr(whoami(), addr)).await,
            "within the budget",
        );
    }
    // 120 a minute: one every 0.5 s, rounded up to whole seconds.
    for (token, addr) in [(&one, "10.0.0.1"), (&two, "10.0.0.1"), (&one, "172.20.0.1")] {
        expect_429(
            &api.send_as(token, from_addr(whoami(), addr)).await,
            1,
            "the account's budget is used up",
        );
    }
    expect_ok(
        &api.send_as(&erin, from_addr(whoami(), "10.0.0.1")).await,
        "another account, same address",
    );
    expect_ok(
        &anonymous_from(&api, "10.0.0.2").await,
        "anonymous callers of that network",
    );

    api.rate_clock.advance(Duration::from_secs(1));
    for _ in 0..2 {
        expect_ok(
            &api.send_as(&two, from_addr(whoami(), "10.0.0.1")).await,
            "two came back in a second",
        );
    }
    expect_429(
        &api.send_as(&one, from_addr(whoami(), "10.0.0.1")).await,
        1,
        "and no more",
    );
}

/// Each level has its own rate: a github_member gets 60 a minute.
#[tokio::test(start_paused = true)]
async fn each_level_has_its_own_rate() {
    let api = TestApi::start().await;
    let gh = api.user_token("gh", "github_member").await;
    for _ in 0..RATES[1] {
        expect_ok(&api.send_as(&gh, whoami()).await, "github_member");
    }
    expect_429(&api.send_as(&gh, whoami()).await, 1, "61st");
    // The admin's far larger budget is untouched by it.
    for _ in 0..RATES[1] * 2 {
        expect_ok(&api.send(whoami()).await, "admin");
    }
}

/// A network that used up its budget cannot sign in either (sign-in routes
/// count per network, whoever calls), but signed-in callers there can work.
#[tokio::test(start_paused = true)]
async fn sign_in_routes_count_against_the_network() {
    let api = TestApi::start().await;
    for _ in 0..RATES[0] {
        expect_ok(&anonymous_from(&api, "10.5.5.5").await, "anonymous");
    }
    let login = api
        .send_anonymous(from_addr(
            login_request("admin", ADMIN_PASSWORD),
            "10.5.5.6",
        ))
        .await;
    expect_429(&login, 2, "login from the exhausted network");
    let login = api
        .send(from_addr(
            login_request("admin", ADMIN_PASSWORD),
            "10.5.5.6",
        ))
        .await;
    expect_429(&login, 2, "login with a token, from the exhausted network");
    expect_ok(
        &api.send(from_addr(whoami(), "10.5.5.6")).await,
        "the admin's own budget",
    );
    let login = api
        .send_anonymous(from_addr(
            login_request("admin", ADMIN_PASSWORD),
            "10.5.6.1",
        ))
        .await;
    expect_ok(&login, "login from elsewhere");
}

/// Liveness, metrics, the API document and the keys are never limited.
#[tokio::test(start_paused = true)]
async fn open_routes_are_never_rate_limited() {
    let api = TestApi::start().await;
    let gh = api.user_token("gh", "github_member").await;
    for _ in 0..RATES[0] {
        expect_ok(&anonymous_from(&api, "10.7.7.7").await, "anonymous");
    }
    for _ in 0..RATES[1] {
        expect_ok(&api.send_as(&gh, whoami()).await, "github_member");
    }
    expect_429(
        &anonymous_from(&api, "10.7.7.7").await,
        2,
        "network used up",
    );
    expect_429(&api.send_as(&gh, whoami()).await, 1, "account used up");
    for uri in [
        "/healthz",
        "/metrics",
        "/api/v1/openapi.json",
        "/.well-known/jwks.json",
    ] {
        for _ in 0..2 * RATES[0] {
            let reply = api
                .send_anonymous(from_addr(empty_request(Method::GET, uri), "10.7.7.7"))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.text());
            let reply = api
                .send_as(&gh, from_addr(empty_request(Method::GET, uri), "10.7.7.7"))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.text());
        }
    }
}

async fn login_from(api: &TestApi, username: &str, password: &str, addr: &str) -> Reply {
    api.send_anonymous(from_addr(login_request(username, password), addr))
        .await
}

/// After the allowed failed logins the account is blocked from everywhere,
/// right password or not, and the network for every account; the window
/// passing lets one more attempt through.
#[tokio::test(start_paused = true)]
async fn failed_logins_block_the_account_and_the_network() {
    let api = TestApi::start().await;
    api.create_user("alice", "org_member").await;
    api.create_user("bob", "org_member").await;
    let per_failure = (LOGIN_WINDOW / LOGIN_FAILURES).as_secs();
    assert_eq!(per_failure, 20);

    for _ in 0..LOGIN_FAILURES {
        login_from(&api, "alice", "wrong-password-123", "10.0.0.1")
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    expect_429(
        &login_from(&api, "alice", USER_PASSWORD, "10.0.0.1").await,
        per_failure,
        "the right password, after the failures",
    );
    expect_429(
        &login_from(&api, "alice", USER_PASSWORD, "172.16.0.1").await,
        per_failure,
        "the account from another network",
    );
    expect_429(
        &login_from(&api, "bob", USER_PASSWORD, "10.0.0.77").await,
        per_failure,
        "another account from that network",
    );
    expect_ok(
        &login_from(&api, "bob", USER_PASSWORD, "192.168.5.5").await,
        "another account from another network",
    );
    // Only logins are blocked: the network's other requests are not.
    expect_ok(&anonymous_from(&api, "10.0.0.1").await, "who am I");

    api.rate_clock.advance(Duration::from_secs(per_failure - 1));
    expect_429(
        &login_from(&api, "alice", USER_PASSWORD, "10.0.0.1").await,
        1,
        "a second before",
    );
    api.rate_clock.advance(Duration::from_secs(1));
    expect_ok(
        &login_from(&api, "alice", USER_PASSWORD, "10.0.0.1").await,
        "after the wait",
    );
    // A success uses nothing up; one failure is all that came back.
    login_from(&api, "alice", "wrong-password-123", "10.0.0.1")
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    expect_429(
        &login_from(&api, "alice", USER_PASSWORD, "10.0.0.1").await,
        per_failure,
        "blocked again after one more failure",
    );
}

/// Failures for names without an account, or not even valid names, are
/// counted too: per name where it is one, and always per network.
#[tokio::test(start_paused = true)]
async fn failures_for_unknown_names_count_against_the_network() {
    let api = TestApi::start().await;
    for name in ["nobody", "not a valid name!", ""] {
        login_from(&api, name, "whatever-password", "10.3.3.3")
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    expect_429(
        &login_from(&api, "admin", ADMIN_PASSWORD, "10.3.3.4").await,
        20,
        "the network is blocked",
    );
    expect_ok(
        &login_from(&api, "admin", ADMIN_PASSWORD, "10.3.4.4").await,
        "the admin account is not",
    );
}
