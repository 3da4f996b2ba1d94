//! Password hashing within a memory budget, through the real binary: a
//! burst of failed logins (each an argon2 verification of 19 MiB) leaves
//! the server about as large as it was, since at most
//! `[auth] max_concurrent_hashes` run at once, each in memory kept for the
//! next.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use support::*;

const CONFIG: &str = r#"
[auth]
login_failures = 1000
max_concurrent_hashes = 2

[levels.anonymous]
requests_per_minute = 1000

[drivers.local]
type = "local"

[pools.default]
driver = "local"
instance_type = "local.small"
"#;

/// Resident memory of `pid`, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib / 1024
}

fn failed_login(addr: &str, user: usize) -> String {
    let body = format!(r#"{{"username":"nobody{user}","password":"not the password at all"}}"#);
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn a_burst_of_failed_logins_stays_within_the_hashing_budget() {
    let sandbox = Sandbox::new();
    let server = Server::start_with(&sandbox.path(), CONFIG);
    let addr = server.url.trim_start_matches("http://").to_owned();
    let pid = server.child.id();
    // One login first, so the dummy hash and the first memory exist.
    assert!(failed_login(&addr, 0).contains("401"));
    let before = rss_mib(pid);
    for round in 0..3 {
        let threads: Vec<_> = (0..32)
            .map(|i| {
                let addr = addr.clone();
                std::thread::spawn(move || failed_login(&addr, round * 100 + i))
            })
            .collect();
        for t in threads {
            let status = t.join().unwrap();
            assert!(status.contains("401"), "{status}");
        }
    }
    let after = rss_mib(pid);
    eprintln!("resident {before} MiB before, {after} MiB after");
    // Two hashers of 19 MiB each, and room for the threads that ran them;
    // without the bound this grew by hundreds of MiB.
    assert!(
        after < before + 100,
        "grew from {before} MiB to {after} MiB over 96 failed logins"
    );
}
