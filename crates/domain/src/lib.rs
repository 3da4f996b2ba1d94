//! The rules of flotilla: names, cluster lifecycle, node states and the
//! planner. Everything here is a plain function over plain data: no clock,
//! no I/O, no async. The edges (engine, store, API) call in with the current
//! time and the observed world and act on what comes back.

mod access;
mod cluster;
mod names;
mod plan;

pub use access::{Caller, Level};
pub use cluster::{
    cluster_state, ClusterRecord, ClusterState, DeployCommand, Limits, NodeCapacity, TimeToLive,
    ValidationError,
};
pub use names::{ClusterName, InstanceId, InstanceSetId, InstanceType, NameError, PoolName};
pub use plan::{plan, DestroyReason, NodeState, ObservedNode, Plan, Timeouts, WantedNodes};
