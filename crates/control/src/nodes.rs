//! Questions to one node (what it printed; a command run on it), with
//! their rules: a node's output is seen by whoever may see its cluster, a
//! command runs for the cluster's owners where its pool allows it.

use std::time::Duration;

use flotilla_domain::{authorize_exec, Caller, ClusterName, Denied};
pub use flotilla_engine::{Console, ExecOutput};
use flotilla_engine::{EngineError, NodeChoice, NodeView};

use crate::Control;

/// The most of a node's output one answer carries.
pub const MAX_CONSOLE_BYTES: usize = 1 << 20;
/// The most of each of a command's outputs kept.
pub const MAX_EXEC_OUTPUT: usize = 1 << 20;
/// The longest a command may run.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(600);

impl Control {
    /// What node `choice` of `cluster` printed: from byte `from` on, or
    /// its last `limit` bytes.
    pub async fn node_console(
        &self,
        caller: &Caller,
        cluster: &ClusterName,
        choice: NodeChoice<'_>,
        from: Option<u64>,
        limit: usize,
    ) -> Result<(NodeView, Console), EngineError> {
        self.may_see(caller, cluster)?;
        self.engine()
            .node_console(cluster, choice, from, limit.min(MAX_CONSOLE_BYTES))
            .await
    }

    /// Runs `argv` on node `choice` of `cluster`, killed after `timeout`.
    pub async fn node_exec(
        &self,
        caller: &Caller,
        cluster: &ClusterName,
        choice: NodeChoice<'_>,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(NodeView, ExecOutput), EngineError> {
        let engine = self.engine();
        self.may_see(caller, cluster)?;
        let pool = engine
            .cluster_pool(cluster)
            .ok_or_else(|| EngineError::NotFound(cluster.clone()))?;
        let allows = engine.pool(&pool).is_some_and(|p| p.allow_exec);
        match authorize_exec(caller, cluster, &pool, allows) {
            Ok(()) => {}
            // The members of an organisation act on its cluster, within
            // what its pool allows.
            Err(Denied::ClusterNotAllowed { .. })
                if engine.org(cluster).is_some_and(|o| o.admits(caller)) =>
            {
                if !allows {
                    return Err(Denied::ExecNotAllowed { pool }.into());
                }
            }
            Err(denied) => return Err(denied.into()),
        }
        if argv.is_empty() || argv[0].is_empty() {
            return Err(EngineError::NoCommand);
        }
        let timeout = timeout.min(MAX_EXEC_TIMEOUT);
        tracing::info!(%cluster, node = choice.unwrap_or("1"), command = ?argv, "exec");
        engine
            .node_exec(cluster, choice, argv, timeout, MAX_EXEC_OUTPUT)
            .await
    }
}
