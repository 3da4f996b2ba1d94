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
    pub node_capacity: i64,
    /// Seconds until the cluster is destroyed; a new deploy resets it.
    #[schema(minimum = 1, example = 3600)]
    pub time_to_live: i64,
    /// Cannot change once the cluster is deployed.
    #[serde(default)]
    pub is_public: bool,
    /// The pool to build nodes from; the server's default pool if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
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
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::NotRunning => "not_running",
            ClusterState::Deploying => "deploying",
            ClusterState::Running => "running",
            ClusterState::Destroying => "destroying",
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
    #[schema(example = "t3.micro")]
    pub instance_type: String,
    /// The pool a deploy naming none uses.
    pub default: bool,
    /// The resources of one node, if the driver can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<InstanceShape>,
    /// The current spot price, for a pool that launches spot instances and
    /// a driver that can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_price: Option<SpotPrice>,
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
    pub username: String,
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

/// Who the presented credentials are (`GET /api/v1/auth/whoami`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// Absent for anonymous callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub level: Level,
    pub clusters: Vec<String>,
}
