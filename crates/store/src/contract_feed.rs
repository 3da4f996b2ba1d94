//! The change feed half of the store contract.

use std::collections::BTreeSet;

use flotilla_domain::{ChangeEntity, ChangeKind, Level, OrgEventKind};
use tokio::task::JoinSet;

use super::orgs::{ask, credit, lab};
use super::{command, create, deploy, lead, local, name, t, user, Harness, CONTRACT_HOLDER};
use crate::{Store, StoreError};

/// The kinds and keys of every change after `after`.
async fn feed(store: &dyn Store, after: i64) -> Vec<(ChangeKind, String)> {
    store
        .changes(after, 1000, None)
        .await
        .expect("changes")
        .into_iter()
        .map(|c| (c.kind, c.key))
        .collect()
}

fn entry(kind: ChangeKind, key: &str) -> (ChangeKind, String) {
    (kind, key.to_owned())
}

pub async fn every_change_is_in_the_feed_in_order(h: Harness) {
    let store = h.store.as_ref();
    assert_eq!(store.last_change().await.unwrap(), 0);
    assert!(feed(store, 0).await.is_empty());
    let fence = lead(store).await;

    deploy(store, &command("a", 2, false, "default"), 0, 600).await;
    deploy(store, &command("a", 3, false, "default"), 10, 600).await;
    deploy(store, &command("a", 3, false, "default"), 20, 900).await;
    let destroyed = store.destroy(&name("a"), t(30)).await.unwrap().unwrap();
    assert!(store
        .forget(&name("a"), destroyed.generation, fence)
        .await
        .unwrap());
    deploy(store, &command("b", 1, false, "default"), 40, 50).await;
    assert_eq!(store.expire_due(t(60), fence).await.unwrap().len(), 1);
    create(store, &local("ann", Level::OrgMember)).await;
    create(store, &local("root", Level::Admin)).await;
    store.set_level(&user("ann"), Level::Admin).await.unwrap();
    assert!(store.delete_account(&user("ann")).await.unwrap());

    let expected = vec![
        entry(ChangeKind::LeaseTaken, CONTRACT_HOLDER),
        entry(ChangeKind::ClusterDeployed, "a"),
        entry(ChangeKind::ClusterResized, "a"),
        entry(ChangeKind::ClusterExtended, "a"),
        entry(ChangeKind::ClusterDestroyed, "a"),
        entry(ChangeKind::ClusterForgotten, "a"),
        entry(ChangeKind::ClusterDeployed, "b"),
        entry(ChangeKind::ClusterExpired, "b"),
        entry(ChangeKind::AccountCreated, "ann"),
        entry(ChangeKind::AccountCreated, "root"),
        entry(ChangeKind::AccountChanged, "ann"),
        entry(ChangeKind::AccountDeleted, "ann"),
    ];
    assert_eq!(feed(store, 0).await, expected);

    let all = store.changes(0, 1000, None).await.unwrap();
    let seqs: Vec<i64> = all.iter().map(|c| c.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(store.last_change().await.unwrap(), *seqs.last().unwrap());
    // Times are the changes' own; the record's state is in the payload.
    // (all[0] is the lease taken for the leader's writes.)
    assert_eq!(all[2].at, t(10));
    assert_eq!(all[2].payload["nodes"], 3);
    assert_eq!(all[7].at, t(60));
    assert_eq!(all[8].payload["level"], "org_member");
    assert!(
        all[8].payload.get("password_hash").is_none(),
        "no secret in the feed"
    );

    // A reader resumes after the last it saw, a page at a time.
    let page = store.changes(seqs[2], 2, None).await.unwrap();
    assert_eq!(page.iter().map(|c| c.seq).collect::<Vec<_>>(), &seqs[3..5]);
    // And may follow one record.
    let only_a = store
        .changes(0, 1000, Some((ChangeEntity::Cluster, "a")))
        .await
        .unwrap();
    assert_eq!(only_a.len(), 5);
    assert!(only_a.iter().all(|c| c.key == "a"));
    let ann = store
        .changes(0, 1000, Some((ChangeEntity::Account, "ann")))
        .await
        .unwrap();
    assert_eq!(ann.len(), 3);
    assert!(store
        .changes(0, 1000, Some((ChangeEntity::Org, "a")))
        .await
        .unwrap()
        .is_empty());
}

pub async fn a_refused_change_leaves_nothing_in_the_feed(h: Harness) {
    let store = h.store.as_ref();
    let fence = lead(store).await;
    deploy(store, &command("a", 2, false, "default"), 0, 600).await;
    create(store, &local("root", Level::Admin)).await;
    let before = store.last_change().await.unwrap();

    assert!(matches!(
        store
            .deploy(&command("a", 2, true, "default"), t(1), t(600))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.delete_account(&user("root")).await,
        Err(StoreError::LastAdmin(_))
    ));
    assert!(matches!(
        store.create_account(&local("root", Level::OrgMember)).await,
        Err(StoreError::AccountExists { .. })
    ));
    // Nothing to do is no change either.
    assert!(store.destroy(&name("ghost"), t(2)).await.unwrap().is_none());
    assert!(!store.forget(&name("a"), 1, fence).await.unwrap());
    assert!(store.expire_due(t(3), fence).await.unwrap().is_empty());
    assert_eq!(store.last_change().await.unwrap(), before);
}

pub async fn organisation_changes_are_in_the_feed(h: Harness) {
    let store = h.store.as_ref();
    let after_accounts = {
        lab(store).await;
        store.last_change().await.unwrap()
    };
    let org: Vec<(ChangeKind, String)> = feed(store, 0)
        .await
        .into_iter()
        .filter(|(k, _)| k.entity() == ChangeEntity::Org)
        .collect();
    assert_eq!(
        org,
        vec![
            entry(ChangeKind::Org(OrgEventKind::Created), "lab"),
            entry(ChangeKind::Org(OrgEventKind::MembershipRequested), "lab"),
            entry(ChangeKind::Org(OrgEventKind::MemberAdded), "lab"),
        ]
    );

    credit(store, "100", 3).await;
    ask(store, "ann", 3, super::orgs::HOUR, 10).await.unwrap();
    ask(store, "bob", 2, super::orgs::HOUR, 20).await.unwrap();
    let kinds: Vec<(ChangeKind, String)> = feed(store, after_accounts)
        .await
        .into_iter()
        .filter(|(k, _)| k.entity() == ChangeEntity::Cluster)
        .collect();
    assert_eq!(
        kinds,
        vec![
            entry(ChangeKind::ClusterDeployed, "lab"),
            entry(ChangeKind::ClusterResized, "lab"),
        ]
    );
}

/// Writers racing from two servers: every change gets its own number, and
/// a reader following the feed while they write (resuming after the last
/// number it saw) sees each change exactly once. That needs numbers in
/// commit order: a change numbered lower but committed later would be
/// skipped.
pub async fn a_follower_sees_every_change_of_racing_writers_once(h: Harness) {
    const WRITERS: usize = 8;
    const EACH: usize = 12;
    let mut writers = JoinSet::new();
    for w in 0..WRITERS {
        let store = if w % 2 == 0 {
            h.store.clone()
        } else {
            h.second.clone()
        };
        writers.spawn(async move {
            for i in 0..EACH {
                let c = command(&format!("w{w}-{i}"), 1, false, "default");
                store.deploy(&c, t(0), t(600)).await.expect("deploy");
            }
        });
    }
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let follower = {
        let store = h.second.clone();
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = 0;
            loop {
                // Read once more after the writers are done: whatever the
                // follower skipped while they wrote is then never seen.
                let last_pass = !writing.load(std::sync::atomic::Ordering::SeqCst);
                let page = store.changes(after, 7, None).await.expect("changes");
                if page.is_empty() && last_pass {
                    return seen;
                }
                for c in page {
                    after = c.seq;
                    seen.push(c.key);
                }
                tokio::task::yield_now().await;
            }
        })
    };
    while let Some(done) = writers.join_next().await {
        done.expect("writer");
    }
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    let seen = follower.await.expect("follower");
    assert_eq!(
        seen.len(),
        WRITERS * EACH,
        "the follower saw {} of {} changes",
        seen.len(),
        WRITERS * EACH
    );
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), WRITERS * EACH, "each change once");
}

pub async fn pruning_removes_only_older_changes_and_numbers_go_on(h: Harness) {
    let store = h.store.as_ref();
    deploy(store, &command("a", 1, false, "default"), 0, 600).await;
    deploy(store, &command("b", 1, false, "default"), 100, 600).await;
    let last = store.last_change().await.unwrap();
    assert_eq!(store.prune_changes(t(50)).await.unwrap(), 1);
    assert_eq!(
        feed(store, 0).await,
        vec![entry(ChangeKind::ClusterDeployed, "b")]
    );
    assert_eq!(store.last_change().await.unwrap(), last);
    assert_eq!(store.prune_changes(t(200)).await.unwrap(), 1);
    assert!(feed(store, 0).await.is_empty());
    // Numbers are never reused, so a reader's position stays meaningful.
    deploy(store, &command("c", 1, false, "default"), 300, 600).await;
    let c = store.changes(0, 10, None).await.unwrap();
    assert_eq!(c.len(), 1);
    assert!(c[0].seq > last, "{} after {last}", c[0].seq);
}

pub async fn a_commit_bumps_the_change_notices(h: Harness) {
    let store = h.store.as_ref();
    let mut notices = store.change_notices();
    notices.borrow_and_update();
    deploy(store, &command("a", 1, false, "default"), 0, 600).await;
    tokio::time::timeout(std::time::Duration::from_secs(5), notices.changed())
        .await
        .expect("a notice within 5 s")
        .expect("the store is alive");
}
