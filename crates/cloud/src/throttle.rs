//! The rate-limit proxy every instance set is wrapped in.
//!
//! Two rules, for every call (create, list, destroy, set_tags, offering
//! alike; a `destroy_many` batch is one call, as a `create` batch is):
//! - a shared budget of operations per second, paced like a token bucket
//!   with one second of burst;
//! - after the cloud answers `RateLimited`, every call fails at once with the
//!   same error until `earliest_retry`, without reaching the cloud.
//!
//! Pacing is written against tokio's clock rather than taken from a crate
//! such as governor so that paused-time tests drive it deterministically.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use flotilla_domain::{InstanceId, InstanceSetId, InstanceType, PoolName};
use tokio::time::Instant;

use crate::contract::{
    CloudError, Console, CreateRequest, ExecOutput, Health, Instance, InstanceSet, Offering, Tags,
};

pub struct Throttled<S> {
    inner: S,
    budget: Option<Mutex<Bucket>>,
    hold_until: Mutex<Option<(Instant, String)>>,
}

struct Bucket {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// Takes one token and says how long to wait for it. Tokens may go
    /// negative: that is the queue of callers already waiting.
    fn take(&mut self, now: Instant) -> Duration {
        let burst = self.rate.max(1.0);
        let refill = (now - self.updated).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(burst);
        self.updated = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

impl<S: InstanceSet> Throttled<S> {
    /// `ops_per_second` of `None` means no budget (the hold-off after a
    /// rate-limit error still applies).
    pub fn new(inner: S, ops_per_second: Option<f64>) -> Self {
        let budget = ops_per_second.filter(|r| *r > 0.0).map(|rate| {
            Mutex::new(Bucket {
                rate,
                tokens: rate.max(1.0),
                updated: Instant::now(),
            })
        });
        Self {
            inner,
            budget,
            hold_until: Mutex::new(None),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn admit(&self) -> Result<(), CloudError> {
        if let Some((until, message)) = self.hold_until.lock().unwrap().clone() {
            if Instant::now() < until {
                return Err(CloudError::RateLimited {
                    earliest_retry: until,
                    message: format!("holding off after an earlier rate-limit error: {message}"),
                });
            }
        }
        if let Some(bucket) = &self.budget {
            let wait = bucket.lock().unwrap().take(Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    }

    fn observe<T>(&self, result: Result<T, CloudError>) -> Result<T, CloudError> {
        if let Err(CloudError::RateLimited {
            earliest_retry,
            message,
        }) = &result
        {
            let mut hold = self.hold_until.lock().unwrap();
            if hold
                .as_ref()
                .is_none_or(|(until, _)| until < earliest_retry)
            {
                *hold = Some((*earliest_retry, message.clone()));
            }
        }
        result
    }
}

#[async_trait]
impl<S: InstanceSet> InstanceSet for Throttled<S> {
    fn id(&self) -> &InstanceSetId {
        self.inner.id()
    }

    fn max_batch(&self) -> u32 {
        self.inner.max_batch()
    }

    async fn create(&self, request: &CreateRequest) -> Result<Vec<Instance>, CloudError> {
        self.admit().await?;
        self.observe(self.inner.create(request).await)
    }

    async fn list(&self, filter: &Tags) -> Result<Vec<Instance>, CloudError> {
        self.admit().await?;
        self.observe(self.inner.list(filter).await)
    }

    async fn destroy(&self, id: &InstanceId) -> Result<(), CloudError> {
        self.admit().await?;
        self.observe(self.inner.destroy(id).await)
    }

    async fn destroy_many(&self, ids: &[InstanceId]) -> Vec<Result<(), CloudError>> {
        if let Err(e) = self.admit().await {
            return vec![Err(e); ids.len()];
        }
        let results = self.inner.destroy_many(ids).await;
        results.into_iter().map(|r| self.observe(r)).collect()
    }

    async fn set_tags(&self, id: &InstanceId, tags: &Tags) -> Result<(), CloudError> {
        self.admit().await?;
        self.observe(self.inner.set_tags(id, tags).await)
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
        self.admit().await?;
        self.observe(self.inner.offering(pool, instance_type).await)
    }

    async fn console(
        &self,
        id: &InstanceId,
        from: Option<u64>,
        limit: usize,
    ) -> Result<Option<Console>, CloudError> {
        self.admit().await?;
        self.observe(self.inner.console(id, from, limit).await)
    }

    /// Not a cloud call (it reaches the node), so not throttled.
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
    async fn budget_paces_calls() {
        let cloud = FakeCloud::new(FakeConfig::default());
        let set = Throttled::new(cloud.instance_set("s"), Some(2.0));
        let start = Instant::now();
        for _ in 0..6 {
            set.list(&Tags::new()).await.unwrap();
        }
        // Two calls of burst, then one every half second.
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_holds_off_every_kind_of_call() {
        let cloud = FakeCloud::new(FakeConfig {
            rate_limit_above: Some(1),
            ..FakeConfig::default()
        });
        let set = Throttled::new(cloud.instance_set("s"), None);
        let made = set.create(&request("c", 1)).await.unwrap();
        let err = set.list(&Tags::new()).await.unwrap_err();
        assert!(matches!(err, CloudError::RateLimited { .. }), "{err}");
        let calls_before = cloud.stats().calls();
        // Destroy and set_tags are held off too, without reaching the cloud.
        let err = set.destroy(&made[0].id).await.unwrap_err();
        assert!(matches!(err, CloudError::RateLimited { .. }), "{err}");
        let results = set.destroy_many(&[made[0].id.clone()]).await;
        assert!(
            matches!(results[..], [Err(CloudError::RateLimited { .. })]),
            "{results:?}"
        );
        let tags = Tags::from([("k".into(), "v".into())]);
        let err = set.set_tags(&made[0].id, &tags).await.unwrap_err();
        assert!(matches!(err, CloudError::RateLimited { .. }), "{err}");
        let (pool, ty) = (
            PoolName::new("p").unwrap(),
            InstanceType::new("small").unwrap(),
        );
        let err = set.offering(&pool, &ty).await.unwrap_err();
        assert!(matches!(err, CloudError::RateLimited { .. }), "{err}");
        assert_eq!(cloud.stats().calls(), calls_before);
        tokio::time::advance(Duration::from_secs(1)).await;
        set.destroy(&made[0].id).await.unwrap();
    }
}
