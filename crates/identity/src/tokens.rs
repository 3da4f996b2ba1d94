//! Access tokens and cluster tokens: JWTs signed EdDSA by the keyring's
//! active key, with the key's id in the header.
//!
//! Two kinds share one format and are kept apart twice over: by audience
//! (`flotilla-api` for access tokens, the cluster's name for cluster
//! tokens) and by the header's `typ` (`at+jwt` or `cluster+jwt`), because a
//! cluster may well be named `flotilla-api`.
//!
//! Verification accepts nothing but EdDSA, and looks the key up by `kid`
//! among our own keys only. It takes the current time as an argument;
//! jsonwebtoken's own time checks are switched off and done here.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use flotilla_domain::{Caller, ClusterName, Level, Username};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::cache::{token_hash, VerifiedCache};
use crate::keys::{KeyError, KeyRing};
use crate::{base64url, random_bytes};

/// The audience of access tokens.
pub const ACCESS_AUDIENCE: &str = "flotilla-api";
/// How far in the future a token's `iat` may be: the clocks of servers
/// sharing keys may differ a little.
pub const MAX_CLOCK_SKEW_SECS: i64 = 60;
/// Verified tokens remembered by a [`TokenIssuer`].
pub const VERIFIED_CACHE_CAPACITY: usize = 10_000;
/// Longer input is refused before any parsing. A token is about 500 bytes
/// plus 43 per granted cluster, so this allows some 1,500 clusters.
const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// How much of an untrusted header value an error message repeats.
const MAX_ECHO_CHARS: usize = 64;

/// Which kind of token, from the header's `typ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// For the API: audience [`ACCESS_AUDIENCE`], `typ` `at+jwt`.
    Access,
    /// For one cluster: audience and `clusters` are that cluster.
    Cluster,
}

impl TokenKind {
    fn typ(self) -> &'static str {
        match self {
            TokenKind::Access => "at+jwt",
            TokenKind::Cluster => "cluster+jwt",
        }
    }

    fn from_typ(typ: &str) -> Option<Self> {
        // RFC 7515 4.1.9: media type names are case-insensitive.
        [TokenKind::Access, TokenKind::Cluster]
            .into_iter()
            .find(|k| k.typ().eq_ignore_ascii_case(typ))
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenKind::Access => "access",
            TokenKind::Cluster => "cluster",
        })
    }
}

/// What a token says. All members are required: a token without one of
/// them is malformed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The account.
    pub sub: Username,
    pub level: Level,
    /// The clusters the account may act on when the token was issued.
    pub clusters: BTreeSet<ClusterName>,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at (exclusive), seconds since the epoch.
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    /// A random id, unique per token.
    pub jti: String,
}

impl Claims {
    /// The caller the engine authorises.
    pub fn caller(&self) -> Caller {
        Caller {
            account: Some(self.sub.clone()),
            level: self.level,
            allowed: self.clusters.clone(),
        }
    }

    pub fn issued_at(&self) -> DateTime<Utc> {
        datetime(self.iat)
    }

    pub fn expires_at(&self) -> DateTime<Utc> {
        datetime(self.exp)
    }
}

fn datetime(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(if secs < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// A signed token and when it stops being accepted.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a token could not be made. These are server faults (500), unlike
/// [`TokenError`].
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("could not sign the token: {0}")]
    Signing(String),
    #[error("the token lifetime does not fit in a timestamp; configure a shorter one")]
    Lifetime,
    #[error("the operating system gave no randomness: {0}")]
    Random(getrandom::Error),
}

/// Why a token was refused. Every variant means 401: the client should
/// sign in (or refresh) again. [`TokenError::code`] names it for the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed flotilla token ({0}); sign in again")]
    Malformed(String),
    #[error(
        "the token is signed with {alg:?}; flotilla accepts only EdDSA tokens it issued itself"
    )]
    BadAlgorithm { alg: String },
    #[error("the token is signed by key {kid:?}, which this server does not have (it may have been retired); sign in again")]
    UnknownKey { kid: String },
    #[error("the token's signature does not match its content; sign in again")]
    BadSignature,
    #[error("the token was issued by {found:?}, not by this server ({expected:?}); sign in to this server")]
    WrongIssuer { expected: String, found: String },
    #[error("the token is meant for {found:?}, not for {expected:?}; use a token issued for {expected:?}")]
    WrongAudience { expected: String, found: String },
    #[error("this is a {found} token, not a {expected} token; use a {expected} token")]
    WrongKind {
        expected: TokenKind,
        found: TokenKind,
    },
    #[error("the token expired at {expired_at}; refresh it or sign in again")]
    Expired { expired_at: DateTime<Utc> },
    #[error("the token claims to be issued at {issued_at}, in the future; check the clocks of the servers")]
    NotYetValid { issued_at: DateTime<Utc> },
}

impl TokenError {
    /// The stable error code the API returns (always with 401).
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "token_malformed",
            TokenError::BadAlgorithm { .. } => "token_bad_algorithm",
            TokenError::UnknownKey { .. } => "token_unknown_key",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::WrongIssuer { .. } => "token_wrong_issuer",
            TokenError::WrongAudience { .. } => "token_wrong_audience",
            TokenError::WrongKind { .. } => "token_wrong_kind",
            TokenError::Expired { .. } => "token_expired",
            TokenError::NotYetValid { .. } => "token_not_yet_valid",
        }
    }
}

/// What survives from a token whose signature and issuer are good: the
/// part of verification that does not depend on time or on the caller's
/// purpose, and so can be cached.
struct Verified {
    kind: TokenKind,
    claims: Claims,
}

/// The header members read before anything is trusted.
#[derive(Deserialize)]
struct UntrustedHeader {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
}

/// Issues and verifies tokens with one keyring. Shared by every request
/// (`Arc<TokenIssuer>`): all methods take `&self`.
pub struct TokenIssuer {
    /// Verification holds the read lock until its result is cached, and
    /// retirement clears the cache under the write lock, so no token
    /// signed by a retired key is cached after its retirement.
    keys: RwLock<KeyRing>,
    issuer: String,
    access_lifetime: Duration,
    cluster_token_lifetime: Duration,
    validation: Validation,
    cache: VerifiedCache<Verified>,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("keys", &*self.read_keys())
            .field("issuer", &self.issuer)
            .field("access_lifetime", &self.access_lifetime)
            .field("cluster_token_lifetime", &self.cluster_token_lifetime)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// `issuer` is the `iss` of every token, typically the server's public
    /// URL.
    pub fn new(
        keys: KeyRing,
        issuer: impl Into<String>,
        access_lifetime: Duration,
        cluster_token_lifetime: Duration,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Self {
            keys: RwLock::new(keys),
            issuer: issuer.into(),
            access_lifetime,
            cluster_token_lifetime,
            validation,
            cache: VerifiedCache::new(VERIFIED_CACHE_CAPACITY),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// An access token for the API, naming the clusters the account may
    /// act on.
    pub fn issue_access(
        &self,
        username: &Username,
        level: Level,
        allowed: &BTreeSet<ClusterName>,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, IssueError> {
        self.issue(
            TokenKind::Access,
            username,
            level,
            allowed.clone(),
            ACCESS_AUDIENCE,
            self.access_lifetime,
            now,
        )
    }

    /// A token for one cluster. Whether the account may have it is the
    /// domain's `authorize_cluster_token`, checked before this.
    pub fn issue_cluster_token(
        &self,
        username: &Username,
        level: Level,
        cluster: &ClusterName,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, IssueError> {
        self.issue(
            TokenKind::Cluster,
            username,
            level,
            BTreeSet::from([cluster.clone()]),
            cluster.as_str(),
            self.cluster_token_lifetime,
            now,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn issue(
        &self,
        kind: TokenKind,
        username: &Username,
        level: Level,
        clusters: BTreeSet<ClusterName>,
        audience: &str,
        lifetime: Duration,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, IssueError> {
        let iat = now.timestamp();
        let exp = i64::try_from(lifetime.as_secs())
            .ok()
            .and_then(|secs| iat.checked_add(secs))
            .ok_or(IssueError::Lifetime)?;
        let expires_at = DateTime::from_timestamp(exp, 0).ok_or(IssueError::Lifetime)?;
        let jti = base64url(&random_bytes::<16>().map_err(IssueError::Random)?);
        let claims = Claims {
            sub: username.clone(),
            level,
            clusters,
            iat,
            exp,
            iss: self.issuer.clone(),
            aud: audience.to_owned(),
            jti,
        };
        let keys = self.read_keys();
        let (kid, key) = keys.signing_key();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        header.typ = Some(kind.typ().to_owned());
        let token = jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        Ok(IssuedToken { token, expires_at })
    }

    /// The claims of a valid access token.
    pub fn verify_access(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        self.verify(token, TokenKind::Access, ACCESS_AUDIENCE, now)
    }

    /// The claims of a valid token for `cluster`.
    pub fn verify_cluster_token(
        &self,
        token: &str,
        cluster: &ClusterName,
        now: DateTime<Utc>,
    ) -> Result<Claims, TokenError> {
        let claims = self.verify(token, TokenKind::Cluster, cluster.as_str(), now)?;
        if claims.clusters.len() != 1 || !claims.clusters.contains(cluster) {
            return Err(TokenError::Malformed(
                "a cluster token names exactly its own cluster".to_owned(),
            ));
        }
        Ok(claims)
    }

    fn verify(
        &self,
        token: &str,
        kind: TokenKind,
        audience: &str,
        now: DateTime<Utc>,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed(format!(
                "longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let hash = token_hash(token);
        let verified = match self.cache.get(&hash) {
            Some(verified) => verified,
            None => {
                let keys = self.read_keys();
                let verified = Arc::new(self.verify_signature(&keys, token)?);
                // A token that is already dead would only push live ones out.
                if now.timestamp() < verified.claims.exp {
                    self.cache.insert(hash, verified.clone());
                }
                verified
            }
        };
        check_use(&verified, kind, audience, now)?;
        Ok(verified.claims.clone())
    }

    /// Everything that does not depend on the time or the purpose: shape,
    /// algorithm, key, signature, claims present, issuer.
    fn verify_signature(&self, keys: &KeyRing, token: &str) -> Result<Verified, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "a token is three base64url parts separated by '.'".to_owned(),
            ));
        };
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed("the header is not base64url".to_owned()))?;
        let header: UntrustedHeader = serde_json::from_slice(&header).map_err(|_| {
            TokenError::Malformed("the header is not a JSON object with an alg".to_owned())
        })?;
        if header.alg != "EdDSA" {
            return Err(TokenError::BadAlgorithm {
                alg: echo(&header.alg),
            });
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Malformed("the header names no key (kid)".to_owned()))?;
        let kind = header
            .typ
            .as_deref()
            .and_then(TokenKind::from_typ)
            .ok_or_else(|| {
                TokenError::Malformed("the header's typ is not a flotilla token type".to_owned())
            })?;
        let key = keys
            .decoding_key(&kid)
            .ok_or_else(|| TokenError::UnknownKey { kid: echo(&kid) })?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.into_kind() {
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::Base64(_) => {
                        TokenError::Malformed("a part is not base64url".to_owned())
                    }
                    ErrorKind::Json(e) => TokenError::Malformed(format!("bad claims: {e}")),
                    ErrorKind::Utf8(_) => {
                        TokenError::Malformed("the claims are not UTF-8".to_owned())
                    }
                    other => TokenError::Malformed(format!("{other:?}")),
                }
            })?;
        let claims = data.claims;
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer {
                expected: self.issuer.clone(),
                found: claims.iss,
            });
        }
        Ok(Verified { kind, claims })
    }

    /// The public keys, as a JWK Set.
    pub fn jwks(&self) -> serde_json::Value {
        self.read_keys().jwks()
    }

    pub fn active_kid(&self) -> String {
        self.read_keys().active_kid().to_owned()
    }

    pub fn kids(&self) -> Vec<String> {
        self.read_keys().kids().map(str::to_owned).collect()
    }

    /// A new signing key; tokens signed by the old ones stay valid.
    pub fn rotate_key(&self) -> Result<String, KeyError> {
        self.write_keys().rotate()
    }

    /// Deletes a key that no longer signs: the tokens it signed are refused
    /// from now on, cached or not.
    pub fn retire_key(&self, kid: &str) -> Result<(), KeyError> {
        let mut keys = self.write_keys();
        keys.retire(kid)?;
        self.cache.clear();
        Ok(())
    }

    /// Signs and verifies with `keys` from now on (the database's keys,
    /// read again); tokens verified with a key no longer there are
    /// forgotten.
    pub fn replace_keys(&self, keys: KeyRing) {
        *self.write_keys() = keys;
        self.cache.clear();
    }

    /// How many verified tokens are remembered (for metrics and tests).
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    fn read_keys(&self) -> RwLockReadGuard<'_, KeyRing> {
        // KeyRing's methods change its state only after their file work
        // succeeded, so a panic while locked leaves it consistent.
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_keys(&self) -> RwLockWriteGuard<'_, KeyRing> {
        self.keys.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The checks that depend on the purpose and the time, made on every use,
/// cached or not.
fn check_use(
    verified: &Verified,
    kind: TokenKind,
    audience: &str,
    now: DateTime<Utc>,
) -> Result<(), TokenError> {
    let claims = &verified.claims;
    if claims.aud != audience {
        return Err(TokenError::WrongAudience {
            expected: audience.to_owned(),
            found: claims.aud.clone(),
        });
    }
    if verified.kind != kind {
        return Err(TokenError::WrongKind {
            expected: kind,
            found: verified.kind,
        });
    }
    let now = now.timestamp();
    if now >= claims.exp {
        return Err(TokenError::Expired {
            expired_at: claims.expires_at(),
        });
    }
    if claims.iat > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(TokenError::NotYetValid {
            issued_at: claims.issued_at(),
        });
    }
    Ok(())
}

/// An untrusted value, cut short for an error message.
fn echo(value: &str) -> String {
    value.chars().take(MAX_ECHO_CHARS).collect()
}
