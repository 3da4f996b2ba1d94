//! The change feed's upkeep: pruning by age (and the pools' errors with
//! it). Readers of the feed are the
//! reflector and the front door (`flotilla-control`).

use std::time::Duration;

use crate::{Engine, EngineError};

impl Engine {
    /// Removes the changes older than `retention`, and the pools' errors
    /// last met before then; returns how many changes.
    pub async fn prune_events(&self, retention: Duration) -> Result<u64, EngineError> {
        let now = self.shared.clock.now();
        let before = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|r| now.checked_sub_signed(r))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        self.shared.store.prune_pool_errors(before).await?;
        Ok(self.shared.store.prune_changes(before).await?)
    }

    /// A pool's errors, latest first, at most `limit`; with `only`, just
    /// those of these clusters.
    pub async fn pool_errors(
        &self,
        pool: &flotilla_domain::PoolName,
        only: Option<&[flotilla_domain::ClusterName]>,
        limit: usize,
    ) -> Result<Vec<flotilla_domain::PoolError>, EngineError> {
        Ok(self.shared.store.pool_errors(pool, only, limit).await?)
    }
}
