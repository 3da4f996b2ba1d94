//! The engine's copy of organisations. It answers the questions asked on
//! every request (is this caller a member of that cluster's
//! organisation?) without a query. It is kept like desired state: read
//! again by the reflector for each change in the feed, written through by
//! the leader's own loops (request expiry, accrual), refreshed from the
//! store on every resync; a refresh never undoes a later change.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use flotilla_domain::{
    Caller, ClusterName, Money, OrgEventKind, OrgName, Organisation, PoolName, Username,
};
use flotilla_store::OrgChanged;

use crate::reflection::{Reflected, Reflection};
use crate::Engine;

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
    pub fn org(&self, cluster: &ClusterName) -> Option<Organisation> {
        self.shared.orgs.get(cluster)
    }

    /// Every organisation, by name.
    pub fn orgs(&self) -> Vec<Organisation> {
        self.shared.orgs.all()
    }

    /// The most one node of `pool` costs per hour: what forecasts count
    /// each of its nodes at (a node may be of any of its types).
    pub fn price_of(&self, pool: &PoolName) -> Money {
        self.shared
            .pools
            .get(pool)
            .map_or(Money::ZERO, |p| p.dearest())
    }

    /// What the nodes the cloud lists for `cluster` cost per hour
    /// together, each at its type's price in `pool`.
    pub fn burn_per_hour(&self, cluster: &ClusterName, pool: &PoolName) -> Money {
        let prices = self
            .shared
            .pools
            .get(pool)
            .map(|p| p.prices())
            .unwrap_or_default();
        self.nodes_of(cluster)
            .iter()
            .map(|n| prices.of(&n.instance_type))
            .sum()
    }

    /// Launch times of the nodes the cloud lists for `cluster`.
    pub fn node_launches(&self, cluster: &ClusterName) -> Vec<DateTime<Utc>> {
        self.nodes_of(cluster)
            .into_iter()
            .map(|n| n.launched_at)
            .collect()
    }
}

/// An organisation change's events, to the log.
pub fn log_org_events(changed: &OrgChanged) {
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
pub fn request_views(org: &Organisation, now: DateTime<Utc>) -> Vec<crate::RequestView> {
    org.active_requests(now)
        .map(|r| crate::RequestView {
            user: r.user.clone(),
            nodes: r.nodes,
            expires_at: r.expires_at,
        })
        .collect()
}
