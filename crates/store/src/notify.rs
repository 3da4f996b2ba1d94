//! Notifications (issue 14): the accounts' subscriptions, and the
//! deliveries the leader's notifier queues from the change feed and then
//! sends. The cursor (the last change looked at) moves in the same
//! transaction as the deliveries it queued, under the lease, so a change
//! is queued once for each subscription however often the leader crashes
//! or changes hands; a delivery is one row per subscription and change.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{ChangeKind, Channel, DeliveryState, NewChange, Pattern};

use crate::{Fence, StoreError};

/// The subscription a delivery of the configuration's `admin_email` is
/// for: it has no row.
pub const ADMIN_SUBSCRIPTION: i64 = 0;

/// A subscription as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSubscription {
    pub account: String,
    pub channel: Channel,
    pub patterns: Vec<Pattern>,
    /// A webhook's signing secret (hex); none for mail.
    pub secret: Option<String>,
}

/// A subscription as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: i64,
    pub account: String,
    pub channel: Channel,
    pub patterns: Vec<Pattern>,
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Deliveries given up on in a row since the last that arrived.
    pub failures: u32,
    /// Set when it was disabled after too many failures, with why.
    pub disabled: Option<(DateTime<Utc>, String)>,
    /// When a delivery to it last arrived.
    pub last_sent_at: Option<DateTime<Utc>>,
}

impl Subscription {
    /// Whether an event of kind `kind` is for it (by its patterns alone).
    pub fn wants(&self, kind: &str) -> bool {
        self.disabled.is_none() && self.patterns.iter().any(|p| p.matches(kind))
    }
}

/// A delivery to queue: one event for one subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub subscription: i64,
    /// The change it is of; none for a test.
    pub seq: Option<i64>,
    pub kind: String,
    pub key: String,
    /// The event as sent (see `flotilla_domain::event_json`).
    pub event: serde_json::Value,
    /// `Pending`, or `Deduplicated` (kept to be shown, never sent).
    pub state: DeliveryState,
}

/// A delivery as kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub subscription: i64,
    pub seq: Option<i64>,
    pub kind: String,
    pub key: String,
    pub event: serde_json::Value,
    pub state: DeliveryState,
    /// Tries made.
    pub attempts: u32,
    /// When it is (next) due, while pending.
    pub next_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What came of one try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// It failed; try again at `at`.
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    /// It failed for good.
    Failed {
        error: String,
    },
    /// Not tried: put off until `at` (mail waiting for its digest).
    Held {
        at: DateTime<Utc>,
    },
}

#[async_trait]
pub trait NotifyStore: Send + Sync {
    async fn add_subscription(
        &self,
        new: &NewSubscription,
        at: DateTime<Utc>,
    ) -> Result<Subscription, StoreError>;

    /// Every subscription, or `account`'s, by id.
    async fn subscriptions(&self, account: Option<&str>) -> Result<Vec<Subscription>, StoreError>;

    /// Removes a subscription and what is pending for it; false if there
    /// was none.
    async fn remove_subscription(&self, id: i64) -> Result<bool, StoreError>;

    /// Enables a disabled subscription again, its failures forgotten;
    /// false if there is none.
    async fn enable_subscription(&self, id: i64) -> Result<bool, StoreError>;

    /// The last change the notifier looked at; none before it first ran.
    async fn notify_cursor(&self) -> Result<Option<i64>, StoreError>;

    /// Queues `deliveries` (a subscription's delivery of a change that is
    /// queued already is left as it is) and moves the cursor to `upto`
    /// (never back), in one transaction under `fence`; how many were
    /// queued.
    async fn queue_deliveries(
        &self,
        upto: i64,
        deliveries: &[NewDelivery],
        at: DateTime<Utc>,
        fence: Fence,
    ) -> Result<u64, StoreError>;

    /// Queues a test of `subscription` (any server; no lease needed);
    /// none if there is no such subscription.
    async fn queue_test(
        &self,
        subscription: i64,
        event: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<Option<Delivery>, StoreError>;

    /// Up to `limit` pending deliveries due at `now`, the oldest first, at
    /// most `per_subscription` of each subscription.
    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        per_subscription: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// The latest `limit` deliveries, the newest first: every one, or
    /// those of `account`'s subscriptions.
    async fn deliveries(
        &self,
        account: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// The deliveries queued since `since` (the notifier's window of
    /// deduplication after a restart), the oldest first.
    async fn recent_deliveries(&self, since: DateTime<Utc>) -> Result<Vec<Delivery>, StoreError>;

    /// Records what came of a try of pending delivery `id`, under `fence`.
    /// A delivery that arrived clears its subscription's failures. One
    /// given up counts one if `counts` (the failure of a message, once
    /// however many deliveries it carried; not a test's) says after how
    /// many in a row to disable the subscription: the last disables it
    /// (its pending deliveries fail with it) with a `notification.disabled`
    /// change, and the subscription is returned then.
    async fn finish_delivery(
        &self,
        id: i64,
        outcome: &DeliveryOutcome,
        at: DateTime<Utc>,
        counts: Option<u32>,
        fence: Fence,
    ) -> Result<Option<Subscription>, StoreError>;

    /// Forgets the finished deliveries queued before `before`, under
    /// `fence`; how many.
    async fn forget_deliveries(
        &self,
        before: DateTime<Utc>,
        fence: Fence,
    ) -> Result<u64, StoreError>;
}

/// The change recorded when `subscription` is disabled.
pub fn disabled_change(subscription: &Subscription, reason: &str) -> NewChange {
    NewChange {
        kind: ChangeKind::NotificationDisabled,
        key: subscription.account.clone(),
        payload: serde_json::json!({
            "subscription": subscription.id,
            "channel": subscription.channel.kind(),
            "target": subscription.channel.target(),
            "message": format!(
                "subscription {} ({} {}) is disabled: {reason}; `flotilla notify enable {}` \
                 turns it on again",
                subscription.id,
                subscription.channel.kind(),
                subscription.channel.target(),
                subscription.id
            ),
        }),
    }
}

/// What the deliveries pending for a subscription disabled say.
pub fn failed_with_subscription(id: i64) -> String {
    format!("its subscription was disabled; `flotilla notify enable {id}` turns it on again")
}

/// Why a subscription is disabled after `failures` deliveries given up.
pub fn disabled_reason(failures: u32, error: &str) -> String {
    format!("{failures} deliveries in a row failed, the last with: {error}")
}
