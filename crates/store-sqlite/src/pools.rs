//! Pools written through the API: each write through the one writer, so
//! reading the latest version and writing the next cannot interleave with
//! another write.

use chrono::{DateTime, Utc};
use flotilla_domain::{PoolName, SharedConfigName};
use flotilla_store::sql::{self as row, PoolRow, SharedConfigRow};
use flotilla_store::{
    check_stale, in_use, next_shared_version, next_version, pool_change, shared_config_change,
    PoolRecord, PoolStore, PoolWrite, SharedConfigRecord, SharedConfigStore, SharedConfigWrite,
    StoreError,
};

use crate::{record_changes, SqliteStore};

pub(crate) async fn write(
    store: &SqliteStore,
    write: &PoolWrite,
    now: DateTime<Utc>,
) -> Result<PoolRecord, StoreError> {
    let mut tx = store.begin_write().await?;
    let found: i64 = sqlx::query_scalar(row::POOL_VERSION)
        .bind(write.name.as_str())
        .fetch_one(&mut *tx)
        .await?;
    check_stale(write, u64::try_from(found).unwrap_or(0))?;
    if write.document.is_none() {
        let users: Vec<String> = sqlx::query_scalar(row::POOL_USERS)
            .bind(write.name.as_str())
            .fetch_all(&mut *tx)
            .await?;
        if !users.is_empty() {
            return Err(in_use(&write.name, users));
        }
    }
    let record = next_version(write, write.expected, now);
    sqlx::query(row::POOL_INSERT)
        .bind(record.name.as_str())
        .bind(record.version as i64)
        .bind(record.document.as_ref().map(|d| d.to_string()))
        .bind(i64::from(record.schema_version))
        .bind(row::to_millis(now))
        .bind(&record.by)
        .execute(&mut *tx)
        .await
        .map_err(|e| row::stale_if_taken(e, format!("pool {}", write.name), write.expected))?;
    record_changes(&mut tx, &[pool_change(&record)], now).await?;
    store.commit(tx).await?;
    Ok(record)
}

pub(crate) async fn latest(store: &SqliteStore) -> Result<Vec<PoolRecord>, StoreError> {
    let rows: Vec<PoolRow> = sqlx::query_as(&row::pools_latest_select())
        .fetch_all(&store.reader)
        .await?;
    rows.into_iter().map(PoolRecord::try_from).collect()
}

pub(crate) async fn history(
    store: &SqliteStore,
    name: &PoolName,
) -> Result<Vec<PoolRecord>, StoreError> {
    let rows: Vec<PoolRow> = sqlx::query_as(&row::pool_history_select())
        .bind(name.as_str())
        .fetch_all(&store.reader)
        .await?;
    rows.into_iter().map(PoolRecord::try_from).collect()
}

#[async_trait::async_trait]
impl PoolStore for SqliteStore {
    async fn write_pool(
        &self,
        pool: &PoolWrite,
        now: DateTime<Utc>,
    ) -> Result<PoolRecord, StoreError> {
        write(self, pool, now).await
    }

    async fn pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        latest(self).await
    }

    async fn pool_history(&self, name: &PoolName) -> Result<Vec<PoolRecord>, StoreError> {
        history(self, name).await
    }
}

/// Writes a shared config's next version (see the module's note on
/// racing writers, which holds here too).
pub(crate) async fn write_shared(
    store: &SqliteStore,
    write: &SharedConfigWrite,
    now: DateTime<Utc>,
) -> Result<SharedConfigRecord, StoreError> {
    let mut tx = store.begin_write().await?;
    let rows: Vec<SharedConfigRow> = sqlx::query_as(&row::shared_config_versions_select())
        .bind(write.name.as_str())
        .fetch_all(&mut *tx)
        .await?;
    let versions = rows
        .into_iter()
        .map(SharedConfigRecord::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let found = versions.last().map_or(0, |r| r.version);
    let record = next_shared_version(write, found, versions.first(), now)?;
    sqlx::query(row::SHARED_CONFIG_INSERT)
        .bind(record.name.as_str())
        .bind(record.version as i64)
        .bind(&record.kind)
        .bind(record.schema.to_string())
        .bind(record.value.to_string())
        .bind(row::to_millis(now))
        .bind(&record.by)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            row::stale_if_taken(e, format!("shared config {}", write.name), write.expected)
        })?;
    record_changes(&mut tx, &[shared_config_change(&record)], now).await?;
    store.commit(tx).await?;
    Ok(record)
}

#[async_trait::async_trait]
impl SharedConfigStore for SqliteStore {
    async fn write_shared_config(
        &self,
        write: &SharedConfigWrite,
        now: DateTime<Utc>,
    ) -> Result<SharedConfigRecord, StoreError> {
        write_shared(self, write, now).await
    }

    async fn shared_configs(&self) -> Result<Vec<SharedConfigRecord>, StoreError> {
        let rows: Vec<SharedConfigRow> = sqlx::query_as(&row::shared_configs_latest_select())
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(SharedConfigRecord::try_from).collect()
    }

    async fn shared_config_versions(
        &self,
        name: &SharedConfigName,
    ) -> Result<Vec<SharedConfigRecord>, StoreError> {
        let rows: Vec<SharedConfigRow> = sqlx::query_as(&row::shared_config_versions_select())
            .bind(name.as_str())
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(SharedConfigRecord::try_from).collect()
    }
}

/// Pauses, resumes and stops rollouts: one row per held pool, each write
/// with its change in one transaction.
pub(crate) mod rollouts {
    use super::*;
    use flotilla_store::sql::RolloutRow;
    use flotilla_store::{
        pause_change, resume_change, stop_change, Fence, RolloutHold, RolloutStop, RolloutStore,
    };

    #[async_trait::async_trait]
    impl RolloutStore for SqliteStore {
        async fn pause_rollout(
            &self,
            pool: &PoolName,
            by: &str,
            now: DateTime<Utc>,
        ) -> Result<RolloutHold, StoreError> {
            let store = self;
            let mut tx = store.begin_write().await?;
            sqlx::query(row::ROLLOUT_PAUSE)
                .bind(pool.as_str())
                .bind(by)
                .bind(row::to_millis(now))
                .execute(&mut *tx)
                .await?;
            let held: RolloutRow = sqlx::query_as(row::ROLLOUT_SELECT)
                .bind(pool.as_str())
                .fetch_one(&mut *tx)
                .await?;
            record_changes(&mut tx, &[pause_change(pool, by)], now).await?;
            store.commit(tx).await?;
            RolloutHold::try_from(held)
        }

        async fn resume_rollout(
            &self,
            pool: &PoolName,
            by: &str,
            now: DateTime<Utc>,
        ) -> Result<bool, StoreError> {
            let store = self;
            let mut tx = store.begin_write().await?;
            let removed = sqlx::query(row::ROLLOUT_RESUME)
                .bind(pool.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            record_changes(&mut tx, &[resume_change(pool, by)], now).await?;
            store.commit(tx).await?;
            Ok(removed > 0)
        }

        async fn stop_rollout(
            &self,
            fence: Fence,
            pool: &PoolName,
            stop: &RolloutStop,
            now: DateTime<Utc>,
        ) -> Result<(), StoreError> {
            let store = self;
            let mut tx = store.begin_write().await?;
            crate::lease::check_fence(&mut tx, fence).await?;
            sqlx::query(row::ROLLOUT_STOP)
                .bind(pool.as_str())
                .bind(stop.version.as_str())
                .bind(&stop.reason)
                .bind(row::to_millis(stop.at))
                .execute(&mut *tx)
                .await?;
            record_changes(&mut tx, &[stop_change(pool, stop)], now).await?;
            store.commit(tx).await?;
            Ok(())
        }

        async fn rollout_holds(&self) -> Result<Vec<RolloutHold>, StoreError> {
            let rows: Vec<RolloutRow> = sqlx::query_as(row::ROLLOUTS_SELECT)
                .fetch_all(&self.reader)
                .await?;
            rows.into_iter().map(RolloutHold::try_from).collect()
        }
    }
}
