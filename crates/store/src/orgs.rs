//! Organisations, their ledgers and costs. Each change runs a domain
//! function on the organisation's state inside one store transaction and
//! records its effects (ledger entries, events, the cluster record) in the
//! same transaction: two servers sharing a database serialise on it, so
//! neither can spend money the other already spent.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use flotilla_domain::{
    ClusterName, ClusterRecord, ClusterTarget, Effects, LedgerEntry, Money, NodeCapacity, OrgError,
    OrgEvent, OrgName, Organisation, Username,
};

use crate::StoreError;

/// A change to one organisation: a domain function over its state.
pub type OrgChange<'a> = &'a mut (dyn FnMut(&mut Organisation) -> Result<Effects, OrgError> + Send);

/// An organisation as a change left it, with what the change did.
#[derive(Debug, Clone, PartialEq)]
pub struct OrgChanged {
    pub org: Organisation,
    pub effects: Effects,
    /// The cluster record as the change left it, when it touched it.
    pub cluster: Option<ClusterRecord>,
}

/// The nodes one organisation's cluster runs, as the cloud lists them, and
/// what they cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgUsage {
    pub org: OrgName,
    pub launches: Vec<DateTime<Utc>>,
    pub price_per_hour: Money,
}

/// What one user's requests (or, with no user, the organisation's floor)
/// cost on one cluster on one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostRow {
    pub cluster: ClusterName,
    pub user: Option<Username>,
    pub day: NaiveDate,
    pub amount: Money,
}

#[async_trait]
pub trait OrgStore: Send + Sync {
    /// Creates `org`, with an opening ledger entry for its balance if it
    /// has one. Refuses a name taken by an organisation or an account, and
    /// members without accounts.
    async fn create_org(&self, org: &Organisation) -> Result<(), StoreError>;

    async fn get_org(&self, name: &OrgName) -> Result<Option<Organisation>, StoreError>;

    /// Every organisation, ordered by name.
    async fn list_orgs(&self) -> Result<Vec<Organisation>, StoreError>;

    /// Runs `change` on the organisation inside one transaction and records
    /// its effects with it; an error changes nothing. New members must have
    /// accounts.
    async fn change_org(
        &self,
        name: &OrgName,
        now: DateTime<Utc>,
        change: OrgChange<'_>,
    ) -> Result<OrgChanged, StoreError>;

    /// Drops every capacity request expired at `now` and resizes the
    /// clusters they kept. Returns the organisations changed.
    async fn expire_capacity(&self, now: DateTime<Utc>) -> Result<Vec<OrgChanged>, StoreError>;

    /// When the earliest capacity request expires.
    async fn next_capacity_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// One accrual pass over every organisation, in one transaction:
    /// charges `usage` up to `now` (organisations missing from it run no
    /// nodes), credits monthly allowances, and shuts down organisations
    /// whose balance fell to the threshold. Returns the organisations
    /// whose pass did more than charge (allowance, events, cluster).
    async fn accrue(
        &self,
        usage: &[OrgUsage],
        now: DateTime<Utc>,
    ) -> Result<Vec<OrgChanged>, StoreError>;

    /// The organisation's ledger, oldest first. Spending is one entry per
    /// day.
    async fn ledger(&self, org: &OrgName) -> Result<Vec<LedgerEntry>, StoreError>;

    /// The organisation's costs by cluster, user and day, in day order.
    async fn costs(&self, org: &OrgName) -> Result<Vec<CostRow>, StoreError>;

    /// The organisation's latest `limit` events, newest last.
    async fn events(&self, org: &OrgName, limit: usize) -> Result<Vec<OrgEvent>, StoreError>;
}

/// The record the organisation's cluster should have after a change to
/// `target`, or `None` to leave it as it is (or absent).
pub(crate) fn target_record(
    current: Option<&ClusterRecord>,
    org: &Organisation,
    target: ClusterTarget,
    now: DateTime<Utc>,
) -> Option<ClusterRecord> {
    let bump = |r: &ClusterRecord| ClusterRecord {
        updated_at: now,
        generation: r.generation + 1,
        ..r.clone()
    };
    match (target, current) {
        (ClusterTarget::Destroyed, Some(r)) if !r.destroying => Some(ClusterRecord {
            destroying: true,
            expires_at: None,
            ..bump(r)
        }),
        (ClusterTarget::Destroyed, _) => None,
        // Nothing running and nothing wanted: no record to keep.
        (ClusterTarget::Nodes(0), None) => None,
        (ClusterTarget::Nodes(0), Some(r)) if r.destroying => None,
        (ClusterTarget::Nodes(n), Some(r)) => {
            let same = !r.destroying
                && r.node_capacity.get() == n
                && r.pool == org.settings.pool
                && r.expires_at.is_none()
                && !r.is_public;
            (!same).then(|| ClusterRecord {
                node_capacity: NodeCapacity::from_stored(n),
                pool: org.settings.pool.clone(),
                is_public: false,
                expires_at: None,
                destroying: false,
                ..bump(r)
            })
        }
        (ClusterTarget::Nodes(n), None) => Some(ClusterRecord {
            name: org.cluster().clone(),
            is_public: false,
            node_capacity: NodeCapacity::from_stored(n),
            pool: org.settings.pool.clone(),
            expires_at: None,
            destroying: false,
            created_at: now,
            updated_at: now,
            generation: 1,
        }),
    }
}

/// The ledger as readers see it: the stored entries (credits, allowances,
/// corrections) and one spend entry per day, the sum of that day's costs.
/// Spending is kept only as costs, so charging a pass writes each amount
/// once; a spend entry is stamped at the end of its day, or at the last
/// charge for the current one.
pub(crate) fn with_daily_spend(
    mut entries: Vec<LedgerEntry>,
    costs: &[CostRow],
    accrued_until: Option<DateTime<Utc>>,
) -> Vec<LedgerEntry> {
    let mut days: std::collections::BTreeMap<NaiveDate, Money> = Default::default();
    for c in costs {
        *days.entry(c.day).or_default() += c.amount;
    }
    for (day, spent) in days {
        let end = day
            .and_hms_milli_opt(23, 59, 59, 999)
            .expect("a valid time")
            .and_utc();
        entries.push(LedgerEntry {
            at: accrued_until.map_or(end, |u| u.min(end)),
            kind: flotilla_domain::LedgerKind::Spend,
            amount: -spent,
            reason: format!("nodes running on {day}"),
            actor: None,
        });
    }
    entries.sort_by_key(|e| e.at);
    entries
}

impl From<OrgError> for StoreError {
    fn from(e: OrgError) -> Self {
        StoreError::Org(e)
    }
}
