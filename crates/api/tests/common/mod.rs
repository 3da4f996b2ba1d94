//! The API router on an engine that runs on the fake cloud and a memory
//! store, driven in-process with `oneshot`: no sockets, so tests can run
//! under paused time.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use flotilla_api::ratelimit::{RateClock, RateLimits};
use flotilla_api::{router, AppState};
use flotilla_cloud::fake::{FakeCloud, FakeConfig};
use flotilla_cloud::{InstanceSet, Tags, Throttled, TokioClock};
use flotilla_domain::{InstanceType, Limits, PoolName};
use flotilla_engine::{Engine, EngineConfig, EngineTasks, PoolSpec};
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
        driver: "fake".into(),
        instance_type: InstanceType::new(ty).unwrap(),
        image: None,
        init_data: None,
        tags: Tags::new(),
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
    _keys: tempfile::TempDir,
}

impl TestApi {
    pub async fn start() -> Self {
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
        let (engine, tasks) = Engine::start(
            config(),
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
        let tokens = TokenIssuer::new(
            KeyRing::load_or_create(keys.path().join("keys")).unwrap(),
            "flotilla-test",
            Duration::from_secs(15 * 60),
            Duration::from_secs(3600),
        );
        let identity = Arc::new(Identity::new(
            store.clone(),
            tokens,
            None,
            IdentityConfig {
                refresh_token_ttl: Duration::from_secs(24 * 3600),
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
            3,
            Duration::from_secs(60),
            RateClock::Manual(rate_clock.clone()),
        ));
        let router = router(AppState {
            engine: engine.clone(),
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
            _keys: keys,
        }
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
        assert_eq!(
            fields,
            ["error", "message"],
            "the error shape is {{error, message}}: {body}"
        );
        assert_eq!(body["error"], code, "error code; body: {body}");
        let message = body["message"].as_str().expect("message is a string");
        assert!(!message.is_empty(), "a message for people");
        message.to_owned()
    }
}
