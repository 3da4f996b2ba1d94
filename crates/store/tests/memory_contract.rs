//! The store contract on the in-memory store, so that engine tests that use
//! it rely on the same behaviour as the SQLite store.

use std::sync::Arc;

use flotilla_store::contract::Harness;
use flotilla_store::MemoryStore;

async fn memory_harness() -> Harness {
    let store = Arc::new(MemoryStore::new());
    Harness {
        store: store.clone(),
        second: store,
        guard: Box::new(()),
    }
}

flotilla_store::store_contract_tests!(memory_harness);
