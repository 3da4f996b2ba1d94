//! Seed 000's commands on clusters (DEPLOY, DESTROY) and STATUS.

use std::collections::BTreeSet;

use flotilla_domain::{
    authorize_deploy, authorize_destroy, authorize_status, authorize_workload, Caller, ClusterName,
    DeployCommand, NodeCapacity, TimeToLive, Workload,
};
use flotilla_engine::{ClusterView, EngineError};

use crate::orgs::{commit_capacity, commit_org_change};
use crate::{sealed, Command, Control};

/// DEPLOY: create the cluster or change its size, and (re)schedule its
/// deletion at now + `time_to_live` seconds. On an organisation's cluster
/// it is a capacity request by the caller (the organisation's bounds and
/// budget apply, not the caller's level limits).
#[derive(Debug, Clone)]
pub struct Deploy {
    pub cluster: ClusterName,
    pub node_capacity: i64,
    pub time_to_live: i64,
    /// Whether anyone may read its status, if the caller said: a deployed
    /// cluster keeps its own when not, a new one is private.
    pub is_public: Option<bool>,
    /// The pool the caller named, if any: a deployed cluster keeps its own
    /// when not, a new one gets the default pool (an organisation's cluster
    /// uses the organisation's).
    pub pool: Option<String>,
    /// What its nodes run, if the caller said: a shell command and the
    /// port it serves. Fixed once deployed; a deploy that names none keeps
    /// the cluster's.
    pub workload: Option<(String, Option<u16>)>,
}

impl sealed::Sealed for Deploy {}

impl Command for Deploy {
    type Committed = ClusterName;
    type View = ClusterView;
    const NAME: &'static str = "deploy";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<ClusterName, EngineError> {
        let engine = control.engine();
        let limits = &engine.config().limits;
        let node_capacity = NodeCapacity::new(self.node_capacity, limits)?;
        let time_to_live = TimeToLive::new(self.time_to_live, limits)?;
        let pool = self
            .pool
            .as_deref()
            .map(|p| control.known_pool(p))
            .transpose()?;
        let workload = self
            .workload
            .map(|(command, port)| Workload::new(command, port))
            .transpose()?;
        if let Some(org) = engine.org(&self.cluster) {
            if workload.is_some() {
                return Err(EngineError::OrgCluster(format!(
                    "{} is organisation {}'s cluster, whose nodes run its pool's init data; deploy without a workload",
                    org.name, org.name
                )));
            }
            if self.is_public == Some(true) {
                return Err(EngineError::OrgCluster(format!(
                    "{} is organisation {}'s cluster, which is private; deploy it with is_public false",
                    org.name, org.name
                )));
            }
            if pool.as_ref().is_some_and(|p| *p != org.settings.pool) {
                return Err(EngineError::OrgCluster(format!(
                    "{} is organisation {}'s cluster, whose pool is {}; owners change it with PATCH /api/v1/orgs/{}",
                    org.name, org.name, org.settings.pool, org.name
                )));
            }
            commit_capacity(
                control,
                caller,
                &self.cluster,
                node_capacity.get(),
                time_to_live.get(),
            )
            .await?;
            return Ok(self.cluster);
        }
        let command = DeployCommand {
            cluster: self.cluster,
            node_capacity,
            time_to_live,
            is_public: self.is_public,
            pool,
            default_pool: engine.default_pool().clone(),
            workload,
        };
        // Authorised as what it will be: a deployed cluster keeps its
        // visibility unless the caller says (and a change is refused).
        let public = command
            .is_public
            .unwrap_or_else(|| engine.record(&command.cluster).is_some_and(|r| r.is_public));
        authorize_deploy(
            caller,
            &engine.config().levels,
            &command.cluster,
            public,
            command.node_capacity.get(),
            command.time_to_live.get(),
        )?;
        if command.workload.is_some() {
            // The pool it will have: its own once deployed.
            let pool = engine
                .record(&command.cluster)
                .map(|r| r.pool)
                .unwrap_or_else(|| command.new_pool().clone());
            let allows = engine.pool(&pool).is_some_and(|p| p.allow_workload);
            authorize_workload(caller, &pool, allows)?;
        }
        let now = engine.now();
        let expires_at = command.time_to_live.deadline_from(now);
        let record = engine.store().deploy(&command, now, expires_at).await?;
        tracing::info!(cluster = %record.name, nodes = record.node_capacity.get(), %expires_at, "deploy");
        Ok(command.cluster)
    }

    async fn answer(cluster: ClusterName, control: &Control) -> Result<ClusterView, EngineError> {
        Ok(control.engine().view(&cluster))
    }
}

/// EXTEND (SlideRule's `extend`): move a deployed cluster's scheduled
/// deletion to now + `time_to_live` seconds, within the caller's limits,
/// and change nothing else.
#[derive(Debug, Clone)]
pub struct Extend {
    pub cluster: ClusterName,
    pub time_to_live: i64,
}

impl sealed::Sealed for Extend {}

impl Command for Extend {
    type Committed = ClusterName;
    type View = ClusterView;
    const NAME: &'static str = "extend";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<ClusterName, EngineError> {
        let engine = control.engine();
        let time_to_live = TimeToLive::new(self.time_to_live, &engine.config().limits)?;
        let cluster = self.cluster;
        if let Some(org) = engine.org(&cluster) {
            return Err(EngineError::OrgCluster(format!(
                "{cluster} is organisation {}'s cluster, which has no time to live: its size follows its members' capacity requests; extend yours with a new one (POST /api/v1/clusters/{cluster}/capacity)",
                org.name
            )));
        }
        // Authorised as a deploy of the cluster as it is, for longer.
        let record = engine
            .store()
            .get_cluster(&cluster)
            .await?
            .filter(|r| !r.destroying)
            .ok_or_else(|| EngineError::NotFound(cluster.clone()))?;
        authorize_deploy(
            caller,
            &engine.config().levels,
            &cluster,
            record.is_public,
            record.node_capacity.get(),
            time_to_live.get(),
        )?;
        let now = engine.now();
        let expires_at = time_to_live.deadline_from(now);
        if engine
            .store()
            .extend(&cluster, now, expires_at)
            .await?
            .is_none()
        {
            return Err(EngineError::NotFound(cluster));
        }
        tracing::info!(%cluster, %expires_at, "extend");
        Ok(cluster)
    }

    async fn answer(cluster: ClusterName, control: &Control) -> Result<ClusterView, EngineError> {
        Ok(control.engine().view(&cluster))
    }
}

/// DESTROY: clear the scheduled deletion and remove every node. On an
/// organisation's cluster (owners and admins) every capacity request is
/// dropped and the floor goes to zero.
#[derive(Debug, Clone)]
pub struct Destroy {
    pub cluster: ClusterName,
}

impl sealed::Sealed for Destroy {}

impl Command for Destroy {
    type Committed = ClusterName;
    type View = ClusterView;
    const NAME: &'static str = "destroy";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<ClusterName, EngineError> {
        let engine = control.engine();
        let cluster = self.cluster;
        if engine.org(&cluster).is_some() {
            commit_org_change(control, &cluster, |o, now| o.stop(caller, now)).await?;
            tracing::info!(%cluster, "organisation cluster destroyed");
            return Ok(cluster);
        }
        authorize_destroy(caller, &cluster)?;
        if engine
            .store()
            .destroy(&cluster, engine.now())
            .await?
            .is_some()
        {
            tracing::info!(%cluster, "destroy");
        }
        // Nodes without a record go at the leader's next resync.
        Ok(cluster)
    }

    async fn answer(cluster: ClusterName, control: &Control) -> Result<ClusterView, EngineError> {
        Ok(control.engine().view(&cluster))
    }
}

impl Control {
    /// STATUS.
    pub fn status(
        &self,
        caller: &Caller,
        cluster: &ClusterName,
    ) -> Result<ClusterView, EngineError> {
        self.may_see(caller, cluster)?;
        Ok(self.engine().view(cluster))
    }

    /// Every cluster with a record or with nodes that the caller may see.
    pub fn list(&self, caller: &Caller) -> Vec<ClusterView> {
        let names: BTreeSet<ClusterName> = self.engine().cluster_names();
        names
            .into_iter()
            .filter(|n| self.may_see(caller, n).is_ok())
            .map(|n| self.engine().view(&n))
            .collect()
    }

    /// Blocks until the cluster settles (running with all its nodes ready,
    /// or not running) or the configured longest wait passes.
    pub async fn wait_settled(&self, cluster: &ClusterName) -> ClusterView {
        let engine = self.engine();
        engine.wait_settled(cluster, engine.config().max_wait).await
    }

    /// STATUS's rule, which also admits the members of the organisation
    /// whose cluster it is.
    pub(crate) fn may_see(
        &self,
        caller: &Caller,
        cluster: &ClusterName,
    ) -> Result<(), EngineError> {
        let engine = self.engine();
        let public = engine.record(cluster).is_some_and(|r| r.is_public);
        match authorize_status(caller, cluster, public) {
            Ok(()) => Ok(()),
            Err(_) if engine.org(cluster).is_some_and(|o| o.admits(caller)) => Ok(()),
            Err(denied) => Err(denied.into()),
        }
    }
}
