//! Pools' rollouts: which nodes a pool would launch differently now (or
//! with a changed document: what applying it would replace), and pausing
//! and resuming their replacement.

use flotilla_domain::{
    authorize_pool_write, Caller, ClusterName, InstanceId, LaunchVersion, NodeState, PoolName,
    PoolSpec, Rollout,
};
use flotilla_engine::{EngineError, RolloutState};
use flotilla_store::RolloutHold;

use crate::{sealed, Command, Control};

/// One cluster's part of a pool's rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterReplacement {
    pub cluster: ClusterName,
    /// Its nodes (those shutting down aside).
    pub nodes: u32,
    /// Those made from another version than the pool launches now.
    pub outdated: Vec<InstanceId>,
}

/// A pool's rollout as `flotilla pool rollout` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRollout {
    pub pool: PoolName,
    /// The version its nodes are launched at now; or why its image cannot
    /// be resolved (then nothing is replaced).
    pub version: Result<LaunchVersion, String>,
    /// `idle` (nothing outdated), `rolling`, `paused` or `stopped`.
    pub state: &'static str,
    /// What holds it back, if anything (a pause, or a stop at some
    /// version).
    pub hold: Option<RolloutHold>,
    /// The clusters of the pool the caller may see, with their outdated
    /// nodes.
    pub clusters: Vec<ClusterReplacement>,
    /// How fast it replaces them: the pool's settings.
    pub rollout: Rollout,
}

impl PoolRollout {
    pub fn outdated(&self) -> usize {
        self.clusters.iter().map(|c| c.outdated.len()).sum()
    }
}

/// Pauses a pool's rollout: replacements under way finish, no others
/// start, until it is resumed. By an admin or one of the pool's owners.
#[derive(Debug, Clone)]
pub struct PauseRollout {
    pub pool: String,
}

/// Resumes a pool's rollout, paused or stopped.
#[derive(Debug, Clone)]
pub struct ResumeRollout {
    pub pool: String,
}

impl Control {
    /// The nodes of `pool`'s clusters (those `caller` may see) that a pool
    /// `spec` would not launch as they are, and the version it launches.
    pub(crate) fn outdated_by(
        &self,
        caller: &Caller,
        pool: &PoolName,
        spec: &PoolSpec,
    ) -> (Result<LaunchVersion, String>, Vec<ClusterReplacement>) {
        let engine = self.engine();
        let launch = engine.launch(spec);
        let mut clusters = Vec::new();
        for cluster in engine.cluster_names() {
            if engine.record(&cluster).is_none_or(|r| &r.pool != pool)
                || self.may_see(caller, &cluster).is_err()
            {
                continue;
            }
            let view = engine.view(&cluster);
            let live = view
                .nodes
                .iter()
                .filter(|n| n.state != NodeState::ShuttingDown);
            let outdated = match &launch {
                Ok(l) => live
                    .clone()
                    .filter(|n| !l.is_current(&n.instance_type, n.pool_version.as_ref()))
                    .map(|n| n.id.clone())
                    .collect(),
                Err(_) => Vec::new(),
            };
            clusters.push(ClusterReplacement {
                cluster,
                nodes: live.count() as u32,
                outdated,
            });
        }
        (launch.map(|l| l.version), clusters)
    }

    /// Pool `pool`'s rollout now, its clusters as `caller` may see them.
    pub fn pool_rollout(&self, caller: &Caller, pool: &str) -> Result<PoolRollout, EngineError> {
        let name = self.known_pool(pool)?;
        let spec = self
            .engine()
            .pool(&name)
            .ok_or_else(|| self.unknown_pool(pool))?;
        let (version, clusters) = self.outdated_by(caller, &name, &spec);
        let hold = self.engine().rollout_hold(&name);
        let outdated = clusters.iter().any(|c| !c.outdated.is_empty());
        let state = match &version {
            Ok(v) if outdated => RolloutState::of(hold.clone(), v).as_str(),
            _ if hold.as_ref().is_some_and(|h| h.paused.is_some()) => "paused",
            _ => "idle",
        };
        Ok(PoolRollout {
            pool: name,
            version,
            state,
            hold,
            clusters,
            rollout: spec.rollout,
        })
    }

    /// Refused unless `caller` may hold or release `pool`'s rollout: an
    /// admin, or one of the pool's owners.
    fn authorize_rollout(&self, caller: &Caller, pool: &str) -> Result<PoolName, EngineError> {
        let name = self.known_pool(pool)?;
        let spec = self
            .engine()
            .pool(&name)
            .ok_or_else(|| self.unknown_pool(pool))?;
        let orgs = self.engine().orgs();
        authorize_pool_write(caller, &name, &spec.owners, |org, user| {
            orgs.iter()
                .find(|o| &o.name == org)
                .and_then(|o| o.role(user))
        })?;
        Ok(name)
    }
}

/// Pauses (`pause`) or resumes `pool`'s rollout for `caller`.
async fn hold(
    control: &Control,
    caller: &Caller,
    pool: &str,
    pause: bool,
) -> Result<(Caller, PoolName), EngineError> {
    let name = control.authorize_rollout(caller, pool)?;
    let by = Control::writer(caller);
    let now = control.engine().now();
    let store = control.engine().store();
    if pause {
        store.pause_rollout(&name, &by, now).await?;
    } else {
        store.resume_rollout(&name, &by, now).await?;
    }
    Ok((caller.clone(), name))
}

impl sealed::Sealed for PauseRollout {}

impl Command for PauseRollout {
    type Committed = (Caller, PoolName);
    type View = PoolRollout;
    const NAME: &'static str = "pause_rollout";

    async fn commit(
        self,
        control: &Control,
        caller: &Caller,
    ) -> Result<Self::Committed, EngineError> {
        hold(control, caller, &self.pool, true).await
    }

    async fn answer(
        (caller, name): Self::Committed,
        control: &Control,
    ) -> Result<PoolRollout, EngineError> {
        control.pool_rollout(&caller, name.as_str())
    }
}

impl sealed::Sealed for ResumeRollout {}

impl Command for ResumeRollout {
    type Committed = (Caller, PoolName);
    type View = PoolRollout;
    const NAME: &'static str = "resume_rollout";

    async fn commit(
        self,
        control: &Control,
        caller: &Caller,
    ) -> Result<Self::Committed, EngineError> {
        hold(control, caller, &self.pool, false).await
    }

    async fn answer(
        (caller, name): Self::Committed,
        control: &Control,
    ) -> Result<PoolRollout, EngineError> {
        control.pool_rollout(&caller, name.as_str())
    }
}
