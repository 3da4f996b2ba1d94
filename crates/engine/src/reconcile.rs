//! One cluster's reconcile: probe its nodes, plan, act. Level-triggered and
//! idempotent: it is given a cluster's name, never a reason, compares
//! desired with observed on every instance set, and says when to look
//! again.

use std::sync::Arc;

use flotilla_cloud::{CloudError, CreateRequest, Health, Instance, InstanceSet};
use flotilla_domain::{
    plan, ClusterName, ClusterRecord, DestroyReason, InstanceId, InstanceType, LaunchVersion,
    Launches, NodeRecord, NodeState, ObservedNode, Obstacle, ObstacleCode, Plan, PoolError,
    PoolErrorKey, PoolErrorKind, PoolLaunch, WantedNodes,
};
use flotilla_store::{ClusterNodes, ClusterObstacle, Fence, GoneNode};
use futures::future::join_all;
use tokio::time::Instant;

use crate::error::ReconcileError;
use crate::runtime::Next;
use crate::{PoolSpec, Shared};

pub(crate) async fn reconcile_cluster(
    shared: Arc<Shared>,
    cluster: ClusterName,
) -> Result<Next, ReconcileError> {
    // Only the leader reconciles; a new term wakes every cluster. A term
    // whose renewal is late is not over yet: look again soon rather than
    // drop the work.
    let Some(fence) = shared.leadership.fence() else {
        return Ok(match shared.leadership.term() {
            Some(_) => Next::After(shared.config.lease_retry),
            None => Next::Idle,
        });
    };
    let start = Instant::now();
    let mut stall = None;
    let result = reconcile(&shared, &cluster, fence, &mut stall).await;
    shared.metrics.reconciled(result.is_ok(), start.elapsed());
    let obstacle_moved = note_obstacle(&shared, &cluster, &result, stall);
    // Published only if its nodes may have changed: a resync wakes every
    // cluster, and comparing each one's nodes whole every time costs the
    // leader more than the few that changed.
    let observed = {
        let inv = shared.inventory.lock().unwrap();
        crate::reflector::combine(
            inv.values()
                .flat_map(|set| set.nodes(&cluster).map(|n| n.record_hash())),
        )
    };
    if observed != shared.observed.fingerprint(&cluster) || obstacle_moved {
        shared.publish_soon(&cluster);
    }
    shared.notify_changed(&cluster);
    result
}

/// What stood in the way of the work on a cluster, if it could not be
/// done (created nodes, destroyed them) this time.
pub(crate) struct Stall {
    code: ObstacleCode,
    message: String,
    /// When the work is tried again; none: once something changes.
    retry: Option<Instant>,
    /// Met by a call this reconcile made, not only waited for (a quota or
    /// back-off met before): only a call counts again, so a cluster that
    /// waits is not republished at every wake-up.
    attempted: bool,
}

/// Keeps what stands in the cluster's way for STATUS: a failure, retried
/// when the runtime's back-off says, or a stall; cleared once a
/// reconcile meets neither. True if it now differs from what was
/// published.
fn note_obstacle(
    shared: &Shared,
    cluster: &ClusterName,
    result: &Result<Next, ReconcileError>,
    stall: Option<Stall>,
) -> bool {
    let now = shared.clock.now();
    let in_ = |at: Instant| {
        now + chrono::Duration::from_std(at.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    };
    let attempted = !matches!((result, &stall), (Ok(_), Some(s)) if !s.attempted);
    let met = match (result, stall) {
        (Err(e), _) => {
            let (code, message) = e.obstacle();
            let delay = shared.runtime.retry_delay(cluster);
            Some((code, message, Some(in_(Instant::now() + delay))))
        }
        (Ok(_), Some(s)) => Some((s.code, s.message, s.retry.map(in_))),
        (Ok(_), None) => None,
    };
    let mut obstacles = shared.obstacles.lock().unwrap();
    match met {
        // Still waiting on what stood in its way: nothing new to count.
        Some((code, _, _))
            if !attempted && obstacles.get(cluster).is_some_and(|o| o.code == code) => {}
        Some((code, message, retry_at)) => {
            let o = Obstacle::met(obstacles.get(cluster), code, message, now, retry_at);
            obstacles.insert(cluster.clone(), o);
        }
        None => {
            obstacles.remove(cluster);
        }
    }
    obstacles.get(cluster) != shared.published_obstacles.lock().unwrap().get(cluster)
}

/// Counts a failure making `pool`'s nodes for `cluster`, to be written
/// with the next publication (and counted in the metrics at once).
#[allow(clippy::too_many_arguments)]
fn note_pool_error(
    shared: &Shared,
    pool: &flotilla_domain::PoolName,
    kind: PoolErrorKind,
    code: Option<ObstacleCode>,
    cluster: &ClusterName,
    instance_type: &flotilla_domain::InstanceType,
    message: String,
) {
    let now = shared.clock.now();
    shared.metrics.pool_error(pool.as_str(), kind.as_str());
    let error = PoolError {
        key: PoolErrorKey {
            pool: pool.clone(),
            kind,
            code,
            cluster: cluster.clone(),
            instance_type: instance_type.clone(),
        },
        message,
        count: 1,
        first_at: now,
        last_at: now,
    };
    match shared.pool_errors.lock().unwrap().entry(error.key.clone()) {
        std::collections::btree_map::Entry::Occupied(mut kept) => kept.get_mut().absorb(error),
        std::collections::btree_map::Entry::Vacant(slot) => {
            slot.insert(error);
        }
    }
    shared.publish_soon(cluster);
}

/// Writes the pools' errors met since the last write; kept for the next
/// try if the store refuses them.
async fn flush_pool_errors(shared: &Shared, fence: Fence) {
    let pending: Vec<PoolError> = std::mem::take(&mut *shared.pool_errors.lock().unwrap())
        .into_values()
        .collect();
    if pending.is_empty() {
        return;
    }
    if let Err(e) = shared
        .store
        .record_pool_errors(fence, &pending, shared.clock.now())
        .await
    {
        tracing::warn!(errors = pending.len(), error = %e, "recording pools' errors failed; trying again");
        let mut kept = shared.pool_errors.lock().unwrap();
        for error in pending {
            match kept.entry(error.key.clone()) {
                std::collections::btree_map::Entry::Occupied(mut k) => k.get_mut().absorb(error),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(error);
                }
            }
        }
    }
}

/// The obstacle a cloud error is.
fn obstacle_code(e: &CloudError) -> ObstacleCode {
    match e {
        CloudError::RateLimited { .. } => ObstacleCode::RateLimited,
        CloudError::QuotaExceeded { .. } => ObstacleCode::QuotaExceeded,
        CloudError::InsufficientCapacity { .. } => ObstacleCode::NoCapacity,
        CloudError::Transient { .. } => ObstacleCode::CloudUnavailable,
        CloudError::Permanent { .. } => ObstacleCode::CloudRefused,
    }
}

/// How long the publisher gathers changed clusters before it writes them
/// in one transaction.
const PUBLISH_GATHER: std::time::Duration = std::time::Duration::from_millis(20);
/// Most clusters published in one transaction.
const PUBLISH_BATCH: usize = 500;

/// The publisher, while this server leads: writes the nodes of every
/// cluster a reconcile looked at whose nodes changed since they were last
/// published, a batch per transaction, so that every server answers
/// STATUS alike. Off the reconcile's path: a reconcile never waits for it.
pub(crate) async fn run_publisher(shared: Arc<Shared>) {
    crate::lease::each_term(shared, |shared, fence| async move {
        loop {
            shared.publish_wanted.notified().await;
            tokio::time::sleep(PUBLISH_GATHER).await;
            let clusters: Vec<ClusterName> =
                std::mem::take(&mut *shared.to_publish.lock().unwrap())
                    .into_iter()
                    .collect();
            for chunk in clusters.chunks(PUBLISH_BATCH) {
                publish(&shared, chunk, fence).await;
            }
        }
    })
    .await
}

/// Publishes every cluster whose nodes changed, at once: when the term
/// ends by this server's choice (shutdown), so that what it last observed
/// is what the other servers answer with.
pub(crate) async fn publish_all(shared: &Shared, fence: Fence) {
    let mut clusters: std::collections::BTreeSet<ClusterName> =
        shared.observed.names().into_iter().collect();
    for set in shared.inventory.lock().unwrap().values() {
        clusters.extend(set.clusters.keys().cloned());
        clusters.extend(set.departed.keys().cloned());
    }
    clusters.extend(shared.obstacles.lock().unwrap().keys().cloned());
    clusters.extend(shared.published_obstacles.lock().unwrap().keys().cloned());
    shared.to_publish.lock().unwrap().clear();
    let clusters: Vec<ClusterName> = clusters.into_iter().collect();
    for chunk in clusters.chunks(PUBLISH_BATCH) {
        publish(shared, chunk, fence).await;
    }
}

/// Publishes those of `clusters` whose nodes, as this leader observes
/// them, changed since they were last published, with the nodes that left
/// them (whose meters end there). Returns whether the store took them.
async fn publish(shared: &Shared, clusters: &[ClusterName], fence: Fence) -> bool {
    // One at a time, from the snapshot to its commit: an older snapshot
    // committed after a newer one would end running nodes' meters.
    let _one = shared.publishing.lock().await;
    let nodes = publish_nodes(shared, clusters, fence).await;
    publish_obstacles(shared, clusters, fence).await;
    flush_pool_errors(shared, fence).await;
    nodes
}

/// Publishes what stands in the way of those of `clusters` where that
/// changed since it was last published; on failure they are published
/// again later.
async fn publish_obstacles(shared: &Shared, clusters: &[ClusterName], fence: Fence) {
    let moved: Vec<ClusterObstacle> = {
        let live = shared.obstacles.lock().unwrap();
        let published = shared.published_obstacles.lock().unwrap();
        clusters
            .iter()
            .filter(|c| live.get(*c) != published.get(*c))
            .map(|c| ClusterObstacle {
                cluster: c.clone(),
                is_public: shared.desired.get(c).is_some_and(|r| r.is_public),
                obstacle: live.get(c).cloned(),
            })
            .collect()
    };
    if moved.is_empty() {
        return;
    }
    match shared
        .store
        .publish_obstacles(fence, &moved, shared.clock.now())
        .await
    {
        Ok(()) => {
            let mut published = shared.published_obstacles.lock().unwrap();
            for m in moved {
                match m.obstacle {
                    Some(o) => published.insert(m.cluster, o),
                    None => published.remove(&m.cluster),
                };
            }
        }
        Err(e) => {
            tracing::warn!(clusters = moved.len(), error = %e, "publishing what stands in clusters' way failed; trying again");
            let mut again = shared.to_publish.lock().unwrap();
            again.extend(moved.into_iter().map(|m| m.cluster));
            shared.publish_wanted.notify_one();
        }
    }
}

/// Publishes the nodes of those of `clusters` whose nodes changed (see
/// [`publish`]); the caller holds `publishing`.
async fn publish_nodes(shared: &Shared, clusters: &[ClusterName], fence: Fence) -> bool {
    let changed: Vec<ClusterNodes> = {
        let mut inv = shared.inventory.lock().unwrap();
        if !inv.values().all(|set| set.listed) {
            return false;
        }
        clusters
            .iter()
            .filter_map(|cluster| {
                let mut nodes: Vec<NodeRecord> = inv
                    .values()
                    .flat_map(|set| set.nodes(cluster).map(|n| n.record()))
                    .collect();
                nodes.sort_by(|a, b| a.launched_at.cmp(&b.launched_at).then(a.id.cmp(&b.id)));
                let gone: Vec<GoneNode> = inv
                    .values_mut()
                    .flat_map(|set| set.departed.remove(cluster).unwrap_or_default())
                    .collect();
                let meter = shared.meter_price(cluster);
                let gone = if meter.is_some() { gone } else { Vec::new() };
                (shared.observed.get(cluster) != nodes || !gone.is_empty()).then(|| ClusterNodes {
                    cluster: cluster.clone(),
                    is_public: shared.desired.get(cluster).is_some_and(|r| r.is_public),
                    nodes,
                    meter,
                    gone,
                })
            })
            .collect()
    };
    if changed.is_empty() {
        return true;
    }
    match shared
        .store
        .publish_nodes(fence, &changed, shared.clock.now())
        .await
    {
        Ok(()) => {
            for c in changed {
                shared.observed.put(&c.cluster, c.nodes);
            }
            true
        }
        Err(e) => {
            tracing::warn!(clusters = changed.len(), error = %e, "publishing nodes failed; trying again");
            {
                let mut inv = shared.inventory.lock().unwrap();
                let set = inv.values_mut().next().expect("at least one instance set");
                for c in &changed {
                    if !c.gone.is_empty() {
                        set.departed
                            .entry(c.cluster.clone())
                            .or_default()
                            .extend(c.gone.iter().cloned());
                    }
                }
            }
            let mut again = shared.to_publish.lock().unwrap();
            again.extend(changed.into_iter().map(|c| c.cluster));
            shared.publish_wanted.notify_one();
            false
        }
    }
}

/// The earliest of several "look again at" wishes.
#[derive(Default)]
struct Earliest(Option<Instant>);

impl Earliest {
    fn at(&mut self, t: Instant) {
        self.0 = Some(self.0.map_or(t, |o| o.min(t)));
    }
}

async fn reconcile(
    shared: &Shared,
    cluster: &ClusterName,
    fence: Fence,
    stall: &mut Option<Stall>,
) -> Result<Next, ReconcileError> {
    // Checked again before each action: the term may end while a probe or
    // another action is under way.
    let leads = || shared.leadership.fence() == Some(fence);
    let record = shared.desired.get(cluster);
    let pool_spec = match &record {
        Some(r) => match shared.pools.get(&r.pool) {
            Some(p) => Some(p),
            // Only making nodes needs the pool: a cluster being destroyed
            // (or wanting none) goes on without it.
            None if r.destroying || r.node_capacity.get() == 0 => None,
            None => {
                return Err(ReconcileError::PoolGone {
                    cluster: cluster.clone(),
                    pool: r.pool.to_string(),
                })
            }
        },
        None => None,
    };
    let pool = pool_spec.as_deref();
    // What its nodes are launched with, resolved once for the pass; the
    // versions they should be at are unknown while the pool's image cannot
    // be resolved (no node of its types is then outdated, and creates say
    // why).
    let launch = match (&record, &pool_spec) {
        (Some(r), Some(p)) => Some(crate::pools::launch_of(shared, &r.pool, p)),
        _ => None,
    };
    let resolved = launch.as_ref().and_then(|l| l.as_ref().ok());
    let version = resolved.map(|l| l.version.clone());
    let current: Option<Launches> = pool.map(|p| match resolved {
        Some(l) => l.launches(),
        None => Launches(
            p.preference()
                .into_iter()
                .map(|t| (t.instance_type.clone(), None))
                .collect(),
        ),
    });
    // A node of one of the pool's types at the version it launches now.
    let at_current = |ty: &InstanceType, v: Option<&LaunchVersion>| {
        v.is_some() && resolved.is_some_and(|l| l.is_current(ty, v))
    };

    let mut next = Earliest::default();
    let mut errors = Vec::new();
    let mut nodes_left = false;

    for (driver, set) in &shared.sets {
        if !shared.inventory.lock().unwrap()[driver].listed {
            // Nothing is known of this set yet; planning now could duplicate
            // nodes. The first successful listing wakes every cluster.
            nodes_left = true;
            continue;
        }
        let became_ready = probe_due(shared, driver, set.as_ref(), cluster).await;

        let wanted = match (&record, pool) {
            (Some(r), Some(p)) if !r.destroying && &p.driver == driver => {
                let count = r.node_capacity.get();
                let replace = match &version {
                    Some(v) if !shared.rollouts.replacing(&r.pool, v) => None,
                    _ => Some(p.rollout.budgets(count)),
                };
                Some(WantedNodes {
                    count,
                    launches: current.clone().unwrap_or_default(),
                    replace,
                })
            }
            _ => None,
        };
        // A replacement that became ready: the pool's rollout works.
        if let (Some(r), Some(v)) = (&record, &version) {
            if became_ready
                .iter()
                .any(|(ty, b)| at_current(ty, b.as_ref()))
            {
                shared.rollouts.succeeded(&r.pool, v);
            }
        }
        let now = shared.clock.now();
        let suspect = shared.inventory.lock().unwrap()[driver].prober_suspect();
        // Its nodes at the version its pool launches now: while the pool
        // rolls out to that version, their failures count toward stopping
        // the rollout.
        let mut at_version: Vec<InstanceId> = Vec::new();
        let mut failed_replacements: Vec<String> = Vec::new();
        let (plan, _places, pool_full, types_of) = {
            let inv = shared.inventory.lock().unwrap();
            let set_inv = &inv[driver];
            let observed: Vec<ObservedNode> =
                set_inv.nodes(cluster).map(|n| n.observed()).collect();
            if let (Some(w), Some(r), Some(v)) = (&wanted, &record, &version) {
                at_version = observed
                    .iter()
                    .filter(|n| at_current(&n.instance_type, n.version.as_ref()))
                    .map(|n| n.id.clone())
                    .collect();
                let outdated = observed.iter().any(|n| {
                    n.state != NodeState::ShuttingDown
                        && !w.launches.is_current(&n.instance_type, n.version.as_ref())
                });
                if outdated {
                    shared.rollouts.rolling(&r.pool, v);
                }
            }
            // Some type the cloud is not out of will do.
            let may_create = wanted.as_ref().map_or(0, |w| {
                w.launches
                    .0
                    .iter()
                    .map(|(ty, _)| set_inv.may_create(ty, Instant::now()))
                    .max()
                    .unwrap_or(0)
            });
            // Every node failing its probe at once: suspect the prober
            // and replace nothing for failing probes.
            let mut timeouts = shared.config.timeouts;
            if suspect {
                timeouts.boot = std::time::Duration::MAX;
                timeouts.probe = std::time::Duration::MAX;
            }
            // A pool with a most nodes: creates take places of it, held
            // until their nodes are in the inventory.
            let (mut plan, places, pool_full) = match (&wanted, &record, pool) {
                (Some(_), Some(r), Some(p)) if p.max_nodes.is_some() => {
                    let max = p.max_nodes.unwrap_or(u32::MAX);
                    let live = pool_live_nodes(shared, &inv, &r.pool);
                    let mut planned = Plan::default();
                    let (left, places) = shared.pool_places.take(&r.pool, max, live, |left| {
                        // No room to surge: replace in place, a node at a
                        // time, rather than wait for room that never comes.
                        let within = wanted.clone().map(|w| WantedNodes {
                            replace: w.replace.map(|b| b.within(left, w.count)),
                            ..w
                        });
                        planned = plan(
                            within.as_ref(),
                            &observed,
                            now,
                            &timeouts,
                            may_create.min(left),
                        );
                        planned.create
                    });
                    // The set's may_create is all or nothing (0 while a
                    // quota or a capacity back-off holds): below it, the
                    // pool's places are what limit the creates.
                    (planned, Some(places), left < may_create)
                }
                _ => (
                    plan(wanted.as_ref(), &observed, now, &timeouts, may_create),
                    None,
                    false,
                ),
            };
            if let (Some(r), Some(p)) = (&record, pool) {
                if !r.destroying && &p.driver != driver {
                    // Its pool moved to another driver: these nodes serve
                    // until that driver's current nodes can carry the
                    // cluster, as outdated nodes do.
                    let count = r.node_capacity.get();
                    let replacing = version
                        .as_ref()
                        .is_none_or(|v| shared.rollouts.replacing(&r.pool, v));
                    let floor = if replacing {
                        count - p.rollout.budgets(count).unavailable
                    } else {
                        count
                    };
                    let ready_there = inv.get(&p.driver).map_or(0, |set| {
                        set.nodes(cluster)
                            .filter(|n| {
                                n.state == NodeState::Ready
                                    && current.as_ref().is_some_and(|c| {
                                        c.is_current(&n.instance.instance_type, n.version())
                                    })
                            })
                            .count()
                    });
                    if let Some(v) = &version {
                        if observed.iter().any(|n| n.state != NodeState::ShuttingDown) {
                            shared.rollouts.rolling(&r.pool, v);
                        }
                    }
                    if (ready_there as u32) < floor {
                        plan.destroy
                            .retain(|(_, reason)| *reason != DestroyReason::Surplus);
                    }
                }
            }
            // The types of the nodes it destroys, for their pool errors.
            let types_of: std::collections::HashMap<InstanceId, InstanceType> = observed
                .into_iter()
                .filter(|n| plan.destroy.iter().any(|(id, _)| *id == n.id))
                .map(|n| (n.id, n.instance_type))
                .collect();
            (plan, places, pool_full, types_of)
        };

        // Held while acting, so a new term of this server waits for the
        // actions of the last before it lists (see `lease::begin_term`).
        let _acting = shared.acting.read().await;
        if !leads() {
            return Ok(Next::Idle);
        }
        // A metered node is on the meter before it is destroyed, so that
        // one destroyed moments after its create is charged too.
        let mut may_destroy = true;
        // The plan's creates count the outdated nodes it destroys as gone;
        // those not gone after all still hold their place.
        let mut outdated_kept = plan
            .destroy
            .iter()
            .filter(|(_, r)| *r == DestroyReason::Outdated)
            .count() as u32;
        if !plan.destroy.is_empty() && shared.meter_price(cluster).is_some() {
            let published = shared.observed.get(cluster);
            let unpublished = plan
                .destroy
                .iter()
                .any(|(id, _)| !published.iter().any(|n| &n.id == id));
            if unpublished && !publish(shared, std::slice::from_ref(cluster), fence).await {
                errors.push((
                    ObstacleCode::StoreFailed,
                    "publishing its nodes before destroying them failed".to_owned(),
                ));
                may_destroy = false;
            }
        }
        if may_destroy && !plan.destroy.is_empty() {
            let ids: Vec<InstanceId> = plan.destroy.iter().map(|(id, _)| id.clone()).collect();
            let batches = ids.chunks(set.max_batch().max(1) as usize);
            let results: Vec<Result<(), CloudError>> =
                join_all(batches.map(|batch| set.destroy_many(batch)))
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
            let now = shared.clock.now();
            for ((id, reason), result) in plan.destroy.iter().zip(results) {
                match result {
                    Ok(()) => {
                        tracing::info!(%cluster, %driver, instance = %id, reason = reason.as_str(), "destroying node");
                        if *reason == DestroyReason::Outdated {
                            outdated_kept -= 1;
                        }
                        shared.metrics.destroyed(driver, reason.as_str());
                        let given_up = match reason {
                            DestroyReason::BootTimeout => Some((
                                PoolErrorKind::BootTimeout,
                                format!(
                                    "was not ready within the boot timeout ({} s)",
                                    shared.config.timeouts.boot.as_secs()
                                ),
                            )),
                            DestroyReason::ProbeTimeout => Some((
                                PoolErrorKind::ProbeTimeout,
                                format!(
                                    "failed its health probe for longer than the probe timeout ({} s)",
                                    shared.config.timeouts.probe.as_secs()
                                ),
                            )),
                            _ => None,
                        };
                        let given_up = given_up.map(|(kind, why)| {
                            if at_version.contains(id) {
                                // Said of no node: every account reads it.
                                failed_replacements.push(format!("a new node {why}"));
                            }
                            (kind, format!("node {id} {why}; replaced"))
                        });
                        if let (Some((kind, message)), Some(r), Some(ty)) =
                            (given_up, &record, types_of.get(id))
                        {
                            note_pool_error(shared, &r.pool, kind, None, cluster, ty, message);
                        }
                        shared
                            .inventory
                            .lock()
                            .unwrap()
                            .get_mut(driver)
                            .expect("known driver")
                            .mark_destroying(cluster, id, now);
                    }
                    Err(CloudError::RateLimited { earliest_retry, .. }) => next.at(earliest_retry),
                    Err(e) => {
                        if let (Some(r), Some(ty)) = (&record, types_of.get(id)) {
                            note_pool_error(
                                shared,
                                &r.pool,
                                PoolErrorKind::DestroyFailed,
                                Some(obstacle_code(&e)),
                                cluster,
                                ty,
                                format!("destroy {id}: {e}"),
                            );
                        }
                        errors.push((obstacle_code(&e), format!("destroy {id}: {e}")))
                    }
                }
            }
            // See them leave the listing soon rather than at the next resync.
            shared.sync_soon.notify_one();
        }

        let plan = Plan {
            create: plan.create.saturating_sub(outdated_kept),
            ..plan
        };
        if plan.create > 0 && leads() {
            let (record, pool) = (
                record.as_ref().expect("creates only for a wanted cluster"),
                pool.expect("creates only for a wanted cluster"),
            );
            let refused = create(
                shared,
                driver,
                set.as_ref(),
                record,
                pool,
                launch
                    .as_ref()
                    .expect("creates only for a wanted cluster")
                    .as_ref()
                    .map(|l| &**l),
                plan.create,
                &mut next,
                &mut errors,
                stall,
            )
            .await;
            if let Some(why) = refused {
                failed_replacements.push(why);
            }
        }
        if let (Some(r), Some(p), Some(v)) = (&record, pool, &version) {
            for why in failed_replacements
                .into_iter()
                .filter(|_| shared.rollouts.is_rolling(&r.pool, v))
            {
                crate::rollout::note_failure(
                    shared,
                    fence,
                    &r.pool,
                    v,
                    p.rollout.max_failures,
                    why,
                )
                .await;
            }
        }

        let inv = shared.inventory.lock().unwrap();
        let set_inv = &inv[driver];
        if plan.deferred > 0 && pool_full {
            if let (Some(r), Some(p)) = (&record, pool) {
                // Places free as other clusters' nodes go; a resync looks
                // again.
                next.at(Instant::now() + shared.config.resync_interval);
                if stall.is_none() {
                    *stall = Some(Stall {
                        code: ObstacleCode::PoolFull,
                        message: format!(
                            "pool {} holds the most nodes it may ({}, its max_nodes); more are made once some of its clusters' nodes go",
                            r.pool,
                            p.max_nodes.unwrap_or_default()
                        ),
                        retry: None,
                        attempted: false,
                    });
                }
            }
        } else if plan.deferred > 0 {
            if let Some(pool) = pool {
                let retry = capacity_retry(set_inv, pool);
                if let Some(t) = retry {
                    next.at(t);
                }
                // Waiting for a quota or capacity met before (perhaps by
                // another cluster's create): it stands in this one's way.
                if stall.is_none() {
                    *stall = Some(match set_inv.quota_blocked_at {
                        Some(at) => quota_stall(driver, at),
                        None => capacity_stall(pool, retry),
                    });
                }
            }
        }
        let now = shared.clock.now();
        for node in set_inv.nodes(cluster) {
            nodes_left = true;
            if node.state == NodeState::ShuttingDown {
                // Destroy is asked again until the node leaves the listing.
                let since = node.last_destroy_attempt.unwrap_or(now);
                let spent = (now - since).to_std().unwrap_or_default();
                next.at(Instant::now() + shared.config.timeouts.destroy_retry.saturating_sub(spent));
            } else {
                next.at(node.next_probe);
                // Timeouts must fire even if probes stop changing anything
                // (but none does while the prober is suspect).
                let timeout = match node.state {
                    _ if suspect => None,
                    NodeState::Booting => {
                        Some((node.instance.launched_at, shared.config.timeouts.boot))
                    }
                    NodeState::Unhealthy => Some((node.state_since, shared.config.timeouts.probe)),
                    _ => None,
                };
                if let Some((since, limit)) = timeout {
                    let spent = (now - since).to_std().unwrap_or_default();
                    next.at(Instant::now() + limit.saturating_sub(spent));
                }
            }
        }
    }

    if let Some(r) = &record {
        if r.destroying && !nodes_left {
            // The meters of its last nodes end before the record goes; if
            // that cannot be written, the record stays until it can.
            if shared.meter_price(cluster).is_some()
                && !publish(shared, std::slice::from_ref(cluster), fence).await
            {
                return Err(ReconcileError::Cloud {
                    cluster: cluster.clone(),
                    code: ObstacleCode::StoreFailed,
                    message: "publishing its last nodes before forgetting it failed".to_owned(),
                });
            }
            // Forgotten and its published nodes cleared as one step for the
            // publisher, which would otherwise publish the cluster's last
            // change of nodes (none left) after it was forgotten.
            let publishing = shared.publishing.lock().await;
            let forgotten = shared
                .store
                .forget(cluster, r.generation, fence)
                .await
                .map_err(|source| ReconcileError::Store {
                    cluster: cluster.clone(),
                    source,
                })?;
            if forgotten {
                tracing::info!(%cluster, "cluster destroyed");
                shared.desired.remove(cluster, r.generation);
                // Its published nodes went with the record.
                shared.observed.put(cluster, Vec::new());
                drop(publishing);
            } else {
                drop(publishing);
                // The record changed (or went) since it was read: take the
                // store's version before looking again, so the next pass does
                // not act on the same stale copy.
                let current = shared.store.get_cluster(cluster).await.map_err(|source| {
                    ReconcileError::Store {
                        cluster: cluster.clone(),
                        source,
                    }
                })?;
                match current {
                    Some(record) => shared.desired.put(record),
                    None => shared.desired.remove(cluster, r.generation),
                }
                next.at(Instant::now());
            }
        }
    }

    if let Some((code, _)) = errors.first() {
        return Err(ReconcileError::Cloud {
            cluster: cluster.clone(),
            code: *code,
            message: errors
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    Ok(match next.0 {
        Some(t) => Next::After(t.saturating_duration_since(Instant::now())),
        None => Next::Idle,
    })
}

/// Probes the nodes of `cluster` whose probe is due; returns the launch
/// versions of those that became ready.
async fn probe_due(
    shared: &Shared,
    driver: &str,
    set: &dyn InstanceSet,
    cluster: &ClusterName,
) -> Vec<(InstanceType, Option<LaunchVersion>)> {
    let due: Vec<Instance> = {
        let inv = shared.inventory.lock().unwrap();
        let now = Instant::now();
        inv[driver]
            .nodes(cluster)
            .filter(|n| n.wants_probe(now, shared.config.probe_interval / 5))
            .map(|n| n.instance.clone())
            .collect()
    };
    if due.is_empty() {
        return Vec::new();
    }
    let results = join_all(due.iter().map(|i| async move {
        let health = set.probe(i).await;
        // Ready but not yet reachable as far as we know: ask where.
        let address = match health {
            Health::Ready if i.address.is_none() => set.address(i).await,
            _ => None,
        };
        (health, address)
    }))
    .await;
    let now = shared.clock.now();
    let mut inv = shared.inventory.lock().unwrap();
    let set_inv = inv.get_mut(driver).expect("known driver");
    let mut became_ready = Vec::new();
    for (instance, (health, address)) in due.iter().zip(results) {
        if set_inv.record_probe(
            cluster,
            &instance.id,
            health,
            address,
            now,
            shared.config.probe_interval,
        ) {
            became_ready.push((instance.instance_type.clone(), instance.pool_version()));
        }
    }
    let suspect = set_inv.prober_suspect();
    if suspect != set_inv.prober_suspected {
        set_inv.prober_suspected = suspect;
        if suspect {
            tracing::warn!(%driver, "every node of this driver that was ready fails its probe at once: suspecting the prober (this host's descriptors or network), replacing none until one answers");
        } else {
            tracing::info!(%driver, "probes answer again; failing nodes are replaced as usual");
        }
    }
    became_ready
}

#[allow(clippy::too_many_arguments)]
async fn create(
    shared: &Shared,
    driver: &str,
    set: &dyn InstanceSet,
    record: &ClusterRecord,
    pool: &PoolSpec,
    launch: Result<&PoolLaunch, &String>,
    mut remaining: u32,
    next: &mut Earliest,
    errors: &mut Vec<(ObstacleCode, String)>,
    stall: &mut Option<Stall>,
) -> Option<String> {
    let cluster = &record.name;
    let launch = match launch {
        Ok(launch) => launch,
        Err(why) => {
            errors.push((
                ObstacleCode::SharedConfigUnresolved,
                format!("cannot make nodes of pool {}: {why}", record.pool),
            ));
            return None;
        }
    };
    // What the cloud said when it last had no capacity for a type.
    let mut out_of_capacity: Option<String> = None;
    while remaining > 0 {
        // The cluster may have been destroyed or resized while this
        // reconcile probed and destroyed; never create on a stale read.
        let current = shared.desired.get(cluster);
        if current.as_ref().map(|r| (r.generation, r.destroying))
            != Some((record.generation, false))
        {
            next.at(Instant::now());
            return None;
        }
        // The pool's first type (cheapest) the cloud is not out of.
        let choice = {
            let inv = shared.inventory.lock().unwrap();
            let set_inv = &inv[driver];
            let now = Instant::now();
            let choice = launch
                .types
                .iter()
                .find(|(ty, _)| set_inv.may_create(ty, now) > 0)
                .cloned();
            if choice.is_none() {
                let retry = capacity_retry(set_inv, pool);
                if let Some(t) = retry {
                    next.at(t);
                }
                let mut s = match set_inv.quota_blocked_at {
                    Some(at) => quota_stall(driver, at),
                    None => capacity_stall(pool, retry),
                };
                if let Some(message) = &out_of_capacity {
                    s.message = format!("{}: {message}", s.message);
                }
                s.attempted = out_of_capacity.is_some();
                *stall = Some(s);
            }
            choice
        };
        let (instance_type, version) = choice?;
        let count = remaining.min(set.max_batch().max(1));
        let request = CreateRequest {
            cluster: cluster.clone(),
            pool: record.pool.clone(),
            instance_type: instance_type.clone(),
            image: launch.image.clone(),
            tags: pool.tags.clone(),
            init_data: pool.init_data.clone(),
            workload: record.workload.clone(),
            pool_version: Some(version),
            count,
            shutdown_terminates: false,
            market: None,
        };
        let result = set.create(&request).await;
        if let Err(e) = &result {
            note_pool_error(
                shared,
                &record.pool,
                PoolErrorKind::CreateFailed,
                Some(obstacle_code(e)),
                cluster,
                &instance_type,
                format!("create: {e}"),
            );
        }
        let now = shared.clock.now();
        let mut inv = shared.inventory.lock().unwrap();
        let set_inv = inv.get_mut(driver).expect("known driver");
        match result {
            Ok(made) => {
                tracing::info!(%cluster, %driver, %instance_type, count = made.len(), "created nodes");
                remaining = remaining.saturating_sub(made.len() as u32);
                set_inv.add_created(cluster, made, now);
                next.at(Instant::now());
            }
            Err(CloudError::QuotaExceeded { message }) => {
                let at = set_inv.total();
                tracing::warn!(%driver, instances = at, %message, "cloud quota reached; no creates until an instance goes away");
                set_inv.quota_blocked_at = Some(at);
                let mut s = quota_stall(driver, at);
                s.message = format!("{}: {message}", s.message);
                s.attempted = true;
                *stall = Some(s);
                return None;
            }
            Err(CloudError::InsufficientCapacity { scope, message }) => {
                // The next turn tries the pool's next type, if the scope
                // leaves it one (`may_create` honours every scope); else
                // it says why it waits.
                let until = Instant::now() + shared.config.capacity_backoff;
                tracing::warn!(%driver, %scope, %message, "no cloud capacity; backing off this scope");
                set_inv.capacity_backoff.insert(scope, until);
                next.at(until);
                out_of_capacity = Some(message);
            }
            Err(CloudError::RateLimited {
                earliest_retry,
                message,
            }) => {
                next.at(earliest_retry);
                *stall = Some(Stall {
                    code: ObstacleCode::RateLimited,
                    message: format!("the cloud asks for fewer calls: {message}"),
                    retry: Some(earliest_retry),
                    attempted: true,
                });
                return None;
            }
            Err(e) => {
                let refused = matches!(e, CloudError::Permanent { .. })
                    .then(|| format!("the cloud refused to create a new node: {e}"));
                errors.push((obstacle_code(&e), format!("create: {e}")));
                return refused;
            }
        }
    }
    None
}

/// The nodes, not shutting down, of the clusters of `pool`: those whose
/// record names it (a cluster's pool is fixed), else, for a cluster
/// without one, whose nodes' pool tag does.
fn pool_live_nodes(
    shared: &Shared,
    inv: &std::collections::BTreeMap<String, crate::inventory::SetInventory>,
    pool: &flotilla_domain::PoolName,
) -> u32 {
    inv.values()
        .flat_map(|set| set.clusters.iter())
        .filter(|(cluster, nodes)| {
            shared
                .desired
                .with(cluster, |r| &r.pool == pool)
                .unwrap_or_else(|| {
                    nodes.values().next().is_some_and(|n| {
                        n.instance
                            .tags
                            .get(flotilla_cloud::TAG_POOL)
                            .map(String::as_str)
                            == Some(pool.as_str())
                    })
                })
        })
        .map(|(_, nodes)| {
            nodes
                .values()
                .filter(|n| n.state != NodeState::ShuttingDown)
                .count() as u32
        })
        .sum()
}

fn quota_stall(driver: &str, instances: usize) -> Stall {
    Stall {
        code: ObstacleCode::QuotaExceeded,
        message: format!(
            "the cloud account of driver {driver} holds as many instances as its quota allows ({instances}); more nodes are created once one goes away"
        ),
        retry: None,
        attempted: false,
    }
}

/// When the earliest capacity back-off on one of `pool`'s types ends,
/// if every type is backed off.
fn capacity_retry(set: &crate::inventory::SetInventory, pool: &PoolSpec) -> Option<Instant> {
    let now = Instant::now();
    pool.types
        .iter()
        .map(|t| set.capacity_retry(&t.instance_type, now))
        .collect::<Option<Vec<Instant>>>()?
        .into_iter()
        .min()
}

fn capacity_stall(pool: &PoolSpec, retry: Option<Instant>) -> Stall {
    let types: Vec<String> = pool
        .preference()
        .iter()
        .map(|t| t.instance_type.to_string())
        .collect();
    let message = match types.as_slice() {
        [one] => format!("the cloud has no capacity for instance type {one} now"),
        several => format!(
            "the cloud has no capacity for any of instance types {} now",
            several.join(", ")
        ),
    };
    Stall {
        code: ObstacleCode::NoCapacity,
        message,
        retry,
        attempted: false,
    }
}
