//! The organisation half of the store contract.

use std::collections::BTreeSet;
use std::time::Duration as StdDuration;

use flotilla_domain::{
    lifetime_cost, Caller, ClusterTarget, InstanceId, InstanceType, LedgerKind, Level, Money,
    NodeEndSeen, NodeRecord, NodeState, OrgDefaults, OrgError, OrgEventKind, OrgRole, Organisation,
    SettingsPatch,
};
use tokio::task::JoinSet;

use super::{create, get, lead, local, name, pool, t, user, Harness};
use crate::{ClusterNodes, GoneNode, OrgChanged, OrgUsage, Store, StoreError};

const PRICE: Money = Money::from_micros(100_000);
pub(super) const HOUR: StdDuration = StdDuration::from_secs(3600);

fn caller(username: &str) -> Caller {
    Caller::signed_in(user(username), Level::GithubMember)
}

fn admin() -> Caller {
    Caller::signed_in(user("root"), Level::Admin)
}

fn m(s: &str) -> Money {
    s.parse().expect("money")
}

/// Listed nodes `n0`, `n1`, … launched at `launches`.
pub(super) fn listed(
    launches: &[chrono::DateTime<chrono::Utc>],
    price_per_hour: Money,
) -> Vec<crate::UsedNode> {
    launches
        .iter()
        .enumerate()
        .map(|(i, at)| crate::UsedNode {
            id: InstanceId::new(format!("n{i}")),
            launched_at: *at,
            price_per_hour,
        })
        .collect()
}

fn running(id: &str, launched: i64) -> NodeRecord {
    NodeRecord {
        id: InstanceId::new(id),
        instance_type: InstanceType::new("small").expect("valid type"),
        launched_at: t(launched),
        state: NodeState::Ready,
        state_since: t(launched),
        address: None,
        pool_version: None,
    }
}

fn gone(id: &str, launched: i64, gone_at: i64) -> GoneNode {
    GoneNode {
        id: InstanceId::new(id),
        instance_type: flotilla_domain::InstanceType::new("t").unwrap(),
        launched_at: t(launched),
        gone_at: t(gone_at),
    }
}

/// Accounts root (admin), ann, bob, eve; organisation `lab` owned by ann
/// with bob a member.
pub(super) async fn lab(store: &dyn Store) -> Organisation {
    for (u, level) in [
        ("root", Level::Admin),
        ("ann", Level::GithubMember),
        ("bob", Level::GithubMember),
        ("eve", Level::GithubMember),
    ] {
        create(store, &local(u, level)).await;
    }
    let org = Organisation::new(
        name("lab"),
        [user("ann")],
        pool("default"),
        &OrgDefaults::default(),
        t(0),
    )
    .expect("org");
    store.create_org(&org).await.expect("create_org");
    change(store, 1, |o| o.request_membership(&caller("bob"), t(1))).await;
    change(store, 2, |o| {
        o.decide_membership(&caller("ann"), &user("bob"), true, t(2))
    })
    .await;
    store.get_org(&name("lab")).await.unwrap().expect("lab")
}

async fn change(
    store: &dyn Store,
    at: i64,
    mut f: impl FnMut(&mut Organisation) -> Result<flotilla_domain::Effects, OrgError> + Send,
) -> OrgChanged {
    try_change(store, at, &mut f).await.expect("change_org")
}

async fn try_change(
    store: &dyn Store,
    at: i64,
    f: &mut (dyn FnMut(&mut Organisation) -> Result<flotilla_domain::Effects, OrgError> + Send),
) -> Result<OrgChanged, StoreError> {
    store.change_org(&name("lab"), t(at), f).await
}

pub(super) async fn ask(
    store: &dyn Store,
    who: &str,
    nodes: u32,
    ttl: StdDuration,
    at: i64,
) -> Result<OrgChanged, StoreError> {
    try_change(store, at, &mut |o: &mut Organisation| {
        o.request_capacity(&caller(who), nodes, ttl, PRICE, t(at))
            .map(|(fx, _)| fx)
    })
    .await
}

pub(super) async fn credit(store: &dyn Store, amount: &str, at: i64) {
    change(store, at, |o| o.credit(&admin(), m(amount), "test", t(at))).await;
}

fn org_error(result: Result<OrgChanged, StoreError>) -> OrgError {
    match result {
        Err(StoreError::Org(e)) => e,
        other => panic!("expected an organisation's refusal, got {other:?}"),
    }
}

async fn ledger_sum(store: &dyn Store) -> Money {
    store
        .ledger(&name("lab"))
        .await
        .expect("ledger")
        .iter()
        .map(|e| e.amount)
        .sum()
}

pub async fn create_org_then_get_and_list(h: Harness) {
    let store = &*h.store;
    let org = lab(store).await;
    assert_eq!(org.role(&user("ann")), Some(OrgRole::Owner));
    assert_eq!(org.role(&user("bob")), Some(OrgRole::Member));
    assert_eq!(store.list_orgs().await.unwrap(), vec![org.clone()]);
    let kinds: Vec<String> = store
        .events(&name("lab"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind.as_str().to_owned())
        .collect();
    assert_eq!(kinds, ["created", "membership_requested", "member_added"]);
    assert_eq!(store.events(&name("lab"), 1).await.unwrap().len(), 1);

    // A taken name, an account's name, an unknown owner: refused, nothing made.
    let again = Organisation::new(
        name("lab"),
        [user("eve")],
        pool("p"),
        &OrgDefaults::default(),
        t(5),
    )
    .unwrap();
    assert!(matches!(
        store.create_org(&again).await,
        Err(StoreError::Org(OrgError::Exists(_)))
    ));
    let accounts = Organisation::new(
        name("eve"),
        [user("ann")],
        pool("p"),
        &OrgDefaults::default(),
        t(5),
    )
    .unwrap();
    assert!(matches!(
        store.create_org(&accounts).await,
        Err(StoreError::Org(OrgError::NameTaken { .. }))
    ));
    let ghost = Organisation::new(
        name("physics"),
        [user("nobody")],
        pool("p"),
        &OrgDefaults::default(),
        t(5),
    )
    .unwrap();
    assert!(matches!(
        store.create_org(&ghost).await,
        Err(StoreError::Org(OrgError::UnknownAccount(_)))
    ));
    assert_eq!(store.list_orgs().await.unwrap().len(), 1);
    assert!(store.get_org(&name("physics")).await.unwrap().is_none());
}

pub async fn capacity_requests_size_the_cluster_record(h: Harness) {
    let store = &*h.store;
    let fence = lead(store).await;
    lab(store).await;
    credit(store, "100", 3).await;
    // No record while the cluster sleeps and never ran.
    assert!(get(store, "lab").await.is_none());
    let changed = ask(store, "ann", 3, HOUR, 10).await.unwrap();
    let record = changed.cluster.clone().expect("a record");
    assert_eq!(record.node_capacity.get(), 3);
    assert!(!record.is_public && !record.destroying && record.expires_at.is_none());
    assert_eq!(get(store, "lab").await, Some(record.clone()));
    let changed = ask(store, "bob", 2, 2 * HOUR, 20).await.unwrap();
    assert_eq!(changed.cluster.as_ref().unwrap().node_capacity.get(), 5);
    assert_eq!(
        store.next_capacity_expiry().await.unwrap(),
        Some(t(10 + 3600))
    );
    assert_eq!(
        store
            .get_org(&name("lab"))
            .await
            .unwrap()
            .unwrap()
            .requests
            .len(),
        2
    );

    // ann's request runs out: the cluster shrinks to bob's; then sleeps.
    assert!(store
        .expire_capacity(t(3000), fence)
        .await
        .unwrap()
        .is_empty());
    let fired = store.expire_capacity(t(10 + 3600), fence).await.unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].cluster.as_ref().unwrap().node_capacity.get(), 2);
    let fired = store.expire_capacity(t(20 + 7200), fence).await.unwrap();
    assert_eq!(fired[0].effects.cluster, Some(ClusterTarget::Nodes(0)));
    let asleep = get(store, "lab").await.expect("kept while asleep");
    assert_eq!(asleep.node_capacity.get(), 0);
    assert!(!asleep.destroying);
    assert_eq!(store.next_capacity_expiry().await.unwrap(), None);
    assert!(store
        .get_org(&name("lab"))
        .await
        .unwrap()
        .unwrap()
        .requests
        .is_empty());
}

pub async fn a_refused_change_changes_nothing(h: Harness) {
    let store = &*h.store;
    let before = lab(store).await;
    // No money: 1 node for an hour costs $0.10.
    let err = org_error(ask(store, "ann", 1, HOUR, 10).await);
    assert_eq!(err.code(), "insufficient_funds");
    let err = org_error(ask(store, "eve", 1, HOUR, 10).await);
    assert_eq!(err.code(), "not_org_member");
    let err = org_error(
        try_change(store, 11, &mut |o: &mut Organisation| {
            o.update_settings(
                &caller("ann"),
                &SettingsPatch {
                    min_nodes: Some(4),
                    max_nodes: Some(2),
                    ..SettingsPatch::default()
                },
                PRICE,
                t(11),
            )
        })
        .await,
    );
    assert_eq!(err.code(), "invalid_value");
    assert_eq!(store.get_org(&name("lab")).await.unwrap(), Some(before));
    assert!(get(store, "lab").await.is_none());
    assert!(store.ledger(&name("lab")).await.unwrap().is_empty());
}

pub async fn accrual_is_exact_split_by_user_and_day_and_matches_the_ledger(h: Harness) {
    let store = &*h.store;
    let fence = lead(store).await;
    lab(store).await;
    credit(store, "100", 3).await;
    ask(store, "ann", 2, 48 * HOUR, 10).await.unwrap();
    let launches = vec![t(20), t(25)];
    let usage = |_at: i64| OrgUsage {
        org: name("lab"),
        nodes: listed(&launches, PRICE),
    };
    // Uneven passes across a UTC midnight (t(0) is 22:13:20 UTC).
    let mut at = 30;
    while at < 6 * 3600 {
        store
            .accrue(&[usage(at)], t(at), fence)
            .await
            .expect("accrue");
        at += 997;
    }
    let end = t(at - 997);
    let expected = lifetime_cost(PRICE, t(20), end) + lifetime_cost(PRICE, t(25), end);
    let costs = store.costs(&name("lab")).await.unwrap();
    assert_eq!(costs.iter().map(|c| c.amount).sum::<Money>(), expected);
    assert!(costs
        .iter()
        .all(|c| c.user == Some(user("ann")) && c.cluster == name("lab")));
    let days: BTreeSet<_> = costs.iter().map(|c| c.day).collect();
    assert_eq!(days.len(), 2, "{costs:?}");
    let org = store.get_org(&name("lab")).await.unwrap().unwrap();
    assert_eq!(org.budget.balance, m("100") - expected);
    assert_eq!(ledger_sum(store).await, org.budget.balance);
    let spends = store
        .ledger(&name("lab"))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == LedgerKind::Spend)
        .count();
    assert_eq!(spends, 2, "one spend entry per day");
    // A pass at the same moment charges nothing more.
    store.accrue(&[usage(0)], end, fence).await.unwrap();
    assert_eq!(
        store
            .get_org(&name("lab"))
            .await
            .unwrap()
            .unwrap()
            .budget
            .balance,
        org.budget.balance
    );
}

pub async fn running_out_shuts_the_cluster_down(h: Harness) {
    let store = &*h.store;
    let fence = lead(store).await;
    lab(store).await;
    credit(store, "2", 3).await;
    ask(store, "ann", 2, 24 * HOUR, 10).await.unwrap();
    let usage = OrgUsage {
        org: name("lab"),
        nodes: listed(&[t(10), t(10)], PRICE),
    };
    // $2 at $0.20/h reaches $0.50 after 7.5 h.
    assert!(store
        .accrue(std::slice::from_ref(&usage), t(10 + 7 * 3600), fence)
        .await
        .unwrap()
        .is_empty());
    let changed = store
        .accrue(std::slice::from_ref(&usage), t(10 + 7 * 3600 + 1800), fence)
        .await
        .unwrap();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].effects.cluster, Some(ClusterTarget::Destroyed));
    assert!(changed[0].cluster.as_ref().unwrap().destroying);
    assert!(get(store, "lab").await.unwrap().destroying);
    let org = store.get_org(&name("lab")).await.unwrap().unwrap();
    assert!(org.requests.is_empty());
    assert!(org.budget.exhausted_at.is_some());
    assert_eq!(org.members.len(), 2, "people survive the pass");
    let events = store.events(&name("lab"), 1).await.unwrap();
    assert_eq!(events[0].kind, OrgEventKind::BudgetExhausted);
    assert_eq!(ledger_sum(store).await, org.budget.balance);
    // Shut down: requests are refused until an admin credits.
    assert_eq!(
        org_error(ask(store, "bob", 1, HOUR, 30000).await).code(),
        "insufficient_funds"
    );
    credit(store, "10", 30001).await;
    ask(store, "bob", 1, HOUR, 30002).await.unwrap();
    assert!(!get(store, "lab").await.unwrap().destroying);
}

pub async fn concurrent_requests_cannot_overspend(h: Harness) {
    let store = h.store.clone();
    lab(&*store).await;
    change(&*store, 3, |o| {
        o.update_settings(
            &admin(),
            &SettingsPatch {
                node_limit: Some(40),
                max_nodes: Some(40),
                ..SettingsPatch::default()
            },
            PRICE,
            t(3),
        )
    })
    .await;
    // $10: one request for 10 nodes over 8 h ($8) fits, two ($16) do not.
    credit(&*store, "10", 4).await;
    let mut tasks = JoinSet::new();
    for who in ["ann", "bob"] {
        let store = store.clone();
        tasks.spawn(async move { ask(&*store, who, 10, 24 * HOUR, 5).await.is_ok() });
    }
    let mut granted = 0;
    while let Some(ok) = tasks.join_next().await {
        granted += usize::from(ok.unwrap());
    }
    assert_eq!(granted, 1);
    assert_eq!(get(&*store, "lab").await.unwrap().node_capacity.get(), 10);
}

pub async fn deleting_an_account_removes_its_memberships(h: Harness) {
    let store = &*h.store;
    lab(store).await;
    change(store, 3, |o| o.request_membership(&caller("eve"), t(3))).await;
    store.delete_account(&user("bob")).await.unwrap();
    store.delete_account(&user("eve")).await.unwrap();
    let org = store.get_org(&name("lab")).await.unwrap().unwrap();
    assert_eq!(org.role(&user("bob")), None);
    assert!(org.pending.is_empty());
    // Each departure is the organisation's change, in its feed and events.
    let events = store.events(&name("lab"), 2).await.unwrap();
    assert!(
        events.iter().all(|e| e.kind == OrgEventKind::MemberRemoved),
        "{events:?}"
    );
    assert!(events[0].message.contains("bob"), "{events:?}");
    assert!(events[1].message.contains("eve"), "{events:?}");
    // Approving someone without an account is refused.
    let err = org_error(
        try_change(store, 4, &mut |o: &mut Organisation| {
            o.pending.insert(user("ghost"), t(4));
            o.decide_membership(&caller("ann"), &user("ghost"), true, t(4))
        })
        .await,
    );
    assert_eq!(err.code(), "unknown_account");
}

pub async fn the_monthly_allowance_is_credited_once_and_kept_in_the_ledger(h: Harness) {
    let store = &*h.store;
    let fence = lead(store).await;
    lab(store).await;
    change(store, 3, |o| {
        o.update_settings(
            &admin(),
            &SettingsPatch {
                monthly_allowance: Some(m("30")),
                max_balance: Some(m("50")),
                ..SettingsPatch::default()
            },
            PRICE,
            t(3),
        )
    })
    .await;
    credit(store, "25", 4).await;
    // Still the month the organisation was made in: nothing.
    assert!(store.accrue(&[], t(3600), fence).await.unwrap().is_empty());
    // The first of the next month (t(0) is 2023-11-14): up to the cap.
    let december = 17 * 24 * 3600;
    let changed = store.accrue(&[], t(december), fence).await.unwrap();
    assert_eq!(changed.len(), 1);
    let org = store.get_org(&name("lab")).await.unwrap().unwrap();
    assert_eq!(org.budget.balance, m("50"));
    assert_eq!(org.budget.allowance_month, Some((2023, 12)));
    // Once a month, across a reload of the state.
    assert!(store
        .accrue(&[], t(december + 3600), fence)
        .await
        .unwrap()
        .is_empty());
    let ledger = store.ledger(&name("lab")).await.unwrap();
    let allowances: Vec<Money> = ledger
        .iter()
        .filter(|e| e.kind == LedgerKind::Allowance)
        .map(|e| e.amount)
        .collect();
    assert_eq!(allowances, [m("25")]);
    assert_eq!(ledger_sum(store).await, m("50"));
}

/// Two servers on one database (two stores, each with its own
/// connections): capacity requests racing from both cannot spend the same
/// money twice, and accrual passes from both charge each moment once.
pub async fn two_servers_never_overspend_or_double_charge(h: Harness) {
    let (a, b) = (h.store.clone(), h.second.clone());
    let fence = lead(a.as_ref()).await;
    create(a.as_ref(), &local("root", Level::Admin)).await;
    for name in ["ann", "bob"] {
        create(a.as_ref(), &local(name, Level::GithubMember)).await;
    }
    let lab = name("lab");
    let mut org = Organisation::new(
        lab.clone(),
        [user("ann")],
        pool("default"),
        &OrgDefaults::default(),
        t(0),
    )
    .unwrap();
    org.members.insert(user("bob"), OrgRole::Member);
    a.create_org(&org).await.unwrap();
    let admin = Caller::signed_in(user("root"), Level::Admin);
    let price = Money::from_micros(100_000);
    a.change_org(&lab, t(1), &mut |o: &mut Organisation| {
        o.update_settings(
            &admin,
            &SettingsPatch {
                node_limit: Some(40),
                max_nodes: Some(40),
                ..SettingsPatch::default()
            },
            price,
            t(1),
        )?;
        o.credit(&admin, Money::from_dollars(10).unwrap(), "grant", t(1))
    })
    .await
    .unwrap();

    // $10: one request for 10 nodes over 8 h ($8) fits, not two ($16).
    let mut tasks = JoinSet::new();
    for (store, who) in [(a.clone(), "ann"), (b.clone(), "bob")] {
        tasks.spawn(async move {
            let caller = Caller::signed_in(user(who), Level::GithubMember);
            store
                .change_org(&name("lab"), t(2), &mut |o: &mut Organisation| {
                    o.request_capacity(&caller, 10, StdDuration::from_secs(24 * 3600), price, t(2))
                        .map(|(fx, _)| fx)
                })
                .await
                .is_ok()
        });
    }
    let mut granted = 0;
    while let Some(ok) = tasks.join_next().await {
        granted += usize::from(ok.unwrap());
    }
    assert_eq!(granted, 1);

    // Both servers run passes at the same moments: each moment is charged once.
    let usage = OrgUsage {
        org: lab.clone(),
        nodes: listed(&[t(2); 10], price),
    };
    for step in 1..=20 {
        let now = t(2 + step * 60);
        let (x, y) = tokio::join!(
            a.accrue(std::slice::from_ref(&usage), now, fence),
            b.accrue(std::slice::from_ref(&usage), now, fence)
        );
        x.unwrap();
        y.unwrap();
    }
    let org = b.get_org(&lab).await.unwrap().unwrap();
    let expected: Money = (0..10)
        .map(|_| lifetime_cost(price, t(2), t(2 + 20 * 60)))
        .sum();
    assert_eq!(
        Money::from_dollars(10).unwrap() - org.budget.balance,
        expected
    );
    let costs: Money = a.costs(&lab).await.unwrap().iter().map(|c| c.amount).sum();
    assert_eq!(costs, expected);
}

/// Publishes `lab`'s nodes as the leader does, metered at `PRICE`.
async fn publish_lab(
    store: &dyn Store,
    fence: crate::Fence,
    nodes: Vec<NodeRecord>,
    gone: Vec<GoneNode>,
    at: i64,
) {
    let c = ClusterNodes {
        cluster: name("lab"),
        is_public: false,
        nodes,
        meter: Some(flotilla_domain::NodePrices::flat(PRICE)),
        gone,
    };
    store
        .publish_nodes(fence, std::slice::from_ref(&c), t(at))
        .await
        .expect("publish");
}

pub async fn every_node_is_charged_from_launch_to_gone(h: Harness) {
    let store = &*h.store;
    let fence = lead(store).await;
    lab(store).await;
    credit(store, "100", 3).await;
    ask(store, "ann", 2, 48 * HOUR, 10).await.unwrap();
    let publish = |nodes, gone, at| publish_lab(store, fence, nodes, gone, at);
    publish(vec![running("n0", 20), running("n1", 25)], vec![], 26).await;
    store.accrue(&[], t(100), fence).await.unwrap();
    // n1 goes between two passes; n2 comes and goes before it is ever
    // published; n0 goes while no server watches.
    publish(vec![running("n0", 20)], vec![gone("n1", 25, 130)], 131).await;
    publish(vec![running("n0", 20)], vec![gone("n2", 150, 151)], 152).await;
    store.accrue(&[], t(200), fence).await.unwrap();
    publish(vec![], vec![], 300).await;
    // A node the pass lists but nothing published yet is put on the meter.
    let usage = OrgUsage {
        org: name("lab"),
        nodes: vec![crate::UsedNode {
            id: InstanceId::new("n3"),
            launched_at: t(390),
            price_per_hour: PRICE,
        }],
    };
    store
        .accrue(std::slice::from_ref(&usage), t(400), fence)
        .await
        .unwrap();

    let meters = store.usage(&name("lab")).await.unwrap();
    let ends: Vec<(&str, Option<(i64, NodeEndSeen)>)> = meters
        .iter()
        .map(|m| {
            (
                m.id.as_str(),
                m.end.map(|e| (e.at.timestamp() - t(0).timestamp(), e.seen)),
            )
        })
        .collect();
    assert_eq!(
        ends,
        [
            ("n0", Some((300, NodeEndSeen::Unwatched))),
            ("n1", Some((130, NodeEndSeen::Gone))),
            ("n2", Some((151, NodeEndSeen::Gone))),
            ("n3", None),
        ]
    );
    let expected = lifetime_cost(PRICE, t(20), t(300))
        + lifetime_cost(PRICE, t(25), t(130))
        + lifetime_cost(PRICE, t(150), t(151))
        + lifetime_cost(PRICE, t(390), t(400));
    assert_eq!(meters.iter().map(|m| m.charged()).sum::<Money>(), expected);
    let costs = store.costs(&name("lab")).await.unwrap();
    assert_eq!(costs.iter().map(|c| c.amount).sum::<Money>(), expected);
    let org = store.get_org(&name("lab")).await.unwrap().unwrap();
    assert_eq!(org.budget.balance, m("100") - expected);
    assert_eq!(ledger_sum(store).await, org.budget.balance);
    let notes: Vec<String> = store
        .ledger(&name("lab"))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == LedgerKind::Note)
        .map(|e| e.reason)
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("node n0"), "{notes:?}");
    // Settled meters are charged no more; the running one goes on.
    store.accrue(&[], t(436), fence).await.unwrap();
    let org = store.get_org(&name("lab")).await.unwrap().unwrap();
    assert_eq!(
        org.budget.balance,
        m("100")
            - expected
            - (lifetime_cost(PRICE, t(390), t(436)) - lifetime_cost(PRICE, t(390), t(400)))
    );
}

/// A job attempt's instance is metered like a node of the cluster, but
/// charged to whoever submitted the job (the organisation itself for the
/// server's runs), and a cluster's publication leaves its meter alone.
pub async fn a_jobs_instances_are_metered_and_charged_to_its_submitter(h: Harness) {
    let store = &*h.store;
    let fence = lead(store).await;
    lab(store).await;
    credit(store, "100", 3).await;
    ask(store, "ann", 1, 48 * HOUR, 10).await.unwrap();
    publish_lab(store, fence, vec![running("n0", 20)], vec![], 21).await;
    let job = |org: &str, id: &str, attempt: &str, launched: i64, by: Option<&str>| {
        flotilla_domain::NodeMeter::for_job(
            name(org),
            InstanceId::new(id),
            t(launched),
            PRICE,
            flotilla_domain::JobMeter {
                attempt: attempt.to_owned(),
                user: by.map(user),
            },
        )
    };
    // A job of an organisation that does not exist is charged to none.
    store
        .meter_job_instances(
            fence,
            &[
                job("lab", "j1", "1/1", 30, Some("bob")),
                job("ghost", "j9", "9/1", 30, Some("bob")),
            ],
            true,
            t(31),
        )
        .await
        .unwrap();
    publish_lab(store, fence, vec![running("n0", 20)], vec![], 40).await;
    store.accrue(&[], t(100), fence).await.unwrap();
    // j1 goes; j2, a run of the server's, comes; a listing misses j2 and
    // shows it again: it ran all along.
    let j2 = job("lab", "j2", "2/1", 110, None);
    for (listed, at) in [(vec![j2.clone()], 130), (vec![], 150), (vec![j2], 160)] {
        store
            .meter_job_instances(fence, &listed, false, t(at))
            .await
            .unwrap();
    }
    publish_lab(store, fence, vec![running("n0", 20)], vec![], 170).await;
    store.accrue(&[], t(200), fence).await.unwrap();

    let meters = store.usage(&name("lab")).await.unwrap();
    let seen: Vec<(&str, Option<&str>, Option<i64>)> = meters
        .iter()
        .map(|m| {
            (
                m.id.as_str(),
                m.job.as_ref().map(|j| j.attempt.as_str()),
                m.end.map(|e| e.at.timestamp() - t(0).timestamp()),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("n0", None, None),
            ("j1", Some("1/1"), Some(130)),
            ("j2", Some("2/1"), None)
        ]
    );
    assert!(store.usage(&name("ghost")).await.unwrap().is_empty());
    let costs = store.costs(&name("lab")).await.unwrap();
    let sum = |who: Option<&str>| -> Money {
        costs
            .iter()
            .filter(|c| c.user.as_ref().map(|u| u.as_str()) == who)
            .map(|c| c.amount)
            .sum()
    };
    assert_eq!(sum(Some("ann")), lifetime_cost(PRICE, t(20), t(200)));
    assert_eq!(sum(Some("bob")), lifetime_cost(PRICE, t(30), t(130)));
    assert_eq!(sum(None), lifetime_cost(PRICE, t(110), t(200)));
    let org = store.get_org(&name("lab")).await.unwrap().unwrap();
    assert_eq!(
        org.budget.balance,
        m("100") - sum(Some("ann")) - sum(Some("bob")) - sum(None)
    );
    assert_eq!(ledger_sum(store).await, org.budget.balance);
}

pub async fn a_node_listed_again_after_its_meter_ended_runs_on(h: Harness) {
    let store = &*h.store;
    let fence = lead(store).await;
    lab(store).await;
    credit(store, "100", 3).await;
    ask(store, "ann", 1, 48 * HOUR, 10).await.unwrap();
    let publish = |nodes, gone, at| publish_lab(store, fence, nodes, gone, at);
    publish(vec![running("n0", 20)], vec![], 21).await;
    store.accrue(&[], t(100), fence).await.unwrap();
    // A listing misses it; the pass settles its meter; it is listed again.
    publish(vec![], vec![gone("n0", 20, 130)], 131).await;
    store.accrue(&[], t(200), fence).await.unwrap();
    assert!(store.usage(&name("lab")).await.unwrap()[0].settled());
    publish(vec![running("n0", 20)], vec![], 250).await;
    store.accrue(&[], t(400), fence).await.unwrap();
    let meters = store.usage(&name("lab")).await.unwrap();
    assert_eq!(meters.len(), 1);
    assert_eq!(meters[0].end, None, "running again");
    let expected = lifetime_cost(PRICE, t(20), t(400));
    assert_eq!(
        meters[0].charged(),
        expected,
        "charged all along, the gap included"
    );
    let costs: Money = store
        .costs(&name("lab"))
        .await
        .unwrap()
        .iter()
        .map(|c| c.amount)
        .sum();
    assert_eq!(costs, expected);
}

/// The clock steps back past the organisation's `accrued_until` (the
/// server's clock was corrected): a node first charged in that window is
/// charged from where it was, not again from its launch.
pub async fn a_clock_step_back_charges_each_moment_once(h: Harness) {
    let store = &*h.store;
    let fence = lead(store).await;
    lab(store).await;
    credit(store, "100", 3).await;
    ask(store, "ann", 3, 48 * HOUR, 10).await.unwrap();
    let publish = |nodes, gone, at| publish_lab(store, fence, nodes, gone, at);
    publish(vec![running("n0", 20)], vec![], 21).await;
    store.accrue(&[], t(300), fence).await.unwrap();
    // The clock is back at 181: a node launched at 180 is charged twice
    // before the clock passes 300 again.
    publish(vec![running("n0", 20), running("n1", 180)], vec![], 181).await;
    store.accrue(&[], t(200), fence).await.unwrap();
    store.accrue(&[], t(250), fence).await.unwrap();
    store.accrue(&[], t(400), fence).await.unwrap();
    let expected = lifetime_cost(PRICE, t(20), t(400)) + lifetime_cost(PRICE, t(180), t(400));
    let meters = store.usage(&name("lab")).await.unwrap();
    assert_eq!(meters.iter().map(|m| m.charged()).sum::<Money>(), expected);
    let costs: Money = store
        .costs(&name("lab"))
        .await
        .unwrap()
        .iter()
        .map(|c| c.amount)
        .sum();
    assert_eq!(costs, expected, "each moment charged once");
    let org = store.get_org(&name("lab")).await.unwrap().unwrap();
    assert_eq!(org.budget.balance, m("100") - expected);
}

/// Two servers take turns at publishing and charging one organisation's
/// nodes (leadership changed hands, and back): what one keeps of the
/// meters between its passes never hides what the other wrote.
pub async fn meters_written_by_another_server_are_charged_as_written(h: Harness) {
    let (a, b) = (h.store.as_ref(), h.second.as_ref());
    let fence = lead(a).await;
    lab(a).await;
    credit(a, "100", 3).await;
    ask(a, "ann", 3, 48 * HOUR, 10).await.unwrap();
    publish_lab(
        a,
        fence,
        vec![running("n0", 20), running("n1", 25)],
        vec![],
        26,
    )
    .await;
    a.accrue(&[], t(100), fence).await.unwrap();
    // The other server sees n1 go and n2 come, and charges them.
    let (n0, n2) = (running("n0", 20), running("n2", 140));
    publish_lab(
        b,
        fence,
        vec![n0.clone(), n2.clone()],
        vec![gone("n1", 25, 130)],
        141,
    )
    .await;
    b.accrue(&[], t(200), fence).await.unwrap();
    a.accrue(&[], t(300), fence).await.unwrap();
    publish_lab(a, fence, vec![n2], vec![gone("n0", 20, 350)], 351).await;
    b.accrue(&[], t(400), fence).await.unwrap();
    a.accrue(&[], t(500), fence).await.unwrap();

    let expected = lifetime_cost(PRICE, t(20), t(350))
        + lifetime_cost(PRICE, t(25), t(130))
        + lifetime_cost(PRICE, t(140), t(500));
    let meters = a.usage(&name("lab")).await.unwrap();
    assert_eq!(meters.iter().map(|m| m.charged()).sum::<Money>(), expected);
    let costs: Money = b
        .costs(&name("lab"))
        .await
        .unwrap()
        .iter()
        .map(|c| c.amount)
        .sum();
    assert_eq!(costs, expected, "each node charged once, to its end");
    let org = b.get_org(&name("lab")).await.unwrap().unwrap();
    assert_eq!(org.budget.balance, m("100") - expected);
}
