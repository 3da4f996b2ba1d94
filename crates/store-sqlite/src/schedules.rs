//! Schedules: a row each, the schedule as JSON with its revision; every
//! write through the one writer, checked against the revision read.

use chrono::{DateTime, Utc};
use flotilla_domain::{ChangeKind, Schedule};
use flotilla_store::{
    check_revision, fired_change, schedule_change, schedule_from, schedule_json, Fence, JobRecord,
    NewJob, ScheduleStore, StoreError,
};

use crate::SqliteStore;

async fn revision_in(
    conn: &mut sqlx::SqliteConnection,
    name: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT revision FROM schedules WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

async fn write(conn: &mut sqlx::SqliteConnection, after: &Schedule) -> Result<(), StoreError> {
    sqlx::query("UPDATE schedules SET record = $2, revision = $3 WHERE name = $1")
        .bind(&after.name)
        .bind(schedule_json(after))
        .bind(after.revision as i64)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[async_trait::async_trait]
impl ScheduleStore for SqliteStore {
    async fn create_schedule(
        &self,
        schedule: &Schedule,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        if revision_in(&mut tx, &schedule.name).await?.is_some() {
            return Err(StoreError::Duplicate(format!("schedule {}", schedule.name)));
        }
        sqlx::query("INSERT INTO schedules (name, record, revision) VALUES ($1, $2, $3)")
            .bind(&schedule.name)
            .bind(schedule_json(schedule))
            .bind(schedule.revision as i64)
            .execute(&mut *tx)
            .await?;
        let change = schedule_change(
            ChangeKind::ScheduleCreated,
            schedule,
            format!("created by {}", schedule.created_by),
        );
        crate::record_changes(&mut tx, &[change], now).await?;
        self.commit(tx).await
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT record FROM schedules ORDER BY name")
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(|r| schedule_from(r)).collect()
    }

    async fn update_schedule(
        &self,
        before: &Schedule,
        after: &Schedule,
        kind: ChangeKind,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        check_revision(before, revision_in(&mut tx, &before.name).await?)?;
        write(&mut tx, after).await?;
        let message = if after.paused { "paused" } else { "resumed" };
        let change = schedule_change(kind, after, message.to_owned());
        crate::record_changes(&mut tx, &[change], now).await?;
        self.commit(tx).await
    }

    async fn delete_schedule(&self, name: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let gone: Option<String> =
            sqlx::query_scalar("DELETE FROM schedules WHERE name = $1 RETURNING record")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(gone) = gone else {
            return Ok(false);
        };
        let change = schedule_change(
            ChangeKind::ScheduleDeleted,
            &schedule_from(&gone)?,
            "deleted".to_owned(),
        );
        crate::record_changes(&mut tx, &[change], now).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn fire_schedule(
        &self,
        before: &Schedule,
        after: &Schedule,
        job: Option<&NewJob>,
        fence: Fence,
        now: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        crate::lease::check_fence(&mut tx, fence).await?;
        check_revision(before, revision_in(&mut tx, &before.name).await?)?;
        let queued = match job {
            Some(job) => Some(crate::jobs::insert_job(&mut tx, job, now).await?),
            None => None,
        };
        let mut after = after.clone();
        if let Some(j) = &queued {
            after.last_job = Some(j.id);
        }
        write(&mut tx, &after).await?;
        crate::record_changes(&mut tx, &[fired_change(&after, queued.as_ref())], now).await?;
        self.commit(tx).await?;
        Ok(queued)
    }
}
