//! The HTTP listener: hyper's HTTP/1 connections under limits that idle or
//! slow clients cannot get round. A connection must send a request's
//! headers within `header_read_timeout`, counted from when the connection
//! opens or its last response went out, so an idle keep-alive connection
//! is closed after that long too; at most `max_connections` are open at
//! once, and past that new ones wait in the kernel's queue rather than
//! take file descriptors the engine needs (a cloud call, a node probe and
//! the database each use one). At shutdown the listener stops accepting,
//! connections finish their requests and close, and any still open after
//! `drain` are dropped.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::Service;

/// `[http]` as the server uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// How long shutdown waits for open connections.
    pub drain: Duration,
}

/// Descriptors left for everything but client connections: the store's
/// pool, cloud and probe connections, node records, logs.
pub const RESERVED_FDS: u64 = 256;

/// Raises the soft limit on open files to the hard one and returns it.
pub fn raise_fd_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// What `max_connections` is unless configured: half of the descriptors
/// this process may open, the rest left for the engine; at most 10,000.
pub fn default_max_connections(fd_limit: u64) -> usize {
    (fd_limit / 2).clamp(16, 10_000) as usize
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut make = app.into_make_service_with_connect_info::<SocketAddr>();
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    let mut full_since: Option<Instant> = None;
    let mut accept_errors = ErrorLog::default();
    loop {
        if permits.available_permits() == 0 && full_since.is_none() {
            tracing::warn!(
                max_connections = limits.max_connections,
                "at the connection limit: new connections wait until one closes ([http] max_connections)"
            );
            full_since = Some(Instant::now());
        }
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        if let Some(since) = full_since.take() {
            tracing::info!(waited = ?since.elapsed(), "below the connection limit again");
        }
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_errors.log(&e);
                    if flotilla_cloud::is_local_failure(&e) {
                        // Out of descriptors or memory: nothing frees up by
                        // retrying at once.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = make
            .call(peer)
            .await
            .unwrap_or_else(|never: Infallible| match never {});
        let connection = graceful.watch(
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)),
        );
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection closed");
            }
            drop(permit);
        });
        // Reap the finished, so the set holds only open connections.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let open = graceful.count();
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain) => {
            tracing::warn!(open, drain = ?limits.drain, "connections still open at shutdown; closing them");
        }
    }
    connections.abort_all();
}

/// Logs accept failures at most once a second, with how many there were.
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    since_last: u64,
}

impl ErrorLog {
    fn log(&mut self, e: &io::Error) {
        self.since_last += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!(error = %e, failures = self.since_last, "accepting a connection failed");
        self.last = Some(Instant::now());
        self.since_last = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_half_the_descriptors() {
        assert_eq!(default_max_connections(1024), 512);
        assert_eq!(default_max_connections(20), 16);
        assert_eq!(default_max_connections(1 << 20), 10_000);
    }
}
