//! A way into a local node: its output (`node.log`) and commands run in its
//! directory, with the environment its workload has.

use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use flotilla_cloud::{CloudError, Console, ExecOutput};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::layout::{read_text, InstanceRecord, ADDRESS_FILE, LOG_FILE};

/// Bytes `from..` (or the last `limit` bytes) of the node's log, at most
/// `limit` of them; an instance without a log yet has printed nothing.
pub(crate) async fn console(
    dir: PathBuf,
    from: Option<u64>,
    limit: usize,
) -> Result<Console, CloudError> {
    let path = dir.join(LOG_FILE);
    let read = tokio::task::spawn_blocking(move || read_window(&path, from, limit))
        .await
        .map_err(|e| CloudError::transient(format!("reading the node log: {e}")))?;
    read.map_err(|e| CloudError::transient(format!("cannot read the node log: {e}")))
}

fn read_window(path: &Path, from: Option<u64>, limit: usize) -> io::Result<Console> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Console::window(&[], from, limit));
        }
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = match from {
        Some(from) => from.min(len),
        None => len.saturating_sub(limit as u64),
    };
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity(limit.min(1 << 20));
    file.take(limit as u64).read_to_end(&mut bytes)?;
    let mut console = Console::window(&bytes, Some(0), limit);
    console.from += start;
    console.to += start;
    Ok(console)
}

/// Runs `argv` in the node's directory with its workload's environment
/// (`FLOTILLA_CLUSTER`, `FLOTILLA_NODE_ID`, `FLOTILLA_NODE_ADDRESS`,
/// `FLOTILLA_NODE_HOST` and, where the cluster's workload has a port,
/// `FLOTILLA_WORKLOAD_PORT`), in a process group of its own that is killed
/// when the command ends, runs out of time, or is abandoned (its caller
/// went away), so nothing it started outlives it.
pub(crate) async fn exec(
    dir: &Path,
    record: &InstanceRecord,
    argv: &[String],
    timeout: Duration,
    limit: usize,
) -> Result<ExecOutput, CloudError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(CloudError::permanent("no command to run"));
    };
    let address = read_text(&dir.join(ADDRESS_FILE)).ok().flatten();
    let host = address
        .as_deref()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip().to_string());
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .env("FLOTILLA_CLUSTER", record.cluster().unwrap_or_default())
        .env("FLOTILLA_NODE_ID", record.id.as_str())
        .env("FLOTILLA_NODE_ADDRESS", address.unwrap_or_default())
        .env("FLOTILLA_NODE_HOST", host.unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(port) = record.workload.as_ref().and_then(|w| w.port) {
        cmd.env("FLOTILLA_WORKLOAD_PORT", port.to_string());
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        // As a shell answers: 127 for no such program, 126 for one that
        // cannot be run.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) =>
        {
            let not_found = e.kind() == io::ErrorKind::NotFound;
            return Ok(ExecOutput {
                exit_code: Some(if not_found { 127 } else { 126 }),
                signal: None,
                stdout: String::new(),
                stderr: format!("{program}: {e}\n"),
                timed_out: false,
                truncated: false,
            });
        }
        Err(e) => {
            return Err(CloudError::transient(format!(
                "cannot run {program:?} on node {}: {e}",
                record.id
            )))
        }
    };
    // Killed however this function ends, including when its future is
    // dropped mid-way.
    let group = child
        .id()
        .and_then(|pid| libc::pid_t::try_from(pid).ok())
        .map(GroupGuard);
    let stdout = Captured::new(limit);
    let stderr = Captured::new(limit);
    let readers = [
        tokio::spawn(stdout.clone().read_from(child.stdout.take())),
        tokio::spawn(stderr.clone().read_from(child.stderr.take())),
    ];
    let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => (Some(status), false),
        Ok(Err(e)) => {
            return Err(CloudError::transient(format!(
                "waiting for the command: {e}"
            )))
        }
        Err(_) => (None, true),
    };
    drop(group);
    let status = match status {
        Some(status) => status,
        None => child
            .wait()
            .await
            .map_err(|e| CloudError::transient(format!("waiting for the command: {e}")))?,
    };
    // A process that left the group may still hold the pipes open: take
    // what came by then.
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    }
    let (stdout, out_cut) = stdout.take();
    let (stderr, err_cut) = stderr.take();
    Ok(ExecOutput {
        exit_code: status.code(),
        signal: status.signal(),
        stdout,
        stderr,
        timed_out,
        truncated: out_cut || err_cut,
    })
}

/// Kills a process group when dropped.
struct GroupGuard(libc::pid_t);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a negative pid signals the group the command
        // was made leader of; it has no memory-safety preconditions. The
        // kernel does not reuse the ID while any member of the group lives;
        // once none does, the signal finds nothing (ESRCH), barring the ID
        // being reused in the microseconds since.
        unsafe {
            libc::kill(-self.0, libc::SIGKILL);
        }
    }
}

/// One output of a command, kept up to a limit as it arrives, so what came
/// is there even if the reader never sees the end.
#[derive(Clone)]
struct Captured {
    kept: std::sync::Arc<std::sync::Mutex<(Vec<u8>, bool)>>,
    limit: usize,
}

impl Captured {
    fn new(limit: usize) -> Self {
        Captured {
            kept: Default::default(),
            limit,
        }
    }

    async fn read_from(self, reader: Option<impl AsyncRead + Unpin>) {
        let Some(mut reader) = reader else {
            return;
        };
        let mut chunk = [0u8; 8192];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let mut kept = self.kept.lock().unwrap();
                    let room = self.limit.saturating_sub(kept.0.len());
                    kept.1 |= n > room;
                    kept.0.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
    }

    /// What came, as text, and whether more came than the limit.
    fn take(&self) -> (String, bool) {
        let mut kept = self.kept.lock().unwrap();
        let (bytes, cut) = std::mem::take(&mut *kept);
        (String::from_utf8_lossy(&bytes).into_owned(), cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_of_the_log_is_where_it_says() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        assert_eq!(read_window(&path, None, 10).unwrap().to, 0);
        std::fs::write(&path, b"0123456789abcdef").unwrap();
        let tail = read_window(&path, None, 4).unwrap();
        assert_eq!((tail.text.as_str(), tail.from, tail.to), ("cdef", 12, 16));
        let mid = read_window(&path, Some(3), 4).unwrap();
        assert_eq!((mid.text.as_str(), mid.from, mid.to), ("3456", 3, 7));
        let past = read_window(&path, Some(99), 4).unwrap();
        assert_eq!((past.text.as_str(), past.from, past.to), ("", 16, 16));
    }
}
