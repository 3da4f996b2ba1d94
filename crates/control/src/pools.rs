//! Questions about a pool: what went wrong making its nodes.

use std::collections::BTreeSet;

use flotilla_domain::{Caller, ClusterName};
use flotilla_engine::EngineError;

use crate::Control;

/// The most errors of a pool one answer carries.
pub const MAX_POOL_ERRORS: usize = 1000;

impl Control {
    /// Pool `pool`'s errors that the caller may see (those of clusters it
    /// may see the status of), latest first, at most `limit`.
    pub async fn pool_errors(
        &self,
        caller: &Caller,
        pool: &str,
        limit: usize,
    ) -> Result<Vec<flotilla_domain::PoolError>, EngineError> {
        let pool = self.known_pool(pool)?;
        let engine = self.engine();
        // Asked of the store by name, so that others' errors cannot crowd
        // out the caller's: the clusters it may act on (its organisations'
        // included) and the public ones.
        let only: Option<Vec<ClusterName>> = (!caller.is_admin()).then(|| {
            let mut names: BTreeSet<ClusterName> = match caller.account {
                Some(_) => caller.allowed.clone(),
                None => BTreeSet::new(),
            };
            names.extend(
                engine
                    .cluster_names()
                    .into_iter()
                    .filter(|c| engine.record(c).is_some_and(|r| r.is_public)),
            );
            names.into_iter().collect()
        });
        let mut errors = engine
            .pool_errors(&pool, only.as_deref(), limit.min(MAX_POOL_ERRORS))
            .await?;
        errors.retain(|e| self.may_see(caller, &e.key.cluster).is_ok());
        Ok(errors)
    }
}
