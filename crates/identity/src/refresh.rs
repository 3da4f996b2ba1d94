//! Refresh-token secrets. The client holds the secret; the server stores
//! only its SHA-256 (the id), so a leaked database cannot be replayed, and
//! looks a presented secret up by hashing it again. The secret has 256 bits
//! of entropy, so a plain unsalted hash is enough.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::{base64url, random_bytes, IssueError};

/// A new refresh token: `secret` goes to the client, `id` into the store.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshSecret {
    /// 32 random bytes, base64url without padding.
    pub secret: String,
    /// [`refresh_id`] of `secret`.
    pub id: String,
}

impl fmt::Debug for RefreshSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshSecret")
            .field("secret", &"<redacted>")
            .field("id", &self.id)
            .finish()
    }
}

pub fn new_refresh_secret() -> Result<RefreshSecret, IssueError> {
    let bytes = zeroize::Zeroizing::new(random_bytes::<32>().map_err(IssueError::Random)?);
    let secret = base64url(bytes.as_slice());
    let id = refresh_id(&secret);
    Ok(RefreshSecret { secret, id })
}

/// The stored id of a refresh secret: lowercase hex SHA-256 of its text.
pub fn refresh_id(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest.iter() {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_ids_are_their_sha256() {
        let a = new_refresh_secret().unwrap();
        let b = new_refresh_secret().unwrap();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), 43, "32 bytes in unpadded base64url");
        assert_eq!(a.id, refresh_id(&a.secret));
        assert_eq!(
            refresh_id("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(!format!("{a:?}").contains(&a.secret));
    }
}
