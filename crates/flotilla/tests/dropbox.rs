//! The drop box end to end: the real binary, the local driver, and a
//! drop-box directory with a folder per account. Files are written as a
//! user would; the server's answers are the status files beside them.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{code, wait_for, Sandbox, Server, CONFIG};

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn start(dir: &Path) -> (Server, std::path::PathBuf) {
    let drop = dir.join("drop");
    std::fs::create_dir_all(drop.join("admin")).unwrap();
    let config = format!(
        "{CONFIG}\n[dropbox]\ndir = \"{}\"\nscan_interval = \"200ms\"\n\n\
         [dropbox.templates.default]\nnodes = 1\nttl = \"1h\"\n",
        drop.display()
    );
    (Server::start_with(dir, &config), drop)
}

#[test]
fn a_file_in_your_folder_makes_resizes_and_destroys_a_cluster() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let (server, drop) = start(&dir);
    let mine = drop.join("admin");

    std::fs::write(mine.join("web.cf-create"), "nodes = 2\n").unwrap();
    let created = mine.join("web.cf-created");
    wait_for("web.cf-created", || created.exists());
    let status = read(&created);
    assert_eq!(status["state"], "running", "{status}");
    let addresses = status["addresses"].as_array().unwrap().clone();
    assert_eq!(addresses.len(), 2, "{status}");
    assert_eq!(status["login"], addresses[0], "{status}");
    assert!(status["expires_at"].is_string(), "{status}");
    assert!(
        !mine.join("web.cf-create").exists(),
        "the trigger is removed"
    );
    let shown = server.cli(&["--output", "json", "status", "web"]);
    assert_eq!(code(&shown), 0);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["node_capacity"], 2, "{shown}");

    // A status file left in a folder is no trigger, and a cluster the
    // drop box did not make for this folder gets no status there.
    assert_eq!(
        code(&server.cli(&["deploy", "other", "--nodes", "1", "--ttl", "1h"])),
        0
    );
    std::fs::write(mine.join("other.cf-created"), "planted\n").unwrap();
    std::fs::write(mine.join("other.cf-failed"), "planted\n").unwrap();

    // A second .cf-create resizes it, in JSON this time.
    std::fs::write(mine.join("web.cf-create"), r#"{"nodes": 3, "ttl": "2h"}"#).unwrap();
    wait_for("web.cf-created to say 3 nodes", || {
        read(&created)["addresses"]
            .as_array()
            .is_some_and(|a| a.len() == 3)
    });

    // Refusals leave a .cf-failed and deploy nothing.
    std::fs::write(mine.join("Bad_Name.cf-create"), "").unwrap();
    std::fs::write(mine.join("junk.cf-create"), "{not json").unwrap();
    std::fs::write(mine.join("huge.cf-create"), "nodes = 1000\n").unwrap();
    // Nothing outside the drop box is read through a link, waited on
    // (a pipe), or written through a link a user left.
    let outside = dir.join("outside.txt");
    std::fs::write(&outside, "secret = \"outside\"\n").unwrap();
    std::os::unix::fs::symlink(&outside, mine.join("link.cf-create")).unwrap();
    let fifo = mine.join("pipe.cf-create");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A link left at a status file's own name is replaced, not written
    // through.
    std::os::unix::fs::symlink(&outside, mine.join("odd.cf-failed")).unwrap();
    std::fs::write(mine.join("odd.cf-create"), "template = \"gpu\"\n").unwrap();
    std::fs::create_dir_all(drop.join("nobody")).unwrap();
    std::fs::write(drop.join("nobody").join("x.cf-create"), "").unwrap();
    for (file, code) in [
        (mine.join("Bad_Name.cf-failed"), "invalid_cluster_name"),
        (mine.join("junk.cf-failed"), "invalid_trigger"),
        (mine.join("huge.cf-failed"), "invalid_node_capacity"),
        (mine.join("odd.cf-failed"), "unknown_template"),
        (mine.join("link.cf-failed"), "invalid_trigger"),
        (mine.join("pipe.cf-failed"), "invalid_trigger"),
        (drop.join("nobody").join("x.cf-failed"), "unknown_account"),
    ] {
        // A plain file: the link planted at odd.cf-failed replaced.
        wait_for(&format!("{}", file.display()), || {
            std::fs::symlink_metadata(&file).is_ok_and(|m| m.is_file())
        });
        let failed = read(&file);
        assert_eq!(failed["code"], code, "{failed}");
        assert!(failed["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Each refusal is an event too, noted with the trigger.
    let events = server.cli(&["--output", "json", "events"]);
    let refused: Vec<Value> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == "dropbox.refused")
        .collect();
    for (account, code) in [
        ("admin", "invalid_node_capacity"),
        ("admin", "unknown_template"),
        ("nobody", "unknown_account"),
    ] {
        assert!(
            refused
                .iter()
                .any(|e| e["key"] == account && e["details"]["code"] == code),
            "{account} {code}: {refused:?}"
        );
    }
    assert!(!std::fs::read_to_string(mine.join("link.cf-failed"))
        .unwrap()
        .contains("outside"));
    assert!(!std::fs::symlink_metadata(mine.join("odd.cf-failed"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(&outside).unwrap(),
        "secret = \"outside\"\n"
    );
    for cluster in ["junk", "huge", "odd", "link", "pipe"] {
        let out = server.cli(&["--output", "json", "status", cluster]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["state"], "not_running", "{cluster} was not deployed: {v}");
    }
    assert!(!mine.join("junk.cf-create").exists());

    for planted in ["other.cf-created", "other.cf-failed"] {
        assert_eq!(
            std::fs::read_to_string(mine.join(planted)).unwrap(),
            "planted\n"
        );
    }

    std::fs::write(mine.join("web.cf-delete"), "").unwrap();
    let deleted = mine.join("web.cf-deleted");
    wait_for("web.cf-deleted", || deleted.exists());
    assert!(!created.exists(), "its .cf-created goes");
    assert!(!mine.join("web.cf-delete").exists());
    wait_for("web to be gone", || {
        let out = server.cli(&["--output", "json", "status", "web"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["state"] == "not_running" || code(&out) != 0
    });
}

/// A server killed after it deployed a trigger's cluster but before the
/// cluster ran (so before its status file was written): the next server
/// neither deploys it again nor forgets it, and writes its `.cf-created`
/// once it runs.
#[test]
fn a_server_killed_before_the_status_is_written_writes_it_after_a_restart() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let drop = dir.join("drop");
    let mine = drop.join("admin");
    std::fs::create_dir_all(&mine).unwrap();
    let config = format!(
        "{}\n[dropbox]\ndir = \"{}\"\nscan_interval = \"200ms\"\n",
        support::fake_config("boot_delay = \"3s\""),
        drop.display()
    );
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let server = Server::start_listening(&dir, &config, &[], &listen);
    std::fs::write(mine.join("db.cf-create"), "nodes = 2\n").unwrap();
    wait_for("the trigger handled", || {
        !mine.join("db.cf-create").exists()
    });
    assert_eq!(server.status("db")["state"], "deploying");
    assert!(!mine.join("db.cf-created").exists(), "not running yet");
    server.kill();

    let server = Server::start_listening(&dir, &config, &[], &listen);
    let created = mine.join("db.cf-created");
    wait_for("db.cf-created after the restart", || created.exists());
    let status = read(&created);
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["addresses"].as_array().unwrap().len(), 2, "{status}");
    assert!(!mine.join("db.cf-failed").exists());
    let listed = server.cli(&["--output", "json", "status"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let names: Vec<&str> = listed["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["cluster"].as_str().or(c["name"].as_str()))
        .collect();
    assert_eq!(names, ["db"], "{listed}");
}

/// A trigger seen again as it was (a server that stopped after acting on
/// it, before removing it) is not acted on again; the same words written
/// anew later are a new trigger.
#[test]
fn a_trigger_is_acted_on_once() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let (server, drop) = start(&dir);
    let mine = drop.join("admin");
    let trigger = mine.join("app.cf-create");
    std::fs::write(&trigger, "nodes = 1\n").unwrap();
    let written = std::fs::metadata(&trigger).unwrap().modified().unwrap();
    wait_for("app.cf-created", || mine.join("app.cf-created").exists());
    let state = |server: &Server| server.status("app")["state"].clone();

    // Destroyed through the command line: acting on the trigger again
    // would bring it back.
    assert_eq!(code(&server.cli(&["destroy", "app"])), 0);
    wait_for("app to go", || state(&server) == "not_running");
    wait_for("app.cf-deleted", || mine.join("app.cf-deleted").exists());
    assert!(!mine.join("app.cf-created").exists());
    std::fs::write(&trigger, "nodes = 1\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&trigger)
        .unwrap()
        .set_modified(written)
        .unwrap();
    wait_for("the trigger seen again to be removed", || !trigger.exists());
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(state(&server), "not_running", "not deployed again");

    std::fs::write(&trigger, "nodes = 1\n").unwrap();
    wait_for("app deployed again", || state(&server) == "running");
}

/// With a watch (inotify), a trigger is acted on as soon as its writer
/// closes it, long before the next scan; an empty one waits for the scan's
/// rule, so a file made empty and written after is read once, written.
#[test]
fn a_watched_folder_acts_when_a_file_is_written_and_an_empty_one_waits() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let drop = dir.join("drop");
    let mine = drop.join("admin");
    std::fs::create_dir_all(&mine).unwrap();
    // Scans an hour apart: only the watch can act in time.
    let config = format!(
        "{CONFIG}\n[dropbox]\ndir = \"{}\"\nscan_interval = \"1h\"\n",
        drop.display()
    );
    let server = Server::start_with(&dir, &config);
    let log = || std::fs::read_to_string(&server.log).unwrap_or_default();
    wait_for("the watch to be set", || {
        log().contains("watching the drop box")
    });

    std::fs::write(mine.join("web.cf-create"), "nodes = 1\n").unwrap();
    wait_for("web.cf-created, by the watch", || {
        mine.join("web.cf-created").exists()
    });
    assert_eq!(read(&mine.join("web.cf-created"))["state"], "running");

    // Made empty first (as `touch` does), written a moment later.
    std::fs::write(mine.join("late.cf-create"), "").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(mine.join("late.cf-create").exists(), "an empty file waits");
    let out = server.cli(&["--output", "json", "status", "late"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "not_running", "{v}");
    std::fs::write(mine.join("late.cf-create"), "nodes = 2\n").unwrap();
    wait_for("late.cf-created", || mine.join("late.cf-created").exists());
    let status = read(&mine.join("late.cf-created"));
    assert_eq!(status["addresses"].as_array().unwrap().len(), 2, "{status}");
    let events = server.cli(&["--output", "json", "events", "late"]);
    let kinds: Vec<String> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .filter(|k| k != "cluster.nodes")
        .collect();
    assert_eq!(kinds, ["cluster.deployed"], "deployed once, at 2 nodes");
}
