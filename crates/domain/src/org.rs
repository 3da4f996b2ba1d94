//! Organisations (seed 001's private clusters): owners and members, the
//! settings of the organisation's cluster, capacity requests, and the
//! budget that pays for it.
//!
//! Every change to an organisation is a function here from its state, the
//! caller and the current time to a new state plus the effects the store
//! records with it (ledger entries, events, the cluster's new target). The
//! store runs it inside one transaction, so the checks that touch money or
//! capacity see exactly the state they change.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::access::Caller;
use crate::capacity::{sizing, CapacityRequest, Sizing};
use crate::cluster::{ClusterRecord, NodeCapacity};
use crate::money::{lifetime_cost, month_of, monthly_credit, projected_cost, Money};
use crate::names::{ClusterName, InstanceId, PoolName, Username};

/// An organisation is named like a cluster: its private cluster carries
/// its name.
pub type OrgName = ClusterName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgRole {
    Member,
    Owner,
}

impl OrgRole {
    pub fn as_str(self) -> &'static str {
        match self {
            OrgRole::Member => "member",
            OrgRole::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "member" => Some(OrgRole::Member),
            "owner" => Some(OrgRole::Owner),
            _ => None,
        }
    }
}

/// Server-wide defaults for new organisations (`[orgs]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgDefaults {
    /// The ceiling on `max_nodes` an admin grants a new organisation.
    pub node_limit: u32,
    pub shutdown_threshold: Money,
    pub min_runway: Duration,
}

impl Default for OrgDefaults {
    fn default() -> Self {
        Self {
            node_limit: 10,
            shutdown_threshold: Money::from_micros(500_000),
            min_runway: Duration::from_secs(8 * 3600),
        }
    }
}

/// The organisation's cluster: how small, how big, from which pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgSettings {
    pub min_nodes: u32,
    pub max_nodes: u32,
    /// Set by admins: the most `max_nodes` may be.
    pub node_limit: u32,
    pub pool: PoolName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub balance: Money,
    /// Credited on the first of each month (UTC), up to `max_balance`.
    pub monthly_allowance: Money,
    pub max_balance: Money,
    /// At or below this balance the organisation's cluster is shut down.
    pub shutdown_threshold: Money,
    /// A request must be able to pay for this long (capped by its TTL).
    pub min_runway: Duration,
    /// The month the allowance was last credited.
    pub allowance_month: Option<(i32, u32)>,
    /// When the balance last fell to the threshold, until it rises above.
    pub exhausted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organisation {
    pub name: OrgName,
    pub members: BTreeMap<Username, OrgRole>,
    /// Membership requests waiting for an owner, with when they were made.
    pub pending: BTreeMap<Username, DateTime<Utc>>,
    pub settings: OrgSettings,
    pub budget: Budget,
    pub requests: Vec<CapacityRequest>,
    /// Cost has been charged for every node up to this moment.
    pub accrued_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// What the organisation's cluster should be after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterTarget {
    /// This many nodes (0: asleep); the record is created when nodes are
    /// wanted and kept (asleep) when none are.
    Nodes(u32),
    /// Shut down: the cluster is destroyed and stays so until the balance
    /// rises above the threshold again.
    Destroyed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// Created with the organisation.
    Opening,
    /// An admin's credit.
    Credit,
    /// An admin's correction (a negative credit).
    Correction,
    /// The monthly allowance.
    Allowance,
    /// What the nodes cost, one entry per organisation, cluster and day.
    Spend,
    /// A remark on how something was charged; moves no money.
    Note,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Opening => "opening",
            LedgerKind::Credit => "credit",
            LedgerKind::Correction => "correction",
            LedgerKind::Allowance => "allowance",
            LedgerKind::Spend => "spend",
            LedgerKind::Note => "note",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            LedgerKind::Opening,
            LedgerKind::Credit,
            LedgerKind::Correction,
            LedgerKind::Allowance,
            LedgerKind::Spend,
            LedgerKind::Note,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One change of an organisation's balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub at: DateTime<Utc>,
    pub kind: LedgerKind,
    /// Signed: spending is negative.
    pub amount: Money,
    pub reason: String,
    /// Who made it; `None` for the server itself.
    pub actor: Option<Username>,
}

/// Something owners should hear about (recorded; notification channels
/// come later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgEvent {
    pub at: DateTime<Utc>,
    pub kind: OrgEventKind,
    pub message: String,
}

/// What happened to an organisation. Stored by name ([`Self::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgEventKind {
    Created,
    MembershipRequested,
    MemberAdded,
    MembershipRefused,
    MemberRemoved,
    RoleChanged,
    SettingsChanged,
    Woke,
    Stopped,
    BudgetExhausted,
    BudgetRestored,
    /// The balance fell to what the cluster's running nodes spend in the
    /// budget's `min_runway` before the shutdown threshold: a warning.
    BudgetLow,
    /// A member asked for capacity.
    CapacityRequested,
    /// A member withdrew their capacity requests.
    CapacityWithdrawn,
    /// An admin credited or corrected the balance.
    Credited,
}

impl OrgEventKind {
    pub const ALL: [OrgEventKind; 15] = [
        OrgEventKind::Created,
        OrgEventKind::MembershipRequested,
        OrgEventKind::MemberAdded,
        OrgEventKind::MembershipRefused,
        OrgEventKind::MemberRemoved,
        OrgEventKind::RoleChanged,
        OrgEventKind::SettingsChanged,
        OrgEventKind::Woke,
        OrgEventKind::Stopped,
        OrgEventKind::BudgetExhausted,
        OrgEventKind::BudgetRestored,
        OrgEventKind::BudgetLow,
        OrgEventKind::CapacityRequested,
        OrgEventKind::CapacityWithdrawn,
        OrgEventKind::Credited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrgEventKind::Created => "created",
            OrgEventKind::MembershipRequested => "membership_requested",
            OrgEventKind::MemberAdded => "member_added",
            OrgEventKind::MembershipRefused => "membership_refused",
            OrgEventKind::MemberRemoved => "member_removed",
            OrgEventKind::RoleChanged => "role_changed",
            OrgEventKind::SettingsChanged => "settings_changed",
            OrgEventKind::Woke => "woke",
            OrgEventKind::Stopped => "stopped",
            OrgEventKind::BudgetExhausted => "budget_exhausted",
            OrgEventKind::BudgetRestored => "budget_restored",
            OrgEventKind::BudgetLow => "budget_low",
            OrgEventKind::CapacityRequested => "capacity_requested",
            OrgEventKind::CapacityWithdrawn => "capacity_withdrawn",
            OrgEventKind::Credited => "credited",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for OrgEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a change does besides changing the organisation's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    pub ledger: Vec<LedgerEntry>,
    pub events: Vec<OrgEvent>,
    /// Set when the cluster's target may have changed.
    pub cluster: Option<ClusterTarget>,
}

/// Why a change to an organisation was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrgError {
    #[error("there is no organisation named {0}")]
    Unknown(OrgName),
    #[error("an organisation named {0} already exists")]
    Exists(OrgName),
    #[error("{name} is the name of an account, whose own cluster it is; choose another name for the organisation")]
    NameTaken { name: OrgName },
    #[error(
        "a cluster named {0} is deployed; destroy it before creating an organisation of that name"
    )]
    ClusterExists(OrgName),
    #[error("there is no account named {0}; owners and members must have accounts")]
    UnknownAccount(Username),
    #[error("this needs a signed-in account: log in with `flotilla login` or send a bearer token")]
    NotSignedIn,
    #[error(
        "you are not a member of organisation {org}; ask to join with `flotilla org join {org}`"
    )]
    NotMember { org: OrgName },
    #[error("only owners of organisation {org} (and admins) may do this")]
    NotOwner { org: OrgName },
    #[error("only admins may do this")]
    AdminOnly,
    #[error("{user} is already a member of organisation {org}")]
    AlreadyMember { org: OrgName, user: Username },
    #[error("{user} has not asked to join organisation {org}")]
    NoSuchRequest { org: OrgName, user: Username },
    #[error("{user} is not a member of organisation {org}")]
    NotAMember { org: OrgName, user: Username },
    #[error("{user} is the last owner of organisation {org}; make another member owner first")]
    LastOwner { org: OrgName, user: Username },
    #[error("{0}")]
    Invalid(String),
    #[error("organisation {org} cannot pay for this: {nodes} nodes for {hours} at {}/h cost {}; {}; ask an admin for credit", price.dollars(), needed.dollars(), shortfall(*balance, *threshold, *missing, *stopped))]
    InsufficientFunds {
        org: OrgName,
        nodes: u32,
        hours: String,
        price: Money,
        needed: Money,
        balance: Money,
        threshold: Money,
        /// What a credit must add for this to start.
        missing: Money,
        /// The balance is at or below the threshold (or the cluster was
        /// shut down for it): nothing that costs money starts until the
        /// balance is above the threshold, whatever it would cost.
        stopped: bool,
    },
}

/// Each setting that differs between `before` and `after`, as `name old →
/// new`.
fn settings_changes(before: &Organisation, after: &Organisation) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |name: &str, old: String, new: String| {
        if old != new {
            out.push(format!("{name} {old} → {new}"));
        }
    };
    let (a, b) = (&before.settings, &after.settings);
    note(
        "min_nodes",
        a.min_nodes.to_string(),
        b.min_nodes.to_string(),
    );
    note(
        "max_nodes",
        a.max_nodes.to_string(),
        b.max_nodes.to_string(),
    );
    note(
        "node_limit",
        a.node_limit.to_string(),
        b.node_limit.to_string(),
    );
    note("pool", a.pool.to_string(), b.pool.to_string());
    let (a, b) = (&before.budget, &after.budget);
    let money = |m: Money| m.dollars().to_string();
    note(
        "monthly_allowance",
        money(a.monthly_allowance),
        money(b.monthly_allowance),
    );
    note("max_balance", money(a.max_balance), money(b.max_balance));
    note(
        "shutdown_threshold",
        money(a.shutdown_threshold),
        money(b.shutdown_threshold),
    );
    note("min_runway", span(a.min_runway), span(b.min_runway));
    out
}

/// Why the balance does not do, in the terms of the rule that refused:
/// it must cover the cost; and while it is at or below the shutdown
/// threshold, nothing that costs money starts until a credit lifts it
/// above.
fn shortfall(balance: Money, threshold: Money, missing: Money, stopped: bool) -> String {
    if stopped {
        format!(
            "the balance {} is at or below the shutdown threshold {}, and nothing that costs money starts until it is above it and covers the cost ({} missing)",
            balance.dollars(),
            threshold.dollars(),
            missing.dollars()
        )
    } else {
        format!(
            "the balance is {} ({} missing)",
            balance.dollars(),
            missing.dollars()
        )
    }
}

impl OrgError {
    /// The stable error code the API returns.
    pub fn code(&self) -> &'static str {
        match self {
            OrgError::Unknown(_) => "unknown_org",
            OrgError::Exists(_) => "org_exists",
            OrgError::NameTaken { .. } => "org_name_taken",
            OrgError::ClusterExists(_) => "cluster_exists",
            OrgError::UnknownAccount(_) => "unknown_account",
            OrgError::NotSignedIn => "not_authenticated",
            OrgError::NotMember { .. } => "not_org_member",
            OrgError::NotOwner { .. } => "not_org_owner",
            OrgError::AdminOnly => "admin_only",
            OrgError::AlreadyMember { .. } => "already_member",
            OrgError::NoSuchRequest { .. } => "no_membership_request",
            OrgError::NotAMember { .. } => "not_a_member",
            OrgError::LastOwner { .. } => "last_owner",
            OrgError::Invalid(_) => "invalid_value",
            OrgError::InsufficientFunds { .. } => "insufficient_funds",
        }
    }
}

/// A change an owner or admin asks for; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsPatch {
    pub min_nodes: Option<u32>,
    pub max_nodes: Option<u32>,
    pub pool: Option<PoolName>,
    // Admins only:
    pub node_limit: Option<u32>,
    pub monthly_allowance: Option<Money>,
    pub max_balance: Option<Money>,
    pub shutdown_threshold: Option<Money>,
    pub min_runway: Option<Duration>,
}

impl SettingsPatch {
    fn touches_admin_fields(&self) -> bool {
        self.node_limit.is_some()
            || self.monthly_allowance.is_some()
            || self.max_balance.is_some()
            || self.shutdown_threshold.is_some()
            || self.min_runway.is_some()
    }
}

/// What a capacity request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityOutcome {
    pub sizing: Sizing,
    /// The request asked for more than `max_nodes` allows.
    pub clamped: bool,
}

impl Organisation {
    /// A new organisation with the server's defaults and no money.
    pub fn new(
        name: OrgName,
        owners: impl IntoIterator<Item = Username>,
        pool: PoolName,
        defaults: &OrgDefaults,
        now: DateTime<Utc>,
    ) -> Result<Self, OrgError> {
        let members: BTreeMap<_, _> = owners.into_iter().map(|u| (u, OrgRole::Owner)).collect();
        if members.is_empty() {
            return Err(OrgError::Invalid(
                "an organisation needs at least one owner".into(),
            ));
        }
        Ok(Self {
            name,
            members,
            pending: BTreeMap::new(),
            settings: OrgSettings {
                min_nodes: 0,
                max_nodes: defaults.node_limit,
                node_limit: defaults.node_limit,
                pool,
            },
            budget: Budget {
                balance: Money::ZERO,
                monthly_allowance: Money::ZERO,
                max_balance: Money::ZERO,
                shutdown_threshold: defaults.shutdown_threshold,
                min_runway: defaults.min_runway,
                // The first allowance comes on the first of next month.
                allowance_month: Some(month_of(now)),
                exhausted_at: None,
            },
            requests: Vec::new(),
            accrued_until: None,
            created_at: now,
        })
    }

    pub fn cluster(&self) -> &ClusterName {
        &self.name
    }

    pub fn role(&self, user: &Username) -> Option<OrgRole> {
        self.members.get(user).copied()
    }

    pub fn owners(&self) -> impl Iterator<Item = &Username> {
        self.members
            .iter()
            .filter(|(_, r)| **r == OrgRole::Owner)
            .map(|(u, _)| u)
    }

    /// Whether `caller` may act on the organisation's cluster.
    pub fn admits(&self, caller: &Caller) -> bool {
        caller.is_admin()
            || caller
                .account
                .as_ref()
                .is_some_and(|u| self.members.contains_key(u))
    }

    fn require_member(&self, caller: &Caller) -> Result<(), OrgError> {
        if caller.account.is_none() && !caller.is_admin() {
            return Err(OrgError::NotSignedIn);
        }
        if self.admits(caller) {
            Ok(())
        } else {
            Err(OrgError::NotMember {
                org: self.name.clone(),
            })
        }
    }

    fn require_owner(&self, caller: &Caller) -> Result<(), OrgError> {
        self.require_member(caller)?;
        let owner = caller
            .account
            .as_ref()
            .is_some_and(|u| self.role(u) == Some(OrgRole::Owner));
        if caller.is_admin() || owner {
            Ok(())
        } else {
            Err(OrgError::NotOwner {
                org: self.name.clone(),
            })
        }
    }

    /// The requests still active at `now`.
    pub fn active_requests(&self, now: DateTime<Utc>) -> impl Iterator<Item = &CapacityRequest> {
        self.requests.iter().filter(move |r| r.expires_at > now)
    }

    pub fn sizing(&self, now: DateTime<Utc>) -> Sizing {
        sizing(
            &self.requests,
            now,
            self.settings.min_nodes,
            self.settings.max_nodes,
        )
    }

    pub fn is_exhausted(&self) -> bool {
        self.budget.balance <= self.budget.shutdown_threshold
    }

    /// What the cluster should be at `now`.
    pub fn target(&self, now: DateTime<Utc>) -> ClusterTarget {
        if self.budget.exhausted_at.is_some() {
            ClusterTarget::Destroyed
        } else {
            ClusterTarget::Nodes(self.sizing(now).nodes)
        }
    }

    /// Drops expired requests; the cluster's target comes with it.
    pub fn expire_requests(&mut self, now: DateTime<Utc>) -> Effects {
        self.requests.retain(|r| r.expires_at > now);
        Effects {
            cluster: Some(self.target(now)),
            ..Effects::default()
        }
    }

    /// A signed-in user asks to join. Asking twice is harmless.
    pub fn request_membership(
        &mut self,
        caller: &Caller,
        now: DateTime<Utc>,
    ) -> Result<Effects, OrgError> {
        let user = caller.account.clone().ok_or(OrgError::NotSignedIn)?;
        if self.members.contains_key(&user) {
            return Err(OrgError::AlreadyMember {
                org: self.name.clone(),
                user,
            });
        }
        let mut effects = Effects::default();
        if let std::collections::btree_map::Entry::Vacant(pending) = self.pending.entry(user) {
            effects.events.push(OrgEvent {
                at: now,
                kind: OrgEventKind::MembershipRequested,
                message: format!("{} asked to join", pending.key()),
            });
            pending.insert(now);
        }
        Ok(effects)
    }

    /// An owner (or admin) approves or refuses a pending request.
    pub fn decide_membership(
        &mut self,
        caller: &Caller,
        user: &Username,
        approve: bool,
        now: DateTime<Utc>,
    ) -> Result<Effects, OrgError> {
        self.require_owner(caller)?;
        if self.pending.remove(user).is_none() {
            return Err(OrgError::NoSuchRequest {
                org: self.name.clone(),
                user: user.clone(),
            });
        }
        let by = actor_name(caller);
        let (kind, message) = if approve {
            self.members.insert(user.clone(), OrgRole::Member);
            (OrgEventKind::MemberAdded, format!("{by} approved {user}"))
        } else {
            (
                OrgEventKind::MembershipRefused,
                format!("{by} refused {user}"),
            )
        };
        Ok(Effects {
            events: vec![OrgEvent {
                at: now,
                kind,
                message,
            }],
            ..Effects::default()
        })
    }

    /// Owners and admins remove a member (a member may also leave). Their
    /// capacity requests go with them.
    pub fn remove_member(
        &mut self,
        caller: &Caller,
        user: &Username,
        now: DateTime<Utc>,
    ) -> Result<Effects, OrgError> {
        if caller.account.as_ref() != Some(user) {
            self.require_owner(caller)?;
        }
        let Some(role) = self.role(user) else {
            return Err(OrgError::NotAMember {
                org: self.name.clone(),
                user: user.clone(),
            });
        };
        if role == OrgRole::Owner && self.owners().count() == 1 {
            return Err(OrgError::LastOwner {
                org: self.name.clone(),
                user: user.clone(),
            });
        }
        self.members.remove(user);
        self.requests.retain(|r| &r.user != user);
        Ok(Effects {
            events: vec![OrgEvent {
                at: now,
                kind: OrgEventKind::MemberRemoved,
                message: format!("{} removed {user}", actor_name(caller)),
            }],
            cluster: Some(self.target(now)),
            ..Effects::default()
        })
    }

    /// Makes a member an owner or an owner a member.
    pub fn set_role(
        &mut self,
        caller: &Caller,
        user: &Username,
        role: OrgRole,
        now: DateTime<Utc>,
    ) -> Result<Effects, OrgError> {
        self.require_owner(caller)?;
        let Some(current) = self.role(user) else {
            return Err(OrgError::NotAMember {
                org: self.name.clone(),
                user: user.clone(),
            });
        };
        if current == OrgRole::Owner && role == OrgRole::Member && self.owners().count() == 1 {
            return Err(OrgError::LastOwner {
                org: self.name.clone(),
                user: user.clone(),
            });
        }
        self.members.insert(user.clone(), role);
        Ok(Effects {
            events: vec![OrgEvent {
                at: now,
                kind: OrgEventKind::RoleChanged,
                message: format!("{} made {user} {}", actor_name(caller), role.as_str()),
            }],
            ..Effects::default()
        })
    }

    /// Owners set min/max nodes and the pool within the admin's limit;
    /// admins also set the limit and the budget's terms. Raising the size
    /// must be affordable.
    pub fn update_settings(
        &mut self,
        caller: &Caller,
        patch: &SettingsPatch,
        price_per_hour: Money,
        now: DateTime<Utc>,
    ) -> Result<Effects, OrgError> {
        self.require_owner(caller)?;
        if patch.touches_admin_fields() && !caller.is_admin() {
            return Err(OrgError::AdminOnly);
        }
        let mut next = self.clone();
        let s = &mut next.settings;
        if let Some(v) = patch.node_limit {
            s.node_limit = v;
        }
        if let Some(v) = patch.min_nodes {
            s.min_nodes = v;
        }
        if let Some(v) = patch.max_nodes {
            s.max_nodes = v;
        } else if patch.node_limit.is_some() {
            s.max_nodes = s.max_nodes.min(s.node_limit);
        }
        if let Some(p) = &patch.pool {
            s.pool = p.clone();
        }
        if s.min_nodes > s.max_nodes {
            return Err(OrgError::Invalid(format!(
                "min_nodes ({}) must not be greater than max_nodes ({})",
                s.min_nodes, s.max_nodes
            )));
        }
        if s.max_nodes > s.node_limit {
            return Err(OrgError::Invalid(format!(
                "max_nodes may be at most {} for organisation {} (an admin sets this limit), got {}",
                s.node_limit, self.name, s.max_nodes
            )));
        }
        let b = &mut next.budget;
        if let Some(v) = patch.monthly_allowance {
            b.monthly_allowance = v;
        }
        if let Some(v) = patch.max_balance {
            b.max_balance = v;
        }
        if let Some(v) = patch.shutdown_threshold {
            b.shutdown_threshold = v;
        }
        if let Some(v) = patch.min_runway {
            b.min_runway = v;
        }
        for (field, value) in [
            ("monthly_allowance", b.monthly_allowance),
            ("max_balance", b.max_balance),
            ("shutdown_threshold", b.shutdown_threshold),
        ] {
            if value.is_negative() {
                return Err(OrgError::Invalid(format!(
                    "{field} must not be negative, got {value}"
                )));
            }
        }
        // Growing the floor is a standing request: it must be affordable.
        let before = self.sizing(now).nodes;
        let after = next.sizing(now).nodes;
        if after > before {
            next.check_affordable(after, next.budget.min_runway, price_per_hour)?;
        }
        let changed = settings_changes(self, &next);
        let message = if changed.is_empty() {
            format!(
                "{} changed no setting (each was already as asked)",
                actor_name(caller)
            )
        } else {
            format!("{} set {}", actor_name(caller), changed.join(", "))
        };
        let mut effects = Effects {
            events: vec![OrgEvent {
                at: now,
                kind: OrgEventKind::SettingsChanged,
                message,
            }],
            ..Effects::default()
        };
        *self = next;
        // A lower threshold can end a shutdown; a higher one can start one.
        self.recheck_exhaustion(now, &mut effects);
        effects.cluster = Some(self.target(now));
        Ok(effects)
    }

    fn check_affordable(
        &self,
        nodes: u32,
        period: Duration,
        price_per_hour: Money,
    ) -> Result<(), OrgError> {
        let millis = i64::try_from(period.as_millis()).unwrap_or(i64::MAX);
        let needed = projected_cost(price_per_hour, nodes, millis);
        let balance = self.budget.balance;
        // At or below the threshold nothing that costs money starts (nodes
        // of a free pool do not spend it); a shut-down organisation starts
        // nothing until credited.
        // (A shutdown whose threshold this very change lowers below the
        // balance is over: the caller rechecks it after.)
        let exhausted = nodes > 0
            && self.is_exhausted()
            && (self.budget.exhausted_at.is_some() || needed > Money::ZERO);
        if needed > balance || exhausted {
            // Enough to pay, and to stay above the shutdown threshold.
            let missing = if exhausted {
                (needed - balance)
                    .max(self.budget.shutdown_threshold - balance + Money::from_micros(1))
            } else {
                needed - balance
            };
            return Err(OrgError::InsufficientFunds {
                org: self.name.clone(),
                nodes,
                hours: span(period),
                price: price_per_hour,
                needed,
                balance,
                threshold: self.budget.shutdown_threshold,
                missing,
                stopped: exhausted,
            });
        }
        Ok(())
    }

    /// A member asks for `nodes` nodes for `ttl`. Refused when the cluster
    /// at its new size cannot be paid for over the minimum runway (capped
    /// by the TTL).
    pub fn request_capacity(
        &mut self,
        caller: &Caller,
        nodes: u32,
        ttl: Duration,
        price_per_hour: Money,
        now: DateTime<Utc>,
    ) -> Result<(Effects, CapacityOutcome), OrgError> {
        self.require_member(caller)?;
        if nodes == 0 {
            return Err(OrgError::Invalid(
                "nodes must be at least 1 (a request for nothing asks for nothing)".into(),
            ));
        }
        // Admins without an account (the server, tests) ask as the org.
        let user = match &caller.account {
            Some(u) => u.clone(),
            None => self.owners().next().cloned().expect("an owner"),
        };
        let expires_at = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let mut next = self.clone();
        next.requests.retain(|r| r.expires_at > now);
        next.requests.push(CapacityRequest {
            user: user.clone(),
            nodes,
            created_at: now,
            expires_at,
        });
        let sized = next.sizing(now);
        next.check_affordable(sized.nodes, ttl.min(self.budget.min_runway), price_per_hour)?;
        let mut effects = Effects {
            events: vec![OrgEvent {
                at: now,
                kind: OrgEventKind::CapacityRequested,
                message: format!(
                    "{user} asked for {nodes} nodes until {}; the cluster's size is {}",
                    expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    sized.nodes
                ),
            }],
            cluster: Some(next.target(now)),
            ..Effects::default()
        };
        if self.sizing(now).asleep && sized.nodes > 0 {
            effects.events.push(OrgEvent {
                at: now,
                kind: OrgEventKind::Woke,
                message: format!("{user} woke the cluster with a request for {nodes} nodes"),
            });
        }
        *self = next;
        Ok((
            effects,
            CapacityOutcome {
                clamped: nodes > self.settings.max_nodes || sized.clamped,
                sizing: sized,
            },
        ))
    }

    /// A member withdraws their own capacity requests (to ask again for
    /// fewer, or for none): the cluster shrinks to what the others ask.
    pub fn withdraw_requests(
        &mut self,
        caller: &Caller,
        now: DateTime<Utc>,
    ) -> Result<Effects, OrgError> {
        self.require_member(caller)?;
        let Some(user) = caller.account.clone() else {
            return Err(OrgError::Invalid(
                "only a member's own requests can be withdrawn; sign in as the member".into(),
            ));
        };
        let mine = |r: &CapacityRequest| r.user == user;
        if !self.active_requests(now).any(mine) {
            return Err(OrgError::Invalid(format!(
                "{user} has no active capacity request on {}",
                self.name
            )));
        }
        self.requests.retain(|r| !mine(r));
        let size = self.sizing(now).nodes;
        Ok(Effects {
            events: vec![OrgEvent {
                at: now,
                kind: OrgEventKind::CapacityWithdrawn,
                message: format!(
                    "{user} withdrew their capacity requests; the cluster's size is {size}"
                ),
            }],
            cluster: Some(self.target(now)),
            ..Effects::default()
        })
    }

    /// DESTROY of the organisation's cluster, by an owner or admin: every
    /// request is dropped and the floor goes to zero, so it stays down
    /// until the next capacity request.
    pub fn stop(&mut self, caller: &Caller, now: DateTime<Utc>) -> Result<Effects, OrgError> {
        self.require_owner(caller)?;
        self.requests.clear();
        self.settings.min_nodes = 0;
        Ok(Effects {
            events: vec![OrgEvent {
                at: now,
                kind: OrgEventKind::Stopped,
                message: format!(
                    "{} destroyed the cluster; requests dropped, min_nodes set to 0",
                    actor_name(caller)
                ),
            }],
            cluster: Some(ClusterTarget::Destroyed),
            ..Effects::default()
        })
    }

    /// An admin's credit (positive) or correction (negative).
    pub fn credit(
        &mut self,
        caller: &Caller,
        amount: Money,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Effects, OrgError> {
        if !caller.is_admin() {
            return Err(OrgError::AdminOnly);
        }
        if amount == Money::ZERO {
            return Err(OrgError::Invalid("amount must not be zero".into()));
        }
        if reason.trim().is_empty() {
            return Err(OrgError::Invalid(
                "reason must say why (it is kept in the ledger)".into(),
            ));
        }
        let balance = self
            .budget
            .balance
            .checked_add(amount)
            .ok_or_else(|| OrgError::Invalid("amount is too large".into()))?;
        self.budget.balance = balance;
        let (kind, verb) = if amount.is_negative() {
            (LedgerKind::Correction, "corrected the balance by")
        } else {
            (LedgerKind::Credit, "credited")
        };
        let mut effects = Effects {
            events: vec![OrgEvent {
                at: now,
                kind: OrgEventKind::Credited,
                message: format!(
                    "{} {verb} {} ({}); the balance is {}",
                    actor_name(caller),
                    amount.dollars(),
                    reason.trim(),
                    balance.dollars()
                ),
            }],
            ledger: vec![LedgerEntry {
                at: now,
                kind,
                amount,
                reason: reason.trim().to_owned(),
                actor: caller.account.clone(),
            }],
            ..Effects::default()
        };
        self.recheck_exhaustion(now, &mut effects);
        effects.cluster = Some(self.target(now));
        Ok(effects)
    }

    /// Starts or ends a shutdown when the balance has crossed the
    /// threshold.
    fn recheck_exhaustion(&mut self, now: DateTime<Utc>, effects: &mut Effects) {
        match (self.is_exhausted(), self.budget.exhausted_at) {
            (true, None) => {
                self.budget.exhausted_at = Some(now);
                self.requests.clear();
                effects.events.push(OrgEvent {
                    at: now,
                    kind: OrgEventKind::BudgetExhausted,
                    message: format!(
                        "balance {} is at or below the shutdown threshold {}: the cluster is shut down and capacity requests are cleared; ask an admin for credit",
                        self.budget.balance, self.budget.shutdown_threshold
                    ),
                });
            }
            (false, Some(_)) => {
                self.budget.exhausted_at = None;
                effects.events.push(OrgEvent {
                    at: now,
                    kind: OrgEventKind::BudgetRestored,
                    message: format!(
                        "balance {} is above the shutdown threshold again; capacity may be requested",
                        self.budget.balance
                    ),
                });
            }
            _ => {}
        }
    }

    /// Charges the cluster's nodes up to `now`, credits the monthly
    /// allowance when a month begins, and shuts the cluster down when the
    /// balance falls to the threshold. `launches` are the launch times of
    /// the nodes the cloud lists now.
    /// Charges each of `meters` (this organisation's nodes) from where it
    /// was last charged up to its end, or up to `now` while it runs, and
    /// moves each one's `charged_until` along; credits the monthly
    /// allowance; starts or ends a shutdown as the balance crosses the
    /// threshold.
    pub fn accrue(&mut self, meters: &mut [NodeMeter], now: DateTime<Utc>) -> Accrual {
        let mut effects = Effects::default();
        if let Some(credit) = monthly_credit(
            self.budget.balance,
            self.budget.monthly_allowance,
            self.budget.max_balance,
            self.budget.allowance_month,
            now,
        ) {
            self.budget.allowance_month = Some(month_of(now));
            if credit > Money::ZERO {
                self.budget.balance += credit;
                let (y, m) = month_of(now);
                effects.ledger.push(LedgerEntry {
                    at: now,
                    kind: LedgerKind::Allowance,
                    amount: credit,
                    reason: format!("monthly allowance for {y}-{m:02}"),
                    actor: None,
                });
                effects.events.push(OrgEvent {
                    at: now,
                    kind: OrgEventKind::Credited,
                    message: format!(
                        "monthly allowance for {y}-{m:02} credited: {}; balance {}",
                        credit.dollars(),
                        self.budget.balance.dollars()
                    ),
                });
            }
        }
        let charges = charges(self, meters, now);
        let spent: Money = charges.iter().map(|c| c.amount).sum();
        let before = self.budget.balance;
        self.budget.balance -= spent;
        // A warning as charging takes the balance below what the running
        // nodes spend in the runway, above the shutdown threshold (with no
        // stored state: a balance already below it when capacity grows
        // gets none).
        let per_hour: Money = meters
            .iter()
            .filter(|m| m.end.is_none())
            .map(|m| m.price_per_hour)
            .sum();
        let runway_ms = i64::try_from(self.budget.min_runway.as_millis()).unwrap_or(i64::MAX);
        let line = Money::from_micros(
            self.budget
                .shutdown_threshold
                .micros()
                .saturating_add(crate::projected_cost(per_hour, 1, runway_ms).micros()),
        );
        if spent > Money::ZERO
            && before > line
            && self.budget.balance <= line
            && !self.is_exhausted()
        {
            effects.events.push(OrgEvent {
                at: now,
                kind: OrgEventKind::BudgetLow,
                message: format!(
                    "balance {} pays for less than {} of the running nodes ({}/h) before the shutdown threshold {}: ask an admin for credit, or ask for less capacity",
                    self.budget.balance.dollars(),
                    humantime::format_duration(self.budget.min_runway),
                    per_hour.dollars(),
                    self.budget.shutdown_threshold.dollars()
                ),
            });
        }
        if self.accrued_until.is_none_or(|s| now > s) {
            self.accrued_until = Some(now);
        }
        let was_exhausted = self.budget.exhausted_at.is_some();
        // Only a change of the balance starts or ends a shutdown: a new
        // organisation not yet credited is unfunded (its requests are
        // refused), not shut down.
        if spent > Money::ZERO || !effects.ledger.is_empty() {
            self.recheck_exhaustion(now, &mut effects);
        }
        if self.budget.exhausted_at.is_some() != was_exhausted || !effects.ledger.is_empty() {
            effects.cluster = Some(self.target(now));
        }
        Accrual {
            charges,
            spent,
            effects,
        }
    }
}

/// One node of an organisation's cluster on the meter: charged from its
/// launch until it was observed gone, at the price of its pool when it was
/// first seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMeter {
    pub cluster: ClusterName,
    pub id: InstanceId,
    pub launched_at: DateTime<Utc>,
    pub price_per_hour: Money,
    /// Charged from the launch up to here; none: nothing charged yet.
    pub charged_until: Option<DateTime<Utc>>,
    /// When the node was gone; none while it runs.
    pub end: Option<NodeEnd>,
    /// A job attempt's instance rather than a node of the cluster: charged
    /// to whoever submitted the job, not by capacity requests.
    pub job: Option<JobMeter>,
}

/// A job attempt's instance on its organisation's meter (see
/// [`NodeMeter::job`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMeter {
    /// `JOB/ATTEMPT`, as the instance's `flotilla-job` tag says.
    pub attempt: String,
    /// Who submitted the job, and is charged for it; none: the server (a
    /// schedule's run), charged to the organisation itself.
    pub user: Option<Username>,
}

/// When, and how, a node was known to be gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeEnd {
    pub at: DateTime<Utc>,
    pub seen: NodeEndSeen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeEndSeen {
    /// A listing no longer showed it while the leader watched.
    Gone,
    /// It went while no server watched (the server was down, or leadership
    /// changed hands): charged up to the first listing that no longer
    /// showed it.
    Unwatched,
}

impl NodeEndSeen {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeEndSeen::Gone => "gone",
            NodeEndSeen::Unwatched => "unwatched",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gone" => Some(NodeEndSeen::Gone),
            "unwatched" => Some(NodeEndSeen::Unwatched),
            _ => None,
        }
    }
}

impl NodeMeter {
    /// A meter for a node first seen now; nothing charged.
    pub fn new(
        cluster: ClusterName,
        id: InstanceId,
        launched_at: DateTime<Utc>,
        price_per_hour: Money,
    ) -> Self {
        Self {
            cluster,
            id,
            launched_at,
            price_per_hour,
            charged_until: None,
            end: None,
            job: None,
        }
    }

    /// A meter for a job attempt's instance first seen now, charged to
    /// `job`'s submitter; nothing charged.
    pub fn for_job(
        org: ClusterName,
        id: InstanceId,
        launched_at: DateTime<Utc>,
        price_per_hour: Money,
        job: JobMeter,
    ) -> Self {
        Self {
            job: Some(job),
            ..Self::new(org, id, launched_at, price_per_hour)
        }
    }

    /// What has been charged for this node so far.
    pub fn charged(&self) -> Money {
        lifetime_cost(
            self.price_per_hour,
            self.launched_at,
            self.charged_until.unwrap_or(self.launched_at),
        )
    }

    /// Ended and charged to its end: nothing more is owed.
    pub fn settled(&self) -> bool {
        self.end
            .is_some_and(|e| self.charged_until.is_some_and(|c| c >= e.at))
    }

    /// Ends the meter at `at`, or where it was already charged to if that is
    /// later (a pass may have charged a moment past the listing that showed
    /// the node gone): the lifetime on record is what was charged. A meter
    /// ends once.
    pub fn end_at(&mut self, at: DateTime<Utc>, seen: NodeEndSeen) {
        if self.end.is_none() {
            let at = self
                .charged_until
                .map_or(at, |c| c.max(at))
                .max(self.launched_at);
            self.end = Some(NodeEnd { at, seen });
        }
    }

    /// The node is listed again after its meter ended (a listing missed
    /// it): it ran all along, so the meter runs on from where it was
    /// charged, the gap included.
    pub fn reopen(&mut self) {
        self.end = None;
    }

    /// What the ledger says of a node that went while no server watched.
    pub fn unwatched_note(&self) -> Option<LedgerEntry> {
        let end = self.end.filter(|e| e.seen == NodeEndSeen::Unwatched)?;
        Some(LedgerEntry {
            at: end.at,
            kind: LedgerKind::Note,
            amount: Money::ZERO,
            reason: match &self.job {
                None => format!(
                    "node {} of cluster {} went while no server watched; charged up to the first listing that no longer showed it",
                    self.id, self.cluster
                ),
                Some(job) => format!(
                    "instance {} of job attempt {} went while no server watched; charged up to the first listing that no longer showed it",
                    self.id, job.attempt
                ),
            },
            actor: None,
        })
    }
}

/// Cost charged to one user (or to the organisation itself, for nodes no
/// request kept: `min_nodes`, or nodes on their way out) on one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub user: Option<Username>,
    pub day: NaiveDate,
    pub amount: Money,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accrual {
    /// Grouped by (user, day); no zero amounts.
    pub charges: Vec<Charge>,
    pub spent: Money,
    pub effects: Effects,
}

/// Whose request keeps each node: nodes in launch order are handed out to
/// users in the order of their oldest active request, each user getting as
/// many as their largest ask; the rest belong to the organisation.
fn attribute(org: &Organisation, nodes: usize, now: DateTime<Utc>) -> Vec<Option<Username>> {
    let mut users: Vec<(DateTime<Utc>, &Username, u32)> = Vec::new();
    for r in org.active_requests(now) {
        match users.iter_mut().find(|(_, u, _)| *u == &r.user) {
            Some(entry) => {
                entry.0 = entry.0.min(r.created_at);
                entry.2 = entry.2.max(r.nodes);
            }
            None => users.push((r.created_at, &r.user, r.nodes)),
        }
    }
    users.sort();
    let mut out = Vec::with_capacity(nodes);
    for (_, user, n) in users {
        for _ in 0..n {
            if out.len() < nodes {
                out.push(Some(user.clone()));
            }
        }
    }
    out.resize(nodes, None);
    out
}

/// The cost of each meter from where it was last charged up to its end
/// (or `now`), split by user and UTC day; moves each meter's
/// `charged_until` there. Computed as differences of [`lifetime_cost`], so
/// pieces add up exactly to the whole.
fn charges(org: &Organisation, meters: &mut [NodeMeter], now: DateTime<Utc>) -> Vec<Charge> {
    // The cluster's nodes go to the users whose requests keep them, in
    // launch order; a job's instance to whoever submitted the job.
    let mut order: Vec<usize> = (0..meters.len())
        .filter(|&i| meters[i].job.is_none())
        .collect();
    order.sort_by_key(|&i| meters[i].launched_at);
    let owners = attribute(org, order.len(), now);
    let jobs: Vec<(usize, Option<Username>)> = (0..meters.len())
        .filter_map(|i| Some((i, meters[i].job.as_ref()?.user.clone())))
        .collect();
    let mut sums: BTreeMap<(Option<Username>, NaiveDate), Money> = BTreeMap::new();
    for (i, user) in order.into_iter().zip(owners).chain(jobs) {
        let meter = &mut meters[i];
        let launched = meter.launched_at;
        let until = meter.end.map_or(now, |e| e.at.min(now));
        let mut from = meter.charged_until.map_or(launched, |c| c.max(launched));
        while from < until {
            let day = from.date_naive();
            let day_end = day
                .succ_opt()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| d.and_utc())
                .unwrap_or(until);
            let to = day_end.min(until);
            let amount = lifetime_cost(meter.price_per_hour, launched, to)
                - lifetime_cost(meter.price_per_hour, launched, from);
            *sums.entry((user.clone(), day)).or_default() += amount;
            from = to;
        }
        if meter.charged_until.is_none_or(|c| c < from) {
            meter.charged_until = Some(from);
        }
    }
    sums.into_iter()
        .filter(|(_, m)| *m != Money::ZERO)
        .map(|((user, day), amount)| Charge { user, day, amount })
        .collect()
}

/// A period as people write it: `8h`, `1h30m`, `45m`, `90s`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if sec > 0 || out.is_empty() {
        out += &format!("{sec}s");
    }
    out
}

fn actor_name(caller: &Caller) -> String {
    caller
        .account
        .as_ref()
        .map_or_else(|| "the server".to_owned(), |u| u.to_string())
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

impl Organisation {
    /// What creating the organisation records: its opening balance, if it
    /// has one, and the event.
    pub fn opening(&self) -> Effects {
        let mut effects = Effects::default();
        if self.budget.balance != Money::ZERO {
            effects.ledger.push(LedgerEntry {
                at: self.created_at,
                kind: LedgerKind::Opening,
                amount: self.budget.balance,
                reason: "opening balance".into(),
                actor: None,
            });
        }
        effects.events.push(OrgEvent {
            at: self.created_at,
            kind: OrgEventKind::Created,
            message: format!(
                "organisation created with owners {}",
                self.owners()
                    .map(|u| u.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        effects
    }
}

/// The record the organisation's cluster should have after a change to
/// `target`, or `None` to leave it as it is (or absent).
pub fn target_record(
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
            workload: None,
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
pub fn with_daily_spend(
    mut entries: Vec<LedgerEntry>,
    costs: &[CostRow],
    accrued_until: Option<DateTime<Utc>>,
) -> Vec<LedgerEntry> {
    let mut days: BTreeMap<NaiveDate, Money> = BTreeMap::new();
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
            kind: LedgerKind::Spend,
            amount: -spent,
            reason: format!("nodes running on {day}"),
            actor: None,
        });
    }
    entries.sort_by_key(|e| e.at);
    entries
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::access::Level;

    fn at(secs: i64) -> DateTime<Utc> {
        // 2027-01-15 08:00:00 UTC
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn user(name: &str) -> Username {
        Username::new(name).unwrap()
    }

    fn caller(name: &str) -> Caller {
        Caller::signed_in(user(name), Level::GithubMember)
    }

    fn admin() -> Caller {
        Caller::signed_in(user("root"), Level::Admin)
    }

    fn m(s: &str) -> Money {
        s.parse().unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// Running nodes of the organisation "team" at `PRICE`, one per launch.
    fn meters(launches: &[DateTime<Utc>]) -> Vec<NodeMeter> {
        launches
            .iter()
            .enumerate()
            .map(|(i, l)| {
                NodeMeter::new(
                    ClusterName::new("team").unwrap(),
                    InstanceId::new(format!("n{i}")),
                    *l,
                    PRICE,
                )
            })
            .collect()
    }

    #[test]
    fn a_node_is_charged_to_its_end_however_the_passes_fall() {
        let mut o = org();
        // Launched and gone between two passes; gone in the middle of
        // one's interval; charged past its end by a pass that ran before
        // the listing was folded in.
        let mut ms = meters(&[at(10), at(0), at(0)]);
        ms[0].end_at(at(13), NodeEndSeen::Gone);
        o.accrue(&mut ms, at(20));
        ms[1].end_at(at(27), NodeEndSeen::Gone);
        ms[2].end_at(at(18), NodeEndSeen::Unwatched);
        assert_eq!(
            ms[2].end.unwrap().at,
            at(20),
            "never ends before what was charged"
        );
        let last = o.accrue(&mut ms, at(40));
        assert!(ms.iter().all(NodeMeter::settled));
        let lifetimes = lifetime_cost(PRICE, at(10), at(13))
            + lifetime_cost(PRICE, at(0), at(27))
            + lifetime_cost(PRICE, at(0), at(20));
        assert_eq!(ms.iter().map(NodeMeter::charged).sum::<Money>(), lifetimes);
        assert_eq!(o.budget.balance, m("100") - lifetimes);
        assert_eq!(
            last.spent,
            lifetime_cost(PRICE, at(0), at(27)) - lifetime_cost(PRICE, at(0), at(20))
        );
        // Settled meters owe nothing more.
        assert_eq!(o.accrue(&mut ms, at(4000)).spent, Money::ZERO);
        assert!(ms[2]
            .unwatched_note()
            .unwrap()
            .reason
            .contains("no server watched"));
        assert_eq!(ms[0].unwatched_note(), None);
    }

    /// Owner ann, member bob; $100, $0.10 per node-hour, up to 10 nodes.
    fn org() -> Organisation {
        let mut o = Organisation::new(
            ClusterName::new("lab").unwrap(),
            [user("ann")],
            PoolName::new("default").unwrap(),
            &OrgDefaults::default(),
            at(0),
        )
        .unwrap();
        o.members.insert(user("bob"), OrgRole::Member);
        o.credit(&admin(), m("100"), "grant", at(0)).unwrap();
        o
    }

    const PRICE: Money = Money::from_micros(100_000);

    #[test]
    fn a_member_withdraws_only_their_own_requests() {
        let mut o = org();
        o.request_capacity(&caller("ann"), 3, HOUR, PRICE, at(0))
            .unwrap();
        o.request_capacity(&caller("bob"), 2, HOUR, PRICE, at(1))
            .unwrap();
        assert_eq!(o.target(at(2)), ClusterTarget::Nodes(5));
        let fx = o.withdraw_requests(&caller("bob"), at(2)).unwrap();
        assert_eq!(fx.cluster, Some(ClusterTarget::Nodes(3)));
        assert_eq!(fx.events[0].kind, OrgEventKind::CapacityWithdrawn);
        assert!(o.active_requests(at(2)).all(|r| r.user.as_str() == "ann"));
        // Nothing left to withdraw; a non-member may not.
        let err = o.withdraw_requests(&caller("bob"), at(3)).unwrap_err();
        assert_eq!(err.code(), "invalid_value");
        let err = o.withdraw_requests(&caller("eve"), at(3)).unwrap_err();
        assert_eq!(err.code(), "not_org_member");
        // Asking again after withdrawing asks for less.
        o.request_capacity(&caller("bob"), 1, HOUR, PRICE, at(4))
            .unwrap();
        assert_eq!(o.target(at(4)), ClusterTarget::Nodes(4));
    }

    #[test]
    fn capacity_adds_up_over_users_clamps_and_sleeps() {
        let mut o = org();
        assert_eq!(o.target(at(0)), ClusterTarget::Nodes(0));
        assert!(o.sizing(at(0)).asleep);
        let (fx, out) = o
            .request_capacity(&caller("ann"), 3, HOUR, PRICE, at(0))
            .unwrap();
        assert_eq!(fx.cluster, Some(ClusterTarget::Nodes(3)));
        let kinds: Vec<OrgEventKind> = fx.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [OrgEventKind::CapacityRequested, OrgEventKind::Woke]);
        assert!(
            fx.events[0]
                .message
                .starts_with("ann asked for 3 nodes until "),
            "{}",
            fx.events[0].message
        );
        assert!(!out.clamped);
        // bob overlaps ann; ann asking again for less does not add up.
        o.request_capacity(&caller("bob"), 4, 2 * HOUR, PRICE, at(60))
            .unwrap();
        o.request_capacity(&caller("ann"), 1, 3 * HOUR, PRICE, at(120))
            .unwrap();
        assert_eq!(o.sizing(at(130)).nodes, 7);
        // bob asking beyond max_nodes is clamped, and told so.
        let (_, out) = o
            .request_capacity(&caller("bob"), 50, HOUR, PRICE, at(200))
            .unwrap();
        assert!(out.clamped);
        assert_eq!(out.sizing.nodes, 10);
        // ann's first request ends at 3600, bob's at 3800 and 7260; ann's
        // second (1 node) lasts until 10920.
        assert_eq!(o.sizing(at(3700)).nodes, 10);
        assert_eq!(o.sizing(at(3800)).nodes, 5);
        assert_eq!(o.sizing(at(7260)).nodes, 1);
        let s = o.sizing(at(10920));
        assert_eq!((s.nodes, s.asleep, s.next_change), (0, true, None));
        let fx = o.expire_requests(at(10920));
        assert_eq!(fx.cluster, Some(ClusterTarget::Nodes(0)));
        assert!(o.requests.is_empty());
        // min_nodes keeps it awake.
        o.update_settings(
            &caller("ann"),
            &SettingsPatch {
                min_nodes: Some(2),
                ..SettingsPatch::default()
            },
            PRICE,
            at(11000),
        )
        .unwrap();
        assert_eq!(o.target(at(11000)), ClusterTarget::Nodes(2));
    }

    #[test]
    fn bad_requests_change_nothing() {
        let mut o = org();
        let before = o.clone();
        assert_eq!(
            o.request_capacity(&caller("eve"), 1, HOUR, PRICE, at(0))
                .unwrap_err()
                .code(),
            "not_org_member"
        );
        assert_eq!(
            o.request_capacity(&caller("bob"), 0, HOUR, PRICE, at(0))
                .unwrap_err()
                .code(),
            "invalid_value"
        );
        let bad = SettingsPatch {
            min_nodes: Some(5),
            max_nodes: Some(3),
            ..SettingsPatch::default()
        };
        assert_eq!(
            o.update_settings(&caller("ann"), &bad, PRICE, at(0))
                .unwrap_err()
                .code(),
            "invalid_value"
        );
        let over = SettingsPatch {
            max_nodes: Some(11),
            ..SettingsPatch::default()
        };
        assert!(o
            .update_settings(&caller("ann"), &over, PRICE, at(0))
            .is_err());
        assert_eq!(
            o.update_settings(&caller("bob"), &SettingsPatch::default(), PRICE, at(0))
                .unwrap_err()
                .code(),
            "not_org_owner"
        );
        let limit = SettingsPatch {
            node_limit: Some(50),
            ..SettingsPatch::default()
        };
        assert_eq!(
            o.update_settings(&caller("ann"), &limit, PRICE, at(0))
                .unwrap_err()
                .code(),
            "admin_only"
        );
        assert_eq!(
            o.credit(&caller("ann"), m("5"), "gift", at(0))
                .unwrap_err()
                .code(),
            "admin_only"
        );
        assert_eq!(o, before);
    }

    #[test]
    fn a_request_the_balance_cannot_cover_is_refused_with_what_is_missing() {
        let mut o = org();
        // 10 nodes for 8 h at $0.10 is $8: fine with $100.
        o.request_capacity(&caller("ann"), 10, 24 * HOUR, PRICE, at(0))
            .unwrap();
        o.credit(&admin(), m("-95"), "correction", at(1)).unwrap();
        // $5 left: bob's ask keeps the size at 10 ($8 over 8 h): refused.
        let before = o.clone();
        let err = o
            .request_capacity(&caller("bob"), 2, 24 * HOUR, PRICE, at(2))
            .unwrap_err();
        assert_eq!(err.code(), "insufficient_funds");
        assert!(err.to_string().contains("$3.00 missing"), "{err}");
        assert_eq!(o, before);
        // The runway is capped by the TTL: 10 nodes for one hour is $1.
        o.request_capacity(&caller("bob"), 2, HOUR, PRICE, at(3))
            .unwrap();
    }

    #[test]
    fn what_is_missing_is_what_a_credit_must_add() {
        let mut o = org();
        o.request_capacity(&caller("ann"), 10, 24 * HOUR, PRICE, at(0))
            .unwrap();
        o.credit(&admin(), m("-95"), "correction", at(1)).unwrap();
        let err = o
            .request_capacity(&caller("bob"), 2, 24 * HOUR, PRICE, at(2))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("cost $8.00; the balance is $5.00 ($3.00 missing)"),
            "{err}"
        );
        // Exactly what is missing is enough: the balance must cover the cost.
        o.credit(&admin(), m("3"), "top-up", at(3)).unwrap();
        o.request_capacity(&caller("bob"), 2, 24 * HOUR, PRICE, at(4))
            .unwrap();

        // At or below the threshold ($0.50) nothing that costs starts until
        // a credit lifts the balance above it, even if it would cover the cost.
        let mut o = org();
        o.credit(&admin(), m("-99.50"), "correction", at(1))
            .unwrap();
        assert!(o.is_exhausted());
        let err = o
            .request_capacity(&caller("ann"), 1, HOUR, PRICE, at(2))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("the balance $0.50 is at or below the shutdown threshold $0.50")
                && text.contains("($0.000001 missing)"),
            "{text}"
        );
        let OrgError::InsufficientFunds { missing, .. } = err else {
            panic!("{err}")
        };
        o.credit(&admin(), missing, "top-up", at(3)).unwrap();
        o.request_capacity(&caller("ann"), 1, HOUR, PRICE, at(4))
            .unwrap();
    }

    #[test]
    fn a_settings_change_is_recorded_as_the_change_it_was() {
        let mut o = org();
        let patch = SettingsPatch {
            max_balance: Some(m("500")),
            shutdown_threshold: Some(m("1")),
            ..SettingsPatch::default()
        };
        let fx = o.update_settings(&admin(), &patch, PRICE, at(0)).unwrap();
        assert_eq!(
            fx.events[0].message,
            "root set max_balance $0.00 → $500.00, shutdown_threshold $0.50 → $1.00"
        );
        let fx = o.update_settings(&admin(), &patch, PRICE, at(1)).unwrap();
        assert_eq!(
            fx.events[0].message,
            "root changed no setting (each was already as asked)"
        );
    }

    #[test]
    fn membership_flow() {
        let mut o = org();
        let eve = caller("eve");
        o.request_membership(&eve, at(0)).unwrap();
        assert!(o.pending.contains_key(&user("eve")));
        // Asking again is harmless; a member asking is told so.
        assert!(o.request_membership(&eve, at(1)).unwrap().events.is_empty());
        assert_eq!(
            o.request_membership(&caller("bob"), at(1))
                .unwrap_err()
                .code(),
            "already_member"
        );
        // Only owners decide.
        assert_eq!(
            o.decide_membership(&caller("bob"), &user("eve"), true, at(2))
                .unwrap_err()
                .code(),
            "not_org_owner"
        );
        o.decide_membership(&caller("ann"), &user("eve"), true, at(2))
            .unwrap();
        assert_eq!(o.role(&user("eve")), Some(OrgRole::Member));
        assert_eq!(
            o.decide_membership(&caller("ann"), &user("eve"), true, at(3))
                .unwrap_err()
                .code(),
            "no_membership_request"
        );
        // A removed member's requests go with them.
        o.request_capacity(&eve, 2, HOUR, PRICE, at(4)).unwrap();
        let fx = o
            .remove_member(&caller("ann"), &user("eve"), at(5))
            .unwrap();
        assert_eq!(fx.cluster, Some(ClusterTarget::Nodes(0)));
        assert!(o.requests.is_empty());
        // The last owner stays; bob cannot remove ann; bob may leave.
        assert_eq!(
            o.remove_member(&admin(), &user("ann"), at(6))
                .unwrap_err()
                .code(),
            "last_owner"
        );
        assert_eq!(
            o.remove_member(&caller("bob"), &user("ann"), at(6))
                .unwrap_err()
                .code(),
            "not_org_owner"
        );
        o.remove_member(&caller("bob"), &user("bob"), at(7))
            .unwrap();
        assert_eq!(o.role(&user("bob")), None);
    }

    #[test]
    fn cost_is_exact_per_user_and_day_however_it_is_accrued() {
        let mut once = org();
        once.request_capacity(&caller("ann"), 1, 48 * HOUR, PRICE, at(0))
            .unwrap();
        once.request_capacity(&caller("bob"), 1, 48 * HOUR, PRICE, at(10))
            .unwrap();
        let mut often = once.clone();
        // Three nodes: ann's (oldest), bob's, and one for nobody.
        let launches = [at(100), at(50), at(200)];
        let end = at(30 * 3600); // crosses midnight at 16 h
        let whole = once.accrue(&mut meters(&launches), end);
        let mut pieces = Vec::new();
        let mut t = 0;
        let mut often_meters = meters(&launches);
        while t < 30 * 3600 {
            t = (t + 7 * 60 + 13).min(30 * 3600);
            pieces.extend(often.accrue(&mut often_meters, at(t)).charges);
        }
        let expected = lifetime_cost(PRICE, at(50), end)
            + lifetime_cost(PRICE, at(100), end)
            + lifetime_cost(PRICE, at(200), end);
        assert_eq!(whole.spent, expected);
        assert_eq!(pieces.iter().map(|c| c.amount).sum::<Money>(), expected);
        assert_eq!(once.budget.balance, often.budget.balance);
        assert_eq!(once.budget.balance, m("100") - expected);
        let by = |charges: &[Charge], who: Option<&str>| -> Money {
            charges
                .iter()
                .filter(|c| c.user.as_ref().map(|u| u.as_str()) == who)
                .map(|c| c.amount)
                .sum()
        };
        assert_eq!(
            by(&whole.charges, Some("ann")),
            lifetime_cost(PRICE, at(50), end)
        );
        assert_eq!(
            by(&whole.charges, Some("bob")),
            lifetime_cost(PRICE, at(100), end)
        );
        assert_eq!(by(&whole.charges, None), lifetime_cost(PRICE, at(200), end));
        for who in [Some("ann"), Some("bob"), None] {
            assert_eq!(by(&pieces, who), by(&whole.charges, who));
        }
        let days: BTreeSet<NaiveDate> = whole.charges.iter().map(|c| c.day).collect();
        assert_eq!(days.len(), 2);
        // Charging again at the same moment charges nothing.
        assert_eq!(once.accrue(&mut often_meters, end).spent, Money::ZERO);
    }

    #[test]
    fn running_out_shuts_down_until_credited() {
        let mut o = org();
        o.request_capacity(&caller("ann"), 10, 24 * HOUR, PRICE, at(0))
            .unwrap();
        o.credit(&admin(), m("-90"), "correction", at(0)).unwrap();
        let mut running = meters(&[at(0); 10]);
        // $10 at $1/h: above the $0.50 threshold until 9.5 h, and above
        // what 8 h (the runway) of it costs over that until 1.5 h.
        let a = o.accrue(&mut running, at(3600));
        assert!(a.effects.events.is_empty(), "{:?}", a.effects.events);
        let a = o.accrue(&mut running, at(2 * 3600));
        let kinds: Vec<OrgEventKind> = a.effects.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [OrgEventKind::BudgetLow], "a warning as it crosses");
        assert!(
            a.effects.events[0].message.contains("less than 8h"),
            "{}",
            a.effects.events[0].message
        );
        let a = o.accrue(&mut running, at(9 * 3600));
        assert_eq!(a.effects.cluster, None);
        assert!(a.effects.events.is_empty(), "once: {:?}", a.effects.events);
        let a = o.accrue(&mut running, at(9 * 3600 + 1800));
        assert_eq!(a.effects.cluster, Some(ClusterTarget::Destroyed));
        assert_eq!(a.effects.events[0].kind, OrgEventKind::BudgetExhausted);
        assert!(o.requests.is_empty());
        assert_eq!(o.budget.balance, m("0.50"));
        // Nothing can be requested while shut down.
        let err = o
            .request_capacity(&caller("bob"), 1, HOUR, PRICE, at(9 * 3600 + 1900))
            .unwrap_err();
        assert_eq!(err.code(), "insufficient_funds");
        // A credit ends the shutdown.
        let fx = o
            .credit(&admin(), m("20"), "top-up", at(10 * 3600))
            .unwrap();
        assert_eq!(fx.cluster, Some(ClusterTarget::Nodes(0)));
        let kinds: Vec<OrgEventKind> = fx.events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [OrgEventKind::Credited, OrgEventKind::BudgetRestored]
        );
        assert!(
            fx.events[0].message.contains("credited $20.00 (top-up)"),
            "{}",
            fx.events[0].message
        );
        o.request_capacity(&caller("bob"), 1, HOUR, PRICE, at(10 * 3600))
            .unwrap();
    }

    #[test]
    fn an_organisation_not_yet_credited_is_unfunded_not_shut_down() {
        let mut o = Organisation::new(
            ClusterName::new("new").unwrap(),
            [user("ann")],
            PoolName::new("default").unwrap(),
            &OrgDefaults::default(),
            at(0),
        )
        .unwrap();
        let a = o.accrue(&mut [], at(60));
        assert_eq!(a.effects, Effects::default());
        assert_eq!(o.budget.exhausted_at, None);
        // Its requests are refused all the same, with what is missing.
        let err = o
            .request_capacity(&caller("ann"), 1, HOUR, PRICE, at(61))
            .unwrap_err();
        assert_eq!(err.code(), "insufficient_funds");
        assert!(err.to_string().contains("$0.500001 missing"), "{err}");
    }

    #[test]
    fn a_free_pool_needs_no_money_until_shut_down() {
        let mut o = Organisation::new(
            ClusterName::new("free").unwrap(),
            [user("ann")],
            PoolName::new("default").unwrap(),
            &OrgDefaults::default(),
            at(0),
        )
        .unwrap();
        let (fx, _) = o
            .request_capacity(&caller("ann"), 2, HOUR, Money::ZERO, at(1))
            .unwrap();
        assert_eq!(fx.cluster, Some(ClusterTarget::Nodes(2)));
        // Shut down by an admin's correction, it starts nothing, free or not.
        o.credit(&admin(), m("1"), "grant", at(2)).unwrap();
        o.credit(&admin(), m("-1"), "take back", at(3)).unwrap();
        assert!(o.budget.exhausted_at.is_some());
        let err = o
            .request_capacity(&caller("ann"), 1, HOUR, Money::ZERO, at(4))
            .unwrap_err();
        assert_eq!(err.code(), "insufficient_funds");
    }

    #[test]
    fn the_allowance_is_credited_once_a_month_in_the_ledger() {
        let mut o = org();
        o.update_settings(
            &admin(),
            &SettingsPatch {
                monthly_allowance: Some(m("30")),
                max_balance: Some(m("120")),
                ..SettingsPatch::default()
            },
            PRICE,
            at(0),
        )
        .unwrap();
        // Same month as creation: nothing.
        assert!(o.accrue(&mut [], at(3600)).effects.ledger.is_empty());
        // 2027-02-01: credited up to the cap, once.
        let feb = chrono::TimeZone::with_ymd_and_hms(&Utc, 2027, 2, 1, 0, 0, 1).unwrap();
        let a = o.accrue(&mut [], feb);
        assert_eq!(a.effects.ledger[0].amount, m("20"));
        assert_eq!(a.effects.ledger[0].kind, LedgerKind::Allowance);
        assert_eq!(o.budget.balance, m("120"));
        // Its owners hear of it.
        assert_eq!(a.effects.events.len(), 1);
        assert_eq!(a.effects.events[0].kind, OrgEventKind::Credited);
        assert!(
            a.effects.events[0]
                .message
                .contains("monthly allowance for 2027-02 credited: $20.00"),
            "{}",
            a.effects.events[0].message
        );
        assert!(o
            .accrue(&mut [], feb + chrono::Duration::hours(1))
            .effects
            .ledger
            .is_empty());
    }
}
