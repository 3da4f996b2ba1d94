//! Tokens over HTTP: every forgery and mangling refused with 401 and its own
//! code (never a silent fall back to anonymous), revocation when an account
//! changes, refresh and logout, the JWKS checked by an independent library,
//! and key rotation.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::TimeDelta;
use common::{
    empty_request, json_request, Reply, TestApi, ACCESS_LIFETIME, ADMIN_PASSWORD, ISSUER,
    USER_PASSWORD,
};
use flotilla_domain::{ClusterName, Level, Username};
use flotilla_identity::{KeyRing, TokenIssuer, ACCESS_AUDIENCE};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// A token's header and payload as JSON, and its signature part as sent.
fn split(token: &str) -> (Value, Value, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    (
        serde_json::from_slice(&unb64(parts[0])).unwrap(),
        serde_json::from_slice(&unb64(parts[1])).unwrap(),
        parts[2].to_owned(),
    )
}

fn join(header: &Value, payload: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes()),
    )
}

/// Signs any header and claims with the Ed25519 key in `<dir>/<kid>.pem`.
fn sign_ed(
    dir: &std::path::Path,
    kid: &str,
    header: &jsonwebtoken::Header,
    claims: &Value,
) -> String {
    let pem = std::fs::read_to_string(dir.join(format!("{kid}.pem"))).unwrap();
    let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(der)
        .unwrap();
    let key = jsonwebtoken::EncodingKey::from_ed_der(&der);
    jsonwebtoken::encode(header, claims, &key).unwrap()
}

fn header(alg: jsonwebtoken::Algorithm, typ: &str, kid: &str) -> jsonwebtoken::Header {
    let mut h = jsonwebtoken::Header::new(alg);
    h.typ = Some(typ.to_owned());
    h.kid = Some(kid.to_owned());
    h
}

/// The claims of a valid admin access token, now.
fn admin_claims(api: &TestApi) -> Value {
    let now = api.engine.now().timestamp();
    json!({
        "sub": "admin",
        "level": "admin",
        "clusters": ["admin"],
        "iat": now,
        "exp": now + 600,
        "iss": ISSUER,
        "aud": ACCESS_AUDIENCE,
        "jti": "forged",
    })
}

/// The requests a bad token is tried on: who-am-I and a public cluster's
/// STATUS (both of which would answer an anonymous caller), and an admin
/// route.
fn probes() -> Vec<Request<Body>> {
    vec![
        empty_request(Method::GET, "/api/v1/auth/whoami"),
        empty_request(Method::GET, "/api/v1/clusters/pub"),
        empty_request(Method::GET, "/api/v1/clusters"),
        empty_request(Method::GET, "/api/v1/users"),
        json_request(
            Method::PUT,
            "/api/v1/clusters/admin",
            &common::deploy_body(1),
        ),
    ]
}

#[track_caller]
fn expect_401(reply: &Reply, code: &str, what: &str) {
    assert_eq!(
        (reply.status, reply.code().as_deref()),
        (StatusCode::UNAUTHORIZED, Some(code)),
        "{what}: {}",
        reply.text()
    );
    reply.expect_error(StatusCode::UNAUTHORIZED, code);
    assert_eq!(
        reply.headers[header::WWW_AUTHENTICATE],
        "Bearer realm=\"flotilla\"",
        "{what}"
    );
}

async fn expect_refused(api: &TestApi, token: &str, code: &str, what: &str) {
    for req in probes() {
        let route = format!("{what}: {} {}", req.method(), req.uri());
        let reply = api.send_as(token, req).await;
        expect_401(&reply, code, &route);
    }
}

/// An org member's token, a cluster token for the admin's own cluster and
/// one for a cluster named like the API's audience, on a server with a
/// public cluster `pub`.
struct Fixture {
    api: TestApi,
    member: String,
    cluster_token: String,
    api_named_cluster_token: String,
}

async fn fixture() -> Fixture {
    let api = TestApi::start().await;
    api.deploy(
        "pub",
        &json!({"node_capacity": 1, "time_to_live": 3600, "is_public": true}),
        false,
    )
    .await;
    let member = api.user_token("member", "org_member").await;
    let cluster_token = |cluster: &str| {
        let uri = format!("/api/v1/clusters/{cluster}/token");
        let api = &api;
        async move {
            let reply = api.send(empty_request(Method::POST, &uri)).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            reply.json()["token"].as_str().unwrap().to_owned()
        }
    };
    let for_admin = cluster_token("admin").await;
    let named_like_api = cluster_token(ACCESS_AUDIENCE).await;
    Fixture {
        member,
        cluster_token: for_admin,
        api_named_cluster_token: named_like_api,
        api,
    }
}

/// Every forgery we know of, and every kind of mangled or misused token:
/// 401 with the code of `TokenError::code`, on every route, including the
/// ones an anonymous caller could use.
#[tokio::test(start_paused = true)]
async fn forged_and_misused_tokens_are_401_with_their_code() {
    let f = fixture().await;
    let api = &f.api;
    // The real tokens work, so what follows is about the changes.
    for token in [&api.admin_token, &f.member] {
        let reply = api
            .send_as(token, empty_request(Method::GET, "/api/v1/auth/whoami"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let kid = api.identity.tokens().active_kid();
    let claims = admin_claims(api);
    let jwks = api.get("/.well-known/jwks.json").await.json();
    let public_key = unb64(jwks["keys"][0]["x"].as_str().unwrap());
    assert_eq!(public_key.len(), 32);

    let mut cases: Vec<(&str, String, &str)> = Vec::new();

    // alg none, no signature.
    let none_header = json!({"alg": "none", "typ": "at+jwt", "kid": kid});
    cases.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(none_header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        ),
        "token_bad_algorithm",
    ));
    // HS256, keyed with the public key from the JWKS (both as raw bytes
    // and as the JWK's text).
    for secret in [public_key.clone(), jwks["keys"][0].to_string().into_bytes()] {
        cases.push((
            "HS256 keyed with the public key",
            jsonwebtoken::encode(
                &header(jsonwebtoken::Algorithm::HS256, "at+jwt", &kid),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(&secret).unwrap(),
            )
            .unwrap(),
            "token_bad_algorithm",
        ));
    }
    // Our own token with its signature flipped.
    let (h, p, sig) = split(&api.admin_token);
    let mut flipped = unb64(&sig);
    flipped[10] ^= 0x01;
    cases.push((
        "flipped signature",
        join(&h, &p, &b64(&flipped)),
        "token_bad_signature",
    ));
    cases.push(("no signature", join(&h, &p, ""), "token_bad_signature"));
    // The member's token made admin without re-signing.
    let (h, mut p, sig) = split(&f.member);
    p["level"] = json!("admin");
    cases.push((
        "level changed to admin",
        join(&h, &p, &sig),
        "token_bad_signature",
    ));
    let (h, mut p, sig) = split(&f.member);
    p["clusters"] = json!(["member", "pub"]);
    cases.push(("a cluster added", join(&h, &p, &sig), "token_bad_signature"));

    // Signed by another keyring with the same issuer name.
    let other = tempfile::tempdir().unwrap();
    let other_keys = KeyRing::load_or_create(other.path().join("keys")).unwrap();
    let other_kid = other_keys.active_kid().to_owned();
    let other_issuer = TokenIssuer::new(
        other_keys,
        ISSUER,
        ACCESS_LIFETIME,
        Duration::from_secs(3600),
    );
    let admin = Username::new("admin").unwrap();
    let admin_clusters = BTreeSet::from([ClusterName::new("admin").unwrap()]);
    cases.push((
        "another keyring",
        other_issuer
            .issue_access(&admin, Level::Admin, &admin_clusters, api.engine.now())
            .unwrap()
            .token,
        "token_unknown_key",
    ));
    // ...and the same, claiming our key's id.
    cases.push((
        "another key under our kid",
        sign_ed(
            &other.path().join("keys"),
            &other_kid,
            &header(jsonwebtoken::Algorithm::EdDSA, "at+jwt", &kid),
            &claims,
        ),
        "token_bad_signature",
    ));

    // Signed by our own key, but with claims we never issue.
    let ours =
        |header: jsonwebtoken::Header, claims: &Value| sign_ed(&api.key_dir, &kid, &header, claims);
    let eddsa = |typ: &str| header(jsonwebtoken::Algorithm::EdDSA, typ, &kid);
    let mut wrong_issuer = claims.clone();
    wrong_issuer["iss"] = json!("https://evil.example");
    cases.push((
        "wrong issuer",
        ours(eddsa("at+jwt"), &wrong_issuer),
        "token_wrong_issuer",
    ));
    let mut wrong_audience = claims.clone();
    wrong_audience["aud"] = json!("somewhere-else");
    cases.push((
        "wrong audience",
        ours(eddsa("at+jwt"), &wrong_audience),
        "token_wrong_audience",
    ));
    cases.push(("typ JWT", ours(eddsa("JWT"), &claims), "token_malformed"));
    let mut no_kid = eddsa("at+jwt");
    no_kid.kid = None;
    cases.push(("no kid", ours(no_kid, &claims), "token_malformed"));
    let mut no_level = claims.clone();
    no_level.as_object_mut().unwrap().remove("level");
    cases.push((
        "a claim missing",
        ours(eddsa("at+jwt"), &no_level),
        "token_malformed",
    ));

    // Real tokens used for the wrong purpose or at the wrong time.
    cases.push((
        "a cluster token as an API token",
        f.cluster_token.clone(),
        "token_wrong_audience",
    ));
    cases.push((
        "a cluster token for a cluster named flotilla-api",
        f.api_named_cluster_token.clone(),
        "token_wrong_kind",
    ));
    let tokens = api.identity.tokens();
    let now = api.engine.now();
    cases.push((
        "expired",
        tokens
            .issue_access(
                &admin,
                Level::Admin,
                &admin_clusters,
                now - TimeDelta::from_std(ACCESS_LIFETIME).unwrap() - TimeDelta::seconds(1),
            )
            .unwrap()
            .token,
        "token_expired",
    ));
    cases.push((
        "issued in the future",
        tokens
            .issue_access(
                &admin,
                Level::Admin,
                &admin_clusters,
                now + TimeDelta::minutes(5),
            )
            .unwrap()
            .token,
        "token_not_yet_valid",
    ));

    // Not a token at all.
    cases.push(("garbage", "garbage".to_owned(), "token_malformed"));
    cases.push(("three empty parts", "..".to_owned(), "token_malformed"));
    cases.push((
        "four parts",
        format!("{}.x", api.admin_token),
        "token_malformed",
    ));
    cases.push(("too long", "a".repeat(100_000), "token_malformed"));

    for (what, token, code) in &cases {
        expect_refused(api, token, code, what).await;
    }
    // Nothing was deployed by any of them.
    let admin_cluster = api.status("admin").await;
    assert_eq!(admin_cluster["state"], "not_running", "{admin_cluster}");
}

/// Only `Authorization: Bearer <token>` is taken (the scheme in any case);
/// any other scheme or shape is 401 not_authenticated, not anonymous.
#[tokio::test(start_paused = true)]
async fn only_bearer_authorization_is_accepted() {
    let f = fixture().await;
    let api = &f.api;
    let whoami = |value: HeaderValue| {
        let mut req = empty_request(Method::GET, "/api/v1/auth/whoami");
        req.headers_mut().insert(header::AUTHORIZATION, value);
        req
    };
    for value in [
        HeaderValue::from_static("Basic YWRtaW46YWRtaW4tcGFzc3dvcmQtZm9yLXRlc3Rz"),
        HeaderValue::from_str(&format!("Token {}", f.member)).unwrap(),
        HeaderValue::from_str(&format!("Bearer{}", f.member)).unwrap(),
        HeaderValue::from_str(&f.member).unwrap(),
        HeaderValue::from_static("Bearer"),
        HeaderValue::from_static("Bearer    "),
        HeaderValue::from_static(""),
        HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
    ] {
        let shown = format!("{value:?}");
        let reply = api.send(whoami(value)).await;
        expect_401(&reply, "not_authenticated", &shown);
    }
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let value = HeaderValue::from_str(&format!("{scheme} {}", f.member)).unwrap();
        let reply = api.send(whoami(value)).await;
        assert_eq!(reply.status, StatusCode::OK, "{scheme}: {}", reply.text());
        assert_eq!(reply.json()["username"], "member");
    }
    // Open routes do not look at the header at all.
    let mut req = empty_request(Method::GET, "/healthz");
    req.headers_mut()
        .insert(header::AUTHORIZATION, HeaderValue::from_static("garbage"));
    assert_eq!(api.send(req).await.status, StatusCode::OK);
}

/// An access token stops working when its lifetime has passed on the
/// server's clock (which follows tokio's paused time).
#[tokio::test(start_paused = true)]
async fn access_tokens_expire_with_time() {
    let api = TestApi::start().await;
    let login = api.login("admin", ADMIN_PASSWORD).await;
    let token = login["access_token"].as_str().unwrap();
    let expires_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(login["expires_at"].clone()).unwrap();
    let left = (expires_at - api.engine.now()).to_std().unwrap();
    // Tokens are dated in whole seconds, so the lifetime is counted from
    // the start of the second.
    assert!(
        left <= ACCESS_LIFETIME && left > ACCESS_LIFETIME - Duration::from_secs(1),
        "{left:?}"
    );
    assert_eq!(login["expires_in"], left.as_secs(), "{login}");
    let whoami = || empty_request(Method::GET, "/api/v1/auth/whoami");

    tokio::time::advance(left - Duration::from_millis(1)).await;
    assert_eq!(api.send_as(token, whoami()).await.status, StatusCode::OK);
    tokio::time::advance(Duration::from_millis(1)).await;
    let reply = api.send_as(token, whoami()).await;
    expect_401(&reply, "token_expired", "at its expiry");
    // Refreshing gives a working one.
    let refreshed = refresh(&api, login["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text());
    let fresh = refreshed.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(api.send_as(&fresh, whoami()).await.status, StatusCode::OK);
}

// ---- revocation --------------------------------------------------------------

fn patch_user(username: &str, body: Value) -> Request<Body> {
    json_request(Method::PATCH, &format!("/api/v1/users/{username}"), &body)
}

async fn whoami(api: &TestApi, token: &str) -> Reply {
    api.send_as(token, empty_request(Method::GET, "/api/v1/auth/whoami"))
        .await
}

/// Lowering a user's level revokes their earlier access tokens at once;
/// a new sign-in has the new level.
#[tokio::test(start_paused = true)]
async fn a_demotion_revokes_earlier_tokens_at_once() {
    let api = TestApi::start().await;
    let first = api.user_token("dora", "org_member").await;
    let second = api.login("dora", USER_PASSWORD).await;
    let second = second["access_token"].as_str().unwrap();
    assert_eq!(whoami(&api, &first).await.json()["level"], "org_member");

    let reply = api
        .send(patch_user("dora", json!({"level": "github_member"})))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["level"], "github_member");

    for token in [first.as_str(), second] {
        expect_401(
            &whoami(&api, token).await,
            "token_revoked",
            "after the demotion",
        );
        let deploy = api
            .send_as(
                token,
                json_request(
                    Method::PUT,
                    "/api/v1/clusters/dora",
                    &common::deploy_body(1),
                ),
            )
            .await;
        expect_401(&deploy, "token_revoked", "deploy after the demotion");
    }
    let login = api.login("dora", USER_PASSWORD).await;
    assert_eq!(login["level"], "github_member");
    let token = login["access_token"].as_str().unwrap();
    assert_eq!(whoami(&api, token).await.json()["level"], "github_member");
    api.send_as(
        token,
        json_request(
            Method::PUT,
            "/api/v1/clusters/dora",
            &common::deploy_body(1),
        ),
    )
    .await
    .expect_error(StatusCode::FORBIDDEN, "level_may_not_deploy");
    // Other accounts are not affected.
    assert_eq!(whoami(&api, &api.admin_token).await.status, StatusCode::OK);
}

/// Deleting a user revokes their access tokens and refresh tokens at once.
#[tokio::test(start_paused = true)]
async fn a_deletion_revokes_every_token_at_once() {
    let api = TestApi::start().await;
    api.create_user("dora", "org_member").await;
    let login = api.login("dora", USER_PASSWORD).await;
    let token = login["access_token"].as_str().unwrap();
    let refresh_token = login["refresh_token"].as_str().unwrap();
    assert_eq!(whoami(&api, token).await.status, StatusCode::OK);

    let reply = api.delete("/api/v1/users/dora").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());

    expect_401(
        &whoami(&api, token).await,
        "token_revoked",
        "after deletion",
    );
    expect_401(
        &refresh(&api, refresh_token).await,
        "invalid_refresh_token",
        "refresh after deletion",
    );
    expect_401(
        &api.try_login("dora", USER_PASSWORD).await,
        "invalid_credentials",
        "login after deletion",
    );
}

/// Two changes within one second: a token issued between them (dated at
/// the first change's cut-off) is revoked by the second.
#[tokio::test(start_paused = true)]
async fn a_second_change_within_the_second_revokes_tokens_issued_since_the_first() {
    let api = TestApi::start().await;
    api.create_user("dora", "org_member").await;
    let reply = api
        .send(patch_user("dora", json!({"grants": ["shared"]})))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let login = api.login("dora", USER_PASSWORD).await;
    let between = login["access_token"].as_str().unwrap();
    assert_eq!(whoami(&api, between).await.status, StatusCode::OK);

    let reply = api.delete("/api/v1/users/dora").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    expect_401(
        &whoami(&api, between).await,
        "token_revoked",
        "a token of a deleted account",
    );

    // A new account of that name, made at once, signs in and works.
    api.create_user("dora", "github_member").await;
    let again = api.login("dora", USER_PASSWORD).await;
    let reply = whoami(&api, again["access_token"].as_str().unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["level"], "github_member");
    expect_401(
        &whoami(&api, between).await,
        "token_revoked",
        "still revoked",
    );
}

/// A demotion that lands while a login checks the password (the slow part
/// of a login) is not outlived by the token that login hands out.
#[tokio::test(start_paused = true)]
async fn a_login_racing_a_demotion_does_not_outlive_it() {
    let api = TestApi::start().await;
    api.create_user("dora", "org_member").await;
    // The login reads the account, then hashes; the demotion runs while it
    // hashes.
    let (login, demotion) = tokio::join!(
        api.try_login("dora", USER_PASSWORD),
        api.send(patch_user("dora", json!({"level": "github_member"}))),
    );
    assert_eq!(demotion.status, StatusCode::OK, "{}", demotion.text());
    assert_eq!(
        api.get("/api/v1/users/dora").await.json()["level"],
        "github_member"
    );
    match login.status {
        StatusCode::OK => {
            let token = login.json()["access_token"].as_str().unwrap().to_owned();
            let reply = whoami(&api, &token).await;
            if reply.status == StatusCode::OK {
                assert_eq!(
                    reply.json()["level"],
                    "github_member",
                    "a token from before the demotion is still accepted"
                );
            } else {
                expect_401(&reply, "token_revoked", "the raced token");
            }
        }
        status => panic!("login: {status} {}", login.text()),
    }
}

// ---- refresh and logout --------------------------------------------------------

async fn refresh(api: &TestApi, refresh_token: &str) -> Reply {
    api.send_anonymous(json_request(
        Method::POST,
        "/api/v1/auth/refresh",
        &json!({"refresh_token": refresh_token}),
    ))
    .await
}

async fn logout(api: &TestApi, refresh_token: &str) -> Reply {
    api.send_anonymous(json_request(
        Method::POST,
        "/api/v1/auth/logout",
        &json!({"refresh_token": refresh_token}),
    ))
    .await
}

/// A refresh token works once: the new pair works, presenting the used one
/// again revokes the whole sign-in, the new refresh token included.
#[tokio::test(start_paused = true)]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let api = TestApi::start().await;
    api.create_user("dora", "org_member").await;
    let login = api.login("dora", USER_PASSWORD).await;
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["username"], "dora");
    assert_eq!(login["level"], "org_member");
    assert_eq!(login["clusters"], json!(["dora"]));
    let first = login["refresh_token"].as_str().unwrap().to_owned();
    assert!(first.len() >= 32, "{first}");
    let refresh_expires_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(login["refresh_expires_at"].clone()).unwrap();
    assert_eq!(
        refresh_expires_at,
        api.engine.now() + TimeDelta::hours(24),
        "the harness's refresh lifetime"
    );

    let reply = refresh(&api, &first).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let pair = reply.json();
    let second = pair["refresh_token"].as_str().unwrap().to_owned();
    let access = pair["access_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_ne!(access, login["access_token"].as_str().unwrap());
    assert_eq!(pair["username"], "dora");
    let me = whoami(&api, &access).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(me.json()["username"], "dora");

    expect_401(
        &refresh(&api, &first).await,
        "refresh_token_reused",
        "reuse",
    );
    expect_401(
        &refresh(&api, &second).await,
        "invalid_refresh_token",
        "the family is revoked",
    );
    expect_401(
        &refresh(&api, &first).await,
        "invalid_refresh_token",
        "again",
    );

    // Another sign-in of the same account is a family of its own.
    let other = api.login("dora", USER_PASSWORD).await;
    let reply = refresh(&api, other["refresh_token"].as_str().unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

/// Logout revokes its sign-in; other sign-ins of the account stay.
#[tokio::test(start_paused = true)]
async fn logout_revokes_the_sign_in() {
    let api = TestApi::start().await;
    api.create_user("dora", "org_member").await;
    let one = api.login("dora", USER_PASSWORD).await;
    let two = api.login("dora", USER_PASSWORD).await;
    let one = one["refresh_token"].as_str().unwrap();
    let two = two["refresh_token"].as_str().unwrap();

    let reply = logout(&api, one).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    assert!(reply.body.is_empty());
    expect_401(
        &refresh(&api, one).await,
        "invalid_refresh_token",
        "after logout",
    );
    // Logging out again is harmless (the store knows the token).
    let reply = logout(&api, one).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    expect_401(&refresh(&api, one).await, "invalid_refresh_token", "still");
    // The other sign-in is untouched.

    let reply = refresh(&api, two).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let three = reply.json()["refresh_token"].as_str().unwrap().to_owned();
    // Logout with the used-up token of a sign-in revokes its newer one too.
    let reply = logout(&api, two).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    expect_401(
        &refresh(&api, &three).await,
        "invalid_refresh_token",
        "logged out",
    );

    for garbage in ["", "nonsense", &"x".repeat(5000)] {
        expect_401(
            &refresh(&api, garbage).await,
            "invalid_refresh_token",
            "garbage",
        );
        expect_401(
            &logout(&api, garbage).await,
            "invalid_refresh_token",
            "garbage",
        );
    }
}

/// A refresh after a change carries the account's current level and
/// clusters.
#[tokio::test(start_paused = true)]
async fn refresh_carries_the_current_level_and_grants() {
    let api = TestApi::start().await;
    api.create_user("dora", "org_member").await;
    let login = api.login("dora", USER_PASSWORD).await;
    let reply = api
        .send(patch_user(
            "dora",
            json!({"level": "github_member", "grants": ["shared"]}),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = refresh(&api, login["refresh_token"].as_str().unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let pair = reply.json();
    assert_eq!(pair["level"], "github_member");
    assert_eq!(pair["clusters"], json!(["dora", "shared"]));
    let me = whoami(&api, pair["access_token"].as_str().unwrap()).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(
        me.json(),
        json!({"username": "dora", "level": "github_member", "clusters": ["dora", "shared"]})
    );
}

// ---- JWKS and keys -------------------------------------------------------------

mod independent {
    //! Verification with jwt-simple (not the jsonwebtoken the server uses),
    //! from nothing but the JWKS text.

    use jwt_simple::prelude::*;

    #[derive(Debug, Serialize, Deserialize)]
    pub struct FlotillaClaims {
        pub level: String,
        pub clusters: Vec<String>,
    }

    pub fn verify(
        jwks_text: &str,
        token: &str,
        audience: &str,
        issuer: &str,
        now: i64,
    ) -> Result<JWTClaims<FlotillaClaims>, String> {
        let metadata = Token::decode_metadata(token).map_err(|e| e.to_string())?;
        let kid = metadata.key_id().ok_or("no kid")?.to_owned();
        let jwks: serde_json::Value = serde_json::from_str(jwks_text).unwrap();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .ok_or_else(|| format!("no key {kid} in the JWKS"))?;
        let key = Ed25519PublicKey::from_jwk(&jwk.to_string()).map_err(|e| e.to_string())?;
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from_strings(&[issuer])),
            allowed_audiences: Some(HashSet::from_strings(&[audience])),
            required_key_id: Some(kid),
            required_signature_type: Some("cluster+jwt".to_owned()),
            artificial_time: Some(UnixTimeStamp::from_secs(now as u64)),
            time_tolerance: Some(Duration::from_secs(0)),
            ..Default::default()
        };
        key.verify_token::<FlotillaClaims>(token, Some(options))
            .map_err(|e| e.to_string())
    }
}

/// The JWKS lists the active key, public parts only.
#[tokio::test(start_paused = true)]
async fn jwks_lists_the_active_key() {
    let api = TestApi::start().await;
    let reply = api
        .send_anonymous(empty_request(Method::GET, "/.well-known/jwks.json"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.headers[header::CACHE_CONTROL], "max-age=300");
    let jwks = reply.json();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{jwks}");
    let key = &keys[0];
    assert_eq!(key["kid"], api.identity.tokens().active_kid());
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(unb64(key["x"].as_str().unwrap()).len(), 32);
    let mut members: Vec<&str> = key
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    members.sort();
    assert_eq!(
        members,
        ["alg", "crv", "kid", "kty", "use", "x"],
        "no private member"
    );
    let (h, _, _) = split(&api.admin_token);
    assert_eq!(h["kid"], key["kid"], "tokens name the active key");
}

/// A cluster token verifies with an independent library from the JWKS
/// alone, with the cluster as audience, and for nothing else.
#[tokio::test(start_paused = true)]
async fn cluster_tokens_verify_with_the_jwks_alone() {
    let api = TestApi::start().await;
    let member = api.user_token("dora", "org_member").await;
    let reply = api
        .send_as(
            &member,
            empty_request(Method::POST, "/api/v1/clusters/dora/token"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["audience"], "dora");
    let token = body["token"].as_str().unwrap();
    let expires_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(body["expires_at"].clone()).unwrap();
    let jwks = api.get("/.well-known/jwks.json").await.text();
    let now = api.engine.now().timestamp();

    let claims = independent::verify(&jwks, token, "dora", ISSUER, now).unwrap();
    assert_eq!(claims.subject.as_deref(), Some("dora"));
    assert_eq!(claims.custom.level, "org_member");
    assert_eq!(claims.custom.clusters, ["dora"]);
    assert_eq!(
        claims.expires_at.map(|t| t.as_secs() as i64),
        Some(expires_at.timestamp())
    );

    // Not for another cluster, not from another issuer, not after expiry.
    assert!(independent::verify(&jwks, token, "other", ISSUER, now).is_err());
    assert!(independent::verify(&jwks, token, "dora", "https://evil.example", now).is_err());
    assert!(independent::verify(&jwks, token, "dora", ISSUER, expires_at.timestamp() + 1).is_err());
    // An access token is not a cluster token, even to jwt-simple.
    assert!(independent::verify(&jwks, &member, "flotilla-api", ISSUER, now).is_err());
    // A tampered cluster token does not verify.
    let (h, mut p, sig) = split(token);
    p["clusters"] = json!(["dora", "prod"]);
    assert!(independent::verify(&jwks, &join(&h, &p, &sig), "dora", ISSUER, now).is_err());
}

/// Rotation: old tokens keep working and both keys are published; retiring
/// the old key refuses its tokens (token_unknown_key) and unpublishes it.
#[tokio::test(start_paused = true)]
async fn key_rotation_and_retirement() {
    let api = TestApi::start().await;
    let old_kid = api.identity.tokens().active_kid();
    let member = api.user_token("dora", "org_member").await;
    let old_admin = api.admin_token.clone();
    let old_cluster_token = {
        let reply = api
            .send_as(
                &member,
                empty_request(Method::POST, "/api/v1/clusters/dora/token"),
            )
            .await;
        reply.json()["token"].as_str().unwrap().to_owned()
    };

    let reply = api
        .send(empty_request(Method::POST, "/api/v1/auth/keys"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let new_kid = reply.json()["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);
    assert_eq!(api.identity.tokens().active_kid(), new_kid);

    let jwks = api.get("/.well-known/jwks.json").await;
    let kids: BTreeSet<String> = jwks.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kids, BTreeSet::from([old_kid.clone(), new_kid.clone()]));
    for token in [&member, &old_admin] {
        assert_eq!(whoami(&api, token).await.status, StatusCode::OK);
    }
    let now = api.engine.now().timestamp();
    independent::verify(&jwks.text(), &old_cluster_token, "dora", ISSUER, now)
        .expect("an old cluster token verifies with the old key from the JWKS");

    // New tokens are signed by the new key.
    let new_admin = api.admin_login().await;
    assert_eq!(split(&new_admin).0["kid"], new_kid.as_str());
    let new_member = api.login("dora", USER_PASSWORD).await;
    let new_member = new_member["access_token"].as_str().unwrap().to_owned();

    // The active key cannot be retired; an unknown one is 404.
    api.send_as(
        &new_admin,
        empty_request(Method::DELETE, &format!("/api/v1/auth/keys/{new_kid}")),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "key_is_active");
    api.send_as(
        &new_admin,
        empty_request(Method::DELETE, "/api/v1/auth/keys/no-such-key"),
    )
    .await
    .expect_error(StatusCode::NOT_FOUND, "key_not_found");

    let reply = api
        .send_as(
            &new_admin,
            empty_request(Method::DELETE, &format!("/api/v1/auth/keys/{old_kid}")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());

    for token in [&member, &old_admin] {
        expect_401(
            &whoami(&api, token).await,
            "token_unknown_key",
            "after retirement",
        );
    }
    for token in [&new_member, &new_admin] {
        assert_eq!(whoami(&api, token).await.status, StatusCode::OK);
    }
    let jwks = api.get("/.well-known/jwks.json").await;
    let keys = jwks.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["kid"], new_kid.as_str());
    let refused = independent::verify(&jwks.text(), &old_cluster_token, "dora", ISSUER, now);
    assert!(refused.is_err(), "the retired key is no longer published");
}
