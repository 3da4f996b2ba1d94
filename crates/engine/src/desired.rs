//! Desired state as the engine keeps it: a [`Reflection`] of the store's
//! cluster records. Two versions of one incarnation are ordered by their
//! generation; a cluster destroyed, forgotten and deployed again is a new
//! incarnation, with a new `created_at`.

use flotilla_domain::{ClusterName, ClusterRecord};

use crate::reflection::{Reflected, Reflection};

pub(crate) type DesiredCache = Reflection<ClusterRecord>;

impl Reflected for ClusterRecord {
    type Key = ClusterName;
    type Index = ();

    fn key(&self) -> &ClusterName {
        &self.name
    }

    fn replaces(&self, old: &Self) -> bool {
        !(old.generation > self.generation && old.created_at == self.created_at)
    }

    fn index<'a>(_: impl Iterator<Item = &'a Self>) {}
}

impl Reflection<ClusterRecord> {
    pub fn names(&self) -> Vec<ClusterName> {
        self.keys()
    }

    /// Drops the record the store has just forgotten, if the copy still
    /// holds that version.
    pub fn remove(&self, name: &ClusterName, generation: i64) {
        self.remove_if(name, |r| r.generation == generation);
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
            workload: None,
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
    fn a_refresh_that_began_before_a_reflected_read_does_not_undo_it() {
        let cache = DesiredCache::new(vec![]);
        // A resync's read begins, then the reflector applies a deploy from
        // the feed, then the resync's read (which began before the deploy
        // committed, so lacks it) lands.
        let resync = cache.mark();
        cache.reflect(&name("new"), Some(record("new", 1, 0)), cache.mark());
        cache.refresh(vec![], resync);
        assert!(
            cache.get(&name("new")).is_some(),
            "the older read undid nothing"
        );
        // Nor does one resurrect what a read after it found gone.
        let resync = cache.mark();
        cache.reflect(&name("new"), None, cache.mark());
        cache.refresh(vec![record("new", 1, 0)], resync);
        assert!(cache.get(&name("new")).is_none());
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
