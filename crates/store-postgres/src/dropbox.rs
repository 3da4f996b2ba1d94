//! Drop-box triggers handled: a row each, by path and digest; a note is
//! an insert that does nothing if the row is there, under the leader's
//! fence checked in the same transaction.

use chrono::{DateTime, Utc};
use flotilla_store::sql::{from_millis, to_millis};
use flotilla_store::{DropboxStore, Fence, HandledTrigger, StoreError};

use crate::PostgresStore;

type Row = (String, String, String, String, String, String, i64);

fn trigger(row: Row) -> Result<HandledTrigger, StoreError> {
    let (path, digest, account, cluster, outcome, message, at) = row;
    let handled_at = from_millis(at, || format!("the handling of trigger {path}"))?;
    Ok(HandledTrigger {
        path,
        digest,
        account,
        cluster,
        outcome,
        message,
        handled_at,
    })
}

#[async_trait::async_trait]
impl DropboxStore for PostgresStore {
    async fn note_trigger(
        &self,
        trigger: &HandledTrigger,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        crate::lease::check_fence(&mut tx, fence).await?;
        let noted = sqlx::query(
            "INSERT INTO dropbox_triggers \
                 (path, digest, account, cluster, outcome, message, handled_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (path, digest) DO NOTHING",
        )
        .bind(&trigger.path)
        .bind(&trigger.digest)
        .bind(&trigger.account)
        .bind(&trigger.cluster)
        .bind(&trigger.outcome)
        .bind(&trigger.message)
        .bind(to_millis(trigger.handled_at))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(noted == 1)
    }

    async fn handled_trigger(
        &self,
        path: &str,
        digest: &str,
    ) -> Result<Option<HandledTrigger>, StoreError> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT path, digest, account, cluster, outcome, message, handled_at \
             FROM dropbox_triggers WHERE path = $1 AND digest = $2",
        )
        .bind(path)
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        row.map(trigger).transpose()
    }

    async fn handled_triggers(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<HandledTrigger>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT path, digest, account, cluster, outcome, message, handled_at \
             FROM dropbox_triggers WHERE handled_at >= $1 \
             ORDER BY handled_at, path, digest",
        )
        .bind(to_millis(since))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(trigger).collect()
    }

    async fn forget_triggers(
        &self,
        before: DateTime<Utc>,
        fence: Fence,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        crate::lease::check_fence(&mut tx, fence).await?;
        let gone = sqlx::query("DELETE FROM dropbox_triggers WHERE handled_at < $1")
            .bind(to_millis(before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }
}
