//! The notifications half of the store contract: subscriptions kept per
//! account; a change queued once per subscription, with the cursor moved
//! in the same transaction and only under the lease; deliveries tried
//! again, delivered, given up on, and a subscription disabled (with its
//! change) after too many failures in a row; a refused drop-box trigger
//! is a change too.

use flotilla_domain::{ChangeEntity, ChangeKind, Channel, DeliveryState, Pattern};
use tokio::task::JoinSet;

use super::{lead, t, Harness};
use crate::{DeliveryOutcome, HandledTrigger, NewDelivery, NewSubscription, StoreError};

fn subscription(account: &str, channel: Channel) -> NewSubscription {
    let secret = matches!(channel, Channel::Webhook(_)).then(|| "ab".repeat(32));
    NewSubscription {
        account: account.to_owned(),
        channel,
        patterns: Pattern::parse_list("cluster.*,org.budget_exhausted").unwrap(),
        secret,
    }
}

fn delivery(subscription: i64, seq: i64) -> NewDelivery {
    NewDelivery {
        subscription,
        seq: Some(seq),
        kind: "cluster.deployed".to_owned(),
        key: "web".to_owned(),
        event: serde_json::json!({"seq": seq, "kind": "cluster.deployed", "key": "web"}),
        state: DeliveryState::Pending,
    }
}

pub async fn subscriptions_are_kept_per_account_and_removed(h: Harness) {
    let store = h.store.as_ref();
    let mail = store
        .add_subscription(
            &subscription("ann", Channel::email("ann@example.org").unwrap()),
            t(1),
        )
        .await
        .unwrap();
    let hook = store
        .add_subscription(
            &subscription("ann", Channel::webhook("https://h.example.org/x").unwrap()),
            t(2),
        )
        .await
        .unwrap();
    let bobs = store
        .add_subscription(
            &subscription("bob", Channel::email("bob@example.org").unwrap()),
            t(3),
        )
        .await
        .unwrap();
    assert!(
        mail.id > 0 && hook.id > mail.id && bobs.id > hook.id,
        "numbered"
    );
    assert_eq!(mail.account, "ann");
    assert_eq!(mail.created_at, t(1));
    assert_eq!(mail.failures, 0);
    assert_eq!(mail.disabled, None);
    assert_eq!(mail.secret, None);
    assert_eq!(hook.secret, Some("ab".repeat(32)));
    assert!(hook.wants("cluster.expired") && hook.wants("org.budget_exhausted"));
    assert!(!hook.wants("org.created"));

    assert_eq!(
        store.subscriptions(Some("ann")).await.unwrap(),
        [mail.clone(), hook.clone()],
        "read back whole, by id"
    );
    assert_eq!(store.subscriptions(None).await.unwrap().len(), 3);
    assert!(store.remove_subscription(hook.id).await.unwrap());
    assert!(!store.remove_subscription(hook.id).await.unwrap(), "gone");
    assert_eq!(store.subscriptions(Some("ann")).await.unwrap(), [mail]);
    assert!(!store.enable_subscription(hook.id).await.unwrap());
}

pub async fn a_change_is_queued_once_per_subscription_under_the_lease(h: Harness) {
    let store = h.store.as_ref();
    let fence = lead(store).await;
    let sub = store
        .add_subscription(
            &subscription("ann", Channel::email("ann@example.org").unwrap()),
            t(1),
        )
        .await
        .unwrap();
    assert_eq!(store.notify_cursor().await.unwrap(), None, "never ran");
    let mut quiet = delivery(sub.id, 6);
    quiet.state = DeliveryState::Deduplicated;
    let queued = store
        .queue_deliveries(7, &[delivery(sub.id, 5), quiet.clone()], t(10), fence)
        .await
        .unwrap();
    assert_eq!(queued, 2);
    assert_eq!(store.notify_cursor().await.unwrap(), Some(7));

    // A second leader (or the same after a crash) queues the same again:
    // nothing twice, and the cursor never goes back.
    let mut racing = JoinSet::new();
    for store in [h.store.clone(), h.second.clone()] {
        let sub = sub.id;
        racing.spawn(async move {
            store
                .queue_deliveries(3, &[delivery(sub, 5), delivery(sub, 8)], t(11), fence)
                .await
                .unwrap()
        });
    }
    let mut new = 0;
    while let Some(n) = racing.join_next().await {
        new += n.unwrap();
    }
    assert_eq!(new, 1, "only seq 8 is new, queued once");
    assert_eq!(store.notify_cursor().await.unwrap(), Some(7));

    let due = store.due_deliveries(t(11), 10, 100).await.unwrap();
    assert_eq!(
        due.iter().map(|d| d.seq).collect::<Vec<_>>(),
        [Some(5), Some(8)],
        "pending ones, the oldest first; a deduplicated one is never due"
    );
    assert_eq!(due[0].attempts, 0);
    assert_eq!(due[0].next_at, t(10));
    assert_eq!(due[0].event["kind"], "cluster.deployed");
    assert_eq!(store.due_deliveries(t(10), 10, 100).await.unwrap().len(), 1);
    assert_eq!(store.due_deliveries(t(11), 1, 100).await.unwrap().len(), 1);

    let stale = crate::Fence(fence.0 - 1);
    let e = store
        .queue_deliveries(20, &[delivery(sub.id, 20)], t(12), stale)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Fenced { .. }), "{e:?}");
    assert_eq!(store.notify_cursor().await.unwrap(), Some(7));
    assert_eq!(store.recent_deliveries(t(0)).await.unwrap().len(), 3);

    // A test has no change; any server queues it.
    let test = store
        .queue_test(
            sub.id,
            &serde_json::json!({"kind": "notification.test"}),
            t(13),
        )
        .await
        .unwrap()
        .expect("its subscription is there");
    assert_eq!((test.seq, test.state), (None, DeliveryState::Pending));
    assert_eq!(test.kind, flotilla_domain::TEST_KIND);
    store
        .queue_test(sub.id, &serde_json::json!({}), t(13))
        .await
        .unwrap();
    assert_eq!(store.due_deliveries(t(13), 10, 100).await.unwrap().len(), 4);

    // At most so many of one subscription at a time: one with a backlog
    // takes no other's turn.
    let other = store
        .add_subscription(
            &subscription("bob", Channel::email("bob@example.org").unwrap()),
            t(1),
        )
        .await
        .unwrap();
    store
        .queue_deliveries(9, &[delivery(other.id, 9)], t(13), fence)
        .await
        .unwrap();
    let due = store.due_deliveries(t(13), 10, 2).await.unwrap();
    assert_eq!(
        due.iter().map(|d| d.subscription).collect::<Vec<_>>(),
        [sub.id, sub.id, other.id],
        "two of ann's, then bob's"
    );

    // Removing the subscription drops what is pending for it; nothing is
    // queued for it after (a notifier that read it before it went).
    assert!(store.remove_subscription(sub.id).await.unwrap());
    assert_eq!(store.due_deliveries(t(13), 10, 100).await.unwrap().len(), 1);
    let queued = store
        .queue_deliveries(12, &[delivery(sub.id, 12)], t(14), fence)
        .await
        .unwrap();
    assert_eq!(queued, 0, "not for a subscription that is gone");
    assert_eq!(
        store
            .queue_test(sub.id, &serde_json::json!({}), t(14))
            .await
            .unwrap(),
        None
    );
    // The admin mail has no row, and is queued.
    let admin = NewDelivery {
        subscription: crate::ADMIN_SUBSCRIPTION,
        ..delivery(0, 12)
    };
    assert_eq!(
        store
            .queue_deliveries(12, &[admin], t(14), fence)
            .await
            .unwrap(),
        1
    );

    // An account deleted takes its subscriptions with it.
    let bob = flotilla_domain::Username::new("bob").unwrap();
    store
        .create_account(&super::local("bob", flotilla_domain::Level::OrgMember))
        .await
        .unwrap();
    assert!(store.delete_account(&bob).await.unwrap());
    assert!(store.subscriptions(Some("bob")).await.unwrap().is_empty());
    assert!(store
        .due_deliveries(t(14), 10, 100)
        .await
        .unwrap()
        .iter()
        .all(|d| d.subscription != other.id));
}

pub async fn deliveries_are_retried_and_a_failing_subscription_is_disabled(h: Harness) {
    let store = h.store.as_ref();
    let fence = lead(store).await;
    let sub = store
        .add_subscription(
            &subscription("ann", Channel::webhook("http://127.0.0.1:9/x").unwrap()),
            t(1),
        )
        .await
        .unwrap();
    let other = store
        .add_subscription(
            &subscription("bob", Channel::email("bob@example.org").unwrap()),
            t(1),
        )
        .await
        .unwrap();
    store
        .queue_deliveries(
            4,
            &[
                delivery(sub.id, 1),
                delivery(sub.id, 2),
                delivery(sub.id, 3),
                delivery(sub.id, 4),
                delivery(other.id, 1),
            ],
            t(10),
            fence,
        )
        .await
        .unwrap();
    let ids: Vec<i64> = store
        .due_deliveries(t(10), 10, 100)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();

    // Held (a mail waiting for its digest): not tried, not counted.
    let held = DeliveryOutcome::Held { at: t(15) };
    store
        .finish_delivery(ids[0], &held, t(10), Some(2), fence)
        .await
        .unwrap();
    let due: Vec<(i64, u32)> = store
        .due_deliveries(t(14), 10, 100)
        .await
        .unwrap()
        .iter()
        .map(|d| (d.id, d.attempts))
        .collect();
    assert!(!due.iter().any(|(id, _)| *id == ids[0]), "held until 15");
    assert!(store
        .due_deliveries(t(15), 10, 100)
        .await
        .unwrap()
        .iter()
        .any(|d| d.id == ids[0] && d.attempts == 0 && d.last_error.is_none()));

    // Tried again later.
    let retry = DeliveryOutcome::Retry {
        at: t(30),
        error: "connection refused".to_owned(),
    };
    assert_eq!(
        store
            .finish_delivery(ids[0], &retry, t(11), Some(2), fence)
            .await
            .unwrap(),
        None
    );
    let due: Vec<i64> = store
        .due_deliveries(t(20), 10, 100)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert!(!due.contains(&ids[0]), "not before its time");
    let later = store.due_deliveries(t(30), 10, 100).await.unwrap();
    let first = later.iter().find(|d| d.id == ids[0]).unwrap();
    assert_eq!(first.attempts, 1);
    assert_eq!(first.last_error.as_deref(), Some("connection refused"));

    // Arrived: the subscription's failures are cleared, its time kept.
    store
        .finish_delivery(ids[0], &DeliveryOutcome::Delivered, t(31), Some(2), fence)
        .await
        .unwrap();
    let read = &store.subscriptions(Some("ann")).await.unwrap()[0];
    assert_eq!(read.last_sent_at, Some(t(31)));
    assert_eq!(read.failures, 0);
    // Finishing it again changes nothing.
    let failed = DeliveryOutcome::Failed {
        error: "HTTP 500".to_owned(),
    };
    assert_eq!(
        store
            .finish_delivery(ids[0], &failed, t(32), Some(2), fence)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.subscriptions(Some("ann")).await.unwrap()[0].failures,
        0
    );

    // A lost lease finishes nothing.
    let stale = crate::Fence(fence.0 - 1);
    assert!(matches!(
        store
            .finish_delivery(ids[1], &failed, t(33), Some(2), stale)
            .await,
        Err(StoreError::Fenced { .. })
    ));

    // Given up twice in a row: disabled, with a change its account reads,
    // and what else was pending for it fails with it.
    let last = store.last_change().await.unwrap();
    assert_eq!(
        store
            .finish_delivery(ids[1], &failed, t(33), Some(2), fence)
            .await
            .unwrap(),
        None
    );
    // A failure that does not count (another delivery of the same message,
    // a test) leaves the count as it is.
    let uncounted = store
        .queue_test(sub.id, &serde_json::json!({}), t(33))
        .await
        .unwrap()
        .unwrap();
    store
        .finish_delivery(uncounted.id, &failed, t(33), None, fence)
        .await
        .unwrap();
    assert_eq!(
        store.subscriptions(Some("ann")).await.unwrap()[0].failures,
        1
    );
    let disabled = store
        .finish_delivery(ids[2], &failed, t(34), Some(2), fence)
        .await
        .unwrap()
        .expect("disabled by the second failure in a row");
    assert_eq!(disabled.id, sub.id);
    assert_eq!(disabled.failures, 2);
    let (at, why) = disabled.disabled.clone().unwrap();
    assert_eq!(at, t(34));
    assert!(why.contains("HTTP 500"), "{why}");
    assert_eq!(store.subscriptions(Some("ann")).await.unwrap()[0], disabled);
    assert!(!disabled.wants("cluster.deployed"));
    let changes = store
        .changes(last, 10, Some((ChangeEntity::Notification, "ann")))
        .await
        .unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].kind, ChangeKind::NotificationDisabled);
    assert_eq!(changes[0].payload["subscription"], sub.id);
    let due: Vec<i64> = store
        .due_deliveries(t(40), 10, 100)
        .await
        .unwrap()
        .iter()
        .map(|d| d.subscription)
        .collect();
    assert_eq!(due, [other.id], "ann's fourth failed with its subscription");

    // Shown newest first, to everyone or to their account.
    let anns = store.deliveries(Some("ann"), 10).await.unwrap();
    assert_eq!(
        anns.iter().map(|d| d.state).collect::<Vec<_>>(),
        [
            DeliveryState::Failed,
            DeliveryState::Failed,
            DeliveryState::Failed,
            DeliveryState::Failed,
            DeliveryState::Delivered
        ],
        "the test, then the four of the changes"
    );
    assert_eq!(anns[4].finished_at, Some(t(31)));
    let fourth = anns.iter().find(|d| d.seq == Some(4)).unwrap();
    assert_eq!(
        fourth.last_error.as_deref(),
        Some(crate::failed_with_subscription(sub.id).as_str())
    );
    assert_eq!(store.deliveries(None, 2).await.unwrap().len(), 2);

    // Enabled again: failures forgotten.
    assert!(store.enable_subscription(sub.id).await.unwrap());
    let again = &store.subscriptions(Some("ann")).await.unwrap()[0];
    assert_eq!((again.failures, again.disabled.clone()), (0, None));

    // Finished ones are forgotten once old; pending ones stay.
    assert_eq!(store.forget_deliveries(t(100), fence).await.unwrap(), 5);
    assert_eq!(store.deliveries(None, 10).await.unwrap().len(), 1);
}

pub async fn a_refused_trigger_is_a_change_its_account_reads(h: Harness) {
    let store = h.store.as_ref();
    let fence = lead(store).await;
    let last = store.last_change().await.unwrap();
    let mut trigger = HandledTrigger {
        path: "ann/web.cf-create".to_owned(),
        digest: "aa".to_owned(),
        account: "ann".to_owned(),
        cluster: "web".to_owned(),
        outcome: "deployed".to_owned(),
        message: "web: 2 nodes".to_owned(),
        handled_at: t(1),
    };
    store.note_trigger(&trigger, fence).await.unwrap();
    trigger.digest = "bb".to_owned();
    trigger.outcome = "nodes_over_limit".to_owned();
    trigger.message = "at most 4 nodes".to_owned();
    store.note_trigger(&trigger, fence).await.unwrap();
    // Seen again: no second change.
    store.note_trigger(&trigger, fence).await.unwrap();
    let changes = store.changes(last, 10, None).await.unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].kind, ChangeKind::DropboxRefused);
    assert_eq!(changes[0].key, "ann");
    assert_eq!(changes[0].payload["code"], "nodes_over_limit");
    assert_eq!(changes[0].payload["path"], "ann/web.cf-create");
}
