//! The real binary end to end: `flotilla serve` on the `local` driver,
//! driven by the `flotilla` command line, killed with SIGKILL at awkward
//! moments and restarted. Node processes are counted from /proc, not from
//! anything flotilla reports, so a leak or a duplicate cannot hide.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
const SETTLE: Duration = Duration::from_secs(30);

/// Short TTLs and a fast resync so that the tests do not wait on defaults.
const CONFIG: &str = r#"
[limits]
min_ttl = "1s"
max_wait = "60s"
resync_interval = "1s"

[drivers.local]
type = "local"
grace = "2s"

[pools.default]
driver = "local"
instance_type = "local.small"
"#;

struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// Starts a server on a free port and waits until it serves.
    fn start(dir: &Path) -> Server {
        let config = dir.join("flotilla.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let log = dir.join(format!(
            "serve-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        // Each start logs to its own file, so a restart is not fooled by the
        // previous server's "serving" line.
        let child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start flotilla serve");
        let mut server = Server {
            child,
            url: String::new(),
        };
        let deadline = Instant::now() + SETTLE;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("flotilla serving on ").nth(1) {
                server.url = rest.split_whitespace().next().unwrap().to_owned();
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("flotilla serve exited with {status}:\n{text}");
            }
            assert!(Instant::now() < deadline, "server did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What a power cut or an OOM kill does: no shutdown code runs.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(["--server", &self.url])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run flotilla")
    }

    fn status(&self, cluster: &str) -> Value {
        let out = self.cli(&["--output", "json", "status", cluster]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pids of live node processes whose instance directory lies under
/// `dir`: the ground truth, whatever flotilla believes.
fn node_processes(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "node") && args.iter().any(|a| a.contains(&needle)) {
            pids.push(pid);
        }
    }
    pids
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {SETTLE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ready_nodes(status: &Value) -> usize {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "ready")
        .count()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Sandbox {
    /// Nodes fence themselves off once their record is gone; removing the
    /// directory (TempDir's drop) does that. Killing them too keeps a failed
    /// test from leaving processes behind for the next.
    fn drop(&mut self) {
        for pid in node_processes(self.dir.path()) {
            // SAFETY: sending a signal has no memory effects.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

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
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo"));

    let out = server.cli(&["destroy", "demo", "--wait"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.status("demo")["state"], "not_running");
    wait_for("node processes gone", || {
        node_processes(&sandbox.path()).is_empty()
    });
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_node_capacity"));
    // A conflict is a failed request.
    assert_eq!(
        code(&server.cli(&["deploy", "pub", "--nodes", "1", "--ttl", "1h"])),
        0
    );
    let out = server.cli(&["deploy", "pub", "--nodes", "1", "--ttl", "1h", "--public"]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is_public"));
    assert_eq!(code(&server.cli(&["destroy", "pub", "--wait"])), 0);
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

mod http {
    /// A plain HTTP GET of JSON, enough for the node agent's /info.
    pub fn blocking_get(url: &str) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            ::reqwest::get(url)
                .await
                .expect("GET")
                .json()
                .await
                .expect("JSON")
        })
    }
}
