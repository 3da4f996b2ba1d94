//! The change feed as callers read it: a page of the changes a caller may
//! see, or, when following, the next ones as they are committed (by this
//! server or any other on the same database): a follower is woken by the
//! store's notice of a commit, and polls in case a notice is lost.

use std::time::Duration;

use flotilla_domain::{may_read_change, Caller, Change, ChangeEntity, ClusterName};
use tokio::time::Instant;

use flotilla_engine::EngineError;

use crate::Control;

/// How often a follower looks for new changes when no notice came.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// The most changes one page returns.
pub const MAX_PAGE: usize = 1000;

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct EventsQuery {
    /// Changes after this number (0: from the oldest kept).
    pub after: i64,
    /// Only this cluster's.
    pub cluster: Option<ClusterName>,
    /// At most this many changes are looked at (visible or not).
    pub limit: usize,
    /// Wait (up to the server's `max_wait`) for a change if none is there.
    pub follow: bool,
}

/// A page of the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    /// The changes the caller may see, oldest first.
    pub events: Vec<Change>,
    /// Where the next page starts (`after`), past changes the caller may
    /// not see too.
    pub next: i64,
    /// Whether the page was full: more changes may follow at once.
    pub more: bool,
    /// The number of the latest change committed when the page was
    /// answered (never before `next`).
    pub latest: i64,
}

impl Control {
    /// A page of the changes `caller` may see. Asking for one cluster's
    /// needs STATUS's permission on it.
    pub async fn events(
        &self,
        caller: &Caller,
        query: &EventsQuery,
    ) -> Result<EventPage, EngineError> {
        if let Some(cluster) = &query.cluster {
            self.may_see(caller, cluster)?;
        }
        let limit = query.limit.min(MAX_PAGE);
        let only = query
            .cluster
            .as_ref()
            .map(|c| (ChangeEntity::Cluster, c.as_str()));
        let deadline = Instant::now() + self.engine().config().max_wait;
        let mut after = query.after;
        let mut notices = self.engine().store().change_notices();
        loop {
            // Seen before the read: a commit after it wakes the wait below.
            notices.borrow_and_update();
            let page = if limit == 0 {
                Vec::new()
            } else {
                self.engine().store().changes(after, limit, only).await?
            };
            let more = limit > 0 && page.len() == limit;
            if let Some(last) = page.last() {
                after = last.seq;
            }
            let events: Vec<Change> = page
                .into_iter()
                .filter(|c| self.may_read(caller, c))
                .collect();
            let waiting = query.follow && limit > 0 && events.is_empty();
            if !waiting || Instant::now() >= deadline {
                // Read once, when answering: a follower waiting for a
                // change needs only the page.
                let latest = self.engine().store().last_change().await?.max(after);
                return Ok(EventPage {
                    events,
                    next: after,
                    more,
                    latest,
                });
            }
            if !more {
                tokio::select! {
                    changed = notices.changed() => {
                        if changed.is_err() {
                            // No notices from this store: poll.
                            tokio::time::sleep(FOLLOW_POLL).await;
                        }
                    }
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
    }

    /// The latest `limit` changes of one cluster the caller may see, for
    /// its status.
    pub async fn recent_events(
        &self,
        caller: &Caller,
        cluster: &ClusterName,
        limit: usize,
    ) -> Result<Vec<Change>, EngineError> {
        self.may_see(caller, cluster)?;
        let only = Some((ChangeEntity::Cluster, cluster.as_str()));
        let mut recent: Vec<Change> = Vec::new();
        let mut after = 0;
        // Pages oldest first, keeping the last `limit`: a cluster has few
        // changes between prunings.
        loop {
            let page = self.engine().store().changes(after, MAX_PAGE, only).await?;
            let full = page.len() == MAX_PAGE;
            if let Some(last) = page.last() {
                after = last.seq;
            }
            recent.extend(page);
            let drop = recent.len().saturating_sub(limit);
            recent.drain(..drop);
            if !full {
                return Ok(recent);
            }
        }
    }

    /// Whether `caller` may read `change`: what the events API shows it,
    /// and what a subscription of its account is sent.
    pub fn may_read(&self, caller: &Caller, change: &Change) -> bool {
        may_read_change(caller, change, self.org_of_change(change).as_ref())
    }

    /// The organisation a change concerns: the one named, or the one whose
    /// cluster it is.
    fn org_of_change(&self, change: &Change) -> Option<flotilla_domain::Organisation> {
        match change.kind.entity() {
            ChangeEntity::Cluster | ChangeEntity::Org => ClusterName::new(change.key.as_str())
                .ok()
                .and_then(|name| self.engine().org(&name)),
            ChangeEntity::Job => change
                .payload
                .get("org")
                .and_then(serde_json::Value::as_str)
                .and_then(|o| ClusterName::new(o).ok())
                .and_then(|name| self.engine().org(&name)),
            ChangeEntity::Account
            | ChangeEntity::Server
            | ChangeEntity::Pool
            | ChangeEntity::SharedConfig
            | ChangeEntity::Schedule
            | ChangeEntity::Dropbox
            | ChangeEntity::Notification => None,
        }
    }
}
