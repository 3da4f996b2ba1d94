//! Organisations' two timers. Capacity requests expire at their deadline
//! (which lives in the store, so it survives restarts) and the cluster
//! shrinks with them. The accrual pass charges every organisation for the
//! nodes the cloud lists for its cluster, credits monthly allowances, and
//! shuts down clusters whose organisation has run out of money.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flotilla_store::{Fence, OrgUsage, StoreError, UsedNode};
use tokio::sync::Notify;

use crate::expiry::Deadline;
use crate::orgs::apply_org_change;
use crate::{Engine, EngineError, Shared};

/// Organisations' capacity requests: one whose deadline passed is dropped
/// and the cluster it kept shrinks.
pub(crate) struct CapacityRequests;

impl Deadline for CapacityRequests {
    const WHAT: &'static str = "capacity requests";

    async fn fire(shared: &Shared, now: DateTime<Utc>, fence: Fence) -> Result<(), StoreError> {
        for c in &shared.store.expire_capacity(now, fence).await? {
            tracing::info!(org = %c.org.name, "capacity requests expired");
            apply_org_change(shared, c);
        }
        Ok(())
    }

    async fn next(shared: &Shared) -> Result<Option<DateTime<Utc>>, StoreError> {
        shared.store.next_capacity_expiry().await
    }

    fn changed(shared: &Shared) -> &Notify {
        &shared.capacity_changed
    }
}

/// Runs while this server leads.
pub(crate) async fn run_accrual(shared: Arc<Shared>) {
    crate::lease::each_term(shared, accrual_term).await
}

async fn accrual_term(shared: Arc<Shared>, fence: Fence) {
    let mut tick = tokio::time::interval(shared.config.accrual_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A term's first pass that saw every set listed also puts every listed
    // node on the meter that is not on it yet (after an upgrade, or a
    // publication that failed); after it, the publisher keeps them.
    let mut listed_checked = false;
    loop {
        tick.tick().await;
        let check = !listed_checked && shared.inventory.lock().unwrap().values().all(|s| s.listed);
        match accrual_pass(&shared, fence, check).await {
            // Done only if there were organisations to look at.
            Ok(stats) => listed_checked |= check && stats.orgs > 0,
            Err(e) => {
                tracing::warn!(error = %e, "charging organisations failed; the next pass charges the whole interval")
            }
        }
    }
}

/// What one accrual pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccrualStats {
    pub orgs: usize,
    pub nodes: usize,
    /// Organisations whose pass did more than charge (allowance, shutdown).
    pub changed: usize,
    pub elapsed: Duration,
    /// Of which the store's transaction.
    pub store: Duration,
}

/// One pass; with `listed`, every node the inventory lists for an
/// organisation goes to the store too, to be put on the meter if it is not.
async fn accrual_pass(
    shared: &Shared,
    fence: Fence,
    listed: bool,
) -> Result<AccrualStats, EngineError> {
    let started = Instant::now();
    let orgs = shared.orgs.pools();
    if orgs.is_empty() {
        return Ok(AccrualStats {
            orgs: 0,
            nodes: 0,
            changed: 0,
            elapsed: started.elapsed(),
            store: Duration::ZERO,
        });
    }
    let usage: Vec<OrgUsage> = if !listed {
        Vec::new()
    } else {
        let inv = shared.inventory.lock().unwrap();
        orgs.iter()
            .filter_map(|(org, pool)| {
                let prices = shared
                    .pools
                    .get(pool)
                    .map(|p| p.prices())
                    .unwrap_or_default();
                let nodes: Vec<_> = inv
                    .values()
                    .flat_map(|set| {
                        set.nodes(org).map(|n| UsedNode {
                            id: n.instance.id.clone(),
                            launched_at: n.instance.launched_at,
                            price_per_hour: prices.of(&n.instance.instance_type),
                        })
                    })
                    .collect();
                (!nodes.is_empty()).then(|| OrgUsage {
                    org: org.clone(),
                    nodes,
                })
            })
            .collect()
    };
    let nodes = {
        let inv = shared.inventory.lock().unwrap();
        orgs.iter()
            .map(|(org, _)| {
                inv.values()
                    .map(|set| set.nodes(org).count())
                    .sum::<usize>()
            })
            .sum()
    };
    let store_started = Instant::now();
    let changed = shared
        .store
        .accrue(&usage, shared.clock.now(), fence)
        .await?;
    let store = store_started.elapsed();
    for c in &changed {
        apply_org_change(shared, c);
    }
    Ok(AccrualStats {
        orgs: orgs.len(),
        nodes,
        changed: changed.len(),
        elapsed: started.elapsed(),
        store,
    })
}

impl Engine {
    /// Runs one accrual pass now, as the server runs them every
    /// `accrual_interval` after its first (tests and benchmarks). Only the
    /// leader charges.
    pub async fn accrue_now(&self) -> Result<AccrualStats, EngineError> {
        let fence = self
            .shared
            .leadership
            .fence()
            .ok_or(EngineError::NotLeading)?;
        accrual_pass(&self.shared, fence, false).await
    }
}
