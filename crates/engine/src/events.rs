//! The change feed's upkeep: pruning by age. Readers of the feed are the
//! reflector and the front door (`flotilla-control`).

use std::time::Duration;

use crate::{Engine, EngineError};

impl Engine {
    /// Removes the changes older than `retention`; returns how many.
    pub async fn prune_events(&self, retention: Duration) -> Result<u64, EngineError> {
        let now = self.shared.clock.now();
        let before = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|r| now.checked_sub_signed(r))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        Ok(self.shared.store.prune_changes(before).await?)
    }
}
