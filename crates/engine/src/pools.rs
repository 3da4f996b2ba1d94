//! The pools: those of the config file and those written through the API
//! ([`PoolTable`], kept current from the change feed), and the pools as
//! users see them: what each is, and what its nodes are made of and cost
//! as far as its driver can tell ([`Offering`]).
//!
//! A driver caches what it learns, but every driver call goes through the
//! throttle and takes from the budget reconciles need. So offerings are
//! cached here too, for [`OFFERING_TTL`], failures included: however often
//! pools are listed, a driver is asked about a pool at most once per TTL.
//! And a listing never waits on a throttled driver for more than
//! [`OFFERING_WAIT`]: what is not known by then is shown as unknown.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use flotilla_cloud::Offering;
use flotilla_domain::{
    image_from, ImageRef, InstanceType, PoolDocument, PoolLaunch, PoolName, PoolSource, PoolSpec,
    PoolType, SharedConfigName,
};
use flotilla_store::{SharedConfigRecord, StoreError};
use futures::future::join_all;
use tokio::time::Instant;

use crate::{Engine, Shared};

/// Every pool by name.
pub(crate) type PoolMap = BTreeMap<PoolName, Arc<PoolSpec>>;

/// The pools this server knows: the config file's, fixed, and those
/// written through the API, read from the store. A name in the config file
/// is the config file's: a stored pool of that name is not used.
pub(crate) struct PoolTable {
    config: PoolMap,
    all: RwLock<Arc<PoolMap>>,
    /// Held from a refresh's read to its write, so an older read never
    /// replaces a newer one.
    refreshing: tokio::sync::Mutex<()>,
    /// Each pool's launch as last worked out, with the spec and image it
    /// was worked out from (see [`launch_of`]). The spec's `Arc` is held
    /// here, so its address cannot be reused by another spec while the
    /// entry stands.
    launches: Mutex<HashMap<PoolName, RememberedLaunch>>,
}

type RememberedLaunch = (Arc<PoolSpec>, Option<String>, Arc<PoolLaunch>);

impl PoolTable {
    /// The config file's pools; the stored ones are added by [`refresh`].
    pub fn new(config: BTreeMap<PoolName, PoolSpec>) -> Self {
        Self {
            config: config
                .into_iter()
                .map(|(name, spec)| (name, Arc::new(spec)))
                .collect(),
            all: RwLock::new(Arc::new(PoolMap::new())),
            refreshing: tokio::sync::Mutex::new(()),
            launches: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, name: &PoolName) -> Option<Arc<PoolSpec>> {
        self.all.read().unwrap().get(name).cloned()
    }

    pub fn snapshot(&self) -> Arc<PoolMap> {
        self.all.read().unwrap().clone()
    }
}

/// The latest version of every shared config, by name: what pools'
/// shared references resolve to at each launch.
pub(crate) struct SharedConfigs {
    latest: RwLock<Arc<BTreeMap<SharedConfigName, SharedConfigRecord>>>,
    /// Held from a refresh's read to its write, so an older read never
    /// replaces a newer one.
    refreshing: tokio::sync::Mutex<()>,
}

impl Default for SharedConfigs {
    fn default() -> Self {
        Self {
            latest: RwLock::new(Arc::new(BTreeMap::new())),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }
}

impl SharedConfigs {
    pub fn get(&self, name: &str) -> Option<SharedConfigRecord> {
        let name = SharedConfigName::new(name).ok()?;
        self.latest.read().unwrap().get(&name).cloned()
    }
}

/// Reads the latest version of every shared config.
pub(crate) async fn refresh_shared(shared: &Shared) -> Result<(), StoreError> {
    let configs = &shared.shared_configs;
    let _one = configs.refreshing.lock().await;
    let latest = shared.store.shared_configs().await?;
    *configs.latest.write().unwrap() =
        Arc::new(latest.into_iter().map(|r| (r.name.clone(), r)).collect());
    Ok(())
}

/// The image a pool launches with, and the shared config version it
/// comes from, if it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    pub image: String,
    pub from: Option<(SharedConfigName, u64)>,
}

/// The image `pool` launches with now: its own, or what the latest
/// version of the shared config it names gives. None: the driver's.
pub(crate) fn resolve_image(
    configs: &SharedConfigs,
    pool: &PoolSpec,
) -> Result<Option<ResolvedImage>, String> {
    let Some(image) = &pool.image else {
        return Ok(None);
    };
    match image {
        ImageRef::Id(id) => Ok(Some(ResolvedImage {
            image: id.clone(),
            from: None,
        })),
        ImageRef::Shared { shared, key } => {
            let record = configs.get(shared).ok_or_else(|| {
                format!("its image comes from shared config {shared}, which does not exist")
            })?;
            let image = image_from(&record.value, key.as_deref()).map_err(|e| {
                format!(
                    "its image comes from shared config {shared} (version {}), but {e}",
                    record.version
                )
            })?;
            Ok(Some(ResolvedImage {
                image,
                from: Some((record.name, record.version)),
            }))
        }
    }
}

/// What `pool`'s nodes are launched with now: the image (None: the
/// driver's), and the version of the launch configuration each of its
/// types' nodes is tagged with; or why the image cannot be resolved.
pub(crate) fn launch(configs: &SharedConfigs, pool: &PoolSpec) -> Result<PoolLaunch, String> {
    let image = resolve_image(configs, pool)?.map(|i| i.image);
    Ok(PoolLaunch::of(pool, image))
}

/// [`launch`] of the pool named `name`, remembered while its spec (the
/// same `Arc`) and resolved image stay the same: a resync's reconciles
/// ask for it once per cluster, and working it out hashes the pool's
/// launch configuration for each of its types.
pub(crate) fn launch_of(
    shared: &Shared,
    name: &PoolName,
    pool: &Arc<PoolSpec>,
) -> Result<Arc<PoolLaunch>, String> {
    let image = resolve_image(&shared.shared_configs, pool)?.map(|i| i.image);
    if let Some((spec, from, launch)) = shared.pools.launches.lock().unwrap().get(name) {
        if Arc::ptr_eq(spec, pool) && *from == image {
            return Ok(launch.clone());
        }
    }
    let launch = Arc::new(PoolLaunch::of(pool, image.clone()));
    shared
        .pools
        .launches
        .lock()
        .unwrap()
        .insert(name.clone(), (pool.clone(), image, launch.clone()));
    Ok(launch)
}

/// Reads the pools written through the API and brings the table, and each
/// driver's copy of its pools' sections, up to date. A stored pool this
/// server cannot use (its driver is not configured here, or its document
/// is of a newer flotilla) is left out and logged.
pub(crate) async fn refresh(shared: &Shared) -> Result<(), StoreError> {
    let table = &shared.pools;
    let _one = table.refreshing.lock().await;
    let stored = shared.store.pools().await?;
    let mut all = table.config.clone();
    for record in stored {
        let Some(document) = record.document else {
            continue;
        };
        if all.contains_key(&record.name) {
            continue;
        }
        let spec = serde_json::from_value::<PoolDocument>(document)
            .map_err(|e| e.to_string())
            .and_then(|d| {
                d.spec(PoolSource::Stored {
                    version: record.version,
                })
                .map_err(|problems| {
                    problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            });
        match spec {
            Ok(spec) if shared.sets.contains_key(&spec.driver) => {
                all.insert(record.name, Arc::new(spec));
            }
            Ok(spec) => {
                tracing::warn!(pool = %record.name, driver = %spec.driver, "pool not used: its driver is not configured on this server")
            }
            Err(e) => {
                tracing::warn!(pool = %record.name, version = record.version, error = %e, "pool not used: its stored document is not understood")
            }
        }
    }
    let mut current = table.all.write().unwrap();
    if **current == all {
        return Ok(());
    }
    for (name, before) in current.iter() {
        let after = all.get(name);
        if after.is_none_or(|a| a.driver != before.driver) {
            if let Some(set) = shared.sets.get(&before.driver) {
                set.configure_pool(name, None);
            }
        }
    }
    for (name, spec) in &all {
        let before = current.get(name);
        if before.is_none_or(|b| b.driver != spec.driver || b.options != spec.options) {
            shared.sets[&spec.driver].configure_pool(name, spec.options.as_ref());
        }
        if before.is_some_and(|b| b != spec) {
            shared.offerings.forget(name);
        }
    }
    *current = Arc::new(all);
    Ok(())
}

/// How long a pool's offering is reused.
pub const OFFERING_TTL: Duration = Duration::from_secs(60);

/// The longest a listing waits for a driver's answer.
pub const OFFERING_WAIT: Duration = Duration::from_secs(2);

/// A pool as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolView {
    pub name: PoolName,
    pub driver: String,
    /// The pool a deploy naming none uses.
    pub is_default: bool,
    /// Its instance types in the order nodes are made of them, each with
    /// what one node costs per hour (what organisations are charged) and
    /// what the driver says of it.
    pub types: Vec<(PoolType, Offering)>,
    pub source: PoolSource,
}

/// What the driver says of each type of a pool.
type Offerings = Vec<(InstanceType, Offering)>;

/// Offerings by pool, with when each was asked for.
#[derive(Default)]
pub(crate) struct OfferingCache(Mutex<HashMap<PoolName, (Instant, Offerings)>>);

impl OfferingCache {
    fn fresh(&self, pool: &PoolName) -> Option<Offerings> {
        let cache = self.0.lock().unwrap();
        let (at, offering) = cache.get(pool)?;
        (at.elapsed() < OFFERING_TTL).then(|| offering.clone())
    }

    fn forget(&self, pool: &PoolName) {
        self.0.lock().unwrap().remove(pool);
    }

    fn put(&self, pool: &PoolName, offering: Offerings) {
        self.0
            .lock()
            .unwrap()
            .insert(pool.clone(), (Instant::now(), offering));
    }
}

/// What the driver says of each of pool `name`'s types (nothing, where it
/// cannot say in time).
pub(crate) async fn offerings(shared: &Shared, name: &PoolName) -> Offerings {
    if let Some(known) = shared.offerings.fresh(name) {
        return known;
    }
    let Some(pool) = shared.pools.get(name) else {
        return Vec::new();
    };
    let set = &shared.sets[&pool.driver];
    let asked = pool.preference().into_iter().map(|t| async {
        let asked = tokio::time::timeout(OFFERING_WAIT, set.offering(name, &t.instance_type));
        let offering = match asked.await {
            Ok(Ok(offering)) => offering,
            Ok(Err(e)) => {
                tracing::info!(pool = %name, driver = %pool.driver, instance_type = %t.instance_type, error = %e, "cannot tell what the pool's nodes are or cost");
                Offering::default()
            }
            Err(_) => {
                tracing::info!(pool = %name, driver = %pool.driver, instance_type = %t.instance_type, "the driver did not say in time what the pool's nodes are or cost");
                Offering::default()
            }
        };
        (t.instance_type.clone(), offering)
    });
    let offerings = join_all(asked).await;
    shared.offerings.put(name, offerings.clone());
    offerings
}

impl Engine {
    /// Every pool, by name, with its offering.
    pub async fn list_pools(&self) -> Vec<PoolView> {
        let shared = &self.shared;
        let pools = shared.pools.snapshot();
        let offerings = join_all(pools.keys().map(|name| offerings(shared, name))).await;
        pools
            .iter()
            .zip(offerings)
            .map(|((name, pool), offerings)| PoolView {
                name: name.clone(),
                driver: pool.driver.clone(),
                is_default: *name == shared.default_pool,
                types: pool
                    .preference()
                    .into_iter()
                    .map(|t| {
                        let offering = offerings
                            .iter()
                            .find(|(ty, _)| ty == &t.instance_type)
                            .map(|(_, o)| o.clone())
                            .unwrap_or_default();
                        (t.clone(), offering)
                    })
                    .collect(),
                source: pool.source,
            })
            .collect()
    }
}
