//! Sign-in and accounts as the API offers them: LOGIN with a password or a
//! GitHub token, refresh and logout, cluster tokens, the first admin, and
//! account management for admins. Built on the store's accounts and this
//! crate's primitives; every method takes the current time.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flotilla_domain::{
    allowed_clusters, authorize_admin, authorize_cluster_token, AccountKind, Caller, ClusterName,
    Denied, Level, NameError, Username,
};
use flotilla_github::{GithubClient, GithubError};
use flotilla_store::{
    AccountRecord, AccountStore, AddKeys, RefreshTokenRecord, Rotation, SigningKeyRecord,
    StoreError,
};

use crate::{
    check_password_rules, hash_password, new_refresh_secret, refresh_id, verify_password,
    HashMemory, IssueError, IssuedToken, KeyError, KeyRing, PasswordError, TokenError, TokenIssuer,
};

/// The name of the first admin account.
pub const FIRST_ADMIN: &str = "admin";

/// Token lifetimes beyond the access token's (which the issuer holds).
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub refresh_token_ttl: Duration,
    /// Password hashes computed at once; each holds 19 MiB, kept for the
    /// next. Beyond them, logins wait up to [`HASH_QUEUE_WAIT`], then are
    /// refused as busy.
    pub max_concurrent_hashes: usize,
}

/// How long a login or password change waits for a hasher before it is
/// refused as busy (429).
pub const HASH_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Why a sign-in or account request failed. The API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Unknown user or wrong password: one answer for both, so names cannot
    /// be probed.
    #[error("wrong username or password")]
    BadCredentials,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("this token was issued before the account was changed or removed; sign in again")]
    Revoked,
    #[error("the refresh token is unknown, expired or revoked; sign in again")]
    RefreshInvalid,
    #[error("the refresh token was already used, so every token of that sign-in is now revoked; sign in again")]
    RefreshReused,
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(
        "accounts cannot be created at level anonymous; use github_member, org_member or admin"
    )]
    AnonymousAccount,
    #[error("an account named {username} already exists ({kind} account)")]
    Exists {
        username: Username,
        kind: AccountKind,
    },
    #[error("there is no account named {0}")]
    NotFound(Username),
    /// Every password hasher stayed busy for [`HASH_QUEUE_WAIT`].
    #[error("the server is busy checking passwords; try again in a few seconds")]
    Busy,
    /// A hashing thread failed (a panic); nothing was changed.
    #[error("checking the password failed: {0}")]
    Hashing(String),
    #[error("{0} is the last admin; make another account admin first")]
    LastAdmin(Username),
    #[error("GitHub sign-in is not configured on this server (no [github] section)")]
    GithubDisabled,
    #[error(transparent)]
    Github(#[from] GithubError),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("storage failed: {0}")]
    Store(StoreError),
}

impl From<StoreError> for IdentityError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AccountExists { username, kind } => {
                IdentityError::Exists { username, kind }
            }
            StoreError::LastAdmin(username) => IdentityError::LastAdmin(username),
            other => IdentityError::Store(other),
        }
    }
}

/// What a sign-in or a refresh hands back.
#[derive(Clone)]
pub struct Tokens {
    pub access: IssuedToken,
    pub refresh_token: String,
    pub refresh_expires_at: DateTime<Utc>,
    pub account: AccountRecord,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("username", &self.account.username)
            .field("expires_at", &self.access.expires_at)
            .finish_non_exhaustive()
    }
}

/// A new local account, as an admin asks for it.
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub level: Level,
    pub grants: Vec<String>,
}

/// The whole of sign-in, shared by every request.
pub struct Identity {
    store: Arc<dyn AccountStore>,
    tokens: TokenIssuer,
    github: Option<GithubClient>,
    config: IdentityConfig,
    /// Accounts changed or removed on this server, and when: their access
    /// tokens issued before then are refused, so a removal or a demotion
    /// takes effect at once rather than when the token expires.
    changed: Mutex<Changes>,
    /// Whether the signing keys are the database's, shared by every server
    /// on it ([`Identity::share_keys`]), rather than the key directory's.
    shared_keys: std::sync::atomic::AtomicBool,
    /// Each password hash takes 19 MiB and tens of milliseconds of a core;
    /// a burst of logins queues here instead of exhausting the machine,
    /// and the memory is reused rather than allocated again.
    hashing: Hashers,
}

/// At most `n` argon2 computations at once, each in memory of its own
/// that is kept for the next.
struct Hashers {
    permits: Arc<tokio::sync::Semaphore>,
    /// At most one memory per permit is kept.
    most: usize,
    memory: Arc<Mutex<Vec<HashMemory>>>,
    /// How long a caller waits for a permit.
    wait: Duration,
}

impl Hashers {
    fn new(n: usize, wait: Duration) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(n.max(1))),
            most: n.max(1),
            memory: Arc::default(),
            wait,
        }
    }

    /// Runs `f` with a hasher's memory on a blocking thread, once one is
    /// free; `Busy` if none is within its wait ([`HASH_QUEUE_WAIT`]).
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut HashMemory) -> T + Send + 'static,
    ) -> Result<T, IdentityError> {
        // The permit goes with the work: a caller that goes away while its
        // hash runs does not free a place for another.
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| IdentityError::Busy)?
            .expect("never closed");
        let pool = self.memory.clone();
        let most = self.most;
        tokio::task::spawn_blocking(move || {
            let mut memory = pool.lock().expect("not poisoned").pop().unwrap_or_default();
            let out = f(&mut memory);
            let mut kept = pool.lock().expect("not poisoned");
            if kept.len() < most {
                kept.push(memory);
            }
            drop(kept);
            drop(permit);
            out
        })
        .await
        .map_err(|e| IdentityError::Hashing(e.to_string()))
    }
}

impl Identity {
    pub fn new(
        store: Arc<dyn AccountStore>,
        tokens: TokenIssuer,
        github: Option<GithubClient>,
        config: IdentityConfig,
    ) -> Self {
        let hashing = Hashers::new(config.max_concurrent_hashes, HASH_QUEUE_WAIT);
        Self {
            store,
            tokens,
            github,
            config,
            changed: Mutex::new(Changes::default()),
            shared_keys: std::sync::atomic::AtomicBool::new(false),
            hashing,
        }
    }

    /// Signs and verifies with the keys the database keeps, so every
    /// server on it signs with the same current key and verifies every
    /// token. The first server to start stores its keys: those of the key
    /// directory `dir` if it has any (so tokens signed before stay valid),
    /// else a new one; the others use what it stored.
    pub async fn share_keys(
        &self,
        dir: &std::path::Path,
        now: DateTime<Utc>,
    ) -> Result<(), IdentityError> {
        if self.store.signing_keys().await?.is_empty() {
            let keys: Vec<SigningKeyRecord> = KeyRing::export(dir)?
                .into_iter()
                .map(|(kid, pem, active)| SigningKeyRecord {
                    kid,
                    pem: pem.to_string(),
                    active,
                    created_at: now,
                })
                .collect();
            if self.store.add_signing_keys(&keys, AddKeys::IfNone).await? {
                tracing::info!(keys = keys.len(), dir = %dir.display(), "stored the signing keys in the database");
            }
        }
        self.reload_keys().await?;
        self.shared_keys
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Reads the signing keys from the database again: after another
    /// server rotated or retired one (the change feed says so).
    pub async fn reload_keys(&self) -> Result<(), IdentityError> {
        let stored = self.store.signing_keys().await?;
        self.tokens.replace_keys(stored_key_ring(&stored)?);
        Ok(())
    }

    fn keys_shared(&self) -> bool {
        self.shared_keys.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn tokens(&self) -> &TokenIssuer {
        &self.tokens
    }

    /// Creates account `admin` with `password` if no admin exists. True if
    /// it was created.
    pub async fn bootstrap_admin(
        &self,
        password: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, IdentityError> {
        check_password_rules(password)?;
        let hash = self.hash(password.to_owned()).await?;
        let record = AccountRecord {
            username: Username::new(FIRST_ADMIN).expect("a valid name"),
            kind: AccountKind::Local,
            level: Level::Admin,
            password_hash: Some(hash),
            grants: BTreeSet::new(),
            created_at: now,
        };
        Ok(self.store.create_first_admin(&record).await?)
    }

    /// The caller a bearer token stands for.
    pub fn authenticate(&self, token: &str, now: DateTime<Utc>) -> Result<Caller, IdentityError> {
        let claims = self.tokens.verify_access(token, now)?;
        if let Some(change) = self.changes().accounts.get(&claims.sub) {
            if claims.iat < change.cutoff {
                return Err(IdentityError::Revoked);
            }
        }
        Ok(claims.caller())
    }

    /// LOGIN with a local account's password.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        now: DateTime<Utc>,
    ) -> Result<Tokens, IdentityError> {
        let read_at = self.changes().count;
        let account = match Username::new(username) {
            Ok(name) => self.store.get_account(&name).await?,
            Err(_) => None,
        };
        let stored = account
            .as_ref()
            .filter(|a| a.kind == AccountKind::Local)
            .and_then(|a| a.password_hash.clone());
        // Verified even when there is no account, against a dummy hash, so
        // the answer takes as long either way.
        let password = password.to_owned();
        let ok = self
            .hashing
            .run(move |memory| verify_password(stored.as_deref(), &password, memory))
            .await?;
        match account {
            Some(account) if ok => self.sign_in(account, read_at, now).await,
            _ => Err(IdentityError::BadCredentials),
        }
    }

    /// LOGIN with a GitHub token: GitHub says who it is and whether they
    /// are an active member of the organisation.
    pub async fn github_login(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Tokens, IdentityError> {
        let github = self.github.as_ref().ok_or(IdentityError::GithubDisabled)?;
        let who = github.identify(token).await?;
        let read_at = self.changes().count;
        let account = self
            .store
            .upsert_github_account(&who.login, who.level, now)
            .await?;
        self.sign_in(account, read_at, now).await
    }

    /// `read_at` is the change count from before `account` was read.
    async fn sign_in(
        &self,
        account: AccountRecord,
        read_at: u64,
        now: DateTime<Utc>,
    ) -> Result<Tokens, IdentityError> {
        let secret = new_refresh_secret()?;
        let refresh_expires_at = now + self.config.refresh_token_ttl;
        self.store
            .insert_refresh_token(&RefreshTokenRecord {
                id: secret.id.clone(),
                username: account.username.clone(),
                family: secret.id.clone(),
                issued_at: now,
                expires_at: refresh_expires_at,
            })
            .await?;
        let (access, account) = self.current_access_token(account, read_at, now).await?;
        tracing::info!(username = %account.username, level = %account.level, "signed in");
        Ok(Tokens {
            access,
            refresh_token: secret.secret.clone(),
            refresh_expires_at,
            account,
        })
    }

    /// An access token for `account`, read from the store after change
    /// number `read_at`. If the account has changed since, the record may
    /// predate the change, so it is read again: a token is never issued from
    /// a record older than the latest change.
    async fn current_access_token(
        &self,
        mut account: AccountRecord,
        mut read_at: u64,
        now: DateTime<Utc>,
    ) -> Result<(IssuedToken, AccountRecord), IdentityError> {
        loop {
            if let Some(token) = self.access_token(&account, read_at, now)? {
                return Ok((token, account));
            }
            read_at = self.changes().count;
            account = self
                .store
                .get_account(&account.username)
                .await?
                .ok_or(IdentityError::Revoked)?;
        }
    }

    /// `None` if the account changed after change number `read_at`.
    fn access_token(
        &self,
        account: &AccountRecord,
        read_at: u64,
        now: DateTime<Utc>,
    ) -> Result<Option<IssuedToken>, IdentityError> {
        let allowed = allowed_clusters(&account.username, &account.grants);
        // A token for an account changed within this second is dated at
        // the change's cut-off (the next second), so that `authenticate`
        // can tell it from the tokens the change revoked; the next change
        // then moves the cut-off past it.
        let now = {
            let mut changes = self.changes();
            match changes.accounts.get_mut(&account.username) {
                Some(change) if change.number > read_at => return Ok(None),
                Some(change) => {
                    let cutoff = DateTime::from_timestamp(change.cutoff, 0).unwrap_or(now);
                    if now <= cutoff {
                        change.dated_at_cutoff = true;
                        cutoff
                    } else {
                        now
                    }
                }
                None => now,
            }
        };
        Ok(Some(self.tokens.issue_access(
            &account.username,
            account.level,
            &allowed,
            now,
        )?))
    }

    /// Exchanges a refresh token for a new pair; the presented one is used
    /// up. The new access token carries the account's current level and
    /// clusters.
    pub async fn refresh(&self, secret: &str, now: DateTime<Utc>) -> Result<Tokens, IdentityError> {
        let next = new_refresh_secret()?;
        let refresh_expires_at = now + self.config.refresh_token_ttl;
        let read_at = self.changes().count;
        match self
            .store
            .rotate_refresh_token(&refresh_id(secret), &next.id, refresh_expires_at, now)
            .await?
        {
            Rotation::Rotated {
                account,
                expires_at,
            } => {
                let (access, account) = self.current_access_token(account, read_at, now).await?;
                Ok(Tokens {
                    access,
                    refresh_token: next.secret.clone(),
                    refresh_expires_at: expires_at,
                    account,
                })
            }
            Rotation::Reused => {
                tracing::warn!("a used refresh token was presented again; its sign-in is revoked");
                Err(IdentityError::RefreshReused)
            }
            Rotation::Invalid => Err(IdentityError::RefreshInvalid),
        }
    }

    /// Revokes the sign-in the refresh token belongs to.
    pub async fn logout(&self, secret: &str, now: DateTime<Utc>) -> Result<(), IdentityError> {
        if self
            .store
            .revoke_refresh_family(&refresh_id(secret), now)
            .await?
        {
            Ok(())
        } else {
            Err(IdentityError::RefreshInvalid)
        }
    }

    /// A token for one of the caller's clusters.
    pub fn cluster_token(
        &self,
        caller: &Caller,
        cluster: &ClusterName,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, IdentityError> {
        authorize_cluster_token(caller, cluster)?;
        let username = caller
            .account
            .clone()
            .unwrap_or_else(|| Username::new(FIRST_ADMIN).expect("a valid name"));
        Ok(self
            .tokens
            .issue_cluster_token(&username, caller.level, cluster, now)?)
    }

    /// Who account `username` is now, as a signed-in caller (its level and
    /// grants as stored), for acting on its behalf later: a job's attempt
    /// gets a cluster token as its submitter. `None` is the server itself.
    pub async fn caller_of(&self, username: Option<&str>) -> Result<Caller, IdentityError> {
        let Some(username) = username else {
            return Ok(Caller::local_operator());
        };
        let username = Username::new(username)?;
        let account = self
            .store
            .get_account(&username)
            .await?
            .ok_or_else(|| IdentityError::NotFound(username.clone()))?;
        Ok(Caller {
            allowed: allowed_clusters(&account.username, &account.grants),
            account: Some(account.username),
            level: account.level,
        })
    }

    /// A new signing key (admins only); returns its id. With shared keys
    /// it goes into the database, and every server signs with it.
    pub async fn rotate_key(
        &self,
        caller: &Caller,
        now: DateTime<Utc>,
    ) -> Result<String, IdentityError> {
        authorize_admin(caller)?;
        let kid = if self.keys_shared() {
            let (kid, pem) = KeyRing::generate()?;
            let key = SigningKeyRecord {
                kid: kid.clone(),
                pem: pem.to_string(),
                active: true,
                created_at: now,
            };
            self.store.add_signing_keys(&[key], AddKeys::Always).await?;
            self.reload_keys().await?;
            kid
        } else {
            self.tokens.rotate_key()?
        };
        tracing::info!(%kid, "signing key rotated");
        Ok(kid)
    }

    /// The keys that verify tokens (admins only): which one signs, and
    /// when each was made (known for keys kept in the store).
    pub async fn keys(&self, caller: &Caller) -> Result<Vec<KeyInfo>, IdentityError> {
        authorize_admin(caller)?;
        let active = self.tokens.active_kid();
        if self.keys_shared() {
            let mut keys: Vec<KeyInfo> = self
                .store
                .signing_keys()
                .await?
                .into_iter()
                .map(|k| KeyInfo {
                    signs: k.kid == active,
                    kid: k.kid,
                    created_at: Some(k.created_at),
                })
                .collect();
            keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.kid.cmp(&b.kid)));
            Ok(keys)
        } else {
            Ok(self
                .tokens
                .kids()
                .into_iter()
                .map(|kid| KeyInfo {
                    signs: kid == active,
                    kid,
                    created_at: None,
                })
                .collect())
        }
    }

    /// Deletes a key that no longer signs (admins only), on every server
    /// when the keys are shared.
    pub async fn retire_key(
        &self,
        caller: &Caller,
        kid: &str,
        now: DateTime<Utc>,
    ) -> Result<(), IdentityError> {
        authorize_admin(caller)?;
        if self.keys_shared() {
            match self.store.retire_signing_key(kid, now).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(KeyError::UnknownKey {
                        dir: "the database".into(),
                        kid: kid.to_owned(),
                    }
                    .into())
                }
                Err(StoreError::KeyActive(kid)) => {
                    return Err(KeyError::RetireActive { kid }.into())
                }
                Err(e) => return Err(e.into()),
            }
            self.reload_keys().await?;
        } else {
            self.tokens.retire_key(kid)?;
        }
        tracing::info!(%kid, "signing key retired");
        Ok(())
    }

    pub async fn create_user(
        &self,
        caller: &Caller,
        user: NewUser,
        now: DateTime<Utc>,
    ) -> Result<AccountRecord, IdentityError> {
        authorize_admin(caller)?;
        let username = Username::new(user.username)?;
        if user.level == Level::Anonymous {
            return Err(IdentityError::AnonymousAccount);
        }
        let grants = parse_grants(&user.grants)?;
        check_password_rules(&user.password)?;
        let hash = self.hash(user.password).await?;
        let record = AccountRecord {
            username,
            kind: AccountKind::Local,
            level: user.level,
            password_hash: Some(hash),
            grants,
            created_at: now,
        };
        self.store.create_account(&record).await?;
        tracing::info!(username = %record.username, level = %record.level, "account created");
        Ok(record)
    }

    pub async fn list_users(&self, caller: &Caller) -> Result<Vec<AccountRecord>, IdentityError> {
        authorize_admin(caller)?;
        Ok(self.store.list_accounts().await?)
    }

    pub async fn get_user(
        &self,
        caller: &Caller,
        username: &str,
    ) -> Result<AccountRecord, IdentityError> {
        authorize_admin(caller)?;
        let username = Username::new(username)?;
        self.store
            .get_account(&username)
            .await?
            .ok_or(IdentityError::NotFound(username))
    }

    /// Changes an account's level and/or grants. Its access tokens issued
    /// before now are refused from now on.
    pub async fn update_user(
        &self,
        caller: &Caller,
        username: &str,
        level: Option<Level>,
        grants: Option<Vec<String>>,
        now: DateTime<Utc>,
    ) -> Result<AccountRecord, IdentityError> {
        authorize_admin(caller)?;
        let username = Username::new(username)?;
        let grants = grants.as_deref().map(parse_grants).transpose()?;
        if level == Some(Level::Anonymous) {
            return Err(IdentityError::AnonymousAccount);
        }
        let mut account = self
            .store
            .get_account(&username)
            .await?
            .ok_or_else(|| IdentityError::NotFound(username.clone()))?;
        // Each change revokes the account's earlier tokens as soon as it is
        // stored, so a failure of the next one cannot leave a stale token.
        if let Some(level) = level {
            account = self
                .store
                .set_level(&username, level)
                .await?
                .ok_or_else(|| IdentityError::NotFound(username.clone()))?;
            self.mark_changed(&username, now);
        }
        if let Some(grants) = grants {
            account = self
                .store
                .set_grants(&username, &grants)
                .await?
                .ok_or_else(|| IdentityError::NotFound(username.clone()))?;
            self.mark_changed(&username, now);
        }
        tracing::info!(%username, level = %account.level, "account changed");
        Ok(account)
    }

    /// Removes an account, its grants and every sign-in.
    pub async fn delete_user(
        &self,
        caller: &Caller,
        username: &str,
        now: DateTime<Utc>,
    ) -> Result<(), IdentityError> {
        authorize_admin(caller)?;
        let username = Username::new(username)?;
        if !self.store.delete_account(&username).await? {
            return Err(IdentityError::NotFound(username));
        }
        self.mark_changed(&username, now);
        tracing::info!(%username, "account removed");
        Ok(())
    }

    async fn hash(&self, password: String) -> Result<String, IdentityError> {
        self.hashing
            .run(move |memory| hash_password(&password, memory))
            .await?
            .map_err(IdentityError::from)
    }

    fn changes(&self) -> std::sync::MutexGuard<'_, Changes> {
        self.changed.lock().expect("not poisoned")
    }

    /// An account changed at `at`, possibly on another server sharing the
    /// database (the change feed says so): its access tokens issued before
    /// then are refused from now on, as on the server that made the change.
    /// A change this server made and marked already changes nothing here.
    pub fn account_changed(&self, username: &Username, at: DateTime<Utc>) {
        let cutoff = at.timestamp() + 1;
        let mut changes = self.changes();
        if changes
            .accounts
            .get(username)
            .is_some_and(|c| c.cutoff >= cutoff)
        {
            return;
        }
        changes.count += 1;
        let number = changes.count;
        changes.accounts.insert(
            username.clone(),
            Change {
                cutoff,
                number,
                dated_at_cutoff: false,
            },
        );
    }

    fn mark_changed(&self, username: &Username, now: DateTime<Utc>) {
        // A token issued in this same second is refused too: iat has whole
        // seconds, so the one after is the first that is surely newer. A
        // token dated at an earlier change's cut-off (a sign-in between two
        // changes within one second) is as old as that cut-off, so the
        // cut-off moves past it.
        let mut changes = self.changes();
        changes.count += 1;
        let number = changes.count;
        let mut cutoff = now.timestamp() + 1;
        if let Some(previous) = changes.accounts.get(username) {
            if previous.dated_at_cutoff {
                cutoff = cutoff.max(previous.cutoff + 1);
            } else {
                cutoff = cutoff.max(previous.cutoff);
            }
        }
        changes.accounts.insert(
            username.clone(),
            Change {
                cutoff,
                number,
                dated_at_cutoff: false,
            },
        );
    }
}

/// The key ring of keys the database keeps.
pub fn stored_key_ring(stored: &[SigningKeyRecord]) -> Result<KeyRing, KeyError> {
    let keys: Vec<(&str, &str, bool)> = stored
        .iter()
        .map(|k| (k.kid.as_str(), k.pem.as_str(), k.active))
        .collect();
    KeyRing::from_pems(&keys)
}

/// The account changes tokens are checked against.
#[derive(Default)]
struct Changes {
    /// Changes so far; a sign-in notes it before reading the account.
    count: u64,
    accounts: HashMap<Username, Change>,
}

struct Change {
    /// Access tokens issued (`iat`) before this are refused.
    cutoff: i64,
    /// Which change this was (see [`Changes::count`]).
    number: u64,
    /// Whether a token dated at `cutoff` has been issued since.
    dated_at_cutoff: bool,
}

fn parse_grants(grants: &[String]) -> Result<BTreeSet<ClusterName>, IdentityError> {
    grants
        .iter()
        .map(|g| ClusterName::new(g.as_str()).map_err(IdentityError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashers_keep_one_memory_each_and_refuse_when_busy_too_long() {
        let hashers = Arc::new(Hashers::new(2, Duration::from_secs(30)));
        let mut runs = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let h = hashers.clone();
            runs.spawn(async move {
                h.run(|_memory| std::thread::sleep(Duration::from_millis(5)))
                    .await
            });
        }
        while let Some(r) = runs.join_next().await {
            r.unwrap().unwrap();
        }
        assert_eq!(hashers.memory.lock().unwrap().len(), 2, "two kept, no more");

        let busy = Arc::new(Hashers::new(1, Duration::from_millis(50)));
        let holder = {
            let busy = busy.clone();
            tokio::spawn(async move {
                busy.run(|_| std::thread::sleep(Duration::from_millis(500)))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(matches!(busy.run(|_| ()).await, Err(IdentityError::Busy)));
        holder.await.unwrap().unwrap();
        busy.run(|_| ()).await.unwrap();
    }
}

/// A key that verifies tokens, as `keys` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub kid: String,
    /// The key new tokens are signed with.
    pub signs: bool,
    pub created_at: Option<DateTime<Utc>>,
}
