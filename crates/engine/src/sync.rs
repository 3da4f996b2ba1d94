//! The syncer: lists every instance set, folds the listings into the
//! inventory, refreshes desired state from the store, and wakes clusters.
//! A full pass runs every `resync_interval` and wakes every cluster (drift
//! is caught even if no event said so); a pass asked for by a reconcile
//! (after destroys) runs within `min_list_interval` and wakes only the
//! clusters whose nodes changed.

use std::collections::BTreeSet;
use std::sync::Arc;

use flotilla_cloud::{CloudError, Tags};
use flotilla_domain::ClusterName;
use tokio::time::Instant;

use crate::Shared;

/// Lists every set once; returns the clusters whose nodes changed.
pub(crate) async fn sync_all(shared: &Shared) -> BTreeSet<ClusterName> {
    let mut changed = BTreeSet::new();
    for (driver, set) in &shared.sets {
        let mark = shared.inventory.lock().unwrap()[driver].listing_mark();
        match set.list(&Tags::new()).await {
            Ok(listing) => {
                let listing = crate::inventory::Listing::new(listing);
                let now = shared.clock.now();
                let mut inv = shared.inventory.lock().unwrap();
                let set_inv = inv.get_mut(driver).expect("known driver");
                let first = !set_inv.listed;
                let (found, replaced) = set_inv.apply(listing, mark, now);
                changed.extend(found);
                if first {
                    changed.extend(set_inv.clusters.keys().cloned());
                    changed.extend(shared.desired.names());
                }
                let departed: Vec<ClusterName> = set_inv.departed.keys().cloned().collect();
                drop(inv);
                // Freed outside the lock.
                drop(replaced);
                // A metered node's meter ends when its departure is
                // published; others' departures are of no use.
                let (metered, unmetered): (Vec<_>, Vec<_>) = departed
                    .into_iter()
                    .partition(|c| shared.meter_price(c).is_some());
                if !unmetered.is_empty() {
                    let mut inv = shared.inventory.lock().unwrap();
                    let set_inv = inv.get_mut(driver).expect("known driver");
                    for cluster in &unmetered {
                        set_inv.departed.remove(cluster);
                    }
                }
                for cluster in metered {
                    shared.publish_soon(&cluster);
                }
            }
            Err(CloudError::RateLimited { .. }) => {
                tracing::debug!(%driver, "listing held off by the cloud's rate limit");
            }
            Err(e) => tracing::warn!(%driver, error = %e, "listing instances failed"),
        }
    }
    let mark = shared.desired.mark();
    match shared.store.list_clusters().await {
        Ok(records) => shared.desired.refresh(records, mark),
        Err(e) => tracing::warn!(error = %e, "reading desired state failed"),
    }
    let mark = shared.orgs.mark();
    match shared.store.list_orgs().await {
        Ok(orgs) => shared.orgs.refresh(orgs, mark),
        Err(e) => tracing::warn!(error = %e, "reading organisations failed"),
    }
    shared
        .metrics
        .observe_inventory(&shared.inventory.lock().unwrap());
    changed
}

/// Runs while this server leads. A term whose inventory is empty (one
/// that began after the server started) begins with a full pass.
pub(crate) async fn run(shared: Arc<Shared>) {
    crate::lease::each_term(shared, |shared, _| term(shared)).await
}

async fn term(shared: Arc<Shared>) {
    let listed = shared.inventory.lock().unwrap().values().all(|s| s.listed);
    let mut next_full = if listed {
        Instant::now() + shared.config.resync_interval
    } else {
        Instant::now()
    };
    let mut last_list = Instant::now();
    loop {
        let full = tokio::select! {
            _ = tokio::time::sleep_until(next_full) => true,
            _ = shared.sync_soon.notified() => false,
        };
        if !full {
            tokio::time::sleep_until(last_list + shared.config.min_list_interval).await;
        }
        last_list = Instant::now();
        let changed = sync_all(&shared).await;
        let wake: BTreeSet<ClusterName> = if full {
            next_full = Instant::now() + shared.config.resync_interval;
            // The feed brings every change of the pools; a full pass reads
            // them afresh too, so a change whose reading failed is not
            // missed for good.
            if let Err(e) = crate::pools::refresh(&shared).await {
                tracing::warn!(error = %e, "reading the pools failed");
            }
            if let Err(e) = crate::pools::refresh_shared(&shared).await {
                tracing::warn!(error = %e, "reading the shared configs failed");
            }
            if let Err(e) = crate::rollout::refresh(&shared).await {
                tracing::warn!(error = %e, "reading the pools' rollouts failed");
            }
            let inv = shared.inventory.lock().unwrap();
            let mut all: BTreeSet<_> = shared.desired.names().into_iter().collect();
            for set in inv.values() {
                all.extend(set.clusters.keys().cloned());
            }
            all
        } else {
            changed
        };
        for cluster in wake {
            shared.runtime.wake(cluster);
        }
    }
}
