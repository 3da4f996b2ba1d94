//! The `local` driver: the embedded default cloud, where each node is a
//! detached OS process running `flotilla node --instance-dir DIR` on this
//! machine.
//!
//! The driver's directory is its whole state (see [`layout`]): a server that
//! is killed and restarted lists the same nodes and adopts them. Nodes run in
//! their own session, so they outlive the server; they fence themselves off
//! when their instance record disappears, so deleting the directory stops
//! every node and none can leak.
//!
//! Invariants:
//! - an instance carries its ownership tags from the moment its directory has
//!   a record, and the record is written before its process starts;
//! - a set never lists, signals, retags or removes an instance of another
//!   instance set ID;
//! - a process is the node only if its pid *and* start time match the
//!   record, so a reused pid is never signalled.

pub mod agent;
pub mod layout;
mod probe;
pub mod process;
mod reach;
mod set;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use probe::NODE_HEADER;
pub use set::{LocalInstanceSet, LEFTOVER_GRACE, PENDING_RECORD_CUTOFF};

/// Configuration of the `local` driver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// The driver's state directory; holds one sub-directory per instance.
    pub dir: PathBuf,
    /// The flotilla binary, run as `<node_program> node --instance-dir DIR`.
    pub node_program: PathBuf,
    /// Time between SIGTERM and SIGKILL when destroying a node.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Most instances one create call may ask for.
    pub max_batch: u32,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("flotilla-data/local"),
            // Without a known path, fall back to a PATH lookup; `open`
            // reports it if that does not resolve either.
            node_program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("flotilla")),
            grace: Duration::from_secs(5),
            max_batch: 50,
        }
    }
}

/// Why the driver could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot create the local driver directory {dir}: {source}; check that it is writable or choose another directory")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the local driver directory {dir}: {source}; check its permissions")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the local driver's node program {program} cannot be used: {reason}; point node_program at the flotilla binary")]
    NodeProgram { program: PathBuf, reason: String },
    #[error("the local driver's max_batch is 0; set it to at least 1")]
    ZeroBatch,
}
