mod support;

// Several `flotilla serve` processes on one PostgreSQL database, sharing
// one local-driver instances directory: the leader is killed (SIGKILL) or
// paused (SIGSTOP) at awkward moments, and the node processes, counted
// from /proc, must always come out exactly as wanted.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flotilla_store_postgres::testing::TempPostgres;
use serde_json::Value;
use support::{
    code, database, node_processes, ready_nodes, shared_config, wait_for, Sandbox, Server,
};

/// The longest a takeover after the leader's death may take: the lease's
/// time to live (3 s), a follower's retry (0.5 s), and some slack.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Metrics

/// GET {url}/metrics, as text; None if the server does not answer within a
/// second (killed, or stopped).
fn metrics(url: &str) -> Option<String> {
    let addr: SocketAddr = url
        .strip_prefix("http://")?
        .trim_end_matches('/')
        .parse()
        .ok()?;
    let timeout = Duration::from_secs(1);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    if !status.contains(" 200") {
        return None;
    }
    Some(body.to_owned())
}

fn gauge(text: &str, name: &str) -> Option<i64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
            .map(|v| v as i64)
    })
}

/// (flotilla_leading, flotilla_lease_epoch) of one server, if it answers.
fn lease_view(server: &Server) -> Option<(bool, i64)> {
    let text = metrics(&server.url)?;
    let leading = gauge(&text, "flotilla_leading").expect("flotilla_leading in /metrics");
    let epoch = gauge(&text, "flotilla_lease_epoch").expect("flotilla_lease_epoch in /metrics");
    Some((leading == 1, epoch))
}

/// Which of these servers say they lead (index, epoch); never more than
/// one.
fn leaders(servers: &[Option<Server>], among: &[usize]) -> Vec<(usize, i64)> {
    let found: Vec<(usize, i64)> = among
        .iter()
        .filter_map(|&i| {
            let s = servers[i].as_ref()?;
            match lease_view(s) {
                Some((true, epoch)) => Some((i, epoch)),
                _ => None,
            }
        })
        .collect();
    assert!(found.len() <= 1, "more than one server leads: {found:?}");
    found
}

/// The one server that leads, once one does.
fn find_leader(servers: &[Option<Server>]) -> (usize, i64) {
    let all: Vec<usize> = (0..servers.len()).collect();
    let mut found = None;
    wait_for("exactly one server leads", || {
        found = leaders(servers, &all).pop();
        found.is_some()
    });
    found.unwrap()
}

// ---------------------------------------------------------------------------
// The command line and status

#[track_caller]
fn cli_ok(server: &Server, args: &[&str]) {
    let out = server.cli(args);
    assert_eq!(
        code(&out),
        0,
        "flotilla {args:?} at {}: {}{}",
        server.url,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every cluster the server lists, by name.
fn list(server: &Server) -> BTreeMap<String, Value> {
    let out = server.cli(&["--output", "json", "status"]);
    assert_eq!(
        code(&out),
        0,
        "status at {}: {}",
        server.url,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
    v["clusters"]
        .as_array()
        .expect("a list of clusters")
        .iter()
        .map(|c| (c["cluster"].as_str().unwrap().to_owned(), c.clone()))
        .collect()
}

/// Why this server's listing differs from `wanted` (every wanted cluster
/// running with exactly its nodes, all ready; nothing else but clusters
/// that are not running and have no nodes), or None if it does not.
fn listing_mismatch(server: &Server, wanted: &BTreeMap<String, usize>) -> Option<String> {
    let listed = list(server);
    let mut why = Vec::new();
    for (name, &n) in wanted {
        match listed.get(name) {
            None => why.push(format!("{name}: not listed")),
            Some(s) => {
                let nodes = s["nodes"].as_array().map_or(0, Vec::len);
                if s["state"] != "running"
                    || s["node_capacity"] != n
                    || ready_nodes(s) != n
                    || nodes != n
                {
                    why.push(format!(
                        "{name}: wanted {n}, state {} capacity {} nodes {nodes} ready {}",
                        s["state"],
                        s["node_capacity"],
                        ready_nodes(s)
                    ));
                }
            }
        }
    }
    for (name, s) in &listed {
        if !wanted.contains_key(name)
            && (s["state"] != "not_running" || s["nodes"].as_array().is_some_and(|n| !n.is_empty()))
        {
            why.push(format!("{name}: not wanted, but {}", s));
        }
    }
    (!why.is_empty()).then(|| format!("at {}: {}", server.url, why.join("; ")))
}

/// Polls `check` (which says what is still wrong, or None) every 100 ms
/// until it is satisfied; panics with the last complaint after `limit`.
fn settle(what: &str, limit: Duration, mut check: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + limit;
    loop {
        let Some(why) = check() else { return };
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}; last: {why}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Ground truth: node processes by cluster

/// The live node processes under `instances`, by the cluster their
/// instance record names ("<no record>" once it is gone: a node fencing
/// itself off).
fn nodes_by_cluster(instances: &Path) -> BTreeMap<String, Vec<u32>> {
    let mut by = BTreeMap::<String, Vec<u32>>::new();
    for pid in node_processes(instances) {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let dir = args
            .iter()
            .position(|a| a == "--instance-dir")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from);
        let cluster = dir
            .and_then(|d| std::fs::read(d.join("instance.json")).ok())
            .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
            .and_then(|r| r["tags"]["flotilla-cluster"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "<no record>".to_owned());
        by.entry(cluster).or_default().push(pid);
    }
    by
}

fn counts(by: &BTreeMap<String, Vec<u32>>) -> BTreeMap<String, usize> {
    by.iter().map(|(k, v)| (k.clone(), v.len())).collect()
}

/// Watches /proc in the background: when each cluster's node processes
/// were last seen alive.
struct Watcher {
    last_seen: Arc<Mutex<HashMap<String, Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(instances: PathBuf) -> Watcher {
        let last_seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (last_seen, stop) = (last_seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    let by = nodes_by_cluster(&instances);
                    let mut seen = last_seen.lock().unwrap();
                    for name in by.keys() {
                        seen.insert(name.clone(), now);
                    }
                    drop(seen);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Watcher {
            last_seen,
            stop,
            thread: Some(thread),
        }
    }

    fn last_seen(&self, cluster: &str) -> Option<Instant> {
        self.last_seen.lock().unwrap().get(cluster).copied()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The newest serve-*.log of a server's directory.
fn newest_log(dir: &Path) -> String {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("serve-") && n.ends_with(".log"))
        })
        .collect();
    logs.sort();
    std::fs::read_to_string(logs.last().expect("a serve log")).unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A short-lived cluster: its name, and when its deploy returned.
struct ShortLived {
    name: String,
    deployed: Instant,
    deployed_utc: DateTime<Utc>,
}

const SHORT_TTL: Duration = Duration::from_secs(4);
/// How late after its deadline a short-lived cluster may still be seen:
/// a takeover (up to 5 s) and a node's shutdown, with slack.
const EXPIRY_SLACK: Duration = Duration::from_secs(10);

#[test]
fn three_servers_survive_ten_leader_kills() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let url = database(&pg);
    let env = [("FLOTILLA_DATABASE_URL", url.as_str())];
    let shared = Sandbox::new();
    let instances = shared.path().join("instances");
    let config = shared_config(&instances);
    let dirs: Vec<Sandbox> = (0..3).map(|_| Sandbox::new()).collect();
    let mut servers: Vec<Option<Server>> = dirs
        .iter()
        .map(|d| Some(Server::start_with_env(&d.path(), &config, &env)))
        .collect();
    let watcher = Watcher::start(instances.clone());

    let mut wanted = BTreeMap::<String, usize>::new();
    let mut short = Vec::<ShortLived>::new();
    let mut takeovers = Vec::<Duration>::new();
    let mut last_epoch = 0;
    for round in 0..10usize {
        let (leader, epoch) = find_leader(&servers);
        assert!(
            epoch > last_epoch,
            "round {round}: epoch {epoch} after {last_epoch}"
        );
        last_epoch = epoch;
        let follower = (leader + 1 + round % 2) % 3;
        let at = servers[follower].as_ref().unwrap();

        // A new cluster.
        let name = format!("r{round}");
        let n = 1 + round % 2;
        cli_ok(
            at,
            &["deploy", &name, "--nodes", &n.to_string(), "--ttl", "10m"],
        );
        wanted.insert(name, n);
        // Resize an earlier one: 1 → 2 → 3 → 1 …
        if round > 0 {
            let earlier = format!("r{}", round / 2);
            let n = wanted[&earlier] % 3 + 1;
            cli_ok(
                at,
                &[
                    "deploy",
                    &earlier,
                    "--nodes",
                    &n.to_string(),
                    "--ttl",
                    "10m",
                ],
            );
            wanted.insert(earlier, n);
        }
        // Every third round, one that runs out soon.
        if round % 3 == 1 {
            let name = format!("s{round}");
            cli_ok(at, &["deploy", &name, "--nodes", "1", "--ttl", "4s"]);
            short.push(ShortLived {
                name,
                deployed: Instant::now(),
                deployed_utc: Utc::now(),
            });
        }

        // The leader dies at once, with the commands just committed.
        let killed_at = Instant::now();
        servers[leader].take().unwrap().kill();
        let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let (new_leader, new_epoch) = loop {
            if let Some(found) = leaders(&servers, &survivors).pop() {
                break found;
            }
            assert!(
                killed_at.elapsed() <= TAKEOVER_LIMIT,
                "round {round}: no survivor leads {:?} after the leader's death",
                killed_at.elapsed()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let took = killed_at.elapsed();
        assert!(
            took <= TAKEOVER_LIMIT,
            "round {round}: takeover took {took:?}"
        );
        assert!(
            new_epoch > epoch,
            "round {round}: epoch {new_epoch} after {epoch}"
        );
        eprintln!("round {round}: server {leader} killed, server {new_leader} leads (epoch {new_epoch}) after {took:?}");
        takeovers.push(took);

        // Three again: the killed server back on its own directory.
        servers[leader] = Some(Server::start_with_env(&dirs[leader].path(), &config, &env));
    }

    // Everything converges, as the leader and a follower see it.
    let (leader, _) = find_leader(&servers);
    let follower = (leader + 1) % 3;
    let view = |i: usize| servers[i].as_ref().unwrap();
    settle(
        "every cluster running with its wanted nodes, at the leader and a follower",
        Duration::from_secs(30),
        || {
            listing_mismatch(view(leader), &wanted)
                .or_else(|| listing_mismatch(view(follower), &wanted))
        },
    );
    assert_eq!(
        view(follower).status(&format!("r{}", 0))["nodes"],
        view(leader).status(&format!("r{}", 0))["nodes"],
        "both answer what the leader observes"
    );

    // Short-lived clusters are gone, and were gone in time.
    for s in &short {
        for i in [leader, follower] {
            let status = view(i).status(&s.name);
            assert_eq!(status["state"], "not_running", "{}: {status}", s.name);
            assert_eq!(
                status["nodes"],
                serde_json::json!([]),
                "{}: {status}",
                s.name
            );
        }
        if let Some(seen) = watcher.last_seen(&s.name) {
            let late = seen.saturating_duration_since(s.deployed);
            assert!(
                late <= SHORT_TTL + EXPIRY_SLACK,
                "{}: a node process was alive {late:?} after the deploy (ttl {SHORT_TTL:?})",
                s.name
            );
            eprintln!(
                "{}: last node process seen {late:?} after the deploy",
                s.name
            );
        } else {
            eprintln!("{}: no node process was ever seen", s.name);
        }
        // The feed says when it ran out and was forgotten.
        let out = view(follower).cli(&["--output", "json", "events", &s.name]);
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
        let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("an event is JSON"))
            .collect();
        let at = |kind: &str| -> Option<DateTime<Utc>> {
            events
                .iter()
                .find(|e| e["kind"] == kind)
                .map(|e| e["at"].as_str().unwrap().parse().unwrap())
        };
        let expired = at("cluster.expired")
            .unwrap_or_else(|| panic!("{}: no cluster.expired in {events:?}", s.name));
        let forgotten = at("cluster.forgotten")
            .unwrap_or_else(|| panic!("{}: no cluster.forgotten in {events:?}", s.name));
        let deadline: DateTime<Utc> = events
            .iter()
            .find(|e| e["kind"] == "cluster.deployed")
            .and_then(|e| e["details"]["expires_at"].as_str())
            .unwrap_or_else(|| panic!("{}: no deadline in {events:?}", s.name))
            .parse()
            .unwrap();
        assert!(
            expired >= deadline,
            "{}: expired at {expired}, before its deadline {deadline}",
            s.name
        );
        let limit = s.deployed_utc + chrono::Duration::from_std(SHORT_TTL + EXPIRY_SLACK).unwrap();
        assert!(
            expired <= limit,
            "{}: expired at {expired}, deployed {}",
            s.name,
            s.deployed_utc
        );
        assert!(
            forgotten <= limit,
            "{}: forgotten at {forgotten}, deployed {}",
            s.name,
            s.deployed_utc
        );
        eprintln!(
            "{}: deadline {} ms, expired {} ms and forgotten {} ms after the deploy returned",
            s.name,
            (deadline - s.deployed_utc).num_milliseconds(),
            (expired - s.deployed_utc).num_milliseconds(),
            (forgotten - s.deployed_utc).num_milliseconds()
        );
    }

    // The ground truth: exactly the wanted node processes, per cluster; and
    // it stays so.
    let expected: BTreeMap<String, usize> = wanted.clone();
    settle(
        "exactly the wanted node processes",
        Duration::from_secs(15),
        || {
            let by = counts(&nodes_by_cluster(&instances));
            (by != expected).then(|| format!("{by:?}, want {expected:?}"))
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let by = counts(&nodes_by_cluster(&instances));
    assert_eq!(by, expected, "no duplicate, no leak, and it stays so");
    assert_eq!(
        node_processes(&instances).len(),
        wanted.values().sum::<usize>()
    );

    // Everything destroyed through a follower.
    let at = view(follower);
    std::thread::scope(|scope| {
        for name in wanted.keys() {
            scope.spawn(move || cli_ok(at, &["destroy", name, "--wait"]));
        }
    });
    for name in wanted.keys() {
        assert_eq!(at.status(name)["state"], "not_running", "{name}");
    }
    wait_for("no node process left", || {
        node_processes(&instances).is_empty()
    });
    drop(watcher);

    eprintln!(
        "takeovers after a SIGKILL: median {:?}, max {:?} (all: {takeovers:?})",
        median(takeovers.clone()),
        takeovers.iter().max().unwrap()
    );
}

/// Sends SIGSTOP now and SIGCONT when dropped, however the test ends.
struct Paused {
    pid: i32,
    continued: bool,
}

impl Paused {
    fn stop(server: &Server) -> Paused {
        let pid = server.child.id() as i32;
        // SAFETY: sending a signal has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Paused {
            pid,
            continued: false,
        }
    }

    fn resume(mut self) {
        self.cont();
    }

    fn cont(&mut self) {
        if !self.continued {
            self.continued = true;
            // SAFETY: as above.
            unsafe { libc::kill(self.pid, libc::SIGCONT) };
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.cont();
    }
}

#[test]
fn a_paused_leader_stands_down_and_acts_no_more() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let url = database(&pg);
    let env = [("FLOTILLA_DATABASE_URL", url.as_str())];
    let shared = Sandbox::new();
    let instances = shared.path().join("instances");
    let config = shared_config(&instances);
    let dirs: Vec<Sandbox> = (0..3).map(|_| Sandbox::new()).collect();
    let servers: Vec<Option<Server>> = dirs
        .iter()
        .map(|d| Some(Server::start_with_env(&d.path(), &config, &env)))
        .collect();
    let view = |i: usize| servers[i].as_ref().unwrap();

    let (old, old_epoch) = find_leader(&servers);
    let follower = (old + 1) % 3;
    cli_ok(
        view(follower),
        &["deploy", "p", "--nodes", "2", "--ttl", "10m", "--wait"],
    );
    for i in 0..3 {
        settle(
            "p running with 2 nodes everywhere",
            Duration::from_secs(15),
            || listing_mismatch(view(i), &BTreeMap::from([("p".to_owned(), 2)])),
        );
    }
    assert_eq!(node_processes(&instances).len(), 2);

    // The leader freezes; another takes over once its lease runs out.
    let stopped_at = Instant::now();
    let paused = Paused::stop(view(old));
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let (new, new_epoch) = loop {
        if let Some(found) = leaders(&servers, &others).pop() {
            break found;
        }
        assert!(
            stopped_at.elapsed() <= Duration::from_secs(6),
            "no other server leads {:?} after the leader was paused",
            stopped_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = stopped_at.elapsed();
    assert!(took <= Duration::from_secs(6), "takeover took {took:?}");
    assert!(new_epoch > old_epoch, "epoch {new_epoch} after {old_epoch}");
    eprintln!("server {old} paused; server {new} leads (epoch {new_epoch}) after {took:?}");

    // The new leader acts: three nodes.
    cli_ok(
        view(new),
        &["deploy", "p", "--nodes", "3", "--ttl", "10m", "--wait"],
    );
    let want = BTreeMap::from([("p".to_owned(), 3)]);
    settle(
        "p running with 3 nodes at the new leader",
        Duration::from_secs(15),
        || listing_mismatch(view(new), &want),
    );
    settle("exactly 3 node processes", Duration::from_secs(10), || {
        let by = counts(&nodes_by_cluster(&instances));
        (by != want).then(|| format!("{by:?}"))
    });
    let mut pids = node_processes(&instances);
    pids.sort();

    // The old leader wakes up: it finds its term over and stands down,
    // acting on nothing (its view of p, at 2 nodes, is stale).
    let continued_at = Instant::now();
    paused.resume();
    let mut stood_down = None;
    while continued_at.elapsed() < Duration::from_secs(3) || stood_down.is_none() {
        let mut now = node_processes(&instances);
        now.sort();
        assert_eq!(
            now,
            pids,
            "node processes changed {:?} after the old leader continued",
            continued_at.elapsed()
        );
        if stood_down.is_none() {
            let all: Vec<usize> = (0..3).collect();
            let leading = leaders(&servers, &all);
            let old_view = lease_view(view(old));
            if old_view == Some((false, 0)) && leading.len() == 1 && leading[0].0 != old {
                stood_down = Some(continued_at.elapsed());
            } else {
                assert!(
                    continued_at.elapsed() <= Duration::from_secs(5),
                    "5 s after SIGCONT: the old leader says {old_view:?} (leading, epoch), leaders {leading:?}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "the old leader said it follows {:?} after SIGCONT",
        stood_down.unwrap()
    );
    let log = newest_log(&dirs[old].path());
    assert!(log.contains("stands down"), "old leader's log:\n{log}");
    let (leader_now, _) = find_leader(&servers);
    assert_eq!(leader_now, new, "the new leader still leads");

    // A little later: still exactly the three nodes, and every server
    // answers the same.
    std::thread::sleep(Duration::from_secs(2));
    let mut now = node_processes(&instances);
    now.sort();
    assert_eq!(now, pids, "exactly the same three node processes");
    for i in 0..3 {
        settle(
            "p running with 3 nodes everywhere",
            Duration::from_secs(10),
            || listing_mismatch(view(i), &want),
        );
    }
    let nodes: Vec<Value> = (0..3)
        .map(|i| view(i).status("p")["nodes"].clone())
        .collect();
    assert_eq!(nodes[0], nodes[1], "every server answers the same");
    assert_eq!(nodes[1], nodes[2], "every server answers the same");

    cli_ok(view(old), &["destroy", "p", "--wait"]);
    wait_for("no node process left", || {
        node_processes(&instances).is_empty()
    });
}
