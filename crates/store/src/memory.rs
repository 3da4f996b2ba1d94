//! An in-memory store: the same contract as SQLite, no I/O. For engine
//! tests under paused time (where real I/O would let tokio's clock jump)
//! and for simulations.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use flotilla_domain::{
    org_changes, target_record, with_daily_spend, AccountKind, Change, ChangeEntity, ChangeKind,
    ClusterName, ClusterRecord, CostRow, DeployCommand, InstanceId, InstanceSetId, LedgerEntry,
    Level, Money, NewChange, NodeMeter, NodeRecord, Obstacle, OrgError, OrgEvent, OrgName,
    Organisation, PoolError, PoolErrorKey, PoolName, Username,
};

use crate::orgs::{OrgChange, OrgChanged, OrgStore, OrgUsage};
use crate::{
    account_change, keys_change, left_with_account, AccountRecord, AccountStore, AddKeys,
    ChangeFeed, ClusterNodes, ClusterObstacle, Fence, Lease, LeaseStore, RefreshTokenRecord,
    Rotation, SigningKeyRecord, Store, StoreError,
};
use crate::{pool_change, PoolRecord, PoolStore, PoolWrite};

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
    orgs: BTreeMap<OrgName, Organisation>,
    ledger: Vec<(OrgName, LedgerEntry)>,
    costs: BTreeMap<(OrgName, ClusterName, NaiveDate, Option<Username>), Money>,
    changes: Vec<Change>,
    last_seq: i64,
    lease: Option<Lease>,
    keys: Vec<SigningKeyRecord>,
    notices: tokio::sync::watch::Sender<u64>,
    /// Published nodes by cluster.
    nodes: BTreeMap<ClusterName, Vec<NodeRecord>>,
    meters: BTreeMap<(ClusterName, InstanceId), NodeMeter>,
    obstacles: BTreeMap<ClusterName, Obstacle>,
    pool_errors: BTreeMap<PoolErrorKey, PoolError>,
    pools: BTreeMap<PoolName, Vec<PoolRecord>>,
    rollout_holds: BTreeMap<PoolName, crate::RolloutHold>,
    shared_configs: BTreeMap<flotilla_domain::SharedConfigName, Vec<crate::SharedConfigRecord>>,
    jobs: BTreeMap<crate::JobId, crate::JobRecord>,
    schedules: BTreeMap<String, flotilla_domain::Schedule>,
    triggers: BTreeMap<(String, String), crate::HandledTrigger>,
    subscriptions: BTreeMap<i64, crate::Subscription>,
    last_subscription: i64,
    deliveries: BTreeMap<i64, crate::Delivery>,
    last_delivery: i64,
    notify_cursor: Option<i64>,
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
    /// Appends to the change feed.
    fn record(&mut self, change: NewChange, at: DateTime<Utc>) {
        self.last_seq += 1;
        self.changes.push(Change {
            seq: self.last_seq,
            kind: change.kind,
            key: change.key,
            at,
            payload: change.payload,
        });
        self.notices.send_modify(|n| *n += 1);
    }

    /// `Fenced` unless `fence` is the current term.
    /// `pool`'s held rollout, held by nothing yet if it was not.
    fn rollout_hold(&mut self, pool: &PoolName) -> &mut crate::RolloutHold {
        self.rollout_holds
            .entry(pool.clone())
            .or_insert_with(|| crate::RolloutHold {
                pool: pool.clone(),
                paused: None,
                stopped: None,
            })
    }

    /// Makes `writes`: meters added (one on record kept as it is) and
    /// changed, and their ledger notes.
    fn write_meters(&mut self, writes: crate::meters::MeterWrites) {
        for m in writes.add {
            self.meters
                .entry((m.cluster.clone(), m.id.clone()))
                .or_insert(m);
        }
        for m in writes.changed {
            self.meters.insert((m.cluster.clone(), m.id.clone()), m);
        }
        self.ledger.extend(writes.notes);
    }

    fn check_fence(&self, fence: Fence) -> Result<(), StoreError> {
        let current = self.lease.as_ref().map_or(0, |l| l.epoch);
        if current != fence.0 {
            return Err(StoreError::Fenced { fence, current });
        }
        Ok(())
    }

    fn record_account(&mut self, kind: ChangeKind, account: &AccountRecord, at: DateTime<Utc>) {
        self.record(account_change(kind, account), at);
    }

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
            return Err(StoreError::Duplicate(format!(
                "refresh token {id:?} already exists"
            )));
        }
        if !self.accounts.contains_key(username) {
            return Err(StoreError::NotFound(format!(
                "refresh token {id:?} names no account ({username})"
            )));
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
                is_public: command.new_public(),
                node_capacity: command.node_capacity,
                pool: command.new_pool().clone(),
                workload: command.workload.clone(),
                expires_at: Some(expires_at),
                destroying: false,
                created_at: now,
                updated_at: now,
                generation: 1,
            },
        };
        let kind = ChangeKind::of_deploy(inner.clusters.get(&command.cluster), &record);
        inner.clusters.insert(record.name.clone(), record.clone());
        inner.record(NewChange::cluster(kind, &record), now);
        Ok(record)
    }

    async fn extend(
        &self,
        name: &ClusterName,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<ClusterRecord>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let record = inner
            .clusters
            .get_mut(name)
            .filter(|r| !r.destroying)
            .map(|r| {
                r.expires_at = Some(expires_at);
                r.updated_at = now;
                r.generation += 1;
                r.clone()
            });
        if let Some(r) = &record {
            inner.record(NewChange::cluster(ChangeKind::ClusterExtended, r), now);
        }
        Ok(record)
    }

    async fn destroy(
        &self,
        name: &ClusterName,
        now: DateTime<Utc>,
    ) -> Result<Option<ClusterRecord>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let record = inner.clusters.get_mut(name).map(|r| {
            r.destroying = true;
            r.expires_at = None;
            r.updated_at = now;
            r.generation += 1;
            r.clone()
        });
        if let Some(r) = &record {
            inner.record(NewChange::cluster(ChangeKind::ClusterDestroyed, r), now);
        }
        Ok(record)
    }

    async fn expire_due(
        &self,
        now: DateTime<Utc>,
        fence: Fence,
    ) -> Result<Vec<ClusterRecord>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_fence(fence)?;
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
        for r in &fired {
            inner.record(NewChange::cluster(ChangeKind::ClusterExpired, r), now);
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

    async fn forget(
        &self,
        name: &ClusterName,
        generation: i64,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_fence(fence)?;
        let matches = inner
            .clusters
            .get(name)
            .is_some_and(|r| r.destroying && r.generation == generation);
        if matches {
            inner.clusters.remove(name);
            inner.nodes.remove(name);
            inner.obstacles.remove(name);
            inner.record(
                NewChange::cluster_gone(ChangeKind::ClusterForgotten, name.as_str()),
                Utc::now(),
            );
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
        inner.record_account(ChangeKind::AccountCreated, account, account.created_at);
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
        inner.record_account(ChangeKind::AccountCreated, account, account.created_at);
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
        let account = inner.accounts.get_mut(username).map(|a| {
            a.level = level;
            a.clone()
        });
        if let Some(a) = &account {
            inner.record_account(ChangeKind::AccountChanged, a, Utc::now());
        }
        Ok(account)
    }

    async fn set_grants(
        &self,
        username: &Username,
        grants: &BTreeSet<ClusterName>,
    ) -> Result<Option<AccountRecord>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let account = inner.accounts.get_mut(username).map(|a| {
            a.grants = grants.clone();
            a.clone()
        });
        if let Some(a) = &account {
            inner.record_account(ChangeKind::AccountChanged, a, Utc::now());
        }
        Ok(account)
    }

    async fn delete_account(&self, username: &Username) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.refuse_last_admin(username)?;
        let Some(removed) = inner.accounts.remove(username) else {
            return Ok(false);
        };
        let gone: Vec<i64> = inner
            .subscriptions
            .values()
            .filter(|s| s.account == username.as_str())
            .map(|s| s.id)
            .collect();
        inner
            .subscriptions
            .retain(|_, s| s.account != username.as_str());
        inner.deliveries.retain(|_, d| {
            !(gone.contains(&d.subscription) && d.state == flotilla_domain::DeliveryState::Pending)
        });
        let now = Utc::now();
        inner.record_account(ChangeKind::AccountDeleted, &removed, now);
        let left: Vec<OrgName> = inner
            .orgs
            .values()
            .filter(|o| o.members.contains_key(username) || o.pending.contains_key(username))
            .map(|o| o.name.clone())
            .collect();
        for org in left {
            inner.record(left_with_account(org.as_str(), username), now);
        }
        // As ON DELETE CASCADE does on SQLite.
        for org in inner.orgs.values_mut() {
            org.members.remove(username);
            org.pending.remove(username);
        }
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
                let changed = existing.level != Level::Admin && existing.level != level;
                if changed {
                    existing.level = level;
                }
                let account = existing.clone();
                if changed {
                    inner.record_account(ChangeKind::AccountChanged, &account, now);
                }
                Ok(account)
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
                inner.record_account(ChangeKind::AccountCreated, &account, now);
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

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        Ok(self.inner.lock().unwrap().keys.clone())
    }

    async fn add_signing_keys(
        &self,
        keys: &[SigningKeyRecord],
        how: AddKeys,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        if how == AddKeys::IfNone && !inner.keys.is_empty() {
            return Ok(false);
        }
        let new: Vec<&SigningKeyRecord> = keys
            .iter()
            .filter(|k| !inner.keys.iter().any(|s| s.kid == k.kid))
            .collect();
        if new.is_empty() {
            return Ok(false);
        }
        if new.iter().any(|k| k.active) {
            for k in &mut inner.keys {
                k.active = false;
            }
        }
        let at = new.iter().map(|k| k.created_at).max().unwrap_or_default();
        for k in new {
            inner.keys.push(k.clone());
            inner.record(keys_change(&k.kid), at);
        }
        Ok(true)
    }

    async fn retire_signing_key(&self, kid: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        match inner.keys.iter().position(|k| k.kid == kid) {
            None => Ok(false),
            Some(i) if inner.keys[i].active => Err(StoreError::KeyActive(kid.to_owned())),
            Some(i) => {
                inner.keys.remove(i);
                inner.record(keys_change(kid), now);
                Ok(true)
            }
        }
    }
}

impl Inner {
    /// Records what a change did: the new state, its ledger entries and
    /// events, and the cluster record its target calls for.
    fn record_change(
        &mut self,
        org: Organisation,
        effects: flotilla_domain::Effects,
        now: DateTime<Utc>,
    ) -> OrgChanged {
        let name = org.name.clone();
        for entry in &effects.ledger {
            self.ledger.push((name.clone(), entry.clone()));
        }
        let mut cluster = None;
        let mut before = None;
        if let Some(target) = effects.cluster {
            before = self.clusters.get(org.cluster()).cloned();
            if let Some(record) = target_record(before.as_ref(), &org, target, now) {
                self.clusters.insert(record.name.clone(), record.clone());
                cluster = Some(record);
            }
        }
        for change in org_changes(
            name.as_str(),
            &effects.events,
            before.as_ref(),
            cluster.as_ref(),
        ) {
            self.record(change, now);
        }
        self.orgs.insert(name, org.clone());
        OrgChanged {
            org,
            effects,
            cluster,
        }
    }
}

#[async_trait]
impl OrgStore for MemoryStore {
    async fn create_org(&self, org: &Organisation) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.orgs.contains_key(&org.name) {
            return Err(OrgError::Exists(org.name.clone()).into());
        }
        if let Ok(user) = Username::new(org.name.as_str()) {
            if inner.accounts.contains_key(&user) {
                return Err(OrgError::NameTaken {
                    name: org.name.clone(),
                }
                .into());
            }
        }
        if inner.clusters.contains_key(org.cluster()) {
            return Err(OrgError::ClusterExists(org.name.clone()).into());
        }
        if let Some(u) = org
            .members
            .keys()
            .chain(org.pending.keys())
            .find(|u| !inner.accounts.contains_key(*u))
        {
            return Err(OrgError::UnknownAccount(u.clone()).into());
        }
        let effects = org.opening();
        inner.record_change(org.clone(), effects, org.created_at);
        Ok(())
    }

    async fn get_org(&self, name: &OrgName) -> Result<Option<Organisation>, StoreError> {
        Ok(self.inner.lock().unwrap().orgs.get(name).cloned())
    }

    async fn list_orgs(&self) -> Result<Vec<Organisation>, StoreError> {
        Ok(self.inner.lock().unwrap().orgs.values().cloned().collect())
    }

    async fn change_org(
        &self,
        name: &OrgName,
        now: DateTime<Utc>,
        change: OrgChange<'_>,
    ) -> Result<OrgChanged, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let mut org = inner
            .orgs
            .get(name)
            .cloned()
            .ok_or_else(|| OrgError::Unknown(name.clone()))?;
        let effects = change(&mut org)?;
        if let Some(u) = org
            .members
            .keys()
            .chain(org.pending.keys())
            .find(|u| !inner.accounts.contains_key(*u))
        {
            return Err(OrgError::UnknownAccount(u.clone()).into());
        }
        Ok(inner.record_change(org, effects, now))
    }

    async fn expire_capacity(
        &self,
        now: DateTime<Utc>,
        fence: Fence,
    ) -> Result<Vec<OrgChanged>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_fence(fence)?;
        let due: Vec<Organisation> = inner
            .orgs
            .values()
            .filter(|o| o.requests.iter().any(|r| r.expires_at <= now))
            .cloned()
            .collect();
        Ok(due
            .into_iter()
            .map(|mut org| {
                let effects = org.expire_requests(now);
                inner.record_change(org, effects, now)
            })
            .collect())
    }

    async fn next_capacity_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .orgs
            .values()
            .flat_map(|o| o.requests.iter().map(|r| r.expires_at))
            .min())
    }

    async fn accrue(
        &self,
        usage: &[OrgUsage],
        now: DateTime<Utc>,
        fence: Fence,
    ) -> Result<Vec<OrgChanged>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_fence(fence)?;
        for u in usage {
            if !inner.orgs.contains_key(&u.org) {
                continue;
            }
            for n in &u.nodes {
                inner
                    .meters
                    .entry((u.org.clone(), n.id.clone()))
                    .or_insert_with(|| {
                        NodeMeter::new(u.org.clone(), n.id.clone(), n.launched_at, n.price_per_hour)
                    });
            }
        }
        let names: Vec<OrgName> = inner.orgs.keys().cloned().collect();
        let mut unsettled: BTreeMap<OrgName, Vec<NodeMeter>> = BTreeMap::new();
        for m in inner.meters.values().filter(|m| !m.settled()) {
            unsettled
                .entry(m.cluster.clone())
                .or_default()
                .push(m.clone());
        }
        let mut changed = Vec::new();
        for name in names {
            let mut org = inner.orgs[&name].clone();
            let mut meters = unsettled.remove(&name).unwrap_or_default();
            let accrual = org.accrue(&mut meters, now);
            for m in meters {
                inner.meters.insert((m.cluster.clone(), m.id.clone()), m);
            }
            for charge in &accrual.charges {
                *inner
                    .costs
                    .entry((
                        name.clone(),
                        org.cluster().clone(),
                        charge.day,
                        charge.user.clone(),
                    ))
                    .or_default() += charge.amount;
            }
            let eventful = accrual.effects != flotilla_domain::Effects::default();
            let done = inner.record_change(org, accrual.effects, now);
            if eventful {
                changed.push(done);
            }
        }
        Ok(changed)
    }

    async fn ledger(&self, org: &OrgName) -> Result<Vec<LedgerEntry>, StoreError> {
        let entries: Vec<LedgerEntry> = {
            let inner = self.inner.lock().unwrap();
            inner
                .ledger
                .iter()
                .filter(|(o, _)| o == org)
                .map(|(_, e)| e.clone())
                .collect()
        };
        let until = self.get_org(org).await?.and_then(|o| o.accrued_until);
        Ok(with_daily_spend(entries, &self.costs(org).await?, until))
    }

    async fn usage(&self, org: &OrgName) -> Result<Vec<NodeMeter>, StoreError> {
        let inner = self.inner.lock().unwrap();
        let mut meters: Vec<NodeMeter> = inner
            .meters
            .values()
            .filter(|m| &m.cluster == org)
            .cloned()
            .collect();
        meters.sort_by(|a, b| a.launched_at.cmp(&b.launched_at).then(a.id.cmp(&b.id)));
        Ok(meters)
    }

    async fn costs(&self, org: &OrgName) -> Result<Vec<CostRow>, StoreError> {
        let inner = self.inner.lock().unwrap();
        let mut rows: Vec<CostRow> = inner
            .costs
            .iter()
            .filter(|((o, ..), _)| o == org)
            .map(|((_, cluster, day, user), amount)| CostRow {
                cluster: cluster.clone(),
                user: user.clone(),
                day: *day,
                amount: *amount,
            })
            .collect();
        rows.sort_by(|a, b| (a.day, &a.cluster, &a.user).cmp(&(b.day, &b.cluster, &b.user)));
        Ok(rows)
    }

    async fn events(&self, org: &OrgName, limit: usize) -> Result<Vec<OrgEvent>, StoreError> {
        let inner = self.inner.lock().unwrap();
        let events: Vec<OrgEvent> = inner
            .changes
            .iter()
            .filter(|c| c.key == org.as_str())
            .filter_map(Change::org_event)
            .collect();
        Ok(events[events.len().saturating_sub(limit)..].to_vec())
    }
}

#[async_trait]
impl ChangeFeed for MemoryStore {
    fn change_notices(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.lock().unwrap().notices.subscribe()
    }

    async fn changes(
        &self,
        after: i64,
        limit: usize,
        only: Option<(ChangeEntity, &str)>,
    ) -> Result<Vec<Change>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .changes
            .iter()
            .filter(|c| c.seq > after)
            .filter(|c| only.is_none_or(|(entity, key)| c.kind.entity() == entity && c.key == key))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn last_change(&self) -> Result<i64, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .changes
            .last()
            .map_or(0, |c| c.seq))
    }

    async fn prune_changes(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let was = inner.changes.len();
        inner.changes.retain(|c| c.at >= before);
        Ok((was - inner.changes.len()) as u64)
    }
}

#[async_trait]
impl crate::SharedConfigStore for MemoryStore {
    async fn write_shared_config(
        &self,
        write: &crate::SharedConfigWrite,
        now: DateTime<Utc>,
    ) -> Result<crate::SharedConfigRecord, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let versions = inner.shared_configs.get(&write.name);
        let found = versions.and_then(|v| v.last()).map_or(0, |r| r.version);
        let record =
            crate::next_shared_version(write, found, versions.and_then(|v| v.first()), now)?;
        inner
            .shared_configs
            .entry(write.name.clone())
            .or_default()
            .push(record.clone());
        inner.record(crate::shared_config_change(&record), now);
        Ok(record)
    }

    async fn shared_configs(&self) -> Result<Vec<crate::SharedConfigRecord>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .shared_configs
            .values()
            .filter_map(|v| v.last().cloned())
            .collect())
    }

    async fn shared_config_versions(
        &self,
        name: &flotilla_domain::SharedConfigName,
    ) -> Result<Vec<crate::SharedConfigRecord>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner.shared_configs.get(name).cloned().unwrap_or_default())
    }
}

#[async_trait]
impl PoolStore for MemoryStore {
    async fn write_pool(
        &self,
        write: &PoolWrite,
        now: DateTime<Utc>,
    ) -> Result<PoolRecord, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let found = inner
            .pools
            .get(&write.name)
            .and_then(|v| v.last())
            .map_or(0, |r| r.version);
        crate::pools::check_stale(write, found)?;
        if write.document.is_none() {
            let users: Vec<String> = inner
                .clusters
                .values()
                .filter(|c| c.pool == write.name)
                .map(|c| c.name.to_string())
                .collect();
            if !users.is_empty() {
                return Err(crate::pools::in_use(&write.name, users));
            }
        }
        let record = crate::pools::next_version(write, found, now);
        inner
            .pools
            .entry(write.name.clone())
            .or_default()
            .push(record.clone());
        inner.record(pool_change(&record), now);
        Ok(record)
    }

    async fn pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .pools
            .values()
            .filter_map(|v| v.last().cloned())
            .collect())
    }

    async fn pool_history(&self, name: &PoolName) -> Result<Vec<PoolRecord>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner.pools.get(name).cloned().unwrap_or_default())
    }
}

#[async_trait]
impl crate::RolloutStore for MemoryStore {
    async fn pause_rollout(
        &self,
        pool: &PoolName,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<crate::RolloutHold, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let hold = inner.rollout_hold(pool);
        hold.paused.get_or_insert_with(|| crate::RolloutPause {
            by: by.to_owned(),
            at: now,
        });
        let hold = hold.clone();
        inner.record(crate::pause_change(pool, by), now);
        Ok(hold)
    }

    async fn resume_rollout(
        &self,
        pool: &PoolName,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let held = inner.rollout_holds.remove(pool).is_some();
        inner.record(crate::resume_change(pool, by), now);
        Ok(held)
    }

    async fn stop_rollout(
        &self,
        fence: Fence,
        pool: &PoolName,
        stop: &crate::RolloutStop,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_fence(fence)?;
        let hold = inner.rollout_hold(pool);
        hold.stopped = Some(stop.clone());
        inner.record(crate::stop_change(pool, stop), now);
        Ok(())
    }

    async fn rollout_holds(&self) -> Result<Vec<crate::RolloutHold>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .rollout_holds
            .values()
            .cloned()
            .collect())
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn acquire_lease(
        &self,
        holder: &str,
        ttl: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<Fence>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let epoch = match &inner.lease {
            Some(l) if l.holder != holder && l.expires_at > now => return Ok(None),
            Some(l) => l.epoch + 1,
            None => 1,
        };
        inner.lease = Some(Lease {
            holder: holder.to_owned(),
            epoch,
            expires_at: now + ttl,
        });
        inner.record(NewChange::lease_taken(holder, epoch), now);
        Ok(Some(Fence(epoch)))
    }

    async fn renew_lease(
        &self,
        holder: &str,
        fence: Fence,
        ttl: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        match &mut inner.lease {
            Some(l) if l.holder == holder && l.epoch == fence.0 => {
                l.expires_at = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, holder: &str, fence: Fence) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(l) = &mut inner.lease {
            if l.holder == holder && l.epoch == fence.0 {
                l.expires_at = DateTime::UNIX_EPOCH;
            }
        }
        Ok(())
    }

    async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        Ok(self.inner.lock().unwrap().lease.clone())
    }

    async fn publish_nodes(
        &self,
        fence: Fence,
        clusters: &[ClusterNodes],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_fence(fence)?;
        for c in clusters {
            if c.nodes.is_empty() {
                inner.nodes.remove(&c.cluster);
            } else {
                let mut nodes = c.nodes.clone();
                nodes.sort_by(|a, b| a.launched_at.cmp(&b.launched_at).then(a.id.cmp(&b.id)));
                inner.nodes.insert(c.cluster.clone(), nodes);
            }
            inner.record(NewChange::nodes(&c.cluster, c.is_public, &c.nodes), now);
            let Some(prices) = c
                .meter
                .clone()
                .filter(|_| inner.orgs.contains_key(&c.cluster))
            else {
                continue;
            };
            let on_record = inner
                .meters
                .values()
                .filter(|m| {
                    m.cluster == c.cluster
                        && m.job.is_none()
                        && (!m.settled() || c.nodes.iter().any(|n| n.id == m.id))
                })
                .cloned()
                .collect();
            inner.write_meters(crate::meters::on_publish(on_record, c, &prices, now));
        }
        Ok(())
    }

    async fn published_nodes(
        &self,
        cluster: Option<&ClusterName>,
    ) -> Result<Vec<(ClusterName, NodeRecord)>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .nodes
            .iter()
            .filter(|(name, _)| cluster.is_none_or(|c| c == *name))
            .flat_map(|(name, nodes)| nodes.iter().map(|n| (name.clone(), n.clone())))
            .collect())
    }

    async fn publish_obstacles(
        &self,
        fence: Fence,
        obstacles: &[ClusterObstacle],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_fence(fence)?;
        for o in obstacles {
            if !inner.clusters.contains_key(&o.cluster) {
                continue;
            }
            match &o.obstacle {
                Some(obstacle) => inner.obstacles.insert(o.cluster.clone(), obstacle.clone()),
                None => inner.obstacles.remove(&o.cluster),
            };
            inner.record(
                NewChange::obstacle(&o.cluster, o.is_public, o.obstacle.as_ref()),
                now,
            );
        }
        Ok(())
    }

    async fn published_obstacles(&self) -> Result<Vec<(ClusterName, Obstacle)>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .obstacles
            .iter()
            .map(|(c, o)| (c.clone(), o.clone()))
            .collect())
    }

    async fn record_pool_errors(
        &self,
        fence: Fence,
        errors: &[PoolError],
        _now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_fence(fence)?;
        for e in errors {
            match inner.pool_errors.get_mut(&e.key) {
                Some(kept) => kept.absorb(e.clone()),
                None => {
                    inner.pool_errors.insert(e.key.clone(), e.clone());
                }
            }
        }
        Ok(())
    }

    async fn pool_errors(
        &self,
        pool: &PoolName,
        only: Option<&[ClusterName]>,
        limit: usize,
    ) -> Result<Vec<PoolError>, StoreError> {
        let inner = self.inner.lock().unwrap();
        let mut errors: Vec<PoolError> = inner
            .pool_errors
            .values()
            .filter(|e| &e.key.pool == pool)
            .filter(|e| only.is_none_or(|only| only.contains(&e.key.cluster)))
            .cloned()
            .collect();
        // Latest first; ties in key order, as the SQL backends sort.
        errors.sort_by(|a, b| {
            b.last_at.cmp(&a.last_at).then_with(|| {
                (a.key.kind.as_str(), a.key.code.map_or("", |c| c.as_str()))
                    .cmp(&(b.key.kind.as_str(), b.key.code.map_or("", |c| c.as_str())))
                    .then(a.key.cluster.cmp(&b.key.cluster))
                    .then(a.key.instance_type.cmp(&b.key.instance_type))
            })
        });
        errors.truncate(limit);
        Ok(errors)
    }

    async fn prune_pool_errors(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let was = inner.pool_errors.len();
        inner.pool_errors.retain(|_, e| e.last_at >= before);
        Ok((was - inner.pool_errors.len()) as u64)
    }
}

#[async_trait]
impl crate::JobStore for MemoryStore {
    async fn submit_job(
        &self,
        job: &crate::NewJob,
        now: DateTime<Utc>,
    ) -> Result<crate::JobRecord, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let id = inner.jobs.keys().next_back().map_or(1, |last| last + 1);
        let record = crate::JobRecord::queued(job, id, now);
        inner.jobs.insert(id, record.clone());
        inner.record(crate::submitted(&record), now);
        Ok(record)
    }

    async fn job(&self, id: crate::JobId) -> Result<Option<crate::JobRecord>, StoreError> {
        Ok(self.inner.lock().unwrap().jobs.get(&id).cloned())
    }

    async fn jobs(
        &self,
        submitted_by: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::JobRecord>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .jobs
            .values()
            .rev()
            .filter(|j| submitted_by.is_none_or(|by| j.submitted_by == by))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn live_jobs(&self) -> Result<Vec<crate::JobRecord>, StoreError> {
        let inner = self.inner.lock().unwrap();
        let mut live: Vec<crate::JobRecord> = inner
            .jobs
            .values()
            .filter(|j| !j.state.is_final())
            .cloned()
            .collect();
        live.sort_by_key(crate::JobRecord::queue_key);
        Ok(live)
    }

    async fn step_job(
        &self,
        id: crate::JobId,
        version: Option<u64>,
        step: &crate::JobStep,
        fence: Option<Fence>,
        now: DateTime<Utc>,
    ) -> Result<crate::JobRecord, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(fence) = fence {
            inner.check_fence(fence)?;
        }
        let before = inner.jobs.get(&id).cloned();
        let next = crate::next_job(before.as_ref(), id, version, step, fence, now)?;
        if let Some(change) = before.and_then(|b| crate::step_change(step, &b, &next)) {
            inner.record(change, now);
        }
        inner.jobs.insert(id, next.clone());
        Ok(next)
    }

    async fn meter_job_instances(
        &self,
        fence: Fence,
        listed: &[NodeMeter],
        unwatched: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_fence(fence)?;
        let listed: Vec<NodeMeter> = listed
            .iter()
            .filter(|m| inner.orgs.contains_key(&m.cluster))
            .cloned()
            .collect();
        let on_record = inner
            .meters
            .values()
            .filter(|m| {
                m.job.is_some()
                    && (!m.settled()
                        || listed
                            .iter()
                            .any(|l| l.cluster == m.cluster && l.id == m.id))
            })
            .cloned()
            .collect();
        inner.write_meters(crate::meters::on_job_listing(
            on_record, listed, now, unwatched,
        ));
        Ok(())
    }
}

#[async_trait]
impl crate::DropboxStore for MemoryStore {
    async fn note_trigger(
        &self,
        trigger: &crate::HandledTrigger,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_fence(fence)?;
        let key = (trigger.path.clone(), trigger.digest.clone());
        if inner.triggers.contains_key(&key) {
            return Ok(false);
        }
        let mut noted = trigger.clone();
        noted.handled_at = crate::jobs::millis(noted.handled_at);
        if let Some(change) = noted.change() {
            inner.record(change, noted.handled_at);
        }
        inner.triggers.insert(key, noted);
        Ok(true)
    }

    async fn handled_trigger(
        &self,
        path: &str,
        digest: &str,
    ) -> Result<Option<crate::HandledTrigger>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .triggers
            .get(&(path.to_owned(), digest.to_owned()))
            .cloned())
    }

    async fn handled_triggers(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<crate::HandledTrigger>, StoreError> {
        let mut found: Vec<crate::HandledTrigger> = self
            .inner
            .lock()
            .unwrap()
            .triggers
            .values()
            .filter(|t| t.handled_at >= since)
            .cloned()
            .collect();
        found.sort_by(|a, b| {
            (a.handled_at, &a.path, &a.digest).cmp(&(b.handled_at, &b.path, &b.digest))
        });
        Ok(found)
    }

    async fn forget_triggers(
        &self,
        before: DateTime<Utc>,
        fence: Fence,
    ) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_fence(fence)?;
        let was = inner.triggers.len();
        inner.triggers.retain(|_, t| t.handled_at >= before);
        Ok((was - inner.triggers.len()) as u64)
    }
}

#[async_trait]
impl crate::ScheduleStore for MemoryStore {
    async fn create_schedule(
        &self,
        schedule: &flotilla_domain::Schedule,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.schedules.contains_key(&schedule.name) {
            return Err(StoreError::Duplicate(format!("schedule {}", schedule.name)));
        }
        inner
            .schedules
            .insert(schedule.name.clone(), schedule.clone());
        let change = crate::schedule_change(
            ChangeKind::ScheduleCreated,
            schedule,
            format!("created by {}", schedule.created_by),
        );
        inner.record(change, now);
        Ok(())
    }

    async fn schedules(&self) -> Result<Vec<flotilla_domain::Schedule>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .schedules
            .values()
            .cloned()
            .collect())
    }

    async fn update_schedule(
        &self,
        before: &flotilla_domain::Schedule,
        after: &flotilla_domain::Schedule,
        kind: ChangeKind,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let found = inner.schedules.get(&before.name).map(|s| s.revision as i64);
        crate::check_revision(before, found)?;
        inner.schedules.insert(after.name.clone(), after.clone());
        let message = if after.paused { "paused" } else { "resumed" };
        inner.record(crate::schedule_change(kind, after, message.to_owned()), now);
        Ok(())
    }

    async fn delete_schedule(&self, name: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let Some(gone) = inner.schedules.remove(name) else {
            return Ok(false);
        };
        inner.record(
            crate::schedule_change(ChangeKind::ScheduleDeleted, &gone, "deleted".to_owned()),
            now,
        );
        Ok(true)
    }

    async fn fire_schedule(
        &self,
        before: &flotilla_domain::Schedule,
        after: &flotilla_domain::Schedule,
        job: Option<&crate::NewJob>,
        fence: Fence,
        now: DateTime<Utc>,
    ) -> Result<Option<crate::JobRecord>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_fence(fence)?;
        let found = inner.schedules.get(&before.name).map(|s| s.revision as i64);
        crate::check_revision(before, found)?;
        let queued = job.map(|job| {
            let id = inner.jobs.keys().next_back().map_or(1, |last| last + 1);
            let record = crate::JobRecord::queued(job, id, now);
            inner.jobs.insert(id, record.clone());
            inner.record(crate::submitted(&record), now);
            record
        });
        let mut after = after.clone();
        if let Some(j) = &queued {
            after.last_job = Some(j.id);
        }
        inner.schedules.insert(after.name.clone(), after.clone());
        inner.record(crate::fired_change(&after, queued.as_ref()), now);
        Ok(queued)
    }
}

impl Inner {
    fn insert_delivery(&mut self, new: crate::NewDelivery, at: DateTime<Utc>) -> crate::Delivery {
        self.last_delivery += 1;
        let at = crate::jobs::millis(at);
        let d = crate::Delivery {
            id: self.last_delivery,
            subscription: new.subscription,
            seq: new.seq,
            kind: new.kind,
            key: new.key,
            event: new.event,
            state: new.state,
            attempts: 0,
            next_at: at,
            last_error: None,
            created_at: at,
            finished_at: None,
        };
        self.deliveries.insert(d.id, d.clone());
        d
    }
}

#[async_trait]
impl crate::NotifyStore for MemoryStore {
    async fn add_subscription(
        &self,
        new: &crate::NewSubscription,
        at: DateTime<Utc>,
    ) -> Result<crate::Subscription, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.last_subscription += 1;
        let s = crate::Subscription {
            id: inner.last_subscription,
            account: new.account.clone(),
            channel: new.channel.clone(),
            patterns: new.patterns.clone(),
            secret: new.secret.clone(),
            created_at: crate::jobs::millis(at),
            failures: 0,
            disabled: None,
            last_sent_at: None,
        };
        inner.subscriptions.insert(s.id, s.clone());
        Ok(s)
    }

    async fn subscriptions(
        &self,
        account: Option<&str>,
    ) -> Result<Vec<crate::Subscription>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .subscriptions
            .values()
            .filter(|s| account.is_none_or(|a| a == s.account))
            .cloned()
            .collect())
    }

    async fn remove_subscription(&self, id: i64) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let gone = inner.subscriptions.remove(&id).is_some();
        inner.deliveries.retain(|_, d| {
            !(d.subscription == id && d.state == flotilla_domain::DeliveryState::Pending)
        });
        Ok(gone)
    }

    async fn enable_subscription(&self, id: i64) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        Ok(match inner.subscriptions.get_mut(&id) {
            Some(s) => {
                s.failures = 0;
                s.disabled = None;
                true
            }
            None => false,
        })
    }

    async fn notify_cursor(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.inner.lock().unwrap().notify_cursor)
    }

    async fn queue_deliveries(
        &self,
        upto: i64,
        deliveries: &[crate::NewDelivery],
        at: DateTime<Utc>,
        fence: Fence,
    ) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_fence(fence)?;
        let mut queued = 0;
        for d in deliveries {
            let there = d.seq.is_some()
                && inner
                    .deliveries
                    .values()
                    .any(|o| o.subscription == d.subscription && o.seq == d.seq);
            let live = d.subscription == crate::ADMIN_SUBSCRIPTION
                || inner
                    .subscriptions
                    .get(&d.subscription)
                    .is_some_and(|s| s.disabled.is_none());
            if !there && live {
                inner.insert_delivery(d.clone(), at);
                queued += 1;
            }
        }
        inner.notify_cursor = Some(inner.notify_cursor.map_or(upto, |c| c.max(upto)));
        Ok(queued)
    }

    async fn queue_test(
        &self,
        subscription: i64,
        event: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<Option<crate::Delivery>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        if !inner.subscriptions.contains_key(&subscription) {
            return Ok(None);
        }
        Ok(Some(inner.insert_delivery(
            crate::NewDelivery {
                subscription,
                seq: None,
                kind: flotilla_domain::TEST_KIND.to_owned(),
                key: subscription.to_string(),
                event: event.clone(),
                state: flotilla_domain::DeliveryState::Pending,
            },
            at,
        )))
    }

    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        per_subscription: usize,
    ) -> Result<Vec<crate::Delivery>, StoreError> {
        let mut taken: BTreeMap<i64, usize> = BTreeMap::new();
        Ok(self
            .inner
            .lock()
            .unwrap()
            .deliveries
            .values()
            .filter(|d| d.state == flotilla_domain::DeliveryState::Pending && d.next_at <= now)
            .filter(|d| {
                let n = taken.entry(d.subscription).or_default();
                *n += 1;
                *n <= per_subscription
            })
            .take(limit)
            .cloned()
            .collect())
    }

    async fn deliveries(
        &self,
        account: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::Delivery>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .deliveries
            .values()
            .rev()
            .filter(|d| {
                account.is_none_or(|a| {
                    inner
                        .subscriptions
                        .get(&d.subscription)
                        .is_some_and(|s| s.account == a)
                })
            })
            .take(limit)
            .cloned()
            .collect())
    }

    async fn recent_deliveries(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<crate::Delivery>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .deliveries
            .values()
            .filter(|d| d.created_at >= since)
            .cloned()
            .collect())
    }

    async fn finish_delivery(
        &self,
        id: i64,
        outcome: &crate::DeliveryOutcome,
        at: DateTime<Utc>,
        counts: Option<u32>,
        fence: Fence,
    ) -> Result<Option<crate::Subscription>, StoreError> {
        use flotilla_domain::DeliveryState;
        let mut guard = self.inner.lock().unwrap();
        let inner = &mut *guard;
        inner.check_fence(fence)?;
        let at = crate::jobs::millis(at);
        let Some(d) = inner
            .deliveries
            .get_mut(&id)
            .filter(|d| d.state == DeliveryState::Pending)
        else {
            return Ok(None);
        };
        if let crate::DeliveryOutcome::Held { at: next } = outcome {
            d.next_at = crate::jobs::millis(*next);
            return Ok(None);
        }
        d.attempts += 1;
        let sub = d.subscription;
        match outcome {
            crate::DeliveryOutcome::Held { .. } => Ok(None),
            crate::DeliveryOutcome::Retry { at: next, error } => {
                d.next_at = crate::jobs::millis(*next);
                d.last_error = Some(error.clone());
                Ok(None)
            }
            crate::DeliveryOutcome::Delivered => {
                d.state = DeliveryState::Delivered;
                d.finished_at = Some(at);
                d.last_error = None;
                if let Some(s) = inner.subscriptions.get_mut(&sub) {
                    s.failures = 0;
                    s.last_sent_at = Some(at);
                }
                Ok(None)
            }
            crate::DeliveryOutcome::Failed { error } => {
                d.state = DeliveryState::Failed;
                d.finished_at = Some(at);
                d.last_error = Some(error.clone());
                let Some(disable_after) = counts else {
                    return Ok(None);
                };
                let Some(s) = inner
                    .subscriptions
                    .get_mut(&sub)
                    .filter(|s| s.disabled.is_none())
                else {
                    return Ok(None);
                };
                s.failures += 1;
                if s.failures < disable_after.max(1) {
                    return Ok(None);
                }
                let reason = crate::disabled_reason(s.failures, error);
                s.disabled = Some((at, reason.clone()));
                let s = s.clone();
                for d in inner.deliveries.values_mut() {
                    if d.subscription == sub && d.state == DeliveryState::Pending {
                        d.state = DeliveryState::Failed;
                        d.finished_at = Some(at);
                        d.last_error = Some(crate::failed_with_subscription(sub));
                    }
                }
                inner.record(crate::disabled_change(&s, &reason), at);
                Ok(Some(s))
            }
        }
    }

    async fn forget_deliveries(
        &self,
        before: DateTime<Utc>,
        fence: Fence,
    ) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_fence(fence)?;
        let was = inner.deliveries.len();
        inner.deliveries.retain(|_, d| {
            d.state == flotilla_domain::DeliveryState::Pending || d.created_at >= before
        });
        Ok((was - inner.deliveries.len()) as u64)
    }
}
