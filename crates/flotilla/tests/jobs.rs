//! Jobs end to end: the real binary, the local driver, and the node
//! agent's job mode. A job is submitted through the command line; its
//! attempt's instance is a real node process, whose agent fetches the
//! script, runs it, sends its output and its exit status back.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{code, node_processes, wait_for, Sandbox, Server, CONFIG};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn job(server: &Server, id: u64) -> Value {
    let out = server.cli(&["--output", "json", "job", "show", &id.to_string()]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn submit(server: &Server, file: &str) -> u64 {
    let out = server.cli(&["--output", "json", "job", "submit", file]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    view["id"].as_u64().unwrap()
}

/// Processes whose command line is `command` (a script's own words).
fn processes_with(command: &str) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.trim_end() == command {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn a_job_runs_and_its_exit_status_is_the_scripts() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let server = Server::start(&dir);

    let hello = write(
        &dir,
        "hello.toml",
        "name = \"hello\"\nscript = \"echo hello; echo \\\"key=$KEY\\\"; echo oops >&2; exit 3\"\nmax_runtime = \"5m\"\n[secrets]\nKEY = \"hunter2-secret\"\n",
    );
    let out = server.cli(&["job", "submit", &hello, "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "a failed job fails the command: {stderr}");
    assert!(stdout.contains(" out hello\n"), "{stdout}");
    assert!(stdout.contains(" err oops\n"), "{stdout}");
    assert!(
        stdout.contains("key=[redacted]") && !stdout.contains("hunter2"),
        "the script got the secret, the log hides it: {stdout}"
    );
    assert!(
        stderr.contains("failed") && stderr.contains("exited with status 3"),
        "{stderr}"
    );
    assert!(
        stderr.contains("flotilla job logs 1"),
        "says where the log is: {stderr}"
    );

    let shown = job(&server, 1);
    assert_eq!(shown["state"], "failed");
    assert_eq!(
        shown["attempts"].as_array().unwrap().len(),
        1,
        "a script's failure is not retried"
    );
    assert_eq!(shown["attempts"][0]["exit_status"], 3);
    assert_eq!(shown["document"]["secrets"]["KEY"], "[redacted]");
    assert!(!shown.to_string().contains("hunter2"), "{shown}");
    assert_eq!(
        shown["document"]["max_runtime"], "5m",
        "stored with defaults filled in"
    );

    // The log stays readable after.
    let log = server.cli(&["job", "logs", "1"]);
    assert!(String::from_utf8_lossy(&log.stdout).contains(" out hello\n"));

    let ok = write(&dir, "ok.toml", "name = \"ok\"\nscript = \"echo fine\"\n");
    let out = server.cli(&["job", "submit", &ok, "--wait"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(job(&server, 2)["state"], "succeeded");
    assert_eq!(
        job(&server, 2)["document"]["max_runtime"],
        "1h",
        "the server's default max_runtime"
    );

    // Each attempt's instance goes once it is over.
    wait_for("the attempts' nodes to go", || {
        node_processes(&dir.join("data")).is_empty()
    });

    // Bad files change nothing and say why.
    let bad = write(
        &dir,
        "bad.toml",
        "name = \"bad\"\nscript = \"true\"\nmax_runtime = \"5 parsecs\"\nmemory = \"4\"\n",
    );
    let out = server.cli(&["job", "submit", &bad]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(code(&out), 0);
    assert!(
        stderr.contains("/max_runtime") && stderr.contains("/memory"),
        "{stderr}"
    );
    let list = server.cli(&["job", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&list.stdout).lines().count(),
        2,
        "nothing queued for a bad file"
    );
}

#[test]
fn cancel_and_max_runtime_stop_a_running_script() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let server = Server::start(&dir);

    let long = write(
        &dir,
        "long.toml",
        "name = \"long\"\nscript = \"echo started; sleep 4171; echo never\"\nmax_runtime = \"10m\"\n",
    );
    let id = submit(&server, &long);
    wait_for("the job to run", || job(&server, id)["state"] == "running");
    wait_for("its first line", || {
        String::from_utf8_lossy(&server.cli(&["job", "logs", &id.to_string()]).stdout)
            .contains("started")
    });
    assert_eq!(processes_with("sleep 4171"), 1);
    let out = server.cli(&["job", "cancel", &id.to_string()]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the job to end cancelled", || {
        job(&server, id)["state"] == "cancelled"
    });
    wait_for("its script to be killed", || {
        processes_with("sleep 4171") == 0
    });
    assert_eq!(job(&server, id)["attempts"][0]["end"], "cancelled");
    // Cancelling an ended job is refused, and changes nothing.
    let again = server.cli(&["job", "cancel", &id.to_string()]);
    assert_ne!(code(&again), 0);
    assert!(String::from_utf8_lossy(&again.stderr).contains("job_state"));

    let slow = write(
        &dir,
        "slow.toml",
        "name = \"slow\"\nscript = \"echo started; sleep 4172\"\nmax_runtime = \"2s\"\nretries = 2\n",
    );
    let out = server.cli(&["job", "submit", &slow, "--wait"]);
    assert_eq!(code(&out), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed_out"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = job(&server, id + 1);
    assert_eq!(shown["state"], "timed_out");
    assert_eq!(
        shown["attempts"].as_array().unwrap().len(),
        1,
        "running out of time is not retried"
    );
    wait_for("its script to be killed", || {
        processes_with("sleep 4172") == 0
    });
    wait_for("the attempts' nodes to go", || {
        node_processes(&dir.join("data")).is_empty()
    });
}

#[test]
fn a_server_killed_while_a_job_runs_loses_no_line_and_starts_no_second_attempt() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_listening(&dir, CONFIG, &[], &listen);
    let counted = write(
        &dir,
        "count.toml",
        "name = \"count\"\nscript = \"for i in $(seq 1 12); do echo line $i; sleep 0.25; done\"\nmax_runtime = \"5m\"\n",
    );
    let id = submit(&server, &counted);
    wait_for("the job to run", || job(&server, id)["state"] == "running");
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    let server = Server::start_listening(&dir, CONFIG, &[], &listen);
    wait_for("the job to end", || {
        job(&server, id)["state"] == "succeeded"
    });
    let shown = job(&server, id);
    assert_eq!(
        shown["attempts"].as_array().unwrap().len(),
        1,
        "the running attempt was adopted, not started again: {shown}"
    );
    let log =
        String::from_utf8_lossy(&server.cli(&["job", "logs", &id.to_string()]).stdout).into_owned();
    for i in 1..=12 {
        assert_eq!(
            log.matches(&format!(" out line {i}\n")).count(),
            1,
            "line {i} once: {log}"
        );
    }
}

/// Seed 000's TEST and RELEASE: templates of the server's config, run by
/// admins against a cluster at a version, from a repository the test
/// makes.
#[test]
fn test_and_release_run_their_templates_from_a_repository() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    // A repository with a test suite and a release script.
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("run-tests.sh"),
        "#!/bin/sh\necho \"testing $1 at $(git rev-parse --abbrev-ref HEAD) against $CLUSTER_ADDRESS\"\n[ -n \"$CLUSTER_TOKEN\" ] || exit 9\necho \"token $CLUSTER_TOKEN\"\n[ \"$1\" = good ] || exit 1\n",
    )
    .unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "--quiet", "--initial-branch", "main"]);
    git(&["add", "."]);
    git(&["commit", "--quiet", "-m", "tests"]);
    git(&["branch", "v2"]);
    let config = format!(
        "{CONFIG}\n[jobs.templates.test]\nrepo = {repo:?}\nref = \"{{{{version}}}}\"\nscript = \"sh run-tests.sh {{{{cluster}}}}\"\nmax_runtime = \"5m\"\n[jobs.templates.test.env]\nCLUSTER_ADDRESS = \"{{{{address}}}}\"\n[jobs.templates.test.secrets]\nCLUSTER_TOKEN = \"{{{{cluster_token}}}}\"\n",
        repo = repo.display().to_string()
    );
    let server = Server::start_with(&dir, &config);
    for cluster in ["good", "bad"] {
        let out = server.cli(&["deploy", cluster, "--nodes", "1", "--ttl", "10m", "--wait"]);
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    }

    let out = server.cli(&["test", "good", "v2", "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        code(&out),
        0,
        "passed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("testing good at v2 against 127."),
        "{stdout}"
    );
    assert!(
        stdout.contains("token [redacted]"),
        "the cluster token reached the script, and no output: {stdout}"
    );
    let out = server.cli(&["test", "bad", "main", "--wait"]);
    assert_eq!(
        code(&out),
        1,
        "failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("exited with status 1"));

    // Refusals: no such template, a version that is not one, a cluster
    // not deployed, and no one but admins.
    let out = server.cli(&["release", "good", "v2"]);
    assert_ne!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_template"));
    let out = server.cli(&["test", "good", "$(reboot)"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_version"));
    let out = server.cli(&["test", "ghost", "main"]);
    assert_ne!(code(&out), 0);
    server.add_user("ann", "org_member", "ann-password-long");
    let ann = [
        ("FLOTILLA_USERNAME", "ann"),
        ("FLOTILLA_PASSWORD", "ann-password-long"),
    ];
    let out = server.cli_with(&ann, &["test", "good", "main"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin_only"));
    let list = server.cli(&["job", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&list.stdout).lines().count(),
        2,
        "refusals queue nothing"
    );
}

/// A schedule made at the command line fires on time, goes on across a
/// server's restart, and stops when paused.
#[test]
fn a_schedule_fires_across_a_restart_until_paused() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let config = format!(
        "{CONFIG}\n[jobs.templates.ping]\nscript = \"echo ping {{{{cluster}}}} {{{{version}}}}\"\nmax_runtime = \"1m\"\n"
    );
    let server = Server::start_with(&dir, &config);
    let out = server.cli(&["deploy", "demo", "--nodes", "1", "--ttl", "10m", "--wait"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let out = server.cli(&[
        "schedule",
        "create",
        "often",
        "--cron",
        "*/2 * * * * *",
        "--template",
        "ping",
        "--cluster",
        "demo",
        "--version",
        "v7",
    ]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("next "));
    let jobs = |server: &Server| -> Vec<Value> {
        let out = server.cli(&["--output", "json", "job", "list"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        list["jobs"].as_array().unwrap().clone()
    };
    wait_for("two fires", || jobs(&server).len() >= 2);
    let first = jobs(&server);
    assert_eq!(first[0]["name"], "ping-demo");
    wait_for("a fired job to succeed", || {
        jobs(&server).iter().any(|j| j["state"] == "succeeded")
    });
    let done = jobs(&server)
        .into_iter()
        .find(|j| j["state"] == "succeeded")
        .unwrap();
    let log = server.cli(&["job", "logs", &done["id"].to_string()]);
    assert!(String::from_utf8_lossy(&log.stdout).contains("ping demo v7"));

    let port = server.url.rsplit(':').next().unwrap().to_owned();
    server.kill();
    let server = Server::start_listening(&dir, &config, &[], &format!("127.0.0.1:{port}"));
    let before = jobs(&server).len();
    wait_for("fires after the restart", || {
        jobs(&server).len() >= before + 2
    });

    let out = server.cli(&["schedule", "pause", "often"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("paused"));
    std::thread::sleep(Duration::from_millis(500));
    let paused_at = jobs(&server).len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        jobs(&server).len(),
        paused_at,
        "a paused schedule fires nothing"
    );
    let out = server.cli(&["schedule", "delete", "often"]);
    assert_eq!(code(&out), 0);
    let out = server.cli(&["schedule", "show", "often"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_schedule"));
}

/// The agent copes with what scripts do: bytes that are not UTF-8, and a
/// process left running in the background holding the output open. And
/// a pool that does not allow workloads runs no one's scripts but admins'.
#[test]
fn odd_output_and_background_processes_do_not_change_the_verdict() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let server = Server::start(&dir);
    let odd = write(
        &dir,
        "odd.toml",
        "name = \"odd\"\nscript = \"printf 'bin\\\\377ary\\\\n'; sleep 4173 & echo done; exit 4\"\nmax_runtime = \"5m\"\n",
    );
    let started = std::time::Instant::now();
    let out = server.cli(&["job", "submit", &odd, "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        code(&out),
        1,
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("out bin\u{fffd}ary"), "{stdout}");
    assert!(stdout.contains("out done"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exited with status 4"),
        "the script's own status, not a timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    wait_for("the background process to go with the instance", || {
        processes_with("sleep 4173") == 0
    });

    server.add_user("ann", "org_member", "ann-password-long");
    let ann = [
        ("FLOTILLA_USERNAME", "ann"),
        ("FLOTILLA_PASSWORD", "ann-password-long"),
    ];
    let out = server.cli_with(&ann, &["job", "submit", &odd]);
    assert_ne!(code(&out), 0);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("jobs_not_allowed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a job's `artifacts` name is kept when its script ends: a file as
/// itself, a directory as every file under it (links not followed), and
/// the log says what was kept and what was not found; `job files` lists
/// them and `job file` gives one back.
#[test]
fn a_jobs_artifacts_are_kept_and_given_back() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let server = Server::start(&dir);
    let file = write(
        &dir,
        "build.toml",
        r#"name = "build"
script = "mkdir -p out/dir/deep && echo report > out/report.txt && printf abc > out/dir/deep/a.bin && ln -s /etc/passwd out/dir/link"
max_runtime = "5m"
artifacts = ["out/report.txt", "out/dir", "missing.txt"]
"#,
    );
    let out = server.cli(&["job", "submit", &file, "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        code(&out),
        0,
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for said in [
        "kept out/report.txt (7 bytes)",
        "kept out/dir/deep/a.bin (3 bytes)",
        "not kept: out/dir/link: a link, not followed",
        "artifact missing.txt: not found",
    ] {
        assert!(stdout.contains(said), "{said}: {stdout}");
    }

    let out = server.cli(&["job", "files", "1"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let paths: Vec<&str> = listed
        .lines()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(paths, ["out/dir/deep/a.bin", "out/report.txt"], "{listed}");

    let out = server.cli(&["job", "file", "1", "out/report.txt"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"report\n");
    let to = dir.join("a.bin");
    let out = server.cli(&[
        "job",
        "file",
        "1",
        "out/dir/deep/a.bin",
        "--attempt",
        "1",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&to).unwrap(), b"abc");

    let out = server.cli(&["job", "file", "1", "missing.txt"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(code(&out), 0);
    assert!(
        stderr.contains("kept no file \"missing.txt\"") && stderr.contains("flotilla job files 1"),
        "{stderr}"
    );
}

/// The local driver's instances under `data` kept warm for jobs: each
/// one's ID, with the attempt a job took it for, if one did.
fn warm_instances(data: &Path) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    let mut dirs = vec![data.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n == "instance.json") {
                let Ok(record) = std::fs::read(&path) else {
                    continue;
                };
                let Ok(record) = serde_json::from_slice::<Value>(&record) else {
                    continue;
                };
                if record["tags"]["flotilla-warm"].is_string() {
                    found.push((
                        record["id"].as_str().unwrap().to_owned(),
                        record["tags"]["flotilla-job"].as_str().map(str::to_owned),
                    ));
                }
            }
        }
    }
    found
}

/// A pool's `idle_nodes` on the local driver: an instance is booted and
/// its agent waits, asking the server for a job; a job takes it and runs
/// on it, and another waits in its place.
#[test]
fn a_job_runs_on_an_instance_kept_warm() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let config = CONFIG.replace(
        "instance_type = \"local.small\"\n",
        "instance_type = \"local.small\"\nidle_nodes = 1\n",
    );
    assert_ne!(config, CONFIG);
    let server = Server::start_with(&dir, &config);
    let data = dir.join("data");
    let mut warm = Vec::new();
    wait_for("an instance kept warm", || {
        warm = warm_instances(&data);
        warm.len() == 1 && node_processes(&data).len() == 1
    });
    let (first, taken_for) = warm[0].clone();
    assert_eq!(taken_for, None);
    // Its agent is up and asking before any job comes.
    std::thread::sleep(Duration::from_secs(2));

    let file = write(
        &dir,
        "warm.toml",
        "name = \"warm\"\nscript = \"echo on a warm node\"\nmax_runtime = \"5m\"\n",
    );
    let out = server.cli(&["job", "submit", &file, "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(" out on a warm node\n"), "{stdout}");
    let shown = job(&server, 1);
    assert_eq!(shown["state"], "succeeded");
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(shown["attempts"][0]["instance"], first.as_str(), "{shown}");
    assert_eq!(shown["attempts"][0]["warm"], true, "{shown}");
    let text = server.cli(&["job", "show", "1"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(&format!("on {first} (kept warm), started")),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    wait_for("another kept warm, the one used gone", || {
        let now = warm_instances(&data);
        now.len() == 1 && now[0].0 != first && now[0].1.is_none()
    });
    let shown = server.cli(&["--output", "json", "pool", "show", "default"]);
    let pool: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(pool["document"]["idle_nodes"], 1, "{pool}");
}
