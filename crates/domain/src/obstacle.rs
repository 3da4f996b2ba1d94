//! What stands in a cluster's way: the leader's last classified failure
//! (or stall) acting on it, kept until its work goes through, so that
//! STATUS can say why a cluster is stuck instead of leaving it in the log.

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obstacle {
    pub code: ObstacleCode,
    pub message: String,
    /// When the leader first met it (this code, without success between).
    pub since: DateTime<Utc>,
    /// When it last met it.
    pub last_at: DateTime<Utc>,
    /// How many times in a row.
    pub count: u32,
    /// When the leader tries again; none: once something changes (an
    /// instance goes away, a command).
    pub retry_at: Option<DateTime<Utc>>,
}

/// A stable code per kind of obstacle, for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObstacleCode {
    /// The cloud refused, and retrying will not help until someone changes
    /// something (credentials, image, instance profile, …).
    CloudRefused,
    /// The cloud failed or could not be reached (network, 5xx).
    CloudUnavailable,
    /// The cloud asks for fewer calls for a while.
    RateLimited,
    /// The cloud account holds as many instances as it may.
    QuotaExceeded,
    /// The cloud has no capacity for the instance type now.
    NoCapacity,
    /// The cluster's pool is no longer configured.
    PoolGone,
    /// The cluster's pool holds as many nodes as its `max_nodes` allows.
    PoolFull,
    /// The cluster's pool takes its image from a shared config that does
    /// not give one (gone, or without the key the pool names).
    SharedConfigUnresolved,
    /// The server could not write to its store.
    StoreFailed,
}

impl ObstacleCode {
    pub const ALL: [ObstacleCode; 9] = [
        ObstacleCode::CloudRefused,
        ObstacleCode::CloudUnavailable,
        ObstacleCode::RateLimited,
        ObstacleCode::QuotaExceeded,
        ObstacleCode::NoCapacity,
        ObstacleCode::PoolGone,
        ObstacleCode::PoolFull,
        ObstacleCode::SharedConfigUnresolved,
        ObstacleCode::StoreFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ObstacleCode::CloudRefused => "cloud_refused",
            ObstacleCode::CloudUnavailable => "cloud_unavailable",
            ObstacleCode::RateLimited => "rate_limited",
            ObstacleCode::QuotaExceeded => "quota_exceeded",
            ObstacleCode::NoCapacity => "no_capacity",
            ObstacleCode::PoolGone => "pool_gone",
            ObstacleCode::PoolFull => "pool_full",
            ObstacleCode::SharedConfigUnresolved => "shared_config_unresolved",
            ObstacleCode::StoreFailed => "store_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl Obstacle {
    /// The obstacle met at `now`: the same code as `before` counts on from
    /// it, another starts afresh.
    pub fn met(
        before: Option<&Obstacle>,
        code: ObstacleCode,
        message: String,
        now: DateTime<Utc>,
        retry_at: Option<DateTime<Utc>>,
    ) -> Obstacle {
        let (since, count) = match before {
            Some(b) if b.code == code => (b.since, b.count.saturating_add(1)),
            _ => (now, 1),
        };
        Obstacle {
            code,
            message,
            since,
            last_at: now,
            count,
            retry_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn the_same_obstacle_counts_on_and_another_starts_afresh() {
        let first = Obstacle::met(None, ObstacleCode::CloudRefused, "a".into(), at(0), None);
        let again = Obstacle::met(
            Some(&first),
            ObstacleCode::CloudRefused,
            "b".into(),
            at(5),
            None,
        );
        assert_eq!((again.since, again.last_at, again.count), (at(0), at(5), 2));
        assert_eq!(again.message, "b");
        let other = Obstacle::met(
            Some(&again),
            ObstacleCode::QuotaExceeded,
            "c".into(),
            at(9),
            None,
        );
        assert_eq!((other.since, other.count), (at(9), 1));
    }

    #[test]
    fn codes_read_back() {
        for c in ObstacleCode::ALL {
            assert_eq!(ObstacleCode::parse(c.as_str()), Some(c));
        }
    }
}
