//! The command line's credentials end to end, on the real binary: `login`
//! and its kept login, the order in which credentials are found, `.netrc`
//! and its permissions, refresh across a wait longer than a token lives,
//! account management, and exit status 3 for every refusal.

mod support;

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;
use support::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn whoami(server: &Server, env: &[(&str, &str)]) -> Value {
    let out = server.cli_with(env, &["--output", "json", "whoami"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn cache_file(server: &Server) -> std::path::PathBuf {
    server.home.join(".config/flotilla/tokens.json")
}

fn login_admin(server: &Server) {
    let out = server.cli_input(
        &[],
        &["login", "--username", "admin"],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn login_keeps_a_private_login_and_logout_revokes_it() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());

    let out = server.cli_input(
        &[],
        &["login", "--username", "admin"],
        "wrong-password-here\n",
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("invalid_credentials"),
        "{}",
        stderr(&out)
    );
    assert!(
        !cache_file(&server).exists(),
        "a failed login keeps nothing"
    );

    login_admin(&server);
    let cache = cache_file(&server);
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the kept login is private");
    let kept = std::fs::read_to_string(&cache).unwrap();
    assert!(!kept.contains(ADMIN_PASSWORD), "the password is never kept");

    // Later commands use the kept login with nothing in the environment,
    // and leave it as it is while it is fresh.
    let written = std::fs::metadata(&cache).unwrap().modified().unwrap();
    assert_eq!(whoami(&server, &[])["username"], "admin");
    assert_eq!(std::fs::read_to_string(&cache).unwrap(), kept);
    assert_eq!(
        std::fs::metadata(&cache).unwrap().modified().unwrap(),
        written
    );
    let out = server.cli_with(&[], &["deploy", "mine", "--nodes", "1", "--ttl", "1h"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let out = server.cli_with(&[], &["logout"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(whoami(&server, &[])["level"], "anonymous");

    // The revoked refresh token is refused by the server too.
    let login: Value = serde_json::from_str(&kept).unwrap();
    let refresh = login[&server.url]["refresh_token"].as_str().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/api/v1/auth/refresh", server.url))
            .json(&serde_json::json!({ "refresh_token": refresh }))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 401);
    assert_eq!(code(&server.cli(&["destroy", "mine", "--wait"])), 0);
}

#[test]
fn every_refusal_exits_3_and_says_what_to_do() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());

    let out = server.cli_with(&[], &["deploy", "demo", "--nodes", "1", "--ttl", "1h"]);
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).contains("flotilla login"), "{}", stderr(&out));

    let out = server.cli_with(&[("FLOTILLA_TOKEN", "not-a-token")], &["status", "demo"]);
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).contains("token_malformed"), "{}", stderr(&out));

    let out = server.cli_with(
        &[
            ("FLOTILLA_USERNAME", "admin"),
            ("FLOTILLA_PASSWORD", "not-the-password"),
        ],
        &["status"],
    );
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("FLOTILLA_USERNAME"),
        "says where the credentials came from: {}",
        stderr(&out)
    );

    let out = server.cli_with(&[("FLOTILLA_USERNAME", "admin")], &["status"]);
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("FLOTILLA_PASSWORD"),
        "{}",
        stderr(&out)
    );

    // Allowed in, but not to this: 403 is exit 3 as well.
    server.add_user("olga", "org_member", "olga-password-123");
    let olga = [
        ("FLOTILLA_USERNAME", "olga"),
        ("FLOTILLA_PASSWORD", "olga-password-123"),
    ];
    let out = server.cli_with(
        &olga,
        &["deploy", "someone-else", "--nodes", "1", "--ttl", "1h"],
    );
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("cluster_not_allowed"),
        "{}",
        stderr(&out)
    );
    let out = server.cli_with(
        &olga,
        &["deploy", "olga", "--nodes", "1", "--ttl", "1h", "--public"],
    );
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("public_cluster_needs_admin"),
        "{}",
        stderr(&out)
    );
    let out = server.cli_with(&olga, &["user", "list"]);
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).contains("admin_only"), "{}", stderr(&out));
}

#[test]
fn credentials_are_found_in_their_documented_order() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());
    server.add_user("bob", "org_member", "bob-password-1234");
    server.add_user("nina", "org_member", "nina-password-123");
    let bob = [
        ("FLOTILLA_USERNAME", "bob"),
        ("FLOTILLA_PASSWORD", "bob-password-1234"),
    ];

    // ~/.netrc, for the server's host.
    let netrc = server.home.join(".netrc");
    std::fs::write(
        &netrc,
        "machine 127.0.0.1\n  login nina\n  password nina-password-123\n",
    )
    .unwrap();
    std::fs::set_permissions(&netrc, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(whoami(&server, &[])["username"], "nina");

    // The environment comes before ~/.netrc.
    assert_eq!(whoami(&server, &bob)["username"], "bob");

    // FLOTILLA_TOKEN before a username and password.
    let out = server.cli_with(&bob, &["--output", "json", "token", "bob"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = server.cli_input(
        &[],
        &["login", "--username", "admin"],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert_eq!(code(&out), 0);
    // (Read the admin's own access token from the kept login, then forget it.)
    let kept: Value =
        serde_json::from_str(&std::fs::read_to_string(cache_file(&server)).unwrap()).unwrap();
    let admin_token = kept[&server.url]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(code(&server.cli_with(&[], &["logout"])), 0);
    let mut with_token = bob.to_vec();
    with_token.push(("FLOTILLA_TOKEN", &admin_token));
    assert_eq!(whoami(&server, &with_token)["username"], "admin");

    // A kept login beats ~/.netrc, but what is given for the command beats
    // the kept login.
    let out = server.cli_input(&[], &["login", "--username", "bob"], "bob-password-1234\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(whoami(&server, &[])["username"], "bob");
    assert_eq!(whoami(&server, &with_token)["username"], "admin");
    let nina = [
        ("FLOTILLA_USERNAME", "nina"),
        ("FLOTILLA_PASSWORD", "nina-password-123"),
    ];
    assert_eq!(whoami(&server, &nina)["username"], "nina");
    // whoami says where its credentials came from.
    let out = server.cli_with(&[], &["whoami"]);
    assert!(
        stdout(&out).contains("credentials: the login kept by `flotilla login` in "),
        "{}",
        stdout(&out)
    );
    let out = server.cli_with(&nina, &["whoami"]);
    assert!(
        stdout(&out).contains("credentials: FLOTILLA_USERNAME and FLOTILLA_PASSWORD"),
        "{}",
        stdout(&out)
    );
    // The kept login is found however the server is spelled.
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    for url in [
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{port}/"),
    ] {
        let out = server
            .cli_command_at(&url, &[], &["--output", "json", "whoami"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{url}: {}", stderr(&out));
        let who: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(who["username"], "bob", "{url}");
    }
    assert_eq!(code(&server.cli_with(&[], &["logout"])), 0);

    // A .netrc others can read is refused, with the fix, rather than used.
    std::fs::set_permissions(&netrc, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = server.cli_with(&[], &["whoami"]);
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
}

/// Access tokens live 2 s here and the deploy waits about 4 s for nodes to
/// boot: the wait must succeed, and the next command must refresh the kept
/// login instead of failing on the expired token.
#[test]
fn a_wait_longer_than_a_token_lives_never_fails_on_expiry() {
    let sandbox = Sandbox::new();
    let config = r#"
[limits]
min_ttl = "1s"
max_wait = "60s"
resync_interval = "1s"

[auth]
access_token_ttl = "2s"

[drivers.sim]
type = "fake"
[drivers.sim.faults]
boot_delay = "4s"

[pools.default]
driver = "sim"
instance_type = "fake.small"
"#;
    let server = Server::start_with(&sandbox.path(), config);
    login_admin(&server);
    let before: Value =
        serde_json::from_str(&std::fs::read_to_string(cache_file(&server)).unwrap()).unwrap();

    let started = std::time::Instant::now();
    let out = server.cli_with(
        &[],
        &["deploy", "slow", "--nodes", "2", "--ttl", "1h", "--wait"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3),
        "the wait outlived the token"
    );

    let out = server.cli_with(&[], &["--output", "json", "status", "slow"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let status: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(status["state"], "running");

    let after: Value =
        serde_json::from_str(&std::fs::read_to_string(cache_file(&server)).unwrap()).unwrap();
    assert_ne!(
        before[&server.url]["access_token"], after[&server.url]["access_token"],
        "the kept login was refreshed"
    );
    assert_ne!(
        before[&server.url]["refresh_token"], after[&server.url]["refresh_token"],
        "and its refresh token rotated"
    );
}

#[test]
fn admins_manage_accounts_from_the_command_line() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());
    server.add_user("carol", "github_member", "carol-password-12");

    let out = server.cli(&["--output", "json", "user", "list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let names: Vec<&str> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "carol"]);
    assert!(!stdout(&out).contains("hash") && !stdout(&out).contains("password"));

    let carol = [
        ("FLOTILLA_USERNAME", "carol"),
        ("FLOTILLA_PASSWORD", "carol-password-12"),
    ];
    let out = server.cli_with(&carol, &["deploy", "carol", "--nodes", "1", "--ttl", "1h"]);
    assert_eq!(code(&out), 3, "a github member may not deploy");
    assert!(
        stderr(&out).contains("level_may_not_deploy"),
        "{}",
        stderr(&out)
    );

    assert_eq!(
        code(&server.cli(&["user", "set-level", "carol", "org_member"])),
        0
    );
    assert_eq!(
        code(&server.cli(&["user", "set-grants", "carol", "shared"])),
        0
    );
    let who = whoami(&server, &carol);
    assert_eq!(who["level"], "org_member");
    assert_eq!(who["clusters"], serde_json::json!(["carol", "shared"]));
    let out = server.cli_with(
        &carol,
        &["deploy", "shared", "--nodes", "1", "--ttl", "1h", "--wait"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        code(&server.cli_with(&carol, &["destroy", "shared", "--wait"])),
        0
    );

    let out = server.cli_input(
        &[
            ("FLOTILLA_USERNAME", "admin"),
            ("FLOTILLA_PASSWORD", ADMIN_PASSWORD),
        ],
        &["user", "add", "carol", "--level", "org_member"],
        "another-password-1\n",
    );
    assert_eq!(code(&out), 1, "a taken name is a failed request");
    assert!(stderr(&out).contains("user_exists"), "{}", stderr(&out));
    let out = server.cli_input(
        &[
            ("FLOTILLA_USERNAME", "admin"),
            ("FLOTILLA_PASSWORD", ADMIN_PASSWORD),
        ],
        &["user", "add", "dave", "--level", "org_member"],
        "short\n",
    );
    assert_eq!(code(&out), 2, "a bad value is a usage error");
    assert!(
        stderr(&out).contains("invalid_password"),
        "{}",
        stderr(&out)
    );

    assert_eq!(code(&server.cli(&["user", "remove", "carol"])), 0);
    let out = server.cli_with(&carol, &["whoami"]);
    assert_eq!(code(&out), 3, "a removed account cannot sign in");
    let out = server.cli(&["user", "remove", "admin"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("last_admin"), "{}", stderr(&out));
}

#[test]
fn admins_rotate_and_retire_signing_keys() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());
    let kids = |server: &Server| -> Vec<String> {
        let out = server.cli(&["key", "list"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let text = stdout(&out);
        let mut lines = text.lines();
        assert!(
            lines.next().unwrap().starts_with("KEY "),
            "a header: {text}"
        );
        lines
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect()
    };
    let first = kids(&server);
    assert_eq!(first.len(), 1);
    let out = server.cli(&["key", "list"]);
    let line = stdout(&out);
    assert!(
        line.contains(" signs ") && line.contains(" ago)"),
        "which key signs, and its age: {line}"
    );

    login_admin(&server);
    let out = server.cli_with(&[], &["--output", "json", "key", "rotate"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let second: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let second = second["kid"].as_str().unwrap().to_owned();
    assert_eq!(kids(&server).len(), 2);
    let out = server.cli(&["--output", "json", "key", "list"]);
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let signing: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["signs"] == true)
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(signing, [second.as_str()], "the new key signs");
    // The kept login's token was signed by the first key and still works.
    assert_eq!(whoami(&server, &[])["username"], "admin");

    let out = server.cli(&["key", "retire", &second]);
    assert_eq!(code(&out), 1, "the signing key cannot be retired");
    assert!(stderr(&out).contains("key_is_active"), "{}", stderr(&out));
    let out = server.cli(&["key", "retire", &first[0]]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(kids(&server), std::slice::from_ref(&second));
    // Tokens of a retired key are refused; the command line refreshes its
    // kept login and goes on, so retiring never locks the admin out.
    let kept = std::fs::read_to_string(cache_file(&server)).unwrap();
    let kept: Value = serde_json::from_str(&kept).unwrap();
    let old_token = kept[&server.url]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = server.cli_with(&[("FLOTILLA_TOKEN", &old_token)], &["whoami"]);
    assert_eq!(code(&out), 3, "tokens of a retired key are refused");
    assert!(
        stderr(&out).contains("token_unknown_key"),
        "{}",
        stderr(&out)
    );
    assert_eq!(whoami(&server, &[])["username"], "admin", "refreshed");
    let kept = std::fs::read_to_string(cache_file(&server)).unwrap();
    let kept: Value = serde_json::from_str(&kept).unwrap();
    assert_ne!(kept[&server.url]["access_token"], old_token.as_str());

    // Keys persist: a restarted server signs with the same key.
    server.kill();
    let server = Server::start(&sandbox.path());
    assert_eq!(kids(&server), [second]);
}

/// With no credentials the command line goes anonymous, and says so rather
/// than answering as if there were nothing to see.
#[test]
fn going_anonymous_is_never_silent() {
    let sandbox = Sandbox::new();
    let server = Server::start(&sandbox.path());
    let out = server.cli(&["deploy", "private", "--nodes", "1", "--ttl", "10m"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = server.cli_with(&[], &["status"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("not signed in") && stdout(&out).contains("flotilla login"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("private"), "{}", stdout(&out));
    let out = server.cli_with(&[], &["whoami"]);
    assert!(
        stdout(&out).contains("credentials: none: not signed in"),
        "{}",
        stdout(&out)
    );
}
