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
use flotilla_domain::{
    dedup_key, event_json, mail_text, retry_after, Caller, Change, Channel, DeliveryState,
};
use flotilla_identity::{Identity, IdentityError};
use flotilla_notify::{Mailer, SendError, Webhooks};
use flotilla_store::{
    Delivery, DeliveryOutcome, Fence, NewDelivery, StoreError, Subscription, ADMIN_SUBSCRIPTION,
};

use crate::config::NotifyConfig;

/// Changes read per pass.
const PAGE: usize = 500;
/// Deliveries sent per pass.
const BATCH: usize = 200;
/// Sends at once.
const PARALLEL: usize = 8;
/// How often the cursor is stored when the changes read queue nothing.
const CURSOR_SAVE: Duration = Duration::from_secs(10);
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
    /// What was queued lately, by subscription and `dedup_key`: the same
    /// again within the window is deduplicated.
    recent: HashMap<(i64, String), DateTime<Utc>>,
    /// When each subscription was last mailed (the admin mail's
    /// included), for digests.
    mailed: HashMap<i64, DateTime<Utc>>,
    /// Whether `recent` was read from the store this term.
    seeded: bool,
    /// How far this term has read the feed; none: read the stored cursor.
    cursor: Option<i64>,
    /// When the cursor was last stored.
    cursor_saved: Option<tokio::time::Instant>,
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
            cursor: None,
            cursor_saved: None,
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
                    // Read where the store says, next time.
                    self.cursor = None;
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
                self.cursor = None;
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
                self.note_recent(d.subscription, &d.event, d.created_at);
            }
            self.seeded = true;
        }
        // Queue what the feed says, page by page, until caught up.
        let mut cursor = match self.cursor {
            Some(c) => c,
            None => match store.notify_cursor().await? {
                Some(c) => c,
                None => {
                    // The first run: from now on, not the feed's past.
                    let last = store.last_change().await?;
                    store.queue_deliveries(last, &[], self.now(), fence).await?;
                    last
                }
            },
        };
        loop {
            let changes = store.changes(cursor, PAGE, None).await?;
            let Some(upto) = changes.last().map(|c| c.seq) else {
                break;
            };
            let subscriptions = store.subscriptions(None).await?;
            // What is noted as queued counts only once it is.
            let before = self.recent.clone();
            let deliveries = match self.deliveries_of(&changes, &subscriptions).await {
                Ok(deliveries) => deliveries,
                Err(e) => {
                    self.recent = before;
                    return Err(e);
                }
            };
            // Changes for nobody move the stored cursor now and then, not
            // with a write each: read again after a crash, they queue
            // nothing (a subscription hears only of what follows it).
            let save = !deliveries.is_empty()
                || self.cursor_saved.is_none_or(|t| t.elapsed() >= CURSOR_SAVE);
            if save {
                let queued = store
                    .queue_deliveries(upto, &deliveries, self.now(), fence)
                    .await
                    .inspect_err(|_| self.recent = before)?;
                self.cursor_saved = Some(tokio::time::Instant::now());
                if queued > 0 {
                    tracing::debug!(queued, upto, "notifications queued");
                }
            }
            cursor = upto;
            self.cursor = Some(upto);
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
    ) -> Result<Vec<NewDelivery>, StoreError> {
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
            // Only what happened since it was made.
            let wanting = subscriptions
                .iter()
                .filter(|s| s.wants(kind) && change.at >= s.created_at);
            for s in wanting {
                if !callers.contains_key(&s.account) {
                    let caller = match self.identity.caller_of(Some(&s.account)).await {
                        Ok(mut caller) => {
                            self.control.engine().admit_org_clusters(&mut caller);
                            Some(caller)
                        }
                        // An account that is gone hears nothing.
                        Err(IdentityError::NotFound(_) | IdentityError::InvalidName(_)) => None,
                        // Anything else is asked again (the pass ends here,
                        // queuing nothing).
                        Err(IdentityError::Store(e)) => return Err(e),
                        Err(e) => return Err(StoreError::Database(Box::new(e))),
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
            let event = event_json(change);
            for subscription in for_whom {
                let again = self.note_recent(subscription, &event, now);
                out.push(NewDelivery {
                    subscription,
                    seq: Some(change.seq),
                    kind: kind.to_owned(),
                    key: change.key.clone(),
                    event: event.clone(),
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
        Ok(out)
    }

    /// Notes that `subscription` is sent `event` at `at`; true if the
    /// same (`dedup_key`) was within the deduplication window already.
    fn note_recent(
        &mut self,
        subscription: i64,
        event: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> bool {
        let window = window(self.config.dedup_window);
        let entry = (subscription, dedup_key(event));
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
    /// event at a time, in order, a subscription's stopping at its first
    /// failure (a receiver that is down costs one try a pass).
    async fn send_due(&mut self, fence: Fence) -> Result<(), StoreError> {
        let store = self.control.engine().store().clone();
        let now = self.now();
        let due = store.due_deliveries(now, BATCH, MAX_DIGEST).await?;
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
                    None => {
                        sends.push(Send::Drop(deliveries, "its subscription was removed"));
                        continue;
                    }
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
                    let next = last.map(|l| l + window(self.config.digest_window));
                    match next {
                        Some(next) if !tests_only && now < next => {
                            // Within the window: they wait for the next
                            // digest, out of the way until then.
                            sends.push(Send::Hold(deliveries, next));
                        }
                        _ => {
                            self.mailed.insert(id, now);
                            sends.push(Send::Mail { to, deliveries });
                        }
                    }
                }
                Channel::Webhook(url) => sends.push(Send::Hook {
                    url,
                    secret: secret.unwrap_or_default(),
                    deliveries,
                }),
            }
        }
        let results: Vec<Vec<Sent>> = {
            use futures::StreamExt;
            futures::stream::iter(sends.into_iter().map(|send| self.send(send)))
                .buffer_unordered(PARALLEL)
                .collect()
                .await
        };
        for sent in results.into_iter().flatten() {
            match self.finish(&sent, fence).await {
                Ok(()) => {}
                Err(e @ StoreError::Fenced { .. }) => return Err(e),
                // The rest of what was sent is still recorded.
                Err(e) => {
                    tracing::warn!(delivery = sent.delivery.id, error = %e, "cannot record a delivery's outcome; it will be sent again")
                }
            }
        }
        Ok(())
    }

    async fn send(&self, send: Send) -> Vec<Sent> {
        match send {
            Send::Drop(deliveries, why) => deliveries
                .into_iter()
                .map(|delivery| Sent {
                    delivery,
                    result: Err(SendError {
                        permanent: true,
                        message: why.to_owned(),
                    }),
                    counts: false,
                    held: None,
                })
                .collect(),
            Send::Hold(deliveries, until) => deliveries
                .into_iter()
                .map(|delivery| Sent::held(delivery, until))
                .collect(),
            Send::Mail { to, deliveries } => {
                let Some(mailer) = &self.mailer else {
                    // Another server took the subscription: every server
                    // needs the same relay. Not the subscriber's failure.
                    return deliveries
                        .into_iter()
                        .map(|delivery| Sent {
                            delivery,
                            result: Err(SendError {
                                permanent: false,
                                message: "the leading server sends no mail: every server \
                                          needs the same [notify.smtp]"
                                    .to_owned(),
                            }),
                            counts: false,
                            held: None,
                        })
                        .collect();
                };
                let events: Vec<serde_json::Value> =
                    deliveries.iter().map(|d| d.event.clone()).collect();
                let (subject, body) = mail_text(&events, &self.server);
                let result = mailer.send(&to, &subject, body).await;
                // One message: its failure counts once, and not a test's.
                let counts = deliveries.iter().any(|d| d.seq.is_some());
                deliveries
                    .into_iter()
                    .enumerate()
                    .map(|(i, delivery)| Sent {
                        delivery,
                        result: result.clone(),
                        counts: counts && i == 0,
                        held: None,
                    })
                    .collect()
            }
            Send::Hook {
                url,
                secret,
                deliveries,
            } => {
                let mut sent = Vec::new();
                for delivery in deliveries {
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
                    let failed = result.is_err();
                    let counts = delivery.seq.is_some();
                    sent.push(Sent {
                        delivery,
                        result,
                        counts,
                        held: None,
                    });
                    if failed {
                        break;
                    }
                }
                sent
            }
        }
    }

    async fn finish(&self, sent: &Sent, fence: Fence) -> Result<(), StoreError> {
        let d = &sent.delivery;
        let now = self.now();
        let outcome = match (&sent.result, sent.held) {
            (_, Some(until)) => DeliveryOutcome::Held { at: until },
            (Ok(()), None) => DeliveryOutcome::Delivered,
            (Err(e), None) if e.permanent => DeliveryOutcome::Failed {
                error: e.message.clone(),
            },
            (Err(e), None) => match retry_after(
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
            DeliveryOutcome::Held { .. } => {}
        }
        let counts = sent.counts.then_some(self.config.disable_after);
        let disabled = self
            .control
            .engine()
            .store()
            .finish_delivery(d.id, &outcome, now, counts, fence)
            .await?;
        if let Some(s) = disabled {
            tracing::warn!(subscription = s.id, account = %s.account, target = s.channel.target(), "subscription disabled: its deliveries keep failing");
        }
        Ok(())
    }
}

/// What came of one delivery's turn.
struct Sent {
    delivery: Delivery,
    result: Result<(), SendError>,
    /// Whether a failure counts against its subscription (once per
    /// message; never a test's, nor the servers' own fault).
    counts: bool,
    /// Not tried: held until then.
    held: Option<DateTime<Utc>>,
}

impl Sent {
    fn held(delivery: Delivery, until: DateTime<Utc>) -> Sent {
        Sent {
            delivery,
            result: Ok(()),
            counts: false,
            held: Some(until),
        }
    }
}

/// What to do with a subscription's due deliveries: mail them as one
/// message, POST them one by one, hold them for the digest, or fail them
/// (they can go nowhere).
enum Send {
    Mail {
        to: String,
        deliveries: Vec<Delivery>,
    },
    Hook {
        url: String,
        secret: String,
        deliveries: Vec<Delivery>,
    },
    Hold(Vec<Delivery>, DateTime<Utc>),
    Drop(Vec<Delivery>, &'static str),
}

fn window(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
