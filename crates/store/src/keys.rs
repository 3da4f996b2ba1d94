//! The keys that sign tokens, kept in the database so that every server
//! sharing it signs with the same current key and verifies every token.
//! A copy of the database lets its holder sign tokens: guard it as the key
//! files were guarded.

use chrono::{DateTime, Utc};
use flotilla_domain::{ChangeKind, NewChange};

/// One signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// The key's RFC 7638 thumbprint.
    pub kid: String,
    /// The Ed25519 private key, PKCS#8 PEM. A secret: never logged.
    pub pem: String,
    /// Whether it signs new tokens (exactly one key does).
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("active", &self.active)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// How [`AccountStore::add_signing_keys`](crate::AccountStore::add_signing_keys) adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddKeys {
    /// Only if there are no keys yet (the first server to start wins; the
    /// others use its keys).
    IfNone,
    /// Always; the one marked active signs from now on (rotation).
    Always,
}

/// The change feed's entry for a change of the signing keys: which key,
/// never the key itself.
pub fn keys_change(kid: &str) -> NewChange {
    NewChange {
        kind: ChangeKind::KeysChanged,
        key: kid.to_owned(),
        payload: serde_json::json!({}),
    }
}
