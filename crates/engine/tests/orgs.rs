//! Organisations end to end on the fake cloud, under paused time (which
//! the engine's clock follows: hours pass in milliseconds).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{config, name, Harness};
use flotilla_cloud::fake::{FakeCloud, FakeConfig};
use flotilla_cloud::Clock;
use flotilla_control::{CreateOrg, CreditOrg, DecideMembership, RequestMembership};
use flotilla_domain::{
    lifetime_cost, AccountKind, Caller, ClusterState, LedgerKind, Level, Money, NodeEndSeen,
    NodeMeter, NodeState, Username,
};
use flotilla_engine::EngineError;
use flotilla_store::{AccountRecord, MemoryStore, Store};

const PRICE: Money = Money::from_micros(100_000);
const HOUR: i64 = 3600;

fn user(name: &str) -> Username {
    Username::new(name).unwrap()
}

fn caller(name: &str) -> Caller {
    Caller::signed_in(user(name), Level::GithubMember)
}

fn m(s: &str) -> Money {
    s.parse().unwrap()
}

async fn accounts(store: &dyn Store) {
    for u in ["ann", "bob", "eve"] {
        store
            .create_account(&AccountRecord {
                username: user(u),
                kind: AccountKind::Github,
                level: Level::GithubMember,
                password_hash: None,
                grants: BTreeSet::new(),
                created_at: chrono::Utc::now(),
            })
            .await
            .unwrap();
    }
}

/// `lab`, owned by ann, bob a member, with `balance` dollars.
async fn lab(h: &Harness, balance: &str) {
    let admin = Caller::local_operator();
    let create = CreateOrg {
        name: name("lab"),
        owners: vec!["ann".into()],
        pool: None,
    };
    h.control.run(&admin, create).await.unwrap();
    let ask = RequestMembership { org: name("lab") };
    h.control.run(&caller("bob"), ask).await.unwrap();
    let approve = DecideMembership {
        org: name("lab"),
        user: user("bob"),
        approve: true,
    };
    h.control.run(&caller("ann"), approve).await.unwrap();
    let credit = CreditOrg {
        org: name("lab"),
        amount: m(balance),
        reason: "grant".into(),
    };
    h.control.run(&admin, credit).await.unwrap();
}

async fn start(store: Arc<dyn Store>, cloud: FakeCloud) -> Harness {
    Harness::start(cloud, store, config()).await
}

async fn ready(h: &Harness, n: usize) {
    h.until(Duration::from_secs(5), &format!("{n} ready nodes"), |h| {
        let s = h.status("lab");
        s.nodes.len() == n && s.ready_nodes() == n
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn requests_size_the_cluster_which_sleeps_and_wakes() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    accounts(&*store).await;
    let mut h = start(store, FakeCloud::new(FakeConfig::default())).await;
    lab(&h, "100").await;

    let s = h.status("lab");
    assert_eq!(s.state, ClusterState::Asleep);
    assert_eq!(s.org.as_ref().unwrap().max_nodes, 10);

    // A non-member cannot ask, nor see it.
    let err = h
        .capacity(&caller("eve"), &name("lab"), 1, HOUR, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Org(ref e) if e.code() == "not_org_member"),
        "{err}"
    );
    assert!(h.control.status(&caller("eve"), &name("lab")).is_err());

    // ann wakes it with 2 nodes for an hour; bob adds 3 for two hours.
    let v = h
        .capacity(&caller("ann"), &name("lab"), 2, HOUR, true)
        .await
        .unwrap();
    assert_eq!(v.cluster.settled, Some(true));
    assert_eq!(v.cluster.ready_nodes(), 2);
    h.capacity(&caller("bob"), &name("lab"), 3, 2 * HOUR, false)
        .await
        .unwrap();
    ready(&h, 5).await;
    let s = h.control.status(&caller("bob"), &name("lab")).unwrap();
    let org = s.org.unwrap();
    assert_eq!(org.requests.len(), 2);
    assert!(org.next_change.is_some());

    // A request over max_nodes is clamped and says so.
    let v = h
        .capacity(&caller("bob"), &name("lab"), 40, 60, false)
        .await
        .unwrap();
    assert!(v.clamped);
    ready(&h, 10).await;

    // Requests run out: 10 → 5 after a minute, 3 after an hour, then asleep.
    tokio::time::sleep(Duration::from_secs(61)).await;
    ready(&h, 5).await;
    tokio::time::sleep(Duration::from_secs(HOUR as u64)).await;
    ready(&h, 3).await;
    tokio::time::sleep(Duration::from_secs(HOUR as u64)).await;
    h.until(Duration::from_secs(5), "asleep", |h| {
        h.status("lab").state == ClusterState::Asleep
    })
    .await;
    assert_eq!(h.cloud.instance_count(), 0);

    // The next request wakes it.
    h.capacity(&caller("bob"), &name("lab"), 1, HOUR, false)
        .await
        .unwrap();
    ready(&h, 1).await;

    // DEPLOY by a member is a capacity request; DESTROY is for owners.
    h.deploy_as(&caller("bob"), "lab", 2, HOUR, false, None)
        .await
        .unwrap();
    ready(&h, 2).await;
    assert!(h.destroy_as(&caller("bob"), "lab").await.is_err());
    h.destroy_as(&caller("ann"), "lab").await.unwrap();
    h.control.wait_settled(&name("lab")).await;
    assert_eq!(h.cloud.instance_count(), 0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn running_out_of_money_shuts_the_cluster_down_within_seconds() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    accounts(&*store).await;
    let mut h = start(store.clone(), FakeCloud::new(FakeConfig::default())).await;
    // $1.70 pays for 2 nodes ($0.20/h) over the 8 h runway ($1.60).
    lab(&h, "1.70").await;
    h.capacity(&caller("ann"), &name("lab"), 2, 24 * HOUR, false)
        .await
        .unwrap();
    ready(&h, 2).await;

    // At $0.20/h the balance reaches the $0.50 threshold after 6 h.
    tokio::time::sleep(Duration::from_secs(6 * HOUR as u64 - 60)).await;
    assert_eq!(h.status("lab").nodes.len(), 2, "still paid for");
    let shut_down_by = tokio::time::Instant::now() + Duration::from_secs(60 + 15);
    h.until(Duration::from_secs(120), "shut down", |h| {
        h.status("lab").nodes.is_empty()
    })
    .await;
    assert!(
        tokio::time::Instant::now() <= shut_down_by,
        "shut down within seconds of running out"
    );
    let view = h
        .control
        .get_org(&caller("ann"), &name("lab"))
        .await
        .unwrap();
    assert!(view.org.budget.exhausted_at.is_some());
    assert!(view.org.requests.is_empty());
    assert!(view
        .recent_events
        .iter()
        .any(|e| e.kind == flotilla_domain::OrgEventKind::BudgetExhausted));
    let status = h.status("lab");
    assert!(status.org.unwrap().shut_down);

    // Nothing is charged once the nodes are gone, and the books balance.
    h.engine.accrue_now().await.unwrap();
    let balance = h
        .control
        .get_org(&caller("ann"), &name("lab"))
        .await
        .unwrap()
        .org
        .budget
        .balance;
    tokio::time::sleep(Duration::from_secs(HOUR as u64)).await;
    h.engine.accrue_now().await.unwrap();
    let later = h
        .control
        .get_org(&caller("ann"), &name("lab"))
        .await
        .unwrap()
        .org
        .budget
        .balance;
    assert_eq!(balance, later);
    assert!(balance <= m("0.50") && balance > m("0.40"), "{balance}");
    let ledger: Money = h
        .control
        .org_ledger(&caller("ann"), &name("lab"))
        .await
        .unwrap()
        .iter()
        .map(|e| e.amount)
        .sum();
    assert_eq!(ledger, balance);
    let costs: Money = h
        .control
        .org_costs(&caller("bob"), &name("lab"))
        .await
        .unwrap()
        .iter()
        .map(|c| c.amount)
        .sum();
    assert_eq!(costs, m("1.70") - balance);

    // Refused while shut down, with what is missing; a credit restores.
    let err = h
        .capacity(&caller("bob"), &name("lab"), 1, HOUR, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Org(ref e) if e.code() == "insufficient_funds"),
        "{err}"
    );
    let credit = CreditOrg {
        org: name("lab"),
        amount: m("5"),
        reason: "top-up".into(),
    };
    h.control
        .run(&Caller::local_operator(), credit)
        .await
        .unwrap();
    h.capacity(&caller("bob"), &name("lab"), 1, HOUR, false)
        .await
        .unwrap();
    ready(&h, 1).await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn cost_is_exact_across_a_restart() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    accounts(&*store).await;
    let cloud = FakeCloud::new(FakeConfig::default());
    let mut h = start(store.clone(), cloud.clone()).await;
    lab(&h, "100").await;
    h.capacity(&caller("ann"), &name("lab"), 2, 24 * HOUR, false)
        .await
        .unwrap();
    h.capacity(&caller("bob"), &name("lab"), 1, 24 * HOUR, false)
        .await
        .unwrap();
    ready(&h, 3).await;
    let launched: Vec<_> = h
        .status("lab")
        .nodes
        .iter()
        .map(|n| n.launched_at)
        .collect();
    tokio::time::sleep(Duration::from_secs(2 * HOUR as u64 + 17)).await;
    h.stop().await;

    // Down for 40 minutes; the nodes keep running (and costing).
    tokio::time::sleep(Duration::from_secs(40 * 60)).await;
    let mut h = Harness::start_with_clock(cloud.clone(), store.clone(), config(), h.clock).await;
    ready(&h, 3).await;
    tokio::time::sleep(Duration::from_secs(HOUR as u64 + 3)).await;
    h.engine.accrue_now().await.unwrap();
    let org = store.get_org(&name("lab")).await.unwrap().unwrap();
    let until = org.accrued_until.unwrap();
    let expected: Money = launched
        .iter()
        .map(|l| lifetime_cost(PRICE, *l, until))
        .sum();
    let costs = store.costs(&name("lab")).await.unwrap();
    assert_eq!(costs.iter().map(|c| c.amount).sum::<Money>(), expected);
    assert_eq!(org.budget.balance, m("100") - expected);
    // ann's two nodes (the oldest) are hers, bob's one his.
    let by = |who: &str| -> Money {
        costs
            .iter()
            .filter(|c| c.user.as_ref().map(|u| u.as_str()) == Some(who))
            .map(|c| c.amount)
            .sum()
    };
    let mut sorted = launched.clone();
    sorted.sort();
    assert_eq!(
        by("ann"),
        lifetime_cost(PRICE, sorted[0], until) + lifetime_cost(PRICE, sorted[1], until)
    );
    assert_eq!(by("bob"), lifetime_cost(PRICE, sorted[2], until));
    assert!(h
        .status("lab")
        .nodes
        .iter()
        .all(|n| n.state == NodeState::Ready));
    h.stop().await;
}

/// The books against the nodes: every metered node is charged exactly its
/// price over its lifetime (up to its end, or up to the last pass while it
/// runs), and the costs, the balance and the ledger all agree.
async fn books_balance(h: &Harness, store: &dyn Store, credited: Money) -> Vec<NodeMeter> {
    h.engine.accrue_now().await.unwrap();
    let org = store.get_org(&name("lab")).await.unwrap().unwrap();
    let until = org.accrued_until.unwrap();
    let meters = h
        .control
        .org_usage(&caller("bob"), &name("lab"))
        .await
        .unwrap();
    let expected: Money = meters
        .iter()
        .map(|n| lifetime_cost(PRICE, n.launched_at, n.end.map_or(until, |e| e.at)))
        .sum();
    assert_eq!(
        meters.iter().map(NodeMeter::charged).sum::<Money>(),
        expected
    );
    let costs: Money = store
        .costs(&name("lab"))
        .await
        .unwrap()
        .iter()
        .map(|c| c.amount)
        .sum();
    assert_eq!(costs, expected, "costs");
    assert_eq!(org.budget.balance, credited - expected, "balance");
    let ledger: Money = store
        .ledger(&name("lab"))
        .await
        .unwrap()
        .iter()
        .map(|e| e.amount)
        .sum();
    assert_eq!(ledger, org.budget.balance, "ledger");
    meters
}

#[tokio::test(start_paused = true)]
async fn a_node_is_charged_until_it_is_gone_however_briefly_it_lived() {
    // Shorter than a pass, a few seconds, longer than one.
    for lived in [
        Duration::from_millis(500),
        Duration::from_secs(3),
        Duration::from_secs(7),
    ] {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        accounts(&*store).await;
        let mut h = start(store.clone(), FakeCloud::new(FakeConfig::default())).await;
        lab(&h, "100").await;
        h.capacity(&caller("ann"), &name("lab"), 2, 24 * HOUR, false)
            .await
            .unwrap();
        ready(&h, 2).await;
        tokio::time::sleep(lived).await;
        h.destroy_as(&caller("ann"), "lab").await.unwrap();
        h.control.wait_settled(&name("lab")).await;
        let mut waited = Duration::ZERO;
        loop {
            let usage = store.usage(&name("lab")).await.unwrap();
            if usage.len() == 2 && usage.iter().all(|n| n.end.is_some()) {
                break;
            }
            assert!(
                waited < Duration::from_secs(5),
                "meters not ended: {usage:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
        let meters = books_balance(&h, &*store, m("100")).await;
        for n in &meters {
            let end = n.end.unwrap();
            assert_eq!(end.seen, NodeEndSeen::Gone);
            let ran = (end.at - n.launched_at).to_std().unwrap();
            assert!(
                ran >= lived && ran < lived + Duration::from_secs(3),
                "lived {lived:?}, charged for {ran:?}"
            );
            assert!(n.settled());
        }
        h.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_gone_while_the_server_was_down_is_charged_to_the_first_listing_without_it() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    accounts(&*store).await;
    let cloud = FakeCloud::new(FakeConfig::default());
    let mut h = start(store.clone(), cloud.clone()).await;
    lab(&h, "100").await;
    h.capacity(&caller("ann"), &name("lab"), 3, 24 * HOUR, false)
        .await
        .unwrap();
    ready(&h, 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = h.status("lab").nodes[0].id.clone();
    h.stop().await;

    // While it is down, one node goes.
    tokio::time::sleep(Duration::from_secs(40)).await;
    cloud.kill(&victim);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let restarted = h.clock.now();
    let mut h = Harness::start_with_clock(cloud.clone(), store.clone(), config(), h.clock).await;
    ready(&h, 3).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let meters = books_balance(&h, &*store, m("100")).await;
    assert_eq!(
        meters.len(),
        4,
        "three, and the one that replaced the gone one"
    );
    let gone = meters.iter().find(|n| n.id == victim).unwrap();
    let end = gone.end.unwrap();
    assert_eq!(end.seen, NodeEndSeen::Unwatched);
    assert!(
        end.at >= restarted,
        "charged up to the first listing after the restart"
    );
    assert!(end.at < restarted + chrono::Duration::seconds(2));
    let notes: Vec<_> = store
        .ledger(&name("lab"))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == LedgerKind::Note)
        .collect();
    assert_eq!(notes.len(), 1);
    assert!(
        notes[0].reason.contains(victim.as_str()),
        "{}",
        notes[0].reason
    );
    h.stop().await;
}

/// A pool of several types: each node is on the meter at its own type's
/// price, the burn rate adds them up, and forecasts count the dearest.
#[tokio::test(start_paused = true)]
async fn each_node_is_charged_at_its_own_types_price() {
    use flotilla_control::ApplyPool;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    accounts(&*store).await;
    let cloud = FakeCloud::new(FakeConfig {
        unavailable_types: vec!["fake.spot".into()],
        ..FakeConfig::default()
    });
    let mut h = start(store.clone(), cloud.clone()).await;
    let admin = Caller::local_operator();
    let apply = ApplyPool {
        pool: "mixed".into(),
        document: serde_json::json!({
            "driver": "fake",
            "instance_types": [
                {"name": "fake.small", "price_per_hour": "0.10"},
                {"name": "fake.spot", "price_per_hour": "0.03"}
            ]
        }),
        expected_version: Some(0),
    };
    h.control.run(&admin, apply).await.unwrap();
    let create = CreateOrg {
        name: name("lab"),
        owners: vec!["ann".into()],
        pool: Some("mixed".into()),
    };
    h.control.run(&admin, create).await.unwrap();
    let credit = CreditOrg {
        org: name("lab"),
        amount: m("100"),
        reason: "grant".into(),
    };
    h.control.run(&admin, credit).await.unwrap();
    // Two of the dearer type while the cheaper has no capacity, then one
    // of the cheaper once it has.
    h.capacity(&caller("ann"), &name("lab"), 2, 24 * HOUR, false)
        .await
        .unwrap();
    ready(&h, 2).await;
    cloud.reconfigure(|c| c.unavailable_types.clear());
    tokio::time::sleep(Duration::from_secs(61)).await;
    h.capacity(&caller("ann"), &name("lab"), 3, 24 * HOUR, false)
        .await
        .unwrap();
    ready(&h, 3).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    h.engine.accrue_now().await.unwrap();

    let types: std::collections::BTreeMap<String, String> = h
        .status("lab")
        .nodes
        .iter()
        .map(|n| (n.id.to_string(), n.instance_type.to_string()))
        .collect();
    let org = store.get_org(&name("lab")).await.unwrap().unwrap();
    let until = org.accrued_until.unwrap();
    let meters = store.usage(&name("lab")).await.unwrap();
    assert_eq!(meters.len(), 3, "{meters:?}");
    let mut prices: Vec<String> = meters
        .iter()
        .map(|n| {
            let price = match types[n.id.as_str()].as_str() {
                "fake.spot" => m("0.03"),
                _ => m("0.10"),
            };
            assert_eq!(n.price_per_hour, price, "{n:?}");
            assert_eq!(n.charged(), lifetime_cost(price, n.launched_at, until));
            price.to_string()
        })
        .collect();
    prices.sort();
    assert_eq!(
        prices,
        [m("0.03"), m("0.10"), m("0.10")].map(|p| p.to_string())
    );
    let view = h
        .control
        .get_org(&caller("ann"), &name("lab"))
        .await
        .unwrap();
    assert_eq!(view.burn_per_hour, m("0.23"), "each at its price");
    assert_eq!(view.price_per_hour, m("0.10"), "forecasts: the dearest");
    h.stop().await;
}
