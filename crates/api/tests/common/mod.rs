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
use flotilla_api::{router, AppState};
use flotilla_cloud::fake::{FakeCloud, FakeConfig};
use flotilla_cloud::{InstanceSet, Tags, Throttled, TokioClock};
use flotilla_domain::{InstanceType, Limits, PoolName};
use flotilla_engine::{Engine, EngineConfig, EngineTasks, PoolSpec};
use flotilla_store::MemoryStore;
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

pub struct TestApi {
    pub router: Router,
    pub engine: Engine,
    pub tasks: Option<EngineTasks>,
    pub cloud: FakeCloud,
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
        let (engine, tasks) = Engine::start(
            config(),
            Arc::new(MemoryStore::new()),
            BTreeMap::from([("fake".to_owned(), set)]),
            pools(),
            PoolName::new("default").unwrap(),
            Arc::new(TokioClock::default()),
            &mut registry,
        )
        .await
        .expect("engine starts");
        let router = router(AppState {
            engine: engine.clone(),
            registry: Arc::new(registry),
        });
        Self {
            router,
            engine,
            tasks: Some(tasks),
            cloud,
        }
    }

    /// Begins shutdown the way the server does after its listener closes.
    pub async fn stop(&mut self) {
        if let Some(t) = self.tasks.take() {
            t.shutdown().await;
        }
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
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
