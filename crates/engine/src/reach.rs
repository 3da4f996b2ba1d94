//! A way into a cluster's nodes: what a node printed, and commands run on
//! it. Unlike the loops these are questions to one node, answered on any
//! server (a follower opens the same drivers), and they change nothing
//! flotilla keeps.

use std::time::Duration;

use flotilla_cloud::{Console, ExecOutput, InstanceSet};
use flotilla_domain::{ClusterName, PoolName};

use crate::{Engine, EngineError, NodeView, PoolSpec};

/// Which node of a cluster: by ID, or by its place in STATUS's list
/// (1 is the oldest). None: the oldest.
pub type NodeChoice<'a> = Option<&'a str>;

impl Engine {
    /// The pool `cluster`'s nodes come from, as its record (or its
    /// organisation) says.
    pub fn cluster_pool(&self, cluster: &ClusterName) -> Option<PoolName> {
        self.shared
            .desired
            .get(cluster)
            .map(|r| r.pool)
            .or_else(|| self.org(cluster).map(|o| o.settings.pool))
    }

    /// The node `choice` of `cluster`, its pool's settings and its driver.
    fn reach(
        &self,
        cluster: &ClusterName,
        choice: NodeChoice<'_>,
    ) -> Result<(NodeView, std::sync::Arc<PoolSpec>, &dyn InstanceSet), EngineError> {
        let nodes = self.view(cluster).nodes;
        if nodes.is_empty() {
            return Err(EngineError::NoNodes(cluster.clone()));
        }
        let node = match choice {
            None => nodes.first(),
            Some(wanted) => nodes.iter().find(|n| n.id.as_str() == wanted).or_else(|| {
                wanted
                    .parse::<usize>()
                    .ok()
                    .and_then(|k| k.checked_sub(1))
                    .and_then(|k| nodes.get(k))
            }),
        };
        let Some(node) = node.cloned() else {
            return Err(EngineError::NoSuchNode {
                cluster: cluster.clone(),
                node: choice.unwrap_or_default().to_owned(),
                known: nodes
                    .iter()
                    .enumerate()
                    .map(|(k, n)| format!("{} ({})", k + 1, n.id))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let pool_name = self
            .cluster_pool(cluster)
            .ok_or_else(|| EngineError::NotFound(cluster.clone()))?;
        let pool = self
            .shared
            .pools
            .get(&pool_name)
            .ok_or_else(|| EngineError::UnknownPool {
                pool: pool_name.to_string(),
                known: self.known_pools(),
            })?;
        let set = self
            .shared
            .sets
            .get(&pool.driver)
            .ok_or_else(|| EngineError::Config(format!("no driver named {}", pool.driver)))?;
        Ok((node, pool, set.as_ref()))
    }

    fn known_pools(&self) -> String {
        self.pools()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// What node `choice` of `cluster` printed, from byte `from` on (its
    /// last `limit` bytes without one).
    pub async fn node_console(
        &self,
        cluster: &ClusterName,
        choice: NodeChoice<'_>,
        from: Option<u64>,
        limit: usize,
    ) -> Result<(NodeView, Console), EngineError> {
        let (node, pool, set) = self.reach(cluster, choice)?;
        match set.console(&node.id, from, limit).await {
            Ok(Some(console)) => Ok((node, console)),
            Ok(None) => Err(EngineError::Unsupported {
                driver: pool.driver.clone(),
                what: "keeps no console output of its nodes".to_owned(),
            }),
            Err(e) => Err(EngineError::Cloud(e)),
        }
    }

    /// Runs `argv` on node `choice` of `cluster`.
    pub async fn node_exec(
        &self,
        cluster: &ClusterName,
        choice: NodeChoice<'_>,
        argv: &[String],
        timeout: Duration,
        limit: usize,
    ) -> Result<(NodeView, ExecOutput), EngineError> {
        let (node, pool, set) = self.reach(cluster, choice)?;
        match set.exec(&node.id, argv, timeout, limit).await {
            Ok(Some(output)) => Ok((node, output)),
            Ok(None) => Err(EngineError::Unsupported {
                driver: pool.driver.clone(),
                what:
                    "cannot run commands on its nodes; use `flotilla ssh` where the pool allows it"
                        .to_owned(),
            }),
            Err(e) => Err(EngineError::Cloud(e)),
        }
    }
}
