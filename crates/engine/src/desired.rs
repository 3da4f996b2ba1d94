//! The engine's copy of desired state (a reflector, as kube-rs calls it).
//! The store is the truth: the API writes through to it and then here, and
//! every resync refreshes the copy from the store, so reconciles read
//! desired state without a query each.
//!
//! A refresh must not undo a write that raced it: a deploy committed after
//! the refresh's read began is missing from that read, and a record
//! forgotten after it began is still in it. Each change here takes a number
//! from a counter, and a refresh leaves alone whatever changed after its
//! [`DesiredCache::mark`]. A counter, not a clock: a deploy reads the clock
//! before it waits for the store's writer, so timestamps can be older than
//! the commit they describe.

use std::collections::HashMap;
use std::sync::RwLock;

use flotilla_domain::{ClusterName, ClusterRecord};

#[derive(Default)]
struct Inner {
    records: HashMap<ClusterName, (ClusterRecord, u64)>,
    /// Records forgotten here, with when, until a refresh has caught up.
    forgotten: HashMap<ClusterName, u64>,
    changes: u64,
}

/// Where the copy stood when a store read began.
#[derive(Debug, Clone, Copy)]
pub struct Mark(u64);

pub struct DesiredCache {
    inner: RwLock<Inner>,
}

/// Whether `new` replaces `old`: not if it is an older version of the same
/// incarnation (a cluster destroyed, forgotten and deployed again is a new
/// incarnation, with a new `created_at`).
fn newer(old: &ClusterRecord, new: &ClusterRecord) -> bool {
    !(old.generation > new.generation && old.created_at == new.created_at)
}

impl DesiredCache {
    pub fn new(records: Vec<ClusterRecord>) -> Self {
        let inner = Inner {
            records: records
                .into_iter()
                .map(|r| (r.name.clone(), (r, 0)))
                .collect(),
            ..Inner::default()
        };
        Self {
            inner: RwLock::new(inner),
        }
    }

    pub fn get(&self, name: &ClusterName) -> Option<ClusterRecord> {
        self.inner
            .read()
            .unwrap()
            .records
            .get(name)
            .map(|(r, _)| r.clone())
    }

    pub fn names(&self) -> Vec<ClusterName> {
        self.inner.read().unwrap().records.keys().cloned().collect()
    }

    /// Takes `record`, just written to the store, unless the copy already
    /// holds a newer one.
    pub fn put(&self, record: ClusterRecord) {
        let mut inner = self.inner.write().unwrap();
        if inner
            .records
            .get(&record.name)
            .is_some_and(|(old, _)| !newer(old, &record))
        {
            return;
        }
        inner.changes += 1;
        let change = inner.changes;
        inner.forgotten.remove(&record.name);
        inner.records.insert(record.name.clone(), (record, change));
    }

    /// Drops the record the store has just forgotten, if the copy still
    /// holds that version.
    pub fn remove(&self, name: &ClusterName, generation: i64) {
        let mut inner = self.inner.write().unwrap();
        if inner
            .records
            .get(name)
            .is_some_and(|(r, _)| r.generation == generation)
        {
            inner.records.remove(name);
            inner.changes += 1;
            let change = inner.changes;
            inner.forgotten.insert(name.clone(), change);
        }
    }

    /// Takes the store's record of `name` (none: it has none), read after
    /// `mark`, unless the copy changed it since.
    pub fn reflect(&self, name: &ClusterName, fresh: Option<ClusterRecord>, mark: Mark) {
        let mut inner = self.inner.write().unwrap();
        let changed_here = inner.records.get(name).is_some_and(|(_, c)| *c > mark.0)
            || inner.forgotten.get(name).is_some_and(|c| *c > mark.0);
        if changed_here {
            return;
        }
        match fresh {
            Some(record) => {
                if inner
                    .records
                    .get(name)
                    .is_none_or(|(old, _)| newer(old, &record))
                {
                    inner.forgotten.remove(name);
                    inner.records.insert(name.clone(), (record, 0));
                }
            }
            None => {
                inner.records.remove(name);
            }
        }
    }

    /// Taken just before reading the store for [`refresh`](Self::refresh).
    pub fn mark(&self) -> Mark {
        Mark(self.inner.read().unwrap().changes)
    }

    /// Replaces the copy with a full read of the store that began at
    /// `mark`, except for what changed here since.
    pub fn refresh(&self, fresh: Vec<ClusterRecord>, mark: Mark) {
        let mut inner = self.inner.write().unwrap();
        let inner = &mut *inner;
        let mut fresh: HashMap<_, _> = fresh.into_iter().map(|r| (r.name.clone(), r)).collect();
        inner.forgotten.retain(|name, change| {
            let after_read = *change > mark.0;
            if after_read {
                fresh.remove(name);
            }
            after_read
        });
        inner
            .records
            .retain(|name, (_, change)| fresh.contains_key(name) || *change > mark.0);
        for (name, record) in fresh {
            match inner.records.get(&name) {
                Some((_, change)) if *change > mark.0 => {}
                Some((old, _)) if !newer(old, &record) => {}
                _ => {
                    inner.records.insert(name, (record, 0));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use flotilla_domain::{Limits, NodeCapacity, PoolName};

    fn record(name: &str, generation: i64, created: i64) -> ClusterRecord {
        let at = |s: i64| DateTime::<Utc>::from_timestamp(1_700_000_000 + s, 0).unwrap();
        ClusterRecord {
            name: ClusterName::new(name).unwrap(),
            is_public: false,
            node_capacity: NodeCapacity::new(1, &Limits::default()).unwrap(),
            pool: PoolName::new("default").unwrap(),
            expires_at: None,
            destroying: false,
            created_at: at(created),
            updated_at: at(created),
            generation,
        }
    }

    fn name(s: &str) -> ClusterName {
        ClusterName::new(s).unwrap()
    }

    #[test]
    fn a_deploy_that_raced_the_read_survives_the_refresh() {
        let cache = DesiredCache::new(vec![]);
        let mark = cache.mark();
        // Committed after the read's snapshot, so the read lacks it, even
        // though its timestamps are older than the read.
        cache.put(record("new", 1, -60));
        cache.refresh(vec![], mark);
        assert_eq!(cache.get(&name("new")).map(|r| r.generation), Some(1));
        // A later read that still lacks it means it is gone.
        cache.refresh(vec![], cache.mark());
        assert!(cache.get(&name("new")).is_none());
    }

    #[test]
    fn a_forget_that_raced_the_read_is_not_undone() {
        let cache = DesiredCache::new(vec![record("old", 3, 0)]);
        let mark = cache.mark();
        cache.remove(&name("old"), 3);
        cache.refresh(vec![record("old", 3, 0)], mark);
        assert!(
            cache.get(&name("old")).is_none(),
            "the stale read does not bring it back"
        );
        // A read that began after the forget and still finds the record
        // (deployed again elsewhere) is believed.
        cache.refresh(vec![record("old", 1, 10)], cache.mark());
        assert_eq!(cache.get(&name("old")).map(|r| r.generation), Some(1));
    }

    #[test]
    fn reflecting_one_record_never_undoes_a_later_write() {
        let cache = DesiredCache::new(vec![record("a", 1, 0)]);
        let mark = cache.mark();
        cache.put(record("a", 3, 0));
        cache.reflect(&name("a"), Some(record("a", 2, 0)), mark);
        assert_eq!(cache.get(&name("a")).map(|r| r.generation), Some(3));
        cache.reflect(&name("a"), None, mark);
        assert!(
            cache.get(&name("a")).is_some(),
            "a read from before the write"
        );
        // A read after the write is believed, whatever it says.
        cache.reflect(&name("a"), None, cache.mark());
        assert!(cache.get(&name("a")).is_none());
        cache.reflect(&name("b"), Some(record("b", 1, 0)), cache.mark());
        assert!(cache.get(&name("b")).is_some());
    }

    #[test]
    fn refresh_replaces_what_did_not_change_here() {
        let cache = DesiredCache::new(vec![record("a", 1, 0), record("b", 1, 0)]);
        cache.refresh(vec![record("a", 2, 0), record("c", 1, 0)], cache.mark());
        assert_eq!(cache.get(&name("a")).map(|r| r.generation), Some(2));
        assert!(cache.get(&name("b")).is_none());
        assert!(cache.get(&name("c")).is_some());
        // An older version of the same incarnation never replaces a newer one.
        cache.put(record("a", 1, 0));
        assert_eq!(cache.get(&name("a")).map(|r| r.generation), Some(2));
    }
}
