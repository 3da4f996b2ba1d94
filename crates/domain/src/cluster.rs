use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::{ClusterName, PoolName};
use crate::plan::{NodeState, ObservedNode};

/// Bounds on what a deploy may ask for. Set by the operator in `[limits]`;
/// per-level limits narrow them further once accounts exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub max_nodes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            max_nodes: 100,
        }
    }
}

/// Why a request's values were refused. Each variant names the field so the
/// API can say exactly what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("node_capacity must be between 1 and {max}, got {got}")]
    NodeCapacity { got: i64, max: u32 },
    #[error(
        "time_to_live must be between {} and {}, got {} ({got} s)",
        human_secs(*.min as i64),
        human_secs(*.max as i64),
        human_secs(*.got)
    )]
    TimeToLive { got: i64, min: u64, max: u64 },
    #[error("{0}")]
    Workload(String),
}

#[cfg(test)]
mod human_tests {
    use super::*;

    #[test]
    fn limits_read_in_the_units_people_type() {
        let e = ValidationError::TimeToLive {
            got: 13 * 3600,
            min: 60,
            max: 12 * 3600,
        };
        assert_eq!(
            e.to_string(),
            "time_to_live must be between 1m and 12h, got 13h (46800 s)"
        );
        assert_eq!(human_secs(-5), "-5s");
        assert_eq!(human_secs(0), "0s");
    }
}

/// Seconds as people write them (`13h`, `1day 2h`), as the command line
/// takes them; a negative count as it is.
pub fn human_secs(seconds: i64) -> String {
    match u64::try_from(seconds) {
        Ok(s) => humantime::format_duration(Duration::from_secs(s)).to_string(),
        Err(_) => format!("{seconds}s"),
    }
}

/// How many nodes a cluster should have: at least one (a cluster with no
/// nodes is destroyed, not deployed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeCapacity(u32);

impl NodeCapacity {
    pub fn new(value: i64, limits: &Limits) -> Result<Self, ValidationError> {
        match u32::try_from(value) {
            Ok(n) if n >= 1 && n <= limits.max_nodes => Ok(Self(n)),
            _ => Err(ValidationError::NodeCapacity {
                got: value,
                max: limits.max_nodes,
            }),
        }
    }

    /// For values that were validated when they were first written (rows
    /// read back from the store).
    pub fn from_stored(value: u32) -> Self {
        Self(value)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A validated time-to-live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeToLive(Duration);

impl TimeToLive {
    pub fn new(seconds: i64, limits: &Limits) -> Result<Self, ValidationError> {
        let err = || ValidationError::TimeToLive {
            got: seconds,
            min: limits.min_ttl.as_secs(),
            max: limits.max_ttl.as_secs(),
        };
        let secs = u64::try_from(seconds).map_err(|_| err())?;
        let ttl = Duration::from_secs(secs);
        if ttl < limits.min_ttl || ttl > limits.max_ttl {
            return Err(err());
        }
        Ok(Self(ttl))
    }

    pub fn get(self) -> Duration {
        self.0
    }

    pub fn deadline_from(self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.0).expect("bounded by max_ttl")
    }
}

/// What a cluster's nodes run, as its owner gave it: a shell command
/// each node's agent starts, and the port it serves (told to it as
/// `FLOTILLA_WORKLOAD_PORT`, and with the node's address where status says
/// it is served). Fixed once deployed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Workload {
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl Workload {
    /// The longest command taken.
    pub const MAX_COMMAND: usize = 4096;

    pub fn new(command: String, port: Option<u16>) -> Result<Self, ValidationError> {
        if command.trim().is_empty() || command.len() > Self::MAX_COMMAND || command.contains('\0')
        {
            return Err(ValidationError::Workload(format!(
                "workload command must be 1 to {} bytes of text",
                Self::MAX_COMMAND
            )));
        }
        if port == Some(0) {
            return Err(ValidationError::Workload(
                "workload port must be between 1 and 65535".to_owned(),
            ));
        }
        Ok(Workload { command, port })
    }
}

/// DEPLOY, validated: the only way the engine learns that a cluster should
/// exist or change size. What the caller did not say about a cluster's
/// fixed fields is `None`: a deployed cluster keeps its own, a new one gets
/// the defaults, and only a field said otherwise is a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployCommand {
    pub cluster: ClusterName,
    pub node_capacity: NodeCapacity,
    pub time_to_live: TimeToLive,
    /// Whether anyone may read its status, if the caller said.
    pub is_public: Option<bool>,
    /// The pool the caller named, if any.
    pub pool: Option<PoolName>,
    /// The pool a new cluster gets when none is named.
    pub default_pool: PoolName,
    /// What the nodes run, if the caller said.
    pub workload: Option<Workload>,
}

impl DeployCommand {
    /// A new cluster's visibility: private unless asked.
    pub fn new_public(&self) -> bool {
        self.is_public.unwrap_or(false)
    }

    /// A new cluster's pool: the one named, else the default.
    pub fn new_pool(&self) -> &PoolName {
        self.pool.as_ref().unwrap_or(&self.default_pool)
    }
}

/// A cluster as the store keeps it: the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRecord {
    pub name: ClusterName,
    pub is_public: bool,
    pub node_capacity: NodeCapacity,
    pub pool: PoolName,
    /// What its nodes run instead of the pool's init data, if anything.
    pub workload: Option<Workload>,
    /// The scheduled deletion, if any. Cleared by DESTROY.
    pub expires_at: Option<DateTime<Utc>>,
    /// DESTROY was asked for (or the TTL fired): the cluster wants no nodes
    /// and its record goes away once the cloud lists none of them.
    pub destroying: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped by every change, so a reconcile can tell whether what it read
    /// is still current.
    pub generation: i64,
}

/// A property of a cluster that is fixed once it is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FixedField {
    IsPublic,
    Pool,
    Workload,
}

impl FixedField {
    pub fn as_str(self) -> &'static str {
        match self {
            FixedField::IsPublic => "is_public",
            FixedField::Pool => "pool",
            FixedField::Workload => "workload",
        }
    }
}

impl std::fmt::Display for FixedField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ClusterRecord {
    /// The first fixed field `command` says otherwise about on this
    /// deployed cluster, with its current value, if any: such a deploy is
    /// refused. A field the command does not name is kept.
    pub fn fixed_field_conflict(&self, command: &DeployCommand) -> Option<(FixedField, String)> {
        if command.is_public.is_some_and(|p| p != self.is_public) {
            Some((FixedField::IsPublic, self.is_public.to_string()))
        } else if command.pool.as_ref().is_some_and(|p| *p != self.pool) {
            Some((FixedField::Pool, self.pool.to_string()))
        } else if command
            .workload
            .as_ref()
            .is_some_and(|w| Some(w) != self.workload.as_ref())
        {
            let current = self
                .workload
                .as_ref()
                .map_or("none".to_owned(), |w| format!("{:?}", w.command));
            Some((FixedField::Workload, current))
        } else {
            None
        }
    }

    /// How many nodes the cluster wants right now.
    pub fn wanted_nodes(&self) -> u32 {
        if self.destroying {
            0
        } else {
            self.node_capacity.get()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    NotRunning,
    Deploying,
    Running,
    Destroying,
    /// An organisation's cluster at zero nodes, waiting for a capacity
    /// request to wake it.
    Asleep,
}

impl ClusterState {
    /// Settled states are where `wait` returns: nothing more will happen
    /// without a new request (or a node failure).
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            ClusterState::NotRunning | ClusterState::Running | ClusterState::Asleep
        )
    }

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

/// The state a cluster reports, from its record and the nodes observed for
/// it (its ready nodes counted only of its pool's instance types).
pub fn cluster_state(
    record: Option<&ClusterRecord>,
    nodes: &[ObservedNode],
    pool: Option<&crate::PoolSpec>,
) -> ClusterState {
    let live = nodes
        .iter()
        .filter(|n| n.state != NodeState::ShuttingDown)
        .count();
    match record {
        None if nodes.is_empty() => ClusterState::NotRunning,
        None => ClusterState::Destroying,
        Some(r) if r.destroying => ClusterState::Destroying,
        Some(r) => {
            let ready = nodes
                .iter()
                .filter(|n| n.state == NodeState::Ready)
                .filter(|n| pool.is_none_or(|p| p.offers(&n.instance_type)))
                .count();
            let want = r.node_capacity.get() as usize;
            if ready == want && live == want {
                ClusterState::Running
            } else {
                ClusterState::Deploying
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InstanceId, InstanceType};

    fn limits() -> Limits {
        Limits {
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            max_nodes: 10,
        }
    }

    #[test]
    fn capacity_bounds() {
        assert!(NodeCapacity::new(1, &limits()).is_ok());
        assert!(NodeCapacity::new(10, &limits()).is_ok());
        assert!(NodeCapacity::new(0, &limits()).is_err());
        assert!(NodeCapacity::new(-3, &limits()).is_err());
        assert!(NodeCapacity::new(11, &limits()).is_err());
        assert!(NodeCapacity::new(i64::MAX, &limits()).is_err());
    }

    #[test]
    fn ttl_bounds() {
        assert!(TimeToLive::new(60, &limits()).is_ok());
        assert!(TimeToLive::new(3600, &limits()).is_ok());
        assert!(TimeToLive::new(59, &limits()).is_err());
        assert!(TimeToLive::new(3601, &limits()).is_err());
        assert!(TimeToLive::new(-1, &limits()).is_err());
        let msg = TimeToLive::new(1, &limits()).unwrap_err().to_string();
        assert!(msg.contains("between 1m and 1h"), "{msg}");
    }

    fn record(capacity: u32, destroying: bool) -> ClusterRecord {
        let now = Utc::now();
        ClusterRecord {
            name: ClusterName::new("c").unwrap(),
            is_public: false,
            node_capacity: NodeCapacity::from_stored(capacity),
            pool: PoolName::new("default").unwrap(),
            workload: None,
            expires_at: None,
            destroying,
            created_at: now,
            updated_at: now,
            generation: 1,
        }
    }

    fn node(state: NodeState) -> ObservedNode {
        let now = Utc::now();
        ObservedNode {
            id: InstanceId::new(format!("{state:?}")),
            instance_type: InstanceType::new("t").unwrap(),
            launched_at: now,
            state,
            state_since: now,
            last_destroy_attempt: None,
            version: None,
        }
    }

    #[test]
    fn states_from_record_and_nodes() {
        let t = crate::PoolSpec::new("d", InstanceType::new("t").unwrap());
        let t = Some(&t);
        assert_eq!(cluster_state(None, &[], t), ClusterState::NotRunning);
        assert_eq!(
            cluster_state(None, &[node(NodeState::ShuttingDown)], t),
            ClusterState::Destroying
        );
        let r = record(2, false);
        assert_eq!(
            cluster_state(Some(&r), &[node(NodeState::Ready)], t),
            ClusterState::Deploying
        );
        let two = [node(NodeState::Ready), node(NodeState::Ready)];
        assert_eq!(cluster_state(Some(&r), &two, t), ClusterState::Running);
        let two_and_leaving = [
            node(NodeState::Ready),
            node(NodeState::Ready),
            node(NodeState::ShuttingDown),
        ];
        assert_eq!(
            cluster_state(Some(&r), &two_and_leaving, t),
            ClusterState::Running
        );
        let three = [
            node(NodeState::Ready),
            node(NodeState::Ready),
            node(NodeState::Booting),
        ];
        assert_eq!(cluster_state(Some(&r), &three, t), ClusterState::Deploying);
        let other = crate::PoolSpec::new("d", InstanceType::new("other").unwrap());
        assert_eq!(
            cluster_state(Some(&r), &two, Some(&other)),
            ClusterState::Deploying
        );
        assert_eq!(
            cluster_state(Some(&record(2, true)), &[], t),
            ClusterState::Destroying
        );
    }
}
