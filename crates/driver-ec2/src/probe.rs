//! The configured health check: one HTTP/1.0 GET over a plain TCP stream,
//! ready on any 2xx. A whole HTTP client would be more code to trust.

use std::time::Duration;

use flotilla_cloud::Health;
use flotilla_domain::InstanceId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::HealthCheck;

/// Time allowed for connecting, asking and reading the status line.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes read: the status line fits easily.
const MAX_RESPONSE: usize = 4 * 1024;

pub async fn check(address: &str, check: &HealthCheck, id: &InstanceId) -> Health {
    let target = host_port(address, check.port);
    match tokio::time::timeout(CHECK_TIMEOUT, status_of(&target, &check.path)).await {
        Ok(Ok(status)) if (200..300).contains(&status) => Health::Ready,
        Ok(Ok(status)) => {
            tracing::debug!(instance = %id, %target, status, "health check answered, not ready");
            Health::NotReady
        }
        Ok(Err(e)) => {
            tracing::debug!(instance = %id, %target, error = %e, "health check failed");
            Health::of_failure(&e)
        }
        Err(_) => {
            tracing::debug!(instance = %id, %target, "health check timed out");
            Health::NotReady
        }
    }
}

/// `address:port`, bracketing an IPv6 address.
fn host_port(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

async fn status_of(target: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(target).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {target}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        buf.extend_from_slice(&chunk[..n]);
        if n == 0 || buf.len() >= MAX_RESPONSE || buf.contains(&b'\n') {
            break;
        }
    }
    parse_status(&String::from_utf8_lossy(&buf)).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the answer is not an HTTP response",
        )
    })
}

fn parse_status(response: &str) -> Option<u16> {
    let line = response.lines().next()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(parse_status("HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status("SSH-2.0-OpenSSH_9.6\r\n"), None);
        assert_eq!(parse_status("RTSP/1.0 200 OK\r\n"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(host_port("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(host_port("fd00::1", 80), "[fd00::1]:80");
    }
}
