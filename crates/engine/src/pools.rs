//! The pools as users see them: what each is, and what its nodes are made
//! of and cost as far as its driver can tell ([`Offering`]).
//!
//! A driver caches what it learns, but every driver call goes through the
//! throttle and takes from the budget reconciles need. So offerings are
//! cached here too, for [`OFFERING_TTL`], failures included: however often
//! pools are listed, a driver is asked about a pool at most once per TTL.
//! And a listing never waits on a throttled driver for more than
//! [`OFFERING_WAIT`]: what is not known by then is shown as unknown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use flotilla_cloud::Offering;
use flotilla_domain::{InstanceType, PoolName};
use futures::future::join_all;
use tokio::time::Instant;

use crate::{Engine, Shared};

/// How long a pool's offering is reused.
pub const OFFERING_TTL: Duration = Duration::from_secs(60);

/// The longest a listing waits for a driver's answer.
pub const OFFERING_WAIT: Duration = Duration::from_secs(2);

/// A pool as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolView {
    pub name: PoolName,
    pub driver: String,
    pub instance_type: InstanceType,
    /// The pool a deploy naming none uses.
    pub is_default: bool,
    /// What one node costs per hour, from the config (what organisations
    /// are charged).
    pub price_per_hour: flotilla_domain::Money,
    pub offering: Offering,
}

/// Offerings by pool, with when each was asked for.
#[derive(Default)]
pub(crate) struct OfferingCache(Mutex<HashMap<PoolName, (Instant, Offering)>>);

impl OfferingCache {
    fn fresh(&self, pool: &PoolName) -> Option<Offering> {
        let cache = self.0.lock().unwrap();
        let (at, offering) = cache.get(pool)?;
        (at.elapsed() < OFFERING_TTL).then(|| offering.clone())
    }

    fn put(&self, pool: &PoolName, offering: Offering) {
        self.0
            .lock()
            .unwrap()
            .insert(pool.clone(), (Instant::now(), offering));
    }
}

async fn offering(shared: &Shared, name: &PoolName) -> Offering {
    if let Some(known) = shared.offerings.fresh(name) {
        return known;
    }
    let pool = &shared.pools[name];
    let set = &shared.sets[&pool.driver];
    let asked = tokio::time::timeout(OFFERING_WAIT, set.offering(name, &pool.instance_type));
    let offering = match asked.await {
        Ok(Ok(offering)) => offering,
        Ok(Err(e)) => {
            tracing::info!(pool = %name, driver = %pool.driver, error = %e, "cannot tell what the pool's nodes are or cost");
            Offering::default()
        }
        Err(_) => {
            tracing::info!(pool = %name, driver = %pool.driver, "the driver did not say in time what the pool's nodes are or cost");
            Offering::default()
        }
    };
    shared.offerings.put(name, offering.clone());
    offering
}

impl Engine {
    /// Every pool, by name, with its offering.
    pub async fn list_pools(&self) -> Vec<PoolView> {
        let shared = &self.shared;
        let offerings = join_all(shared.pools.keys().map(|name| offering(shared, name))).await;
        shared
            .pools
            .iter()
            .zip(offerings)
            .map(|((name, pool), offering)| PoolView {
                name: name.clone(),
                driver: pool.driver.clone(),
                instance_type: pool.instance_type.clone(),
                is_default: *name == shared.default_pool,
                price_per_hour: pool.price_per_hour,
                offering,
            })
            .collect()
    }
}
