//! The planner: given what a cluster wants and what the cloud shows for it,
//! decide which instances to create and which to destroy. Pure and
//! idempotent: calling it twice with the same inputs gives the same plan, and
//! applying a plan then calling it again with the new observation gives an
//! empty one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::{InstanceId, InstanceType};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Created (or adopted after a restart) and not yet seen healthy.
    Booting,
    /// Its last probe succeeded.
    Ready,
    /// Was ready; probes fail since `state_since`.
    Unhealthy,
    /// Destroy was asked for; waits to leave the cloud's listing.
    ShuttingDown,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Booting => "booting",
            NodeState::Ready => "ready",
            NodeState::Unhealthy => "unhealthy",
            NodeState::ShuttingDown => "shutting_down",
        }
    }

    pub fn parse(s: &str) -> Option<NodeState> {
        [
            NodeState::Booting,
            NodeState::Ready,
            NodeState::Unhealthy,
            NodeState::ShuttingDown,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

/// A node as the leader publishes it for every server to answer STATUS
/// from: what the leader observed, without the probe bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeRecord {
    pub id: InstanceId,
    pub instance_type: InstanceType,
    pub launched_at: DateTime<Utc>,
    pub state: NodeState,
    pub state_since: DateTime<Utc>,
    pub address: Option<String>,
}

impl NodeRecord {
    pub fn observed(&self) -> ObservedNode {
        ObservedNode {
            id: self.id.clone(),
            instance_type: self.instance_type.clone(),
            launched_at: self.launched_at,
            state: self.state,
            state_since: self.state_since,
            last_destroy_attempt: None,
        }
    }
}

/// One instance of a cluster as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedNode {
    pub id: InstanceId,
    pub instance_type: InstanceType,
    pub launched_at: DateTime<Utc>,
    pub state: NodeState,
    /// When the node entered `state`.
    pub state_since: DateTime<Utc>,
    pub last_destroy_attempt: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A node still booting this long after launch is replaced.
    pub boot: Duration,
    /// A node unhealthy this long is replaced.
    pub probe: Duration,
    /// How long to wait for a destroyed instance to leave the listing before
    /// asking again.
    pub destroy_retry: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            boot: Duration::from_secs(600),
            probe: Duration::from_secs(120),
            destroy_retry: Duration::from_secs(30),
        }
    }
}

/// What one cluster wants from one instance set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedNodes {
    pub count: u32,
    pub instance_type: InstanceType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestroyReason {
    /// The cluster wants fewer nodes (or none).
    Surplus,
    /// Booting for longer than the boot timeout.
    BootTimeout,
    /// Unhealthy for longer than the probe timeout.
    ProbeTimeout,
    /// Of an instance type the pool no longer uses.
    Outdated,
    /// Destroy was asked before and the instance is still listed.
    Retry,
}

impl DestroyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DestroyReason::Surplus => "surplus",
            DestroyReason::BootTimeout => "boot_timeout",
            DestroyReason::ProbeTimeout => "probe_timeout",
            DestroyReason::Outdated => "outdated",
            DestroyReason::Retry => "retry",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Instances to create, all of the wanted type.
    pub create: u32,
    pub destroy: Vec<(InstanceId, DestroyReason)>,
    /// Instances the cluster still lacks but may not create now
    /// (`may_create` was lower than the need).
    pub deferred: u32,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create == 0 && self.destroy.is_empty()
    }
}

fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - since).to_std().unwrap_or_default()
}

/// Plans one cluster on one instance set.
///
/// `wanted` is `None` when the cluster wants nothing from this set (it is
/// being destroyed, or its pool lives elsewhere). `may_create` caps creates
/// (quota, capacity back-off); the rest of the need is reported as
/// `deferred`.
pub fn plan(
    wanted: Option<&WantedNodes>,
    nodes: &[ObservedNode],
    now: DateTime<Utc>,
    timeouts: &Timeouts,
    may_create: u32,
) -> Plan {
    let mut plan = Plan::default();
    let mut keep: Vec<&ObservedNode> = Vec::new();
    let mut outdated: Vec<&ObservedNode> = Vec::new();

    for node in nodes {
        match node.state {
            NodeState::ShuttingDown => {
                let due = node
                    .last_destroy_attempt
                    .is_none_or(|at| elapsed(at, now) >= timeouts.destroy_retry);
                if due {
                    plan.destroy.push((node.id.clone(), DestroyReason::Retry));
                }
            }
            NodeState::Booting if elapsed(node.launched_at, now) >= timeouts.boot => {
                plan.destroy
                    .push((node.id.clone(), DestroyReason::BootTimeout));
            }
            NodeState::Unhealthy if elapsed(node.state_since, now) >= timeouts.probe => {
                plan.destroy
                    .push((node.id.clone(), DestroyReason::ProbeTimeout));
            }
            _ => match wanted {
                Some(w) if node.instance_type == w.instance_type => keep.push(node),
                Some(_) => outdated.push(node),
                None => plan.destroy.push((node.id.clone(), DestroyReason::Surplus)),
            },
        }
    }

    let Some(wanted) = wanted else {
        return plan;
    };
    let want = wanted.count as usize;

    if keep.len() > want {
        // Give up the least useful first: unhealthy, then booting, then
        // ready; among equals the newest, so long-lived nodes stay put.
        keep.sort_by(|a, b| {
            rank(a.state)
                .cmp(&rank(b.state))
                .then(b.launched_at.cmp(&a.launched_at))
                .then(a.id.cmp(&b.id))
        });
        for node in keep.drain(..keep.len() - want) {
            plan.destroy.push((node.id.clone(), DestroyReason::Surplus));
        }
    } else {
        let missing = (want - keep.len()) as u32;
        plan.create = missing.min(may_create);
        plan.deferred = missing - plan.create;
    }

    // Nodes of an old type go once the new type can carry the cluster.
    let ready = keep.iter().filter(|n| n.state == NodeState::Ready).count();
    if ready >= want {
        for node in outdated {
            plan.destroy
                .push((node.id.clone(), DestroyReason::Outdated));
        }
    }
    plan
}

fn rank(state: NodeState) -> u8 {
    match state {
        NodeState::Unhealthy => 0,
        NodeState::Booting => 1,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn secs(s: i64) -> chrono::Duration {
        chrono::Duration::seconds(s)
    }

    fn node(id: &str, ty: &str, state: NodeState, launched: i64) -> ObservedNode {
        ObservedNode {
            id: InstanceId::new(id),
            instance_type: InstanceType::new(ty).unwrap(),
            launched_at: t0() + secs(launched),
            state,
            state_since: t0() + secs(launched),
            last_destroy_attempt: None,
        }
    }

    fn want(count: u32) -> WantedNodes {
        WantedNodes {
            count,
            instance_type: InstanceType::new("small").unwrap(),
        }
    }

    fn ids(plan: &Plan) -> Vec<(&str, DestroyReason)> {
        plan.destroy.iter().map(|(i, r)| (i.as_str(), *r)).collect()
    }

    #[test]
    fn creates_what_is_missing() {
        let nodes = [node("a", "small", NodeState::Ready, 0)];
        let p = plan(Some(&want(3)), &nodes, t0(), &Timeouts::default(), 100);
        assert_eq!(p.create, 2);
        assert!(p.destroy.is_empty());
    }

    #[test]
    fn creates_are_capped_and_the_rest_deferred() {
        let p = plan(Some(&want(5)), &[], t0(), &Timeouts::default(), 2);
        assert_eq!((p.create, p.deferred), (2, 3));
    }

    #[test]
    fn converged_cluster_plans_nothing() {
        let nodes = [
            node("a", "small", NodeState::Ready, 0),
            node("b", "small", NodeState::Booting, 0),
        ];
        let p = plan(
            Some(&want(2)),
            &nodes,
            t0() + secs(5),
            &Timeouts::default(),
            100,
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn scale_down_prefers_unhealthy_then_booting_then_newest() {
        let nodes = [
            node("old-ready", "small", NodeState::Ready, 0),
            node("new-ready", "small", NodeState::Ready, 10),
            node("booting", "small", NodeState::Booting, 5),
            node("sick", "small", NodeState::Unhealthy, 1),
        ];
        let p = plan(
            Some(&want(1)),
            &nodes,
            t0() + secs(20),
            &Timeouts::default(),
            100,
        );
        assert_eq!(
            ids(&p),
            vec![
                ("sick", DestroyReason::Surplus),
                ("booting", DestroyReason::Surplus),
                ("new-ready", DestroyReason::Surplus),
            ]
        );
        assert_eq!(p.create, 0);
    }

    #[test]
    fn unwanted_cluster_loses_every_node() {
        let nodes = [
            node("a", "small", NodeState::Ready, 0),
            node("b", "other", NodeState::Booting, 0),
        ];
        let p = plan(None, &nodes, t0(), &Timeouts::default(), 100);
        assert_eq!(p.destroy.len(), 2);
        assert_eq!(p.create, 0);
    }

    #[test]
    fn boot_timeout_replaces_the_node() {
        let nodes = [node("slow", "small", NodeState::Booting, 0)];
        let timeouts = Timeouts::default();
        let before = t0() + chrono::Duration::from_std(timeouts.boot).unwrap() - secs(1);
        assert!(plan(Some(&want(1)), &nodes, before, &timeouts, 100).is_empty());
        let after = before + secs(1);
        let p = plan(Some(&want(1)), &nodes, after, &timeouts, 100);
        assert_eq!(ids(&p), vec![("slow", DestroyReason::BootTimeout)]);
        assert_eq!(p.create, 1, "the replacement is created in the same pass");
    }

    #[test]
    fn probe_timeout_replaces_an_unhealthy_node() {
        let mut sick = node("sick", "small", NodeState::Unhealthy, 0);
        sick.state_since = t0() + secs(100);
        let timeouts = Timeouts::default();
        let p = plan(
            Some(&want(1)),
            &[sick.clone()],
            t0() + secs(101),
            &timeouts,
            100,
        );
        assert!(p.is_empty());
        let late = t0() + secs(100) + chrono::Duration::from_std(timeouts.probe).unwrap();
        let p = plan(Some(&want(1)), &[sick], late, &timeouts, 100);
        assert_eq!(ids(&p), vec![("sick", DestroyReason::ProbeTimeout)]);
        assert_eq!(p.create, 1);
    }

    #[test]
    fn shutting_down_nodes_are_retried_only_after_the_retry_interval() {
        let mut leaving = node("leaving", "small", NodeState::ShuttingDown, 0);
        leaving.last_destroy_attempt = Some(t0());
        let timeouts = Timeouts::default();
        let p = plan(
            Some(&want(1)),
            &[leaving.clone()],
            t0() + secs(1),
            &timeouts,
            100,
        );
        assert!(p.destroy.is_empty());
        assert_eq!(p.create, 1, "a leaving node does not count toward capacity");
        let later = t0() + chrono::Duration::from_std(timeouts.destroy_retry).unwrap();
        let p = plan(Some(&want(1)), &[leaving], later, &timeouts, 100);
        assert_eq!(ids(&p), vec![("leaving", DestroyReason::Retry)]);
    }

    #[test]
    fn outdated_nodes_go_once_replacements_are_ready() {
        let nodes = [node("old", "big", NodeState::Ready, 0)];
        let p = plan(Some(&want(1)), &nodes, t0(), &Timeouts::default(), 100);
        assert_eq!(p.create, 1);
        assert!(
            p.destroy.is_empty(),
            "keep the old node until the new one is ready"
        );
        let nodes = [
            node("old", "big", NodeState::Ready, 0),
            node("new", "small", NodeState::Ready, 5),
        ];
        let p = plan(Some(&want(1)), &nodes, t0(), &Timeouts::default(), 100);
        assert_eq!(ids(&p), vec![("old", DestroyReason::Outdated)]);
    }

    #[test]
    fn plan_is_idempotent_once_applied() {
        let mut nodes = vec![
            node("a", "small", NodeState::Ready, 0),
            node("b", "small", NodeState::Ready, 1),
            node("c", "small", NodeState::Ready, 2),
        ];
        let p = plan(Some(&want(2)), &nodes, t0(), &Timeouts::default(), 100);
        for (id, _) in &p.destroy {
            let n = nodes.iter_mut().find(|n| &n.id == id).unwrap();
            n.state = NodeState::ShuttingDown;
            n.last_destroy_attempt = Some(t0());
        }
        let again = plan(Some(&want(2)), &nodes, t0(), &Timeouts::default(), 100);
        assert!(again.is_empty(), "{again:?}");
    }
}
