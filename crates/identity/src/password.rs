//! Password hashes: argon2id with OWASP's parameters, stored as PHC strings
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`), so the parameters
//! travel with each hash and can be raised later without breaking old ones.
//!
//! No type or error here ever holds the password itself.

use std::sync::OnceLock;

use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};

/// Fewest characters (not bytes) a new password may have.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Most bytes a password may have: argon2 accepts any length, but a login
/// request should not make the server hash megabytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// OWASP's argon2id recommendation: 19 MiB of memory, two passes, one lane.
const PARAMS: Params = match Params::new(19_456, 2, 1, None) {
    Ok(params) => params,
    Err(_) => panic!("the OWASP argon2 parameters are valid"),
};

/// Verified against when an account does not exist, so that an unknown
/// username costs the same as a wrong password. Nobody can sign in with it:
/// it is only ever consulted for a result that is then thrown away.
const DUMMY_PASSWORD: &[u8] = b"flotilla: this account does not exist";
const DUMMY_SALT: &[u8] = b"flotilla-no-account";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error(
        "the password has {chars} characters; use at least {MIN_PASSWORD_CHARS} \
         (a few unrelated words make a long password easy to remember)"
    )]
    TooShort { chars: usize },
    #[error("the password is {bytes} bytes long; use at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong { bytes: usize },
    /// The hasher failed (no randomness for the salt, or no memory); the
    /// message comes from argon2 and never includes the password.
    #[error("could not hash the password: {0}")]
    Hash(String),
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, PARAMS)
}

/// The working memory of one argon2 computation at flotilla's parameters
/// (19 MiB), allocated once and reused: hashing never allocates it again,
/// so a burst of logins cannot leave the process larger than the number of
/// these it keeps (the allocator would otherwise keep each thread's freed
/// 19 MiB for reuse).
pub struct HashMemory(Vec<Block>);

impl HashMemory {
    pub fn new() -> Self {
        Self(vec![Block::new(); PARAMS.block_count()])
    }

    /// Computes `argon` over `password` and `salt` into `out`, in this
    /// memory if it is large enough (a hash stored with larger parameters
    /// than flotilla's allocates its own).
    fn compute(
        &mut self,
        argon: &Argon2<'_>,
        params: &Params,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), argon2::Error> {
        match self.0.get_mut(..params.block_count()) {
            Some(blocks) => argon.hash_password_into_with_memory(password, salt, out, blocks),
            None => argon.hash_password_into(password, salt, out),
        }
    }
}

impl Default for HashMemory {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `password` may be set as a new password.
pub fn check_password_rules(password: &str) -> Result<(), PasswordError> {
    let bytes = password.len();
    if bytes > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong { bytes });
    }
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort { chars });
    }
    Ok(())
}

/// Hashes a new password (checked against [`check_password_rules`] first)
/// with a fresh random salt, as a PHC string to store.
pub fn hash_password(password: &str, memory: &mut HashMemory) -> Result<String, PasswordError> {
    check_password_rules(password)?;
    let failed = |e: &dyn std::fmt::Display| PasswordError::Hash(e.to_string());
    let salt = argon2::password_hash::try_generate_salt().map_err(|e| failed(&e))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    memory
        .compute(&hasher(), &PARAMS, password.as_bytes(), &salt, &mut out)
        .map_err(|e| failed(&e))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&PARAMS).map_err(|e| failed(&e))?,
        salt: Some(Salt::new(&salt).map_err(|e| failed(&e))?),
        hash: Some(Output::new(&out).map_err(|e| failed(&e))?),
    };
    Ok(hash.to_string())
}

fn dummy_hash() -> Option<&'static PasswordHash> {
    static DUMMY: OnceLock<Option<PasswordHash>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            hasher()
                .hash_password_with_salt(DUMMY_PASSWORD, DUMMY_SALT)
                .ok()
        })
        .as_ref()
}

/// Computes the hash that unknown accounts are checked against, so that
/// the first login for an unknown account is not slower than the rest.
/// Call once at start-up; [`verify_password`] does it otherwise.
pub fn prepare_password_verifier() {
    dummy_hash();
}

/// Whether `password` matches the `stored` PHC string. `None` (no such
/// account), a stored string that does not parse and an over-long password
/// are all `false` after the same argon2 work as a real check, so the time
/// taken does not tell which accounts exist. The comparison of the outputs
/// is constant time (argon2's `Output` equality).
pub fn verify_password(stored: Option<&str>, password: &str, memory: &mut HashMemory) -> bool {
    let candidate = password.as_bytes();
    if candidate.len() <= MAX_PASSWORD_BYTES {
        if let Some(hash) = stored.and_then(|s| PasswordHash::new(s).ok()) {
            return argon2_verify(candidate, &hash, memory);
        }
    }
    let bounded = &candidate[..candidate.len().min(MAX_PASSWORD_BYTES)];
    match dummy_hash() {
        Some(dummy) => {
            argon2_verify(bounded, dummy, memory);
        }
        None => {
            let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
            let _ = memory.compute(&hasher(), &PARAMS, bounded, DUMMY_SALT, &mut out);
        }
    }
    false
}

/// The one expensive step, whichever way `verify_password` goes: the hash
/// of `candidate` with `hash`'s parameters and salt, compared with its
/// output in constant time.
fn argon2_verify(candidate: &[u8], hash: &PasswordHash, memory: &mut HashMemory) -> bool {
    #[cfg(test)]
    tests::VERIFICATIONS.with(|n| n.set(n.get() + 1));
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::new(hash.algorithm.as_str()) else {
        return false;
    };
    let Ok(version) = hash
        .version
        .map_or(Ok(Version::default()), Version::try_from)
    else {
        return false;
    };
    let Ok(params) = Params::try_from(hash) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params.clone());
    if memory
        .compute(&argon, &params, candidate, salt.as_ref(), &mut out)
        .is_err()
    {
        return false;
    }
    Output::new(&out).is_ok_and(|computed| &computed == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// argon2 verifications run on this thread.
        pub(super) static VERIFICATIONS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    /// Each way a login can fail does the same argon2 work as a wrong
    /// password (with the same parameters, checked below), so timing does
    /// not tell whether an account exists. Counted, not timed.
    #[test]
    fn every_failure_costs_one_argon2_verification() {
        let mut memory = HashMemory::new();
        let stored = hash_password("correct horse battery", &mut memory).unwrap();
        let too_long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        for (what, stored, password) in [
            ("wrong password", Some(stored.as_str()), "wrong password!"),
            ("no account", None, "wrong password!"),
            ("garbled hash", Some("$argon2id$garbage"), "x"),
            (
                "over-long password",
                Some(stored.as_str()),
                too_long.as_str(),
            ),
        ] {
            VERIFICATIONS.with(|n| n.set(0));
            assert!(!verify_password(stored, password, &mut memory), "{what}");
            assert_eq!(VERIFICATIONS.with(|n| n.get()), 1, "{what}");
        }
    }

    #[test]
    fn hashes_are_argon2id_with_owasp_parameters() {
        let mut memory = HashMemory::new();
        let hash = hash_password("correct horse battery", &mut memory).unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let again = hash_password("correct horse battery", &mut memory).unwrap();
        assert_ne!(hash, again, "each hash has its own salt");
    }

    #[test]
    fn the_dummy_hash_uses_the_same_parameters() {
        let dummy = dummy_hash().unwrap().to_string();
        assert!(
            dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{dummy}"
        );
    }

    /// Hashes stored before memory was reused verify, and new ones verify
    /// with the stock verifier: the same function, the same strings.
    #[test]
    fn reused_memory_agrees_with_the_stock_hasher() {
        use argon2::PasswordVerifier;
        let mut memory = HashMemory::new();
        let old = hasher()
            .hash_password(b"correct horse battery")
            .unwrap()
            .to_string();
        assert!(verify_password(
            Some(&old),
            "correct horse battery",
            &mut memory
        ));
        assert!(!verify_password(
            Some(&old),
            "correct horse batterx",
            &mut memory
        ));
        let new = hash_password("correct horse battery", &mut memory).unwrap();
        let parsed = PasswordHash::new(&new).unwrap();
        assert!(hasher()
            .verify_password(b"correct horse battery", &parsed)
            .is_ok());
        assert!(verify_password(
            Some(&new),
            "correct horse battery",
            &mut memory
        ));
        // Stored with smaller parameters (say, an older default): still read.
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(4096, 1, 1, None).unwrap(),
        )
        .hash_password(b"correct horse battery")
        .unwrap()
        .to_string();
        assert!(verify_password(
            Some(&small),
            "correct horse battery",
            &mut memory
        ));
    }
}
