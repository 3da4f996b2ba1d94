//! Schedules: each a row holding the schedule as JSON and its revision.
//! Every write is checked against the revision read; a fire is the
//! leader's, fenced by its lease, and writes the job it queues in the same
//! transaction, so one due time queues one job however many servers race.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{ChangeKind, NewChange, Schedule};

use crate::{Fence, JobRecord, NewJob, StoreError};

/// The change a write of `schedule` records.
pub fn schedule_change(kind: ChangeKind, schedule: &Schedule, message: String) -> NewChange {
    NewChange {
        kind,
        key: schedule.name.clone(),
        payload: serde_json::json!({
            "cron": schedule.cron,
            "template": schedule.template,
            "cluster": schedule.cluster.as_str(),
            "version": schedule.version,
            "paused": schedule.paused,
            "next_at": schedule.next_at,
            "last_job": schedule.last_job,
            "message": message,
        }),
    }
}

/// What a fire records: queued a job, or why not.
pub fn fired_change(after: &Schedule, job: Option<&JobRecord>) -> NewChange {
    let message = match (job, &after.last_error) {
        (Some(j), _) => format!("queued job {} ({})", j.id, j.name),
        (None, Some(why)) => format!("queued nothing: {why}"),
        (None, None) => "missed while no server led; skipped".to_owned(),
    };
    schedule_change(ChangeKind::ScheduleFired, after, message)
}

/// `schedule` as stored.
pub fn schedule_json(schedule: &Schedule) -> String {
    serde_json::to_string(schedule).expect("a schedule serialises")
}

/// A schedule as read back.
pub fn schedule_from(text: &str) -> Result<Schedule, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("a schedule: {e}")))
}

/// `Stale` unless `found` is at `before`'s revision.
pub fn check_revision(before: &Schedule, found: Option<i64>) -> Result<(), StoreError> {
    match found {
        None => Err(StoreError::NotFound(format!("schedule {}", before.name))),
        Some(r) if r == before.revision as i64 => Ok(()),
        Some(r) => Err(StoreError::Stale {
            what: format!("schedule {}", before.name),
            expected: before.revision,
            found: r.max(0) as u64,
        }),
    }
}

#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Keeps a new schedule (`Duplicate` if one has its name), with its
    /// `schedule.created` change.
    async fn create_schedule(
        &self,
        schedule: &Schedule,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Every schedule, by name.
    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError>;

    /// Replaces `before` with `after` (paused, resumed), if it is still at
    /// `before`'s revision (else `Stale`), with a change of `kind`.
    async fn update_schedule(
        &self,
        before: &Schedule,
        after: &Schedule,
        kind: ChangeKind,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Removes a schedule; false if there was none.
    async fn delete_schedule(&self, name: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// A fire: `before` becomes `after` and `job`, if any, is queued, in
    /// one transaction under the leader's `fence`; `Stale` if another
    /// write came first (the fire happened, or the schedule changed).
    async fn fire_schedule(
        &self,
        before: &Schedule,
        after: &Schedule,
        job: Option<&NewJob>,
        fence: Fence,
        now: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, StoreError>;
}
