//! The node agent: what `flotilla node --instance-dir DIR` runs for each
//! node of the local driver.
//!
//! It serves `GET /healthz` and `GET /info` on a loopback address of the
//! node's own (127.x.y.z from its ID; 127.0.0.1 where the system takes no
//! other), runs the workload (the cluster's own, else the instance's init
//! data) with `sh -c`, and stops on SIGTERM or
//! SIGINT. It also fences itself: once a second it checks that its instance
//! record still exists and stops if it does not, so removing the driver's
//! directory stops every node and no node outlives its record.

use std::future::IntoFuture;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use flotilla_cloud::TAG_CLUSTER;
use flotilla_domain::{InstanceId, InstanceType};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::layout::{read_json, write_atomic, InstanceRecord, ADDRESS_FILE, RECORD_FILE};
use crate::probe::NODE_HEADER;
use crate::process::group_members;

/// How often the agent checks that its record still exists.
pub const FENCE_INTERVAL: Duration = Duration::from_secs(1);
/// How long the workload may take to stop before it is killed. Longer than
/// the driver's default grace: when the driver destroys a node, its grace
/// period is the one that counts.
pub const WORKLOAD_GRACE: Duration = Duration::from_secs(10);

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
    #[error("no instance record at {path}: the node was destroyed, or this directory was not made by the local driver (which starts nodes itself)")]
    NoRecord { path: PathBuf },
    #[error("cannot read instance record {path}: {source}; the local driver writes it before starting the node, so destroy the instance and create another")]
    ReadRecord {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "instance record {path} has no {TAG_CLUSTER} tag; it was not written by the local driver"
    )]
    NoCluster { path: PathBuf },
    #[error("cannot listen on 127.0.0.1: {0}")]
    Bind(#[source] io::Error),
    #[error("cannot write the node address to {path}: {source}; check that the instance directory is writable")]
    WriteAddress {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the workload with `sh -c`: {0}; check that /bin/sh exists")]
    Workload(#[source] io::Error),
    #[error("the node's HTTP server failed: {0}")]
    Serve(#[source] io::Error),
}

/// What `GET /info` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub cluster: String,
    pub node_id: InstanceId,
    pub instance_type: InstanceType,
    pub instance_set: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
}

struct AgentState {
    info: NodeInfo,
    /// The workload's exit status once it has exited; `None` without one.
    workload: Option<watch::Receiver<Option<ExitStatus>>>,
}

/// Runs the node in `instance_dir` until it is told to stop or fenced off.
/// Meant for a current-thread runtime (see `Workload::start`). Logs through
/// `tracing`; the binary decides where that goes (the node's stderr is its
/// `node.log`).
pub async fn run(instance_dir: &Path) -> Result<(), AgentError> {
    let started_at = Utc::now();
    // First, so a destroy that arrives during start-up still stops the
    // workload gracefully.
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;

    let record_path = instance_dir.join(RECORD_FILE);
    let record = read_json::<InstanceRecord>(&record_path)
        .map_err(|source| AgentError::ReadRecord {
            path: record_path.clone(),
            source,
        })?
        .ok_or_else(|| AgentError::NoRecord {
            path: record_path.clone(),
        })?;
    let cluster = record
        .cluster()
        .ok_or_else(|| AgentError::NoCluster {
            path: record_path.clone(),
        })?
        .to_owned();

    // A loopback address of its own, so the workloads of several nodes on
    // this machine can serve the same port; 127.0.0.1 where the system
    // takes no other.
    let listener = match TcpListener::bind((node_host(&record.id), 0)).await {
        Ok(listener) => listener,
        Err(_) => TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(AgentError::Bind)?,
    };
    let address = listener.local_addr().map_err(AgentError::Bind)?;
    let address_path = instance_dir.join(ADDRESS_FILE);
    write_atomic(&address_path, address.to_string().as_bytes()).map_err(|source| {
        AgentError::WriteAddress {
            path: address_path.clone(),
            source,
        }
    })?;

    // The cluster's own workload, else the pool's init data.
    let (command, port) = match &record.workload {
        Some(w) => (Some(w.command.as_str()), w.port),
        None => (record.init_data.as_deref(), None),
    };
    let workload = match command {
        Some(command) if !command.trim().is_empty() => Some(Workload::start(
            command,
            port,
            &cluster,
            &record.id,
            address,
            instance_dir,
        )?),
        _ => None,
    };

    let state = Arc::new(AgentState {
        info: NodeInfo {
            cluster,
            node_id: record.id.clone(),
            instance_type: record.instance_type.clone(),
            instance_set: record.instance_set().unwrap_or_default().to_owned(),
            pid: std::process::id(),
            started_at,
        },
        workload: workload.as_ref().map(|w| w.exited.clone()),
    });
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/info", get(info))
        .with_state(state);
    tracing::info!(instance = %record.id, %address, "node agent serving");

    let outcome = tokio::select! {
        result = axum::serve(listener, app).into_future() => {
            result.map_err(AgentError::Serve)
        }
        _ = sigterm.recv() => {
            tracing::info!(instance = %record.id, "SIGTERM: stopping");
            Ok(())
        }
        _ = sigint.recv() => {
            tracing::info!(instance = %record.id, "SIGINT: stopping");
            Ok(())
        }
        _ = fenced(&record_path) => {
            tracing::info!(instance = %record.id, "instance record removed: stopping");
            Ok(())
        }
    };
    if let Some(workload) = workload {
        workload.stop().await;
    }
    outcome
}

/// The node's own loopback address, 127.x.y.z from its ID (never
/// 127.0.0.1, nor a network or broadcast address).
fn node_host(id: &InstanceId) -> Ipv4Addr {
    // FNV-1a: stable across builds, unlike the standard library's hasher.
    let hash = id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let [a, b, c, ..] = hash.to_le_bytes();
    Ipv4Addr::new(127, a.max(1), b, c.clamp(1, 254))
}

/// Returns once the record is gone (or can no longer be seen, which is
/// treated the same: a node that cannot prove it is wanted stops).
async fn fenced(record_path: &Path) {
    loop {
        tokio::time::sleep(FENCE_INTERVAL).await;
        match tokio::fs::try_exists(record_path).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(path = %record_path.display(), error = %e, "cannot check the instance record; stopping");
                return;
            }
        }
    }
}

async fn healthz(State(state): State<Arc<AgentState>>) -> impl IntoResponse {
    let failed = state
        .workload
        .as_ref()
        .and_then(|exited| *exited.borrow())
        .filter(|status| !status.success());
    let header = [(NODE_HEADER, state.info.node_id.to_string())];
    match failed {
        Some(status) => (
            StatusCode::SERVICE_UNAVAILABLE,
            header,
            format!("workload failed: {status}\n"),
        ),
        None => (StatusCode::OK, header, "ok\n".to_owned()),
    }
}

async fn info(State(state): State<Arc<AgentState>>) -> Json<NodeInfo> {
    Json(state.info.clone())
}

struct Workload {
    pid: u32,
    exited: watch::Receiver<Option<ExitStatus>>,
}

impl Workload {
    fn start(
        command: &str,
        port: Option<u16>,
        cluster: &str,
        node_id: &InstanceId,
        address: SocketAddr,
        dir: &Path,
    ) -> Result<Self, AgentError> {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .env("FLOTILLA_CLUSTER", cluster)
            .env("FLOTILLA_NODE_ID", node_id.as_str())
            .env("FLOTILLA_NODE_ADDRESS", address.to_string())
            .env("FLOTILLA_NODE_HOST", address.ip().to_string())
            .current_dir(dir)
            .stdin(Stdio::null())
            .kill_on_drop(false);
        if let Some(port) = port {
            cmd.env("FLOTILLA_WORKLOAD_PORT", port.to_string());
        }
        let agent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
        // SAFETY: prctl and getppid are async-signal-safe. The death signal
        // kills the workload if the agent dies without stopping it (SIGKILL
        // at the end of a destroy's grace period); the ppid check closes the
        // race where the agent died before prctl ran. The kernel ties the
        // death signal to the spawning *thread*; `flotilla node` runs the
        // agent on a current-thread runtime, whose thread lives as long as
        // the agent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != agent {
                    return Err(io::Error::other("the node agent exited"));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(AgentError::Workload)?;
        let pid = child.id().unwrap_or_default();
        let (tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => {
                    if status.success() {
                        tracing::info!(pid, "workload finished");
                    } else {
                        tracing::warn!(pid, %status, "workload failed; the node reports unhealthy");
                    }
                    tx.send_replace(Some(status));
                }
                Err(e) => tracing::warn!(pid, error = %e, "cannot wait for the workload"),
            }
        });
        tracing::info!(pid, "workload started");
        Ok(Self { pid, exited })
    }

    /// Stops the workload and everything it started in the node's process
    /// group: SIGTERM, then SIGKILL for whatever is left after
    /// [`WORKLOAD_GRACE`].
    async fn stop(mut self) {
        // SAFETY: getpid, getpgrp and kill have no memory-safety
        // preconditions.
        let me = unsafe { libc::getpid() };
        let leader = unsafe { libc::getpgrp() } == me;
        let pid = libc::pid_t::try_from(self.pid).unwrap_or(0);
        // Started by the driver, the agent leads its own group: signal the
        // whole group so the workload's children stop too. The agent is in
        // the group, but its own SIGTERM handler is installed, so it only
        // receives a notification. Started by hand, it signals the workload
        // alone, never the shell's job.
        if pid > 0 {
            unsafe { libc::kill(if leader { 0 } else { pid }, libc::SIGTERM) };
        }
        let others = || -> Vec<u32> {
            if !leader {
                return Vec::new();
            }
            group_members(me)
                .unwrap_or_default()
                .into_iter()
                .filter(|p| i64::from(*p) != i64::from(me))
                .collect()
        };
        let deadline = tokio::time::Instant::now() + WORKLOAD_GRACE;
        let exited = tokio::time::timeout_at(deadline, self.exited.wait_for(|s| s.is_some())).await;
        while tokio::time::Instant::now() < deadline && !others().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !matches!(exited, Ok(Ok(_))) && pid > 0 {
            tracing::warn!(
                pid,
                "workload ignored SIGTERM for {WORKLOAD_GRACE:?}; killing it"
            );
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for straggler in others() {
            if let Ok(straggler) = libc::pid_t::try_from(straggler) {
                tracing::warn!(
                    pid = straggler,
                    "workload process outlived the workload; killing it"
                );
                unsafe { libc::kill(straggler, libc::SIGKILL) };
            }
        }
    }
}
