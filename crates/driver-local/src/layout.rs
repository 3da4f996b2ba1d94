//! The on-disk layout of the driver's directory, shared by the driver and the
//! node agent. The directory is the whole state of the "cloud": a restarted
//! server rebuilds everything from it, so every file is written atomically
//! (temporary file, then rename) and readers never see half a file.
//!
//! ```text
//! <dir>/
//!   local-<16 hex>/           one directory per instance, named by its ID
//!     instance.json           InstanceRecord: ID, tags, type, image, init data,
//!                             launch time; written before the process starts,
//!                             rewritten by set_tags; its removal fences the node
//!     process.json            ProcessRecord: pid and kernel start time
//!     address                 "127.X.Y.Z:PORT" (the node's own loopback
//!                             address, else 127.0.0.1), written by the agent
//!     destroy-requested       RFC 3339 time of the first destroy request
//!     node.log                stdout and stderr of the agent and its workload
//! ```

use std::io::{self, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use flotilla_cloud::{Tags, TAG_CLUSTER, TAG_INSTANCE_SET};
use flotilla_domain::{InstanceId, InstanceType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const RECORD_FILE: &str = "instance.json";
pub const PROCESS_FILE: &str = "process.json";
pub const ADDRESS_FILE: &str = "address";
pub const DESTROY_FILE: &str = "destroy-requested";
pub const LOG_FILE: &str = "node.log";

const ID_PREFIX: &str = "local-";

/// What the driver knows of one instance, from before its process exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: InstanceId,
    pub instance_type: InstanceType,
    pub tags: Tags,
    pub image: Option<String>,
    pub init_data: Option<String>,
    /// The cluster's own workload, run instead of `init_data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<flotilla_domain::Workload>,
    pub launched_at: DateTime<Utc>,
    /// The server process that launched it: while the node has no process
    /// yet, the launch can finish only while this one lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher: Option<ProcessRecord>,
}

impl InstanceRecord {
    pub fn instance_set(&self) -> Option<&str> {
        self.tags.get(TAG_INSTANCE_SET).map(String::as_str)
    }

    pub fn cluster(&self) -> Option<&str> {
        self.tags.get(TAG_CLUSTER).map(String::as_str)
    }
}

/// The node's process. The start time (field 22 of `/proc/PID/stat`, in
/// clock ticks since boot) tells the node apart from a later process that
/// reuses its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    pub start_time: u64,
}

/// A fresh instance ID; 64 random bits make collisions within one directory
/// negligible, and `create_dir` catches the rest.
pub fn new_instance_id() -> InstanceId {
    InstanceId::new(format!("{ID_PREFIX}{:016x}", rand::random::<u64>()))
}

/// True if `name` can be an instance ID of this driver. IDs become path
/// components, so anything else (`..`, `a/b`, another cloud's ID) is treated
/// as an instance that does not exist here.
pub fn is_instance_id(name: &str) -> bool {
    name.strip_prefix(ID_PREFIX).is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// Replaces `path` in one step, so a reader (or a crash) sees either the old
/// or the new contents. No fsync: nodes do not outlive the machine, so only
/// a crash of the writing process has to be survived.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let parent = path.parent().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "path has no parent directory")
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    // Unique per writer, so two writers never share a temporary file.
    let tmp = parent.join(format!(
        ".{name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(contents))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomic(path, &bytes)
}

/// Reads a JSON file; `None` if it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a small text file, trimmed; `None` if it does not exist.
pub fn read_text(path: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_safe_path_components() {
        assert!(is_instance_id(new_instance_id().as_str()));
        assert!(is_instance_id("local-00ff"));
        for bad in [
            "",
            "local-",
            "local-..",
            "local-a/b",
            "../local-a",
            "never-existed-0",
            "fake-000001",
        ] {
            assert!(!is_instance_id(bad), "{bad}");
        }
    }

    #[test]
    fn atomic_writes_replace_and_leave_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_json(
            &path,
            &ProcessRecord {
                pid: 1,
                start_time: 2,
            },
        )
        .unwrap();
        write_json(
            &path,
            &ProcessRecord {
                pid: 3,
                start_time: 4,
            },
        )
        .unwrap();
        let read: Option<ProcessRecord> = read_json(&path).unwrap();
        assert_eq!(
            read,
            Some(ProcessRecord {
                pid: 3,
                start_time: 4
            })
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
        assert_eq!(
            read_json::<ProcessRecord>(&dir.path().join("missing")).unwrap(),
            None
        );
    }

    #[test]
    fn a_write_into_a_removed_directory_fails_as_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone").join("f");
        let err = write_atomic(&gone, b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
