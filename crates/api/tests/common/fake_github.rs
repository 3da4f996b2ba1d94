//! A local server that answers like the GitHub REST API for the two calls
//! flotilla makes (`GET /user`, `GET /orgs/{org}/memberships/{login}`), and
//! a `GithubClient` pointed at it. Nothing reaches the internet.
//!
//! A token says how GitHub answers: `ghp_<membership>_<login>`, where
//! `<membership>` is `active`, `pending`, `outsider` (404), or `m429`,
//! `m502`, `m503` (the membership call fails with that status). `ghp_u429`
//! and `ghp_u500` fail the `/user` call; any other token is refused with
//! 401 Bad credentials.
//!
//! It runs on real sockets, so tests that use it run in real time (under
//! paused time the runtime would jump to the client's timeout while it
//! waits for the socket).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use flotilla_github::{GithubClient, GithubConfig};
use serde_json::json;

/// The organisation whose active members are org_member.
pub const ORG: &str = "acme";

pub struct FakeGithub {
    /// The API root, e.g. `http://127.0.0.1:12345`.
    pub url: String,
    requests: Arc<AtomicUsize>,
}

impl FakeGithub {
    /// Starts the server on a free loopback port.
    pub async fn start() -> Self {
        let requests = Arc::new(AtomicUsize::new(0));
        let app = Router::new().fallback(answer).with_state(requests.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url: format!("http://{addr}"),
            requests,
        }
    }

    /// A client for this server and [`ORG`].
    pub fn client(&self) -> GithubClient {
        GithubClient::new(GithubConfig {
            api_url: self.url.clone(),
            org: ORG.to_owned(),
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    /// How many requests the server has answered.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
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

/// `(membership, login)` of a `ghp_<membership>_<login>` token.
fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("ghp_")?;
    let (membership, login) = rest.split_once('_')?;
    matches!(
        membership,
        "active" | "pending" | "outsider" | "m429" | "m502" | "m503"
    )
    .then_some((membership, login))
}

async fn answer(
    State(requests): State<Arc<AtomicUsize>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    requests.fetch_add(1, Ordering::SeqCst);
    let Some(token) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return message(StatusCode::UNAUTHORIZED, "Requires authentication");
    };
    let path = uri.path();
    if path == "/user" {
        return match token {
            "ghp_u429" => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "30")],
                "slow down",
            )
                .into_response(),
            "ghp_u500" => message(StatusCode::INTERNAL_SERVER_ERROR, "Server Error"),
            _ => match parse(token) {
                Some((_, login)) => {
                    axum::Json(json!({ "login": login, "id": 1, "type": "User" })).into_response()
                }
                None => message(StatusCode::UNAUTHORIZED, "Bad credentials"),
            },
        };
    }
    let Some((org, login)) = path
        .strip_prefix("/orgs/")
        .and_then(|rest| rest.split_once("/memberships/"))
    else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    let Some((membership, owner)) = parse(token) else {
        return message(StatusCode::UNAUTHORIZED, "Bad credentials");
    };
    if org != ORG || login != owner {
        return message(StatusCode::BAD_REQUEST, "asked about the wrong org or user");
    }
    let state = |state: &str| {
        axum::Json(json!({
            "state": state,
            "role": "member",
            "organization": { "login": ORG },
            "user": { "login": login },
        }))
        .into_response()
    };
    match membership {
        "active" => state("active"),
        "pending" => state("pending"),
        "outsider" => message(StatusCode::NOT_FOUND, "Not Found"),
        "m429" => (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response(),
        "m502" => (StatusCode::BAD_GATEWAY, "<html>Bad gateway</html>").into_response(),
        _ => message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
    }
}
