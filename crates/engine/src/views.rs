//! What STATUS shows of a cluster, answered from this server's copies:
//! desired state, organisations, and the nodes this server observes (while
//! it leads) or the leader published. The front door (`flotilla-control`)
//! authorises who may ask.

use std::time::Duration;

use chrono::{DateTime, Utc};
use flotilla_domain::{
    cluster_state, ClusterName, ClusterState, InstanceId, InstanceType, LaunchVersion, NodeRecord,
    NodeState, ObservedNode, Obstacle, PoolName, Username,
};
use tokio::time::Instant;

use crate::Engine;

/// A cluster as STATUS reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    pub cluster: ClusterName,
    pub state: ClusterState,
    pub is_public: bool,
    pub node_capacity: u32,
    pub pool: Option<PoolName>,
    pub expires_at: Option<DateTime<Utc>>,
    pub nodes: Vec<NodeView>,
    /// Set when the request waited: whether the cluster settled in time.
    pub settled: Option<bool>,
    /// Set for an organisation's cluster.
    pub org: Option<OrgClusterView>,
    /// What stands in the cluster's way, if anything.
    pub obstacle: Option<Obstacle>,
    /// The account its nodes accept ssh logins for, if its pool says.
    pub ssh_user: Option<String>,
    /// What its nodes run, when it brought its own workload.
    pub workload: Option<flotilla_domain::Workload>,
    /// Replacing nodes launched from an older version of its pool, while
    /// it has any.
    pub rollout: Option<RolloutView>,
}

/// A cluster's rollout: its outdated nodes and what becomes of them.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutView {
    /// The launch version its pool makes nodes at now.
    pub version: LaunchVersion,
    /// Its nodes launched from an older one.
    pub outdated: u32,
    pub state: RolloutState,
}

/// Whether outdated nodes are being replaced.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutState {
    Rolling,
    /// Paused by `by`: replacements under way finish, no others start.
    Paused {
        by: String,
        at: DateTime<Utc>,
    },
    /// Stopped by the leader: replacements kept failing.
    Stopped {
        reason: String,
        at: DateTime<Utc>,
    },
}

impl RolloutState {
    pub fn as_str(&self) -> &'static str {
        match self {
            RolloutState::Rolling => "rolling",
            RolloutState::Paused { .. } => "paused",
            RolloutState::Stopped { .. } => "stopped",
        }
    }

    /// The state of `pool`'s rollout to `version` given what holds it.
    pub fn of(hold: Option<flotilla_store::RolloutHold>, version: &LaunchVersion) -> Self {
        match hold {
            Some(h) => match (h.paused, h.stopped) {
                (Some(p), _) => RolloutState::Paused { by: p.by, at: p.at },
                (None, Some(s)) if &s.version == version => RolloutState::Stopped {
                    reason: s.reason,
                    at: s.at,
                },
                _ => RolloutState::Rolling,
            },
            None => RolloutState::Rolling,
        }
    }
}

/// What status adds for an organisation's cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct OrgClusterView {
    pub min_nodes: u32,
    pub max_nodes: u32,
    pub requests: Vec<RequestView>,
    /// When an active request next expires (the size may change then).
    pub next_change: Option<DateTime<Utc>>,
    /// Shut down because the organisation's balance ran out.
    pub shut_down: bool,
}

/// One active capacity request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestView {
    pub user: Username,
    pub nodes: u32,
    pub expires_at: DateTime<Utc>,
}

impl ClusterView {
    pub fn ready_nodes(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.state == NodeState::Ready)
            .count()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: InstanceId,
    pub state: NodeState,
    pub address: Option<String>,
    pub instance_type: InstanceType,
    pub launched_at: DateTime<Utc>,
    /// The node's host with its cluster's workload port.
    pub workload_address: Option<String>,
    /// The version of its pool's launch configuration it was made from.
    pub pool_version: Option<LaunchVersion>,
    /// Made from an older version of its pool than it would be now, so to
    /// be replaced.
    pub outdated: bool,
}

/// `HOST:PORT` for a node at `address` (`HOST` or `HOST:PORT`, IPv6 in
/// brackets) and a workload serving `port`.
fn workload_address(address: &str, port: u16) -> String {
    let host = match address.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().to_string(),
        Err(_) => address.to_owned(),
    };
    match host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{host}]:{port}"),
        Err(_) => format!("{host}:{port}"),
    }
}

impl Engine {
    /// Blocks until the cluster settles (running with all its nodes ready,
    /// or not running) or `max_wait` passes.
    pub async fn wait_settled(&self, cluster: &ClusterName, max_wait: Duration) -> ClusterView {
        let deadline = Instant::now() + max_wait;
        let mut changes = self.shared.subscribe(cluster);
        loop {
            changes.borrow_and_update();
            let mut view = self.view(cluster);
            if view.state.is_settled() {
                view.settled = Some(true);
                return view;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let mut view = self.view(cluster);
                    view.settled = Some(view.state.is_settled());
                    return view;
                }
            }
        }
    }

    /// The cluster's nodes. The leader answers from what it observes; a
    /// server that follows (or a leader still listing at the start of its
    /// term) from what the leader published.
    pub(crate) fn nodes_of(&self, cluster: &ClusterName) -> Vec<NodeRecord> {
        let inv = self.shared.inventory.lock().unwrap();
        // Holding a term (even one whose renewal is late): the inventory is
        // this server's own and the freshest there is.
        if self.shared.leadership.term().is_some() && inv.values().all(|s| s.listed) {
            inv.values()
                .flat_map(|set| set.nodes(cluster).map(|n| n.record()))
                .collect()
        } else {
            drop(inv);
            self.shared.observed.get(cluster)
        }
    }

    /// What stands in the cluster's way, as the leader met it: this
    /// server's own while it leads, else what the leader published.
    fn obstacle(&self, cluster: &ClusterName) -> Option<Obstacle> {
        let own = if self.shared.leadership.term().is_some() {
            &self.shared.obstacles
        } else {
            &self.shared.published_obstacles
        };
        own.lock().unwrap().get(cluster).cloned()
    }

    /// A cluster as STATUS reports it, from this server's copies.
    pub fn view(&self, cluster: &ClusterName) -> ClusterView {
        let record = self.shared.desired.get(cluster);
        let pool = record.as_ref().and_then(|r| self.shared.pools.get(&r.pool));
        let records = self.nodes_of(cluster);
        let workload_port = record
            .as_ref()
            .and_then(|r| r.workload.as_ref())
            .and_then(|w| w.port);
        let observed: Vec<ObservedNode> = records.iter().map(NodeRecord::observed).collect();
        let launch = pool
            .as_ref()
            .and_then(|p| crate::pools::launch(&self.shared.shared_configs, p).ok());
        let outdated = |n: &NodeRecord| match &launch {
            Some(l) if n.state != NodeState::ShuttingDown => {
                !l.is_current(&n.instance_type, n.pool_version.as_ref())
            }
            _ => false,
        };
        let mut nodes: Vec<NodeView> = records
            .into_iter()
            .map(|n| NodeView {
                outdated: outdated(&n),
                pool_version: n.pool_version.clone(),
                id: n.id,
                state: n.state,
                workload_address: workload_port
                    .zip(n.address.as_deref())
                    .map(|(port, address)| workload_address(address, port)),
                address: n.address,
                instance_type: n.instance_type,
                launched_at: n.launched_at,
            })
            .collect();
        nodes.sort_by(|a, b| a.launched_at.cmp(&b.launched_at).then(a.id.cmp(&b.id)));
        let mut state = cluster_state(record.as_ref(), &observed, pool.as_deref());
        let org = self.org(cluster).map(|o| {
            let now = self.shared.clock.now();
            let sizing = o.sizing(now);
            let wants_none = record.as_ref().is_none_or(|r| r.wanted_nodes() == 0);
            if wants_none && state != ClusterState::Destroying && observed.is_empty() {
                state = ClusterState::Asleep;
            }
            OrgClusterView {
                min_nodes: o.settings.min_nodes,
                max_nodes: o.settings.max_nodes,
                requests: crate::request_views(&o, now),
                next_change: sizing.next_change,
                shut_down: o.budget.exhausted_at.is_some(),
            }
        });
        let outdated = nodes.iter().filter(|n| n.outdated).count() as u32;
        let rollout = match (&record, launch) {
            (Some(r), Some(launch)) if outdated > 0 => Some(RolloutView {
                state: RolloutState::of(self.shared.rollouts.hold(&r.pool), &launch.version),
                version: launch.version,
                outdated,
            }),
            _ => None,
        };
        ClusterView {
            rollout,
            cluster: cluster.clone(),
            state,
            is_public: record.as_ref().is_some_and(|r| r.is_public),
            node_capacity: record.as_ref().map_or(0, |r| r.wanted_nodes()),
            pool: record.as_ref().map(|r| r.pool.clone()),
            expires_at: record.as_ref().and_then(|r| r.expires_at),
            nodes,
            settled: None,
            org,
            obstacle: self.obstacle(cluster),
            ssh_user: pool.and_then(|p| p.ssh_user.clone()),
            workload: record.as_ref().and_then(|r| r.workload.clone()),
        }
    }
}
