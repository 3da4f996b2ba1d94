#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_cloud::fake::{FakeCloud, FakeConfig};
use flotilla_cloud::{InstanceSet, Throttled, TokioClock};
use flotilla_control::{CapacityView, Control, Deploy, Destroy, RequestCapacity};
use flotilla_domain::{Caller, ClusterName, ClusterState, InstanceType, Limits, PoolName};
use flotilla_engine::{ClusterView, Engine, EngineConfig, EngineError, EngineTasks, PoolSpec};
use flotilla_store::{MemoryStore, Store};
use prometheus_client::registry::Registry;

pub const SET_ID: &str = "test-set";

pub fn name(s: &str) -> ClusterName {
    ClusterName::new(s).unwrap()
}

pub fn config() -> EngineConfig {
    EngineConfig {
        limits: Limits {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            max_nodes: 1000,
        },
        concurrency: 16,
        ..EngineConfig::default()
    }
}

pub fn pools() -> BTreeMap<PoolName, PoolSpec> {
    // $0.10 per node-hour.
    let pool = |ty: &str| {
        PoolSpec::new("fake", InstanceType::new(ty).unwrap())
            .with_price(flotilla_domain::Money::from_micros(100_000))
    };
    // Users other than admins may run jobs on the default pool.
    let mut default = pool("fake.small");
    default.allow_workload = true;
    BTreeMap::from([
        (PoolName::new("default").unwrap(), default),
        (PoolName::new("big").unwrap(), pool("fake.big")),
        (PoolName::new("gpu").unwrap(), pool("fake.gpu")),
    ])
}

pub struct Harness {
    pub engine: Engine,
    /// The front door, as the API uses it.
    pub control: Control,
    pub tasks: Option<EngineTasks>,
    pub cloud: FakeCloud,
    pub store: Arc<dyn Store>,
    /// Kept so that a restarted engine sees the same wall time, moved on by
    /// however long the test slept in between.
    pub clock: TokioClock,
}

impl Harness {
    pub async fn start(cloud: FakeCloud, store: Arc<dyn Store>, config: EngineConfig) -> Self {
        Self::start_with_clock(cloud, store, config, TokioClock::default()).await
    }

    pub async fn start_with_clock(
        cloud: FakeCloud,
        store: Arc<dyn Store>,
        config: EngineConfig,
        clock: TokioClock,
    ) -> Self {
        Self::start_with(cloud, store, config, clock, pools()).await
    }

    /// As [`start`](Self::start), with `pools` rather than [`pools`].
    pub async fn start_with_pools(
        cloud: FakeCloud,
        store: Arc<dyn Store>,
        config: EngineConfig,
        pools: BTreeMap<PoolName, PoolSpec>,
    ) -> Self {
        Self::start_with(cloud, store, config, TokioClock::default(), pools).await
    }

    async fn start_with(
        cloud: FakeCloud,
        store: Arc<dyn Store>,
        config: EngineConfig,
        clock: TokioClock,
        pools: BTreeMap<PoolName, PoolSpec>,
    ) -> Self {
        // RUST_LOG=debug shows the engine's decisions when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let set: Arc<dyn InstanceSet> = Arc::new(Throttled::new(cloud.instance_set(SET_ID), None));
        let (engine, tasks) = Engine::start(
            config,
            store.clone(),
            BTreeMap::from([("fake".to_owned(), set)]),
            pools,
            PoolName::new("default").unwrap(),
            Arc::new(clock),
            &mut Registry::default(),
        )
        .await
        .expect("engine starts");
        Self {
            control: Control::new(
                engine.clone(),
                Arc::new(flotilla_control::PoolCatalog::plain([("fake", "fake")])),
            ),
            engine,
            tasks: Some(tasks),
            cloud,
            store,
            clock,
        }
    }

    pub async fn new(fake: FakeConfig) -> Self {
        Self::start(FakeCloud::new(fake), Arc::new(MemoryStore::new()), config()).await
    }

    pub async fn stop(&mut self) {
        if let Some(t) = self.tasks.take() {
            t.shutdown().await;
        }
    }

    pub async fn deploy(
        &self,
        cluster: &str,
        nodes: i64,
        ttl: i64,
        pool: Option<&str>,
    ) -> ClusterView {
        self.deploy_as(&Caller::local_operator(), cluster, nodes, ttl, false, pool)
            .await
            .expect("deploy")
    }

    /// DEPLOY through the front door.
    pub async fn deploy_as(
        &self,
        caller: &Caller,
        cluster: &str,
        nodes: i64,
        ttl: i64,
        is_public: bool,
        pool: Option<&str>,
    ) -> Result<ClusterView, EngineError> {
        let command = Deploy {
            cluster: name(cluster),
            node_capacity: nodes,
            time_to_live: ttl,
            is_public: Some(is_public),
            pool: pool.map(str::to_owned),
            workload: None,
        };
        self.control.run(caller, command).await
    }

    pub async fn destroy(&self, cluster: &str) -> ClusterView {
        self.destroy_as(&Caller::local_operator(), cluster)
            .await
            .expect("destroy")
    }

    pub async fn destroy_as(
        &self,
        caller: &Caller,
        cluster: &str,
    ) -> Result<ClusterView, EngineError> {
        let command = Destroy {
            cluster: name(cluster),
        };
        self.control.run(caller, command).await
    }

    /// A capacity request through the front door; with `wait`, answered
    /// once the cluster settles.
    pub async fn capacity(
        &self,
        caller: &Caller,
        cluster: &ClusterName,
        nodes: i64,
        ttl: i64,
        wait: bool,
    ) -> Result<CapacityView, EngineError> {
        let command = RequestCapacity {
            cluster: cluster.clone(),
            nodes,
            time_to_live: ttl,
        };
        let mut view = self.control.run(caller, command).await?;
        if wait {
            view.cluster = self.control.wait_settled(cluster).await;
        }
        Ok(view)
    }

    pub fn status(&self, cluster: &str) -> ClusterView {
        self.control
            .status(&Caller::local_operator(), &name(cluster))
            .unwrap()
    }

    /// Waits (in tokio time) until `check` holds, polling every 10 ms.
    pub async fn until(&self, limit: Duration, what: &str, mut check: impl FnMut(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !check(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn running(&self, cluster: &str) -> bool {
        self.status(cluster).state == ClusterState::Running
    }
}
