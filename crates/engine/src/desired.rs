//! The engine's copy of desired state (a reflector, as kube-rs calls it).
//! The store is the truth: the API writes through to it and then here, and
//! every resync refreshes the copy from the store, so reconciles read
//! desired state without a query each.

use std::collections::HashMap;
use std::sync::RwLock;

use chrono::{DateTime, Utc};
use flotilla_domain::{ClusterName, ClusterRecord};

pub struct DesiredCache {
    records: RwLock<HashMap<ClusterName, ClusterRecord>>,
}

impl DesiredCache {
    pub fn new(records: Vec<ClusterRecord>) -> Self {
        Self {
            records: RwLock::new(records.into_iter().map(|r| (r.name.clone(), r)).collect()),
        }
    }

    pub fn get(&self, name: &ClusterName) -> Option<ClusterRecord> {
        self.records.read().unwrap().get(name).cloned()
    }

    pub fn names(&self) -> Vec<ClusterName> {
        self.records.read().unwrap().keys().cloned().collect()
    }

    /// Takes `record` unless the copy already holds a newer one.
    pub fn put(&self, record: ClusterRecord) {
        let mut records = self.records.write().unwrap();
        match records.get(&record.name) {
            Some(old) if old.generation > record.generation && old.created_at == record.created_at => {}
            _ => {
                records.insert(record.name.clone(), record);
            }
        }
    }

    pub fn remove(&self, name: &ClusterName, generation: i64) {
        let mut records = self.records.write().unwrap();
        if records.get(name).is_some_and(|r| r.generation == generation) {
            records.remove(name);
        }
    }

    /// Replaces the copy with a full read of the store that began at
    /// `read_started`. A record written after that moment is kept even if
    /// the read missed it.
    pub fn refresh(&self, fresh: Vec<ClusterRecord>, read_started: DateTime<Utc>) {
        let mut records = self.records.write().unwrap();
        let fresh: HashMap<_, _> = fresh.into_iter().map(|r| (r.name.clone(), r)).collect();
        records.retain(|name, r| fresh.contains_key(name) || r.updated_at >= read_started);
        for (name, record) in fresh {
            match records.get(&name) {
                Some(old) if old.generation > record.generation && old.created_at == record.created_at => {}
                _ => {
                    records.insert(name, record);
                }
            }
        }
    }
}
