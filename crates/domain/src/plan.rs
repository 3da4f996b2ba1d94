//! The planner: given what a cluster wants and what the cloud shows for it,
//! decide which instances to create and which to destroy. Pure and
//! idempotent: calling it twice with the same inputs gives the same plan, and
//! applying a plan then calling it again with the new observation gives an
//! empty one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::{InstanceId, InstanceType};
use crate::rollout::LaunchVersion;

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
    /// The version of its pool it was launched at; None for a node
    /// launched before nodes carried it.
    pub pool_version: Option<LaunchVersion>,
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
            version: self.pool_version.clone(),
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
    /// The version of its pool it was launched at, if it says.
    pub version: Option<LaunchVersion>,
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
    /// What its pool launches now: a node of another type or version is
    /// outdated.
    pub launches: Launches,
    /// How outdated nodes are replaced; None while the pool's rollout is
    /// paused or stopped: they then stay as part of the cluster (and go
    /// only as surplus).
    pub replace: Option<Budgets>,
}

/// The instance types a pool launches now, each with the version of the
/// pool its nodes get (None: not known now, so any node of the type
/// counts as current).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Launches(pub Vec<(InstanceType, Option<LaunchVersion>)>);

impl Launches {
    /// Whether a node of `instance_type` launched at `version` is what the
    /// pool launches now: of one of its types, at that type's version (a
    /// node without one, launched before nodes carried their pool's
    /// version, counts as current).
    pub fn is_current(
        &self,
        instance_type: &InstanceType,
        version: Option<&LaunchVersion>,
    ) -> bool {
        self.0
            .iter()
            .any(|(ty, wanted)| launched_as(ty, wanted.as_ref(), instance_type, version))
    }
}

/// Whether a node of `instance_type` at `version` is one a pool launching
/// `wanted_type` at `wanted_version` makes now (an unknown version on
/// either side matches).
pub(crate) fn launched_as(
    wanted_type: &InstanceType,
    wanted_version: Option<&LaunchVersion>,
    instance_type: &InstanceType,
    version: Option<&LaunchVersion>,
) -> bool {
    wanted_type == instance_type
        && match (wanted_version, version) {
            (Some(wanted), Some(node)) => wanted == node,
            _ => true,
        }
}

/// How far a cluster may stray from its wanted count while it replaces
/// outdated nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Nodes beyond the wanted count.
    pub surge: u32,
    /// Ready nodes below the wanted count.
    pub unavailable: u32,
}

impl Budgets {
    /// The budgets of a cluster that wants `wanted` nodes. Never both
    /// zero for a cluster with nodes: that could replace nothing, so one
    /// node may then be unavailable.
    pub fn new(surge: u32, unavailable: u32, wanted: u32) -> Self {
        let unavailable = unavailable.min(wanted);
        if surge == 0 && unavailable == 0 && wanted > 0 {
            Self {
                surge: 0,
                unavailable: 1,
            }
        } else {
            Self { surge, unavailable }
        }
    }

    /// These budgets with at most `room` nodes of surge (the places its
    /// pool has left): with none, replacing goes on in place.
    pub fn within(self, room: u32, wanted: u32) -> Self {
        Self::new(self.surge.min(room), self.unavailable, wanted)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestroyReason {
    /// The cluster wants fewer nodes (or none).
    Surplus,
    /// Booting for longer than the boot timeout.
    BootTimeout,
    /// Unhealthy for longer than the probe timeout.
    ProbeTimeout,
    /// Launched from an older version of its pool (another instance
    /// type, image, …), and replaced.
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
    /// Instances to create (of which type, the caller decides).
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
                Some(w)
                    if w.launches
                        .is_current(&node.instance_type, node.version.as_ref()) =>
                {
                    keep.push(node)
                }
                Some(_) => outdated.push(node),
                None => plan.destroy.push((node.id.clone(), DestroyReason::Surplus)),
            },
        }
    }

    let Some(wanted) = wanted else {
        return plan;
    };
    let want = wanted.count as usize;

    // Least useful first: unhealthy, then booting, then ready.
    keep.sort_by(|a, b| {
        rank(a.state)
            .cmp(&rank(b.state))
            .then(b.launched_at.cmp(&a.launched_at))
            .then(a.id.cmp(&b.id))
    });
    if keep.len() > want {
        // Among equals the newest go, so long-lived nodes stay put.
        for node in keep.drain(..keep.len() - want) {
            plan.destroy.push((node.id.clone(), DestroyReason::Surplus));
        }
    }

    // Outdated nodes, least useful first and among ready ones the oldest:
    // the order they are replaced in.
    outdated.sort_by(|a, b| {
        rank(a.state)
            .cmp(&rank(b.state))
            .then(a.launched_at.cmp(&b.launched_at))
            .then(a.id.cmp(&b.id))
    });
    let mut total = keep.len() + outdated.len();
    let mut ready = keep
        .iter()
        .chain(&outdated)
        .filter(|n| n.state == NodeState::Ready)
        .count();
    // An outdated node goes when the cluster keeps enough ready nodes
    // without it. One not yet seen ready is no exception: after a restart
    // every adopted node is booting until its first probe, and is no less
    // needed for it. While the pool's rollout is paused or stopped, only
    // as surplus: outdated nodes serve as they are, and a replacement
    // already under way still finishes.
    let (floor, surplus_only) = match wanted.replace {
        Some(budgets) => (want.saturating_sub(budgets.unavailable as usize), false),
        None => (want, true),
    };
    let reason = if surplus_only {
        DestroyReason::Surplus
    } else {
        DestroyReason::Outdated
    };
    for node in outdated {
        if surplus_only && total <= want {
            break;
        }
        let is_ready = node.state == NodeState::Ready;
        let ready_without = ready - usize::from(is_ready);
        if ready_without < floor {
            continue;
        }
        ready -= usize::from(is_ready);
        total -= 1;
        plan.destroy.push((node.id.clone(), reason));
    }

    let missing = want.saturating_sub(keep.len());
    let surge = wanted.replace.map_or(0, |b| b.surge as usize);
    let room = (want + surge).saturating_sub(total);
    let create = missing.min(room) as u32;
    plan.create = create.min(may_create);
    plan.deferred = create - plan.create;
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
            version: None,
        }
    }

    fn want(count: u32) -> WantedNodes {
        WantedNodes {
            count,
            launches: Launches(vec![(InstanceType::new("small").unwrap(), None)]),
            replace: Some(crate::Rollout::default().budgets(count)),
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

    fn versioned(
        id: &str,
        version: &LaunchVersion,
        state: NodeState,
        launched: i64,
    ) -> ObservedNode {
        ObservedNode {
            version: Some(version.clone()),
            ..node(id, "small", state, launched)
        }
    }

    fn v(n: u8) -> LaunchVersion {
        LaunchVersion::parse(&format!("{n:016x}")).unwrap()
    }

    fn rolling(count: u32, surge: u32, unavailable: u32) -> WantedNodes {
        WantedNodes {
            launches: Launches(vec![(InstanceType::new("small").unwrap(), Some(v(2)))]),
            replace: Some(Budgets { surge, unavailable }),
            ..want(count)
        }
    }

    /// Applies plans to `nodes` until one is empty: created nodes boot in
    /// one step and are ready the next; destroyed ones leave at once.
    /// Returns the steps taken, checking at each that the cluster never
    /// has fewer ready nodes than `floor` nor more than `ceiling` nodes.
    fn roll(
        wanted: &WantedNodes,
        mut nodes: Vec<ObservedNode>,
        floor: usize,
        ceiling: usize,
    ) -> (usize, Vec<ObservedNode>) {
        let mut made = 0;
        for step in 1..100 {
            let p = plan(Some(wanted), &nodes, t0(), &Timeouts::default(), 100);
            let booting = nodes.iter().any(|n| n.state == NodeState::Booting);
            if p.is_empty() && !booting {
                return (step, nodes);
            }
            nodes.retain(|n| !p.destroy.iter().any(|(id, _)| id == &n.id));
            let ready = nodes.iter().filter(|n| n.state == NodeState::Ready).count();
            assert!(
                ready >= floor,
                "step {step}: {ready} ready, fewer than {floor}"
            );
            for n in &mut nodes {
                n.state = NodeState::Ready;
            }
            for _ in 0..p.create {
                made += 1;
                nodes.push(versioned(
                    &format!("new-{made}"),
                    wanted.launches.0[0].1.as_ref().unwrap(),
                    NodeState::Booting,
                    step as i64,
                ));
            }
            assert!(
                nodes.len() <= ceiling,
                "step {step}: {} nodes, more than {ceiling}",
                nodes.len()
            );
        }
        panic!("no convergence");
    }

    #[test]
    fn a_rollout_surges_and_never_drops_below_the_wanted_ready_count() {
        let old: Vec<ObservedNode> = (0..10)
            .map(|i| versioned(&format!("old-{i}"), &v(1), NodeState::Ready, i))
            .collect();
        let (steps, nodes) = roll(&rolling(10, 3, 0), old.clone(), 10, 13);
        assert!(nodes.iter().all(|n| n.version == Some(v(2))), "{nodes:?}");
        assert_eq!(nodes.len(), 10);
        // Four waves of three, each a create then (ready) a destroy.
        assert!(steps <= 10, "{steps} steps");

        // One at a time replaces one old node per wave, the oldest first.
        let p = plan(
            Some(&rolling(10, 1, 0)),
            &old,
            t0(),
            &Timeouts::default(),
            100,
        );
        assert_eq!((p.create, p.destroy.len()), (1, 0));
        let mut with_one = old.clone();
        with_one.push(versioned("new", &v(2), NodeState::Ready, 20));
        let p = plan(
            Some(&rolling(10, 1, 0)),
            &with_one,
            t0(),
            &Timeouts::default(),
            100,
        );
        assert_eq!(ids(&p), vec![("old-0", DestroyReason::Outdated)]);
        assert_eq!(
            p.create, 1,
            "the next replacement starts as the old node goes"
        );
    }

    #[test]
    fn a_pool_that_cannot_surge_replaces_within_its_unavailability() {
        let old: Vec<ObservedNode> = (0..4)
            .map(|i| versioned(&format!("old-{i}"), &v(1), NodeState::Ready, i))
            .collect();
        let p = plan(
            Some(&rolling(4, 0, 1)),
            &old,
            t0(),
            &Timeouts::default(),
            100,
        );
        assert_eq!(ids(&p), vec![("old-0", DestroyReason::Outdated)]);
        assert_eq!(p.create, 1, "its replacement takes its place");
        let (_, nodes) = roll(&rolling(4, 0, 1), old, 3, 4);
        assert!(nodes.iter().all(|n| n.version == Some(v(2))));
    }

    #[test]
    fn a_paused_rollout_keeps_outdated_nodes_serving() {
        let old: Vec<ObservedNode> = (0..3)
            .map(|i| versioned(&format!("old-{i}"), &v(1), NodeState::Ready, i))
            .collect();
        let paused = WantedNodes {
            replace: None,
            ..rolling(3, 1, 0)
        };
        assert!(plan(Some(&paused), &old, t0(), &Timeouts::default(), 100).is_empty());
        // It still grows with the new version and shrinks by old nodes.
        let p = plan(
            Some(&WantedNodes {
                count: 4,
                ..paused.clone()
            }),
            &old,
            t0(),
            &Timeouts::default(),
            100,
        );
        assert_eq!((p.create, p.destroy.len()), (1, 0));
        let p = plan(
            Some(&WantedNodes { count: 2, ..paused }),
            &old,
            t0(),
            &Timeouts::default(),
            100,
        );
        assert_eq!(ids(&p), vec![("old-0", DestroyReason::Surplus)]);
    }

    #[test]
    fn a_node_of_any_of_the_pools_types_is_current() {
        let both = WantedNodes {
            launches: Launches(vec![
                (InstanceType::new("small").unwrap(), Some(v(2))),
                (InstanceType::new("big").unwrap(), Some(v(3))),
            ]),
            ..rolling(2, 1, 0)
        };
        let nodes = [
            versioned("a", &v(2), NodeState::Ready, 0),
            ObservedNode {
                version: Some(v(3)),
                ..node("b", "big", NodeState::Ready, 1)
            },
        ];
        assert!(plan(Some(&both), &nodes, t0(), &Timeouts::default(), 100).is_empty());
        // Of a kept type at another type's version: outdated.
        let crossed = [
            versioned("a", &v(2), NodeState::Ready, 0),
            ObservedNode {
                version: Some(v(2)),
                ..node("b", "big", NodeState::Ready, 1)
            },
        ];
        let p = plan(Some(&both), &crossed, t0(), &Timeouts::default(), 100);
        assert_eq!(p.create, 1, "{p:?}");
    }

    #[test]
    fn nodes_without_a_version_count_as_current() {
        let nodes = [node("a", "small", NodeState::Ready, 0)];
        assert!(plan(
            Some(&rolling(1, 1, 0)),
            &nodes,
            t0(),
            &Timeouts::default(),
            100
        )
        .is_empty());
    }

    #[test]
    fn outdated_nodes_not_yet_ready_go_only_once_the_cluster_is_ready_without_them() {
        // As after a restart: every adopted node booting until probed.
        let adopted: Vec<ObservedNode> = (0..3)
            .map(|i| versioned(&format!("old-{i}"), &v(1), NodeState::Booting, i))
            .collect();
        let p = plan(
            Some(&rolling(3, 1, 0)),
            &adopted,
            t0(),
            &Timeouts::default(),
            100,
        );
        assert!(p.destroy.is_empty(), "{p:?}");
        assert_eq!(p.create, 1, "the surge goes on");

        let nodes = [
            versioned("old-booting", &v(1), NodeState::Booting, 1),
            versioned("new-1", &v(2), NodeState::Ready, 2),
            versioned("new-2", &v(2), NodeState::Ready, 3),
        ];
        let p = plan(
            Some(&rolling(2, 1, 0)),
            &nodes,
            t0(),
            &Timeouts::default(),
            100,
        );
        assert_eq!(ids(&p), vec![("old-booting", DestroyReason::Outdated)]);
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
