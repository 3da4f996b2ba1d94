//! Stored deadlines, fired by the leader: one loop, generic over what the
//! deadline is ([`Deadline`]). Each kind lives in the store, so it
//! survives restarts; the loop sleeps until the earliest, fires whatever is
//! due and applies what that changed, and wakes early when a command may
//! have moved a deadline. Deadlines that passed while nobody led fire at
//! the start of the next term (see `lease::begin_term`), before anything
//! is reconciled.
//!
//! Kinds: a cluster's time to live ([`Ttl`], here) and an organisation's
//! capacity requests (`budget::CapacityRequests`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flotilla_store::{Fence, StoreError};
use tokio::sync::Notify;

use crate::Shared;

/// Longest sleep between checks, so a wall-clock jump is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// A kind of deadline the store keeps and the leader fires.
pub(crate) trait Deadline: Send + Sync + 'static {
    /// What the deadlines are, for logs.
    const WHAT: &'static str;

    /// Fires every deadline due at `now` and applies what changed.
    fn fire(
        shared: &Shared,
        now: DateTime<Utc>,
        fence: Fence,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The earliest deadline, if any.
    fn next(
        shared: &Shared,
    ) -> impl Future<Output = Result<Option<DateTime<Utc>>, StoreError>> + Send;

    /// Notified when a command may have moved a deadline.
    fn changed(shared: &Shared) -> &Notify;
}

/// Runs the deadlines of kind `D` while this server leads.
pub(crate) async fn run<D: Deadline>(shared: Arc<Shared>) {
    crate::lease::each_term(shared, term::<D>).await
}

async fn term<D: Deadline>(shared: Arc<Shared>, fence: Fence) {
    loop {
        if let Err(e) = D::fire(&shared, shared.clock.now(), fence).await {
            tracing::warn!(error = %e, "firing {} failed", D::WHAT);
        }
        let sleep = match D::next(&shared).await {
            Ok(Some(at)) => (at - shared.clock.now())
                .to_std()
                .unwrap_or_default()
                .min(MAX_SLEEP),
            Ok(None) => MAX_SLEEP,
            Err(e) => {
                tracing::warn!(error = %e, "reading {} failed", D::WHAT);
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = D::changed(&shared).notified() => {}
        }
    }
}

/// Clusters' times to live: a cluster whose deadline passed becomes
/// destroying, exactly as by DESTROY.
pub(crate) struct Ttl;

impl Deadline for Ttl {
    const WHAT: &'static str = "scheduled deletions";

    async fn fire(shared: &Shared, now: DateTime<Utc>, fence: Fence) -> Result<(), StoreError> {
        for record in shared.store.expire_due(now, fence).await? {
            tracing::info!(cluster = %record.name, "time-to-live ran out; destroying the cluster");
            shared.metrics.expired();
            let name = record.name.clone();
            shared.desired.put(record);
            shared.runtime.wake(name.clone());
            shared.notify_changed(&name);
        }
        Ok(())
    }

    async fn next(shared: &Shared) -> Result<Option<DateTime<Utc>>, StoreError> {
        shared.store.next_expiry().await
    }

    fn changed(shared: &Shared) -> &Notify {
        &shared.expiry_changed
    }
}
