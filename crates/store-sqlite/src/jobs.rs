//! Jobs: each step a read of the job and a write of it back in one
//! transaction through the one writer, so no two steps interleave.

use chrono::{DateTime, Utc};
use flotilla_domain::NodeMeter;
use flotilla_store::sql::{self as row, JobRow};
use flotilla_store::{
    next_job, step_change, submitted, Fence, JobId, JobRecord, JobStep, JobStore, NewJob,
    StoreError,
};

use crate::SqliteStore;

fn bind_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Queues `job` inside the caller's write transaction, with its
/// `job.submitted` change.
pub(crate) async fn insert_job(
    conn: &mut sqlx::SqliteConnection,
    job: &NewJob,
    now: DateTime<Utc>,
) -> Result<JobRecord, StoreError> {
    let mut record = JobRecord::queued(job, 0, now);
    let id: i64 = sqlx::query_scalar(row::JOB_INSERT)
        .bind(&record.name)
        .bind(record.document.to_string())
        .bind(&record.submitted_by)
        .bind(record.org.as_ref().map(|o| o.to_string()))
        .bind(i64::from(record.priority))
        .bind(record.state.as_str())
        .bind(&record.reason)
        .bind(&record.cancel_by)
        .bind(row::attempts_json(&record))
        .bind(row::to_millis(now))
        .bind(row::to_millis(now))
        .bind(record.version as i64)
        .fetch_one(&mut *conn)
        .await?;
    record.id = u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("job id {id}")))?;
    crate::record_changes(conn, &[submitted(&record)], now).await?;
    Ok(record)
}

#[async_trait::async_trait]
impl JobStore for SqliteStore {
    async fn submit_job(&self, job: &NewJob, now: DateTime<Utc>) -> Result<JobRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let record = insert_job(&mut tx, job, now).await?;
        self.commit(tx).await?;
        Ok(record)
    }
    async fn job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let found: Option<JobRow> = sqlx::query_as(&format!("{} WHERE id = $1", row::JOB_SELECT))
            .bind(id as i64)
            .fetch_optional(&self.reader)
            .await?;
        found.map(JobRecord::try_from).transpose()
    }

    async fn jobs(
        &self,
        submitted_by: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(&row::jobs_select())
            .bind(submitted_by)
            .bind(bind_limit(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(JobRecord::try_from).collect()
    }

    async fn live_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(&row::live_jobs_select())
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(JobRecord::try_from).collect()
    }

    async fn step_job(
        &self,
        id: JobId,
        version: Option<u64>,
        step: &JobStep,
        fence: Option<Fence>,
        now: DateTime<Utc>,
    ) -> Result<JobRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some(fence) = fence {
            crate::lease::check_fence(&mut tx, fence).await?;
        }
        let found: Option<JobRow> = sqlx::query_as(&format!("{} WHERE id = $1", row::JOB_SELECT))
            .bind(id as i64)
            .fetch_optional(&mut *tx)
            .await?;
        let job = found.map(JobRecord::try_from).transpose()?;
        let next = next_job(job.as_ref(), id, version, step, fence, now)?;
        let before = job.expect("next_job needs the job");
        let read = before.version;
        if next.version != read {
            sqlx::query(row::JOB_UPDATE)
                .bind(id as i64)
                .bind(next.state.as_str())
                .bind(&next.reason)
                .bind(&next.cancel_by)
                .bind(row::attempts_json(&next))
                .bind(row::to_millis(next.updated_at))
                .bind(next.version as i64)
                .bind(read as i64)
                .execute(&mut *tx)
                .await?;
            if let Some(change) = step_change(step, &before, &next) {
                crate::record_changes(&mut tx, &[change], now).await?;
            }
            self.commit(tx).await?;
        }
        Ok(next)
    }

    async fn meter_job_instances(
        &self,
        fence: Fence,
        listed: &[NodeMeter],
        unwatched: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        crate::lease::check_fence(&mut tx, fence).await?;
        crate::meters::on_job_listing(&mut tx, listed, unwatched, now).await?;
        self.commit(tx).await
    }
}
