//! The HTTP API's request and response bodies: the wire contract of
//! `product.md`, shared by the server and the command line so the two
//! cannot drift apart.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// DEPLOY's body. Unknown fields are refused so that a typo is not silently
/// ignored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// How many nodes the cluster should have.
    #[schema(minimum = 1, example = 3)]
    #[serde(deserialize_with = "whole::number")]
    pub node_capacity: i64,
    /// Seconds until the cluster is destroyed; a new deploy resets it.
    #[schema(minimum = 1, example = 3600)]
    #[serde(deserialize_with = "whole::number")]
    pub time_to_live: i64,
    /// Whether anyone may read the cluster's status. Absent: a deployed
    /// cluster keeps its own, a new one is private. Cannot change once the
    /// cluster is deployed (a different value is 409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_public: Option<bool>,
    /// The pool to build nodes from. Absent: a deployed cluster keeps its
    /// own, a new one gets the server's default pool. Cannot change once
    /// the cluster is deployed (a different pool is 409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9][-_A-Za-z0-9]{0,63}$", max_length = 64)]
    pub pool: Option<String>,
    /// What the nodes run instead of the pool's init data, where the pool
    /// allows it (`allow_workload`, for everyone). Absent: a deployed
    /// cluster keeps its own, a new one runs the pool's. Cannot change once
    /// the cluster is deployed (a different one is 409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadSpec>,
}

/// A cluster's own workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// A shell command each node runs (`sh -c`), with `FLOTILLA_CLUSTER`,
    /// `FLOTILLA_NODE_ID`, `FLOTILLA_NODE_ADDRESS`, `FLOTILLA_NODE_HOST`
    /// and, with a port, `FLOTILLA_WORKLOAD_PORT` in its environment. It
    /// should serve on `FLOTILLA_NODE_HOST`, the node's own address.
    #[schema(
        min_length = 1,
        max_length = 4096,
        example = "python3 -m http.server --bind \"$FLOTILLA_NODE_HOST\" \"$FLOTILLA_WORKLOAD_PORT\""
    )]
    pub command: String,
    /// The port it serves; status gives each node's workload address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 65535, example = 8000)]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Block until the cluster settles, up to the server's `max_wait`.
    #[serde(default)]
    pub wait: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    NotRunning,
    Deploying,
    Running,
    Destroying,
    /// An organisation's cluster at zero nodes; a capacity request wakes it.
    Asleep,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::NotRunning => "not_running",
            ClusterState::Deploying => "deploying",
            ClusterState::Running => "running",
            ClusterState::Destroying => "destroying",
            ClusterState::Asleep => "asleep",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Booting,
    Ready,
    Unhealthy,
    ShuttingDown,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Booting => "booting",
            NodeState::Ready => "ready",
            NodeState::Unhealthy => "unhealthy",
            NodeState::ShuttingDown => "shutting_down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeStatus {
    pub id: String,
    pub state: NodeState,
    /// Where the node answers, once the cloud knows.
    pub address: Option<String>,
    pub instance_type: String,
    pub launched_at: DateTime<Utc>,
    /// Where its cluster's workload serves (the node's host and the
    /// workload's port), when the cluster's workload names a port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_address: Option<String>,
    /// The version of its pool's launch configuration it was made from (a
    /// hash of its instance type, image, init data, tags and driver
    /// settings; of a pool of one type, the pool's `pool_version`);
    /// absent for nodes made before nodes carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_version: Option<String>,
    /// True when its pool would launch it differently now: it is to be
    /// replaced by the pool's rollout.
    #[serde(default, skip_serializing_if = "is_false")]
    pub outdated: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A cluster's replacement of nodes its pool would launch differently now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterRollout {
    /// `rolling` (outdated nodes are being replaced), `paused` (by an
    /// account: replacements under way finish, no others start) or
    /// `stopped` (replacements kept failing; `reason` says how).
    pub state: String,
    /// Its nodes made from an older version of its pool.
    pub outdated: u32,
    /// The version its pool launches nodes at now (of a pool of several
    /// instance types, one made of each type's).
    pub pool_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who paused it (for `paused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When it was paused or stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
}

/// STATUS of one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    pub cluster: String,
    pub state: ClusterState,
    pub is_public: bool,
    /// Nodes wanted now (0 when not running or being destroyed).
    pub node_capacity: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The scheduled deletion, if any.
    pub expires_at: Option<DateTime<Utc>>,
    pub nodes: Vec<NodeStatus>,
    /// Present when the request waited: false if `max_wait` passed first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled: Option<bool>,
    /// Present for an organisation's cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<OrgClusterStatus>,
    /// The cluster's latest changes, oldest first, when asked for with
    /// `?events=N` (single-cluster status only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_events: Vec<Event>,
    /// What stands in the cluster's way, while something does: the last
    /// failure or stall of the server's work on it (creating or
    /// destroying nodes), until that work goes through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ClusterError>,
    /// The account its nodes accept ssh logins for at their address, when
    /// its pool offers ssh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
    /// What its nodes run, when it brought its own workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadSpec>,
    /// Present while some of its nodes are outdated: made from an older
    /// version of its pool, and being replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<ClusterRollout>,
}

/// What stands in a cluster's way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterError {
    /// Stable: `cloud_refused` (retrying will not help until someone
    /// changes something: credentials, image, instance profile, …),
    /// `cloud_unavailable`, `rate_limited`, `quota_exceeded`,
    /// `no_capacity`, `pool_gone`, `pool_full` (its pool holds its
    /// `max_nodes`), `shared_config_unresolved`, `store_failed`.
    pub code: String,
    pub message: String,
    /// When the server first met it, without success between.
    pub since: DateTime<Utc>,
    /// When it last met it.
    pub last_at: DateTime<Utc>,
    /// How many times in a row.
    pub count: u32,
    /// When the server tries again; absent: once something changes (an
    /// instance goes away, a command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Increases with every change; pass the last one seen as `after`.
    pub seq: i64,
    /// `entity.verb`: `cluster.deployed`, `cluster.resized`,
    /// `cluster.extended`, `cluster.destroyed`, `cluster.expired`,
    /// `cluster.forgotten`, `cluster.nodes`, `cluster.error` (what stands
    /// in its way: code, message, count, retry_at), `cluster.error_cleared`,
    /// `org.*` (an organisation's events),
    /// `account.created`, `account.changed`, `account.deleted`,
    /// `pool.applied`, `pool.retired`, `pool.rollout_paused`,
    /// `pool.rollout_resumed`, `pool.rollout_stopped` (version, reason),
    /// `shared_config.created`, `shared_config.updated`, `job.*`,
    /// `schedule.*`, `dropbox.refused` (a drop-box trigger refused: path,
    /// cluster, code, message; the key is the folder's account),
    /// `notification.disabled` (a subscription disabled for failing:
    /// subscription, channel, target, message; the key is its account).
    pub kind: String,
    /// The cluster, organisation or account it is about.
    pub key: String,
    pub at: DateTime<Utc>,
    /// What the change left: a cluster's nodes, pool, is_public,
    /// expires_at and generation; an organisation event's message; an
    /// account's kind, level and grants.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// `GET /api/v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    /// The changes the caller may see, oldest first.
    pub events: Vec<Event>,
    /// Pass as `after` for the next page (it is past changes the caller
    /// may not see, too).
    pub next: i64,
    /// The page was full: more may follow at once.
    pub more: bool,
    /// The latest change committed when the page was read.
    pub latest: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// Include the cluster's latest changes, up to this many (0 to 100;
    /// default 0: a status read stays one lookup in memory).
    #[serde(default)]
    #[param(maximum = 100)]
    pub events: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Changes after this number (default 0: from the oldest kept).
    #[serde(default)]
    pub after: Option<i64>,
    /// Only this cluster's changes (needs permission to read its status).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Changes looked at per page, 0 to 1000 (default 100).
    #[serde(default)]
    #[param(maximum = 1000)]
    pub limit: Option<usize>,
    /// With no change to return, wait for one up to the server's
    /// `max_wait`.
    #[serde(default)]
    pub follow: bool,
}

/// What status adds for an organisation's cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrgClusterStatus {
    pub min_nodes: u32,
    pub max_nodes: u32,
    /// Active capacity requests: who, how many, until when.
    pub requests: Vec<CapacityRequestStatus>,
    /// When the earliest active request expires (the size may change then).
    pub next_change: Option<DateTime<Utc>>,
    /// The organisation's balance ran out and the cluster was shut down.
    pub shut_down: bool,
    /// What to do next, for people (how to wake an asleep cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CapacityRequestStatus {
    pub user: String,
    pub nodes: u32,
    pub expires_at: DateTime<Utc>,
}

/// How many of a pool's errors to read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PoolErrorsQuery {
    /// At most this many, latest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// One failure making a pool's nodes, counted each time it happened again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolErrorView {
    /// `create_failed`, `destroy_failed`, `boot_timeout` or `probe_timeout`.
    pub kind: String,
    /// How the cloud's error was classified (as a status's `error.code`);
    /// absent for a timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub cluster: String,
    pub instance_type: String,
    /// The latest time's message.
    pub message: String,
    pub count: u64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

/// A pool's errors, latest first: those of clusters the caller may see.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolErrorList {
    pub pool: String,
    pub errors: Vec<PoolErrorView>,
}

/// Which part of a node's output to read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// The node: its ID, or its place in the status's list (1 is the
    /// oldest). Default: the oldest node.
    pub node: Option<String>,
    /// Read from this byte of the node's output on (the `to` of the last
    /// answer, to follow it). Default: its last `limit` bytes.
    #[param(minimum = 0)]
    pub from: Option<i64>,
    /// The most bytes to answer with (default and most: 1 MiB).
    #[param(minimum = 1, maximum = 1048576)]
    pub limit: Option<usize>,
}

/// A stretch of what a node printed: bytes `from..to` of its output.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeLogs {
    pub cluster: String,
    pub node: String,
    pub from: u64,
    pub to: u64,
    pub text: String,
}

/// A command to run on a node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments (not run through a shell; give
    /// `["sh", "-c", "..."]` for one).
    #[schema(example = json!(["uptime"]))]
    pub command: Vec<String>,
    /// The node: its ID, or its place in the status's list (1 is the
    /// oldest). Default: the oldest node.
    #[serde(default)]
    pub node: Option<String>,
    /// Seconds before the command is killed (default 60, at most 600).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 600)]
    pub timeout: Option<u64>,
}

/// What a command run on a node answered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResponse {
    pub cluster: String,
    pub node: String,
    /// None when it was killed (by a signal, or at its time limit).
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    /// Output past 1 MiB (each) was dropped.
    pub truncated: bool,
}

/// EXTEND's body: only the deadline moves.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// Seconds from now until the cluster is destroyed, within the
    /// caller's level limit.
    #[schema(minimum = 1, example = 7200)]
    #[serde(deserialize_with = "whole::number")]
    pub time_to_live: i64,
}

/// A capacity request on an organisation's cluster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacityRequest {
    /// Nodes asked for (the cluster is sized by the sum over users of each
    /// user's largest active request, within min_nodes..max_nodes).
    #[schema(minimum = 1, example = 4)]
    #[serde(deserialize_with = "whole::number")]
    pub nodes: i64,
    /// Seconds the request lasts.
    #[schema(minimum = 1, example = 3600)]
    #[serde(deserialize_with = "whole::number")]
    pub time_to_live: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CapacityResponse {
    pub cluster: String,
    /// What this request asked for.
    pub requested: u32,
    /// The request asked for more than max_nodes allows and was cut.
    pub clamped: bool,
    pub max_nodes: u32,
    /// When this request expires.
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub status: ClusterStatus,
}

/// Creates an organisation (admins).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    /// A valid cluster name: the organisation's private cluster has it.
    #[schema(pattern = "^[A-Za-z0-9][-A-Za-z0-9]{0,39}$", max_length = 40)]
    pub name: String,
    /// Usernames of existing accounts.
    #[schema(min_items = 1)]
    pub owners: Vec<String>,
    /// The pool of the organisation's cluster; the default pool if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9][-_A-Za-z0-9]{0,63}$", max_length = 64)]
    pub pool: Option<String>,
}

/// Changes an organisation's settings. Owners: min_nodes, max_nodes, pool.
/// Admins also: node_limit and the budget's terms. Money is a decimal
/// string of dollars ("25.00").
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrgRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 4294967295_i64)]
    #[serde(deserialize_with = "whole::optional")]
    pub min_nodes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 4294967295_i64)]
    #[serde(deserialize_with = "whole::optional")]
    pub max_nodes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9][-_A-Za-z0-9]{0,63}$", max_length = 64)]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 4294967295_i64)]
    #[serde(deserialize_with = "whole::optional")]
    pub node_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[+]?[0-9]{1,12}([.][0-9]{1,6})?$")]
    pub monthly_allowance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[+]?[0-9]{1,12}([.][0-9]{1,6})?$")]
    pub max_balance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[+]?[0-9]{1,12}([.][0-9]{1,6})?$")]
    pub shutdown_threshold: Option<String>,
    /// Seconds a request must be able to pay for (capped by its TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 31536000)]
    #[serde(deserialize_with = "whole::optional")]
    pub min_runway: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrgMember {
    pub username: String,
    /// `owner` or `member`.
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PendingMember {
    pub username: String,
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrgSettingsView {
    pub min_nodes: u32,
    pub max_nodes: u32,
    /// The most max_nodes may be (set by admins).
    pub node_limit: u32,
    pub pool: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrgBudgetView {
    pub balance: String,
    pub monthly_allowance: String,
    pub max_balance: String,
    pub shutdown_threshold: String,
    /// Seconds a request must be able to pay for.
    pub min_runway: u64,
    /// Set while the cluster is shut down for lack of money.
    pub exhausted_at: Option<DateTime<Utc>>,
    /// Every node has been charged up to this moment.
    pub charged_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrgForecast {
    /// Nodes the cloud lists for the cluster now.
    pub running_nodes: usize,
    /// Dollars per node-hour of its pool (of a pool of several instance
    /// types, the dearest: what forecasts count a node at).
    pub price_per_hour: String,
    /// Dollars per hour its running nodes cost together, each at its own
    /// type's price.
    pub burn_per_hour: String,
    /// Hours until the balance reaches zero at the current burn; null when
    /// nothing runs.
    pub hours_left: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrgEventView {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub message: String,
}

/// An organisation as its members see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrgView {
    pub name: String,
    /// The organisation's private cluster (its name).
    pub cluster: String,
    pub members: Vec<OrgMember>,
    pub pending: Vec<PendingMember>,
    pub settings: OrgSettingsView,
    pub budget: OrgBudgetView,
    pub forecast: OrgForecast,
    /// Nodes the cluster should have now.
    pub size: u32,
    pub asleep: bool,
    pub requests: Vec<CapacityRequestStatus>,
    pub next_change: Option<DateTime<Utc>>,
    /// The latest events, oldest first.
    pub events: Vec<OrgEventView>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrgSummary {
    pub name: String,
    /// The caller's part in it: `owner`, `member`, `pending`, or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub members: usize,
    pub balance: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrgList {
    pub orgs: Vec<OrgSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MembershipRequestResponse {
    pub org: String,
    pub username: String,
    /// `pending`.
    pub status: String,
    pub message: String,
}

/// Sets a member's role.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRoleRequest {
    /// `owner` or `member`.
    #[schema(pattern = "^(owner|member)$")]
    pub role: String,
}

/// A credit (or, negative, a correction) by an admin.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditRequest {
    /// Dollars as a decimal string, e.g. "25.00" or "-3.50".
    #[schema(pattern = "^[-+]?[0-9]{1,12}([.][0-9]{1,6})?$")]
    pub amount: String,
    /// Why; kept in the ledger.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntryView {
    pub at: DateTime<Utc>,
    /// `opening`, `credit`, `correction`, `allowance`, `spend`, or `note`
    /// (moves no money: says how something was charged).
    pub kind: String,
    pub amount: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Ledger {
    pub org: String,
    pub balance: String,
    pub entries: Vec<LedgerEntryView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CostRowView {
    pub day: chrono::NaiveDate,
    pub cluster: String,
    /// Whose request kept the nodes; absent for the organisation's floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub amount: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Costs {
    pub org: String,
    pub total: String,
    pub rows: Vec<CostRowView>,
}

/// One node of an organisation's cluster, or the instance of an attempt
/// of a job charged to it: charged from its launch until a listing no
/// longer showed it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeUsageView {
    pub cluster: String,
    pub id: String,
    /// The job attempt (`JOB/ATTEMPT`) this instance ran; absent for a
    /// node of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Who a job's instance is charged to: whoever submitted the job
    /// (absent for the server's runs, charged to the organisation itself,
    /// and for the cluster's nodes, charged to the users whose capacity
    /// requests keep them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charged_to: Option<String>,
    pub launched_at: DateTime<Utc>,
    /// When it was gone; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// `gone`: a listing stopped showing it while the leader watched;
    /// `unwatched`: it went while no server watched, and was charged up to
    /// the first listing that no longer showed it. Absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// Dollars per node-hour, as when it was first seen.
    pub price_per_hour: String,
    /// Charged so far, from the launch up to `charged_until`.
    pub charged: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charged_until: Option<DateTime<Utc>>,
}

/// `GET /api/v1/orgs/{org}/usage`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub org: String,
    /// The sum of `charged`.
    pub total: String,
    /// By launch.
    pub nodes: Vec<NodeUsageView>,
}

impl ClusterStatus {
    pub fn ready_nodes(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.state == NodeState::Ready)
            .count()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterList {
    pub clusters: Vec<ClusterStatus>,
}

/// `GET /api/v1/pools`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolList {
    pub pools: Vec<PoolView>,
}

/// A pool: what a deploy naming it gets. Fields may be added (an on-demand
/// price, say); a client must ignore those it does not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    #[schema(example = "default")]
    pub name: String,
    /// The driver (instance set) that makes its nodes.
    #[schema(example = "aws")]
    pub driver: String,
    /// The type its nodes are made of while the cloud has capacity for
    /// it: the first of `types`.
    #[schema(example = "t3.micro")]
    pub instance_type: String,
    /// The pool a deploy naming none uses.
    pub default: bool,
    /// Dollars per node-hour of `instance_type`, as configured: what
    /// organisations are charged for its nodes.
    #[schema(example = "0.10")]
    pub price_per_hour: String,
    /// The resources of one node of `instance_type`, if the driver can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<InstanceShape>,
    /// The current spot price of `instance_type`, for a pool that launches
    /// spot instances and a driver that can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_price: Option<SpotPrice>,
    /// `config` (the server's config file: read-only through the API) or
    /// `api` (written with PUT /api/v1/pools/{pool}).
    #[serde(default)]
    #[schema(example = "config")]
    pub source: String,
    /// Every instance type its nodes may be, in the order they are made
    /// of them (the cheapest first): a node is of the first the cloud has
    /// capacity for.
    #[serde(default)]
    pub types: Vec<PoolTypeView>,
}

/// One of a pool's instance types: what a node of it costs and is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolTypeView {
    #[schema(example = "t3.micro")]
    pub instance_type: String,
    /// Dollars per node-hour: what organisations are charged for a node
    /// of this type.
    #[schema(example = "0.0104")]
    pub price_per_hour: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<InstanceShape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_price: Option<SpotPrice>,
}

/// A pool in full: what it says, where it comes from, who uses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolDetail {
    pub name: String,
    /// `config` or `api`.
    pub source: String,
    /// For a pool written through the API: its version (one per write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The pool a deploy naming none uses.
    pub default: bool,
    /// The pool as written: see GET /api/v1/schemas/{driver}/pool.
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    /// The clusters whose records name it.
    pub clusters: Vec<String>,
    /// The image its next node gets, resolved now (absent: the driver's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The shared config version that image comes from, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_from: Option<SharedConfigRef>,
    /// Why it has no image now (its shared config gives none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_problem: Option<String>,
    /// Fields of the document left out: what only admins and the pool's
    /// owners see (`init_data`, `ec2`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<String>,
}

/// One version of a shared config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SharedConfigRef {
    pub shared_config: String,
    pub version: u64,
}

/// PUT /api/v1/shared-configs/{name}: create it (`schema` required) or
/// write its next version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedConfigRequest {
    /// The published schema it follows, `DRIVER/KIND` (as `aws/images`):
    /// required to create it; fixed from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "aws/images")]
    pub schema: Option<String>,
    /// The value, which must follow the schema.
    pub value: serde_json::Value,
}

/// A shared config at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SharedConfigView {
    pub name: String,
    pub version: u64,
    /// Its latest version: the one pools resolve to.
    pub latest: u64,
    /// The published schema it follows (`DRIVER/KIND`).
    pub schema: String,
    /// That schema as it was when the config was created.
    #[schema(value_type = Object)]
    pub schema_document: serde_json::Value,
    pub value: serde_json::Value,
    pub at: DateTime<Utc>,
    pub by: String,
    /// The pools whose image names it.
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SharedConfigList {
    pub shared_configs: Vec<SharedConfigView>,
}

/// `?version=N`: that version rather than the latest.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    #[param(minimum = 1)]
    pub version: Option<u64>,
}

/// What PUT /api/v1/pools/{pool} did, or with `dry_run` would do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolApplied {
    /// `created`, `changed` or `unchanged`.
    pub outcome: String,
    /// True when nothing was written.
    pub dry_run: bool,
    /// The top-level fields whose values changed.
    pub changed_fields: Vec<String>,
    pub pool: PoolDetail,
    /// The version of its launch configuration new nodes are made at
    /// (absent while its image cannot be resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_version: Option<String>,
    /// The nodes its rollout replaces: made from another version (those
    /// of clusters the caller may see). For a dry run, what applying it
    /// would replace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<ClusterReplacement>,
}

/// One cluster's nodes a pool's rollout replaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterReplacement {
    pub cluster: String,
    /// Its nodes (those shutting down aside).
    pub nodes: u32,
    /// Those made from another version of the pool.
    pub outdated: Vec<String>,
}

/// A pool's rollout: its clusters' outdated nodes (made from an older
/// version of its launch configuration) and what becomes of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolRollout {
    pub pool: String,
    /// `idle` (nothing outdated), `rolling`, `paused` or `stopped`.
    pub state: String,
    /// The version its nodes are made at now (absent while its image
    /// cannot be resolved: `error` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Outdated nodes in all (of the clusters the caller may see).
    pub outdated: u32,
    /// Set while paused: by whom and since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<RolloutPause>,
    /// Set while stopped: replacements at `launch_version` kept failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<RolloutStop>,
    /// Its clusters (those the caller may see).
    pub clusters: Vec<ClusterReplacement>,
    /// How fast it replaces: the pool's `rollout` settings as meant.
    pub max_surge: String,
    pub max_unavailable: String,
    pub max_failures: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutPause {
    pub by: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutStop {
    /// The launch version whose replacements failed.
    pub launch_version: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// `?dry_run=true`: check and answer, write nothing;
/// `?expected_version=N`: refused (409) unless N is the version now (0:
/// none), so an edit made from an old copy cannot undo another's.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DryRunQuery {
    pub dry_run: Option<bool>,
    pub expected_version: Option<u64>,
}

/// `?expected_version=N`: refused (409) unless N is the version now (0:
/// none).
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExpectedVersionQuery {
    pub expected_version: Option<u64>,
}

/// One version of a pool written through the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolVersion {
    pub version: u64,
    pub at: DateTime<Utc>,
    pub by: String,
    /// True for the version that retired the pool (it has no document).
    pub retired: bool,
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub document: Option<serde_json::Value>,
}

/// Every version of a pool written through the API, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolHistory {
    pub pool: String,
    pub versions: Vec<PoolVersion>,
}

/// The schemas this server publishes: one per configured driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SchemaIndex {
    pub drivers: Vec<SchemaEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SchemaEntry {
    /// The driver's name in the server's config (what a pool's `driver`
    /// names).
    pub driver: String,
    /// Its type: `local`, `fake` or `ec2`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where the JSON Schema of a pool on it is.
    pub pool: String,
    /// Where the JSON Schema of each kind of shared config it publishes is.
    #[serde(default)]
    pub shared: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceShape {
    #[schema(example = 2)]
    pub vcpus: u32,
    #[schema(example = 1024)]
    pub memory_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SpotPrice {
    /// USD per instance hour: the highest of the availability zones'
    /// current prices.
    #[schema(example = 0.0035)]
    pub usd_per_hour: f64,
    /// The zone of that price.
    #[schema(example = "us-west-2a")]
    pub availability_zone: String,
    /// When the cloud set it.
    pub since: DateTime<Utc>,
}

/// Every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code scripts can match on.
    pub error: String,
    /// What went wrong and what to do, for people.
    pub message: String,
    /// For a document that is not valid (`invalid_pool`): every problem
    /// found, each at its JSON pointer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

/// One thing wrong with a document sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Where, as a JSON pointer (RFC 6901) into the document; empty for
    /// the whole document.
    pub pointer: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// A user level, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Anonymous,
    GithubMember,
    OrgMember,
    Admin,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Anonymous => "anonymous",
            Level::GithubMember => "github_member",
            Level::OrgMember => "org_member",
            Level::Admin => "admin",
        }
    }
}

/// LOGIN with a local account.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// Never prints the password.
impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// LOGIN with a GitHub token (classic with `read:org`, or fine-grained with
/// organisation members read access).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubLoginRequest {
    pub token: String,
}

impl std::fmt::Debug for GithubLoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GithubLoginRequest { token: <redacted> }")
    }
}

/// Exchanges a refresh token for a new pair (the presented one is used up),
/// or revokes it (logout).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

impl std::fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshRequest { refresh_token: <redacted> }")
    }
}

/// What LOGIN and refresh return.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// Send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    pub expires_at: DateTime<Utc>,
    /// Seconds until `expires_at`.
    pub expires_in: u64,
    /// Single use: exchange at `/api/v1/auth/refresh` before `refresh_expires_at`.
    pub refresh_token: String,
    pub refresh_expires_at: DateTime<Utc>,
    pub username: String,
    pub level: Level,
    /// The clusters this account may act on.
    pub clusters: Vec<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("username", &self.username)
            .field("level", &self.level)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A short-lived token for one cluster (audience = the cluster's name), for
/// the cluster's own proxy to verify against `/.well-known/jwks.json`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterTokenResponse {
    pub token: String,
    pub audience: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for ClusterTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTokenResponse")
            .field("audience", &self.audience)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Creates a local account (admins only).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    #[schema(pattern = "^[A-Za-z0-9][-A-Za-z0-9]{0,39}$", max_length = 40)]
    pub username: String,
    /// At least 12 characters; at most 1024 bytes.
    #[schema(min_length = 12, max_length = 256)]
    pub password: String,
    pub level: Level,
    /// Clusters granted beyond the account's own.
    #[serde(default)]
    pub grants: Vec<String>,
}

impl std::fmt::Debug for CreateUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUserRequest")
            .field("username", &self.username)
            .field("level", &self.level)
            .field("grants", &self.grants)
            .finish_non_exhaustive()
    }
}

/// Changes an account (admins only); absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    /// Replaces the account's granted clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<String>>,
}

/// An account as the API shows it: never its password.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub username: String,
    /// `local` or `github`.
    pub kind: String,
    pub level: Level,
    /// Clusters granted beyond the account's own.
    pub grants: Vec<String>,
    /// Every cluster the account may act on (its own and its grants).
    pub clusters: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
}

/// The keys that verify tokens (`GET /api/v1/auth/keys`, admins).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyList {
    /// Oldest first, where their age is known.
    pub keys: Vec<SigningKeyView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyView {
    pub kid: String,
    /// New tokens are signed with this key (exactly one does); the others
    /// only verify tokens they signed until retired.
    pub signs: bool,
    /// Absent for a key kept in a server's key directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
}

/// Who the presented credentials are (`GET /api/v1/auth/whoami`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// Absent for anonymous callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub level: Level,
    pub clusters: Vec<String>,
}

/// Whole numbers as JSON may write them: `3` or `3.0` (JSON Schema's
/// `integer` admits both), never `3.5`.
mod whole {
    use serde::de::{self, Deserializer, Visitor};

    struct Whole;

    impl Visitor<'_> for Whole {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
            // Exactly a whole number, and within i64.
            if v.fract() == 0.0 && v.abs() < 9.0e18 {
                Ok(v as i64)
            } else {
                Err(E::invalid_value(de::Unexpected::Float(v), &self))
            }
        }
    }

    pub fn number<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        d.deserialize_any(Whole)
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        struct Maybe;
        impl<'de> Visitor<'de> for Maybe {
            type Value = Option<i64>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole number or null")
            }

            fn visit_none<E: de::Error>(self) -> Result<Option<i64>, E> {
                Ok(None)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Option<i64>, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<i64>, D::Error> {
                number(d).map(Some)
            }
        }
        d.deserialize_option(Maybe)
    }
}

#[cfg(test)]
mod whole_tests {
    use super::*;

    #[test]
    fn whole_numbers_may_be_written_with_a_point_zero() {
        let d: DeployRequest =
            serde_json::from_str(r#"{"node_capacity": 2.0, "time_to_live": 60}"#).unwrap();
        assert_eq!((d.node_capacity, d.time_to_live), (2, 60));
        let e =
            serde_json::from_str::<DeployRequest>(r#"{"node_capacity": 2.5, "time_to_live": 60}"#)
                .unwrap_err();
        assert!(
            e.to_string()
                .contains("invalid value: floating point `2.5`, expected a whole number"),
            "{e}"
        );
        let e =
            serde_json::from_str::<DeployRequest>(r#"{"node_capacity": "3", "time_to_live": 60}"#)
                .unwrap_err();
        assert!(e.to_string().contains("invalid type: string"), "{e}");
        let u: UpdateOrgRequest = serde_json::from_str(r#"{"min_nodes": 1.0}"#).unwrap();
        assert_eq!(u.min_nodes, Some(1));
        assert_eq!(
            serde_json::from_str::<UpdateOrgRequest>("{}")
                .unwrap()
                .min_nodes,
            None
        );
    }
}

/// A job as shown (`GET /api/v1/jobs/{id}`): what was submitted (secrets'
/// values redacted), where it is, and its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    #[schema(example = 12)]
    pub id: u64,
    #[schema(example = "hello")]
    pub name: String,
    /// queued, starting, running, succeeded, failed, cancelled or
    /// timed_out.
    #[schema(example = "queued")]
    pub state: String,
    /// Why a queued job waits (or who cancelled it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A queued job's place among the queued jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<QueuePosition>,
    pub submitted_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    pub priority: i32,
    /// Who asked to cancel it while an attempt was under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_by: Option<String>,
    pub submitted_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The job file as stored, with the server's defaults filled in.
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
    pub attempts: Vec<AttemptView>,
    /// Dollars its attempts' instances cost so far.
    #[schema(example = "0.0031")]
    pub cost: String,
}

/// Where a queued job stands: `place` of `of`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueuePosition {
    pub place: usize,
    pub of: usize,
}

/// One attempt at a job, on an instance of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    pub attempt: u32,
    pub pool: String,
    pub instance_type: String,
    /// on_demand or spot.
    pub market: String,
    /// Dollars per hour of its instance.
    #[schema(example = "0.0104")]
    pub price_per_hour: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Its instance was one its pool kept warm (`idle_nodes`), booted
    /// before the attempt started.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it ended: exited (with `exit_status`), interrupted,
    /// boot_failed, lost, timed_out or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// Why it ended, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Dollars its instance cost: its price for the time from its start
    /// to its end (or now).
    #[schema(example = "0.0031")]
    pub cost: String,
}

/// `GET /api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

/// `GET /api/v1/jobs`'s query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// Everyone's jobs, not only the caller's (admins).
    #[serde(default)]
    pub all: bool,
    /// The most jobs to list, newest first (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

/// The query of `GET /api/v1/jobs/{id}/files`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobFilesQuery {
    /// Which attempt's files (default: the latest).
    #[param(minimum = 1)]
    pub attempt: Option<u32>,
}

/// The query of `GET /api/v1/jobs/{id}/file`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobFileQuery {
    /// The file's path, relative to the attempt's work directory.
    pub path: String,
    /// Which attempt's file (default: the latest).
    #[param(minimum = 1)]
    pub attempt: Option<u32>,
}

/// The query of `PUT /api/v1/attempts/{job}/{attempt}/file`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttemptFileQuery {
    /// The file's path, relative to the work directory: one of the job's
    /// `artifacts`, or under one.
    pub path: String,
}

/// A file an attempt kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeptFileView {
    /// Relative to the attempt's work directory.
    pub path: String,
    /// Bytes.
    pub size: u64,
}

/// `GET /api/v1/jobs/{id}/files`: what one attempt kept of its job's
/// `artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobFiles {
    pub job: u64,
    /// 0: no attempt started yet.
    pub attempt: u32,
    /// By path.
    pub files: Vec<KeptFileView>,
}

/// `GET /api/v1/warm`'s query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WarmQuery {
    /// Seconds to wait for a job to take the instance before answering
    /// 204 (default 0: answer at once).
    #[param(maximum = 25)]
    #[serde(default)]
    pub wait: u64,
}

/// The longest `GET /api/v1/warm` waits.
pub const MAX_WARM_WAIT_SECS: u64 = 25;

/// `GET /api/v1/jobs/{id}/log`'s query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobLogQuery {
    /// Which attempt's log (default: the latest).
    #[param(minimum = 1)]
    pub attempt: Option<u32>,
    /// Keep the answer open, sending lines as they come, until the
    /// attempt ends.
    #[serde(default)]
    pub follow: bool,
}

/// What an attempt's agent runs (`GET /api/v1/attempts/{job}/{attempt}`):
/// for the agent only, secrets included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttemptWork {
    pub job: u64,
    pub attempt: u32,
    pub script: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Its environment, secrets included.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// The values the agent hides from what it prints itself.
    #[serde(default)]
    pub secret_values: Vec<String>,
    pub max_runtime_secs: u64,
    #[serde(default)]
    pub artifacts: Vec<String>,
}

/// What the agent of an instance kept warm for jobs is told once a job
/// took the instance (`GET /api/v1/warm`): the attempt it runs, and the
/// attempt's token for everything it asks from then. As text
/// (`Accept: text/plain`, for a boot script): `JOB ATTEMPT TOKEN MINUTES`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WarmAssignment {
    pub job: u64,
    pub attempt: u32,
    pub token: String,
    /// How long the instance may live from now at most (the job's
    /// `max_runtime` and `keep_on_failure`, and a margin): a boot script
    /// sets its shutdown timer to it.
    pub lifetime_secs: u64,
}

/// What an attempt's agent reports (`POST /api/v1/attempts/{job}/{attempt}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum AgentReport {
    /// The script started.
    Running,
    /// The agent is alive.
    Heartbeat,
    /// Output lines, as chunk number `chunk` of the log (a chunk sent
    /// again is kept once).
    Log {
        #[schema(minimum = 0)]
        #[serde(deserialize_with = "whole::number")]
        chunk: i64,
        lines: Vec<LogLine>,
    },
    /// The script exited with `status` (128 + the signal that killed it).
    Exited {
        #[schema(minimum = 0, maximum = 255)]
        #[serde(deserialize_with = "whole::number")]
        status: i64,
    },
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    /// out or err.
    pub stream: String,
    pub text: String,
}

/// What the agent is told back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentAnswer {
    /// Stop the script: the attempt is over or cancelled.
    pub stop: bool,
}

/// `POST /api/v1/job-templates/{template}`: run a job template of the
/// server's config against a cluster at a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunTemplateRequest {
    #[schema(example = "demo")]
    pub cluster: String,
    /// A branch, tag or commit (letters, digits, `.`, `_`, `-`, `/`, `+`).
    #[schema(
        example = "v1.2.3",
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9_+][A-Za-z0-9._/+-]*$"
    )]
    pub version: String,
}

/// `GET /api/v1/job-templates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<String>,
}

/// `POST /api/v1/schedules`: run a job template against a cluster at a
/// version on a cron schedule (admins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    #[schema(
        example = "nightly",
        min_length = 1,
        max_length = 40,
        pattern = "^[a-z][a-z0-9-]*$"
    )]
    pub name: String,
    /// Five fields (minute hour day month weekday), or six with seconds
    /// first; in UTC.
    #[schema(example = "0 3 * * *")]
    pub cron: String,
    #[schema(example = "test")]
    pub template: String,
    #[schema(example = "demo")]
    pub cluster: String,
    #[schema(
        example = "main",
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9_+][A-Za-z0-9._/+-]*$"
    )]
    pub version: String,
    /// What to do with runs missed while no server ran: run_once (the
    /// default) or skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<String>,
}

/// A schedule as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    pub name: String,
    pub cron: String,
    pub template: String,
    pub cluster: String,
    pub version: String,
    /// run_once or skip.
    pub missed: String,
    pub paused: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// When it fires next (none while paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired_at: Option<DateTime<Utc>>,
    /// The job its last fire queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job: Option<u64>,
    /// Why its last fire queued no job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `GET /api/v1/schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
}

/// `POST /api/v1/subscriptions`: hear of the events the caller may read,
/// by mail or webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRequest {
    /// A mail address (the server must have `[notify.smtp]`). Give this or
    /// `webhook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "ann@example.org", max_length = 254)]
    pub email: Option<String>,
    /// An http or https URL each event is POSTed to, signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "https://hooks.example.org/flotilla", max_length = 2048)]
    pub webhook: Option<String>,
    /// Comma-separated: `*`, an entity's (`cluster.*`), or an event's name
    /// (`cluster.deployed`).
    #[schema(example = "cluster.*,org.budget_exhausted")]
    pub events: String,
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionView {
    pub id: i64,
    pub account: String,
    /// email or webhook.
    pub channel: String,
    /// The address or URL.
    pub target: String,
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// Deliveries given up in a row since the last that arrived.
    pub failures: u32,
    /// Set once it was disabled for failing (`POST .../enable` turns it
    /// on again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sent_at: Option<DateTime<Utc>>,
    /// A webhook's signing secret: only in the answer that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `GET /api/v1/subscriptions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionList {
    pub subscriptions: Vec<SubscriptionView>,
}

/// The query of `GET /api/v1/subscriptions`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubscriptionsQuery {
    /// Every account's, not only the caller's (admins).
    #[serde(default)]
    pub all: bool,
}

/// The query of `GET /api/v1/deliveries`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Every account's, not only the caller's (admins).
    #[serde(default)]
    pub all: bool,
    /// The most deliveries to list, newest first (default 50, at most
    /// 500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

/// One event's delivery to one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    /// 0: the server's `admin_email`.
    pub subscription: i64,
    /// The change it is of; none for a test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    pub kind: String,
    pub key: String,
    /// pending, delivered, failed or deduplicated.
    pub state: String,
    pub attempts: u32,
    /// When it is tried (again), while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// `GET /api/v1/deliveries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}
