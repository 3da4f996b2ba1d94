//! `GithubClient` against a local server that answers like the GitHub REST
//! API: one token per behaviour, every request's headers checked, every
//! request's raw path recorded. Nothing here reaches the internet.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use flotilla_domain::{Level, Username};
use flotilla_github::{GithubClient, GithubConfig, GithubConfigError, GithubError, GithubIdentity};
use serde_json::json;

const ORG: &str = "acme";

struct FakeGithub {
    /// Where the API lives on the server: "" like api.github.com, or
    /// "/api/v3" like GitHub Enterprise.
    prefix: &'static str,
    /// The organisation as it must appear in the path, percent-encoded.
    org_in_path: &'static str,
    /// The raw path of every request, in order.
    paths: Mutex<Vec<String>>,
}

/// The login each token belongs to, for tokens whose `/user` call succeeds.
fn login_of(token: &str) -> Option<&'static str> {
    Some(match token {
        "ghp_active" => "alice",
        "ghp_outsider" => "bob",
        "ghp_pending" => "carol",
        "ghp_member_429" => "dave",
        "ghp_member_502" => "erin",
        "ghp_sso" => "frank",
        "ghp_member_malformed" => "gina",
        "ghp_revoked_later" => "hank",
        "ghp_bot" => "dependabot[bot]",
        _ => return None,
    })
}

fn message(status: StatusCode, text: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "message": text,
            "documentation_url": "https://docs.github.com/rest",
        })),
    )
        .into_response()
}

fn json_text(status: StatusCode, body: &'static str) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn answer(State(fake): State<Arc<FakeGithub>>, uri: Uri, headers: HeaderMap) -> Response {
    fake.paths.lock().unwrap().push(uri.path().to_owned());

    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("accept") != Some("application/vnd.github+json")
        || header("x-github-api-version") != Some("2022-11-28")
        || !header("user-agent").is_some_and(|ua| ua.starts_with("flotilla"))
    {
        return message(StatusCode::BAD_REQUEST, "missing GitHub API headers");
    }
    let Some(token) = header("authorization").and_then(|v| v.strip_prefix("Bearer ")) else {
        return message(StatusCode::UNAUTHORIZED, "Requires authentication");
    };
    let Some(path) = uri.path().strip_prefix(fake.prefix) else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };

    if path == "/user" {
        return match token {
            "ghp_revoked" => message(StatusCode::UNAUTHORIZED, "Bad credentials"),
            "ghp_noscope" => message(StatusCode::FORBIDDEN, "Resource not accessible"),
            "ghp_user_429" => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "30")],
                "slow down",
            )
                .into_response(),
            "ghp_exhausted" => (
                StatusCode::FORBIDDEN,
                [
                    ("x-ratelimit-limit", "5000".to_owned()),
                    ("x-ratelimit-remaining", "0".to_owned()),
                    ("x-ratelimit-reset", (now_unix() + 60).to_string()),
                ],
                axum::Json(json!({ "message": "API rate limit exceeded" })),
            )
                .into_response(),
            "ghp_secondary" => (
                StatusCode::FORBIDDEN,
                [("retry-after", "45"), ("x-ratelimit-remaining", "4000")],
                axum::Json(json!({ "message": "You have exceeded a secondary rate limit" })),
            )
                .into_response(),
            "ghp_user_500" => message(StatusCode::INTERNAL_SERVER_ERROR, "Server Error"),
            "ghp_malformed" => json_text(StatusCode::OK, r#"{"login": "alice", "id": "#),
            "ghp_slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                message(StatusCode::OK, "too late")
            }
            _ => match login_of(token) {
                Some(login) => axum::Json(json!({
                    "login": login,
                    "id": 1,
                    "type": "User",
                }))
                .into_response(),
                None => message(StatusCode::UNAUTHORIZED, "Bad credentials"),
            },
        };
    }

    let Some(rest) = path.strip_prefix("/orgs/") else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    let Some((org, login)) = rest.split_once("/memberships/") else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    if org != fake.org_in_path {
        return message(StatusCode::NOT_FOUND, "Not Found");
    }
    // Asking about anyone but the token's owner is a bug in the client, not
    // a non-member: say so loudly.
    if login_of(token) != Some(login) {
        return message(StatusCode::BAD_REQUEST, "asked about the wrong user");
    }
    let membership = |state: &str, role: &str| {
        axum::Json(json!({
            "url": format!("https://api.github.com/orgs/{ORG}/memberships/{login}"),
            "state": state,
            "role": role,
            "organization": { "login": ORG },
            "user": { "login": login },
        }))
        .into_response()
    };
    match token {
        "ghp_active" => membership("active", "member"),
        "ghp_pending" => membership("pending", "member"),
        "ghp_outsider" => message(StatusCode::NOT_FOUND, "Not Found"),
        "ghp_member_429" => (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response(),
        "ghp_member_502" => (
            StatusCode::BAD_GATEWAY,
            [("content-type", "text/html")],
            "<html><body>Bad gateway</body></html>",
        )
            .into_response(),
        "ghp_sso" => message(
            StatusCode::FORBIDDEN,
            "Resource protected by organization SAML enforcement",
        ),
        "ghp_member_malformed" => json_text(StatusCode::OK, "<html>unicorn</html>"),
        "ghp_revoked_later" => message(StatusCode::UNAUTHORIZED, "Bad credentials"),
        _ => message(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// Starts a fake GitHub on a free loopback port; returns its API URL.
async fn start(prefix: &'static str, org_in_path: &'static str) -> (String, Arc<FakeGithub>) {
    let fake = Arc::new(FakeGithub {
        prefix,
        org_in_path,
        paths: Mutex::new(Vec::new()),
    });
    let app = Router::new().fallback(answer).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}{prefix}"), fake)
}

fn client(api_url: &str, org: &str) -> GithubClient {
    GithubClient::new(GithubConfig {
        api_url: api_url.to_owned(),
        org: org.to_owned(),
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

fn identity(login: &str, level: Level) -> GithubIdentity {
    GithubIdentity {
        login: Username::new(login).unwrap(),
        level,
    }
}

/// Identifies `token`, and checks that neither the result's `Debug` nor an
/// error's message contains the token.
async fn identify(client: &GithubClient, token: &str) -> Result<GithubIdentity, GithubError> {
    let result = client.identify(token).await;
    if !token.is_empty() {
        assert!(!format!("{result:?}").contains(token), "{result:?}");
        if let Err(error) = &result {
            assert!(!error.to_string().contains(token), "{error}");
        }
    }
    result
}

#[tokio::test]
async fn an_active_member_of_the_org_is_an_org_member() {
    let (api, fake) = start("", ORG).await;
    let github = client(&api, ORG);
    assert_eq!(
        identify(&github, "ghp_active").await,
        Ok(identity("alice", Level::OrgMember))
    );
    assert_eq!(
        *fake.paths.lock().unwrap(),
        ["/user", "/orgs/acme/memberships/alice"]
    );
}

#[tokio::test]
async fn a_user_outside_the_org_is_a_github_member() {
    let (api, _fake) = start("", ORG).await;
    assert_eq!(
        identify(&client(&api, ORG), "ghp_outsider").await,
        Ok(identity("bob", Level::GithubMember))
    );
}

#[tokio::test]
async fn a_pending_membership_is_not_an_org_member() {
    let (api, _fake) = start("", ORG).await;
    assert_eq!(
        identify(&client(&api, ORG), "ghp_pending").await,
        Ok(identity("carol", Level::GithubMember))
    );
}

#[tokio::test]
async fn a_token_github_refuses_is_a_bad_token() {
    let (api, fake) = start("", ORG).await;
    let github = client(&api, ORG);
    assert_eq!(
        identify(&github, "ghp_revoked").await,
        Err(GithubError::BadToken)
    );
    // Never got as far as asking about membership.
    assert_eq!(*fake.paths.lock().unwrap(), ["/user"]);
    assert_eq!(
        identify(&github, "ghp_noscope").await,
        Err(GithubError::BadToken)
    );
    // Revoked between the two calls.
    assert_eq!(
        identify(&github, "ghp_revoked_later").await,
        Err(GithubError::BadToken)
    );
    // Not something GitHub would ever issue; not sent at all.
    assert_eq!(identify(&github, "").await, Err(GithubError::BadToken));
    assert_eq!(
        identify(&github, "ghp_x\r\nX-Evil: 1").await,
        Err(GithubError::BadToken)
    );
    assert_eq!(fake.paths.lock().unwrap().len(), 4);
    assert!(GithubError::BadToken.to_string().contains("read:org"));
}

#[tokio::test]
async fn a_token_that_may_not_read_the_org_is_told_so() {
    let (api, _fake) = start("", ORG).await;
    let error = identify(&client(&api, ORG), "ghp_sso").await.unwrap_err();
    assert_eq!(
        error,
        GithubError::OrgAccessDenied {
            org: ORG.to_owned()
        }
    );
    assert!(error.to_string().contains("read:org"), "{error}");
}

#[tokio::test]
async fn a_429_from_user_is_rate_limited_with_its_retry_after() {
    let (api, _fake) = start("", ORG).await;
    let error = identify(&client(&api, ORG), "ghp_user_429")
        .await
        .unwrap_err();
    assert_eq!(
        error,
        GithubError::RateLimited {
            retry_after: Some(Duration::from_secs(30))
        }
    );
    assert!(error.to_string().contains("try again in 30 s"), "{error}");
}

#[tokio::test]
async fn a_429_from_the_membership_call_is_rate_limited_not_a_downgrade() {
    let (api, _fake) = start("", ORG).await;
    assert_eq!(
        identify(&client(&api, ORG), "ghp_member_429").await,
        Err(GithubError::RateLimited { retry_after: None })
    );
}

#[tokio::test]
async fn a_403_with_no_requests_remaining_is_rate_limited_until_the_reset() {
    let (api, _fake) = start("", ORG).await;
    let error = identify(&client(&api, ORG), "ghp_exhausted")
        .await
        .unwrap_err();
    let GithubError::RateLimited {
        retry_after: Some(wait),
    } = error
    else {
        panic!("expected a rate limit with a reset time, got {error:?}");
    };
    // The fake's reset is 60 s after its clock's second, read just before.
    assert!(
        (Duration::from_secs(58)..=Duration::from_secs(60)).contains(&wait),
        "{wait:?}"
    );
}

#[tokio::test]
async fn a_403_secondary_rate_limit_is_rate_limited() {
    let (api, _fake) = start("", ORG).await;
    assert_eq!(
        identify(&client(&api, ORG), "ghp_secondary").await,
        Err(GithubError::RateLimited {
            retry_after: Some(Duration::from_secs(45))
        })
    );
}

#[tokio::test]
async fn a_500_from_user_is_unavailable() {
    let (api, _fake) = start("", ORG).await;
    let error = identify(&client(&api, ORG), "ghp_user_500")
        .await
        .unwrap_err();
    assert_eq!(
        error,
        GithubError::Unavailable {
            detail: format!("GET {api}/user answered 500 Internal Server Error")
        }
    );
    assert!(error.to_string().contains("GitHub's side"), "{error}");
}

#[tokio::test]
async fn a_502_from_the_membership_call_is_unavailable_not_a_downgrade() {
    let (api, _fake) = start("", ORG).await;
    assert_eq!(
        identify(&client(&api, ORG), "ghp_member_502").await,
        Err(GithubError::Unavailable {
            detail: format!("GET {api}/orgs/acme/memberships/erin answered 502 Bad Gateway")
        })
    );
}

#[tokio::test]
async fn a_login_that_is_not_a_valid_username_is_a_bad_login() {
    let (api, fake) = start("", ORG).await;
    let error = identify(&client(&api, ORG), "ghp_bot").await.unwrap_err();
    let GithubError::BadLogin(name_error) = &error else {
        panic!("expected a bad login, got {error:?}");
    };
    assert_eq!(name_error.value, "dependabot[bot]");
    assert_eq!(Username::new("dependabot[bot]").unwrap_err(), *name_error);
    assert!(error.to_string().contains("dependabot[bot]"), "{error}");
    assert_eq!(*fake.paths.lock().unwrap(), ["/user"]);
}

#[tokio::test]
async fn malformed_json_is_unavailable() {
    let (api, _fake) = start("", ORG).await;
    let github = client(&api, ORG);
    for (token, url) in [
        ("ghp_malformed", format!("{api}/user")),
        (
            "ghp_member_malformed",
            format!("{api}/orgs/acme/memberships/gina"),
        ),
    ] {
        let error = identify(&github, token).await.unwrap_err();
        let GithubError::Unavailable { detail } = &error else {
            panic!("{token}: expected unavailable, got {error:?}");
        };
        assert!(
            detail.starts_with(&format!(
                "GET {url} answered 200 OK with a body that is not the JSON GitHub documents: "
            )),
            "{detail}"
        );
    }
}

#[tokio::test]
async fn a_timeout_is_unavailable() {
    let (api, _fake) = start("", ORG).await;
    let github = GithubClient::new(GithubConfig {
        api_url: api.clone(),
        org: ORG.to_owned(),
        timeout: Duration::from_millis(300),
    })
    .unwrap();
    assert_eq!(
        identify(&github, "ghp_slow").await,
        Err(GithubError::Unavailable {
            detail: format!("GET {api}/user timed out after 300ms")
        })
    );
}

#[tokio::test]
async fn no_server_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let error = identify(&client(&api, ORG), "ghp_active")
        .await
        .unwrap_err();
    let GithubError::Unavailable { detail } = &error else {
        panic!("expected unavailable, got {error:?}");
    };
    assert!(detail.starts_with(&format!("GET {api}/user: ")), "{detail}");
    assert!(detail.contains("onnect"), "{detail}");
}

#[tokio::test]
async fn an_enterprise_api_url_and_an_org_that_needs_encoding() {
    let (api, fake) = start("/api/v3", "acme%20corp%2Fops%25").await;
    assert!(api.ends_with("/api/v3"));
    for api_url in [api.clone(), format!("{api}/")] {
        assert_eq!(
            identify(&client(&api_url, "acme corp/ops%"), "ghp_active").await,
            Ok(identity("alice", Level::OrgMember))
        );
    }
    let expected = [
        "/api/v3/user",
        "/api/v3/orgs/acme%20corp%2Fops%25/memberships/alice",
    ];
    assert_eq!(*fake.paths.lock().unwrap(), [expected, expected].concat());
}

#[tokio::test]
async fn configs_that_cannot_work_are_refused() {
    let config = |api_url: &str, org: &str, timeout: Duration| GithubConfig {
        api_url: api_url.to_owned(),
        org: org.to_owned(),
        timeout,
    };
    let second = Duration::from_secs(1);
    assert!(matches!(
        GithubClient::new(config("http://ghe.example.com/api/v3", ORG, second)),
        Err(GithubConfigError::BadApiUrl { .. })
    ));
    assert!(matches!(
        GithubClient::new(config("ghe.example.com", ORG, second)),
        Err(GithubConfigError::BadApiUrl { .. })
    ));
    assert_eq!(
        GithubClient::new(config("https://ghe.example.com/api/v3", "", second)).unwrap_err(),
        GithubConfigError::BadOrg { org: String::new() }
    );
    assert_eq!(
        GithubClient::new(config(
            "https://ghe.example.com/api/v3",
            ORG,
            Duration::ZERO
        ))
        .unwrap_err(),
        GithubConfigError::ZeroTimeout
    );
}

#[test]
fn the_default_config_is_github_com_and_debug_shows_no_secrets() {
    let config = GithubConfig::new(ORG);
    assert_eq!(config.api_url, "https://api.github.com");
    let github = GithubClient::new(config).unwrap();
    assert_eq!(
        format!("{github:?}"),
        r#"GithubClient { api_url: "https://api.github.com/", org: "acme", timeout: 10s, .. }"#
    );
}
