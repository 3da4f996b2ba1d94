//! Sign-in. The primitives (password hashes, the keyring that signs tokens,
//! the tokens themselves, the secrets of refresh tokens) do no I/O beyond
//! the key files; [`Identity`] (in `service.rs`) puts them together with
//! the store's accounts and the GitHub client into what the API offers.
//! No HTTP here: the API maps these errors to statuses. The current time is
//! always an argument, so expiry is testable without waiting.
//!
//! Unix only: key files are guarded by their permission bits.

mod cache;
mod keys;
mod password;
mod refresh;
mod service;
mod tokens;

pub use keys::{KeyError, KeyRing};
pub use password::{
    check_password_rules, hash_password, prepare_password_verifier, verify_password, HashMemory,
    PasswordError, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS,
};
pub use refresh::{new_refresh_secret, refresh_id, RefreshSecret};
pub use service::{
    stored_key_ring, Identity, IdentityConfig, IdentityError, KeyInfo, NewUser, Tokens,
    FIRST_ADMIN, HASH_QUEUE_WAIT,
};
pub use tokens::{
    Claims, IssueError, IssuedToken, TokenError, TokenIssuer, TokenKind, ACCESS_AUDIENCE,
    MAX_CLOCK_SKEW_SECS, VERIFIED_CACHE_CAPACITY,
};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Random bytes from the operating system, for key seeds, token ids and
/// refresh secrets.
fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(bytes)
}

fn base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
