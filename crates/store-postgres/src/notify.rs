//! Subscriptions and deliveries: the shared SQL of `sql::notify`, the
//! leader's writes checked against its fence in the same transaction.
//! The cursor is one row, so two servers racing (a paused leader woken
//! late) are serialised by its row lock, and the fence refuses the late
//! one.

use chrono::{DateTime, Utc};
use flotilla_domain::{patterns_text, DeliveryState};
use flotilla_store::sql::notify::{
    self as q, delivery, subscription, DeliveryRow, SubscriptionRow,
};
use flotilla_store::sql::to_millis;
use flotilla_store::{
    disabled_change, disabled_reason, failed_with_subscription, Delivery, DeliveryOutcome, Fence,
    NewDelivery, NewSubscription, NotifyStore, StoreError, Subscription,
};

use crate::PostgresStore;

#[async_trait::async_trait]
impl NotifyStore for PostgresStore {
    async fn add_subscription(
        &self,
        new: &NewSubscription,
        at: DateTime<Utc>,
    ) -> Result<Subscription, StoreError> {
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query_scalar(q::ADD)
            .bind(&new.account)
            .bind(new.channel.kind())
            .bind(new.channel.target())
            .bind(&new.secret)
            .bind(patterns_text(&new.patterns))
            .bind(to_millis(at))
            .fetch_one(&mut *tx)
            .await?;
        let row: SubscriptionRow = sqlx::query_as(q::ONE).bind(id).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        subscription(row)
    }

    async fn subscriptions(&self, account: Option<&str>) -> Result<Vec<Subscription>, StoreError> {
        let rows: Vec<SubscriptionRow> = match account {
            Some(a) => sqlx::query_as(q::OF_ACCOUNT).bind(a),
            None => sqlx::query_as(q::ALL),
        }
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(subscription).collect()
    }

    async fn remove_subscription(&self, id: i64) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let gone = sqlx::query(q::REMOVE)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(q::DROP_PENDING)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone == 1)
    }

    async fn enable_subscription(&self, id: i64) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let found = sqlx::query(q::ENABLE)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(found == 1)
    }

    async fn notify_cursor(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(q::CURSOR)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn queue_deliveries(
        &self,
        upto: i64,
        deliveries: &[NewDelivery],
        at: DateTime<Utc>,
        fence: Fence,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        crate::lease::check_fence(&mut tx, fence).await?;
        // One statement for the page, so the transaction (which holds the
        // lease row shared) stays short.
        let queued = sqlx::query(
            "INSERT INTO deliveries \
                 (subscription, seq, kind, key, event, state, attempts, next_at, created_at) \
             SELECT d.s, d.q, d.k, d.key, d.e, d.st, 0, $7, $7 \
             FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], \
                 $6::TEXT[]) WITH ORDINALITY AS d(s, q, k, key, e, st, i) \
             WHERE d.s = 0 OR EXISTS \
                 (SELECT 1 FROM subscriptions WHERE id = d.s AND disabled_at IS NULL) \
             ORDER BY d.i \
             ON CONFLICT (subscription, seq) DO NOTHING",
        )
        .bind(
            deliveries
                .iter()
                .map(|d| d.subscription)
                .collect::<Vec<_>>(),
        )
        .bind(deliveries.iter().map(|d| d.seq).collect::<Vec<_>>())
        .bind(
            deliveries
                .iter()
                .map(|d| d.kind.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            deliveries
                .iter()
                .map(|d| d.key.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            deliveries
                .iter()
                .map(|d| d.event.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            deliveries
                .iter()
                .map(|d| d.state.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(to_millis(at))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(q::MOVE_CURSOR)
            .bind(upto)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(queued)
    }

    async fn queue_test(
        &self,
        subscription: i64,
        event: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<Option<Delivery>, StoreError> {
        let mut tx = self.begin().await?;
        let id: Option<i64> = sqlx::query_scalar(q::QUEUE_TEST)
            .bind(subscription)
            .bind(flotilla_domain::TEST_KIND)
            .bind(subscription.to_string())
            .bind(event.to_string())
            .bind(to_millis(at))
            .fetch_optional(&mut *tx)
            .await?;
        let Some(id) = id else {
            return Ok(None);
        };
        let row: DeliveryRow = sqlx::query_as(q::DELIVERY)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        delivery(row).map(Some)
    }

    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        per_subscription: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(q::DUE)
            .bind(to_millis(now))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(i64::try_from(per_subscription).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(delivery).collect()
    }

    async fn deliveries(
        &self,
        account: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<DeliveryRow> = match account {
            Some(a) => sqlx::query_as(q::LATEST_OF_ACCOUNT).bind(a).bind(limit),
            None => sqlx::query_as(q::LATEST).bind(limit),
        }
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(delivery).collect()
    }

    async fn recent_deliveries(&self, since: DateTime<Utc>) -> Result<Vec<Delivery>, StoreError> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(q::SINCE)
            .bind(to_millis(since))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(delivery).collect()
    }

    async fn finish_delivery(
        &self,
        id: i64,
        outcome: &DeliveryOutcome,
        at: DateTime<Utc>,
        counts: Option<u32>,
        fence: Fence,
    ) -> Result<Option<Subscription>, StoreError> {
        let mut tx = self.begin().await?;
        crate::lease::check_fence(&mut tx, fence).await?;
        let now = to_millis(at);
        let mut disabled = None;
        match outcome {
            DeliveryOutcome::Held { at: next } => {
                sqlx::query(q::HOLD)
                    .bind(id)
                    .bind(to_millis(*next))
                    .execute(&mut *tx)
                    .await?;
            }
            DeliveryOutcome::Retry { at: next, error } => {
                sqlx::query(q::RETRY)
                    .bind(id)
                    .bind(to_millis(*next))
                    .bind(error)
                    .execute(&mut *tx)
                    .await?;
            }
            DeliveryOutcome::Delivered => {
                let sub: Option<i64> = sqlx::query_scalar(q::FINISH)
                    .bind(id)
                    .bind(DeliveryState::Delivered.as_str())
                    .bind(now)
                    .bind(None::<String>)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(sub) = sub {
                    sqlx::query(q::ARRIVED)
                        .bind(sub)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            DeliveryOutcome::Failed { error } => {
                let sub: Option<i64> = sqlx::query_scalar(q::FINISH)
                    .bind(id)
                    .bind(DeliveryState::Failed.as_str())
                    .bind(now)
                    .bind(error)
                    .fetch_optional(&mut *tx)
                    .await?;
                let failures: Option<i64> = match sub.filter(|_| counts.is_some()) {
                    Some(sub) => {
                        sqlx::query_scalar(q::FAILED)
                            .bind(sub)
                            .fetch_optional(&mut *tx)
                            .await?
                    }
                    None => None,
                };
                if let (Some(sub), Some(failures)) = (sub, failures) {
                    if failures >= i64::from(counts.unwrap_or(u32::MAX).max(1)) {
                        let reason =
                            disabled_reason(u32::try_from(failures).unwrap_or(u32::MAX), error);
                        sqlx::query(q::DISABLE)
                            .bind(sub)
                            .bind(now)
                            .bind(&reason)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query(q::FAIL_PENDING)
                            .bind(sub)
                            .bind(now)
                            .bind(failed_with_subscription(sub))
                            .execute(&mut *tx)
                            .await?;
                        let row: SubscriptionRow =
                            sqlx::query_as(q::ONE).bind(sub).fetch_one(&mut *tx).await?;
                        let subscription = subscription(row)?;
                        disabled = Some((subscription, reason));
                    }
                }
            }
        }
        // The change, if any, is appended last, under the feed's lock.
        let changes: Vec<_> = disabled
            .iter()
            .map(|(s, reason)| disabled_change(s, reason))
            .collect();
        crate::commit_with(tx, &changes, at).await?;
        Ok(disabled.map(|(s, _)| s))
    }

    async fn forget_deliveries(
        &self,
        before: DateTime<Utc>,
        fence: Fence,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        crate::lease::check_fence(&mut tx, fence).await?;
        let gone = sqlx::query(q::FORGET)
            .bind(to_millis(before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }
}
