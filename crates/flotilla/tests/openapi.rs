//! The OpenAPI document tells the truth: schemathesis (pinned, installed
//! into `target/schemathesis-venv` on first use) generates requests from
//! the document the real server serves, with every check it has (statuses
//! documented, responses matching their schemas, valid data accepted,
//! invalid data refused, authentication required where the document says
//! so), and finds nothing. Never skipped: if schemathesis cannot be
//! installed (PyPI unreachable, no python3 venv module) the test fails and
//! says why.

mod support;
#[path = "../../driver-ec2/tests/support/venv.rs"]
mod venv;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::*;

const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// Rates high enough that the fuzzer is never throttled, prices so that
/// organisations cost money, nodes that are not processes.
const CONFIG: &str = r#"
[limits]
min_ttl = "1s"
max_wait = "2s"

[auth]
login_failures = 100000

[levels.anonymous]
requests_per_minute = 100000
[levels.github_member]
requests_per_minute = 100000
[levels.org_member]
requests_per_minute = 100000
[levels.admin]
requests_per_minute = 100000

# The fake cloud: the fuzzer's commands on nodes (exec) run nowhere.
[drivers.cloud]
type = "fake"

[pools.default]
driver = "cloud"
instance_type = "fake.small"
price_per_hour = "0.10"
"#;

/// What no document can say: creating an organisation names owners that
/// must be existing accounts.
const SCHEMATHESIS_CONFIG: &str = r#"
[[operations]]
include-path = "/api/v1/orgs"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]
"#;

/// The `st` command, installed if needed.
fn schemathesis() -> PathBuf {
    venv::installed(
        "schemathesis",
        &format!("schemathesis=={SCHEMATHESIS_VERSION}"),
        &["st", "--version"],
    )
    .join("bin/st")
}

fn admin_token(server: &Server) -> String {
    use std::io::{Read, Write};
    let body = format!(r#"{{"username":"admin","password":"{ADMIN_PASSWORD}"}}"#);
    let mut stream =
        std::net::TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    write!(
        stream,
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let json = answer.split("\r\n\r\n").nth(1).expect("a body");
    let tokens: serde_json::Value = serde_json::from_str(json).expect("tokens");
    tokens["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

/// Runs schemathesis with every check against `server`, over the
/// operations `filter` selects, and fails with its report unless it found
/// nothing.
fn fuzz(st: &Path, dir: &Path, server: &Server, filter: &[&str]) {
    // One worker: schemathesis 4.32 on Python 3.11 can fail with a
    // "recursion depth mismatch" of its own when workers parse at once. Such
    // an error of the tool (an error, not a failure it found) is run again
    // once.
    for attempt in 1..=2 {
        let token = admin_token(server);
        let out = Command::new(st)
            .current_dir(dir)
            .args(["run", &format!("{}/api/v1/openapi.json", server.url)])
            .args(["--checks", "all", "--max-examples", "25", "--workers", "1"])
            .args(["--seed", "20261206", "--no-color"])
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .args(filter)
            .stdin(Stdio::null())
            .output()
            .expect("run schemathesis");
        let report = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            assert!(report.contains("passed"), "{report}");
            return;
        }
        let tool_error = report.contains("Runtime Error") && !report.contains("Failures:");
        assert!(
            tool_error && attempt == 1,
            "schemathesis found gaps between the document and the answers ({}):\n{report}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("schemathesis failed on its own; running it again:\n{report}");
    }
}

#[test]
fn schemathesis_finds_nothing_the_document_does_not_say() {
    let st = schemathesis();
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    std::fs::write(dir.join("schemathesis.toml"), SCHEMATHESIS_CONFIG).unwrap();
    let server = Server::start_with(&dir, CONFIG);
    // Key rotation and retirement on their own: retiring the key that
    // signed the fuzzer's token would leave the rest of the run signed out.
    fuzz(
        &st,
        &dir,
        &server,
        &["--exclude-path-regex", "^/api/v1/auth/keys"],
    );
    fuzz(
        &st,
        &dir,
        &server,
        &["--include-path-regex", "^/api/v1/auth/keys"],
    );
}
