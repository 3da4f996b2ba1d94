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
