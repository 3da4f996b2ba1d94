//! The health probe: one HTTP/1.0 `GET /healthz` over a plain TCP stream.
//! A whole HTTP client would be more code to trust than this.

use std::time::Duration;

use flotilla_cloud::Health;
use flotilla_domain::InstanceId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Header by which the agent says which node it is: a port freed by a dead
/// node and reused by another one must not make the dead node look ready.
pub const NODE_HEADER: &str = "x-flotilla-node";

pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most bytes of a response read; the status line and headers fit easily.
const MAX_RESPONSE: usize = 8 * 1024;

pub async fn probe(address: &str, id: &InstanceId) -> Health {
    match tokio::time::timeout(PROBE_TIMEOUT, get_healthz(address)).await {
        Ok(Ok(head)) if is_ready(&head, id) => Health::Ready,
        Ok(Ok(head)) => {
            tracing::debug!(instance = %id, %address, response = %head.lines().next().unwrap_or(""), "node not ready");
            Health::NotReady
        }
        Ok(Err(e)) => {
            tracing::debug!(instance = %id, %address, error = %e, "probe failed");
            Health::of_failure(&e)
        }
        Err(_) => {
            tracing::debug!(instance = %id, %address, "probe timed out");
            Health::NotReady
        }
    }
}

/// Returns the response's status line and headers.
async fn get_healthz(address: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address).await?;
    stream
        .write_all(format!("GET /healthz HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        buf.extend_from_slice(&chunk[..n]);
        if n == 0 || buf.len() >= MAX_RESPONSE || buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text.split("\r\n\r\n").next().unwrap_or_default().to_owned())
}

fn is_ready(head: &str, id: &InstanceId) -> bool {
    let mut lines = head.lines();
    let ok = lines
        .next()
        .and_then(|status| status.split_whitespace().nth(1))
        .is_some_and(|code| code == "200");
    let ours = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case(NODE_HEADER) && value.trim() == id.as_str()
        })
    });
    ok && ours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_200_from_the_right_node() {
        let id = InstanceId::new("local-1");
        assert!(is_ready("HTTP/1.0 200 OK\r\nX-Flotilla-Node: local-1", &id));
        assert!(!is_ready(
            "HTTP/1.0 200 OK\r\nx-flotilla-node: local-2",
            &id
        ));
        assert!(!is_ready("HTTP/1.0 200 OK", &id));
        assert!(!is_ready(
            "HTTP/1.0 503 Service Unavailable\r\nx-flotilla-node: local-1",
            &id
        ));
        assert!(!is_ready("", &id));
    }

    #[tokio::test]
    async fn nothing_listening_is_not_ready() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        assert_eq!(
            probe(&address, &InstanceId::new("local-1")).await,
            Health::NotReady
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let started = std::time::Instant::now();
        assert_eq!(
            probe(&address, &InstanceId::new("local-1")).await,
            Health::NotReady
        );
        assert!(started.elapsed() < PROBE_TIMEOUT * 3);
        drop(listener);
    }
}
