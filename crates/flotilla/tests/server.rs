//! The real binary end to end: `flotilla serve` on the `local` driver,
//! driven by the `flotilla` command line, killed with SIGKILL at awkward
//! moments and restarted. Node processes are counted from /proc, not from
//! anything flotilla reports, so a leak or a duplicate cannot hide.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use support::*;

#[test]
fn deploy_status_destroy_through_the_command_line() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());

    let out = server.cli(&["deploy", "demo", "--nodes", "3", "--ttl", "10m", "--wait"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let status = server.status("demo");
    assert_eq!(status["state"], "running");
    assert_eq!(status["node_capacity"], 3);
    assert_eq!(ready_nodes(&status), 3);
    assert_eq!(node_processes(&sandbox.path()).len(), 3);
    // The server took the admin password out of its environment before
    // starting any node.
    for pid in node_processes(&sandbox.path()) {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        assert!(
            !environ.contains("FLOTILLA_ADMIN_PASSWORD"),
            "node {pid} sees it"
        );
        assert!(!environ.contains(ADMIN_PASSWORD), "node {pid} sees it");
    }

    // Every ready node answers on the address the status gives.
    for node in status["nodes"].as_array().unwrap() {
        let address = node["address"]
            .as_str()
            .expect("a ready node has an address");
        let info: Value = http::blocking_get(&format!("http://{address}/info"));
        assert_eq!(info["cluster"], "demo");
        assert_eq!(info["node_id"], node["id"]);
    }

    // Scale down, then the text listing shows the cluster.
    let out = server.cli(&["deploy", "demo", "--nodes", "1", "--ttl", "10m", "--wait"]);
    assert_eq!(code(&out), 0);
    wait_for("two nodes gone", || {
        node_processes(&sandbox.path()).len() == 1
    });
    let out = server.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("CLUSTER  STATE    READY  POOL     EXPIRES"),
        "a table: {text}"
    );
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("demo     running  1/1    default  in "),
        "{text}"
    );

    let out = server.cli(&["destroy", "demo", "--wait"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.status("demo")["state"], "not_running");
    wait_for("node processes gone", || {
        node_processes(&sandbox.path()).is_empty()
    });

    // STATUS of a name answers not_running either way; the text says
    // whether it was ever deployed.
    let text = |cluster: &str| {
        let out = server.cli(&["status", cluster]);
        assert_eq!(code(&out), 0);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let never = text("nothing-here");
    assert!(never.contains("not_running"), "{never}");
    assert!(never.contains("never deployed"), "{never}");
    // Once its record is forgotten with its last node.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let shown = text("demo");
        if shown.contains("not deployed now (its last change: cluster.forgotten") {
            break;
        }
        if std::time::Instant::now() > deadline {
            let events = server.cli(&["events", "demo"]);
            panic!(
                "demo not forgotten within 30s; status:\n{shown}\nevents:\n{}",
                String::from_utf8_lossy(&events.stdout)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Resizing and extending a public cluster needs only `--nodes` and
/// `--ttl`: the command line sends what the user gave and the cluster keeps
/// the rest. Saying otherwise is refused with what to do.
#[test]
fn a_resize_without_public_keeps_the_cluster_public() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());
    let deploy = |args: &[&str]| {
        let args: Vec<&str> = ["deploy", "open"].iter().chain(args).copied().collect();
        server.cli(&args)
    };
    let out = deploy(&["--nodes", "1", "--ttl", "10m", "--public", "--wait"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let out = deploy(&["--nodes", "2", "--ttl", "20m", "--wait"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let status = server.status("open");
    assert_eq!(status["is_public"], true, "{status}");
    assert_eq!(status["node_capacity"], 2);
    assert_eq!(ready_nodes(&status), 2);

    // extend moves only the deadline.
    let out = server.cli(&["extend", "open", "--ttl", "2h"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let extended = server.status("open");
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(extended["expires_at"].clone()).unwrap();
    let left = (expires - chrono::Utc::now()).num_seconds();
    assert!(
        (7100..=7200).contains(&left),
        "expires in two hours: {left}"
    );
    assert_eq!(extended["nodes"], status["nodes"], "the same nodes");
    let out = server.cli(&["destroy", "never-deployed"]);
    assert_eq!(code(&out), 1, "a typo is not a success");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("never-deployed was never deployed"),
        "{stderr}"
    );
    let out = server.cli(&["extend", "never-deployed", "--ttl", "2h"]);
    assert_eq!(code(&out), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("deploy it first"), "{stderr}");

    // A pool that is not configured is refused; the cluster stays.
    let out = deploy(&["--nodes", "2", "--ttl", "20m", "--pool", "other"]);
    assert_ne!(code(&out), 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown pool"), "{stderr}");

    assert_eq!(code(&server.cli(&["destroy", "open", "--wait"])), 0);
    wait_for("node processes gone", || {
        node_processes(&sandbox.path()).is_empty()
    });
}

/// `deploy --wait` of a cluster that is gone before it ever ran (its time
/// to live ran out while its nodes could not start) fails, and says why.
#[test]
fn deploy_wait_fails_when_the_cluster_expires_before_it_runs() {
    let sandbox = Sandbox::new();
    // Nodes that take a minute to boot.
    let server = Server::start_with(&sandbox.path(), &fake_config(r#"boot_delay = "60s""#));
    let out = server.cli(&["deploy", "doomed", "--nodes", "1", "--ttl", "2s", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    assert!(
        stderr.contains("doomed is not running: its time to live ran out at "),
        "{stderr}"
    );
    assert_eq!(server.status("doomed")["state"], "not_running");
}

#[test]
fn exit_statuses_follow_the_contract() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());

    // Usage errors: caught by the client, or refused as invalid by the server.
    assert_eq!(
        code(&server.cli(&["deploy", "demo", "--nodes", "2", "--ttl", "soon"])),
        2
    );
    let out = server.cli(&["deploy", "-bad-name", "--nodes", "1", "--ttl", "1h"]);
    assert_eq!(code(&out), 2);
    let out = server.cli(&["deploy", "ok", "--nodes", "0", "--ttl", "1h"]);
    assert_eq!(code(&out), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--nodes must be between") && stderr.contains("invalid_node_capacity"),
        "{stderr}"
    );
    // A conflict is a failed request.
    assert_eq!(
        code(&server.cli(&["deploy", "pub", "--nodes", "1", "--ttl", "1h"])),
        0
    );
    let out = server.cli(&["deploy", "pub", "--nodes", "1", "--ttl", "1h", "--public"]);
    assert_eq!(code(&out), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--public cannot change") && stderr.contains("(is_public_immutable)"),
        "in the command's flags, with the API's code: {stderr}"
    );
    assert_eq!(code(&server.cli(&["destroy", "pub", "--wait"])), 0);
    // Not signed in, or not allowed.
    let out = server.cli_with(&[], &["deploy", "anon", "--nodes", "1", "--ttl", "1h"]);
    assert_eq!(code(&out), 3);
    // Nothing listening.
    let out = Command::new(BIN)
        .args(["--server", "http://127.0.0.1:9", "status"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

#[test]
fn sigkill_mid_deploy_then_restart_converges_without_duplicates() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());
    let out = server.cli(&["deploy", "crash", "--nodes", "6", "--ttl", "10m"]);
    assert_eq!(code(&out), 0);
    // Kill as soon as the first node process exists: creates are in flight.
    wait_for("first node", || !node_processes(&sandbox.path()).is_empty());
    server.kill();

    let server = Server::start(&sandbox.path());
    wait_for("running again", || {
        let s = server.status("crash");
        s["state"] == "running" && ready_nodes(&s) == 6
    });
    // Give the engine a few resyncs to make a mistake, then count.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        node_processes(&sandbox.path()).len(),
        6,
        "exactly the wanted nodes"
    );
    assert_eq!(server.status("crash")["nodes"].as_array().unwrap().len(), 6);
}

#[test]
fn sigkill_mid_destroy_then_restart_leaves_nothing() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());
    assert_eq!(
        code(&server.cli(&["deploy", "gone", "--nodes", "4", "--ttl", "10m", "--wait"])),
        0
    );
    assert_eq!(node_processes(&sandbox.path()).len(), 4);
    assert_eq!(code(&server.cli(&["destroy", "gone"])), 0);
    server.kill();

    let server = Server::start(&sandbox.path());
    wait_for("cluster forgotten", || {
        server.status("gone")["state"] == "not_running"
    });
    wait_for("node processes gone", || {
        node_processes(&sandbox.path()).is_empty()
    });
}

#[test]
fn time_to_live_fires_on_time_and_across_a_restart() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());

    // While the server runs: not before the deadline, and promptly after.
    assert_eq!(
        code(&server.cli(&["deploy", "brief", "--nodes", "1", "--ttl", "3s", "--wait"])),
        0
    );
    let deadline: chrono::DateTime<chrono::Utc> = server.status("brief")["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    wait_for("deadline fired", || {
        server.status("brief")["state"] != "running"
    });
    let fired = chrono::Utc::now();
    assert!(
        fired >= deadline,
        "fired {fired} before the deadline {deadline}"
    );

    // While the server is down: the deadline passes, and the restart fires it.
    assert_eq!(
        code(&server.cli(&["deploy", "later", "--nodes", "2", "--ttl", "2s", "--wait"])),
        0
    );
    server.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        node_processes(&sandbox.path()).len(),
        2,
        "nodes outlive the server"
    );
    let server = Server::start(&sandbox.path());
    wait_for("expired cluster destroyed at start-up", || {
        server.status("later")["state"] == "not_running"
            && node_processes(&sandbox.path()).is_empty()
    });
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let sandbox = Sandbox::new();
    let _first = Server::start(&sandbox.path());
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(sandbox.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another flotilla server"), "{stderr}");
}

#[test]
fn a_bad_config_is_refused_naming_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[limits]\nmax_wiat = \"1m\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("max_wiat") && stderr.contains("bad.toml"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("flotilla-data").exists(),
        "nothing was created"
    );
}

#[test]
fn a_bad_ec2_config_stops_serve_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        (
            "[drivers.aws]\ntype = \"ec2\"\nregion = \"us-east-1\"\nimage = \"ami-1\"\nsubnet = \"subnet-a\"\n",
            "subnet",
        ),
        (
            "[drivers.aws]\ntype = \"ec2\"\nregion = \"Oregon\"\nimage = \"ami-1\"\n",
            "drivers.aws: invalid ec2 driver configuration: region \"Oregon\"",
        ),
    ] {
        let config = dir.path().join("aws.toml");
        std::fs::write(&config, text).unwrap();
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(code(&out), 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(needle) && stderr.contains("aws.toml"),
            "{stderr}"
        );
        assert!(
            !dir.path().join("flotilla-data").exists(),
            "nothing was created"
        );
    }
}

#[test]
fn events_show_what_happened_and_follow_what_happens_next() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());
    assert_eq!(
        code(&server.cli(&["deploy", "ev", "--nodes", "1", "--ttl", "10m", "--wait"])),
        0
    );
    assert_eq!(
        code(&server.cli(&["deploy", "ev", "--nodes", "2", "--ttl", "10m", "--wait"])),
        0
    );
    let out = server.cli(&["events", "ev"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("cluster.nodes") && l.contains("1/1 ready: local-")),
        "the nodes the leader observed: {text}"
    );
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("cluster.nodes"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("cluster.deployed") && lines[0].contains("1 nodes"),
        "{text}"
    );
    assert!(
        lines[1].contains("cluster.resized") && lines[1].contains("2 nodes"),
        "{text}"
    );

    // The status shows them too.
    let status = server.cli(&["status", "ev"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("recent events:"), "{status}");

    // Following prints what happens from now on, one JSON object a line.
    let mut follower = Command::new(BIN)
        .args([
            "--server",
            &server.url,
            "--output",
            "json",
            "events",
            "--follow",
        ])
        .env("HOME", &server.home)
        .env("FLOTILLA_USERNAME", "admin")
        .env("FLOTILLA_PASSWORD", support::ADMIN_PASSWORD)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(code(&server.cli(&["destroy", "ev"])), 0);
    let stdout = follower.stdout.take().unwrap();
    let first = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .next()
        .expect("a line")
        .unwrap();
    follower.kill().unwrap();
    follower.wait().unwrap();
    let event: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(event["kind"], "cluster.destroyed", "{first}");
    assert_eq!(event["key"], "ev");

    // A cluster name that breaks the rule is a usage error.
    assert_eq!(code(&server.cli(&["events", "no spaces"])), 2);
}

/// The conveniences a new user reaches for first: the client's and the
/// server's versions side by side, shell completions, and a top-level help
/// without the internal node agent.
#[test]
fn version_completions_and_a_help_without_internals() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());
    let out = server.cli(&["version"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let version = env!("CARGO_PKG_VERSION");
    assert!(text.contains(&format!("client {version}")), "{text}");
    assert!(text.contains(&format!("server {version}")), "{text}");
    assert!(out.stderr.is_empty(), "no mismatch to warn of");

    // No server: says where it looked, exit status 4.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["--server", "http://127.0.0.1:9", "version"])
        .env("HOME", &server.home)
        .output()
        .unwrap();
    assert_eq!(code(&out), 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));

    for shell in ["bash", "zsh", "fish"] {
        let out = server.cli(&["completions", shell]);
        assert_eq!(code(&out), 0, "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("deploy") && script.contains("destroy"),
            "{shell}"
        );
    }
    let help = String::from_utf8_lossy(&server.cli(&["--help"]).stdout).into_owned();
    assert!(
        help.contains("completions") && help.contains("version"),
        "{help}"
    );
    assert!(
        !help.lines().any(|l| l.trim_start().starts_with("node ")),
        "{help}"
    );
    assert!(
        help.contains("Examples:") && help.contains("flotilla doctor") && help.contains("130"),
        "{help}"
    );
    let help = String::from_utf8_lossy(&server.cli(&["deploy", "--help"]).stdout).into_owned();
    assert!(
        help.contains("Examples:") && help.contains("flotilla deploy demo --nodes 5 --ttl 2h"),
        "{help}"
    );
}

/// A cloud that refuses every create: the status (JSON and text) says what
/// stands in the way and when it is tried again, a `deploy --wait` that
/// outlives its time to live says so, and Ctrl-C while waiting says the
/// work goes on and how to follow it.
#[test]
fn a_refusing_cloud_is_explained_by_status_and_deploy_wait() {
    let sandbox = Sandbox::new();
    let server = Server::start_with(
        &sandbox.path(),
        &fake_config(r#"refuse_creates = "Invalid IamInstanceProfile name: flotilla-node""#),
    );
    let out = server.cli(&["deploy", "doomed", "--nodes", "2", "--ttl", "4s", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    assert!(
        stderr.contains("doomed is not running: its time to live ran out at ")
            && stderr.contains("what stood in its way: cloud_refused")
            && stderr.contains("Invalid IamInstanceProfile name: flotilla-node"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("longer --ttl"),
        "no advice that cannot help: {stderr}"
    );

    let out = server.cli(&["deploy", "stuck", "--nodes", "1", "--ttl", "1h"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("refused twice", || {
        server.status("stuck")["error"]["count"].as_u64() >= Some(2)
    });
    let status = server.status("stuck");
    let error = &status["error"];
    assert_eq!(error["code"], "cloud_refused");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("Invalid IamInstanceProfile"));
    for field in ["since", "last_at", "retry_at"] {
        assert!(error[field].is_string(), "{field} in {error}");
    }
    let out = server.cli(&["status", "stuck"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("  error cloud_refused: create: cloud error: Invalid IamInstanceProfile")
            && text.contains("times since")
            && (text.contains("next try in") || text.contains("trying again now")),
        "{text}"
    );
    let out = server.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("error cloud_refused"),
        "the list marks it: {text}"
    );
    let out = server.cli(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 1, "{text}");
    assert!(
        text.contains("ok    signed in as admin (admin), credentials from FLOTILLA_USERNAME")
            && text.contains("ok    pools: default (fake fake.small, default)")
            && text.contains("FAIL  cluster stuck: cloud_refused"),
        "{text}"
    );

    // The pool keeps its errors as data: the same failure counted, once.
    wait_for("the pool's errors written", || {
        let out = server.cli(&["--output", "json", "pool", "errors", "default"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        list["errors"].as_array().is_some_and(|errors| {
            errors
                .iter()
                .any(|e| e["cluster"] == "stuck" && e["count"].as_u64() >= Some(2))
        })
    });
    let out = server.cli(&["--output", "json", "pool", "errors", "default"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    // A row per cluster (the earlier one's stays, as history).
    let errors: Vec<&Value> = list["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["cluster"] == "stuck")
        .collect();
    assert_eq!(errors.len(), 1, "one row, counted: {list}");
    assert_eq!(errors[0]["kind"], "create_failed");
    assert_eq!(errors[0]["code"], "cloud_refused");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("IamInstanceProfile"),
        "{list}"
    );
    let out = server.cli(&["pool", "errors", "default"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("LAST") && text.contains("create_failed  cloud_refused  stuck"),
        "{text}"
    );
    assert_eq!(code(&server.cli(&["pool", "errors", "nonesuch"])), 1);

    // Ctrl-C while waiting.
    let waiting = server
        .cli_command(
            &Server::admin_env(),
            &["deploy", "stuck", "--nodes", "1", "--ttl", "1h", "--wait"],
        )
        .spawn()
        .unwrap();
    // Long enough to have signed in and be waiting, on a loaded machine.
    std::thread::sleep(std::time::Duration::from_millis(3000));
    assert_eq!(unsafe { libc::kill(waiting.id() as i32, libc::SIGINT) }, 0);
    let out = waiting.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 130, "{stderr}");
    assert!(
        stderr.contains("the server goes on with stuck")
            && stderr.contains("flotilla status stuck"),
        "{stderr}"
    );
    assert_eq!(
        server.status("stuck")["node_capacity"],
        1,
        "the deploy stands"
    );
}

/// `serve` on a busy port says how to pick another and leaves nothing
/// behind; `config init` writes a config that `serve --check` accepts,
/// creating nothing; `serve --help` names the environment a start reads.
#[test]
fn serve_checks_explains_and_leaves_nothing_behind() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());
    let busy = server.url.trim_start_matches("http://").to_owned();
    let fresh = sandbox.path().join("fresh");
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", &busy, "--data-dir"])
        .arg(&fresh)
        .env("FLOTILLA_ADMIN_PASSWORD", "a-password-for-nothing")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {busy}")) && stderr.contains("--listen"),
        "{stderr}"
    );
    assert!(!fresh.exists(), "no data directory left behind");

    let out = std::process::Command::new(BIN)
        .args(["config", "init"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    let conf = sandbox.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("flotilla.toml"), &out.stdout).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--check", "--config"])
        .arg(conf.join("flotilla.toml"))
        .env_remove("FLOTILLA_ADMIN_PASSWORD")
        .env_remove("FLOTILLA_DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        code(&out),
        0,
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "data directory: {} (created at start)",
            conf.join("flotilla-data").display()
        )) && stdout.contains("pool default: driver local")
            && stdout.contains(
                "jobs: agents reach this server at its listen address (this machine's nodes only)"
            )
            && stdout.contains("FLOTILLA_ADMIN_PASSWORD is not set")
            && stdout.contains("the config is valid"),
        "{stdout}"
    );
    assert!(
        !conf.join("flotilla-data").exists(),
        "a check creates nothing"
    );

    std::fs::write(conf.join("bad.toml"), "[limits]\nmax_nodes = 0\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--check", "--config"])
        .arg(conf.join("bad.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{stderr}");
    assert!(
        stderr.contains("bad.toml") && stderr.contains("max_nodes"),
        "{stderr}"
    );

    let out = std::process::Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "FLOTILLA_ADMIN_PASSWORD",
        "FLOTILLA_DATABASE_URL",
        "--check",
        "config init",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

/// `status --watch` prints the status again each time it changes, until
/// Ctrl-C, which ends it without an error; times read as distances.
#[test]
fn status_watch_follows_a_cluster_until_ctrl_c() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());
    let out = server.cli(&[
        "deploy", "watched", "--nodes", "1", "--ttl", "30m", "--wait",
    ]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let watching = server
        .cli_command(&Server::admin_env(), &["status", "watched", "--watch"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(3000));
    let out = server.cli(&[
        "deploy", "watched", "--nodes", "2", "--ttl", "30m", "--wait",
    ]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    // More than one poll (2 s) after the resize settled.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(unsafe { libc::kill(watching.id() as i32, libc::SIGINT) }, 0);
    let out = watching.wait_with_output().unwrap();
    assert_eq!(
        code(&out),
        0,
        "Ctrl-C ends a watch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("watched              running      1/1 ready"),
        "{text}"
    );
    assert!(
        text.contains("watched              running      2/2 ready"),
        "{text}"
    );
    assert!(
        text.contains("expires in 29m") || text.contains("expires in 30m"),
        "{text}"
    );
    assert!(
        text.contains(" ago)") || text.contains("(just now)"),
        "{text}"
    );

    let out = server.cli(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 0, "{text}");
    assert!(
        text.contains("ok    server ") && text.contains("clusters you can see: 1, nothing stands"),
        "{text}"
    );
    let out = server.cli_with(&[], &["doctor"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("warn  not signed in"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// An ec2 driver with no AWS credentials anywhere stops the start with one
/// message that says so, instead of an instance-metadata error at every
/// resync.
#[test]
fn an_ec2_driver_without_credentials_says_so_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aws.toml");
    std::fs::write(
        &config,
        "[drivers.aws]\ntype = \"ec2\"\nregion = \"us-east-1\"\nimage = \"ami-1\"\n",
    )
    .unwrap();
    let missing = dir.path().join("no-aws-files");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("FLOTILLA_ADMIN_PASSWORD", "a-password-for-nothing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", &missing)
        .env("AWS_SHARED_CREDENTIALS_FILE", &missing)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    assert!(
        stderr.contains("no AWS credentials found") && stderr.contains("AWS_ACCESS_KEY_ID"),
        "{stderr}"
    );
}

/// A way into the nodes: `logs` shows what a node printed (and follows
/// it), `exec` runs a command on a node and exits with its status; a
/// cluster's owner may exec only where its pool allows it, and nobody else
/// may see or touch another's nodes.
#[test]
fn logs_and_exec_reach_the_nodes_within_the_rules() {
    let sandbox = Sandbox::new();
    let config = format!(
        "{CONFIG}
[pools.open]
driver = \"local\"
instance_type = \"local.small\"
allow_exec = true
ssh_user = \"ops\"
init_data = \"echo workload of $FLOTILLA_NODE_ID says hello; exec sleep 1000\"
"
    );
    let server = Server::start_with(&sandbox.path(), &config);
    server.add_user("bob", "org_member", "bob-password-long-enough");
    let bob = [
        ("FLOTILLA_USERNAME", "bob"),
        ("FLOTILLA_PASSWORD", "bob-password-long-enough"),
    ];
    let text = |out: &Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let err = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // The admin's cluster in the default pool (no allow_exec).
    assert_eq!(
        code(&server.cli(&["deploy", "ops", "--nodes", "2", "--ttl", "10m", "--wait"])),
        0
    );
    let out = server.cli(&["logs", "ops"]);
    assert_eq!(code(&out), 0, "{}", err(&out));
    assert!(text(&out).contains("node agent serving"), "{}", text(&out));
    let second = server.status("ops")["nodes"][1]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = server.cli(&["logs", "ops", "2"]);
    assert!(text(&out).contains(&second), "{}", text(&out));

    // Admins may exec anywhere; the command's status is the exit status.
    let out = server.cli(&[
        "exec",
        "ops",
        "2",
        "--",
        "sh",
        "-c",
        "echo $FLOTILLA_CLUSTER $FLOTILLA_NODE_ID; echo oops >&2; exit 3",
    ]);
    assert_eq!(code(&out), 3, "{}", err(&out));
    assert_eq!(text(&out).trim(), format!("ops {second}"));
    assert_eq!(err(&out).trim(), "oops");
    let out = server.cli(&["exec", "ops", "--", "no-such-program-here"]);
    assert_eq!(code(&out), 127, "{}", err(&out));
    let out = server.cli(&["exec", "ops", "--timeout", "1s", "--", "sleep", "30"]);
    assert_eq!(code(&out), 128 + 9, "{}", err(&out));
    assert!(err(&out).contains("ran out of time"), "{}", err(&out));
    let out = server.cli(&["exec", "ops", "9", "--", "true"]);
    assert_eq!(code(&out), 1);
    assert!(err(&out).contains("no node \"9\""), "{}", err(&out));

    // Bob sees none of it.
    let out = server.cli_with(&bob, &["logs", "ops"]);
    assert_eq!(code(&out), 3, "{}", err(&out));
    let out = server.cli_with(&bob, &["exec", "ops", "--", "true"]);
    assert_eq!(code(&out), 3, "{}", err(&out));

    // His own cluster: logs yes; exec only in a pool that allows it.
    let out = server.cli_with(
        &bob,
        &["deploy", "bob", "--nodes", "1", "--ttl", "10m", "--wait"],
    );
    assert_eq!(code(&out), 0, "{}", err(&out));
    assert_eq!(code(&server.cli_with(&bob, &["logs", "bob"])), 0);
    let out = server.cli_with(&bob, &["exec", "bob", "--", "true"]);
    assert_eq!(code(&out), 3, "{}", err(&out));
    assert!(err(&out).contains("allow_exec"), "{}", err(&out));
    assert_eq!(
        code(&server.cli_with(&bob, &["destroy", "bob", "--wait"])),
        0
    );
    let out = server.cli_with(
        &bob,
        &[
            "deploy", "bob", "--nodes", "1", "--ttl", "10m", "--pool", "open", "--wait",
        ],
    );
    assert_eq!(code(&out), 0, "{}", err(&out));
    let out = server.cli_with(&bob, &["exec", "bob", "--", "echo", "mine"]);
    assert_eq!(
        (code(&out), text(&out).trim()),
        (0, "mine"),
        "{}",
        err(&out)
    );

    // Following prints what the node prints next.
    let mut follower = server
        .cli_command(&bob, &["logs", "bob", "--follow"])
        .spawn()
        .unwrap();
    let out = server.cli_with(
        &bob,
        &[
            "exec",
            "bob",
            "--",
            "sh",
            "-c",
            "echo a line printed later >> node.log",
        ],
    );
    assert_eq!(code(&out), 0, "{}", err(&out));
    let stdout = follower.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let mut seen = String::new();
    while let Ok(line) = lines.recv_timeout(SETTLE) {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("a line printed later") {
            break;
        }
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
    assert!(seen.contains("says hello"), "the workload's output: {seen}");
    assert!(seen.contains("a line printed later"), "followed: {seen}");

    // ssh where the pool names an ssh_user: the system's ssh (here a
    // stand-in that shows its arguments), and a config block per node.
    let out = server.cli(&["ssh", "ops"]);
    assert_eq!(code(&out), 1);
    assert!(err(&out).contains("take no ssh logins"), "{}", err(&out));
    let node = server.status("bob")["nodes"][0].clone();
    // The address's port is the node agent's, never ssh's.
    let (host, _agent) = node["address"].as_str().unwrap().split_once(':').unwrap();
    let out = server.cli_with(&bob, &["ssh-config", "bob"]);
    assert_eq!(code(&out), 0, "{}", err(&out));
    assert_eq!(
        text(&out),
        format!(
            "Host bob-1\n    # node {}\n    HostName {host}\n    User ops\n",
            node["id"].as_str().unwrap()
        )
    );
    let bin = sandbox.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake_ssh = bin.join("ssh");
    std::fs::write(&fake_ssh, "#!/bin/sh\necho ssh \"$@\"\n").unwrap();
    std::fs::set_permissions(
        &fake_ssh,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let with_path = [bob[0], bob[1], ("PATH", path.as_str())];
    let out = server.cli_with(&with_path, &["ssh", "bob", "1", "--", "uptime"]);
    assert_eq!(code(&out), 0, "{}", err(&out));
    assert_eq!(text(&out).trim(), format!("ssh -l ops {host} uptime"));
}

/// A cluster may bring its own workload where its pool allows it: each
/// node runs it on its own address, so two nodes on one machine serve the
/// same port, and status says where; the workload is fixed once deployed.
#[test]
fn a_cluster_brings_its_own_workload_where_its_pool_allows() {
    let sandbox = Sandbox::new();
    let config = format!(
        "{CONFIG}
[pools.web]
driver = \"local\"
instance_type = \"local.small\"
allow_workload = true
"
    );
    let server = Server::start_with(&sandbox.path(), &config);
    server.add_user("wendy", "org_member", "wendy-password-long-enough");
    let wendy = [
        ("FLOTILLA_USERNAME", "wendy"),
        ("FLOTILLA_PASSWORD", "wendy-password-long-enough"),
    ];
    let err = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let serve =
        "exec python3 -m http.server --bind \"$FLOTILLA_NODE_HOST\" \"$FLOTILLA_WORKLOAD_PORT\"";

    // Not in the default pool.
    let out = server.cli_with(
        &wendy,
        &[
            "deploy",
            "wendy",
            "--nodes",
            "2",
            "--ttl",
            "10m",
            "--workload",
            serve,
            "--port",
            "18080",
        ],
    );
    assert_eq!(code(&out), 3, "{}", err(&out));
    assert!(err(&out).contains("workload_not_allowed"), "{}", err(&out));
    assert_eq!(
        server.status("wendy")["state"],
        "not_running",
        "nothing deployed"
    );

    let out = server.cli_with(
        &wendy,
        &[
            "deploy",
            "wendy",
            "--nodes",
            "2",
            "--ttl",
            "10m",
            "--pool",
            "web",
            "--workload",
            serve,
            "--port",
            "18080",
            "--wait",
        ],
    );
    assert_eq!(code(&out), 0, "{}", err(&out));
    let status = server.status("wendy");
    assert_eq!(status["workload"]["port"], 18080, "{status}");
    let addresses: Vec<String> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["workload_address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(addresses.len(), 2);
    assert_ne!(addresses[0], addresses[1], "each node on its own address");
    for address in &addresses {
        assert!(address.ends_with(":18080"), "{address}");
        wait_for("the workload serving", || {
            std::net::TcpStream::connect(address.as_str()).is_ok()
        });
    }
    let text = server.cli_with(&wendy, &["status", "wendy"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("workload at {}", addresses[0])),
        "{text}"
    );

    // A resize keeps it; another workload is refused and changes nothing.
    let out = server.cli_with(&wendy, &["deploy", "wendy", "--nodes", "1", "--ttl", "10m"]);
    assert_eq!(code(&out), 0, "{}", err(&out));
    assert_eq!(server.status("wendy")["workload"]["command"], serve);
    let out = server.cli_with(
        &wendy,
        &[
            "deploy",
            "wendy",
            "--nodes",
            "3",
            "--ttl",
            "10m",
            "--workload",
            "sleep 1000",
        ],
    );
    assert_ne!(code(&out), 0);
    assert!(err(&out).contains("workload_immutable"), "{}", err(&out));
    assert_eq!(server.status("wendy")["node_capacity"], 1);
}

/// A pool written with `flotilla pool apply`: refused whole with every
/// problem and exit 2; then made, its nodes real processes running its
/// init data; kept across a SIGKILL and restart; retired only once its
/// cluster is gone. The config file's pool is read-only.
#[test]
fn a_pool_applied_from_a_file_makes_real_nodes_and_outlives_a_restart() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());
    let bad = sandbox.path().join("bad.toml");
    std::fs::write(
        &bad,
        "driver = \"local\"\ninstance_type = \"local big\"\nallow_exec = \"yes\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let out = server.cli(&["pool", "apply", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{stderr}");
    for pointer in ["/instance_type", "/allow_exec", "/colour"] {
        assert!(
            stderr.contains(&format!("\n  {pointer}: ")),
            "{pointer}: {stderr}"
        );
    }
    let out = server.cli(&["pool", "show", "bad"]);
    assert_eq!(code(&out), 1, "nothing was stored");

    let file = sandbox.path().join("web.toml");
    std::fs::write(
        &file,
        "driver = \"local\"\ninstance_type = \"local.web\"\n\
         init_data = 'echo from-the-pool > marker; sleep 3600'\n\
         description = \"web nodes\"\n",
    )
    .unwrap();
    let out = server.cli(&["pool", "apply", file.to_str().unwrap(), "--dry-run"]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("would be created"));
    let out = server.cli(&["pool", "apply", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("created (version 1)"));

    let out = server.cli(&[
        "deploy", "site", "--nodes", "2", "--ttl", "10m", "--pool", "web", "--wait",
    ]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let status = server.status("site");
    assert!(status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["instance_type"] == "local.web"));
    assert_eq!(node_processes(&sandbox.path()).len(), 2);
    // Each node runs the pool's init data (in its own directory).
    wait_for("the pool's workload ran", || {
        let out = server.cli(&["exec", "site", "1", "--", "cat", "marker"]);
        String::from_utf8_lossy(&out.stdout).trim() == "from-the-pool"
    });

    // Stored: a restarted server knows the pool and keeps its nodes.
    server.kill();
    let server = Server::start(&sandbox.path());
    wait_for("running again", || {
        let s = server.status("site");
        s["state"] == "running" && ready_nodes(&s) == 2
    });
    let out = server.cli(&["--output", "json", "pool", "show", "web"]);
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["source"], "api");
    assert_eq!(shown["document"]["description"], "web nodes");
    assert_eq!(shown["clusters"], serde_json::json!(["site"]));

    let out = server.cli(&["pool", "retire", "web"]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("pool_in_use"));
    let out = server.cli(&["destroy", "site", "--wait"]);
    assert_eq!(code(&out), 0);
    wait_for("the cluster forgotten", || {
        code(&server.cli(&["pool", "retire", "web"])) == 0
    });
    let out = server.cli(&["pool", "history", "web"]);
    let history = String::from_utf8_lossy(&out.stdout);
    assert!(
        history.contains("applied") && history.contains("retired"),
        "{history}"
    );
    let out = server.cli(&["pool", "apply", file.to_str().unwrap(), "--name", "default"]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("pool_in_config"));

    // A shared config of images; a pool takes its image from it.
    let images = sandbox.path().join("images.toml");
    std::fs::write(&images, "here = \"img-1\"\n").unwrap();
    let out = server.cli(&[
        "shared-config",
        "create",
        "base",
        "--schema",
        "local/images",
        images.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&images, "here = \"img-2\"\n").unwrap();
    let out = server.cli(&["shared-config", "update", "base", images.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("version 2"));
    let imaged = sandbox.path().join("imaged.toml");
    std::fs::write(
        &imaged,
        "driver = \"local\"\ninstance_type = \"local.small\"\nimage = { shared = \"base\", key = \"here\" }\n",
    )
    .unwrap();
    let out = server.cli(&["pool", "apply", imaged.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let out = server.cli(&["pool", "show", "imaged"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("image:    img-2 (shared config base version 2)"),
        "{shown}"
    );
    let out = server.cli(&["shared-config", "show", "base", "--version", "1"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("1 of 2") && shown.contains("img-1") && shown.contains("imaged"),
        "{shown}"
    );
    let out = server.cli(&["shared-config", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("local/images"));
}

/// A pool's new init data rolls out over real local nodes: the dry run
/// names the nodes it would replace, status marks them outdated, a pause
/// holds them, and once resumed every node is replaced, one at a time,
/// never fewer ready than wanted, the new ones running the new init data.
#[test]
fn a_changed_pool_rolls_its_local_nodes_over() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());
    let file = sandbox.path().join("web.toml");
    let pool = |marker: &str| {
        format!(
            "driver = \"local\"\ninstance_type = \"local.web\"\n\
             init_data = 'echo {marker} > marker; sleep 3600'\n\n[rollout]\nmax_surge = 1\n"
        )
    };
    std::fs::write(&file, pool("v1")).unwrap();
    let out = server.cli(&["pool", "apply", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let out = server.cli(&[
        "deploy", "site", "--nodes", "2", "--ttl", "10m", "--pool", "web", "--wait",
    ]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let before: std::collections::BTreeSet<String> = server.status("site")["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();

    let out = server.cli(&["pool", "pause", "web"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&file, pool("v2")).unwrap();
    let out = server.cli(&["pool", "apply", file.to_str().unwrap(), "--dry-run"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("would replace 2 node(s)"), "{said}");
    let out = server.cli(&["pool", "apply", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let out = server.cli(&["status", "site"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("2 nodes outdated"), "{said}");
    assert!(said.contains("rollout paused by"), "{said}");
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        node_processes(&sandbox.path()).len(),
        2,
        "paused: nothing replaced"
    );

    let out = server.cli(&["pool", "resume", "web"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("every node replaced", || {
        let s = server.status("site");
        let nodes = s["nodes"].as_array().unwrap().clone();
        let ready = nodes.iter().filter(|n| n["state"] == "ready").count();
        assert!(ready >= 2, "fewer than two ready: {s}");
        s.get("rollout").is_none()
            && nodes.len() == 2
            && nodes
                .iter()
                .all(|n| !before.contains(n["id"].as_str().unwrap()))
    });
    wait_for("the new nodes run the new init data", || {
        ["1", "2"].iter().all(|n| {
            let out = server.cli(&["exec", "site", n, "--", "cat", "marker"]);
            String::from_utf8_lossy(&out.stdout).trim() == "v2"
        })
    });
    wait_for("the old nodes gone", || {
        node_processes(&sandbox.path()).len() == 2
    });
}

/// A pool of several instance types, from a file: `flotilla pools` lists a
/// row per type, cheapest first; real nodes are made of the cheapest;
/// adding a type replaces nothing, dropping the one they are of rolls them
/// over to the next.
#[test]
fn a_pool_of_several_types_makes_nodes_of_the_cheapest() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());
    let file = sandbox.path().join("mixed.toml");
    let types = |list: &str| {
        format!("driver = \"local\"\nprice_per_hour = \"0.02\"\ninstance_types = [{list}]\n")
    };
    std::fs::write(
        &file,
        types(r#""local.b", { name = "local.a", price_per_hour = "0.01" }"#),
    )
    .unwrap();
    let out = server.cli(&["pool", "apply", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let out = server.cli(&["pools"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    let a = listed.find("local.a").expect("local.a listed");
    let b = listed.find("local.b").expect("local.b listed");
    assert!(a < b, "the cheapest first: {listed}");
    assert!(
        listed.contains("$0.01/h") && listed.contains("$0.02/h"),
        "{listed}"
    );

    let out = server.cli(&[
        "deploy", "site", "--nodes", "2", "--ttl", "10m", "--pool", "mixed", "--wait",
    ]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let node_types = || -> Vec<String> {
        server.status("site")["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["instance_type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(node_types(), ["local.a", "local.a"]);

    // A type added: nothing to replace.
    std::fs::write(
        &file,
        types(r#""local.b", { name = "local.a", price_per_hour = "0.01" }, "local.c""#),
    )
    .unwrap();
    let out = server.cli(&["pool", "apply", file.to_str().unwrap(), "--dry-run"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("would replace"), "{said}");
    // The one its nodes are of dropped: they roll over to the next.
    std::fs::write(&file, types(r#""local.b", "local.c""#)).unwrap();
    let out = server.cli(&["pool", "apply", file.to_str().unwrap(), "--dry-run"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("would replace 2 node(s)"), "{said}");
    let out = server.cli(&["pool", "apply", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("every node of the next type", || {
        let s = server.status("site");
        s.get("rollout").is_none() && ready_nodes(&s) == 2 && node_types() == ["local.b", "local.b"]
    });
}
