//! Organisations' commands and questions. Every change runs the domain's
//! rules inside one store transaction (`change_org`), which also writes its
//! events to the change feed.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flotilla_domain::{
    authorize_admin, forecast_hours, Caller, ClusterName, Effects, LedgerEntry, Money, NodeMeter,
    OrgError, OrgEvent, OrgName, OrgRole, Organisation, SettingsPatch, Sizing, TimeToLive,
    Username,
};
use flotilla_engine::{ClusterView, EngineError, RequestView};
use flotilla_store::{CostRow, OrgChanged};

use crate::{sealed, Command, Control};

/// An organisation as its members see it.
#[derive(Debug, Clone, PartialEq)]
pub struct OrgView {
    pub org: Organisation,
    pub sizing: Sizing,
    /// The capacity requests active now.
    pub requests: Vec<RequestView>,
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

/// Runs one change of an organisation through the store and logs its
/// events.
pub(crate) async fn commit_org_change(
    control: &Control,
    name: &OrgName,
    mut change: impl FnMut(&mut Organisation, DateTime<Utc>) -> Result<Effects, OrgError> + Send,
) -> Result<OrgChanged, EngineError> {
    let engine = control.engine();
    let now = engine.now();
    let changed = engine
        .store()
        .change_org(name, now, &mut |org: &mut Organisation| change(org, now))
        .await?;
    flotilla_engine::log_org_events(&changed);
    Ok(changed)
}

/// What a committed capacity request leaves for its answer.
pub struct CapacityCommitted {
    cluster: ClusterName,
    requested: u32,
    clamped: bool,
    max_nodes: u32,
    expires_at: DateTime<Utc>,
}

/// A capacity request by `caller` on an organisation's cluster.
pub(crate) async fn commit_capacity(
    control: &Control,
    caller: &Caller,
    cluster: &ClusterName,
    nodes: u32,
    ttl: Duration,
) -> Result<CapacityCommitted, EngineError> {
    let engine = control.engine();
    let pool = engine
        .org(cluster)
        .map(|o| o.settings.pool)
        .ok_or_else(|| unknown_org(cluster))?;
    let price = engine.price_of(&pool);
    let mut clamped = false;
    let mut expires_at = engine.now();
    let changed = commit_org_change(control, cluster, |o, now| {
        let (effects, outcome) = o.request_capacity(caller, nodes, ttl, price, now)?;
        clamped = outcome.clamped;
        expires_at = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        Ok(effects)
    })
    .await?;
    tracing::info!(%cluster, nodes, size = changed.org.sizing(engine.now()).nodes, "capacity requested");
    Ok(CapacityCommitted {
        cluster: cluster.clone(),
        requested: nodes,
        clamped,
        max_nodes: changed.org.settings.max_nodes,
        expires_at,
    })
}

fn unknown_org(name: &OrgName) -> EngineError {
    EngineError::Org(OrgError::Unknown(name.clone()))
}

/// Creates an organisation (admins only). Its cluster uses `pool`, or the
/// default pool.
#[derive(Debug, Clone)]
pub struct CreateOrg {
    pub name: OrgName,
    pub owners: Vec<String>,
    pub pool: Option<String>,
}

impl sealed::Sealed for CreateOrg {}

impl Command for CreateOrg {
    type Committed = Organisation;
    type View = OrgView;
    const NAME: &'static str = "create_org";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<Organisation, EngineError> {
        authorize_admin(caller)?;
        let engine = control.engine();
        let pool = match self.pool.as_deref() {
            Some(p) => control.known_pool(p)?,
            None => engine.default_pool().clone(),
        };
        let owners = self
            .owners
            .iter()
            .map(|o| Username::new(o.as_str()))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let org = Organisation::new(self.name, owners, pool, &engine.config().orgs, engine.now())?;
        engine.store().create_org(&org).await?;
        tracing::info!(org = %org.name, "organisation created");
        Ok(org)
    }

    async fn answer(org: Organisation, control: &Control) -> Result<OrgView, EngineError> {
        control.org_view(org).await
    }
}

macro_rules! membership_command {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty),* }, $label:literal,
     |$org:ident, $caller:ident, $now:ident, $this:ident| $change:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            pub org: OrgName,
            $(pub $field: $ty,)*
        }

        impl sealed::Sealed for $name {}

        impl Command for $name {
            type Committed = Organisation;
            type View = Organisation;
            const NAME: &'static str = $label;

            async fn commit(self, control: &Control, $caller: &Caller) -> Result<Organisation, EngineError> {
                let $this = &self;
                Ok(commit_org_change(control, &self.org, |$org, $now| $change).await?.org)
            }

            async fn answer(org: Organisation, _: &Control) -> Result<Organisation, EngineError> {
                Ok(org)
            }
        }
    };
}

membership_command!(
    /// Asks to join (any signed-in account). Asking again is harmless.
    RequestMembership {}, "request_membership",
    |o, caller, now, _this| o.request_membership(caller, now)
);
membership_command!(
    /// An owner's (or admin's) answer to a membership request.
    DecideMembership { user: Username, approve: bool }, "decide_membership",
    |o, caller, now, this| o.decide_membership(caller, &this.user, this.approve, now)
);
membership_command!(
    /// Removes a member (owners and admins; members may remove
    /// themselves). Their capacity requests go with them.
    RemoveMember { user: Username }, "remove_member",
    |o, caller, now, this| o.remove_member(caller, &this.user, now)
);
membership_command!(
    /// Makes a member an owner or an owner a member.
    SetMemberRole { user: Username, role: OrgRole }, "set_member_role",
    |o, caller, now, this| o.set_role(caller, &this.user, this.role, now)
);

/// Changes settings: owners set the cluster's bounds and pool, admins also
/// the limit and the budget's terms.
#[derive(Debug, Clone)]
pub struct UpdateOrg {
    pub org: OrgName,
    pub patch: SettingsPatch,
}

impl sealed::Sealed for UpdateOrg {}

impl Command for UpdateOrg {
    type Committed = Organisation;
    type View = OrgView;
    const NAME: &'static str = "update_org";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<Organisation, EngineError> {
        let engine = control.engine();
        if let Some(pool) = &self.patch.pool {
            control.known_pool(pool.as_str())?;
        }
        let current_pool = engine.org(&self.org).map(|o| o.settings.pool);
        let price = engine.price_of(
            self.patch
                .pool
                .as_ref()
                .or(current_pool.as_ref())
                .unwrap_or(engine.default_pool()),
        );
        let patch = &self.patch;
        Ok(commit_org_change(control, &self.org, |o, now| {
            o.update_settings(caller, patch, price, now)
        })
        .await?
        .org)
    }

    async fn answer(org: Organisation, control: &Control) -> Result<OrgView, EngineError> {
        control.org_view(org).await
    }
}

/// An admin's credit (positive) or correction (negative), with the reason
/// kept in the ledger.
#[derive(Debug, Clone)]
pub struct CreditOrg {
    pub org: OrgName,
    pub amount: Money,
    pub reason: String,
}

impl sealed::Sealed for CreditOrg {}

impl Command for CreditOrg {
    type Committed = Organisation;
    type View = OrgView;
    const NAME: &'static str = "credit_org";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<Organisation, EngineError> {
        // Before the organisation is looked up: a non-admin learns nothing.
        authorize_admin(caller)?;
        let (amount, reason) = (self.amount, self.reason.as_str());
        Ok(commit_org_change(control, &self.org, |o, now| {
            o.credit(caller, amount, reason, now)
        })
        .await?
        .org)
    }

    async fn answer(org: Organisation, control: &Control) -> Result<OrgView, EngineError> {
        control.org_view(org).await
    }
}

/// A capacity request on an organisation's cluster: `nodes` for
/// `time_to_live` seconds.
#[derive(Debug, Clone)]
pub struct RequestCapacity {
    pub cluster: ClusterName,
    pub nodes: i64,
    pub time_to_live: i64,
}

impl sealed::Sealed for RequestCapacity {}

impl Command for RequestCapacity {
    type Committed = CapacityCommitted;
    type View = CapacityView;
    const NAME: &'static str = "request_capacity";

    async fn commit(
        self,
        control: &Control,
        caller: &Caller,
    ) -> Result<CapacityCommitted, EngineError> {
        let engine = control.engine();
        if engine.org(&self.cluster).is_none() {
            return Err(EngineError::NotAnOrgCluster(self.cluster));
        }
        let nodes = u32::try_from(self.nodes)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                OrgError::Invalid(format!("nodes must be at least 1, got {}", self.nodes))
            })?;
        let ttl = TimeToLive::new(self.time_to_live, &engine.config().limits)?.get();
        commit_capacity(control, caller, &self.cluster, nodes, ttl).await
    }

    async fn answer(c: CapacityCommitted, control: &Control) -> Result<CapacityView, EngineError> {
        Ok(CapacityView {
            cluster: control.engine().view(&c.cluster),
            requested: c.requested,
            clamped: c.clamped,
            max_nodes: c.max_nodes,
            expires_at: c.expires_at,
        })
    }
}

/// A member withdraws their own capacity requests on an organisation's
/// cluster (to ask again for fewer nodes, or for none).
#[derive(Debug, Clone)]
pub struct WithdrawCapacity {
    pub cluster: ClusterName,
}

impl sealed::Sealed for WithdrawCapacity {}

impl Command for WithdrawCapacity {
    type Committed = ClusterName;
    type View = ClusterView;
    const NAME: &'static str = "withdraw_capacity";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<ClusterName, EngineError> {
        if control.engine().org(&self.cluster).is_none() {
            return Err(EngineError::NotAnOrgCluster(self.cluster));
        }
        commit_org_change(control, &self.cluster, |o, now| {
            o.withdraw_requests(caller, now)
        })
        .await?;
        tracing::info!(cluster = %self.cluster, "capacity requests withdrawn");
        Ok(self.cluster)
    }

    async fn answer(cluster: ClusterName, control: &Control) -> Result<ClusterView, EngineError> {
        Ok(control.engine().view(&cluster))
    }
}

impl Control {
    /// Every organisation for admins; for others, those they belong to or
    /// asked to join.
    pub fn list_orgs(&self, caller: &Caller) -> Result<Vec<Organisation>, EngineError> {
        if caller.account.is_none() && !caller.is_admin() {
            return Err(OrgError::NotSignedIn.into());
        }
        Ok(self
            .engine()
            .orgs()
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
            .engine()
            .store()
            .get_org(name)
            .await?
            .ok_or_else(|| unknown_org(name))?;
        if !org.admits(caller) {
            return Err(not_admitted(caller, name));
        }
        self.org_view(org).await
    }

    pub async fn org_costs(
        &self,
        caller: &Caller,
        org: &OrgName,
    ) -> Result<Vec<CostRow>, EngineError> {
        self.member_org(caller, org)?;
        Ok(self.engine().store().costs(org).await?)
    }

    /// Every node the organisation's cluster ran, with its lifetime and
    /// what it was charged.
    pub async fn org_usage(
        &self,
        caller: &Caller,
        org: &OrgName,
    ) -> Result<Vec<NodeMeter>, EngineError> {
        self.member_org(caller, org)?;
        Ok(self.engine().store().usage(org).await?)
    }

    pub async fn org_ledger(
        &self,
        caller: &Caller,
        org: &OrgName,
    ) -> Result<Vec<LedgerEntry>, EngineError> {
        self.member_org(caller, org)?;
        Ok(self.engine().store().ledger(org).await?)
    }

    fn member_org(&self, caller: &Caller, name: &OrgName) -> Result<Organisation, EngineError> {
        let org = self.engine().org(name).ok_or_else(|| unknown_org(name))?;
        if org.admits(caller) {
            Ok(org)
        } else {
            Err(not_admitted(caller, name))
        }
    }

    async fn org_view(&self, org: Organisation) -> Result<OrgView, EngineError> {
        let engine = self.engine();
        let now = engine.now();
        let running_nodes = engine.node_launches(org.cluster()).len();
        let price_per_hour = engine.price_of(&org.settings.pool);
        let burn_per_hour = engine.burn_per_hour(org.cluster(), &org.settings.pool);
        let recent_events = engine.store().events(&org.name, RECENT_EVENTS).await?;
        Ok(OrgView {
            sizing: org.sizing(now),
            requests: flotilla_engine::request_views(&org, now),
            running_nodes,
            price_per_hour,
            burn_per_hour,
            forecast_hours: forecast_hours(org.budget.balance, burn_per_hour),
            recent_events,
            org,
        })
    }
}

/// Why a caller who is not a member may not read an organisation.
fn not_admitted(caller: &Caller, name: &OrgName) -> EngineError {
    if caller.account.is_none() && !caller.is_admin() {
        OrgError::NotSignedIn
    } else {
        OrgError::NotMember { org: name.clone() }
    }
    .into()
}
