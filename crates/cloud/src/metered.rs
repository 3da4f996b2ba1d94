//! Metrics for every driver call: how many, how they ended, how long they
//! took.

use std::sync::Arc;

use async_trait::async_trait;
use flotilla_domain::{InstanceId, InstanceSetId, InstanceType, PoolName};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::contract::{
    CloudError, Console, CreateRequest, ExecOutput, Health, Instance, InstanceSet, Offering, Tags,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    driver: String,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    driver: String,
    operation: &'static str,
}

/// The cloud metrics of one server, shared by all its drivers.
#[derive(Clone)]
pub struct CloudMetrics {
    calls: Family<CallLabels, Counter>,
    seconds: Family<OpLabels, Histogram>,
    instances_created: Family<OpLabels, Counter>,
}

impl CloudMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            calls: Family::default(),
            seconds: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.025, 0.1, 0.5, 2.0, 10.0, 30.0])
            }),
            instances_created: Family::default(),
        };
        registry.register(
            "flotilla_cloud_calls",
            "Cloud driver calls by operation and outcome",
            metrics.calls.clone(),
        );
        registry.register(
            "flotilla_cloud_call_seconds",
            "Cloud driver call latency",
            metrics.seconds.clone(),
        );
        registry.register(
            "flotilla_cloud_instances_created",
            "Instances the cloud created for us",
            metrics.instances_created.clone(),
        );
        metrics
    }

    fn record<T>(
        &self,
        driver: &str,
        operation: &'static str,
        start: Instant,
        r: &Result<T, CloudError>,
    ) {
        let outcome = match r {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.calls
            .get_or_create(&CallLabels {
                driver: driver.to_owned(),
                operation,
                outcome,
            })
            .inc();
        self.seconds
            .get_or_create(&OpLabels {
                driver: driver.to_owned(),
                operation,
            })
            .observe(start.elapsed().as_secs_f64());
    }
}

pub struct Metered<S> {
    inner: S,
    driver: String,
    metrics: Arc<CloudMetrics>,
}

impl<S: InstanceSet> Metered<S> {
    pub fn new(inner: S, driver: impl Into<String>, metrics: Arc<CloudMetrics>) -> Self {
        Self {
            inner,
            driver: driver.into(),
            metrics,
        }
    }
}

#[async_trait]
impl<S: InstanceSet> InstanceSet for Metered<S> {
    fn id(&self) -> &InstanceSetId {
        self.inner.id()
    }

    fn max_batch(&self) -> u32 {
        self.inner.max_batch()
    }

    async fn create(&self, request: &CreateRequest) -> Result<Vec<Instance>, CloudError> {
        let start = Instant::now();
        let r = self.inner.create(request).await;
        self.metrics.record(&self.driver, "create", start, &r);
        if let Ok(made) = &r {
            self.metrics
                .instances_created
                .get_or_create(&OpLabels {
                    driver: self.driver.clone(),
                    operation: "create",
                })
                .inc_by(made.len() as u64);
        }
        r
    }

    async fn list(&self, filter: &Tags) -> Result<Vec<Instance>, CloudError> {
        let start = Instant::now();
        let r = self.inner.list(filter).await;
        self.metrics.record(&self.driver, "list", start, &r);
        r
    }

    async fn destroy(&self, id: &InstanceId) -> Result<(), CloudError> {
        let start = Instant::now();
        let r = self.inner.destroy(id).await;
        self.metrics.record(&self.driver, "destroy", start, &r);
        r
    }

    /// Recorded as one `destroy` per instance, so the counts mean the same
    /// whether a driver batches or not.
    async fn destroy_many(&self, ids: &[InstanceId]) -> Vec<Result<(), CloudError>> {
        let start = Instant::now();
        let results = self.inner.destroy_many(ids).await;
        for r in &results {
            self.metrics.record(&self.driver, "destroy", start, r);
        }
        results
    }

    async fn set_tags(&self, id: &InstanceId, tags: &Tags) -> Result<(), CloudError> {
        let start = Instant::now();
        let r = self.inner.set_tags(id, tags).await;
        self.metrics.record(&self.driver, "set_tags", start, &r);
        r
    }

    async fn probe(&self, instance: &Instance) -> Health {
        self.inner.probe(instance).await
    }

    async fn address(&self, instance: &Instance) -> Option<String> {
        self.inner.address(instance).await
    }

    async fn offering(
        &self,
        pool: &PoolName,
        instance_type: &InstanceType,
    ) -> Result<Offering, CloudError> {
        let start = Instant::now();
        let r = self.inner.offering(pool, instance_type).await;
        self.metrics.record(&self.driver, "offering", start, &r);
        r
    }

    async fn console(
        &self,
        id: &InstanceId,
        from: Option<u64>,
        limit: usize,
    ) -> Result<Option<Console>, CloudError> {
        let start = Instant::now();
        let r = self.inner.console(id, from, limit).await;
        self.metrics.record(&self.driver, "console", start, &r);
        r
    }

    async fn exec(
        &self,
        id: &InstanceId,
        argv: &[String],
        timeout: std::time::Duration,
        limit: usize,
    ) -> Result<Option<ExecOutput>, CloudError> {
        self.inner.exec(id, argv, timeout, limit).await
    }

    fn configure_pool(&self, pool: &PoolName, section: Option<&serde_json::Value>) {
        self.inner.configure_pool(pool, section)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{request, FakeCloud, FakeConfig};

    #[tokio::test(start_paused = true)]
    async fn a_destroy_batch_counts_as_a_destroy_per_instance() {
        let mut registry = Registry::default();
        let metrics = Arc::new(CloudMetrics::register(&mut registry));
        let cloud = FakeCloud::new(FakeConfig::default());
        let theirs = cloud.instance_set("theirs");
        let set = Metered::new(cloud.instance_set("ours"), "d", metrics);
        let request = request("c", 2);
        let mut ids: Vec<InstanceId> = set
            .create(&request)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        ids.push(theirs.create(&request).await.unwrap()[0].id.clone());
        let results = set.destroy_many(&ids).await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"flotilla_cloud_calls_total{driver="d",operation="destroy",outcome="ok"} 2"#,
            r#"flotilla_cloud_calls_total{driver="d",operation="destroy",outcome="permanent"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
