//! The node agent's job mode (`flotilla node --job ID --attempt N --server
//! URL`, the attempt's token in `FLOTILLA_ATTEMPT_TOKEN`): what runs on an
//! attempt's instance. It fetches the job, checks out its repository if
//! it names one, reports that the script runs, runs it with `sh -c` in a
//! work directory of its own, sends its output line by line (numbered
//! chunks, so one sent twice is kept once), reports that it is alive, and
//! reports the exit status. When the server says stop (the job was
//! cancelled, or the attempt ended), or the job's `max_runtime` passes,
//! it kills the script and stops; the leader destroys the instance, and
//! with it whatever the script left running.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use flotilla_api_types::{AgentAnswer, AgentReport, AttemptWork, LogLine, WarmAssignment};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often output is sent.
const FLUSH: Duration = Duration::from_millis(200);
/// How often the agent reports it is alive when the script is silent.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Lines sent at most in one chunk.
const CHUNK_LINES: usize = 500;
/// How long a report is retried when the server cannot be reached (a
/// restart, a takeover by another server): past it, the leader has ended
/// the attempt for its silence anyway.
const RETRY_FOR: Duration = Duration::from_secs(600);
/// How long output is still read after the script exited, from what it
/// left running in the background, before its exit is reported.
const DRAIN: Duration = Duration::from_secs(2);
/// The longest line kept whole; longer ones are cut.
const MAX_LINE: usize = 64 * 1024;

/// The header the attempt's token goes in.
const TOKEN_HEADER: &str = "x-flotilla-attempt-token";

struct Agent {
    http: reqwest::Client,
    url: String,
    token: String,
    next_chunk: u64,
}

impl Agent {
    /// Sends `report`, retrying what may pass (the server unreachable or
    /// restarting, the script's start reported before its instance was
    /// recorded) for up to [`RETRY_FOR`].
    async fn report(&self, report: &AgentReport) -> Result<AgentAnswer, String> {
        let until = tokio::time::Instant::now() + RETRY_FOR;
        let mut wait = Duration::from_millis(50);
        loop {
            let sent = self
                .http
                .post(&self.url)
                .header(TOKEN_HEADER, &self.token)
                .json(report)
                .send()
                .await;
            let again = match sent {
                Ok(r) if r.status().is_success() => {
                    return r.json().await.map_err(|e| e.to_string());
                }
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    if status == reqwest::StatusCode::CONFLICT
                        && matches!(report, AgentReport::Running)
                        || status.is_server_error()
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    {
                        format!("{status}: {body}")
                    } else {
                        return Err(format!("the server refused the report: {status}: {body}"));
                    }
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() + wait > until {
                return Err(format!("cannot report to {}: {again}", self.url));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    async fn work(&self) -> Result<AttemptWork, String> {
        let until = tokio::time::Instant::now() + RETRY_FOR;
        loop {
            let sent = self
                .http
                .get(&self.url)
                .header(TOKEN_HEADER, &self.token)
                .send()
                .await;
            let again = match sent {
                Ok(r) if r.status().is_success() => {
                    return r.json().await.map_err(|e| e.to_string())
                }
                Ok(r) if !r.status().is_server_error() => {
                    let status = r.status();
                    return Err(format!(
                        "the server will not give the job: {status}: {}",
                        r.text().await.unwrap_or_default()
                    ));
                }
                Ok(r) => r.status().to_string(),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() > until {
                return Err(format!("cannot fetch the job from {}: {again}", self.url));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Sends the file kept at `path`, retrying what may pass for up to
    /// [`RETRY_FOR`].
    async fn put_file(&self, path: &str, bytes: Vec<u8>) -> Result<(), String> {
        let until = tokio::time::Instant::now() + RETRY_FOR;
        let mut wait = Duration::from_millis(50);
        loop {
            let sent = self
                .http
                .put(format!("{}/file", self.url))
                .query(&[("path", path)])
                // A large file on a slow link takes longer than a report.
                .timeout(RETRY_FOR)
                .header(TOKEN_HEADER, &self.token)
                .body(bytes.clone())
                .send()
                .await;
            let again = match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if r.status().is_server_error() => r.status().to_string(),
                Ok(r) => {
                    let status = r.status();
                    return Err(format!(
                        "the server refused it: {status}: {}",
                        r.text().await.unwrap_or_default()
                    ));
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() + wait > until {
                return Err(format!("cannot send it: {again}"));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// Sends `lines` as the next chunk of the log.
    async fn send(&mut self, lines: Vec<LogLine>) -> Result<AgentAnswer, String> {
        let report = AgentReport::Log {
            chunk: self.next_chunk as i64,
            lines,
        };
        let answer = self.report(&report).await?;
        self.next_chunk += 1;
        Ok(answer)
    }
}

/// The largest file kept (as the server takes).
const MAX_FILE: u64 = 64 * 1024 * 1024;

/// The files under `root` (itself, if a file), as (where it is, the path
/// it is kept under: `kept` and its path below `root`). Links are not
/// followed: noted in `skipped`.
fn files_under(root: &Path, kept: &str, skipped: &mut Vec<String>) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut todo = vec![(root.to_path_buf(), kept.to_owned())];
    while let Some((path, name)) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            skipped.push(format!("{name}: a link, not followed"));
        } else if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                for entry in entries.flatten() {
                    let child = entry.file_name().to_string_lossy().into_owned();
                    todo.push((entry.path(), format!("{name}/{child}")));
                }
            }
        } else if meta.len() > MAX_FILE {
            skipped.push(format!(
                "{name}: {} bytes, more than the {} MiB a kept file may have",
                meta.len(),
                MAX_FILE / (1024 * 1024)
            ));
        } else {
            found.push((path, name));
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

/// Sends the files of the job's `artifacts` its script left in `dir` (a
/// directory named: every file under it), reporting that it is alive
/// meanwhile (however long the files take, the attempt is not taken for
/// lost), then says in the log what was kept, and what was not and why.
async fn keep_files(agent: &mut Agent, dir: &Path, entries: &[String]) -> Result<(), String> {
    let lines = {
        let sending = send_files(agent, dir, entries);
        tokio::pin!(sending);
        loop {
            tokio::select! {
                lines = &mut sending => break lines,
                _ = tokio::time::sleep(HEARTBEAT) => {
                    if let Err(e) = agent.report(&AgentReport::Heartbeat).await {
                        tracing::warn!(error = %e, "cannot report to the server");
                    }
                }
            }
        }
    };
    if lines.is_empty() {
        return Ok(());
    }
    agent.send(lines).await.map(|_| ())
}

/// [`keep_files`]' sending: what the log is to say of it.
async fn send_files(agent: &Agent, dir: &Path, entries: &[String]) -> Vec<LogLine> {
    let mut notes = Vec::new();
    for entry in entries {
        let Some(kept) = flotilla_domain::kept_path(entry) else {
            continue;
        };
        let mut skipped = Vec::new();
        let files = files_under(&dir.join(&kept), &kept, &mut skipped);
        if files.is_empty() && skipped.is_empty() {
            notes.push(format!("artifact {entry}: not found"));
        }
        notes.extend(skipped.into_iter().map(|s| format!("not kept: {s}")));
        for (path, name) in files {
            let sent = match tokio::fs::read(&path).await {
                Ok(bytes) => {
                    let size = bytes.len();
                    agent
                        .put_file(&name, bytes)
                        .await
                        .map(|()| format!("kept {name} ({size} bytes)"))
                }
                Err(e) => Err(format!("cannot read it: {e}")),
            };
            notes.push(sent.unwrap_or_else(|e| format!("not kept: {name}: {e}")));
        }
    }
    notes
        .into_iter()
        .map(|text| LogLine {
            at: Utc::now(),
            stream: "agent".to_owned(),
            text,
        })
        .collect()
}

/// `text` with each of `secrets` (the longest first) hidden.
fn redact(text: String, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text, |t, s| t.replace(s.as_str(), "[redacted]"))
}

/// Reads `from` line by line into `lines`, as `stream`, with `secrets`
/// hidden (the server hides the job's own again; a cluster token, issued
/// for this attempt only, only the agent knows).
fn forward(
    from: impl AsyncRead + Unpin + Send + 'static,
    stream: &'static str,
    lines: mpsc::Sender<LogLine>,
    secrets: Arc<Vec<String>>,
) {
    tokio::spawn(async move {
        // Bytes, not text: a script may print what is not UTF-8, and must
        // not lose its output (or a write to a closed pipe) for it.
        let mut reader = BufReader::new(from);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let end = raw.len() - usize::from(raw.ends_with(b"\n"));
            let mut text = String::from_utf8_lossy(&raw[..end.min(MAX_LINE)]).into_owned();
            if end > MAX_LINE {
                text.push_str(" [cut]");
            }
            let line = LogLine {
                at: Utc::now(),
                stream: stream.to_owned(),
                text: redact(text, &secrets),
            };
            if lines.send(line).await.is_err() {
                return;
            }
        }
    });
}

/// Kills the script's shell. What it started is in the node's process
/// group, which goes with the instance (the leader destroys it as soon as
/// the attempt ends; on `local`, the node agent kills its whole group).
fn kill_script(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Checks out `repo` at `git_ref` into `dir`, its output into `lines`.
async fn checkout(
    repo: &str,
    git_ref: Option<&str>,
    dir: &Path,
    lines: &mpsc::Sender<LogLine>,
) -> Result<(), String> {
    let say = |text: String| LogLine {
        at: Utc::now(),
        stream: "agent".to_owned(),
        text,
    };
    let _ = lines
        .send(say(format!(
            "checking out {repo}{}",
            git_ref.map_or(String::new(), |r| format!(" at {r}"))
        )))
        .await;
    let mut steps: Vec<Vec<&str>> = vec![vec!["clone", "--quiet", repo, "."]];
    if let Some(r) = git_ref {
        steps.push(vec!["checkout", "--quiet", r]);
    }
    for args in steps {
        let out = tokio::process::Command::new("git")
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run git: {e}; install git on the instance"))?;
        for text in String::from_utf8_lossy(&out.stderr).lines() {
            let _ = lines.send(say(text.to_owned())).await;
        }
        if !out.status.success() {
            return Err(format!("git {} failed: {}", args.join(" "), out.status));
        }
    }
    Ok(())
}

/// How long one ask of the agent of an instance kept warm waits for a job.
const WARM_WAIT_SECS: u64 = 20;
/// How long it waits before asking again after the server could not answer.
const WARM_AGAIN: Duration = Duration::from_secs(1);

/// The agent of an instance kept warm for jobs (`flotilla node --warm
/// --server URL`, its token in `FLOTILLA_WARM_TOKEN`): asks the server for
/// a job (each ask waiting up to 20 s for one) until one takes the
/// instance, then runs that attempt as [`run`] does. The server being
/// unreachable (a restart) is waited out; a refusal is an error.
pub async fn run_warm(server: &str, token: &str) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!(
        "{}/api/v1/warm?wait={WARM_WAIT_SECS}",
        server.trim_end_matches('/')
    );
    let taken: WarmAssignment = loop {
        match http.get(&url).header(TOKEN_HEADER, token).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::OK => {
                break r.json().await.map_err(|e| e.to_string())?;
            }
            Ok(r) if r.status() == reqwest::StatusCode::NO_CONTENT => continue,
            Ok(r) if r.status().is_server_error() => {}
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                return Err(format!(
                    "the server refused to give a job: {status}: {body}"
                ));
            }
            Err(_) => {}
        }
        tokio::time::sleep(WARM_AGAIN).await;
    };
    run(server, taken.job, taken.attempt, taken.token).await
}

/// Runs attempt `attempt` of job `job` from `server`; the exit status of
/// the agent itself (0 once the script's status is reported).
pub async fn run(server: &str, job: u64, attempt: u32, token: String) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let mut agent = Agent {
        http,
        url: format!(
            "{}/api/v1/attempts/{job}/{attempt}",
            server.trim_end_matches('/')
        ),
        token,
        next_chunk: 0,
    };
    let work = agent.work().await?;
    let dir: PathBuf = std::env::current_dir()
        .map_err(|e| e.to_string())?
        .join(format!("work-{job}-{attempt}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;

    let (tx, mut rx) = mpsc::channel::<LogLine>(4096);
    let checked_out = match &work.repo {
        Some(repo) => checkout(repo, work.git_ref.as_deref(), &dir, &tx).await,
        None => Ok(()),
    };
    if let Err(why) = checked_out {
        let _ = tx
            .send(LogLine {
                at: Utc::now(),
                stream: "agent".to_owned(),
                text: why,
            })
            .await;
        drop(tx);
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        agent.send(lines).await?;
        agent.report(&AgentReport::Running).await?;
        agent.report(&AgentReport::Exited { status: 128 }).await?;
        return Ok(());
    }

    let answer = agent.report(&AgentReport::Running).await?;
    if answer.stop {
        return Ok(());
    }
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&work.script)
        .current_dir(&dir)
        .envs(&work.env)
        .env("FLOTILLA_JOB", job.to_string())
        .env("FLOTILLA_ATTEMPT", attempt.to_string())
        .env_remove("FLOTILLA_ATTEMPT_TOKEN")
        .env_remove("FLOTILLA_WARM_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            agent
                .send(vec![LogLine {
                    at: Utc::now(),
                    stream: "agent".to_owned(),
                    text: format!("cannot start sh: {e}"),
                }])
                .await?;
            agent.report(&AgentReport::Exited { status: 127 }).await?;
            return Ok(());
        }
    };
    let pid = child.id().unwrap_or_default();
    let mut secrets: Vec<String> = work
        .secret_values
        .iter()
        .flat_map(|s| flotilla_domain::secret_parts(s))
        .map(str::to_owned)
        .collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let secrets = Arc::new(secrets);
    if let Some(out) = child.stdout.take() {
        forward(out, "out", tx.clone(), secrets.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, "err", tx.clone(), secrets);
    }
    drop(tx);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(work.max_runtime_secs);
    let mut buffer: Vec<LogLine> = Vec::new();
    let mut flush = tokio::time::interval(FLUSH);
    let mut last_report = tokio::time::Instant::now();
    let mut output_open = true;
    let mut status = None;
    let mut exited_at: Option<Instant> = None;
    let mut unsent: Option<Vec<LogLine>> = None;
    loop {
        tokio::select! {
            line = rx.recv(), if output_open => match line {
                Some(line) => {
                    buffer.push(line);
                    if buffer.len() < CHUNK_LINES {
                        continue;
                    }
                }
                None => output_open = false,
            },
            exited = child.wait(), if status.is_none() => {
                status = Some(exited.map_err(|e| e.to_string())?);
                exited_at = Some(Instant::now());
            }
            _ = flush.tick() => {}
            _ = tokio::time::sleep_until(deadline) => {
                // The leader ends the attempt as timed out.
                kill_script(pid);
                let _ = agent.send(std::mem::take(&mut buffer)).await;
                return Ok(());
            }
        }
        // The script may leave children writing after it exits: its
        // output is done once both pipes closed, or after a short drain.
        if status.is_some() && (!output_open || exited_at.is_some_and(|t| t.elapsed() >= DRAIN)) {
            while let Ok(line) = rx.try_recv() {
                buffer.push(line);
            }
            break;
        }
        let heartbeat_due = last_report.elapsed() >= HEARTBEAT;
        if !buffer.is_empty() || heartbeat_due {
            // A chunk that did not go is sent again as it was (the same
            // number, the same lines: the server keeps a chunk once).
            let lines = match unsent.take() {
                Some(lines) => Some(lines),
                None if buffer.is_empty() => None,
                None => Some(std::mem::take(&mut buffer)),
            };
            let answer = match lines {
                None => agent.report(&AgentReport::Heartbeat).await,
                Some(lines) => {
                    let sent = agent.send(lines.clone()).await;
                    if sent.is_err() {
                        unsent = Some(lines);
                    }
                    sent
                }
            };
            last_report = tokio::time::Instant::now();
            match answer {
                Ok(a) if a.stop => {
                    kill_script(pid);
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot report to the server"),
            }
        }
    }
    if let Some(lines) = unsent {
        agent.send(lines).await?;
    }
    if !buffer.is_empty() {
        agent.send(buffer).await?;
    }
    keep_files(&mut agent, &dir, &work.artifacts).await?;
    let status = status.expect("exited");
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    agent
        .report(&AgentReport::Exited {
            status: i64::from(code),
        })
        .await?;
    Ok(())
}
