//! The Ed25519 keys that sign tokens, kept in one directory:
//!
//! ```text
//! <data_dir>/keys/            mode 0700
//!   <kid>.pem                 mode 0600, PKCS#8 PEM private key
//!   active                    the kid that signs new tokens
//! ```
//!
//! The kid is the key's RFC 7638 JWK thumbprint, so a file's name can be
//! checked against its content. Every file is written to a temporary name
//! and renamed into place, so a crash never leaves half a key; rotation
//! writes the new key before switching `active`, so a crash in between
//! leaves an unused key, never an `active` without its key.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{base64url, random_bytes};

const ACTIVE_FILE: &str = "active";
const KEY_SUFFIX: &str = ".pem";
/// Permission bits a key file must not have: any access by group or others.
const KEY_FORBIDDEN_MODE: u32 = 0o077;
/// Permission bits the directory must not have: writes by group or others
/// would let them plant a key.
const DIR_FORBIDDEN_MODE: u32 = 0o022;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot create the key directory {}: {source}; check that the data directory exists and is writable", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("the key directory {} is writable by group or others (mode {mode:03o}); run `chmod 700 {}`", path.display(), path.display())]
    DirPermissions { path: PathBuf, mode: u32 },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}; check that the key directory is writable and the disk is not full", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("the key file {} can be read by group or others (mode {mode:03o}); run `chmod 600 {}`, and rotate the key if others may have read it", path.display(), path.display())]
    FilePermissions { path: PathBuf, mode: u32 },
    #[error("the key file {} is not an Ed25519 private key in PKCS#8 PEM ({reason}); restore it from a backup or remove it (tokens it signed will then be refused)", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("the key file {} holds the key {actual}, not {expected}; rename it to {actual}.pem", path.display())]
    KidMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{} names the key {kid:?}, but there is no {kid}.pem beside it; write the id of one of the keys there ({available}) into it", path.display())]
    ActiveMissing {
        path: PathBuf,
        kid: String,
        available: String,
    },
    #[error("the key directory {} has several keys ({available}) but no `active` file; write the id of the key that should sign tokens into {}", dir.display(), dir.join(ACTIVE_FILE).display())]
    NoActive { dir: PathBuf, available: String },
    #[error("the key {kid} signs new tokens; rotate to a new key first, then retire it")]
    RetireActive { kid: String },
    #[error("there is no key {kid:?} in {}", dir.display())]
    UnknownKey { dir: PathBuf, kid: String },
    #[error("could not encode a new key as PKCS#8: {0}")]
    Encode(String),
    #[error("the stored signing key {kid} is not an Ed25519 private key in PKCS#8 PEM ({reason})")]
    StoredMalformed { kid: String, reason: String },
    #[error("the stored signing key {expected} holds the key {actual}")]
    StoredKidMismatch { expected: String, actual: String },
    #[error("no stored signing key is active ({available}); rotate to make a new one")]
    StoredNoActive { available: String },
    #[error(
        "the signing keys are kept in the database: rotate and retire them through the server"
    )]
    Shared,
    #[error("could not generate a key: the operating system gave no randomness ({0})")]
    Random(getrandom::Error),
}

/// One key: what signs, what verifies and what is published.
struct Key {
    encoding: EncodingKey,
    decoding: DecodingKey,
    public: [u8; 32],
}

impl Key {
    fn new(signing: &SigningKey) -> Result<(Self, zeroize::Zeroizing<String>), String> {
        let der = signing.to_pkcs8_der().map_err(|e| e.to_string())?;
        let pem = signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        let public = signing.verifying_key().to_bytes();
        let key = Key {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_der(&public),
            public,
        };
        Ok((key, pem))
    }

    fn x(&self) -> String {
        base64url(&self.public)
    }
}

/// The RFC 7638 thumbprint of an Ed25519 public key: SHA-256 over the
/// required JWK members in lexicographic order, base64url. URL-safe, and
/// the same wherever it is computed.
fn key_id(public: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        base64url(public)
    );
    base64url(&Sha256::digest(canonical.as_bytes()))
}

/// The signing keys, loaded from (and kept in) their directory, or held
/// in memory from keys the database keeps ([`KeyRing::from_pems`]).
pub struct KeyRing {
    /// None for keys kept elsewhere.
    dir: Option<PathBuf>,
    active: String,
    keys: BTreeMap<String, Key>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("dir", &self.dir)
            .field("active", &self.active)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// Loads every key in `dir`, creating the directory (mode 0700) and a
    /// first key when there is none. Refuses key files that group or
    /// others can access, files that are not Ed25519 PKCS#8 PEM keys, and
    /// files whose name is not their key's id.
    pub fn load_or_create(dir: impl AsRef<Path>) -> Result<KeyRing, KeyError> {
        let dir = dir.as_ref().to_path_buf();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| KeyError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        let mode = fs::metadata(&dir)
            .map_err(|source| KeyError::Read {
                path: dir.clone(),
                source,
            })?
            .permissions()
            .mode();
        if mode & DIR_FORBIDDEN_MODE != 0 {
            return Err(KeyError::DirPermissions {
                path: dir,
                mode: mode & 0o777,
            });
        }

        let keys = load_keys(&dir)?;
        let active_path = dir.join(ACTIVE_FILE);
        let active = match fs::read_to_string(&active_path) {
            Ok(text) => Some(text.trim().to_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(KeyError::Read {
                    path: active_path,
                    source,
                })
            }
        };
        let mut ring = KeyRing {
            dir: Some(dir),
            active: String::new(),
            keys,
        };
        match active {
            Some(kid) => {
                if !ring.keys.contains_key(&kid) {
                    return Err(KeyError::ActiveMissing {
                        path: active_path,
                        kid,
                        available: ring.available(),
                    });
                }
                ring.active = kid;
            }
            None => match ring.keys.len() {
                0 => {
                    ring.rotate()?;
                }
                // A first start that stopped between writing the key and
                // naming it active: finish it.
                1 => {
                    let kid = ring.keys.keys().next().cloned().unwrap_or_default();
                    ring.set_active(kid)?;
                }
                _ => {
                    return Err(KeyError::NoActive {
                        available: ring.available(),
                        dir: ring.dir.unwrap_or_default(),
                    })
                }
            },
        }
        Ok(ring)
    }

    /// Makes a new key and signs with it from now on; the old keys stay
    /// for verifying the tokens they signed. Returns the new kid.
    pub fn rotate(&mut self) -> Result<String, KeyError> {
        let dir = self.dir.clone().ok_or(KeyError::Shared)?;
        let seed = zeroize::Zeroizing::new(random_bytes::<32>().map_err(KeyError::Random)?);
        let signing = SigningKey::from_bytes(&seed);
        let (key, pem) = Key::new(&signing).map_err(KeyError::Encode)?;
        let kid = key_id(&key.public);
        write_atomically(&dir, &format!("{kid}{KEY_SUFFIX}"), pem.as_bytes())?;
        self.keys.insert(kid.clone(), key);
        self.set_active(kid.clone())?;
        Ok(kid)
    }

    /// Deletes a key that no longer signs: tokens it signed are refused
    /// from now on.
    pub fn retire(&mut self, kid: &str) -> Result<(), KeyError> {
        let dir = self.dir.clone().ok_or(KeyError::Shared)?;
        if kid == self.active {
            return Err(KeyError::RetireActive {
                kid: kid.to_owned(),
            });
        }
        if !self.keys.contains_key(kid) {
            return Err(KeyError::UnknownKey {
                dir,
                kid: kid.to_owned(),
            });
        }
        let path = dir.join(format!("{kid}{KEY_SUFFIX}"));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(KeyError::Write { path, source }),
        }
        sync_dir(&dir)?;
        self.keys.remove(kid);
        Ok(())
    }

    /// The kid that signs new tokens.
    pub fn active_kid(&self) -> &str {
        &self.active
    }

    /// Every kid, the active one included, in order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The directory the keys are kept in; none for keys the database
    /// keeps.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// A ring of keys kept elsewhere (the database): `(kid, PEM, active)`.
    /// Each key must be an Ed25519 PKCS#8 PEM key whose id is `kid`, and
    /// exactly one active.
    pub fn from_pems(keys: &[(&str, &str, bool)]) -> Result<KeyRing, KeyError> {
        let mut ring = KeyRing {
            dir: None,
            active: String::new(),
            keys: BTreeMap::new(),
        };
        for (kid, pem, active) in keys {
            let malformed = |reason: String| KeyError::StoredMalformed {
                kid: (*kid).to_owned(),
                reason,
            };
            let signing = SigningKey::from_pkcs8_pem(pem).map_err(|e| malformed(e.to_string()))?;
            let (key, _) = Key::new(&signing).map_err(malformed)?;
            let actual = key_id(&key.public);
            if actual != *kid {
                return Err(KeyError::StoredKidMismatch {
                    expected: (*kid).to_owned(),
                    actual,
                });
            }
            if *active {
                ring.active = actual.clone();
            }
            ring.keys.insert(actual, key);
        }
        if ring.active.is_empty() {
            return Err(KeyError::StoredNoActive {
                available: ring.available(),
            });
        }
        Ok(ring)
    }

    /// A new key: its id and its PKCS#8 PEM.
    pub fn generate() -> Result<(String, zeroize::Zeroizing<String>), KeyError> {
        let seed = zeroize::Zeroizing::new(random_bytes::<32>().map_err(KeyError::Random)?);
        let signing = SigningKey::from_bytes(&seed);
        let (key, pem) = Key::new(&signing).map_err(KeyError::Encode)?;
        Ok((key_id(&key.public), pem))
    }

    /// The keys of the directory `dir` as `(kid, PEM, active)`, checked as
    /// [`load_or_create`](Self::load_or_create) checks them (which makes a
    /// first key if there is none): for moving them into the database.
    pub fn export(
        dir: impl AsRef<Path>,
    ) -> Result<Vec<(String, zeroize::Zeroizing<String>, bool)>, KeyError> {
        let dir = dir.as_ref();
        let ring = Self::load_or_create(dir)?;
        ring.kids()
            .map(|kid| {
                let path = dir.join(format!("{kid}{KEY_SUFFIX}"));
                let pem = fs::read_to_string(&path)
                    .map(zeroize::Zeroizing::new)
                    .map_err(|source| KeyError::Read { path, source })?;
                Ok((kid.to_owned(), pem, kid == ring.active))
            })
            .collect()
    }

    /// The public keys as a JWK Set, for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .keys
            .iter()
            .map(|(kid, key)| {
                json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": key.x(),
                    "kid": kid,
                    "alg": "EdDSA",
                    "use": "sig",
                })
            })
            .collect();
        json!({ "keys": keys })
    }

    pub(crate) fn signing_key(&self) -> (&str, &EncodingKey) {
        // The active kid is always in the map: set only after insert, and
        // retire refuses it.
        let key = &self.keys[&self.active];
        (&self.active, &key.encoding)
    }

    pub(crate) fn decoding_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys.get(kid).map(|k| &k.decoding)
    }

    fn set_active(&mut self, kid: String) -> Result<(), KeyError> {
        if let Some(dir) = &self.dir {
            write_atomically(dir, ACTIVE_FILE, format!("{kid}\n").as_bytes())?;
        }
        self.active = kid;
        Ok(())
    }

    fn available(&self) -> String {
        if self.keys.is_empty() {
            "there are none".to_owned()
        } else {
            self.keys.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }
}

fn load_keys(dir: &Path) -> Result<BTreeMap<String, Key>, KeyError> {
    let read_err = |source| KeyError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut keys = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // Dot files are our temporary files, left by a crash mid-write.
        if name.starts_with('.') {
            continue;
        }
        let Some(kid) = name.strip_suffix(KEY_SUFFIX) else {
            continue;
        };
        let path = entry.path();
        let key = load_key(&path)?;
        let actual = key_id(&key.public);
        if actual != kid {
            return Err(KeyError::KidMismatch {
                path,
                expected: kid.to_owned(),
                actual,
            });
        }
        keys.insert(actual, key);
    }
    Ok(keys)
}

fn load_key(path: &Path) -> Result<Key, KeyError> {
    let read_err = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    // The mode of the file actually opened, not of whatever is at the path
    // by the time a second lookup happens.
    let meta = file.metadata().map_err(read_err)?;
    let mode = meta.permissions().mode();
    if mode & KEY_FORBIDDEN_MODE != 0 {
        return Err(KeyError::FilePermissions {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    if !meta.is_file() {
        return Err(KeyError::Malformed {
            path: path.to_path_buf(),
            reason: "not a regular file".to_owned(),
        });
    }
    let mut pem = zeroize::Zeroizing::new(String::new());
    file.read_to_string(&mut pem).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => KeyError::Malformed {
            path: path.to_path_buf(),
            reason: "not text".to_owned(),
        },
        _ => read_err(e),
    })?;
    let malformed = |reason: String| KeyError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| malformed(e.to_string()))?;
    let (key, _) = Key::new(&signing).map_err(malformed)?;
    Ok(key)
}

/// Writes `name` in `dir` so that it either has the new content or the old
/// one, never a part: a temporary file, fsynced, renamed, then the
/// directory fsynced so the rename itself survives a crash.
fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<(), KeyError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let write_err = |source| KeyError::Write {
        path: tmp.clone(),
        source,
    };
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    // The umask can only remove bits from 0600; set it outright anyway.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(write_err)?;
    file.write_all(contents).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(|source| KeyError::Write { path, source })?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), KeyError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| KeyError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_rfc7638_thumbprints() {
        // RFC 8037 appendix A.3: the thumbprint of its example key.
        let x = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        )
        .unwrap();
        let public: [u8; 32] = x.try_into().unwrap();
        assert_eq!(
            key_id(&public),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
