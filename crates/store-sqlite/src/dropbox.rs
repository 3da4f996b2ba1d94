//! Drop-box triggers handled: a row each, by path and digest; a note is
//! an insert that does nothing if the row is there, under the leader's
//! fence checked in the same transaction.

use chrono::{DateTime, Utc};
use flotilla_store::sql::to_millis;
use flotilla_store::sql::triggers::{self, trigger, Row};
use flotilla_store::{DropboxStore, Fence, HandledTrigger, StoreError};

use crate::SqliteStore;

#[async_trait::async_trait]
impl DropboxStore for SqliteStore {
    async fn note_trigger(
        &self,
        trigger: &HandledTrigger,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        crate::lease::check_fence(&mut tx, fence).await?;
        let noted = sqlx::query(triggers::NOTE)
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
        if noted == 1 {
            if let Some(change) = trigger.change() {
                crate::record_changes(&mut tx, &[change], trigger.handled_at).await?;
            }
        }
        self.commit(tx).await?;
        Ok(noted == 1)
    }

    async fn handled_trigger(
        &self,
        path: &str,
        digest: &str,
    ) -> Result<Option<HandledTrigger>, StoreError> {
        let row: Option<Row> = sqlx::query_as(triggers::ONE)
            .bind(path)
            .bind(digest)
            .fetch_optional(&self.reader)
            .await?;
        row.map(trigger).transpose()
    }

    async fn handled_triggers(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<HandledTrigger>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(triggers::SINCE)
            .bind(to_millis(since))
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(trigger).collect()
    }

    async fn forget_triggers(
        &self,
        before: DateTime<Utc>,
        fence: Fence,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        crate::lease::check_fence(&mut tx, fence).await?;
        let gone = sqlx::query(triggers::FORGET)
            .bind(to_millis(before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(gone)
    }
}
