//! Rolling replacement on this server: what holds each pool's rollout back
//! (the store's, copied and kept current from the change feed), and, on
//! the leader, the failed replacements counted toward stopping one.
//!
//! A rollout has no state of its own to lose: which nodes are outdated is
//! read from their tags (their launch version) against what their pool
//! would launch now, so a restarted or new leader carries on from the
//! cloud's listing. Only a pause and a stop are stored. Failures are
//! counted in memory: a new leader counts afresh.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};

use flotilla_domain::{LaunchVersion, PoolName};
use flotilla_store::{Fence, RolloutHold, RolloutStop, StoreError};

use crate::Shared;

#[derive(Default)]
pub(crate) struct Rollouts {
    holds: RwLock<BTreeMap<PoolName, RolloutHold>>,
    /// Held from a refresh's read to its write, so an older read never
    /// replaces a newer one.
    refreshing: tokio::sync::Mutex<()>,
    /// Replacements at a version failed in a row, per pool.
    failures: Mutex<HashMap<PoolName, (LaunchVersion, u32)>>,
    /// The version each pool was last seen rolling out to (some cluster
    /// of it had nodes of another): failures of nodes at that version
    /// count toward stopping it, even once no outdated node is left to
    /// see (a pool that cannot surge destroys one before its replacement
    /// is ready).
    rolling: Mutex<HashMap<PoolName, LaunchVersion>>,
}

impl Rollouts {
    /// What holds `pool`'s rollout back, if anything.
    pub fn hold(&self, pool: &PoolName) -> Option<RolloutHold> {
        self.holds.read().unwrap().get(pool).cloned()
    }

    /// Whether `pool`'s clusters replace nodes outdated by `version` now:
    /// not while paused, nor stopped at that version.
    pub fn replacing(&self, pool: &PoolName, version: &LaunchVersion) -> bool {
        self.holds.read().unwrap().get(pool).is_none_or(|h| {
            h.paused.is_none() && h.stopped.as_ref().is_none_or(|s| &s.version != version)
        })
    }

    /// Some cluster of `pool` has nodes outdated by `version`.
    pub fn rolling(&self, pool: &PoolName, version: &LaunchVersion) {
        let mut rolling = self.rolling.lock().unwrap();
        if rolling.get(pool) != Some(version) {
            rolling.insert(pool.clone(), version.clone());
        }
    }

    /// Whether `pool` was seen rolling out to `version`.
    pub fn is_rolling(&self, pool: &PoolName, version: &LaunchVersion) -> bool {
        self.rolling.lock().unwrap().get(pool) == Some(version)
    }

    /// A node at `version` became ready: replacements work again, and
    /// failures count again only once a cluster is seen with outdated
    /// nodes (so those of a finished rollout's nodes do not).
    pub fn succeeded(&self, pool: &PoolName, version: &LaunchVersion) {
        let mut failures = self.failures.lock().unwrap();
        if failures.get(pool).is_some_and(|(v, _)| v == version) {
            failures.remove(pool);
        }
        let mut rolling = self.rolling.lock().unwrap();
        if rolling.get(pool) == Some(version) {
            rolling.remove(pool);
        }
    }

    /// Counts a failed replacement at `version`; true once `max` failed in
    /// a row (and then counts afresh).
    fn failed(&self, pool: &PoolName, version: &LaunchVersion, max: u32) -> bool {
        let mut failures = self.failures.lock().unwrap();
        let entry = failures
            .entry(pool.clone())
            .or_insert_with(|| (version.clone(), 0));
        if &entry.0 != version {
            *entry = (version.clone(), 0);
        }
        entry.1 += 1;
        if entry.1 >= max {
            failures.remove(pool);
            true
        } else {
            false
        }
    }
}

/// Reads what holds every pool's rollout.
pub(crate) async fn refresh(shared: &Shared) -> Result<(), StoreError> {
    let rollouts = &shared.rollouts;
    let _one = rollouts.refreshing.lock().await;
    let holds = shared.store.rollout_holds().await?;
    *rollouts.holds.write().unwrap() = holds.into_iter().map(|h| (h.pool.clone(), h)).collect();
    Ok(())
}

/// A replacement at `version` of `pool`'s failed for `reason`: counted,
/// and once `max` failed in a row, the pool's rollout is stopped (in the
/// store, so every server says so and a new leader keeps it stopped).
pub(crate) async fn note_failure(
    shared: &Shared,
    fence: Fence,
    pool: &PoolName,
    version: &LaunchVersion,
    max: u32,
    reason: String,
) {
    if !shared.rollouts.replacing(pool, version) || !shared.rollouts.failed(pool, version, max) {
        return;
    }
    let stop = RolloutStop {
        version: version.clone(),
        reason: format!("{max} replacements in a row failed; the last: {reason}"),
        at: shared.clock.now(),
    };
    match shared.store.stop_rollout(fence, pool, &stop, stop.at).await {
        Ok(()) => {
            tracing::warn!(%pool, %version, reason = %stop.reason, "rollout stopped: outdated nodes are kept until it is resumed (flotilla pool resume {pool}) or the pool changes");
            // Read back whole, so a resume committed meanwhile is not
            // undone here (the feed brings it again anyway).
            if let Err(e) = refresh(shared).await {
                tracing::warn!(error = %e, "reading the pools' rollouts failed");
            }
        }
        Err(e) => {
            tracing::warn!(%pool, error = %e, "stopping a failing rollout failed; it goes on")
        }
    }
}

/// Creates under way per pool, counted against its `max_nodes` until the
/// nodes they make are in the inventory, so that two clusters creating at
/// once cannot both take the pool's last places.
#[derive(Default)]
pub(crate) struct PoolPlaces {
    pending: Mutex<HashMap<PoolName, u32>>,
}

/// Places taken by one reconcile's creates; given back when dropped.
pub(crate) struct Reserved<'a> {
    places: &'a PoolPlaces,
    pool: PoolName,
    count: u32,
}

impl PoolPlaces {
    /// The places of `pool` (at most `max` nodes) left beside the `live`
    /// nodes its clusters hold, the creates under way counted as taken;
    /// then takes `wanted(left)` of them.
    pub fn take(
        &self,
        pool: &PoolName,
        max: u32,
        live: u32,
        wanted: impl FnOnce(u32) -> u32,
    ) -> (u32, Reserved<'_>) {
        let mut pending = self.pending.lock().unwrap();
        let taken = pending.get(pool).copied().unwrap_or(0);
        let left = max.saturating_sub(live).saturating_sub(taken);
        let count = wanted(left).min(left);
        if count > 0 {
            *pending.entry(pool.clone()).or_default() += count;
        }
        (
            left,
            Reserved {
                places: self,
                pool: pool.clone(),
                count,
            },
        )
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if self.count == 0 {
            return;
        }
        let mut pending = self.places.pending.lock().unwrap();
        if let Some(n) = pending.get_mut(&self.pool) {
            *n = n.saturating_sub(self.count);
            if *n == 0 {
                pending.remove(&self.pool);
            }
        }
    }
}
