//! Elastic capacity (seed 001): members ask for nodes for a while, and a
//! private cluster's size is what they ask for together, within the
//! organisation's bounds.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::names::Username;

/// One member's request: `nodes` until `expires_at`, made at
/// `created_at` (the earliest asks are served first when cost is
/// attributed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityRequest {
    pub user: Username,
    pub nodes: u32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A cluster's size as its requests make it at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Nodes the cluster should have.
    pub nodes: u32,
    /// What the requests add up to before clamping.
    pub requested: u32,
    /// Whether `max_nodes` cut the total.
    pub clamped: bool,
    /// No active request and `min_nodes` is 0: the cluster sleeps.
    pub asleep: bool,
    /// When an active request expires next, changing the size (or not).
    pub next_change: Option<DateTime<Utc>>,
}

/// The size at `now`: the sum over users of each user's largest active
/// request (a user asking again does not add to their own earlier ask),
/// clamped to `[min_nodes, max_nodes]`.
pub fn sizing(
    requests: &[CapacityRequest],
    now: DateTime<Utc>,
    min_nodes: u32,
    max_nodes: u32,
) -> Sizing {
    let mut largest: BTreeMap<&Username, u32> = BTreeMap::new();
    let mut next_change: Option<DateTime<Utc>> = None;
    for r in requests.iter().filter(|r| r.expires_at > now) {
        let entry = largest.entry(&r.user).or_default();
        *entry = (*entry).max(r.nodes);
        next_change = Some(next_change.map_or(r.expires_at, |n| n.min(r.expires_at)));
    }
    let requested = largest.values().fold(0u32, |sum, n| sum.saturating_add(*n));
    let nodes = requested.clamp(min_nodes, max_nodes.max(min_nodes));
    Sizing {
        nodes,
        requested,
        clamped: requested > max_nodes,
        asleep: nodes == 0,
        next_change,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn ask(user: &str, nodes: u32, until: i64) -> CapacityRequest {
        CapacityRequest {
            user: Username::new(user).unwrap(),
            nodes,
            created_at: at(0),
            expires_at: at(until),
        }
    }

    #[test]
    fn users_add_up_and_each_counts_their_largest_ask() {
        let requests = [ask("ann", 2, 100), ask("ann", 5, 50), ask("bob", 3, 200)];
        let s = sizing(&requests, at(0), 0, 20);
        assert_eq!(
            (s.nodes, s.requested, s.clamped, s.asleep),
            (8, 8, false, false)
        );
        assert_eq!(s.next_change, Some(at(50)));
        // Ann's larger ask expires: her smaller one still stands.
        let s = sizing(&requests, at(50), 0, 20);
        assert_eq!(s.nodes, 5);
        assert_eq!(s.next_change, Some(at(100)));
        let s = sizing(&requests, at(150), 0, 20);
        assert_eq!(s.nodes, 3);
    }

    #[test]
    fn sleeps_at_zero_and_wakes_on_the_next_ask() {
        let s = sizing(&[ask("ann", 2, 100)], at(100), 0, 20);
        assert_eq!((s.nodes, s.asleep, s.next_change), (0, true, None));
        let s = sizing(&[ask("ann", 2, 100), ask("bob", 1, 300)], at(100), 0, 20);
        assert_eq!((s.nodes, s.asleep), (1, false));
    }

    #[test]
    fn clamped_to_the_bounds() {
        let s = sizing(&[ask("ann", 30, 100)], at(0), 1, 10);
        assert_eq!((s.nodes, s.requested, s.clamped), (10, 30, true));
        let s = sizing(&[], at(0), 2, 10);
        assert_eq!((s.nodes, s.asleep, s.clamped), (2, false, false));
    }
}
