//! An in-memory store: the same contract as SQLite, no I/O. For engine
//! tests under paused time (where real I/O would let tokio's clock jump)
//! and for simulations.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{ClusterName, ClusterRecord, DeployCommand, InstanceSetId};

use crate::{Store, StoreError};

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    clusters: BTreeMap<ClusterName, ClusterRecord>,
    sets: BTreeMap<String, InstanceSetId>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn instance_set_id(&self, driver: &str) -> Result<InstanceSetId, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let n = inner.sets.len();
        Ok(inner
            .sets
            .entry(driver.to_owned())
            .or_insert_with(|| InstanceSetId::new(format!("mem-{n}")).expect("valid"))
            .clone())
    }

    async fn get_cluster(&self, name: &ClusterName) -> Result<Option<ClusterRecord>, StoreError> {
        Ok(self.inner.lock().unwrap().clusters.get(name).cloned())
    }

    async fn list_clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .clusters
            .values()
            .cloned()
            .collect())
    }

    async fn deploy(
        &self,
        command: &DeployCommand,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<ClusterRecord, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let record = match inner.clusters.get(&command.cluster) {
            Some(old) => {
                if let Some(conflict) = StoreError::fixed_field_conflict(old, command) {
                    return Err(conflict);
                }
                ClusterRecord {
                    node_capacity: command.node_capacity,
                    expires_at: Some(expires_at),
                    destroying: false,
                    updated_at: now,
                    generation: old.generation + 1,
                    ..old.clone()
                }
            }
            None => ClusterRecord {
                name: command.cluster.clone(),
                is_public: command.is_public,
                node_capacity: command.node_capacity,
                pool: command.pool.clone(),
                expires_at: Some(expires_at),
                destroying: false,
                created_at: now,
                updated_at: now,
                generation: 1,
            },
        };
        inner.clusters.insert(record.name.clone(), record.clone());
        Ok(record)
    }

    async fn destroy(
        &self,
        name: &ClusterName,
        now: DateTime<Utc>,
    ) -> Result<Option<ClusterRecord>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        Ok(inner.clusters.get_mut(name).map(|r| {
            r.destroying = true;
            r.expires_at = None;
            r.updated_at = now;
            r.generation += 1;
            r.clone()
        }))
    }

    async fn expire_due(&self, now: DateTime<Utc>) -> Result<Vec<ClusterRecord>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let mut fired = Vec::new();
        for r in inner.clusters.values_mut() {
            if r.expires_at.is_some_and(|at| at <= now) {
                r.destroying = true;
                r.expires_at = None;
                r.updated_at = now;
                r.generation += 1;
                fired.push(r.clone());
            }
        }
        Ok(fired)
    }

    async fn next_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .clusters
            .values()
            .filter_map(|r| r.expires_at)
            .min())
    }

    async fn forget(&self, name: &ClusterName, generation: i64) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let matches = inner
            .clusters
            .get(name)
            .is_some_and(|r| r.destroying && r.generation == generation);
        if matches {
            inner.clusters.remove(name);
        }
        Ok(matches)
    }
}
