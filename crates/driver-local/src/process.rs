//! Node processes as the kernel sees them, through `/proc` and signals.
//!
//! A node is identified by its pid *and* its start time, so a pid reused by
//! an unrelated process is never mistaken for the node, nor signalled. Each
//! node leads its own session and process group (the driver runs it under
//! `setsid`), so signals go to the whole group: the agent and its workload.

use std::io;
use std::time::Duration;

use tokio::time::Instant;

use crate::layout::ProcessRecord;

/// The fields of `/proc/PID/stat` the driver uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    pub pgrp: i32,
    pub session: i32,
    /// Field 22: clock ticks after boot at which the process started.
    pub start_time: u64,
}

impl ProcStat {
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses one `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so the fixed
/// fields are counted from the *last* `)`.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 of the line.
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcStat {
        state: field(3)?.chars().next()?,
        pgrp: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

/// The process's stat; `None` if there is no such process.
pub fn stat(pid: u32) -> io::Result<Option<ProcStat>> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(line) => parse_stat(&line).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unparsable /proc/{pid}/stat"),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// What became of a recorded node process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// Exited (or a zombie), or the pid now belongs to another process.
    Gone,
}

pub fn liveness(process: &ProcessRecord) -> Liveness {
    match stat(process.pid) {
        Ok(Some(s)) if s.start_time == process.start_time && !s.is_dead() => Liveness::Running,
        Ok(_) => Liveness::Gone,
        Err(e) => {
            // Unknown is treated as alive: calling a live node dead would
            // delete its record, and the node would fence itself off.
            tracing::warn!(pid = process.pid, error = %e, "cannot read a node's process state; assuming it runs");
            Liveness::Running
        }
    }
}

/// Sends `signal` to the node's process group if the node still runs.
/// Returns false if it had already gone (nothing was signalled).
pub fn signal_node(process: &ProcessRecord, signal: libc::c_int) -> io::Result<bool> {
    if liveness(process) == Liveness::Gone {
        return Ok(false);
    }
    let pid = libc::pid_t::try_from(process.pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(-pid, signal) } == 0 {
        return Ok(true);
    }
    let group_error = io::Error::last_os_error();
    if group_error.raw_os_error() != Some(libc::ESRCH) {
        return Err(group_error);
    }
    // Not a group leader (started by hand, not by this driver): the process
    // alone.
    // SAFETY: as above.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(true)
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            Ok(false)
        } else {
            Err(e)
        }
    }
}

/// The live processes of process group `pgrp`.
pub fn group_members(pgrp: i32) -> io::Result<Vec<u32>> {
    Ok(std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat(*pid)
                .ok()
                .flatten()
                .is_some_and(|s| s.pgrp == pgrp && !s.is_dead())
        })
        .collect())
}

/// How long a node may resist SIGKILL (uninterruptible sleep) before the
/// driver stops waiting and leaves it to the next listing.
const KILL_PATIENCE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// Waits for the node to go, sending SIGKILL to its group at `kill_at` if it
/// is still there (the caller has already sent SIGTERM, or not, if `kill_at`
/// has passed). Returns true once the node has gone.
pub async fn stop_node(process: ProcessRecord, kill_at: Instant) -> bool {
    let mut killed_at: Option<Instant> = None;
    loop {
        if liveness(&process) == Liveness::Gone {
            return true;
        }
        let now = Instant::now();
        match killed_at {
            None if now >= kill_at => {
                tracing::info!(
                    pid = process.pid,
                    "node did not stop after SIGTERM; sending SIGKILL"
                );
                if let Err(e) = signal_node(&process, libc::SIGKILL) {
                    tracing::warn!(pid = process.pid, error = %e, "cannot SIGKILL node");
                }
                killed_at = Some(now);
            }
            Some(t) if now - t >= KILL_PATIENCE => {
                tracing::warn!(
                    pid = process.pid,
                    "node survived SIGKILL for {KILL_PATIENCE:?}; giving up for now"
                );
                return false;
            }
            _ => {}
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn stat_parsing_counts_from_the_last_parenthesis() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.pgrp, 4242);
        assert_eq!(s.session, 4242);
        assert_eq!(s.start_time, 987654);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 1 2").is_none());
    }

    fn own_process() -> ProcessRecord {
        let pid = std::process::id();
        ProcessRecord {
            pid,
            start_time: stat(pid).unwrap().unwrap().start_time,
        }
    }

    #[test]
    fn a_reused_pid_is_not_the_node() {
        let me = own_process();
        assert_eq!(liveness(&me), Liveness::Running);
        let impostor = ProcessRecord {
            start_time: me.start_time + 1,
            ..me
        };
        assert_eq!(liveness(&impostor), Liveness::Gone);
        // Never signals a process whose start time does not match.
        assert!(!signal_node(&impostor, 0).unwrap());
    }

    #[test]
    fn a_zombie_is_dead() {
        let mut child = Command::new("true").spawn().unwrap();
        let record = ProcessRecord {
            pid: child.id(),
            start_time: stat(child.id()).unwrap().unwrap().start_time,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // Not reaped yet, so it lingers as a zombie.
        while stat(record.pid).unwrap().is_some_and(|s| s.state != 'Z') {
            assert!(std::time::Instant::now() < deadline, "child did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(liveness(&record), Liveness::Gone);
        child.wait().unwrap();
        assert_eq!(liveness(&record), Liveness::Gone);
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill_for_a_group_that_ignores_sigterm() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; sleep 100 & wait"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        let record = ProcessRecord {
            pid,
            start_time: stat(pid).unwrap().unwrap().start_time,
        };
        // Reap in the background, as the driver does.
        let reaper = std::thread::spawn(move || child.wait());
        // Let the shell install its trap and start the sleep.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let sleeper = loop {
            let members = group_members(pid as i32).unwrap();
            if let Some(p) = members.into_iter().find(|p| *p != pid) {
                break p;
            }
            assert!(std::time::Instant::now() < deadline, "sleep never started");
            std::thread::sleep(Duration::from_millis(20));
        };
        let sleeper = ProcessRecord {
            pid: sleeper,
            start_time: stat(sleeper).unwrap().unwrap().start_time,
        };

        assert!(signal_node(&record, libc::SIGTERM).unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            liveness(&record),
            Liveness::Running,
            "the trap ignores SIGTERM"
        );

        let started = Instant::now();
        assert!(stop_node(record, Instant::now() + Duration::from_millis(200)).await);
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "SIGKILL only after the grace period"
        );
        assert_eq!(liveness(&record), Liveness::Gone);
        let status = reaper.join().unwrap().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // The whole group went, not only its leader.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while liveness(&sleeper) == Liveness::Running {
            assert!(
                std::time::Instant::now() < deadline,
                "the group's other member survived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
