//! The drop-box half of the store contract: a trigger is noted once by
//! its path and digest (a second note, or a racing server's, changes
//! nothing), read back whole, noted only under the lease, and forgotten
//! once old.

use tokio::task::JoinSet;

use super::{lead, t, Harness};
use crate::{HandledTrigger, StoreError};

fn trigger(path: &str, digest: &str, at: i64) -> HandledTrigger {
    HandledTrigger {
        path: path.to_owned(),
        digest: digest.to_owned(),
        account: "ann".to_owned(),
        cluster: "web".to_owned(),
        outcome: "deployed".to_owned(),
        message: "web: 2 nodes for 1h".to_owned(),
        handled_at: t(at),
    }
}

pub async fn a_trigger_is_noted_once_by_its_path_and_digest(h: Harness) {
    let store = h.store.as_ref();
    let fence = lead(store).await;
    let first = trigger("ann/web.cf-create", "aa", 1);
    assert!(store.note_trigger(&first, fence).await.unwrap());
    let mut again = first.clone();
    again.outcome = "invalid_trigger".to_owned();
    again.handled_at = t(2);
    assert!(
        !store.note_trigger(&again, fence).await.unwrap(),
        "handled already"
    );
    assert_eq!(
        store
            .handled_trigger("ann/web.cf-create", "aa")
            .await
            .unwrap(),
        Some(first.clone()),
        "the first, whole"
    );
    // Other content at the same path is another trigger.
    assert_eq!(
        store
            .handled_trigger("ann/web.cf-create", "bb")
            .await
            .unwrap(),
        None
    );
    assert!(store
        .note_trigger(&trigger("ann/web.cf-create", "bb", 3), fence)
        .await
        .unwrap());
    assert!(store
        .note_trigger(&trigger("ann/web.cf-delete", "", 4), fence)
        .await
        .unwrap());

    let since: Vec<(String, String)> = store
        .handled_triggers(t(3))
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.path, t.digest))
        .collect();
    assert_eq!(
        since,
        [
            ("ann/web.cf-create".to_owned(), "bb".to_owned()),
            ("ann/web.cf-delete".to_owned(), String::new())
        ],
        "the oldest first"
    );

    // Old ones are forgotten; the rest stay.
    assert_eq!(store.forget_triggers(t(3), fence).await.unwrap(), 1);
    assert_eq!(
        store
            .handled_trigger("ann/web.cf-create", "aa")
            .await
            .unwrap(),
        None
    );
    assert!(store
        .handled_trigger("ann/web.cf-create", "bb")
        .await
        .unwrap()
        .is_some());
}

pub async fn racing_servers_note_a_trigger_once_and_a_lost_lease_notes_nothing(h: Harness) {
    let fence = lead(h.store.as_ref()).await;
    let mut racing = JoinSet::new();
    for (i, store) in [h.store.clone(), h.second.clone()]
        .into_iter()
        .cycle()
        .take(8)
        .enumerate()
    {
        racing.spawn(async move {
            let mut noted = trigger("bob/db.cf-create", "cc", 1);
            noted.message = format!("writer {i}");
            store.note_trigger(&noted, fence).await.unwrap()
        });
    }
    let mut new = 0;
    while let Some(noted) = racing.join_next().await {
        new += usize::from(noted.unwrap());
    }
    assert_eq!(new, 1, "one writer noted it");

    let stale = crate::Fence(fence.0 - 1);
    let e = h
        .store
        .note_trigger(&trigger("bob/other.cf-create", "dd", 2), stale)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Fenced { .. }), "{e:?}");
    assert_eq!(
        h.store
            .handled_trigger("bob/other.cf-create", "dd")
            .await
            .unwrap(),
        None
    );
}
