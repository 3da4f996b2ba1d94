use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_domain::NodeState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::inventory::SetInventory;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    driver: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestroyLabels {
    driver: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolErrorLabels {
    pool: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriverLabels {
    driver: String,
}

pub(crate) struct EngineMetrics {
    nodes: Family<NodeLabels, Gauge>,
    at_quota: Family<DriverLabels, Gauge>,
    reconciles: Family<OutcomeLabels, Counter>,
    reconcile_seconds: Histogram,
    destroys: Family<DestroyLabels, Counter>,
    expired: Counter,
    pool_errors: Family<PoolErrorLabels, Counter>,
}

/// Reconciles completed, whatever their outcome (what
/// `flotilla_reconciles_total` sums to): a handle on the metric's own
/// counters, read without encoding the registry and without holding the
/// engine.
#[derive(Clone)]
pub struct ReconcileCount(Family<OutcomeLabels, Counter>);

impl ReconcileCount {
    pub fn get(&self) -> u64 {
        ["ok", "error"]
            .into_iter()
            .map(|outcome| self.0.get_or_create(&OutcomeLabels { outcome }).get())
            .sum()
    }
}

impl EngineMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            nodes: Family::default(),
            at_quota: Family::default(),
            reconciles: Family::default(),
            reconcile_seconds: Histogram::new([0.0005, 0.002, 0.01, 0.05, 0.25, 1.0, 5.0, 30.0]),
            destroys: Family::default(),
            expired: Counter::default(),
            pool_errors: Family::default(),
        };
        registry.register(
            "flotilla_nodes",
            "Nodes by driver and state, as of the last listing",
            m.nodes.clone(),
        );
        registry.register(
            "flotilla_at_quota",
            "1 while a driver refuses creates for quota",
            m.at_quota.clone(),
        );
        registry.register(
            "flotilla_reconciles",
            "Cluster reconciles by outcome",
            m.reconciles.clone(),
        );
        registry.register(
            "flotilla_reconcile_seconds",
            "Time one cluster reconcile took",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "flotilla_node_destroys",
            "Nodes destroyed, by reason",
            m.destroys.clone(),
        );
        registry.register(
            "flotilla_pool_errors",
            "Failures making pools' nodes, by pool and kind (see GET /api/v1/pools/NAME/errors)",
            m.pool_errors.clone(),
        );
        registry.register(
            "flotilla_scheduled_deletions_fired",
            "Clusters destroyed because their time-to-live ran out",
            m.expired.clone(),
        );
        m
    }

    pub fn reconciled(&self, ok: bool, took: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    /// A handle on the count of reconciles completed.
    pub fn reconcile_count(&self) -> ReconcileCount {
        ReconcileCount(self.reconciles.clone())
    }

    pub fn destroyed(&self, driver: &str, reason: &'static str) {
        self.destroys
            .get_or_create(&DestroyLabels {
                driver: driver.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn pool_error(&self, pool: &str, kind: &'static str) {
        self.pool_errors
            .get_or_create(&PoolErrorLabels {
                pool: pool.to_owned(),
                kind,
            })
            .inc();
    }

    pub fn expired(&self) {
        self.expired.inc();
    }

    pub fn observe_inventory(&self, inventory: &BTreeMap<String, SetInventory>) {
        for (driver, set) in inventory {
            let mut counts: BTreeMap<NodeState, i64> = [
                NodeState::Booting,
                NodeState::Ready,
                NodeState::Unhealthy,
                NodeState::ShuttingDown,
            ]
            .into_iter()
            .map(|s| (s, 0))
            .collect();
            for nodes in set.clusters.values() {
                for node in nodes.values() {
                    *counts.entry(node.state).or_default() += 1;
                }
            }
            for (state, n) in counts {
                self.nodes
                    .get_or_create(&NodeLabels {
                        driver: driver.clone(),
                        state: state.as_str(),
                    })
                    .set(n);
            }
            self.at_quota
                .get_or_create(&DriverLabels {
                    driver: driver.clone(),
                })
                .set(i64::from(set.quota_blocked_at.is_some()));
        }
    }
}
