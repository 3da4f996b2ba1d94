//! Organisations, budgets and capacity requests through the real command
//! line against a real `flotilla serve` on the `local` driver: creating an
//! organisation, joining it, being refused for lack of money, credit, a
//! capacity request that waits for its node, status, costs, the ledger,
//! refusals by role, bad settings, and the owner putting the cluster to
//! sleep. One server for the whole flow.

mod support;

use std::process::Output;

use serde_json::Value;
use support::*;

/// The tests' usual limits, a pool that costs money, and charging every
/// second so that costs show up while the test runs.
const CONFIG: &str = r#"
[limits]
min_ttl = "1s"
max_wait = "60s"
resync_interval = "1s"

[orgs]
accrual_interval = "1s"

[drivers.local]
type = "local"
grace = "2s"

[pools.default]
driver = "local"
instance_type = "local.small"
price_per_hour = "0.10"
"#;

const ALICE: &[(&str, &str)] = &[
    ("FLOTILLA_USERNAME", "alice"),
    ("FLOTILLA_PASSWORD", "alice-password-1234"),
];
const BOB: &[(&str, &str)] = &[
    ("FLOTILLA_USERNAME", "bob"),
    ("FLOTILLA_PASSWORD", "bob-password-1234"),
];
const CAROL: &[(&str, &str)] = &[
    ("FLOTILLA_USERNAME", "carol"),
    ("FLOTILLA_PASSWORD", "carol-password-1234"),
];

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the command line and checks its exit status, showing both
/// streams when it is not the one expected.
fn expect(server: &Server, who: &[(&str, &str)], args: &[&str], status: i32) -> Output {
    let out = server.cli_with(who, args);
    assert_eq!(
        code(&out),
        status,
        "flotilla {}\nstdout: {}\nstderr: {}",
        args.join(" "),
        stdout(&out),
        stderr(&out)
    );
    out
}

fn json(server: &Server, who: &[(&str, &str)], args: &[&str]) -> Value {
    let args: Vec<&str> = ["--output", "json"].iter().chain(args).copied().collect();
    let out = expect(server, who, &args, 0);
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn an_organisation_from_creation_to_sleep_through_the_command_line() {
    let sandbox = Sandbox::new();
    let server = Server::start_with(&sandbox.path(), CONFIG);
    let admin: &[(&str, &str)] = &[
        ("FLOTILLA_USERNAME", "admin"),
        ("FLOTILLA_PASSWORD", ADMIN_PASSWORD),
    ];
    for who in [ALICE, BOB, CAROL] {
        server.add_user(who[0].1, "org_member", who[1].1);
    }

    // An admin creates the organisation; only admins may.
    let out = expect(
        &server,
        ALICE,
        &["org", "create", "nope", "--owner", "alice"],
        3,
    );
    assert!(stderr(&out).contains("admin"), "{}", stderr(&out));
    let out = expect(
        &server,
        admin,
        &["org", "create", "team", "--owner", "alice"],
        0,
    );
    assert!(
        stdout(&out).contains("created organisation team (owners alice)"),
        "{}",
        stdout(&out)
    );

    // Bob asks to join; alice (an owner) sees the request and approves it.
    let out = expect(&server, BOB, &["org", "join", "team"], 0);
    assert!(
        stdout(&out).contains("bob asked to join team"),
        "{}",
        stdout(&out)
    );
    let list = json(&server, BOB, &["org", "list"]);
    assert_eq!(list["orgs"][0]["name"], "team");
    assert_eq!(list["orgs"][0]["role"], "pending");
    let out = expect(&server, ALICE, &["org", "show", "team"], 0);
    assert!(stdout(&out).contains("asking to join:"), "{}", stdout(&out));
    assert!(stdout(&out).contains("bob"), "{}", stdout(&out));
    expect(&server, ALICE, &["org", "approve", "team", "bob"], 0);
    let out = expect(&server, BOB, &["org", "list"], 0);
    assert!(stdout(&out).contains("member"), "{}", stdout(&out));

    // No money yet: the request is refused with the server's reason.
    let out = expect(
        &server,
        BOB,
        &["scale", "team", "--nodes", "1", "--ttl", "10m"],
        1,
    );
    let err = stderr(&out);
    assert!(err.contains("insufficient_funds"), "{err}");
    assert!(err.contains("cannot pay for this"), "{err}");
    assert!(node_processes(&sandbox.path()).is_empty());

    // Only an admin credits; a negative amount is a correction.
    let out = expect(
        &server,
        ALICE,
        &["org", "credit", "team", "25", "--reason", "self-service"],
        3,
    );
    assert!(stderr(&out).contains("admin_only"), "{}", stderr(&out));
    let out = expect(
        &server,
        admin,
        &["org", "credit", "team", "26.00", "--reason", "first grant"],
        0,
    );
    assert!(
        stdout(&out).contains("credited team $26.00 (first grant); the balance is now $26.00"),
        "{}",
        stdout(&out)
    );
    let out = expect(
        &server,
        admin,
        &[
            "org",
            "credit",
            "team",
            "-1.00",
            "--reason",
            "over-credited",
        ],
        0,
    );
    assert!(
        stdout(&out).contains("the balance is now $25.00"),
        "{}",
        stdout(&out)
    );

    // With money the request waits for its node.
    let out = expect(
        &server,
        BOB,
        &["scale", "team", "--nodes", "1", "--ttl", "10m", "--wait"],
        0,
    );
    let line = stdout(&out);
    assert!(
        line.starts_with("team: requested 1 node until ")
            && line.contains("the cluster wants 1 node now, 1 ready (running)"),
        "{line}"
    );
    let status = json(&server, BOB, &["status", "team"]);
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(ready_nodes(&status), 1, "{status}");
    assert_eq!(status["org"]["min_nodes"], 0);
    assert_eq!(status["org"]["max_nodes"], 10);
    let requests = status["org"]["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "{status}");
    assert_eq!(requests[0]["user"], "bob");
    assert_eq!(requests[0]["nodes"], 1);
    assert_eq!(status["org"]["next_change"], requests[0]["expires_at"]);
    assert_eq!(node_processes(&sandbox.path()).len(), 1);
    let out = expect(&server, BOB, &["status", "team"], 0);
    let text = stdout(&out);
    assert!(text.contains("min 0 max 10"), "{text}");
    assert!(text.contains("  request bob 1 node until "), "{text}");
    assert!(text.contains("  next change "), "{text}");

    // A non-member may not ask, nor a plain member destroy.
    let out = expect(
        &server,
        CAROL,
        &["scale", "team", "--nodes", "1", "--ttl", "10m"],
        3,
    );
    assert!(stderr(&out).contains("not_org_member"), "{}", stderr(&out));
    expect(&server, BOB, &["destroy", "team"], 3);

    // The organisation's view, for people and as JSON.
    let out = expect(&server, BOB, &["org", "show", "team"], 0);
    let text = stdout(&out);
    for needle in [
        "organisation team (cluster team)",
        "alice",
        "owner",
        "budget: balance $2",
        "shutdown threshold $0.50",
        "forecast: 1 node running at up to $0.10/h each",
        "cluster: size 1, 1 active request, next change ",
        "  request bob 1 node until ",
        "recent events:",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    let view = json(&server, BOB, &["org", "show", "team"]);
    assert_eq!(view["settings"]["max_nodes"], 10);
    assert_eq!(view["forecast"]["running_nodes"], 1);
    assert_eq!(view["forecast"]["price_per_hour"], "0.10");

    // Costs: charged to bob, whose request keeps the node.
    wait_for("a cost row for bob", || {
        let out = expect(&server, BOB, &["org", "costs", "team", "--csv"], 0);
        let csv = stdout(&out);
        assert!(csv.starts_with("day,cluster,user,amount\n"), "{csv}");
        csv.lines().any(|l| l.contains(",team,bob,"))
    });
    let costs = json(&server, BOB, &["org", "costs", "team"]);
    assert_eq!(costs["org"], "team");
    assert_eq!(costs["rows"][0]["user"], "bob");
    let out = expect(&server, BOB, &["org", "costs", "team"], 0);
    assert!(stdout(&out).contains("total $0.0"), "{}", stdout(&out));
    let out = expect(&server, BOB, &["org", "ledger", "team"], 0);
    let text = stdout(&out);
    assert!(
        text.contains("credit") && text.contains("first grant") && text.contains("admin"),
        "{text}"
    );
    assert!(text.contains("over-credited"), "{text}");
    assert!(text.contains("balance $2"), "{text}");

    // Settings: the server's rule on min/max is a value refused as invalid
    // (exit status 2), and nothing changes; an owner can cap the cluster,
    // and a request beyond the cap says it was cut.
    let out = expect(
        &server,
        ALICE,
        &["org", "set", "team", "--min-nodes", "5", "--max-nodes", "2"],
        2,
    );
    assert!(
        stderr(&out).contains("min_nodes (5) must not be greater than max_nodes (2)"),
        "{}",
        stderr(&out)
    );
    expect(&server, ALICE, &["org", "set", "team"], 2);
    expect(&server, BOB, &["org", "set", "team", "--max-nodes", "1"], 3);
    let out = expect(
        &server,
        ALICE,
        &["org", "set", "team", "--max-nodes", "1"],
        0,
    );
    assert!(
        stdout(&out).contains("team: min_nodes 0, max_nodes 1 (limit 10), pool default"),
        "{}",
        stdout(&out)
    );
    let out = expect(
        &server,
        BOB,
        &["scale", "team", "--nodes", "3", "--ttl", "1m"],
        0,
    );
    assert!(
        stdout(&out).contains("asked for 3 nodes; the cluster is capped at max_nodes = 1"),
        "{}",
        stdout(&out)
    );
    let answer = json(
        &server,
        BOB,
        &["scale", "team", "--nodes", "3", "--ttl", "1m"],
    );
    assert_eq!(answer["clamped"], true);
    assert_eq!(answer["status"]["node_capacity"], 1);

    // A member withdraws their own requests (to ask again for fewer);
    // with none left there is nothing to withdraw.
    let withdrawn = json(&server, BOB, &["scale", "team", "--cancel"]);
    assert!(
        withdrawn["org"]["requests"].as_array().unwrap().is_empty(),
        "{withdrawn}"
    );
    assert_eq!(withdrawn["node_capacity"], 0, "{withdrawn}");
    let out = expect(&server, BOB, &["scale", "team", "--nodes", "0"], 2);
    assert!(
        stderr(&out).contains("bob has no active capacity request on team"),
        "{}",
        stderr(&out)
    );
    let out = expect(&server, BOB, &["scale", "team", "--nodes", "2"], 2);
    assert!(stderr(&out).contains("needs --ttl"), "{}", stderr(&out));
    expect(
        &server,
        BOB,
        &["scale", "team", "--nodes", "1", "--ttl", "1m"],
        0,
    );

    // Membership changes: roles, and removal.
    expect(&server, ALICE, &["org", "role", "team", "bob", "owner"], 0);
    expect(&server, BOB, &["org", "role", "team", "bob", "member"], 0);
    let view = json(&server, ALICE, &["org", "show", "team"]);
    let bob = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["username"] == "bob")
        .unwrap();
    assert_eq!(bob["role"], "member");
    expect(&server, CAROL, &["org", "join", "team"], 0);
    expect(&server, ALICE, &["org", "refuse", "team", "carol"], 0);
    expect(&server, CAROL, &["org", "show", "team"], 3);

    // The owner destroys the cluster: it goes to sleep at zero nodes and
    // says how to wake it.
    let out = expect(&server, ALICE, &["destroy", "team", "--wait"], 0);
    assert!(stdout(&out).contains("asleep"), "{}", stdout(&out));
    let status = json(&server, ALICE, &["status", "team"]);
    assert_eq!(status["state"], "asleep", "{status}");
    assert_eq!(status["node_capacity"], 0);
    assert!(status["nodes"].as_array().unwrap().is_empty(), "{status}");
    assert!(status["org"]["requests"].as_array().unwrap().is_empty());
    let out = expect(&server, ALICE, &["status", "team"], 0);
    assert!(
        stdout(&out).contains("  hint: asleep at zero nodes; wake it with `flotilla scale team"),
        "{}",
        stdout(&out)
    );
    let out = expect(&server, ALICE, &["org", "show", "team"], 0);
    assert!(
        stdout(&out).contains("cluster: size 0 (asleep), 0 active requests"),
        "{}",
        stdout(&out)
    );
    wait_for("node processes gone", || {
        node_processes(&sandbox.path()).is_empty()
    });

    // Removing the member removes their access.
    expect(&server, ALICE, &["org", "remove", "team", "bob"], 0);
    expect(
        &server,
        BOB,
        &["scale", "team", "--nodes", "1", "--ttl", "10m"],
        3,
    );
}

/// What the organisation has been charged, and up to when, as `org show`
/// reports it.
fn charged(
    server: &Server,
    org: &str,
) -> (
    flotilla_domain::Money,
    Option<chrono::DateTime<chrono::Utc>>,
) {
    let admin: &[(&str, &str)] = &[
        ("FLOTILLA_USERNAME", "admin"),
        ("FLOTILLA_PASSWORD", ADMIN_PASSWORD),
    ];
    let view = json(server, admin, &["org", "show", org]);
    let balance: flotilla_domain::Money =
        view["budget"]["balance"].as_str().unwrap().parse().unwrap();
    let until = view["budget"]["charged_until"]
        .as_str()
        .map(|t| t.parse().unwrap());
    (balance, until)
}

/// Every node is charged exactly its price over its lifetime, to the
/// micro-dollar, through the real binary: nodes that run across a SIGKILL,
/// and clusters that live half a second, three seconds, and past a pass.
/// `org usage` gives each node's launch and end; the costs, the balance and
/// the ledger must all equal the sum of price × lifetime.
#[test]
fn every_node_second_is_charged_across_a_sigkill_and_however_briefly_it_ran() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let server = Server::start_with(&dir, CONFIG);
    let admin: &[(&str, &str)] = &[
        ("FLOTILLA_USERNAME", "admin"),
        ("FLOTILLA_PASSWORD", ADMIN_PASSWORD),
    ];
    expect(
        &server,
        admin,
        &["org", "create", "lab", "--owner", "admin"],
        0,
    );
    expect(
        &server,
        admin,
        &["org", "credit", "lab", "50", "--reason", "grant"],
        0,
    );
    expect(
        &server,
        admin,
        &["scale", "lab", "--nodes", "2", "--ttl", "1h", "--wait"],
        0,
    );
    let ids = |s: &Value| -> Vec<String> {
        let mut ids: Vec<String> = s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let before = server.status("lab");
    wait_for("a charge", || {
        charged(&server, "lab").0 < "50".parse().unwrap()
    });
    server.kill();

    std::thread::sleep(std::time::Duration::from_secs(2));
    let server = Server::start_with(&dir, CONFIG);
    let restarted = chrono::Utc::now();
    wait_for("a charge after the restart", || {
        charged(&server, "lab")
            .1
            .is_some_and(|u| u > restarted + chrono::Duration::seconds(1))
    });
    let after = server.status("lab");
    assert_eq!(ids(&before), ids(&after), "the same nodes were adopted");
    let asleep = |server: &Server| {
        wait_for("the cluster asleep", || {
            server.status("lab")["nodes"].as_array().unwrap().is_empty()
        })
    };
    expect(&server, admin, &["scale", "lab", "--cancel"], 0);
    asleep(&server);

    // Clusters shorter than a pass (1 s here), a few passes long, and one.
    let mut lived = Vec::new();
    for ms in [500, 3000, 1200] {
        expect(
            &server,
            admin,
            &["scale", "lab", "--nodes", "1", "--ttl", "1h", "--wait"],
            0,
        );
        let id = ids(&server.status("lab"))[0].clone();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        expect(&server, admin, &["scale", "lab", "--cancel"], 0);
        asleep(&server);
        lived.push((id, ms));
    }

    // Every meter ended and charged to its end.
    let usage = || json(&server, admin, &["org", "usage", "lab"]);
    wait_for("every node charged to its end", || {
        let u = usage();
        let nodes = u["nodes"].as_array().unwrap();
        nodes.len() == 5
            && nodes
                .iter()
                .all(|n| n["ended_at"].is_string() && n["charged_until"] == n["ended_at"])
    });
    let u = usage();
    let price: flotilla_domain::Money = "0.10".parse().unwrap();
    let time =
        |v: &Value| -> chrono::DateTime<chrono::Utc> { v.as_str().unwrap().parse().unwrap() };
    let mut expected = flotilla_domain::Money::ZERO;
    for n in u["nodes"].as_array().unwrap() {
        let (launched, ended) = (time(&n["launched_at"]), time(&n["ended_at"]));
        let cost = flotilla_domain::lifetime_cost(price, launched, ended);
        assert_eq!(
            n["charged"]
                .as_str()
                .unwrap()
                .parse::<flotilla_domain::Money>()
                .unwrap(),
            cost
        );
        expected += cost;
        let id = n["id"].as_str().unwrap();
        if let Some((_, ms)) = lived.iter().find(|(l, _)| l == id) {
            let ran = (ended - launched).num_milliseconds();
            assert!(
                ran >= *ms as i64,
                "{id} lived {ms} ms, was charged for {ran} ms"
            );
        } else {
            assert!(ids(&before).contains(&id.to_owned()), "{id}");
            assert!(ended > restarted, "{id} ran across the restart");
        }
    }
    assert_eq!(
        u["total"]
            .as_str()
            .unwrap()
            .parse::<flotilla_domain::Money>()
            .unwrap(),
        expected
    );
    let costs = json(&server, admin, &["org", "costs", "lab"]);
    let total: flotilla_domain::Money = costs["total"].as_str().unwrap().parse().unwrap();
    assert_eq!(total, expected, "the costs are the lifetimes' price");
    let (balance, _) = charged(&server, "lab");
    assert_eq!(
        balance,
        "50".parse::<flotilla_domain::Money>().unwrap() - expected
    );
    let ledger = json(&server, admin, &["org", "ledger", "lab"]);
    let ledger_balance: flotilla_domain::Money =
        ledger["balance"].as_str().unwrap().parse().unwrap();
    assert_eq!(ledger_balance, balance, "the ledger adds up to the balance");
    let text = stdout(&expect(&server, admin, &["org", "usage", "lab"], 0));
    assert!(
        text.contains(&lived[0].0) && text.contains("total $"),
        "{text}"
    );
}
