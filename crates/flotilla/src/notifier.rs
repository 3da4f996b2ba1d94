//! The notifier (issue 14), run by the leader: it follows the change
//! feed, queues a delivery of each change for each subscription that
//! wants it and whose account may read it (and for the configuration's
//! `admin_email`), and sends what is due: one mail per subscription at a
//! time, the events that came meanwhile as one digest, and a signed POST
//! per event to a webhook. Retries back off; a delivery given up counts
//! against its subscription, which is disabled after too many in a row.
//!
//! Queued once: the cursor moves in the transaction that queues, under
//! the lease, so neither a crash nor a new leader queues a change twice.
//! Sent at least once: a leader that dies between sending and noting it
//! sent leaves the delivery pending, and the next sends it again with the
//! same delivery number (`flotilla-delivery`), by which a receiver knows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flotilla_control::Control;
use flotilla_domain::{event_json, mail_text, retry_after, Caller, Change, Channel, DeliveryState};
use flotilla_identity::Identity;
use flotilla_notify::{Mailer, SendError, Webhooks};
use flotilla_store::{
    Delivery, DeliveryOutcome, Fence, NewDelivery, Subscription, ADMIN_SUBSCRIPTION,
};

use crate::config::NotifyConfig;

/// Changes read per pass.
const PAGE: usize = 500;
/// Deliveries sent per pass.
const BATCH: usize = 200;
/// Sends at once.
const PARALLEL: usize = 8;
/// The most events in one digest.
const MAX_DIGEST: usize = 100;

pub struct Notifier {
    control: Control,
    identity: Arc<Identity>,
    config: NotifyConfig,
    mailer: Option<Mailer>,
    hooks: Webhooks,
    /// This server's name, said in mails.
    server: String,
    /// What was queued lately, by subscription, kind and key: the same
    /// again within the window is deduplicated.
    recent: HashMap<(i64, String, String), DateTime<Utc>>,
    /// When each subscription was last mailed (the admin mail's
    /// included), for digests.
    mailed: HashMap<i64, DateTime<Utc>>,
    /// Whether `recent` was read from the store this term.
    seeded: bool,
}

impl Notifier {
    pub fn new(
        config: &NotifyConfig,
        control: Control,
        identity: Arc<Identity>,
        server: String,
    ) -> Result<Self, String> {
        let mailer = match &config.smtp {
            Some(smtp) => Some(Mailer::new(&smtp.settings(config.timeout)?)?),
            None => None,
        };
        Ok(Self {
            control,
            identity,
            hooks: Webhooks::new(config.timeout)?,
            config: config.clone(),
            mailer,
            server,
            recent: HashMap::new(),
            mailed: HashMap::new(),
            seeded: false,
        })
    }

    /// Queues and sends while this server leads; wakes on every change
    /// and at least once a second (retries fall due with no change).
    pub async fn run(mut self) {
        let mut notices = self.control.engine().store().change_notices();
        let mut last_forget: Option<tokio::time::Instant> = None;
        loop {
            notices.borrow_and_update();
            if let Some(fence) = self.control.engine().fence() {
                if let Err(e) = self.pass(fence).await {
                    tracing::warn!(error = %e, "notifications: a pass failed");
                }
                if last_forget.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                    let before = self.now()
                        - chrono::Duration::from_std(self.config.keep).unwrap_or_default();
                    match self
                        .control
                        .engine()
                        .store()
                        .forget_deliveries(before, fence)
                        .await
                    {
                        Ok(n) if n > 0 => tracing::debug!(forgotten = n, "old deliveries"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot forget old deliveries"),
                    }
                    last_forget = Some(tokio::time::Instant::now());
                }
            } else {
                self.seeded = false;
                self.recent.clear();
            }
            tokio::select! {
                _ = notices.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.control.engine().now()
    }

    async fn pass(&mut self, fence: Fence) -> Result<(), flotilla_store::StoreError> {
        let store = self.control.engine().store().clone();
        if !self.seeded {
            let since = self.now() - window(self.config.dedup_window);
            for d in store.recent_deliveries(since).await? {
                self.note_recent(&d.subscription, &d.kind, &d.key, d.created_at);
            }
            self.seeded = true;
        }
        // Queue what the feed says, page by page, until caught up.
        loop {
            let cursor = match store.notify_cursor().await? {
                Some(c) => c,
                None => {
                    // The first run: from now on, not the feed's past.
                    let last = store.last_change().await?;
                    store.queue_deliveries(last, &[], self.now(), fence).await?;
                    last
                }
            };
            let changes = store.changes(cursor, PAGE, None).await?;
            let Some(upto) = changes.last().map(|c| c.seq) else {
                break;
            };
            let subscriptions = store.subscriptions(None).await?;
            let deliveries = self.deliveries_of(&changes, &subscriptions).await;
            let queued = store
                .queue_deliveries(upto, &deliveries, self.now(), fence)
                .await?;
            if queued > 0 {
                tracing::debug!(queued, upto, "notifications queued");
            }
            if changes.len() < PAGE {
                break;
            }
        }
        self.send_due(fence).await
    }

    /// The deliveries `changes` make: for each subscription that wants
    /// each and whose account may read it, and for the admin mail.
    async fn deliveries_of(
        &mut self,
        changes: &[Change],
        subscriptions: &[Subscription],
    ) -> Vec<NewDelivery> {
        let now = self.now();
        let mut callers: HashMap<String, Option<Caller>> = HashMap::new();
        let mut out = Vec::new();
        for change in changes {
            let kind = change.kind.as_str();
            let mut for_whom: Vec<i64> = Vec::new();
            if self.config.admin_email.is_some()
                && self.config.admin_patterns.iter().any(|p| p.matches(kind))
            {
                for_whom.push(ADMIN_SUBSCRIPTION);
            }
            for s in subscriptions.iter().filter(|s| s.wants(kind)) {
                if !callers.contains_key(&s.account) {
                    let caller = match self.identity.caller_of(Some(&s.account)).await {
                        Ok(mut caller) => {
                            self.control.engine().admit_org_clusters(&mut caller);
                            Some(caller)
                        }
                        // A deleted account hears nothing.
                        Err(_) => None,
                    };
                    callers.insert(s.account.clone(), caller);
                }
                let may = callers[&s.account]
                    .as_ref()
                    .is_some_and(|c| self.control.may_read(c, change));
                if may {
                    for_whom.push(s.id);
                }
            }
            for subscription in for_whom {
                let again = self.note_recent(&subscription, kind, &change.key, now);
                out.push(NewDelivery {
                    subscription,
                    seq: Some(change.seq),
                    kind: kind.to_owned(),
                    key: change.key.clone(),
                    event: event_json(change),
                    state: if again {
                        DeliveryState::Deduplicated
                    } else {
                        DeliveryState::Pending
                    },
                });
            }
        }
        let oldest = now - window(self.config.dedup_window);
        self.recent.retain(|_, at| *at >= oldest);
        out
    }

    /// Notes that `subscription` is sent `kind` of `key` at `at`; true if
    /// it was within the deduplication window already.
    fn note_recent(
        &mut self,
        subscription: &i64,
        kind: &str,
        key: &str,
        at: DateTime<Utc>,
    ) -> bool {
        let window = window(self.config.dedup_window);
        let entry = (*subscription, kind.to_owned(), key.to_owned());
        match self.recent.get(&entry) {
            Some(last) if at - *last < window && !self.config.dedup_window.is_zero() => true,
            _ => {
                self.recent.insert(entry, at);
                false
            }
        }
    }

    /// Sends what is due: mail a subscription at a time (a digest of what
    /// came since its last, at most one per digest window), webhooks an
    /// event at a time.
    async fn send_due(&mut self, fence: Fence) -> Result<(), flotilla_store::StoreError> {
        let store = self.control.engine().store().clone();
        let now = self.now();
        let due = store.due_deliveries(now, BATCH).await?;
        if due.is_empty() {
            return Ok(());
        }
        let subscriptions: BTreeMap<i64, Subscription> = store
            .subscriptions(None)
            .await?
            .into_iter()
            .map(|s| (s.id, s))
            .collect();
        let mut groups: BTreeMap<i64, Vec<Delivery>> = BTreeMap::new();
        for d in due {
            groups.entry(d.subscription).or_default().push(d);
        }
        let mut sends = Vec::new();
        for (id, deliveries) in groups {
            let (channel, secret) = if id == ADMIN_SUBSCRIPTION {
                match &self.config.admin_email {
                    Some(a) => (Channel::Email(a.clone()), None),
                    None => {
                        sends.push(Send::Drop(
                            deliveries,
                            "admin_email is no longer configured",
                        ));
                        continue;
                    }
                }
            } else {
                match subscriptions.get(&id) {
                    Some(s) => (s.channel.clone(), s.secret.clone()),
                    // Removed since: its pending deliveries went with it.
                    None => continue,
                }
            };
            match channel {
                Channel::Email(to) => {
                    let last = self
                        .mailed
                        .get(&id)
                        .copied()
                        .max(subscriptions.get(&id).and_then(|s| s.last_sent_at));
                    let tests_only = deliveries.iter().all(|d| d.seq.is_none());
                    if !tests_only
                        && last.is_some_and(|l| now - l < window(self.config.digest_window))
                    {
                        // Within the window: they wait for the next digest.
                        continue;
                    }
                    let mut deliveries = deliveries;
                    deliveries.truncate(MAX_DIGEST);
                    self.mailed.insert(id, now);
                    sends.push(Send::Mail { to, deliveries });
                }
                Channel::Webhook(url) => {
                    for d in deliveries {
                        sends.push(Send::Hook {
                            url: url.clone(),
                            secret: secret.clone().unwrap_or_default(),
                            delivery: d,
                        });
                    }
                }
            }
        }
        let results: Vec<(Vec<Delivery>, Result<(), SendError>)> = {
            use futures::StreamExt;
            futures::stream::iter(sends.into_iter().map(|send| self.send(send)))
                .buffer_unordered(PARALLEL)
                .collect()
                .await
        };
        for (deliveries, result) in results {
            for d in deliveries {
                self.finish(&d, &result, fence).await?;
            }
        }
        Ok(())
    }

    async fn send(&self, send: Send) -> (Vec<Delivery>, Result<(), SendError>) {
        match send {
            Send::Drop(deliveries, why) => (
                deliveries,
                Err(SendError {
                    permanent: true,
                    message: why.to_owned(),
                }),
            ),
            Send::Mail { to, deliveries } => {
                let Some(mailer) = &self.mailer else {
                    let e = SendError {
                        permanent: false,
                        message: "this server sends no mail ([notify.smtp] is not configured)"
                            .to_owned(),
                    };
                    return (deliveries, Err(e));
                };
                let events: Vec<serde_json::Value> =
                    deliveries.iter().map(|d| d.event.clone()).collect();
                let (subject, body) = mail_text(&events, &self.server);
                let result = mailer.send(&to, &subject, body).await;
                (deliveries, result)
            }
            Send::Hook {
                url,
                secret,
                delivery,
            } => {
                let body = serde_json::to_vec(&delivery.event).expect("an event serialises");
                let result = self
                    .hooks
                    .post(
                        &url,
                        &secret,
                        delivery.id,
                        &delivery.kind,
                        self.now().timestamp(),
                        body,
                    )
                    .await;
                (vec![delivery], result)
            }
        }
    }

    async fn finish(
        &self,
        d: &Delivery,
        result: &Result<(), SendError>,
        fence: Fence,
    ) -> Result<(), flotilla_store::StoreError> {
        let now = self.now();
        let outcome = match result {
            Ok(()) => DeliveryOutcome::Delivered,
            Err(e) if e.permanent => DeliveryOutcome::Failed {
                error: e.message.clone(),
            },
            Err(e) => match retry_after(
                d.attempts + 1,
                self.config.retry_base,
                self.config.max_attempts,
            ) {
                Some(wait) => DeliveryOutcome::Retry {
                    at: now + chrono::Duration::from_std(wait).unwrap_or_default(),
                    error: e.message.clone(),
                },
                None => DeliveryOutcome::Failed {
                    error: format!("given up after {} tries: {}", d.attempts + 1, e.message),
                },
            },
        };
        match &outcome {
            DeliveryOutcome::Delivered => {
                tracing::debug!(delivery = d.id, subscription = d.subscription, kind = %d.kind, "delivered");
            }
            DeliveryOutcome::Retry { at, error } => {
                tracing::info!(delivery = d.id, subscription = d.subscription, %error, retry_at = %at, "delivery failed; it is tried again");
            }
            DeliveryOutcome::Failed { error } => {
                tracing::warn!(delivery = d.id, subscription = d.subscription, %error, "delivery given up");
            }
        }
        let disabled = self
            .control
            .engine()
            .store()
            .finish_delivery(d.id, &outcome, now, self.config.disable_after, fence)
            .await?;
        if let Some(s) = disabled {
            tracing::warn!(subscription = s.id, account = %s.account, target = s.channel.target(), "subscription disabled: its deliveries keep failing");
        }
        Ok(())
    }
}

/// One message to send: a mail of one or more deliveries, a POST of one,
/// or deliveries that cannot go anywhere.
enum Send {
    Mail {
        to: String,
        deliveries: Vec<Delivery>,
    },
    Hook {
        url: String,
        secret: String,
        delivery: Delivery,
    },
    Drop(Vec<Delivery>, &'static str),
}

fn window(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
