//! Organisations, their ledgers and costs. Each change runs a domain
//! function on the organisation's state inside one store transaction and
//! records its effects (ledger entries, events, the cluster record) in the
//! same transaction: two servers sharing a database serialise on it, so
//! neither can spend money the other already spent.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{
    ClusterRecord, CostRow, Effects, InstanceId, LedgerEntry, Money, NodeMeter, OrgError, OrgEvent,
    OrgName, Organisation,
};

use crate::{Fence, StoreError};

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
    pub nodes: Vec<UsedNode>,
}

/// A node an organisation's cluster runs: its launch and what it costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedNode {
    pub id: InstanceId,
    pub launched_at: DateTime<Utc>,
    pub price_per_hour: Money,
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
    /// clusters they kept. Returns the organisations changed. The leader's
    /// write: refused once the term `fence` is over.
    async fn expire_capacity(
        &self,
        now: DateTime<Utc>,
        fence: Fence,
    ) -> Result<Vec<OrgChanged>, StoreError>;

    /// When the earliest capacity request expires.
    async fn next_capacity_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// One accrual pass over every organisation, in one transaction:
    /// puts on the meter any node of `usage` not on it yet (a safety net
    /// behind [`crate::LeaseStore::publish_nodes`]), charges every meter up
    /// to its end or to `now`, credits monthly allowances, and shuts down
    /// organisations whose balance fell to the threshold. Returns the organisations
    /// whose pass did more than charge (allowance, events, cluster). The
    /// leader's write: refused once the term `fence` is over.
    async fn accrue(
        &self,
        usage: &[OrgUsage],
        now: DateTime<Utc>,
        fence: Fence,
    ) -> Result<Vec<OrgChanged>, StoreError>;

    /// The organisation's ledger, oldest first. Spending is one entry per
    /// day.
    async fn ledger(&self, org: &OrgName) -> Result<Vec<LedgerEntry>, StoreError>;

    /// The organisation's costs by cluster, user and day, in day order.
    async fn costs(&self, org: &OrgName) -> Result<Vec<CostRow>, StoreError>;

    /// The organisation's metered nodes, by launch: each one's lifetime and
    /// what it was charged.
    async fn usage(&self, org: &OrgName) -> Result<Vec<NodeMeter>, StoreError>;

    /// The organisation's latest `limit` events, newest last.
    async fn events(&self, org: &OrgName, limit: usize) -> Result<Vec<OrgEvent>, StoreError>;
}

impl From<OrgError> for StoreError {
    fn from(e: OrgError) -> Self {
        StoreError::Org(e)
    }
}
