//! An in-memory store: the same contract as SQLite, no I/O. For engine
//! tests under paused time (where real I/O would let tokio's clock jump)
//! and for simulations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{
    AccountKind, ClusterName, ClusterRecord, DeployCommand, InstanceSetId, Level, Username,
};
use sqlx::error::{DatabaseError, ErrorKind};

use crate::{AccountRecord, AccountStore, RefreshTokenRecord, Rotation, Store, StoreError};

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    clusters: BTreeMap<ClusterName, ClusterRecord>,
    sets: BTreeMap<String, InstanceSetId>,
    accounts: BTreeMap<Username, AccountRecord>,
    refresh_tokens: BTreeMap<String, StoredToken>,
}

struct StoredToken {
    token: RefreshTokenRecord,
    used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl StoredToken {
    fn live(&self, now: DateTime<Utc>) -> bool {
        self.used_at.is_none() && self.revoked_at.is_none() && self.token.expires_at > now
    }
}

impl Inner {
    /// `LastAdmin` if `username` is the only admin.
    fn refuse_last_admin(&self, username: &Username) -> Result<(), StoreError> {
        let is_admin = |a: &AccountRecord| a.level == Level::Admin;
        let target_is_admin = self.accounts.get(username).is_some_and(is_admin);
        if target_is_admin && self.accounts.values().filter(|a| is_admin(a)).count() == 1 {
            return Err(StoreError::LastAdmin(username.clone()));
        }
        Ok(())
    }

    fn account_exists(&self, username: &Username) -> Option<StoreError> {
        self.accounts
            .get(username)
            .map(|existing| StoreError::AccountExists {
                username: username.clone(),
                kind: existing.kind,
            })
    }

    /// The checks SQLite's constraints make on a new refresh token, with the
    /// same error kinds, so callers see one behaviour on either store.
    fn check_new_token(&self, id: &str, username: &Username) -> Result<(), StoreError> {
        if self.refresh_tokens.contains_key(id) {
            return Err(Violation::error(
                Constraint::Unique,
                format!("refresh token {id:?} already exists"),
            ));
        }
        if !self.accounts.contains_key(username) {
            return Err(Violation::error(
                Constraint::ForeignKey,
                format!("refresh token {id:?} names no account ({username})"),
            ));
        }
        Ok(())
    }

    /// Revokes every token of `family` not revoked yet.
    fn revoke_family(&mut self, family: &str, now: DateTime<Utc>) {
        for stored in self.refresh_tokens.values_mut() {
            if stored.token.family == family && stored.revoked_at.is_none() {
                stored.revoked_at = Some(now);
            }
        }
    }
}

/// A constraint violation, as SQLite would report it.
#[derive(Debug)]
struct Violation {
    kind: Constraint,
    message: String,
}

/// `sqlx::error::ErrorKind` is neither `Copy` nor `Clone`.
#[derive(Debug, Clone, Copy)]
enum Constraint {
    Unique,
    ForeignKey,
}

impl Violation {
    fn error(kind: Constraint, message: String) -> StoreError {
        StoreError::Database(sqlx::Error::Database(Box::new(Violation { kind, message })))
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Violation {}

impl DatabaseError for Violation {
    fn message(&self) -> &str {
        &self.message
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        match self.kind {
            Constraint::Unique => ErrorKind::UniqueViolation,
            Constraint::ForeignKey => ErrorKind::ForeignKeyViolation,
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn instance_set_id(&self, driver: &str) -> Result<InstanceSetId, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let n = inner.sets.len();
        Ok(inner
            .sets
            .entry(driver.to_owned())
            .or_insert_with(|| InstanceSetId::new(format!("mem-{n}")).expect("valid"))
            .clone())
    }

    async fn get_cluster(&self, name: &ClusterName) -> Result<Option<ClusterRecord>, StoreError> {
        Ok(self.inner.lock().unwrap().clusters.get(name).cloned())
    }

    async fn list_clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .clusters
            .values()
            .cloned()
            .collect())
    }

    async fn deploy(
        &self,
        command: &DeployCommand,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<ClusterRecord, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let record = match inner.clusters.get(&command.cluster) {
            Some(old) => {
                if let Some(conflict) = StoreError::fixed_field_conflict(old, command) {
                    return Err(conflict);
                }
                ClusterRecord {
                    node_capacity: command.node_capacity,
                    expires_at: Some(expires_at),
                    destroying: false,
                    updated_at: now,
                    generation: old.generation + 1,
                    ..old.clone()
                }
            }
            None => ClusterRecord {
                name: command.cluster.clone(),
                is_public: command.is_public,
                node_capacity: command.node_capacity,
                pool: command.pool.clone(),
                expires_at: Some(expires_at),
                destroying: false,
                created_at: now,
                updated_at: now,
                generation: 1,
            },
        };
        inner.clusters.insert(record.name.clone(), record.clone());
        Ok(record)
    }

    async fn destroy(
        &self,
        name: &ClusterName,
        now: DateTime<Utc>,
    ) -> Result<Option<ClusterRecord>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        Ok(inner.clusters.get_mut(name).map(|r| {
            r.destroying = true;
            r.expires_at = None;
            r.updated_at = now;
            r.generation += 1;
            r.clone()
        }))
    }

    async fn expire_due(&self, now: DateTime<Utc>) -> Result<Vec<ClusterRecord>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let mut fired = Vec::new();
        for r in inner.clusters.values_mut() {
            if r.expires_at.is_some_and(|at| at <= now) {
                r.destroying = true;
                r.expires_at = None;
                r.updated_at = now;
                r.generation += 1;
                fired.push(r.clone());
            }
        }
        Ok(fired)
    }

    async fn next_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .clusters
            .values()
            .filter_map(|r| r.expires_at)
            .min())
    }

    async fn forget(&self, name: &ClusterName, generation: i64) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let matches = inner
            .clusters
            .get(name)
            .is_some_and(|r| r.destroying && r.generation == generation);
        if matches {
            inner.clusters.remove(name);
        }
        Ok(matches)
    }
}

#[async_trait]
impl AccountStore for MemoryStore {
    async fn create_account(&self, account: &AccountRecord) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(exists) = inner.account_exists(&account.username) {
            return Err(exists);
        }
        inner
            .accounts
            .insert(account.username.clone(), account.clone());
        Ok(())
    }

    async fn create_first_admin(&self, account: &AccountRecord) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.accounts.values().any(|a| a.level == Level::Admin) {
            return Ok(false);
        }
        if let Some(exists) = inner.account_exists(&account.username) {
            return Err(exists);
        }
        inner
            .accounts
            .insert(account.username.clone(), account.clone());
        Ok(true)
    }

    async fn get_account(&self, username: &Username) -> Result<Option<AccountRecord>, StoreError> {
        Ok(self.inner.lock().unwrap().accounts.get(username).cloned())
    }

    async fn list_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .accounts
            .values()
            .cloned()
            .collect())
    }

    async fn set_level(
        &self,
        username: &Username,
        level: Level,
    ) -> Result<Option<AccountRecord>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        if level != Level::Admin {
            inner.refuse_last_admin(username)?;
        }
        Ok(inner.accounts.get_mut(username).map(|a| {
            a.level = level;
            a.clone()
        }))
    }

    async fn set_grants(
        &self,
        username: &Username,
        grants: &BTreeSet<ClusterName>,
    ) -> Result<Option<AccountRecord>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        Ok(inner.accounts.get_mut(username).map(|a| {
            a.grants = grants.clone();
            a.clone()
        }))
    }

    async fn delete_account(&self, username: &Username) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.refuse_last_admin(username)?;
        if inner.accounts.remove(username).is_none() {
            return Ok(false);
        }
        // As ON DELETE CASCADE does on SQLite.
        inner
            .refresh_tokens
            .retain(|_, stored| &stored.token.username != username);
        Ok(true)
    }

    async fn upsert_github_account(
        &self,
        username: &Username,
        level: Level,
        now: DateTime<Utc>,
    ) -> Result<AccountRecord, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        match inner.accounts.get_mut(username) {
            Some(existing) if existing.kind == AccountKind::Github => {
                if existing.level != Level::Admin {
                    existing.level = level;
                }
                Ok(existing.clone())
            }
            Some(existing) => Err(StoreError::AccountExists {
                username: username.clone(),
                kind: existing.kind,
            }),
            None => {
                let account = AccountRecord {
                    username: username.clone(),
                    kind: AccountKind::Github,
                    level,
                    password_hash: None,
                    grants: BTreeSet::new(),
                    created_at: now,
                };
                inner.accounts.insert(username.clone(), account.clone());
                Ok(account)
            }
        }
    }

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_new_token(&token.id, &token.username)?;
        inner.refresh_tokens.insert(
            token.id.clone(),
            StoredToken {
                token: token.clone(),
                used_at: None,
                revoked_at: None,
            },
        );
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next_id: &str,
        next_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Rotation, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let Some(stored) = inner.refresh_tokens.get(presented) else {
            return Ok(Rotation::Invalid);
        };
        if stored.revoked_at.is_some() || stored.token.expires_at <= now {
            return Ok(Rotation::Invalid);
        }
        if stored.used_at.is_some() {
            let family = stored.token.family.clone();
            inner.revoke_family(&family, now);
            return Ok(Rotation::Reused);
        }
        let next = RefreshTokenRecord {
            id: next_id.to_owned(),
            issued_at: now,
            expires_at: next_expires_at.min(stored.token.expires_at),
            ..stored.token.clone()
        };
        inner.check_new_token(&next.id, &next.username)?;
        let account = inner.accounts.get(&next.username).cloned().ok_or_else(|| {
            StoreError::Corrupt(format!(
                "refresh token {presented:?} outlived its account {}",
                next.username
            ))
        })?;
        if let Some(stored) = inner.refresh_tokens.get_mut(presented) {
            stored.used_at = Some(now);
        }
        let expires_at = next.expires_at;
        inner.refresh_tokens.insert(
            next.id.clone(),
            StoredToken {
                token: next,
                used_at: None,
                revoked_at: None,
            },
        );
        Ok(Rotation::Rotated {
            account,
            expires_at,
        })
    }

    async fn revoke_refresh_family(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let Some(family) = inner
            .refresh_tokens
            .get(presented)
            .map(|stored| stored.token.family.clone())
        else {
            return Ok(false);
        };
        inner.revoke_family(&family, now);
        Ok(true)
    }

    async fn revoke_refresh_tokens(
        &self,
        username: &Username,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let mut live = 0;
        for stored in inner.refresh_tokens.values_mut() {
            if &stored.token.username != username || stored.revoked_at.is_some() {
                continue;
            }
            if stored.live(now) {
                live += 1;
            }
            stored.revoked_at = Some(now);
        }
        Ok(live)
    }
}
