//! Accounts, grants and refresh tokens: what identity keeps durably.

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{AccountKind, ChangeKind, ClusterName, Level, NewChange, Username};

use crate::{AddKeys, SigningKeyRecord, StoreError};

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    pub username: Username,
    pub kind: AccountKind,
    pub level: Level,
    /// The argon2id PHC string of a local account's password; `None` for
    /// GitHub accounts, which have no password here.
    pub password_hash: Option<String>,
    /// Clusters an admin granted beyond the account's own.
    pub grants: BTreeSet<ClusterName>,
    pub created_at: DateTime<Utc>,
}

/// The change feed's entry for an account: its level and grants, never its
/// password hash.
pub fn account_change(kind: ChangeKind, account: &AccountRecord) -> NewChange {
    NewChange {
        kind,
        key: account.username.to_string(),
        payload: serde_json::json!({
            "kind": account.kind.as_str(),
            "level": account.level.as_str(),
            "grants": account.grants.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        }),
    }
}

/// The change feed's entry for an organisation that lost `username` (a
/// member, owner or applicant) because the account was deleted.
pub fn left_with_account(org: &str, username: &Username) -> NewChange {
    NewChange {
        kind: ChangeKind::Org(flotilla_domain::OrgEventKind::MemberRemoved),
        key: org.to_owned(),
        payload: serde_json::json!({
            "message": format!("{username} left with the deletion of their account"),
        }),
    }
}

/// One refresh token. Only the SHA-256 of its secret is stored, so a copy
/// of the database does not let anyone sign in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenRecord {
    /// Hex SHA-256 of the secret the client holds.
    pub id: String,
    pub username: Username,
    /// Every token obtained by rotating one login's token shares its family,
    /// so reuse of a rotated token revokes them all.
    pub family: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was live: it is now used up and `next` replaces it, until
    /// `expires_at`.
    Rotated {
        account: AccountRecord,
        expires_at: DateTime<Utc>,
    },
    /// The token had already been rotated: someone replayed it, so its whole
    /// family is now revoked.
    Reused,
    /// Unknown, expired or revoked (including by the account's deletion).
    Invalid,
}

#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Creates an account; `AccountExists` if the username is taken (by an
    /// account of either kind), changing nothing.
    async fn create_account(&self, account: &AccountRecord) -> Result<(), StoreError>;

    /// Creates `account` (an admin) only if no admin exists yet, atomically,
    /// so that two servers starting at once create one. True if created.
    async fn create_first_admin(&self, account: &AccountRecord) -> Result<bool, StoreError>;

    async fn get_account(&self, username: &Username) -> Result<Option<AccountRecord>, StoreError>;

    /// Every account, ordered by username.
    async fn list_accounts(&self) -> Result<Vec<AccountRecord>, StoreError>;

    /// `None` if there is no such account. `LastAdmin`, changing nothing,
    /// if it is the only admin and `level` is not admin: once there is an
    /// admin there always is one, however changes race.
    async fn set_level(
        &self,
        username: &Username,
        level: Level,
    ) -> Result<Option<AccountRecord>, StoreError>;

    /// Replaces the account's grants. `None` if there is no such account.
    async fn set_grants(
        &self,
        username: &Username,
        grants: &BTreeSet<ClusterName>,
    ) -> Result<Option<AccountRecord>, StoreError>;

    /// Deletes the account with its grants and refresh tokens. False if
    /// there was no such account; `LastAdmin`, changing nothing, if it is
    /// the only admin.
    async fn delete_account(&self, username: &Username) -> Result<bool, StoreError>;

    /// A GitHub sign-in, atomically: creates the GitHub account at `level`,
    /// or sets an existing GitHub account's level to `level` unless an admin
    /// made it an admin (then it stays admin). `AccountExists` if a local
    /// account has the name, changing nothing.
    async fn upsert_github_account(
        &self,
        username: &Username,
        level: Level,
        now: DateTime<Utc>,
    ) -> Result<AccountRecord, StoreError>;

    /// Stores a new token (a login's first, starting a family).
    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> Result<(), StoreError>;

    /// Presents the token whose id is `presented` at `now`, atomically: if it
    /// is live it is marked used and `next` (same username and family,
    /// filled in by the store from the presented token) is stored. `next`
    /// expires at `next_expires_at` or when the presented token would have,
    /// whichever is earlier: a sign-in lasts no longer than its first token,
    /// however often it is refreshed.
    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next_id: &str,
        next_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Rotation, StoreError>;

    /// Revokes the family of the token whose id is `presented` (logout).
    /// False if there was no such token.
    async fn revoke_refresh_family(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Revokes every refresh token of `username`; returns how many were live.
    async fn revoke_refresh_tokens(
        &self,
        username: &Username,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Every signing key, oldest first.
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;

    /// Adds `keys` in one transaction (see [`AddKeys`]); a key marked
    /// active becomes the only active one. Keys already stored are left as
    /// they are. Returns whether anything was added. Recorded in the
    /// change feed, so every server reloads its keys.
    async fn add_signing_keys(
        &self,
        keys: &[SigningKeyRecord],
        how: AddKeys,
    ) -> Result<bool, StoreError>;

    /// Deletes a key that no longer signs. False if there is no such key;
    /// refused (`KeyActive`) if it is the active one.
    async fn retire_signing_key(&self, kid: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;
}
