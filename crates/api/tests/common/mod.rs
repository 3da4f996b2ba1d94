//! The API router on an engine that runs on the fake cloud and a memory
//! store, driven in-process with `oneshot`: no sockets, so tests can run
//! under paused time.

#![allow(dead_code)]

pub mod fake_github;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use flotilla_api::ratelimit::{RateClock, RateLimits};
use flotilla_api::{router, AppState};
use flotilla_cloud::fake::{FakeCloud, FakeConfig};
use flotilla_cloud::{InstanceSet, Throttled, TokioClock};
use flotilla_domain::{InstanceType, Limits, PoolName};
use flotilla_engine::{Engine, EngineConfig, EngineTasks, PoolSpec};
use flotilla_github::GithubClient;
use flotilla_identity::{Identity, IdentityConfig, KeyRing, TokenIssuer};
use flotilla_store::MemoryStore;
use governor::clock::FakeRelativeClock;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tower::ServiceExt;

/// The limits the tests probe the edges of.
pub const MIN_TTL: i64 = 60;
pub const MAX_TTL: i64 = 7 * 24 * 3600;
pub const MAX_NODES: i64 = 10;

pub fn config() -> EngineConfig {
    EngineConfig {
        limits: Limits {
            min_ttl: Duration::from_secs(MIN_TTL as u64),
            max_ttl: Duration::from_secs(MAX_TTL as u64),
            max_nodes: MAX_NODES as u32,
        },
        concurrency: 16,
        ..EngineConfig::default()
    }
}

pub fn pools() -> BTreeMap<PoolName, PoolSpec> {
    let pool = |ty: &str| PoolSpec {
        allow_exec: ty == "fake.big",
        ssh_user: (ty == "fake.big").then(|| "ops".to_owned()),
        allow_workload: ty == "fake.big",
        // $0.10 per node-hour.
        ..PoolSpec::new("fake", InstanceType::new(ty).unwrap())
            .with_price(flotilla_domain::Money::from_micros(100_000))
    };
    BTreeMap::from([
        (PoolName::new("default").unwrap(), pool("fake.small")),
        (PoolName::new("big").unwrap(), pool("fake.big")),
    ])
}

/// A valid DEPLOY body.
pub fn deploy_body(nodes: i64) -> Value {
    serde_json::json!({"node_capacity": nodes, "time_to_live": 3600})
}

/// The first admin's password in every test server.
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

/// Requests per minute of each level in tests (anonymous, github member,
/// org member, admin).
pub const RATES: [u32; 4] = [30, 60, 120, 100_000];

/// Failed logins allowed per account and per network in `LOGIN_WINDOW`.
pub const LOGIN_FAILURES: u32 = 3;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// The `iss` of every token the test server issues.
pub const ISSUER: &str = "flotilla-test";
/// Lifetime of access tokens in the test server.
pub const ACCESS_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The password of every account made by [`TestApi::create_user`].
pub const USER_PASSWORD: &str = "user-password-for-tests";

/// How to build a [`TestApi`] other than the default.
#[derive(Default)]
pub struct Options {
    /// The engine's global node limit; [`MAX_NODES`] if unset.
    pub max_nodes: Option<u32>,
    /// GitHub sign-in, e.g. pointed at [`fake_github::FakeGithub`];
    /// disabled if unset.
    pub github: Option<GithubClient>,
}

pub struct TestApi {
    pub router: Router,
    pub engine: Engine,
    pub tasks: Option<EngineTasks>,
    pub cloud: FakeCloud,
    pub identity: Arc<Identity>,
    pub store: Arc<MemoryStore>,
    /// Drives the rate limiters.
    pub rate_clock: FakeRelativeClock,
    /// The admin's access token, sent by `send` unless a request has its own
    /// Authorization header.
    pub admin_token: String,
    /// The keyring's directory (`<kid>.pem` and `active`).
    pub key_dir: PathBuf,
    _keys: tempfile::TempDir,
}

impl TestApi {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        // RUST_LOG=debug shows the engine's decisions when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let cloud = FakeCloud::new(FakeConfig::default());
        let set: Arc<dyn InstanceSet> =
            Arc::new(Throttled::new(cloud.instance_set("test-set"), None));
        let mut registry = Registry::default();
        let store = Arc::new(MemoryStore::new());
        let mut config = config();
        if let Some(max_nodes) = options.max_nodes {
            config.limits.max_nodes = max_nodes;
        }
        let (engine, tasks) = Engine::start(
            config,
            store.clone(),
            BTreeMap::from([("fake".to_owned(), set)]),
            pools(),
            PoolName::new("default").unwrap(),
            Arc::new(TokioClock::default()),
            &mut registry,
        )
        .await
        .expect("engine starts");
        let keys = tempfile::tempdir().unwrap();
        let key_dir = keys.path().join("keys");
        let tokens = TokenIssuer::new(
            KeyRing::load_or_create(&key_dir).unwrap(),
            ISSUER,
            ACCESS_LIFETIME,
            Duration::from_secs(3600),
        );
        let identity = Arc::new(Identity::new(
            store.clone(),
            tokens,
            options.github,
            IdentityConfig {
                refresh_token_ttl: Duration::from_secs(24 * 3600),
                max_concurrent_hashes: 2,
            },
        ));
        assert!(identity
            .bootstrap_admin(ADMIN_PASSWORD, engine.now())
            .await
            .unwrap());
        let admin_token = identity
            .login("admin", ADMIN_PASSWORD, engine.now())
            .await
            .unwrap()
            .access
            .token;
        let rate_clock = FakeRelativeClock::default();
        let limits = Arc::new(RateLimits::new(
            RATES,
            LOGIN_FAILURES,
            LOGIN_WINDOW,
            RateClock::Manual(rate_clock.clone()),
        ));
        let router = router(AppState {
            engine: engine.clone(),
            control: flotilla_control::Control::new(
                engine.clone(),
                Arc::new(flotilla_control::PoolCatalog::plain([("fake", "fake")])),
            ),
            identity: identity.clone(),
            limits,
            registry: Arc::new(registry),
        });
        Self {
            router,
            engine,
            tasks: Some(tasks),
            cloud,
            identity,
            store,
            rate_clock,
            admin_token,
            key_dir,
            _keys: keys,
        }
    }

    /// Creates a local account through the API, as the admin.
    pub async fn create_user(&self, username: &str, level: &str) -> Value {
        self.create_user_with_grants(username, level, &[]).await
    }

    pub async fn create_user_with_grants(
        &self,
        username: &str,
        level: &str,
        grants: &[&str],
    ) -> Value {
        let reply = self
            .send(json_request(
                Method::POST,
                "/api/v1/users",
                &serde_json::json!({
                    "username": username,
                    "password": USER_PASSWORD,
                    "level": level,
                    "grants": grants,
                }),
            ))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()
    }

    /// LOGIN through the API, which must succeed; the token response.
    pub async fn login(&self, username: &str, password: &str) -> Value {
        let reply = self.try_login(username, password).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()
    }

    /// LOGIN through the API, whatever the answer.
    pub async fn try_login(&self, username: &str, password: &str) -> Reply {
        self.send_anonymous(login_request(username, password)).await
    }

    /// An access token for a new account of `level` (created and signed in
    /// through the API).
    pub async fn user_token(&self, username: &str, level: &str) -> String {
        self.create_user(username, level).await;
        self.login(username, USER_PASSWORD).await["access_token"]
            .as_str()
            .expect("an access token")
            .to_owned()
    }

    /// A fresh access token of the first admin (signed by the active key).
    pub async fn admin_login(&self) -> String {
        self.login("admin", ADMIN_PASSWORD).await["access_token"]
            .as_str()
            .expect("an access token")
            .to_owned()
    }

    /// Sends without credentials.
    pub async fn send_anonymous(&self, req: Request<Body>) -> Reply {
        self.dispatch(req).await
    }

    /// Sends with `token` as the bearer.
    pub async fn send_as(&self, token: &str, mut req: Request<Body>) -> Reply {
        req.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        self.dispatch(req).await
    }

    /// Begins shutdown the way the server does after its listener closes.
    pub async fn stop(&mut self) {
        if let Some(t) = self.tasks.take() {
            t.shutdown().await;
        }
    }

    /// Sends as the admin unless the request carries its own credentials.
    pub async fn send(&self, req: Request<Body>) -> Reply {
        if req.headers().contains_key(header::AUTHORIZATION) {
            return self.dispatch(req).await;
        }
        let token = self.admin_token.clone();
        self.send_as(&token, req).await
    }

    async fn dispatch(&self, req: Request<Body>) -> Reply {
        let res = self
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("the router is infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let body = to_bytes(res.into_body(), usize::MAX)
            .await
            .expect("response body");
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn request(&self, method: Method, uri: &str) -> Reply {
        self.send(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.request(Method::GET, uri).await
    }

    pub async fn delete(&self, uri: &str) -> Reply {
        self.request(Method::DELETE, uri).await
    }

    /// PUT with a JSON body, as the command line sends it.
    pub async fn put_json(&self, uri: &str, body: &Value) -> Reply {
        self.put_raw(uri, Some("application/json"), body.to_string())
            .await
    }

    pub async fn put_raw(
        &self,
        uri: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> Reply {
        let mut req = Request::builder().method(Method::PUT).uri(uri);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        self.send(req.body(body.into()).unwrap()).await
    }

    /// STATUS of one cluster, which must succeed.
    pub async fn status(&self, cluster: &str) -> Value {
        let reply = self.get(&format!("/api/v1/clusters/{cluster}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()
    }

    /// DEPLOY that must succeed.
    pub async fn deploy(&self, cluster: &str, body: &Value, wait: bool) -> Value {
        let reply = self
            .put_json(&format!("/api/v1/clusters/{cluster}?wait={wait}"), body)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()
    }
}

/// A request with a JSON body (and no credentials).
pub fn json_request(method: Method, uri: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// A request without a body (and no credentials).
pub fn empty_request(method: Method, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap()
}

pub fn login_request(username: &str, password: &str) -> Request<Body> {
    json_request(
        Method::POST,
        "/api/v1/auth/login",
        &serde_json::json!({"username": username, "password": password}),
    )
}

/// The request as if it came from `addr` (an IP address; the port is
/// arbitrary), the way the server's listener records the peer.
pub fn from_addr(mut req: Request<Body>, addr: &str) -> Request<Body> {
    let ip: std::net::IpAddr = addr.parse().expect("an IP address");
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(ip, 40000)));
    req
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The `error` code of an error body, if the body is one.
    pub fn code(&self) -> Option<String> {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
    }

    /// The `Retry-After` header in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        self.headers
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().parse().expect("whole seconds"))
    }

    /// Asserts the response is the API's error shape with this status and
    /// code, and returns its message.
    #[track_caller]
    pub fn expect_error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        assert_eq!(
            content_type,
            Some("application/json"),
            "an error is JSON: {}",
            self.text()
        );
        let body = self.json();
        let fields: Vec<&str> = body
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        // A document's problems come with it; nothing else does.
        let expected: &[&str] = if body.get("problems").is_some() {
            &["error", "message", "problems"]
        } else {
            &["error", "message"]
        };
        assert_eq!(
            fields, expected,
            "the error shape is {{error, message[, problems]}}: {body}"
        );
        assert_eq!(body["error"], code, "error code; body: {body}");
        let message = body["message"].as_str().expect("message is a string");
        assert!(!message.is_empty(), "a message for people");
        message.to_owned()
    }
}
