//! A reflection (as kube-rs calls it): the engine's in-memory copy of one
//! kind of stored record, so that reconciles and every request read it
//! without a query. The store is the truth. A server writes its own
//! changes through ([`Reflection::put`]) as soon as the store committed
//! them; the reflector applies what any server committed, one record at a
//! time ([`Reflection::reflect`]); a full read replaces the copy now and
//! then ([`Reflection::refresh`]).
//!
//! A read of the store must not undo a write that raced it: a change
//! committed after the read began is missing from it, and a record removed
//! after it began is still in it. Each change here takes a number from a
//! counter, a read is taken at a [`Mark`], and it leaves alone whatever
//! changed here after its mark. A counter, not a clock: a command reads
//! the clock before it waits for the store's writer, so timestamps can be
//! older than the commit they describe.
//!
//! Kinds: desired state (cluster records, whose generation orders two
//! versions of one incarnation) and organisations (with an index of
//! members, rebuilt on each change).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;

/// A record kept in a [`Reflection`].
pub(crate) trait Reflected: Clone + Send + Sync + 'static {
    type Key: Clone + Eq + Hash + Send + Sync;
    /// What the kind derives from all its records, for lookups the key
    /// cannot answer.
    type Index: Default + Send + Sync;

    fn key(&self) -> &Self::Key;

    /// Whether `self` may replace `old`, a version of the same record:
    /// false only if `self` is known to be older.
    fn replaces(&self, old: &Self) -> bool;

    /// The index over every record.
    fn index<'a>(records: impl Iterator<Item = &'a Self>) -> Self::Index;
}

struct Inner<V: Reflected> {
    records: HashMap<V::Key, (V, u64)>,
    /// Records removed here, with when, until a read has caught up.
    removed: HashMap<V::Key, u64>,
    changes: u64,
    index: V::Index,
}

impl<V: Reflected> Inner<V> {
    fn reindex(&mut self) {
        self.index = V::index(self.records.values().map(|(v, _)| v));
    }

    fn changed_since(&self, key: &V::Key, mark: Mark) -> bool {
        self.records.get(key).is_some_and(|(_, c)| *c > mark.0)
            || self.removed.get(key).is_some_and(|c| *c > mark.0)
    }
}

/// Where the copy stood when a store read began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark(u64);

pub(crate) struct Reflection<V: Reflected> {
    inner: RwLock<Inner<V>>,
}

impl<V: Reflected> Reflection<V> {
    pub fn new(records: Vec<V>) -> Self {
        let mut inner = Inner {
            records: records
                .into_iter()
                .map(|r| (r.key().clone(), (r, 0)))
                .collect(),
            removed: HashMap::new(),
            changes: 0,
            index: V::Index::default(),
        };
        inner.reindex();
        Self {
            inner: RwLock::new(inner),
        }
    }

    pub fn get(&self, key: &V::Key) -> Option<V> {
        self.inner
            .read()
            .unwrap()
            .records
            .get(key)
            .map(|(r, _)| r.clone())
    }

    /// `f` of the record under `key`, without copying it.
    pub fn with<R>(&self, key: &V::Key, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.inner
            .read()
            .unwrap()
            .records
            .get(key)
            .map(|(r, _)| f(r))
    }

    pub fn keys(&self) -> Vec<V::Key> {
        self.inner.read().unwrap().records.keys().cloned().collect()
    }

    pub fn values(&self) -> Vec<V> {
        let inner = self.inner.read().unwrap();
        inner.records.values().map(|(r, _)| r.clone()).collect()
    }

    /// Answers from the index and the keys under one read lock.
    pub fn read<R>(&self, f: impl FnOnce(&V::Index, &dyn Fn(&V::Key) -> bool) -> R) -> R {
        let inner = self.inner.read().unwrap();
        f(&inner.index, &|k| inner.records.contains_key(k))
    }

    /// Takes `record`, just written to the store, unless the copy already
    /// holds a newer version.
    pub fn put(&self, record: V) {
        let mut inner = self.inner.write().unwrap();
        let key = record.key().clone();
        if inner
            .records
            .get(&key)
            .is_some_and(|(old, _)| !record.replaces(old))
        {
            return;
        }
        inner.changes += 1;
        let change = inner.changes;
        inner.removed.remove(&key);
        inner.records.insert(key, (record, change));
        inner.reindex();
    }

    /// Drops the record the store has just removed, if the copy still
    /// holds the version `was` recognises.
    pub fn remove_if(&self, key: &V::Key, was: impl FnOnce(&V) -> bool) {
        let mut inner = self.inner.write().unwrap();
        if inner.records.get(key).is_some_and(|(r, _)| was(r)) {
            inner.records.remove(key);
            inner.changes += 1;
            let change = inner.changes;
            inner.removed.insert(key.clone(), change);
            inner.reindex();
        }
    }

    /// Taken just before reading the store.
    pub fn mark(&self) -> Mark {
        Mark(self.inner.read().unwrap().changes)
    }

    /// Takes the store's version of one record (none: it has none), read
    /// after `mark`, unless the copy changed it since.
    pub fn reflect(&self, key: &V::Key, fresh: Option<V>, mark: Mark) {
        let mut inner = self.inner.write().unwrap();
        if inner.changed_since(key, mark) {
            return;
        }
        // A read that began at `mark` is newer than any read that began
        // before it: it takes a change number of its own, so that such an
        // older read (a refresh under way) cannot undo it.
        inner.changes += 1;
        let change = inner.changes;
        match fresh {
            Some(record) => {
                if inner
                    .records
                    .get(key)
                    .is_none_or(|(old, _)| record.replaces(old))
                {
                    inner.removed.remove(key);
                    inner.records.insert(key.clone(), (record, change));
                }
            }
            None => {
                if inner.records.remove(key).is_some() {
                    inner.removed.insert(key.clone(), change);
                }
            }
        }
        inner.reindex();
    }

    /// Replaces the copy with a full read of the store that began at
    /// `mark`, except for what changed here since.
    pub fn refresh(&self, fresh: Vec<V>, mark: Mark) {
        let mut inner = self.inner.write().unwrap();
        let inner = &mut *inner;
        let mut fresh: HashMap<V::Key, V> =
            fresh.into_iter().map(|r| (r.key().clone(), r)).collect();
        inner.removed.retain(|key, change| {
            let after_read = *change > mark.0;
            if after_read {
                fresh.remove(key);
            }
            after_read
        });
        inner
            .records
            .retain(|key, (_, change)| fresh.contains_key(key) || *change > mark.0);
        for (key, record) in fresh {
            match inner.records.get(&key) {
                Some((_, change)) if *change > mark.0 => {}
                Some((old, _)) if !record.replaces(old) => {}
                _ => {
                    inner.records.insert(key, (record, 0));
                }
            }
        }
        inner.reindex();
    }
}
