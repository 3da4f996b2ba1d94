//! Scheduled deletions. Deadlines live in the store, so they survive
//! restarts; this loop sleeps until the earliest one and fires it, and a
//! deadline that passed while the server was down fires at start-up.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flotilla_store::{Fence, StoreError};

use crate::Shared;

/// Longest sleep between checks, so a wall-clock jump is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// How long a deadline loop sleeps: until the `next` deadline, at most
/// [`MAX_SLEEP`], or a second when reading it failed.
pub(crate) fn sleep_until(
    shared: &Shared,
    next: Result<Option<DateTime<Utc>>, StoreError>,
    what: &str,
) -> Duration {
    match next {
        Ok(Some(at)) => (at - shared.clock.now())
            .to_std()
            .unwrap_or_default()
            .min(MAX_SLEEP),
        Ok(None) => MAX_SLEEP,
        Err(e) => {
            tracing::warn!(error = %e, "reading {what} failed");
            Duration::from_secs(1)
        }
    }
}

/// Runs while this server leads.
pub(crate) async fn run(shared: Arc<Shared>) {
    crate::lease::each_term(shared, term).await
}

async fn term(shared: Arc<Shared>, fence: Fence) {
    loop {
        let now = shared.clock.now();
        match shared.store.expire_due(now, fence).await {
            Ok(expired) => {
                for record in expired {
                    tracing::info!(cluster = %record.name, "time-to-live ran out; destroying the cluster");
                    shared.metrics.expired();
                    let name = record.name.clone();
                    shared.desired.put(record);
                    shared.runtime.wake(name.clone());
                    shared.notify_changed(&name);
                }
            }
            Err(e) => tracing::warn!(error = %e, "firing scheduled deletions failed"),
        }
        let sleep = sleep_until(
            &shared,
            shared.store.next_expiry().await,
            "scheduled deletions",
        );
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = shared.expiry_changed.notified() => {}
        }
    }
}
