//! Notifications end to end: the real binary, the local driver, a webhook
//! receiver that checks every signature, and a real SMTP server (aiosmtpd
//! from PyPI, installed under target/ as moto is) writing what it
//! receives to a maildir.

mod support;
#[path = "../../driver-ec2/tests/support/venv.rs"]
mod venv;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::{code, wait_for, Sandbox, Server, CONFIG};

const ANN: [(&str, &str); 2] = [
    ("FLOTILLA_USERNAME", "ann"),
    ("FLOTILLA_PASSWORD", "ann-password-for-tests"),
];
const BOB: [(&str, &str); 2] = [
    ("FLOTILLA_USERNAME", "bob"),
    ("FLOTILLA_PASSWORD", "bob-password-for-tests"),
];

/// What a receiver got: path, headers that matter, body.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    signature: String,
    delivery: String,
    event: String,
    body: Value,
    raw: Vec<u8>,
}

/// A webhook receiver on its own runtime: `/ok/NAME` answers 204, `/broken`
/// 500.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Receiver {
        use axum::http::{HeaderMap, StatusCode, Uri};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let kept = got.clone();
        let app = axum::Router::new().fallback(
            move |uri: Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    kept.lock().unwrap().push(Received {
                        path: uri.path().to_owned(),
                        signature: header("flotilla-signature"),
                        delivery: header("flotilla-delivery"),
                        event: header("flotilla-event"),
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        raw: body.to_vec(),
                    });
                    if uri.path() == "/broken" {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            },
        );
        runtime.spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url,
            got,
            _runtime: runtime,
        }
    }

    fn at(&self, path: &str) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

fn json(out: &std::process::Output) -> Value {
    assert_eq!(
        code(out),
        0,
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn webhooks_are_signed_seen_only_by_who_may_and_a_failing_one_is_disabled() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let receiver = Receiver::start();
    let config = format!(
        "{CONFIG}\n[notify]\nretry_base = \"100ms\"\nmax_attempts = 2\ndisable_after = 2\n"
    );
    let server = Server::start_with(&dir, &config);
    server.add_user("ann", "org_member", ANN[1].1);
    server.add_user("bob", "org_member", BOB[1].1);

    let add = |who: &[(&str, &str)], url: &str, events: &str| {
        json(&server.cli_with(
            who,
            &[
                "--output",
                "json",
                "notify",
                "add",
                "--webhook",
                url,
                "--events",
                events,
            ],
        ))
    };
    let anns = add(&ANN, &format!("{}/ok/ann", receiver.url), "cluster.*");
    let secret = anns["secret"]
        .as_str()
        .expect("the secret, once")
        .to_owned();
    assert_eq!(secret.len(), 64, "{anns}");
    let broken = add(&ANN, &format!("{}/broken", receiver.url), "cluster.*");
    let bobs = add(&BOB, &format!("{}/ok/bob", receiver.url), "*");

    // Bad input is refused with why, and adds nothing.
    for (args, why) in [
        (
            vec![
                "notify",
                "add",
                "--email",
                "ann@example.org",
                "--events",
                "*",
            ],
            "[notify.smtp]",
        ),
        (
            vec![
                "notify",
                "add",
                "--webhook",
                "ftp://x.org/",
                "--events",
                "*",
            ],
            "http:// or https://",
        ),
        (
            vec![
                "notify",
                "add",
                "--webhook",
                "https://x.org/",
                "--events",
                "cluster.exploded",
            ],
            "names no event",
        ),
        (vec!["notify", "remove", "999"], "no subscription 999"),
    ] {
        let out = server.cli_with(&ANN, &args);
        assert_ne!(code(&out), 0, "{args:?}");
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
    }
    // Bob's subscription is not ann's to remove (nor to see).
    let out = server.cli_with(&ANN, &["notify", "remove", &bobs["id"].to_string()]);
    assert!(stderr(&out).contains("no subscription"), "{}", stderr(&out));
    let listed = json(&server.cli_with(&ANN, &["--output", "json", "notify", "list"]));
    assert_eq!(
        listed["subscriptions"].as_array().unwrap().len(),
        2,
        "{listed}"
    );
    assert!(
        listed["subscriptions"][0].get("secret").is_none(),
        "shown once"
    );

    // Ann's cluster: her hook hears of it, signed; Bob's does not.
    assert_eq!(
        code(&server.cli_with(&ANN, &["deploy", "ann", "--nodes", "1", "--ttl", "1h"])),
        0
    );
    wait_for("ann's hook to hear of her cluster", || {
        receiver
            .at("/ok/ann")
            .iter()
            .any(|r| r.event == "cluster.deployed")
    });
    for r in receiver.at("/ok/ann") {
        assert!(
            flotilla_notify::verify(&secret, &r.signature, &r.raw),
            "a valid signature: {r:?}"
        );
        assert!(!flotilla_notify::verify(
            "not-the-secret",
            &r.signature,
            &r.raw
        ));
        assert!(r.delivery.parse::<i64>().is_ok(), "{r:?}");
        assert_eq!(r.body["kind"], r.event.as_str(), "{r:?}");
        assert_eq!(r.body["key"], "ann", "{r:?}");
    }
    let deployed = receiver
        .at("/ok/ann")
        .into_iter()
        .find(|r| r.event == "cluster.deployed")
        .unwrap();
    assert_eq!(deployed.body["details"]["nodes"], 1, "{:?}", deployed.body);

    // The same event of the same cluster goes once within the window:
    // extended twice, told once.
    wait_for("ann's cluster to run", || {
        support::ready_nodes(&server.status("ann")) == 1
    });
    for ttl in ["2h", "3h"] {
        assert_eq!(
            code(&server.cli_with(&ANN, &["extend", "ann", "--ttl", ttl])),
            0
        );
    }
    wait_for("the second extension to be deduplicated", || {
        let d = json(&server.cli_with(&ANN, &["--output", "json", "notify", "deliveries"]));
        d["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["kind"] == "cluster.extended" && d["state"] == "deduplicated")
    });
    wait_for("the first extension to arrive", || {
        receiver
            .at("/ok/ann")
            .iter()
            .any(|r| r.event == "cluster.extended")
    });
    let extended = receiver
        .at("/ok/ann")
        .iter()
        .filter(|r| r.event == "cluster.extended")
        .count();
    assert_eq!(extended, 1, "one cluster.extended within the window");
    // Other news of the nodes is news: made, then ready.
    let ready = receiver
        .at("/ok/ann")
        .iter()
        .any(|r| r.event == "cluster.nodes" && r.body["details"]["ready"] == 1);
    assert!(ready, "{:?}", receiver.at("/ok/ann"));

    // The broken hook: each delivery tried twice, then given up; two in a
    // row disable it, with an event ann reads.
    wait_for("the broken hook to be disabled", || {
        let listed = json(&server.cli_with(&ANN, &["--output", "json", "notify", "list"]));
        listed["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == broken["id"] && s["disabled_at"].is_string())
    });
    let tries = receiver.at("/broken");
    assert!(tries.len() >= 2, "{}", tries.len());
    let firsts: BTreeMap<String, usize> = tries.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.delivery.clone()).or_default() += 1;
        m
    });
    assert!(
        firsts.values().all(|&n| n <= 2),
        "at most 2 tries each: {firsts:?}"
    );
    let text = server.cli_with(&ANN, &["notify", "list"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("DISABLED") && text.contains("notify enable"),
        "{text}"
    );
    let events = server.cli_with(&ANN, &["events"]);
    let events = String::from_utf8_lossy(&events.stdout).into_owned();
    assert!(events.contains("notification.disabled"), "{events}");
    let failed = json(&server.cli_with(&ANN, &["--output", "json", "notify", "deliveries"]));
    assert!(
        failed["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["state"] == "failed"
                && d["last_error"].as_str().unwrap_or_default().contains("500")),
        "{failed}"
    );

    // Nothing of ann's private cluster reached bob's hook; a test does.
    assert!(
        receiver
            .at("/ok/bob")
            .iter()
            .all(|r| r.body["key"] != "ann"),
        "{:?}",
        receiver.at("/ok/bob")
    );
    let out = server.cli_with(&BOB, &["notify", "test", &bobs["id"].to_string()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    wait_for("bob's test", || {
        receiver
            .at("/ok/bob")
            .iter()
            .any(|r| r.event == "notification.test")
    });

    // Enabled again, and removed.
    let id = broken["id"].to_string();
    assert_eq!(code(&server.cli_with(&ANN, &["notify", "enable", &id])), 0);
    assert_eq!(code(&server.cli_with(&ANN, &["notify", "remove", &id])), 0);
    let listed = json(&server.cli_with(&ANN, &["--output", "json", "notify", "list"]));
    assert_eq!(listed["subscriptions"].as_array().unwrap().len(), 1);
}

/// aiosmtpd, writing each mail it takes to `maildir/new/`.
struct Smtp {
    child: Child,
    port: u16,
}

impl Smtp {
    fn start(maildir: &Path) -> Smtp {
        let venv = venv::installed(
            "aiosmtpd",
            "aiosmtpd==1.4.6",
            &["python", "-c", "import aiosmtpd.handlers"],
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(venv.join("bin/python"))
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd");
        wait_for("the SMTP server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Smtp { child, port }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mails in `maildir`: (To, Subject, body).
fn mails(maildir: &Path) -> Vec<(String, String, String)> {
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    let mut mails: Vec<(std::time::SystemTime, (String, String, String))> = entries
        .flatten()
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap();
            let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            let at = e.metadata().unwrap().modified().unwrap();
            (at, (header("To"), header("Subject"), body.to_owned()))
        })
        .collect();
    mails.sort_by_key(|(at, _)| *at);
    mails.into_iter().map(|(_, m)| m).collect()
}

#[test]
fn mail_goes_through_the_relay_to_the_admin_and_subscribers_bursts_as_one_digest() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let maildir = dir.join("mail");
    let smtp = Smtp::start(&maildir);
    let config = format!(
        "{CONFIG}\n[notify]\nadmin_email = \"ops@example.org\"\ndigest_window = \"10s\"\n\n\
         [notify.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
         from = \"flotilla <flotilla@example.org>\"\n",
        smtp.port
    );
    let server = Server::start_with(&dir, &config);

    // Seed 003: the admin hears of every cluster made.
    assert_eq!(
        code(&server.cli(&["deploy", "one", "--nodes", "1", "--ttl", "1h"])),
        0
    );
    wait_for("the admin's mail", || !mails(&maildir).is_empty());
    let first = mails(&maildir);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].0, "ops@example.org");
    assert_eq!(first[0].1, "flotilla: cluster.deployed one");
    assert!(
        first[0].2.contains("cluster.deployed  one: nodes 1"),
        "{}",
        first[0].2
    );

    // Two more within the digest window: one mail says both.
    for name in ["two", "three"] {
        assert_eq!(
            code(&server.cli(&["deploy", name, "--nodes", "1", "--ttl", "1h"])),
            0
        );
    }
    wait_for("the digest", || mails(&maildir).len() >= 2);
    let all = mails(&maildir);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[1].1, "flotilla: 2 events", "{all:?}");
    assert!(
        all[1].2.contains("cluster.deployed  two") && all[1].2.contains("cluster.deployed  three"),
        "{}",
        all[1].2
    );

    // An account's own mail subscription, tested.
    server.add_user("ann", "org_member", ANN[1].1);
    let added = json(&server.cli_with(
        &ANN,
        &[
            "--output",
            "json",
            "notify",
            "add",
            "--email",
            "ann@example.org",
            "--events",
            "cluster.*",
        ],
    ));
    assert!(added.get("secret").is_none(), "{added}");
    let id = added["id"].to_string();
    assert_eq!(code(&server.cli_with(&ANN, &["notify", "test", &id])), 0);
    wait_for("ann's test mail", || {
        mails(&maildir).iter().any(|m| m.0 == "ann@example.org")
    });
    let test = mails(&maildir)
        .into_iter()
        .find(|m| m.0 == "ann@example.org")
        .unwrap();
    assert_eq!(test.1, format!("flotilla: notification.test {id}"));
    let delivered = json(&server.cli_with(&ANN, &["--output", "json", "notify", "deliveries"]));
    assert_eq!(
        delivered["deliveries"][0]["state"], "delivered",
        "{delivered}"
    );
    // The admin sees every delivery, its own mail's too.
    let everyone = json(&server.cli(&["--output", "json", "notify", "deliveries", "--all"]));
    assert!(
        everyone["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["subscription"] == 0 && d["state"] == "delivered"),
        "{everyone}"
    );
}

/// Whether the server at `url` says it leads (`flotilla_leading` in
/// `/metrics`).
fn leads(url: &str) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = runtime.block_on(async {
        match reqwest::get(format!("{url}/metrics")).await {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    });
    text.lines().any(|l| l.trim() == "flotilla_leading 1")
}

/// Two servers on one PostgreSQL: the leader's notifier sends each
/// deployed cluster's event once; SIGKILLed, the other takes over from
/// the stored cursor, losing and repeating nothing.
#[test]
fn a_new_leader_sends_what_follows_once_and_repeats_nothing() {
    let pg = flotilla_store_postgres::testing::TempPostgres::start().expect("start PostgreSQL");
    let url = support::database(&pg);
    let env = [("FLOTILLA_DATABASE_URL", url.as_str())];
    let receiver = Receiver::start();
    let config = format!(
        "{}\n[notify]\ndedup_window = \"0s\"\n",
        support::fake_config("")
    );
    let (first, second) = (Sandbox::new(), Sandbox::new());
    let a = Server::start_with_env(&first.path(), &config, &env);
    let b = Server::start_with_env(&second.path(), &config, &env);
    wait_for("one of them to lead", || leads(&a.url) || leads(&b.url));
    let (leader, follower) = if leads(&a.url) { (a, b) } else { (b, a) };
    json(&follower.cli(&[
        "--output",
        "json",
        "notify",
        "add",
        "--webhook",
        &format!("{}/ok/admin", receiver.url),
        "--events",
        "cluster.deployed",
    ]));
    let deploy = |server: &Server, name: &str| {
        let out = server.cli(&["deploy", name, "--nodes", "1", "--ttl", "1h"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    };
    let told = |name: &str| {
        receiver
            .at("/ok/admin")
            .iter()
            .filter(|r| r.body["key"] == name)
            .count()
    };
    for i in 0..5 {
        deploy(&follower, &format!("before-{i}"));
    }
    wait_for("the leader to send the first five", || {
        (0..5).all(|i| told(&format!("before-{i}")) == 1)
    });
    // Recorded as sent before the leader dies (the rest is at least once).
    wait_for("the deliveries recorded", || {
        let d = json(&follower.cli(&["--output", "json", "notify", "deliveries"]));
        d["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["state"] == "delivered")
            .count()
            == 5
    });
    leader.kill();
    for i in 0..5 {
        deploy(&follower, &format!("after-{i}"));
    }
    wait_for("the new leader to send the next five", || {
        (0..5).all(|i| told(&format!("after-{i}")) == 1)
    });
    // A little longer: nothing comes twice.
    std::thread::sleep(std::time::Duration::from_secs(2));
    for name in (0..5).flat_map(|i| [format!("before-{i}"), format!("after-{i}")]) {
        assert_eq!(told(&name), 1, "{name}");
    }
    assert!(leads(&follower.url));
}
