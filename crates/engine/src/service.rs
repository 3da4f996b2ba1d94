//! The engine's front door: the commands of seed 000 (DEPLOY, DESTROY,
//! STATUS) plus listing. Every command takes the caller and is authorised
//! here, by the domain's rules, before it touches anything.

use std::time::Duration;

use chrono::{DateTime, Utc};
use flotilla_domain::{
    authorize_deploy, authorize_destroy, authorize_status, cluster_state, Caller, ClusterName,
    ClusterState, DeployCommand, InstanceId, InstanceType, NodeCapacity, NodeRecord, NodeState,
    ObservedNode, PoolName, TimeToLive, Username,
};
use tokio::time::Instant;

use crate::{Engine, EngineError};

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
}

impl Engine {
    /// Validates a DEPLOY request's values against the limits and pools.
    pub fn deploy_command(
        &self,
        cluster: ClusterName,
        node_capacity: i64,
        time_to_live: i64,
        is_public: bool,
        pool: Option<&str>,
    ) -> Result<DeployCommand, EngineError> {
        let limits = &self.shared.config.limits;
        let node_capacity = NodeCapacity::new(node_capacity, limits)?;
        let time_to_live = TimeToLive::new(time_to_live, limits)?;
        let pool = match pool {
            None => self.shared.default_pool.clone(),
            Some(p) => match PoolName::new(p) {
                Ok(name) if self.shared.pools.contains_key(&name) => name,
                _ => return Err(self.unknown_pool(p)),
            },
        };
        Ok(DeployCommand {
            cluster,
            node_capacity,
            time_to_live,
            is_public,
            pool,
        })
    }

    pub(crate) fn unknown_pool(&self, pool: &str) -> EngineError {
        EngineError::UnknownPool {
            pool: pool.to_owned(),
            known: self
                .shared
                .pools
                .keys()
                .map(PoolName::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// DEPLOY. On an organisation's cluster it is a capacity request by
    /// the caller (the organisation's bounds and budget apply, not the
    /// caller's level limits).
    pub async fn deploy(
        &self,
        caller: &Caller,
        command: DeployCommand,
        wait: bool,
    ) -> Result<ClusterView, EngineError> {
        if let Some(org) = self.org_of(&command.cluster) {
            let pool_given = command.pool != self.shared.default_pool;
            return self
                .deploy_org_cluster(caller, &org, &command, pool_given, wait)
                .await;
        }
        authorize_deploy(
            caller,
            &self.shared.config.levels,
            &command.cluster,
            command.is_public,
            command.node_capacity.get(),
            command.time_to_live.get(),
        )?;
        self.refuse_if_stopping()?;
        let now = self.shared.clock.now();
        let expires_at = command.time_to_live.deadline_from(now);
        let record = self.shared.store.deploy(&command, now, expires_at).await?;
        tracing::info!(cluster = %record.name, nodes = record.node_capacity.get(), %expires_at, "deploy");
        self.finish(&command.cluster, wait).await
    }

    pub async fn destroy(
        &self,
        caller: &Caller,
        cluster: &ClusterName,
        wait: bool,
    ) -> Result<ClusterView, EngineError> {
        if self.org_of(cluster).is_some() {
            return self.destroy_org_cluster(caller, cluster, wait).await;
        }
        authorize_destroy(caller, cluster)?;
        self.refuse_if_stopping()?;
        let now = self.shared.clock.now();
        if self.shared.store.destroy(cluster, now).await?.is_some() {
            tracing::info!(%cluster, "destroy");
        }
        // Nodes without a record go at the leader's next resync.
        self.finish(cluster, wait).await
    }

    pub fn status(
        &self,
        caller: &Caller,
        cluster: &ClusterName,
    ) -> Result<ClusterView, EngineError> {
        self.may_see(caller, cluster)?;
        Ok(self.view(cluster))
    }

    /// Every cluster with a record or with nodes.
    pub fn list(&self, caller: &Caller) -> Vec<ClusterView> {
        let mut names: std::collections::BTreeSet<ClusterName> =
            self.shared.desired.names().into_iter().collect();
        names.extend(self.shared.observed.names());
        for set in self.shared.inventory.lock().unwrap().values() {
            names.extend(set.clusters.keys().cloned());
        }
        names.extend(self.shared.orgs.names());
        names
            .into_iter()
            .filter(|n| self.may_see(caller, n).is_ok())
            .map(|n| self.view(&n))
            .collect()
    }

    /// STATUS's rule, which also admits the members of the organisation
    /// whose cluster it is.
    pub(crate) fn may_see(
        &self,
        caller: &Caller,
        cluster: &ClusterName,
    ) -> Result<(), EngineError> {
        match authorize_status(caller, cluster, self.is_public(cluster)) {
            Ok(()) => Ok(()),
            Err(_) if self.org_of(cluster).is_some_and(|o| o.admits(caller)) => Ok(()),
            Err(denied) => Err(denied.into()),
        }
    }

    /// Whether anyone may read the cluster's status. A cluster without a
    /// record is not public.
    fn is_public(&self, cluster: &ClusterName) -> bool {
        self.shared
            .desired
            .get(cluster)
            .is_some_and(|r| r.is_public)
    }

    pub(crate) fn refuse_if_stopping(&self) -> Result<(), EngineError> {
        if *self.shared.stop.borrow() {
            return Err(EngineError::ShuttingDown);
        }
        Ok(())
    }

    /// A command's answer, once this server's copies hold what it wrote
    /// (which also wakes the loops, if this server leads).
    pub(crate) async fn finish(
        &self,
        cluster: &ClusterName,
        wait: bool,
    ) -> Result<ClusterView, EngineError> {
        crate::reflector::catch_up(&self.shared).await;
        if !wait {
            return Ok(self.view(cluster));
        }
        Ok(self
            .wait_settled(cluster, self.shared.config.max_wait)
            .await)
    }

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

    fn view(&self, cluster: &ClusterName) -> ClusterView {
        let record = self.shared.desired.get(cluster);
        let pool = record.as_ref().and_then(|r| self.shared.pools.get(&r.pool));
        let records = self.nodes_of(cluster);
        let observed: Vec<ObservedNode> = records.iter().map(NodeRecord::observed).collect();
        let mut nodes: Vec<NodeView> = records
            .into_iter()
            .map(|n| NodeView {
                id: n.id,
                state: n.state,
                address: n.address,
                instance_type: n.instance_type,
                launched_at: n.launched_at,
            })
            .collect();
        nodes.sort_by(|a, b| a.launched_at.cmp(&b.launched_at).then(a.id.cmp(&b.id)));
        let mut state = cluster_state(record.as_ref(), &observed, pool.map(|p| &p.instance_type));
        let org = self.org_of(cluster).map(|o| {
            let now = self.shared.clock.now();
            let sizing = o.sizing(now);
            let wants_none = record.as_ref().is_none_or(|r| r.wanted_nodes() == 0);
            if wants_none && state != ClusterState::Destroying && observed.is_empty() {
                state = ClusterState::Asleep;
            }
            OrgClusterView {
                min_nodes: o.settings.min_nodes,
                max_nodes: o.settings.max_nodes,
                requests: crate::orgs::request_views(&o, now),
                next_change: sizing.next_change,
                shut_down: o.budget.exhausted_at.is_some(),
            }
        });
        ClusterView {
            cluster: cluster.clone(),
            state,
            is_public: record.as_ref().is_some_and(|r| r.is_public),
            node_capacity: record.as_ref().map_or(0, |r| r.wanted_nodes()),
            pool: record.as_ref().map(|r| r.pool.clone()),
            expires_at: record.as_ref().and_then(|r| r.expires_at),
            nodes,
            settled: None,
            org,
        }
    }
}
