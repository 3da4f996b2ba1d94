//! The real binary and its command line, shared by the end-to-end tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A fresh database on `pg`, as a URL.
pub fn database(pg: &flotilla_store_postgres::testing::TempPostgres) -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pg.create_database())
        .expect("create a database")
}

/// [`CONFIG`] for servers that share the local driver's instances in
/// `instances`.
pub fn shared_config(instances: &Path) -> String {
    CONFIG.replace(
        "type = \"local\"\n",
        &format!(
            "type = \"local\"\ndir = {:?}\n",
            instances.display().to_string()
        ),
    )
}

/// A config whose default pool is on a fake cloud with `faults` (lines of
/// `[drivers.fake.faults]`), with [`CONFIG`]'s short limits.
pub fn fake_config(faults: &str) -> String {
    format!(
        r#"
[limits]
min_ttl = "1s"
max_wait = "60s"
resync_interval = "1s"

[drivers.fake]
type = "fake"
[drivers.fake.faults]
{faults}

[pools.default]
driver = "fake"
instance_type = "fake.small"
"#
    )
}

/// FLOTILLA_ADMIN_PASSWORD of every test server.
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
pub const SETTLE: Duration = Duration::from_secs(30);

/// Short TTLs and a fast resync so that the tests do not wait on defaults.
pub const CONFIG: &str = r#"
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

# The tests poll status through the command line every 50 ms, and each call
# signs in anew, which counts against the network's budget; a restart slow
# to converge on a busy machine ran it out (rate_limited). The budget is not
# what these tests are about.
[levels.anonymous]
requests_per_minute = 100000
"#;

pub struct Server {
    pub child: Child,
    pub url: String,
    /// Where the command line's HOME and config live.
    pub home: PathBuf,
    /// The server's log (stderr).
    pub log: PathBuf,
}

impl Server {
    /// Starts a server on a free port and waits until it serves.
    pub fn start(dir: &Path) -> Server {
        Self::start_with(dir, CONFIG)
    }

    /// Starts a server with this config text.
    pub fn start_with(dir: &Path, config_text: &str) -> Server {
        Self::start_with_env(dir, config_text, &[])
    }

    /// Starts a server with this config text and these extra environment
    /// variables.
    pub fn start_with_env(dir: &Path, config_text: &str, env: &[(&str, &str)]) -> Server {
        Self::start_listening(dir, config_text, env, "127.0.0.1:0")
    }

    /// Starts a server listening on `listen` (a restart that agents and
    /// clients must find where they left it).
    pub fn start_listening(
        dir: &Path,
        config_text: &str,
        env: &[(&str, &str)],
        listen: &str,
    ) -> Server {
        let config = dir.join("flotilla.toml");
        std::fs::write(&config, config_text).unwrap();
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
            .args(["serve", "--listen", listen, "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("FLOTILLA_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start flotilla serve");
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut server = Server {
            child,
            url: String::new(),
            home,
            log: log.clone(),
        };
        let deadline = Instant::now() + SETTLE;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // Only a whole line: the log may be read half written.
            if let Some((line, _)) = text
                .split("flotilla serving on ")
                .nth(1)
                .and_then(|rest| rest.split_once('\n'))
            {
                server.url = line.split_whitespace().next().unwrap().to_owned();
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
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The command line as the admin (credentials from the environment).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(&Self::admin_env(), args)
    }

    /// The command line with exactly these credential variables, a HOME of
    /// its own and nothing on standard input.
    pub fn cli_with(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        self.cli_input(env, args, "")
    }

    /// As `cli_with`, with `input` on standard input.
    pub fn cli_input(&self, env: &[(&str, &str)], args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .cli_command(env, args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("run flotilla");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().expect("run flotilla")
    }

    /// The command line, not started, as `cli_with` runs it: a HOME of its
    /// own, exactly these credential variables, output piped.
    pub fn cli_command(&self, env: &[(&str, &str)], args: &[&str]) -> Command {
        self.cli_command_at(&self.url, env, args)
    }

    /// As `cli_command`, with the server's URL spelled `url`.
    pub fn cli_command_at(&self, url: &str, env: &[(&str, &str)], args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["--server", url])
            .args(args)
            .env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("FLOTILLA_CONFIG_DIR");
        for var in [
            "FLOTILLA_TOKEN",
            "FLOTILLA_USERNAME",
            "FLOTILLA_PASSWORD",
            "FLOTILLA_GITHUB_TOKEN",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Makes account `name` at `level` (as the admin), with `password`.
    pub fn add_user(&self, name: &str, level: &str, password: &str) {
        let out = self.cli_input(
            &Self::admin_env(),
            &["user", "add", name, "--level", level],
            &format!("{password}\n"),
        );
        assert_eq!(
            code(&out),
            0,
            "user add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The admin's credentials, as `cli` passes them.
    pub fn admin_env() -> [(&'static str, &'static str); 2] {
        [
            ("FLOTILLA_USERNAME", "admin"),
            ("FLOTILLA_PASSWORD", ADMIN_PASSWORD),
        ]
    }

    pub fn status(&self, cluster: &str) -> Value {
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
pub fn node_processes(dir: &Path) -> Vec<u32> {
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

pub fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {SETTLE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn ready_nodes(status: &Value) -> usize {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "ready")
        .count()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> PathBuf {
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

pub mod http {
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
