//! Tokens whose signature has been checked, so a token presented again is
//! not verified again: a client sends the same access token with every
//! request, and an Ed25519 verification costs far more than a lookup.
//!
//! The key is the SHA-256 of the whole token, never a part of it: a cache
//! keyed by the signature alone would hand one token's claims to another
//! token that reuses its signature. What is cached is only what cannot
//! change while the key exists (signature, issuer, the claims themselves);
//! expiry and audience are checked on every use by the caller, and the
//! whole cache is dropped when a key is retired.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

pub(crate) type TokenHash = [u8; 32];

pub(crate) fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A bounded map that forgets its oldest entry first.
pub(crate) struct VerifiedCache<V> {
    capacity: usize,
    inner: Mutex<Inner<V>>,
}

struct Inner<V> {
    entries: HashMap<TokenHash, Arc<V>>,
    /// Insertion order, for eviction.
    order: VecDeque<TokenHash>,
}

impl<V> VerifiedCache<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner {
                entries: HashMap::with_capacity(capacity),
                order: VecDeque::with_capacity(capacity),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        // The map is consistent after every statement that changes it, so a
        // panic elsewhere while it was held leaves nothing half done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, hash: &TokenHash) -> Option<Arc<V>> {
        self.lock().entries.get(hash).cloned()
    }

    pub(crate) fn insert(&self, hash: TokenHash, value: Arc<V>) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        if inner.entries.contains_key(&hash) {
            return;
        }
        while inner.entries.len() >= self.capacity {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            inner.entries.remove(&oldest);
        }
        inner.entries.insert(hash, value);
        inner.order.push_back(hash);
    }

    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.order.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_entry_when_full() {
        let cache = VerifiedCache::new(2);
        let (a, b, c) = (token_hash("a"), token_hash("b"), token_hash("c"));
        cache.insert(a, Arc::new(1));
        cache.insert(b, Arc::new(2));
        cache.insert(a, Arc::new(99));
        cache.insert(c, Arc::new(3));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&a).is_none(), "oldest is evicted");
        assert_eq!(cache.get(&b).as_deref(), Some(&2));
        assert_eq!(cache.get(&c).as_deref(), Some(&3));
        cache.clear();
        assert_eq!(cache.len(), 0);
        assert!(cache.get(&b).is_none());
    }
}
