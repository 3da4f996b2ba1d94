//! Jobs and their attempts (issue 13's queue). A job is one row: what was
//! submitted (the document as written, secrets included, so whatever
//! shows a job must redact them: [`flotilla_domain::JobSpec::redact`]),
//! where it is, and its attempts. Every change is a read of the row, a pure step
//! ([`JobRecord::apply`]) and a write of the row back, checked against the
//! version read, so two writers cannot both move one job; the leader's
//! steps (starting, running, ending an attempt) are fenced by its lease, so
//! a leader that lost it moves nothing. Never two live attempts of a job,
//! never an attempt started for a job cancelled.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{
    AfterAttempt, AttemptEnd, ChangeKind, InstanceId, InstanceType, JobState, Market, Money,
    NewChange, NodeMeter, OrgName, PoolName, QueueKey,
};

use crate::{Fence, StoreError};

/// A job's number, given at submission: higher for a later job (with gaps
/// on PostgreSQL, whose numbers are not given back when a submission
/// fails).
pub type JobId = u64;

/// A job as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub name: String,
    /// What was submitted (a `JobDocument`'s JSON).
    pub document: serde_json::Value,
    pub submitted_by: String,
    pub org: Option<OrgName>,
    pub priority: i32,
    pub state: JobState,
    /// Why a queued job waits; for a job cancelled, who cancelled it.
    pub reason: Option<String>,
    /// Who asked to cancel it while an attempt was under way: the leader
    /// ends the attempt, then the job.
    pub cancel_by: Option<String>,
    pub attempts: Vec<AttemptRecord>,
    pub submitted_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Counts its writes: each is checked against the one read.
    pub version: u64,
}

/// One attempt at a job: one instance of its own.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttemptRecord {
    /// 1 for the first.
    pub attempt: u32,
    pub pool: PoolName,
    pub instance_type: InstanceType,
    #[serde(with = "market")]
    pub market: Market,
    /// What its instance costs per hour on its market.
    pub price_per_hour: Money,
    /// Its instance, once made (so a new leader finds it in the cloud's
    /// listing, and an attempt that never booted is known by it).
    pub instance: Option<InstanceId>,
    pub started_at: DateTime<Utc>,
    /// When its script started.
    pub running_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end: Option<AttemptEnd>,
    /// When its agent last reported (a heartbeat, a log line, the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_at: Option<DateTime<Utc>>,
    /// What its agent presents: good for this attempt only, and never
    /// shown.
    #[serde(default)]
    pub token: String,
    /// Its instance was kept warm for jobs before it took this attempt:
    /// the hash of the token that instance's agent asks for a job with
    /// ([`flotilla_domain::warm_token_hash`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<String>,
}

mod market {
    use flotilla_domain::Market;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &Market, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(m.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Market, D::Error> {
        let s = String::deserialize(d)?;
        [Market::OnDemand, Market::Spot]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a market")))
    }
}

/// A job to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub name: String,
    pub document: serde_json::Value,
    pub submitted_by: String,
    pub org: Option<OrgName>,
    pub priority: i32,
}

/// What an attempt starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAttempt {
    pub pool: PoolName,
    pub instance_type: InstanceType,
    pub market: Market,
    pub price_per_hour: Money,
    /// What its agent will present (see [`AttemptRecord::token`]).
    pub token: String,
    /// An instance kept warm that it takes, made already (see
    /// [`AttemptRecord::warm`]); None: its instance is made for it.
    pub warm: Option<(InstanceId, String)>,
}

/// One step of a job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobStep {
    /// A queued job's next attempt starts (its instance is being made).
    Start(NewAttempt),
    /// Attempt `attempt`'s instance is made: it is `instance`.
    Created { attempt: u32, instance: InstanceId },
    /// Attempt `attempt`'s script runs (never once its job's cancel was
    /// asked for).
    Running { attempt: u32 },
    /// Attempt `attempt` ended with `end`; the job goes on as `after` says.
    End {
        attempt: u32,
        end: AttemptEnd,
        after: AfterAttempt,
    },
    /// Asked by `by`: a queued job ends at once; one under way has its
    /// cancel asked for, and the leader ends its attempt.
    Cancel { by: String },
    /// Why a queued job waits now.
    Reason(Option<String>),
    /// Attempt `attempt`'s agent reported (no change in the feed).
    Heartbeat { attempt: u32 },
}

impl JobStep {
    /// Whether only the leader takes this step (under its lease).
    /// The agent's own reports (its script runs, it exited, it is alive)
    /// and a cancel come from whichever server took them; they are
    /// checked against the job's version and attempt instead.
    pub fn is_leaders(&self) -> bool {
        matches!(
            self,
            JobStep::Start(_) | JobStep::Created { .. } | JobStep::Reason(_)
        )
    }
}

/// What a job in `state` cannot do.
fn refused(job: &JobRecord, what: &str) -> StoreError {
    StoreError::JobState {
        id: job.id,
        state: job.state,
        what: what.to_owned(),
    }
}

impl JobRecord {
    /// A new job's record, before it has an id.
    pub fn queued(job: &NewJob, id: JobId, now: DateTime<Utc>) -> Self {
        let now = millis(now);
        Self {
            id,
            name: job.name.clone(),
            document: job.document.clone(),
            submitted_by: job.submitted_by.clone(),
            org: job.org.clone(),
            priority: job.priority,
            state: JobState::Queued,
            reason: None,
            cancel_by: None,
            attempts: Vec::new(),
            submitted_at: now,
            updated_at: now,
            version: 1,
        }
    }

    /// Its place in the queue.
    pub fn queue_key(&self) -> QueueKey {
        QueueKey {
            priority: self.priority,
            submitted_at: self.submitted_at,
            id: self.id,
        }
    }

    /// The attempt under way, if one is.
    pub fn live_attempt(&self) -> Option<&AttemptRecord> {
        self.attempts.last().filter(|a| a.end.is_none())
    }

    /// The job after `step` at `now`, or why it cannot take it (nothing
    /// changed).
    pub fn apply(&self, step: &JobStep, now: DateTime<Utc>) -> Result<JobRecord, StoreError> {
        // As the database keeps times, so a record read back is the one
        // returned.
        let now = millis(now);
        let mut next = self.clone();
        next.updated_at = now;
        next.version = self.version + 1;
        match step {
            JobStep::Start(a) => {
                if self.state != JobState::Queued {
                    return Err(refused(self, "only a queued job starts an attempt"));
                }
                next.state = JobState::Starting;
                next.reason = None;
                next.attempts.push(AttemptRecord {
                    attempt: self.attempts.len() as u32 + 1,
                    pool: a.pool.clone(),
                    instance_type: a.instance_type.clone(),
                    market: a.market,
                    price_per_hour: a.price_per_hour,
                    instance: a.warm.as_ref().map(|(id, _)| id.clone()),
                    started_at: now,
                    running_at: None,
                    ended_at: None,
                    end: None,
                    seen_at: None,
                    token: a.token.clone(),
                    warm: a.warm.as_ref().map(|(_, hash)| hash.clone()),
                });
            }
            JobStep::Created { attempt, instance } => {
                let live = self.live(*attempt)?;
                if live.instance.is_some() {
                    return Err(refused(self, "an attempt's instance is made once"));
                }
                let a = next.attempts.last_mut().expect("live");
                a.instance = Some(instance.clone());
            }
            JobStep::Running { attempt } => {
                let live = self.live(*attempt)?;
                // Said again (its answer was lost): it runs already.
                if self.state == JobState::Running {
                    return Ok(self.clone());
                }
                if self.state != JobState::Starting || live.instance.is_none() {
                    return Err(refused(
                        self,
                        "only a starting attempt whose instance is made starts running",
                    ));
                }
                if self.cancel_by.is_some() {
                    return Err(refused(self, "its cancel was asked for: it runs nothing"));
                }
                next.state = JobState::Running;
                let a = next.attempts.last_mut().expect("live");
                a.running_at = Some(now);
                a.seen_at = Some(now);
            }
            JobStep::End {
                attempt,
                end,
                after,
            } => {
                self.live(*attempt)?;
                let a = next.attempts.last_mut().expect("live");
                a.ended_at = Some(now);
                a.end = Some(*end);
                match after {
                    // A job cancelled while its attempt ran is not tried
                    // again, whatever ended the attempt.
                    AfterAttempt::Retry if self.cancel_by.is_none() => {
                        next.state = JobState::Queued;
                    }
                    AfterAttempt::Retry => {
                        next.state = JobState::Cancelled;
                        next.reason = self
                            .cancel_by
                            .as_ref()
                            .map(|by| format!("cancelled by {by}"));
                    }
                    AfterAttempt::Ends(state) => {
                        if !state.is_final() {
                            return Err(refused(
                                self,
                                "an attempt's end leaves the job final or queued",
                            ));
                        }
                        next.state = *state;
                        if *state == JobState::Cancelled {
                            next.reason = self
                                .cancel_by
                                .as_ref()
                                .map(|by| format!("cancelled by {by}"));
                        }
                    }
                }
            }
            JobStep::Cancel { by } => match self.state {
                s if s.is_final() => return Err(refused(self, "an ended job cannot be cancelled")),
                JobState::Queued => {
                    next.state = JobState::Cancelled;
                    next.reason = Some(format!("cancelled by {by}"));
                    next.cancel_by = Some(by.clone());
                }
                _ if self.cancel_by.is_some() => return Ok(self.clone()),
                _ => next.cancel_by = Some(by.clone()),
            },
            JobStep::Heartbeat { attempt } => {
                self.live(*attempt)?;
                let a = next.attempts.last_mut().expect("live");
                a.seen_at = Some(now);
            }
            JobStep::Reason(reason) => {
                if self.state != JobState::Queued {
                    return Err(refused(self, "only a queued job waits"));
                }
                if &self.reason == reason {
                    return Ok(self.clone());
                }
                next.reason = reason.clone();
            }
        }
        Ok(next)
    }

    /// Attempt `attempt`, if it is the one under way.
    fn live(&self, attempt: u32) -> Result<&AttemptRecord, StoreError> {
        self.live_attempt()
            .filter(|a| a.attempt == attempt)
            .ok_or_else(|| refused(self, &format!("attempt {attempt} is not under way")))
    }
}

/// The change a submission records in the feed.
pub fn submitted(job: &JobRecord) -> NewChange {
    job_change(
        ChangeKind::JobSubmitted,
        job,
        format!("queued at priority {}", job.priority),
    )
}

/// The change `step`, which took a job from `before` to `after`, records
/// in the feed; none for a step that changed nothing, a heartbeat or an
/// instance made (the attempt's start said where it runs).
pub fn step_change(step: &JobStep, before: &JobRecord, after: &JobRecord) -> Option<NewChange> {
    if before.version == after.version {
        return None;
    }
    let attempt = after.attempts.last();
    let (kind, message) = match step {
        JobStep::Heartbeat { .. } | JobStep::Created { .. } => return None,
        JobStep::Reason(reason) => (
            ChangeKind::JobWaiting,
            reason.clone().unwrap_or_else(|| "waits".to_owned()),
        ),
        JobStep::Start(a) => (
            ChangeKind::JobStarted,
            format!(
                "attempt {} on {} ({}) from pool {} at ${}/h",
                attempt.map_or(0, |a| a.attempt),
                a.instance_type,
                a.market.as_str(),
                a.pool,
                a.price_per_hour
            ),
        ),
        JobStep::Running { attempt: n } => (
            ChangeKind::JobRunning,
            format!(
                "attempt {n} runs on {}",
                attempt
                    .and_then(|a| a.instance.as_ref())
                    .map_or("?", |i| i.as_str())
            ),
        ),
        JobStep::End {
            attempt: n, end, ..
        } => {
            if after.state.is_final() {
                (
                    ChangeKind::JobEnded,
                    format!("attempt {n}: {end} → {}", after.state),
                )
            } else {
                (
                    ChangeKind::JobAttemptEnded,
                    format!("attempt {n}: {end}; queued again"),
                )
            }
        }
        JobStep::Cancel { by } if after.state.is_final() => {
            (ChangeKind::JobEnded, format!("cancelled by {by}"))
        }
        JobStep::Cancel { by } => (
            ChangeKind::JobCancelAsked,
            format!("cancel asked by {by}: its attempt is being ended"),
        ),
    };
    let mut change = job_change(kind, after, message);
    // The agent of an instance kept warm waits for this one (see
    // `AttemptRecord::warm`): a hash, which gives nothing away.
    if let JobStep::Start(NewAttempt {
        warm: Some((_, hash)),
        ..
    }) = step
    {
        change.payload["warm"] = serde_json::Value::String(hash.clone());
    }
    Some(change)
}

fn job_change(kind: ChangeKind, job: &JobRecord, message: String) -> NewChange {
    NewChange {
        kind,
        key: job.id.to_string(),
        payload: serde_json::json!({
            "name": job.name,
            "submitted_by": job.submitted_by,
            "org": job.org.as_ref().map(ToString::to_string),
            "state": job.state.as_str(),
            "attempt": job.attempts.last().map(|a| a.attempt),
            "message": message,
        }),
    }
}

#[async_trait]
pub trait JobStore: Send + Sync {
    /// Queues a job: its id is one more than the last job's.
    async fn submit_job(&self, job: &NewJob, now: DateTime<Utc>) -> Result<JobRecord, StoreError>;

    async fn job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError>;

    /// Up to `limit` jobs, the newest first; of `submitted_by` only, if
    /// given.
    async fn jobs(
        &self,
        submitted_by: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError>;

    /// Every job not ended (queued, starting or running), in queue order.
    async fn live_jobs(&self) -> Result<Vec<JobRecord>, StoreError>;

    /// Takes `step` on job `id`, if it is still at `version` when one is
    /// given (else [`StoreError::Stale`]), in one transaction; the
    /// leader's steps under its lease `fence` (else
    /// [`StoreError::Fenced`]). Nothing changes when refused.
    async fn step_job(
        &self,
        id: JobId,
        version: Option<u64>,
        step: &JobStep,
        fence: Option<Fence>,
        now: DateTime<Utc>,
    ) -> Result<JobRecord, StoreError>;

    /// Moves the meters of the job attempts' instances after a listing of
    /// them taken in at `now`: `listed` holds the meter each listed
    /// instance of a job charged to an organisation would get (see
    /// [`crate::meters::on_job_listing`]; meters of organisations that do
    /// not exist are skipped). One transaction, refused (`Fenced`) after
    /// the term ends.
    async fn meter_job_instances(
        &self,
        fence: Fence,
        listed: &[NodeMeter],
        unwatched: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

/// [`JobStore::step_job`]'s work once the job is read (`job`, None: there
/// is none) and the fence checked: the job as it is to be written.
pub fn next_job(
    job: Option<&JobRecord>,
    id: JobId,
    version: Option<u64>,
    step: &JobStep,
    fence: Option<Fence>,
    now: DateTime<Utc>,
) -> Result<JobRecord, StoreError> {
    let job = job.ok_or_else(|| StoreError::NotFound(format!("job {id}")))?;
    if step.is_leaders() && fence.is_none() {
        return Err(refused(
            job,
            "this step is the leader's, taken under its lease",
        ));
    }
    if let Some(version) = version.filter(|v| *v != job.version) {
        return Err(StoreError::Stale {
            what: format!("job {id}"),
            expected: version,
            found: job.version,
        });
    }
    job.apply(step, now)
}

/// `t` to the millisecond, as the database keeps it.
pub(crate) fn millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}
