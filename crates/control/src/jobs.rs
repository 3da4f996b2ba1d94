//! Jobs (issue 13): submitting and cancelling (commands), reading a job,
//! the list and a log (questions), and what an attempt's agent reports
//! (its own questions and steps, authorised by the attempt's token).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use flotilla_domain::{
    after_attempt, authorize_admin, authorize_cluster_token, authorize_job, authorize_job_pool,
    authorize_job_submit, is_artifact_of, kept_path, AttemptEnd, Caller, ClusterName, Denied,
    JobDocument, JobSpec, JobState, JobTemplate, OrgError, OrgName, OrgRole, Problem, TemplateArgs,
    REDACTED,
};
use flotilla_engine::{spec_of, EngineError};
use flotilla_store::{ArtifactStore, JobId, JobRecord, JobStep, KeptFile, NewJob, StoreError};

use crate::{sealed, Command, Control};

/// The attempt of `job` a reader means: `attempt`, or the latest; none
/// before the first.
fn chosen_attempt(job: &JobRecord, attempt: Option<u32>) -> Result<Option<u32>, EngineError> {
    let Some(last) = job.attempts.last() else {
        return Ok(None);
    };
    let n = attempt.unwrap_or(last.attempt);
    if n == 0 || n > last.attempt {
        return Err(EngineError::Conflict(StoreError::JobState {
            id: job.id,
            state: job.state,
            what: format!("it has attempts 1 to {}, not {n}", last.attempt),
        }));
    }
    Ok(Some(n))
}

/// The most jobs one list shows.
pub const MAX_JOBS: usize = 500;

/// The most files one attempt keeps.
pub const MAX_KEPT_FILES: usize = 1000;
/// The most bytes one attempt keeps, all its files together.
pub const MAX_KEPT_BYTES: u64 = 1024 * 1024 * 1024;

/// A job as shown: secrets redacted, tokens left out, and where a queued
/// job stands in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub job: JobRecord,
    /// Its place among the queued jobs, and how many there are.
    pub place: Option<(usize, usize)>,
}

/// Submit a job: checked against the server's defaults and limits, its
/// pools and organisation; queued with those defaults filled in.
#[derive(Debug, Clone)]
pub struct SubmitJob {
    pub document: JobDocument,
}

impl sealed::Sealed for SubmitJob {}

impl Command for SubmitJob {
    type Committed = JobId;
    type View = JobView;
    const NAME: &'static str = "submit job";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<JobId, EngineError> {
        queue(control, caller, self.document).await
    }

    async fn answer(id: JobId, control: &Control) -> Result<JobView, EngineError> {
        let job = control.stored_job(id).await?;
        control.view(job).await
    }
}

/// Checks `document` against the server's defaults, its pools and its
/// organisation, and queues it with the defaults filled in.
async fn queue(
    control: &Control,
    caller: &Caller,
    document: JobDocument,
) -> Result<JobId, EngineError> {
    let engine = control.engine();
    let config = engine.config();
    let spec = document
        .spec(
            &config
                .levels
                .job_defaults(caller.level, &config.jobs.defaults),
        )
        .map_err(|problems| EngineError::InvalidJob { problems })?;
    let default_pool = [engine.default_pool().clone()];
    let pools = if spec.pools.is_empty() {
        &default_pool[..]
    } else {
        &spec.pools[..]
    };
    for pool in pools {
        let Some(found) = engine.pool(pool) else {
            return Err(control.unknown_pool(pool.as_str()));
        };
        authorize_job_pool(caller, pool, found.allow_workload)?;
    }
    let role = match &spec.org {
        Some(org) => Some((org.as_str(), control.org_role(caller, org)?)),
        None => None,
    };
    authorize_job_submit(caller, &engine.config().levels, role)?;
    if let (Some(cluster), true) = (&spec.cluster, spec.wants_cluster_token()) {
        authorize_cluster_token(caller, cluster)?;
    }
    let job = NewJob {
        name: spec.name.clone(),
        document: serde_json::to_value(document.resolved(&spec))
            .expect("a job document serialises"),
        submitted_by: submitter(caller),
        org: spec.org.clone(),
        priority: spec.priority,
    };
    let record = engine.store().submit_job(&job, engine.now()).await?;
    tracing::info!(job = record.id, name = %record.name, by = %record.submitted_by, "job submitted");
    Ok(record.id)
}

/// Run a job template of the server's config (seed 000's TEST and
/// RELEASE) against a cluster at a version (admins).
#[derive(Debug, Clone)]
pub struct RunTemplate {
    pub template: String,
    pub cluster: ClusterName,
    pub version: String,
}

impl sealed::Sealed for RunTemplate {}

impl Command for RunTemplate {
    type Committed = JobId;
    type View = JobView;
    const NAME: &'static str = "run template";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<JobId, EngineError> {
        authorize_admin(caller)?;
        let engine = control.engine();
        let template = control.template(&self.template)?;
        if engine.record(&self.cluster).is_none_or(|r| r.destroying) {
            return Err(EngineError::NotFound(self.cluster));
        }
        let view = engine.view(&self.cluster);
        let address = view
            .nodes
            .iter()
            .find_map(|n| n.workload_address.clone().or_else(|| n.address.clone()))
            .unwrap_or_default();
        let document = template
            .instantiate(
                &TemplateArgs {
                    cluster: &self.cluster,
                    version: &self.version,
                    address: &address,
                },
                &engine.config().jobs.defaults,
            )
            .map_err(|problems| EngineError::InvalidJob { problems })?;
        queue(control, caller, document).await
    }

    async fn answer(id: JobId, control: &Control) -> Result<JobView, EngineError> {
        let job = control.stored_job(id).await?;
        control.view(job).await
    }
}

/// Cancel a job: one queued ends at once; one under way has its attempt
/// ended by the leader (its instance destroyed), then ends.
#[derive(Debug, Clone)]
pub struct CancelJob {
    pub id: JobId,
}

impl sealed::Sealed for CancelJob {}

impl Command for CancelJob {
    type Committed = JobId;
    type View = JobView;
    const NAME: &'static str = "cancel job";

    async fn commit(self, control: &Control, caller: &Caller) -> Result<JobId, EngineError> {
        let job = control.stored_job(self.id).await?;
        control.authorize(caller, &job, "cancel")?;
        let engine = control.engine();
        engine
            .store()
            .step_job(
                job.id,
                None,
                &JobStep::Cancel {
                    by: Control::writer(caller),
                },
                None,
                engine.now(),
            )
            .await?;
        tracing::info!(job = job.id, by = %Control::writer(caller), "job cancel asked");
        Ok(job.id)
    }

    async fn answer(id: JobId, control: &Control) -> Result<JobView, EngineError> {
        let job = control.stored_job(id).await?;
        control.view(job).await
    }
}

/// The program an attempt's instance fetches and runs as its agent (on a
/// machine other than the server's): the server's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentProgram {
    /// Where it is read from.
    pub path: std::path::PathBuf,
    /// Its SHA-256, hex: the instance checks what it fetched against the
    /// one its boot script was given.
    pub sha256: String,
}

/// What an attempt's agent needs to run it.
#[derive(Debug, Clone)]
pub struct AttemptWork {
    pub job: JobId,
    pub attempt: u32,
    /// Who submitted it (`server`: the server itself), on whose behalf a
    /// cluster token is issued.
    pub submitted_by: String,
    /// The job as meant, secrets and all: for the agent only.
    pub spec: JobSpec,
}

/// What the agent of an instance kept warm for jobs is told once a job
/// took the instance: the attempt it runs, as an attempt's agent.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmAssignment {
    pub job: JobId,
    pub attempt: u32,
    /// The attempt's token, for everything the agent asks from then.
    pub token: String,
    /// How long the instance may live from now
    /// ([`flotilla_engine::attempt_lifetime`]).
    pub lifetime: std::time::Duration,
}

/// What an attempt's agent reports.
#[derive(Debug, Clone)]
pub enum AgentReport {
    /// Its script started.
    Running,
    /// It is alive.
    Heartbeat,
    /// Output, as chunk number `chunk` of its log: (time, stream, line).
    Log {
        chunk: u64,
        lines: Vec<(DateTime<Utc>, String, String)>,
    },
    /// Its script exited with `status`.
    Exited { status: i32 },
}

/// What the agent is told back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentAnswer {
    /// Stop the script: the attempt is over (cancelled, timed out, or
    /// ended by the leader), or its cancel was asked for.
    pub stop: bool,
}

/// Part of an attempt's log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    pub attempt: u32,
    /// Chunks numbered from the one asked for.
    pub chunks: Vec<(u64, String)>,
    /// Whether the attempt is over, so no chunk comes after these.
    pub done: bool,
}

impl Control {
    /// The job templates' names.
    pub fn template_names(&self) -> Vec<String> {
        self.engine()
            .config()
            .jobs
            .templates
            .keys()
            .cloned()
            .collect()
    }

    /// Job template `name` of the server's config.
    pub(crate) fn template(&self, name: &str) -> Result<&JobTemplate, EngineError> {
        let templates = &self.engine().config().jobs.templates;
        templates
            .get(name)
            .ok_or_else(|| EngineError::UnknownTemplate {
                template: name.to_owned(),
                known: templates.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// Keeps jobs' logs in `artifacts` (without, logs are refused).
    pub fn with_artifacts(mut self, artifacts: Arc<dyn ArtifactStore>) -> Self {
        self.artifacts = Some(artifacts);
        self
    }

    /// Serves `agent` to attempts' instances ([`Control::agent_program`]);
    /// none: the server starts agents only on its own machine.
    pub fn with_agent(mut self, agent: Option<Arc<AgentProgram>>) -> Self {
        self.agent = agent;
        self
    }

    /// The program the instance of attempt `attempt` of job `id` fetches
    /// and runs as its agent, for that attempt's token while it is under
    /// way.
    pub async fn agent_program(
        &self,
        id: JobId,
        attempt: u32,
        token: &str,
    ) -> Result<Arc<AgentProgram>, EngineError> {
        let (job, live) = self.attempt_of(id, attempt, token).await?;
        if !live {
            return Err(EngineError::Conflict(StoreError::JobState {
                id,
                state: job.state,
                what: format!("attempt {attempt} is over: it runs nothing"),
            }));
        }
        self.agent.clone().ok_or_else(|| {
            EngineError::Config(
                "this server serves no agent program (it starts agents only on its own machine)"
                    .to_owned(),
            )
        })
    }

    fn artifacts(&self) -> Result<&Arc<dyn ArtifactStore>, EngineError> {
        self.artifacts.as_ref().ok_or_else(|| {
            EngineError::Config("this server keeps no job logs (no artifact store)".to_owned())
        })
    }

    /// The caller's role in organisation `org` (None: not a member);
    /// refused if there is no such organisation.
    fn org_role(&self, caller: &Caller, org: &OrgName) -> Result<Option<OrgRole>, EngineError> {
        let name = ClusterName::new(org.as_str())?;
        let found = self
            .engine()
            .org(&name)
            .ok_or_else(|| EngineError::Org(OrgError::Unknown(org.clone())))?;
        Ok(caller.account.as_ref().and_then(|a| found.role(a)))
    }

    fn authorize(
        &self,
        caller: &Caller,
        job: &JobRecord,
        what: &'static str,
    ) -> Result<(), Denied> {
        let role = job.org.as_ref().and_then(|org| {
            let name = ClusterName::new(org.as_str()).ok()?;
            let found = self.engine().org(&name)?;
            caller.account.as_ref().and_then(|a| found.role(a))
        });
        authorize_job(caller, job.id, &job.submitted_by, role, what)
    }

    async fn stored_job(&self, id: JobId) -> Result<JobRecord, EngineError> {
        self.engine()
            .store()
            .job(id)
            .await?
            .ok_or(EngineError::UnknownJob(id))
    }

    /// `job` as shown, with its place in the queue.
    async fn view(&self, job: JobRecord) -> Result<JobView, EngineError> {
        Ok(self.views(vec![job]).await?.remove(0))
    }

    /// `jobs` as shown, each queued one with its place in the queue (the
    /// queue read once, only if one of them waits in it).
    async fn views(&self, jobs: Vec<JobRecord>) -> Result<Vec<JobView>, EngineError> {
        let queued: Vec<JobId> = if jobs.iter().any(|j| j.state == JobState::Queued) {
            self.engine()
                .store()
                .live_jobs()
                .await?
                .iter()
                .filter(|j| j.state == JobState::Queued)
                .map(|j| j.id)
                .collect()
        } else {
            Vec::new()
        };
        Ok(jobs
            .into_iter()
            .map(|job| {
                let place = queued
                    .iter()
                    .position(|id| *id == job.id)
                    .map(|at| (at + 1, queued.len()));
                JobView {
                    job: shown(job),
                    place,
                }
            })
            .collect())
    }

    /// Job `id`, if the caller may read it.
    pub async fn job(&self, caller: &Caller, id: JobId) -> Result<JobView, EngineError> {
        let job = self.stored_job(id).await?;
        self.authorize(caller, &job, "read")?;
        self.view(job).await
    }

    /// The caller's latest jobs (an admin's `all`: everyone's), newest
    /// first.
    pub async fn jobs(
        &self,
        caller: &Caller,
        all: bool,
        limit: usize,
    ) -> Result<Vec<JobView>, EngineError> {
        if caller.account.is_none() && !caller.is_admin() {
            return Err(Denied::NotAuthenticated.into());
        }
        let everyone = all && caller.is_admin();
        let mine = if everyone {
            None
        } else {
            Some(submitter(caller))
        };
        let store = self.engine().store();
        let jobs = store.jobs(mine.as_deref(), limit.min(MAX_JOBS)).await?;
        self.views(jobs).await
    }

    /// Keeps the file at `path` that the agent of attempt `attempt` of job
    /// `id` sends (one of its job's `artifacts`, or under one) while the
    /// attempt is under way; returns the path it is kept under.
    pub async fn attempt_file(
        &self,
        id: JobId,
        attempt: u32,
        token: &str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<String, EngineError> {
        let (job, live) = self.attempt_of(id, attempt, token).await?;
        if !live {
            return Err(EngineError::Conflict(StoreError::JobState {
                id,
                state: job.state,
                what: format!("attempt {attempt} is over: it keeps nothing more"),
            }));
        }
        let spec = spec_of(&job).map_err(EngineError::Config)?;
        let kept = kept_path(path)
            .filter(|p| is_artifact_of(p, &spec.artifacts))
            .ok_or_else(|| EngineError::InvalidJob {
                problems: vec![Problem::at(
                    "path",
                    format!(
                        "{path:?} is not among the job's artifacts ({})",
                        spec.artifacts.join(", ")
                    ),
                )],
            })?;
        let artifacts = self.artifacts()?;
        // A file sent again replaces the first: it counts once.
        let others: Vec<KeptFile> = artifacts
            .files(id, attempt)
            .await?
            .into_iter()
            .filter(|f| f.path != kept)
            .collect();
        let bytes_kept: u64 = others.iter().map(|f| f.size).sum();
        let over = if others.len() >= MAX_KEPT_FILES {
            Some(format!(
                "attempt {attempt} keeps {MAX_KEPT_FILES} files already, the most one keeps"
            ))
        } else if bytes_kept + bytes.len() as u64 > MAX_KEPT_BYTES {
            Some(format!(
                "attempt {attempt} keeps {bytes_kept} bytes already; {} more would pass the most one keeps, {MAX_KEPT_BYTES}",
                bytes.len()
            ))
        } else {
            None
        };
        if let Some(why) = over {
            return Err(EngineError::InvalidJob {
                problems: vec![Problem::at("path", format!("{path:?} is not kept: {why}"))],
            });
        }
        artifacts.put_file(id, attempt, &kept, bytes).await?;
        Ok(kept)
    }

    /// The files attempt `attempt` (the latest when None) of job `id`
    /// kept, with that attempt's number (0: none started yet).
    pub async fn job_files(
        &self,
        caller: &Caller,
        id: JobId,
        attempt: Option<u32>,
    ) -> Result<(u32, Vec<KeptFile>), EngineError> {
        let job = self.stored_job(id).await?;
        self.authorize(caller, &job, "read")?;
        let artifacts = self.artifacts()?;
        match chosen_attempt(&job, attempt)? {
            None => Ok((0, Vec::new())),
            Some(n) => Ok((n, artifacts.files(id, n).await?)),
        }
    }

    /// The file at `path` that attempt `attempt` (the latest when None) of
    /// job `id` kept, with that attempt's number.
    pub async fn job_file(
        &self,
        caller: &Caller,
        id: JobId,
        attempt: Option<u32>,
        path: &str,
    ) -> Result<(u32, Vec<u8>), EngineError> {
        let job = self.stored_job(id).await?;
        self.authorize(caller, &job, "read")?;
        let artifacts = self.artifacts()?;
        let n = chosen_attempt(&job, attempt)?.unwrap_or(0);
        let missing = || EngineError::NoSuchFile {
            job: id,
            attempt: n,
            path: path.to_owned(),
        };
        let kept = kept_path(path).ok_or_else(missing)?;
        if n == 0 {
            return Err(missing());
        }
        let bytes = artifacts.file(id, n, &kept).await?.ok_or_else(missing)?;
        Ok((n, bytes))
    }

    /// Attempt `attempt` (the latest when None) of job `id`'s log, from
    /// chunk `from` on.
    pub async fn job_log(
        &self,
        caller: &Caller,
        id: JobId,
        attempt: Option<u32>,
        from: u64,
    ) -> Result<LogPage, EngineError> {
        let job = self.stored_job(id).await?;
        self.authorize(caller, &job, "read")?;
        let artifacts = self.artifacts()?;
        let Some(n) = chosen_attempt(&job, attempt)? else {
            // Not started: nothing yet, and more to come unless it ended.
            return Ok(LogPage {
                attempt: 0,
                chunks: Vec::new(),
                done: job.state.is_final(),
            });
        };
        let done = job.attempts[n as usize - 1].end.is_some();
        let chunks = artifacts.log_chunks(id, n, from).await?;
        Ok(LogPage {
            attempt: n,
            chunks,
            done,
        })
    }

    /// Job `id`'s attempt `attempt`, if `token` is its agent's and it is
    /// under way.
    async fn attempt_of(
        &self,
        id: JobId,
        attempt: u32,
        token: &str,
    ) -> Result<(JobRecord, bool), EngineError> {
        let job = self
            .engine()
            .store()
            .job(id)
            .await?
            .ok_or(Denied::NotThisAttempt)?;
        let a = job
            .attempts
            .iter()
            .find(|a| a.attempt == attempt)
            .filter(|a| !a.token.is_empty() && same(a.token.as_bytes(), token.as_bytes()))
            .ok_or(Denied::NotThisAttempt)?;
        let live = a.end.is_none();
        Ok((job, live))
    }

    /// The attempt the agent of an instance kept warm runs, by the token
    /// its boot was given: None until a job takes that instance (and once
    /// its attempt is over, or its cancel was asked for). Waits up to
    /// `wait` for a job to take it, woken by every job started. A token
    /// nobody was given gets None as well: the instance's tag holds only
    /// the token's hash, and the attempt taking it the same; one that is
    /// not a token at all (64 hex digits) is refused.
    pub async fn warm_assignment(
        &self,
        token: &str,
        wait: std::time::Duration,
    ) -> Result<Option<WarmAssignment>, EngineError> {
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Denied::NotThisAttempt.into());
        }
        let hash = flotilla_domain::warm_token_hash(token);
        // Subscribed before the first look, so a start between the two is
        // not missed.
        let mut changes = self.engine().subscribe_changes();
        let live = self.engine().store().live_jobs().await?;
        if let Some(taken) = live.iter().find_map(|job| self.warm_attempt(job, &hash)) {
            return taken.map(Some);
        }
        // Then only the start that names this instance is read.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let started = async {
                loop {
                    match changes.recv().await {
                        Ok(c)
                            if c.kind == flotilla_domain::ChangeKind::JobStarted
                                && c.payload["warm"].as_str() == Some(hash.as_str()) =>
                        {
                            return c.key.parse::<JobId>().ok();
                        }
                        Ok(_) => {}
                        // Some were missed: read them all.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return None,
                        // Shutting down: nothing more will start.
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            let Ok(started) = tokio::time::timeout_at(deadline, started).await else {
                return Ok(None);
            };
            let jobs = match started {
                Some(id) => self.engine().store().job(id).await?.into_iter().collect(),
                None => self.engine().store().live_jobs().await?,
            };
            if let Some(taken) = jobs.iter().find_map(|job| self.warm_attempt(job, &hash)) {
                return taken.map(Some);
            }
        }
    }

    /// What the agent of the instance kept warm whose token's hash is
    /// `hash` is told, if `job`'s attempt under way took that instance
    /// (and its cancel was not asked for).
    fn warm_attempt(
        &self,
        job: &JobRecord,
        hash: &str,
    ) -> Option<Result<WarmAssignment, EngineError>> {
        let a = job.live_attempt()?;
        if a.warm.as_deref() != Some(hash) || job.cancel_by.is_some() {
            return None;
        }
        let settings = &self.engine().config().jobs;
        Some(
            spec_of(job)
                .map_err(EngineError::Config)
                .map(|spec| WarmAssignment {
                    job: job.id,
                    attempt: a.attempt,
                    token: a.token.clone(),
                    lifetime: flotilla_engine::attempt_lifetime(settings, &spec),
                }),
        )
    }

    /// What the agent of attempt `attempt` of job `id` runs.
    pub async fn attempt_work(
        &self,
        id: JobId,
        attempt: u32,
        token: &str,
    ) -> Result<AttemptWork, EngineError> {
        let (job, live) = self.attempt_of(id, attempt, token).await?;
        if !live || job.cancel_by.is_some() {
            return Err(EngineError::Conflict(StoreError::JobState {
                id,
                state: job.state,
                what: format!("attempt {attempt} is over: it runs nothing"),
            }));
        }
        let spec = spec_of(&job).map_err(EngineError::Config)?;
        Ok(AttemptWork {
            job: id,
            attempt,
            submitted_by: job.submitted_by,
            spec,
        })
    }

    /// Takes what the agent of attempt `attempt` of job `id` reports.
    pub async fn attempt_report(
        &self,
        id: JobId,
        attempt: u32,
        token: &str,
        report: AgentReport,
    ) -> Result<AgentAnswer, EngineError> {
        let (job, live) = self.attempt_of(id, attempt, token).await?;
        let engine = self.engine();
        let store = engine.store();
        let now = engine.now();
        let step = |step: JobStep| async move { store.step_job(id, None, &step, None, now).await };
        let stop = |job: &JobRecord| AgentAnswer {
            stop: job.live_attempt().is_none_or(|a| a.attempt != attempt)
                || job.cancel_by.is_some(),
        };
        match report {
            AgentReport::Log { chunk, lines } => {
                let spec = spec_of(&job).ok();
                let mut text = String::new();
                for (at, stream, line) in lines {
                    let line = match &spec {
                        Some(spec) => spec.redact(&line),
                        None => line,
                    };
                    text.push_str(&format!(
                        "{} {stream} {line}\n",
                        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    ));
                }
                // Kept even from an attempt just ended: its last words.
                self.artifacts()?
                    .put_log_chunk(id, attempt, chunk, &text)
                    .await?;
                if live && self.seen_long_ago(&job, attempt, now) {
                    if let Ok(job) = step(JobStep::Heartbeat { attempt }).await {
                        return Ok(stop(&job));
                    }
                }
                Ok(stop(&job))
            }
            _ if !live => Ok(AgentAnswer { stop: true }),
            AgentReport::Heartbeat => match step(JobStep::Heartbeat { attempt }).await {
                Ok(job) => Ok(stop(&job)),
                Err(StoreError::JobState { .. }) => Ok(AgentAnswer { stop: true }),
                Err(e) => Err(e.into()),
            },
            AgentReport::Running => {
                let job = step(JobStep::Running { attempt }).await?;
                tracing::info!(job = id, attempt, "job attempt running");
                Ok(stop(&job))
            }
            AgentReport::Exited { status } => {
                let spec = spec_of(&job).map_err(EngineError::Config)?;
                let end = AttemptEnd::Exited { status };
                let after = after_attempt(&spec, attempt, end);
                let job = step(JobStep::End {
                    attempt,
                    end,
                    after,
                })
                .await?;
                tracing::info!(job = id, attempt, status, state = %job.state, "job attempt exited");
                Ok(AgentAnswer { stop: true })
            }
        }
    }

    /// Whether the attempt's last report is old enough to record another
    /// (a log chunk counts as one, but not every chunk is written down).
    fn seen_long_ago(&self, job: &JobRecord, attempt: u32, now: DateTime<Utc>) -> bool {
        let every = self.engine().config().jobs.heartbeat_timeout / 6;
        job.attempts
            .iter()
            .find(|a| a.attempt == attempt)
            .and_then(|a| a.seen_at.or(a.running_at))
            .is_none_or(|seen| (now - seen).to_std().is_ok_and(|d| d >= every))
    }
}

/// Who a job is recorded as submitted by: the caller's account, or
/// [`SERVER_SUBMITTER`] (no account can be called that).
pub fn submitter(caller: &Caller) -> String {
    caller
        .account
        .as_ref()
        .map_or_else(|| SERVER_SUBMITTER.to_owned(), ToString::to_string)
}

/// The submitter of the jobs the server itself (or a caller without an
/// account) queues: not a valid account name, so no account is ever
/// taken for it.
pub const SERVER_SUBMITTER: &str = "@server";

/// Compares two secrets in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// `job` as anyone shown it sees it: its secrets' values and its
/// attempts' tokens left out.
fn shown(mut job: JobRecord) -> JobRecord {
    if let Some(secrets) = job
        .document
        .get_mut("secrets")
        .and_then(serde_json::Value::as_object_mut)
    {
        for value in secrets.values_mut() {
            *value = REDACTED.into();
        }
    }
    for a in &mut job.attempts {
        a.token.clear();
    }
    job
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_job_has_no_secret_and_no_token() {
        let job = JobRecord {
            id: 1,
            name: "j".into(),
            document: serde_json::json!({"name": "j", "script": "true", "secrets": {"KEY": "hunter2"}}),
            submitted_by: "ann".into(),
            org: None,
            priority: 0,
            state: JobState::Queued,
            reason: None,
            cancel_by: None,
            attempts: Vec::new(),
            submitted_at: Utc::now(),
            updated_at: Utc::now(),
            version: 1,
        };
        let text = format!("{:?}", shown(job));
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains(REDACTED));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
