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

/// Lists every set once and reads desired state afresh, the two at once
/// (the listing waits on the cloud, the read on the store); returns the
/// clusters whose nodes changed, and every cluster after a set's first
/// listing.
pub(crate) async fn sync_all(shared: &Arc<Shared>) -> BTreeSet<ClusterName> {
    // A task of its own, so that another worker thread takes the store's
    // rows while this one folds the listing in.
    let read = tokio::spawn({
        let shared = shared.clone();
        async move { read_records(&shared).await }
    });
    let (mut changed, first) = list_sets(shared).await;
    if let Err(e) = read.await {
        tracing::warn!(error = %e, "reading desired state stopped");
    }
    if first {
        changed.extend(shared.desired.names());
    }
    changed
}

/// Lists every set once and folds the listings into the inventory;
/// returns the clusters whose nodes changed, and whether some set was
/// listed for the first time (all its clusters are then among them).
async fn list_sets(shared: &Shared) -> (BTreeSet<ClusterName>, bool) {
    let mut changed = BTreeSet::new();
    let mut any_first = false;
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
                    any_first = true;
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
    shared
        .metrics
        .observe_inventory(&shared.inventory.lock().unwrap());
    (changed, any_first)
}

/// Reads desired state and the organisations afresh.
async fn read_records(shared: &Shared) {
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
}

/// What a full pass reads afresh besides desired state: the feed brings
/// every change of the pools, shared configs and rollouts, and this read
/// makes sure a change whose reading failed is not missed for good.
async fn refresh_pools(shared: &Shared) {
    if let Err(e) = crate::pools::refresh(shared).await {
        tracing::warn!(error = %e, "reading the pools failed");
    }
    if let Err(e) = crate::pools::refresh_shared(shared).await {
        tracing::warn!(error = %e, "reading the shared configs failed");
    }
    if let Err(e) = crate::rollout::refresh(shared).await {
        tracing::warn!(error = %e, "reading the pools' rollouts failed");
    }
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
        let changed = if full {
            tokio::join!(refresh_pools(&shared), sync_all(&shared)).1
        } else {
            sync_all(&shared).await
        };
        let wake: BTreeSet<ClusterName> = if full {
            next_full = Instant::now() + shared.config.resync_interval;
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
