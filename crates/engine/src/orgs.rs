//! Organisations through the engine: every change goes through the store
//! (one transaction each, the domain's rules inside), then into the
//! engine's copy of organisations and, when it resized the cluster, into
//! desired state and a reconcile.
//!
//! The copy answers the questions asked on every request (is this caller
//! a member of that cluster's organisation?) without a query. It is kept
//! like desired state: written through on each change here, refreshed from
//! the store on every resync, and a refresh never undoes a later change.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flotilla_domain::{
    forecast_hours, Caller, ClusterName, Effects, LedgerEntry, Money, OrgError, OrgEvent,
    OrgEventKind, OrgName, OrgRole, Organisation, PoolName, SettingsPatch, Sizing, TimeToLive,
    Username,
};
use flotilla_store::{CostRow, OrgChanged};

use crate::reflection::{Reflected, Reflection};
use crate::{ClusterView, Engine, EngineError};

/// Which organisations each account belongs to.
pub(crate) type Members = HashMap<Username, BTreeSet<OrgName>>;

impl Reflected for Organisation {
    type Key = OrgName;
    type Index = Members;

    fn key(&self) -> &OrgName {
        &self.name
    }

    /// Organisations carry no version: the change counter alone orders
    /// what this server wrote against what it read.
    fn replaces(&self, _: &Self) -> bool {
        true
    }

    fn index<'a>(orgs: impl Iterator<Item = &'a Self>) -> Members {
        let mut by_member = Members::new();
        for org in orgs {
            for user in org.members.keys() {
                by_member
                    .entry(user.clone())
                    .or_default()
                    .insert(org.name.clone());
            }
        }
        by_member
    }
}

pub(crate) type OrgCache = Reflection<Organisation>;

impl Reflection<Organisation> {
    pub(crate) fn all(&self) -> Vec<Organisation> {
        let mut orgs = self.values();
        orgs.sort_by(|a, b| a.name.cmp(&b.name));
        orgs
    }

    pub(crate) fn names(&self) -> Vec<OrgName> {
        self.keys()
    }

    /// Every organisation's name and pool: what an accrual pass needs.
    pub(crate) fn pools(&self) -> Vec<(OrgName, PoolName)> {
        self.values()
            .into_iter()
            .map(|o| (o.name, o.settings.pool))
            .collect()
    }

    /// See [`Engine::admit_org_clusters`].
    pub(crate) fn admit(&self, caller: &mut Caller) {
        self.read(|members, is_org| {
            caller.allowed.retain(|c| !is_org(c));
            if let Some(orgs) = caller.account.as_ref().and_then(|u| members.get(u)) {
                caller.allowed.extend(orgs.iter().cloned());
            }
        });
    }
}

/// An organisation as its members see it.
#[derive(Debug, Clone, PartialEq)]
pub struct OrgView {
    pub org: Organisation,
    pub sizing: Sizing,
    /// The capacity requests active now.
    pub requests: Vec<crate::RequestView>,
    /// Nodes the cloud lists for the organisation's cluster.
    pub running_nodes: usize,
    pub price_per_hour: Money,
    pub burn_per_hour: Money,
    /// Hours until the balance reaches zero at the current burn.
    pub forecast_hours: Option<f64>,
    pub recent_events: Vec<OrgEvent>,
}

/// What a capacity request came to.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityView {
    pub cluster: ClusterView,
    pub requested: u32,
    /// The request asked for more than `max_nodes` allows.
    pub clamped: bool,
    pub max_nodes: u32,
    pub expires_at: DateTime<Utc>,
}

/// How many of an organisation's latest events its view shows.
const RECENT_EVENTS: usize = 20;

impl Engine {
    /// Makes what the caller may act on agree with organisations: the
    /// clusters of the caller's organisations are added, and any other
    /// organisation's cluster is taken out (an account named like an
    /// organisation has no claim on its cluster). The access layer calls
    /// this on every request, so membership takes effect at once, whatever
    /// the caller's token says.
    pub fn admit_org_clusters(&self, caller: &mut Caller) {
        self.shared.orgs.admit(caller);
    }

    /// The organisation whose cluster `cluster` is, if any.
    pub(crate) fn org_of(&self, cluster: &ClusterName) -> Option<Organisation> {
        self.shared.orgs.get(cluster)
    }

    pub(crate) fn price_of(&self, pool: &PoolName) -> Money {
        self.shared
            .pools
            .get(pool)
            .map_or(Money::ZERO, |p| p.price_per_hour)
    }

    fn known_pool(&self, pool: &str) -> Result<PoolName, EngineError> {
        match PoolName::new(pool) {
            Ok(name) if self.shared.pools.contains_key(&name) => Ok(name),
            _ => Err(self.unknown_pool(pool)),
        }
    }

    fn unknown_org(&self, name: &OrgName) -> EngineError {
        EngineError::Org(OrgError::Unknown(name.clone()))
    }

    /// Creates an organisation (admins only). Its cluster uses `pool`, or
    /// the default pool.
    pub async fn create_org(
        &self,
        caller: &Caller,
        name: OrgName,
        owners: &[String],
        pool: Option<&str>,
    ) -> Result<OrgView, EngineError> {
        flotilla_domain::authorize_admin(caller)?;
        let pool = match pool {
            Some(p) => self.known_pool(p)?,
            None => self.shared.default_pool.clone(),
        };
        let owners = owners
            .iter()
            .map(|o| Username::new(o.as_str()))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let now = self.shared.clock.now();
        let org = Organisation::new(name, owners, pool, &self.shared.config.orgs, now)?;
        self.shared.store.create_org(&org).await?;
        tracing::info!(org = %org.name, "organisation created");
        crate::reflector::catch_up(&self.shared).await;
        self.org_view(org).await
    }

    /// Every organisation for admins; for others, those they belong to or
    /// asked to join.
    pub fn list_orgs(&self, caller: &Caller) -> Result<Vec<Organisation>, EngineError> {
        if caller.account.is_none() && !caller.is_admin() {
            return Err(OrgError::NotSignedIn.into());
        }
        Ok(self
            .shared
            .orgs
            .all()
            .into_iter()
            .filter(|o| {
                caller.is_admin()
                    || caller
                        .account
                        .as_ref()
                        .is_some_and(|u| o.members.contains_key(u) || o.pending.contains_key(u))
            })
            .collect())
    }

    /// An organisation, for its members and admins.
    pub async fn get_org(&self, caller: &Caller, name: &OrgName) -> Result<OrgView, EngineError> {
        let org = self
            .shared
            .store
            .get_org(name)
            .await?
            .ok_or_else(|| self.unknown_org(name))?;
        if !org.admits(caller) {
            return Err(if caller.account.is_none() && !caller.is_admin() {
                OrgError::NotSignedIn
            } else {
                OrgError::NotMember { org: name.clone() }
            }
            .into());
        }
        self.org_view(org).await
    }

    async fn org_view(&self, org: Organisation) -> Result<OrgView, EngineError> {
        let now = self.shared.clock.now();
        let running_nodes = self.node_launches(org.cluster()).len();
        let price_per_hour = self.price_of(&org.settings.pool);
        let burn_per_hour = Organisation::burn_per_hour(running_nodes, price_per_hour);
        let recent_events = self.shared.store.events(&org.name, RECENT_EVENTS).await?;
        Ok(OrgView {
            sizing: org.sizing(now),
            requests: request_views(&org, now),
            running_nodes,
            price_per_hour,
            burn_per_hour,
            forecast_hours: forecast_hours(org.budget.balance, burn_per_hour),
            recent_events,
            org,
        })
    }

    /// Launch times of the nodes the cloud lists for `cluster`.
    pub(crate) fn node_launches(&self, cluster: &ClusterName) -> Vec<DateTime<Utc>> {
        self.nodes_of(cluster)
            .into_iter()
            .map(|n| n.launched_at)
            .collect()
    }

    /// Runs one change of an organisation through the store, then applies
    /// what it did here.
    async fn change_org(
        &self,
        name: &OrgName,
        mut change: impl FnMut(&mut Organisation, DateTime<Utc>) -> Result<Effects, OrgError> + Send,
    ) -> Result<OrgChanged, EngineError> {
        self.refuse_if_stopping()?;
        let now = self.shared.clock.now();
        let changed = self
            .shared
            .store
            .change_org(name, now, &mut |org: &mut Organisation| change(org, now))
            .await?;
        log_org_events(&changed);
        crate::reflector::catch_up(&self.shared).await;
        Ok(changed)
    }

    pub async fn request_membership(
        &self,
        caller: &Caller,
        org: &OrgName,
    ) -> Result<Organisation, EngineError> {
        Ok(self
            .change_org(org, |o, now| o.request_membership(caller, now))
            .await?
            .org)
    }

    pub async fn decide_membership(
        &self,
        caller: &Caller,
        org: &OrgName,
        user: &Username,
        approve: bool,
    ) -> Result<Organisation, EngineError> {
        Ok(self
            .change_org(org, |o, now| {
                o.decide_membership(caller, user, approve, now)
            })
            .await?
            .org)
    }

    pub async fn remove_member(
        &self,
        caller: &Caller,
        org: &OrgName,
        user: &Username,
    ) -> Result<Organisation, EngineError> {
        Ok(self
            .change_org(org, |o, now| o.remove_member(caller, user, now))
            .await?
            .org)
    }

    pub async fn set_member_role(
        &self,
        caller: &Caller,
        org: &OrgName,
        user: &Username,
        role: OrgRole,
    ) -> Result<Organisation, EngineError> {
        Ok(self
            .change_org(org, |o, now| o.set_role(caller, user, role, now))
            .await?
            .org)
    }

    /// PATCH of an organisation: owners set the cluster's bounds and pool,
    /// admins also the limit and the budget's terms.
    pub async fn update_org(
        &self,
        caller: &Caller,
        org: &OrgName,
        patch: SettingsPatch,
    ) -> Result<OrgView, EngineError> {
        if let Some(pool) = &patch.pool {
            self.known_pool(pool.as_str())?;
        }
        let current_pool = self.org_of(org).map(|o| o.settings.pool);
        let price = self.price_of(
            patch
                .pool
                .as_ref()
                .or(current_pool.as_ref())
                .unwrap_or(&self.shared.default_pool),
        );
        let changed = self
            .change_org(org, |o, now| o.update_settings(caller, &patch, price, now))
            .await?;
        self.org_view(changed.org).await
    }

    /// An admin's credit or correction.
    pub async fn credit_org(
        &self,
        caller: &Caller,
        org: &OrgName,
        amount: Money,
        reason: &str,
    ) -> Result<OrgView, EngineError> {
        // Before the organisation is looked up: a non-admin learns nothing.
        flotilla_domain::authorize_admin(caller)?;
        let changed = self
            .change_org(org, |o, now| o.credit(caller, amount, reason, now))
            .await?;
        self.org_view(changed.org).await
    }

    /// A capacity request on an organisation's cluster: `nodes` for
    /// `time_to_live` seconds. With `wait`, blocks until the cluster
    /// settles or `max_wait` passes.
    pub async fn request_capacity(
        &self,
        caller: &Caller,
        cluster: &ClusterName,
        nodes: i64,
        time_to_live: i64,
        wait: bool,
    ) -> Result<CapacityView, EngineError> {
        if self.org_of(cluster).is_none() {
            return Err(EngineError::NotAnOrgCluster(cluster.clone()));
        }
        let nodes = u32::try_from(nodes)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| OrgError::Invalid(format!("nodes must be at least 1, got {nodes}")))?;
        let ttl = TimeToLive::new(time_to_live, &self.shared.config.limits)?.get();
        self.capacity(caller, cluster, nodes, ttl, wait).await
    }

    async fn capacity(
        &self,
        caller: &Caller,
        cluster: &ClusterName,
        nodes: u32,
        ttl: Duration,
        wait: bool,
    ) -> Result<CapacityView, EngineError> {
        let pool = self
            .org_of(cluster)
            .map(|o| o.settings.pool)
            .ok_or_else(|| self.unknown_org(cluster))?;
        let price = self.price_of(&pool);
        let mut clamped = false;
        let changed = self
            .change_org(cluster, |o, now| {
                let (effects, outcome) = o.request_capacity(caller, nodes, ttl, price, now)?;
                clamped = outcome.clamped;
                Ok(effects)
            })
            .await?;
        let now = self.shared.clock.now();
        tracing::info!(%cluster, nodes, size = changed.org.sizing(now).nodes, "capacity requested");
        let expires_at = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let view = self.finish(cluster, wait).await?;
        Ok(CapacityView {
            cluster: view,
            requested: nodes,
            clamped,
            max_nodes: changed.org.settings.max_nodes,
            expires_at,
        })
    }

    /// DEPLOY on an organisation's cluster is a capacity request.
    pub(crate) async fn deploy_org_cluster(
        &self,
        caller: &Caller,
        org: &Organisation,
        command: &flotilla_domain::DeployCommand,
        pool_given: bool,
        wait: bool,
    ) -> Result<ClusterView, EngineError> {
        if command.is_public {
            return Err(EngineError::OrgCluster(format!(
                "{} is organisation {}'s cluster, which is private; deploy it with is_public false",
                org.name, org.name
            )));
        }
        if pool_given && command.pool != org.settings.pool {
            return Err(EngineError::OrgCluster(format!(
                "{} is organisation {}'s cluster, whose pool is {}; owners change it with PATCH /api/v1/orgs/{}",
                org.name, org.name, org.settings.pool, org.name
            )));
        }
        Ok(self
            .capacity(
                caller,
                &command.cluster,
                command.node_capacity.get(),
                command.time_to_live.get(),
                wait,
            )
            .await?
            .cluster)
    }

    /// DESTROY on an organisation's cluster, by an owner or admin.
    pub(crate) async fn destroy_org_cluster(
        &self,
        caller: &Caller,
        cluster: &ClusterName,
        wait: bool,
    ) -> Result<ClusterView, EngineError> {
        self.change_org(cluster, |o, now| o.stop(caller, now))
            .await?;
        tracing::info!(%cluster, "organisation cluster destroyed");
        self.finish(cluster, wait).await
    }

    pub async fn org_costs(
        &self,
        caller: &Caller,
        org: &OrgName,
    ) -> Result<Vec<CostRow>, EngineError> {
        self.get_member_org(caller, org)?;
        Ok(self.shared.store.costs(org).await?)
    }

    pub async fn org_ledger(
        &self,
        caller: &Caller,
        org: &OrgName,
    ) -> Result<Vec<LedgerEntry>, EngineError> {
        self.get_member_org(caller, org)?;
        Ok(self.shared.store.ledger(org).await?)
    }

    fn get_member_org(&self, caller: &Caller, name: &OrgName) -> Result<Organisation, EngineError> {
        let org = self.org_of(name).ok_or_else(|| self.unknown_org(name))?;
        if org.admits(caller) {
            Ok(org)
        } else if caller.account.is_none() && !caller.is_admin() {
            Err(OrgError::NotSignedIn.into())
        } else {
            Err(OrgError::NotMember { org: name.clone() }.into())
        }
    }
}

/// An organisation change's events, to the log.
fn log_org_events(changed: &OrgChanged) {
    let name = &changed.org.name;
    for event in &changed.effects.events {
        if event.kind == OrgEventKind::BudgetExhausted {
            tracing::warn!(org = %name, "{}", event.message);
        } else {
            tracing::info!(org = %name, kind = %event.kind, "{}", event.message);
        }
    }
}

/// Applies a change the leader's own loops made (a request's expiry, an
/// accrual): to the log, the organisation to the copy, its cluster record
/// to desired state (waking a reconcile).
pub(crate) fn apply_org_change(shared: &crate::Shared, changed: &OrgChanged) {
    let name = changed.org.name.clone();
    log_org_events(changed);
    shared.orgs.put(changed.org.clone());
    shared.capacity_changed.notify_one();
    if let Some(record) = &changed.cluster {
        shared.desired.put(record.clone());
        shared.runtime.wake_first(name.clone());
    }
    shared.notify_changed(&name);
}

/// The capacity requests active at `now`, as views show them.
pub(crate) fn request_views(org: &Organisation, now: DateTime<Utc>) -> Vec<crate::RequestView> {
    org.active_requests(now)
        .map(|r| crate::RequestView {
            user: r.user.clone(),
            nodes: r.nodes,
            expires_at: r.expires_at,
        })
        .collect()
}
