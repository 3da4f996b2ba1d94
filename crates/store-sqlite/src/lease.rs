//! The leader's lease and the nodes the leader publishes. One write
//! connection with `BEGIN IMMEDIATE` serialises every write, so a fence is
//! checked by reading the lease inside the writer's transaction.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{ClusterName, NewChange, NodeRecord, Obstacle, PoolError, PoolName};
use flotilla_store::sql::{self as row, LeaseRow, NodeRow};
use flotilla_store::{ClusterNodes, ClusterObstacle, Fence, Lease, LeaseStore, StoreError};
use sqlx::sqlite::SqliteConnection;

use crate::{record_changes, SqliteStore};

/// `Fenced` unless `fence` is the current term. Inside the caller's write
/// transaction, which no other writer can interleave with.
pub(crate) async fn check_fence(
    conn: &mut SqliteConnection,
    fence: Fence,
) -> Result<(), StoreError> {
    let current: Option<i64> = sqlx::query_scalar("SELECT epoch FROM leases WHERE name = 'leader'")
        .fetch_optional(&mut *conn)
        .await?;
    let current = current.unwrap_or(0);
    if current != fence.0 {
        return Err(StoreError::Fenced { fence, current });
    }
    Ok(())
}

fn until(now: DateTime<Utc>, ttl: Duration) -> i64 {
    row::to_millis(now) + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn acquire_lease(
        &self,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<Fence>, StoreError> {
        let mut tx = self.begin_write().await?;
        let epoch: Option<i64> = sqlx::query_scalar(
            "INSERT INTO leases (name, holder, epoch, expires_at) VALUES ('leader', $1, 1, $2) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 epoch = leases.epoch + 1, expires_at = excluded.expires_at \
             WHERE leases.expires_at <= $3 OR leases.holder = excluded.holder \
             RETURNING epoch",
        )
        .bind(holder)
        .bind(until(now, ttl))
        .bind(row::to_millis(now))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(epoch) = epoch else {
            return Ok(None);
        };
        record_changes(&mut tx, &[NewChange::lease_taken(holder, epoch)], now).await?;
        self.commit(tx).await?;
        Ok(Some(Fence(epoch)))
    }

    async fn renew_lease(
        &self,
        holder: &str,
        fence: Fence,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE leases SET expires_at = $1 WHERE name = 'leader' AND holder = $2 AND epoch = $3",
        )
        .bind(until(now, ttl))
        .bind(holder)
        .bind(fence.0)
        .execute(&self.lease_writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(&self, holder: &str, fence: Fence) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE leases SET expires_at = 0 WHERE name = 'leader' AND holder = $1 AND epoch = $2",
        )
        .bind(holder)
        .bind(fence.0)
        .execute(&self.lease_writer)
        .await?;
        Ok(())
    }

    async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        let row: Option<LeaseRow> = sqlx::query_as(row::LEASE_SELECT)
            .fetch_optional(&self.reader)
            .await?;
        row.map(Lease::try_from).transpose()
    }

    async fn publish_nodes(
        &self,
        fence: Fence,
        clusters: &[ClusterNodes],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        check_fence(&mut tx, fence).await?;
        let mut changes = Vec::with_capacity(clusters.len());
        for c in clusters {
            sqlx::query("DELETE FROM nodes WHERE cluster = $1")
                .bind(c.cluster.as_str())
                .execute(&mut *tx)
                .await?;
            for n in &c.nodes {
                sqlx::query(
                    "INSERT INTO nodes (cluster, id, instance_type, launched_at, state, state_since, address, \
                         pool_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(c.cluster.as_str())
                .bind(n.id.as_str())
                .bind(n.instance_type.as_str())
                .bind(row::to_millis(n.launched_at))
                .bind(n.state.as_str())
                .bind(row::to_millis(n.state_since))
                .bind(n.address.as_deref())
                .bind(n.pool_version.as_ref().map(|v| v.as_str()))
                .execute(&mut *tx)
                .await?;
            }
            changes.push(NewChange::nodes(&c.cluster, c.is_public, &c.nodes));
            crate::meters::on_publish(&mut tx, c, now).await?;
        }
        record_changes(&mut tx, &changes, now).await?;
        self.commit(tx).await?;
        Ok(())
    }

    async fn published_nodes(
        &self,
        cluster: Option<&ClusterName>,
    ) -> Result<Vec<(ClusterName, NodeRecord)>, StoreError> {
        let rows: Vec<NodeRow> = sqlx::query_as(row::NODES_SELECT)
            .bind(cluster.is_none())
            .bind(cluster.map(ClusterName::as_str))
            .fetch_all(&self.reader)
            .await?;
        row::published_nodes(rows)
    }

    async fn publish_obstacles(
        &self,
        fence: Fence,
        obstacles: &[ClusterObstacle],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        check_fence(&mut tx, fence).await?;
        let mut changes = Vec::with_capacity(obstacles.len());
        for o in obstacles {
            let exists: Option<bool> =
                sqlx::query_scalar("SELECT TRUE FROM clusters WHERE name = $1")
                    .bind(o.cluster.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_none() {
                continue;
            }
            match &o.obstacle {
                Some(ob) => {
                    sqlx::query(row::OBSTACLE_UPSERT)
                        .bind(o.cluster.as_str())
                        .bind(ob.code.as_str())
                        .bind(&ob.message)
                        .bind(row::to_millis(ob.since))
                        .bind(row::to_millis(ob.last_at))
                        .bind(i64::from(ob.count))
                        .bind(ob.retry_at.map(row::to_millis))
                        .execute(&mut *tx)
                        .await?;
                }
                None => {
                    sqlx::query("DELETE FROM obstacles WHERE cluster = $1")
                        .bind(o.cluster.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            changes.push(NewChange::obstacle(
                &o.cluster,
                o.is_public,
                o.obstacle.as_ref(),
            ));
        }
        record_changes(&mut tx, &changes, now).await?;
        self.commit(tx).await?;
        Ok(())
    }

    async fn published_obstacles(&self) -> Result<Vec<(ClusterName, Obstacle)>, StoreError> {
        let rows: Vec<row::ObstacleRow> = sqlx::query_as(row::OBSTACLES_SELECT)
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter()
            .map(<(ClusterName, Obstacle)>::try_from)
            .collect()
    }

    async fn record_pool_errors(
        &self,
        fence: Fence,
        errors: &[PoolError],
        _now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if errors.is_empty() {
            return Ok(());
        }
        let upsert = row::pool_error_upsert("min", "max");
        let mut tx = self.begin_write().await?;
        check_fence(&mut tx, fence).await?;
        for e in errors {
            sqlx::query(&upsert)
                .bind(e.key.pool.as_str())
                .bind(e.key.kind.as_str())
                .bind(row::pool_error_code(e))
                .bind(e.key.cluster.as_str())
                .bind(e.key.instance_type.as_str())
                .bind(&e.message)
                .bind(i64::try_from(e.count).unwrap_or(i64::MAX))
                .bind(row::to_millis(e.first_at))
                .bind(row::to_millis(e.last_at))
                .execute(&mut *tx)
                .await?;
        }
        self.commit(tx).await?;
        Ok(())
    }

    async fn pool_errors(
        &self,
        pool: &PoolName,
        only: Option<&[ClusterName]>,
        limit: usize,
    ) -> Result<Vec<PoolError>, StoreError> {
        let select = row::pool_errors_select("cluster IN (SELECT value FROM json_each($4))");
        let rows: Vec<row::PoolErrorRow> = sqlx::query_as(&select)
            .bind(pool.as_str())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(only.is_none())
            .bind(
                serde_json::to_string(
                    &only
                        .unwrap_or_default()
                        .iter()
                        .map(ClusterName::as_str)
                        .collect::<Vec<_>>(),
                )
                .expect("names serialise"),
            )
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(PoolError::try_from).collect()
    }

    async fn prune_pool_errors(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM pool_errors WHERE last_at < $1")
            .bind(row::to_millis(before))
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }
}
