//! The leader's lease and the nodes the leader publishes.
//!
//! The lease keeps time by the database's clock (`clock_timestamp()`), not
//! the caller's, so servers whose clocks disagree still agree on when a
//! lease ends. A fenced write reads the lease row `FOR SHARE` first: a
//! takeover (which updates that row) waits for the writes of the ending
//! term to commit, and a write that starts after the takeover sees the new
//! epoch and is refused. The lease row is always the first lock such a
//! transaction takes, and the feed's lock its last, so they cannot
//! deadlock.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{ClusterName, NewChange, NodeRecord, Obstacle, PoolError, PoolName};
use flotilla_store::sql::{self as row, LeaseRow, NodeRow};
use flotilla_store::{ClusterNodes, ClusterObstacle, Fence, Lease, LeaseStore, StoreError};
use sqlx::PgConnection;

use crate::{commit_with, PostgresStore};

/// The database's clock in unix milliseconds.
const DB_NOW: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// `Fenced` unless `fence` is the current term; holds the lease row shared
/// until the caller's transaction ends.
pub(crate) async fn check_fence(conn: &mut PgConnection, fence: Fence) -> Result<(), StoreError> {
    let current: Option<i64> =
        sqlx::query_scalar("SELECT epoch FROM leases WHERE name = 'leader' FOR SHARE")
            .fetch_optional(&mut *conn)
            .await?;
    let current = current.unwrap_or(0);
    if current != fence.0 {
        return Err(StoreError::Fenced { fence, current });
    }
    Ok(())
}

fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn acquire_lease(
        &self,
        holder: &str,
        ttl: Duration,
        _now: DateTime<Utc>,
    ) -> Result<Option<Fence>, StoreError> {
        let mut tx = self.begin().await?;
        // One statement: of racing servers, the first to lock the row takes
        // it; the others then see it taken and update nothing.
        let epoch: Option<i64> = sqlx::query_scalar(&format!(
            "INSERT INTO leases (name, holder, epoch, expires_at) \
                 VALUES ('leader', $1, 1, {DB_NOW} + $2) \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, \
                 epoch = leases.epoch + 1, expires_at = EXCLUDED.expires_at \
             WHERE leases.expires_at <= {DB_NOW} OR leases.holder = EXCLUDED.holder \
             RETURNING epoch"
        ))
        .bind(holder)
        .bind(millis(ttl))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(epoch) = epoch else {
            return Ok(None);
        };
        commit_with(tx, &[NewChange::lease_taken(holder, epoch)], Utc::now()).await?;
        Ok(Some(Fence(epoch)))
    }

    async fn renew_lease(
        &self,
        holder: &str,
        fence: Fence,
        ttl: Duration,
        _now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE leases SET expires_at = {DB_NOW} + $1 \
             WHERE name = 'leader' AND holder = $2 AND epoch = $3"
        ))
        .bind(millis(ttl))
        .bind(holder)
        .bind(fence.0)
        .execute(&self.lease_pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(&self, holder: &str, fence: Fence) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE leases SET expires_at = 0 WHERE name = 'leader' AND holder = $1 AND epoch = $2",
        )
        .bind(holder)
        .bind(fence.0)
        .execute(&self.lease_pool)
        .await?;
        Ok(())
    }

    async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        let row: Option<LeaseRow> = sqlx::query_as(row::LEASE_SELECT)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Lease::try_from).transpose()
    }

    async fn publish_nodes(
        &self,
        fence: Fence,
        clusters: &[ClusterNodes],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        check_fence(&mut tx, fence).await?;
        sqlx::query("DELETE FROM nodes WHERE cluster = ANY($1)")
            .bind(
                clusters
                    .iter()
                    .map(|c| c.cluster.as_str())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await?;
        let rows: Vec<(&str, &NodeRecord)> = clusters
            .iter()
            .flat_map(|c| c.nodes.iter().map(move |n| (c.cluster.as_str(), n)))
            .collect();
        sqlx::query(
            "INSERT INTO nodes (cluster, id, instance_type, launched_at, state, state_since, address, \
                 pool_version) \
             SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], \
                 $6::BIGINT[], $7::TEXT[], $8::TEXT[])",
        )
        .bind(rows.iter().map(|(c, _)| *c).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, n)| n.id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, n)| n.instance_type.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, n)| row::to_millis(n.launched_at)).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, n)| n.state.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, n)| row::to_millis(n.state_since)).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, n)| n.address.as_deref()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|(_, n)| n.pool_version.as_ref().map(|v| v.as_str()))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        for c in clusters {
            crate::meters::on_publish(&mut tx, c, now).await?;
        }
        let changes: Vec<NewChange> = clusters
            .iter()
            .map(|c| NewChange::nodes(&c.cluster, c.is_public, &c.nodes))
            .collect();
        commit_with(tx, &changes, now).await
    }

    async fn published_nodes(
        &self,
        cluster: Option<&ClusterName>,
    ) -> Result<Vec<(ClusterName, NodeRecord)>, StoreError> {
        let rows: Vec<NodeRow> = sqlx::query_as(row::NODES_SELECT)
            .bind(cluster.is_none())
            .bind(cluster.map(ClusterName::as_str))
            .fetch_all(&self.pool)
            .await?;
        row::published_nodes(rows)
    }

    async fn publish_obstacles(
        &self,
        fence: Fence,
        obstacles: &[ClusterObstacle],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        check_fence(&mut tx, fence).await?;
        let mut changes = Vec::with_capacity(obstacles.len());
        for o in obstacles {
            // Locked until the commit, so a forget cannot remove the record
            // between this check and the write.
            let exists: Option<bool> =
                sqlx::query_scalar("SELECT TRUE FROM clusters WHERE name = $1 FOR SHARE")
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
        commit_with(tx, &changes, now).await
    }

    async fn published_obstacles(&self) -> Result<Vec<(ClusterName, Obstacle)>, StoreError> {
        let rows: Vec<row::ObstacleRow> = sqlx::query_as(row::OBSTACLES_SELECT)
            .fetch_all(&self.pool)
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
        let upsert = row::pool_error_upsert("LEAST", "GREATEST");
        let mut tx = self.begin().await?;
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
        tx.commit().await?;
        Ok(())
    }

    async fn pool_errors(
        &self,
        pool: &PoolName,
        only: Option<&[ClusterName]>,
        limit: usize,
    ) -> Result<Vec<PoolError>, StoreError> {
        let select = row::pool_errors_select("cluster = ANY($4)");
        let rows: Vec<row::PoolErrorRow> = sqlx::query_as(&select)
            .bind(pool.as_str())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(only.is_none())
            .bind(
                only.unwrap_or_default()
                    .iter()
                    .map(|c| c.as_str().to_owned())
                    .collect::<Vec<String>>(),
            )
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(PoolError::try_from).collect()
    }

    async fn prune_pool_errors(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM pool_errors WHERE last_at < $1")
            .bind(row::to_millis(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
