//! Helpers shared by the integration tests: a fixed clock, issuers over
//! temporary key directories, and tools to take tokens apart and forge them.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use flotilla_domain::{ClusterName, Username};
use flotilla_identity::{KeyRing, TokenIssuer};
use serde_json::Value;

pub const ISSUER: &str = "https://flotilla.test";
pub const ACCESS_LIFETIME: Duration = Duration::from_secs(15 * 60);
pub const CLUSTER_LIFETIME: Duration = Duration::from_secs(3600);

/// The injected clock of every test.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap()
}

pub fn issuer(dir: &Path) -> TokenIssuer {
    issuer_named(dir, ISSUER)
}

pub fn issuer_named(dir: &Path, iss: &str) -> TokenIssuer {
    let keys = KeyRing::load_or_create(dir).unwrap();
    TokenIssuer::new(keys, iss, ACCESS_LIFETIME, CLUSTER_LIFETIME)
}

pub fn user(name: &str) -> Username {
    Username::new(name).unwrap()
}

pub fn cluster(name: &str) -> ClusterName {
    ClusterName::new(name).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// A token's header and payload as JSON, and its signature bytes.
pub fn split(token: &str) -> (Value, Value, Vec<u8>) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    (
        serde_json::from_slice(&unb64(parts[0])).unwrap(),
        serde_json::from_slice(&unb64(parts[1])).unwrap(),
        unb64(parts[2]),
    )
}

pub fn join(header: &Value, payload: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes()),
        b64(signature)
    )
}

/// The private key stored in `<dir>/<kid>.pem`, as PKCS#8 DER.
pub fn key_der(dir: &Path, kid: &str) -> Vec<u8> {
    let pem = std::fs::read_to_string(dir.join(format!("{kid}.pem"))).unwrap();
    let key = SigningKey::from_pkcs8_pem(&pem).unwrap();
    key.to_pkcs8_der().unwrap().as_bytes().to_vec()
}

/// A token with any header and claims, properly signed EdDSA by the key
/// in `<key_dir>/<signing_kid>.pem`.
pub fn forge(key_dir: &Path, signing_kid: &str, header: &Value, claims: &Value) -> String {
    let der = key_der(key_dir, signing_kid);
    let key = jsonwebtoken::EncodingKey::from_ed_der(&der);
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::EdDSA)
            .unwrap();
    format!("{message}.{signature}")
}
