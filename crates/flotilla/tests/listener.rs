//! The HTTP listener against idle and slow clients, through the real
//! binary: connections that send nothing, or trickle their headers, or sit
//! idle after a response, are closed after `[http] header_read_timeout`;
//! at most `max_connections` are open at once, the rest wait; the server
//! raises its open-file limit at start and says what it is.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const CONFIG: &str = r#"
[limits]
min_ttl = "1s"

[http]
header_read_timeout = "1s"
max_connections = 20

[drivers.local]
type = "local"
grace = "2s"

[pools.default]
driver = "local"
instance_type = "local.small"
"#;

fn addr(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

/// Whether the server closed `stream` (a read ends, or fails, within
/// `limit`; anything it sent first is skipped).
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// The log without its colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn healthz(server: &Server) -> bool {
    let mut s = TcpStream::connect(addr(server)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

#[test]
fn idle_and_slow_connections_are_closed_and_capped() {
    let sandbox = Sandbox::new();
    let server = Server::start_with(&sandbox.path(), CONFIG);

    // More silent connections than the cap: the first 20 are served (and
    // closed after a second of silence), the others wait their turn.
    let mut idle: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(addr(&server)).unwrap())
        .collect();
    // A slow client that trickles a header byte at a time.
    let mut slow = TcpStream::connect(addr(&server)).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        .unwrap();
    let trickle = {
        let mut slow = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(250));
                if slow.write_all(b"a").is_err() {
                    return true;
                }
            }
            false
        })
    };
    let started = Instant::now();
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(30)),
            "silent connection {i} still open after {:?}",
            started.elapsed()
        );
    }
    assert!(
        closed_within(&mut slow, Duration::from_secs(10)),
        "a client trickling its headers is cut off"
    );
    assert!(trickle.join().unwrap(), "the server stopped reading it");
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("at the connection limit"), "{log}");

    // Served as usual afterwards; a keep-alive connection left idle after
    // its response is closed too.
    assert!(healthz(&server));
    let mut kept = TcpStream::connect(addr(&server)).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = kept.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(10)),
        "an idle keep-alive connection is closed"
    );
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit_at_start() {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let low = 256.min(hard);
    // The server inherits the lowered soft limit.
    rlimit::setrlimit(rlimit::Resource::NOFILE, low, hard).unwrap();
    let sandbox = Sandbox::new();
    let server = Server::start_with(&sandbox.path(), CONFIG);
    rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard).unwrap();
    let log = plain(&std::fs::read_to_string(&server.log).unwrap());
    let line = log
        .lines()
        .find(|l| l.contains("HTTP limits"))
        .unwrap_or_else(|| panic!("no HTTP limits line:\n{log}"));
    assert!(line.contains(&format!("open_file_limit={hard}")), "{line}");
    assert!(line.contains("max_connections=20"), "{line}");
    assert!(healthz(&server));
}
