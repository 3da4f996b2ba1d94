//! What went wrong making a pool's nodes (after Taskcluster's worker-pool
//! errors): every failed create or destroy and every node given up on
//! (boot or probe timeout), kept per pool as data. The same failure again
//! (same pool, kind, code, cluster and instance type) is counted, not
//! repeated, so a bad config that fails every few seconds is one row.

use chrono::{DateTime, Utc};

use crate::names::{ClusterName, InstanceType, PoolName};
use crate::obstacle::ObstacleCode;

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PoolErrorKind {
    /// The cloud refused or failed a create.
    CreateFailed,
    /// The cloud refused or failed a destroy.
    DestroyFailed,
    /// A node never became ready within the boot timeout, and was replaced.
    BootTimeout,
    /// A node failed its probe for longer than the probe timeout, and was
    /// replaced.
    ProbeTimeout,
}

impl PoolErrorKind {
    pub const ALL: [PoolErrorKind; 4] = [
        PoolErrorKind::CreateFailed,
        PoolErrorKind::DestroyFailed,
        PoolErrorKind::BootTimeout,
        PoolErrorKind::ProbeTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolErrorKind::CreateFailed => "create_failed",
            PoolErrorKind::DestroyFailed => "destroy_failed",
            PoolErrorKind::BootTimeout => "boot_timeout",
            PoolErrorKind::ProbeTimeout => "probe_timeout",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Which failures are the same one, counted together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolErrorKey {
    pub pool: PoolName,
    pub kind: PoolErrorKind,
    /// How the cloud's error was classified; none for a timeout.
    pub code: Option<ObstacleCode>,
    pub cluster: ClusterName,
    pub instance_type: InstanceType,
}

/// One failure, or the same failure met `count` times from `first_at` to
/// `last_at`; `message` is the latest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolError {
    pub key: PoolErrorKey,
    pub message: String,
    pub count: u64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

impl PoolError {
    /// Counts `other` (the same failure, met later) into this one.
    pub fn absorb(&mut self, other: PoolError) {
        debug_assert_eq!(self.key, other.key);
        self.count += other.count;
        self.first_at = self.first_at.min(other.first_at);
        if other.last_at >= self.last_at {
            self.last_at = other.last_at;
            self.message = other.message;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_failure_again_is_counted_with_its_latest_message() {
        let at = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap();
        let key = PoolErrorKey {
            pool: PoolName::new("p").unwrap(),
            kind: PoolErrorKind::CreateFailed,
            code: Some(ObstacleCode::CloudRefused),
            cluster: ClusterName::new("c").unwrap(),
            instance_type: InstanceType::new("t").unwrap(),
        };
        let error = |message: &str, s: i64| PoolError {
            key: key.clone(),
            message: message.into(),
            count: 1,
            first_at: at(s),
            last_at: at(s),
        };
        let mut kept = error("first", 10);
        kept.absorb(error("second", 20));
        kept.absorb(error("late to arrive", 15));
        assert_eq!(kept.count, 3);
        assert_eq!((kept.first_at, kept.last_at), (at(10), at(20)));
        assert_eq!(kept.message, "second");
        for kind in PoolErrorKind::ALL {
            assert_eq!(PoolErrorKind::parse(kind.as_str()), Some(kind));
        }
    }
}
