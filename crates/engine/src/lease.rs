//! Leadership: of the servers sharing one database, the holder of the
//! store's lease runs the loops that act on the cloud (reconciles, the
//! syncer, deadlines, accrual). The others answer the API from the store
//! and the change feed, and take the lease over when its holder stops
//! renewing it.
//!
//! A term is valid until `ttl` after its last successful take or renewal
//! was *sent*: the store's own deadline is at least that late, so a server
//! never believes it leads longer than the store does. Every cloud action
//! checks [`Leadership::fence`] just before it is made, and every write
//! only the leader makes carries the term's [`Fence`], which the store
//! refuses once another term began: a leader that was paused (SIGSTOP, a
//! long GC-like stall, a frozen VM) past its lease wakes up, finds its term
//! over, and stands down without acting twice.

use std::future::Future;
use std::sync::Arc;

use flotilla_store::Fence;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Shared;

/// This server's current term as leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Term {
    pub fence: Fence,
    /// When this server stops believing it leads, unless renewed.
    pub valid_until: Instant,
}

pub(crate) struct Leadership {
    /// This server's name as the lease's holder.
    pub holder: String,
    term: watch::Sender<Option<Term>>,
}

impl Leadership {
    pub fn new(holder: String) -> Self {
        Self {
            holder,
            term: watch::channel(None).0,
        }
    }

    /// Gauges of this server's lease, read at each scrape: a term that ran
    /// out while the server was paused shows as over at once, before the
    /// lease loop gets to notice.
    pub fn gauges(&self) -> LeaseGauges {
        LeaseGauges {
            term: self.term.subscribe(),
        }
    }

    /// The fence of the term this server leads in now, if it does.
    pub fn fence(&self) -> Option<Fence> {
        self.term
            .borrow()
            .filter(|t| Instant::now() < t.valid_until)
            .map(|t| t.fence)
    }

    pub fn term(&self) -> Option<Term> {
        *self.term.borrow()
    }

    pub fn set(&self, term: Option<Term>) {
        self.term.send_replace(term);
    }

    /// Waits until this server leads; the fence of its term.
    pub async fn leading(&self) -> Fence {
        let mut changes = self.term.subscribe();
        loop {
            changes.borrow_and_update();
            if let Some(fence) = self.fence() {
                return fence;
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves when the term `fence` is over here: renewal failed, it ran
    /// out, or another began.
    pub async fn ended(&self, fence: Fence) {
        let mut changes = self.term.subscribe();
        loop {
            let term = *changes.borrow_and_update();
            match term {
                Some(t) if t.fence == fence && Instant::now() < t.valid_until => {
                    tokio::select! {
                        _ = changes.changed() => {}
                        _ = tokio::time::sleep_until(t.valid_until) => {}
                    }
                }
                _ => return,
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct LeaseGauges {
    term: watch::Receiver<Option<Term>>,
}

impl Collector for LeaseGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let fence = self
            .term
            .borrow()
            .filter(|t| Instant::now() < t.valid_until)
            .map(|t| t.fence);
        for (name, help, value) in [
            (
                "flotilla_leading",
                "1 while this server holds the lease and runs the loops that act on the cloud",
                i64::from(fence.is_some()),
            ),
            (
                "flotilla_lease_epoch",
                "The term this server leads in (0 while it follows)",
                fence.map_or(0, |f| f.0),
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// Runs `body` during each of this server's terms as leader: started when
/// a term begins, dropped when it ends, until the engine stops.
pub(crate) async fn each_term<F, Fut>(shared: Arc<Shared>, mut body: F)
where
    F: FnMut(Arc<Shared>, Fence) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let fence = tokio::select! {
            fence = shared.leadership.leading() => fence,
            _ = shared.stopped() => return,
        };
        tokio::select! {
            _ = body(shared.clone(), fence) => {}
            _ = shared.leadership.ended(fence) => {}
            _ = shared.stopped() => return,
        }
    }
}

/// Tries to take the lease once; on success begins the term (see
/// [`begin_term`]) and makes it current.
pub(crate) async fn try_lead(shared: &Shared) -> bool {
    let ttl = shared.config.lease_ttl;
    let sent = Instant::now();
    let acquired = shared
        .store
        .acquire_lease(&shared.leadership.holder, ttl, shared.clock.now())
        .await;
    match acquired {
        Ok(Some(fence)) => {
            tracing::info!(server = %shared.leadership.holder, %fence, "took the lease: this server leads");
            begin_term(shared, fence).await;
            shared.leadership.set(Some(Term {
                fence,
                valid_until: sent + ttl,
            }));
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, "cannot take the lease");
            false
        }
    }
}

/// What a new term starts from: deadlines that came due while nobody led
/// fire first (so nothing is created for them), then desired state and
/// organisations are read afresh, and the inventory is emptied: nothing
/// is planned for a set until this term has listed it.
async fn begin_term(shared: &Shared, fence: Fence) {
    let now = shared.clock.now();
    match shared.store.expire_due(now, fence).await {
        Ok(expired) => {
            for r in expired {
                tracing::info!(cluster = %r.name, "time-to-live ran out while no server led; destroying the cluster");
                shared.metrics.expired();
            }
        }
        Err(e) => tracing::warn!(error = %e, "firing scheduled deletions failed"),
    }
    if let Err(e) = shared.store.expire_capacity(now, fence).await {
        tracing::warn!(error = %e, "expiring capacity requests failed");
    }
    if let Err(e) = crate::reflector::refresh(shared).await {
        tracing::warn!(error = %e, "reading the store's records failed; the next resync reads them");
    }
    // Actions this server started in an earlier term finish first, so the
    // listing this term begins with sees what they made.
    let _quiet = shared.acting.write().await;
    for set in shared.inventory.lock().unwrap().values_mut() {
        *set = crate::inventory::SetInventory::default();
    }
    // What stood in clusters' way in an earlier term is met afresh (or
    // found gone, and the published copy cleared) by this term's reconciles.
    shared.obstacles.lock().unwrap().clear();
}

/// The lease loop: takes the lease when it is free, renews it every third
/// of its time to live, and stands down when renewal fails or the term
/// runs out. Releases it when the engine stops, so another server takes
/// over at once.
pub(crate) async fn run(shared: Arc<Shared>) {
    let ttl = shared.config.lease_ttl;
    let mut renewed = Instant::now();
    loop {
        match shared.leadership.term() {
            None => {
                if try_lead(&shared).await {
                    renewed = Instant::now();
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep(shared.config.lease_retry) => {}
                    _ = shared.stopped() => return,
                }
            }
            Some(term) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(renewed + ttl / 3) => {}
                    _ = shared.stopped() => {
                        if shared.leadership.fence() == Some(term.fence) {
                            crate::reconcile::publish_all(&shared, term.fence).await;
                        }
                        release(&shared, term.fence).await;
                        return;
                    }
                }
                let sent = Instant::now();
                renewed = sent;
                let left = term.valid_until.saturating_duration_since(sent);
                let renewal = tokio::time::timeout(
                    left,
                    shared.store.renew_lease(
                        &shared.leadership.holder,
                        term.fence,
                        ttl,
                        shared.clock.now(),
                    ),
                )
                .await;
                match renewal {
                    Ok(Ok(true)) => shared.leadership.set(Some(Term {
                        fence: term.fence,
                        valid_until: sent + ttl,
                    })),
                    Ok(Ok(false)) => {
                        stand_down(&shared, term.fence, "another server took the lease")
                    }
                    Ok(Err(e)) if Instant::now() >= term.valid_until => {
                        stand_down(&shared, term.fence, &format!("cannot renew the lease: {e}"))
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the lease; retrying"),
                    Err(_) => stand_down(&shared, term.fence, "renewing the lease took too long"),
                }
                if shared.leadership.fence().is_none() && shared.leadership.term().is_some() {
                    stand_down(
                        &shared,
                        term.fence,
                        "the lease ran out before it was renewed",
                    );
                }
            }
        }
    }
}

fn stand_down(shared: &Shared, fence: Fence, why: &str) {
    tracing::warn!(server = %shared.leadership.holder, %fence, "{why}: this server stands down and follows");
    shared.leadership.set(None);
}

async fn release(shared: &Shared, fence: Fence) {
    shared.leadership.set(None);
    if let Err(e) = shared
        .store
        .release_lease(&shared.leadership.holder, fence)
        .await
    {
        tracing::warn!(error = %e, "cannot release the lease; another server takes over when it runs out");
    }
}
