//! Organisations on PostgreSQL. A change locks the organisation's row
//! (`FOR UPDATE`), then loads it, runs the domain's function and writes the
//! result back in the same transaction, so two servers changing one
//! organisation take turns and each sees the other's spending. The accrual
//! pass holds [`Lock::Orgs`] alone, which every change holds shared, and
//! writes its charges with a few set-based statements over arrays
//! (`unnest`).

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{
    org_changes, target_record, ClusterName, ClusterRecord, Effects, LedgerEntry, NewChange,
    NodeMeter, OrgError, OrgEvent, OrgName, Organisation,
};
use flotilla_store::meters::{self, MeterCache, PassWrites};
use flotilla_store::sql::{
    self as row, add_person, add_request, corrupt, encode_month, time, user, OrgRow, PersonRow,
    RequestRow, ORG_COLUMNS,
};
use flotilla_store::{
    cluster_columns, CostRow, Fence, OrgChange, OrgChanged, OrgStore, OrgUsage, StoreError,
};
use sqlx::PgConnection;

use crate::lease::check_fence;
use crate::{commit_with, locked_cluster, Lock, PostgresStore};

/// Every organisation (or the one named), with requests and, if asked,
/// people, in name order (bytewise, whatever the database's collation).
async fn load_orgs(
    conn: &mut PgConnection,
    only: Option<&OrgName>,
    with_people: bool,
) -> Result<Vec<Organisation>, StoreError> {
    let filter = |column: &str| only.map_or(String::new(), |_| format!(" WHERE {column} = $1"));
    let name = only.map_or("", |o| o.as_str());
    let rows: Vec<OrgRow> = sqlx::query_as(&format!(
        "SELECT {ORG_COLUMNS} FROM orgs{} ORDER BY name COLLATE \"C\"",
        filter("name")
    ))
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    let mut orgs: Vec<Organisation> = rows
        .into_iter()
        .map(OrgRow::into_org)
        .collect::<Result<_, _>>()?;
    let index: HashMap<String, usize> = orgs
        .iter()
        .enumerate()
        .map(|(i, o)| (o.name.to_string(), i))
        .collect();
    if with_people {
        let people: Vec<PersonRow> = sqlx::query_as(&format!(
            "SELECT org, username, role, since FROM org_people{}",
            filter("org")
        ))
        .bind(name)
        .fetch_all(&mut *conn)
        .await?;
        for p in people {
            if let Some(&i) = index.get(&p.org) {
                add_person(&mut orgs[i], p)?;
            }
        }
    }
    let requests: Vec<RequestRow> = sqlx::query_as(&format!(
        "SELECT org, username, nodes, created_at, expires_at FROM capacity_requests{} ORDER BY id",
        filter("org")
    ))
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    for r in requests {
        if let Some(&i) = index.get(&r.org) {
            add_request(&mut orgs[i], r)?;
        }
    }
    Ok(orgs)
}

async fn load_org(
    conn: &mut PgConnection,
    name: &OrgName,
) -> Result<Option<Organisation>, StoreError> {
    Ok(load_orgs(conn, Some(name), true).await?.pop())
}

/// Locks the organisation's row until the transaction ends; false if there
/// is no such organisation.
async fn lock_org(conn: &mut PgConnection, name: &OrgName) -> Result<bool, StoreError> {
    let locked: Option<String> =
        sqlx::query_scalar("SELECT name FROM orgs WHERE name = $1 FOR UPDATE")
            .bind(name.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    Ok(locked.is_some())
}

async fn save_org_row(conn: &mut PgConnection, org: &Organisation) -> Result<(), StoreError> {
    let b = &org.budget;
    let s = &org.settings;
    sqlx::query(&format!(
        "INSERT INTO orgs ({ORG_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (name) DO UPDATE SET min_nodes = excluded.min_nodes, \
             max_nodes = excluded.max_nodes, node_limit = excluded.node_limit, \
             pool = excluded.pool, balance = excluded.balance, \
             monthly_allowance = excluded.monthly_allowance, \
             max_balance = excluded.max_balance, \
             shutdown_threshold = excluded.shutdown_threshold, \
             min_runway_secs = excluded.min_runway_secs, \
             allowance_month = excluded.allowance_month, \
             exhausted_at = excluded.exhausted_at, accrued_until = excluded.accrued_until"
    ))
    .bind(org.name.as_str())
    .bind(i64::from(s.min_nodes))
    .bind(i64::from(s.max_nodes))
    .bind(i64::from(s.node_limit))
    .bind(s.pool.as_str())
    .bind(b.balance.micros())
    .bind(b.monthly_allowance.micros())
    .bind(b.max_balance.micros())
    .bind(b.shutdown_threshold.micros())
    .bind(b.min_runway.as_secs() as i64)
    .bind(b.allowance_month.map(encode_month))
    .bind(b.exhausted_at.map(row::to_millis))
    .bind(org.accrued_until.map(row::to_millis))
    .bind(row::to_millis(org.created_at))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn save_people_and_requests(
    conn: &mut PgConnection,
    org: &Organisation,
) -> Result<(), StoreError> {
    let name = org.name.as_str();
    sqlx::query("DELETE FROM org_people WHERE org = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    let people: Vec<(&str, &str, i64)> = org
        .members
        .iter()
        .map(|(u, r)| (u.as_str(), r.as_str(), row::to_millis(org.created_at)))
        .chain(
            org.pending
                .iter()
                .map(|(u, since)| (u.as_str(), "pending", row::to_millis(*since))),
        )
        .collect();
    let usernames: Vec<&str> = people.iter().map(|p| p.0).collect();
    let missing: Option<String> = sqlx::query_scalar(
        "SELECT u FROM unnest($1::TEXT[]) AS u \
         WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE username = u) LIMIT 1",
    )
    .bind(&usernames)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(missing) = missing {
        let who = user("org_people", name, &missing)?;
        return Err(OrgError::UnknownAccount(who).into());
    }
    sqlx::query(
        "INSERT INTO org_people (org, username, role, since) \
         SELECT $1, * FROM unnest($2::TEXT[], $3::TEXT[], $4::BIGINT[])",
    )
    .bind(name)
    .bind(&usernames)
    .bind(people.iter().map(|p| p.1).collect::<Vec<_>>())
    .bind(people.iter().map(|p| p.2).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    save_requests(conn, org).await
}

async fn save_requests(conn: &mut PgConnection, org: &Organisation) -> Result<(), StoreError> {
    let name = org.name.as_str();
    sqlx::query("DELETE FROM capacity_requests WHERE org = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    let r = &org.requests;
    // WITH ORDINALITY keeps the requests' order in their ids.
    sqlx::query(
        "INSERT INTO capacity_requests (org, username, nodes, created_at, expires_at) \
         SELECT $1, u, n, c, e FROM unnest($2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[]) \
             WITH ORDINALITY AS r(u, n, c, e, i) ORDER BY i",
    )
    .bind(name)
    .bind(r.iter().map(|r| r.user.as_str()).collect::<Vec<_>>())
    .bind(r.iter().map(|r| i64::from(r.nodes)).collect::<Vec<_>>())
    .bind(
        r.iter()
            .map(|r| row::to_millis(r.created_at))
            .collect::<Vec<_>>(),
    )
    .bind(
        r.iter()
            .map(|r| row::to_millis(r.expires_at))
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records a change's ledger entries, events and cluster record, and adds
/// what it did to `changes`, for the feed at commit.
async fn record_effects(
    conn: &mut PgConnection,
    org: &Organisation,
    effects: &Effects,
    now: DateTime<Utc>,
    changes: &mut Vec<NewChange>,
) -> Result<Option<ClusterRecord>, StoreError> {
    let name = org.name.as_str();
    for e in &effects.ledger {
        sqlx::query(
            "INSERT INTO ledger (org, at, kind, amount, reason, actor) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(name)
        .bind(row::to_millis(e.at))
        .bind(e.kind.as_str())
        .bind(e.amount.micros())
        .bind(&e.reason)
        .bind(e.actor.as_ref().map(|u| u.as_str()))
        .execute(&mut *conn)
        .await?;
    }
    let Some(target) = effects.cluster else {
        changes.extend(org_changes(name, &effects.events, None, None));
        return Ok(None);
    };
    let current = locked_cluster(conn, name).await?;
    let record = target_record(current.as_ref(), org, target, now);
    changes.extend(org_changes(
        name,
        &effects.events,
        current.as_ref(),
        record.as_ref(),
    ));
    let Some(record) = record else {
        return Ok(None);
    };
    sqlx::query(concat!(
        "INSERT INTO clusters (",
        cluster_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (name) DO UPDATE SET is_public = excluded.is_public, \
             node_capacity = excluded.node_capacity, pool = excluded.pool, \
             expires_at = excluded.expires_at, destroying = excluded.destroying, \
             updated_at = excluded.updated_at, generation = excluded.generation, \
             workload = excluded.workload"
    ))
    .bind(record.name.as_str())
    .bind(record.is_public)
    .bind(i64::from(record.node_capacity.get()))
    .bind(record.pool.as_str())
    .bind(record.expires_at.map(row::to_millis))
    .bind(record.destroying)
    .bind(row::to_millis(record.created_at))
    .bind(row::to_millis(record.updated_at))
    .bind(record.generation)
    .bind(row::workload_json(record.workload.as_ref()))
    .execute(&mut *conn)
    .await?;
    Ok(Some(record))
}

/// An organisation's costs in the order readers see them (bytewise, whatever the collation).
const COSTS_SELECT: &str = "SELECT cluster, username, day, amount FROM costs WHERE org = $1 \
     ORDER BY day, cluster COLLATE \"C\", username COLLATE \"C\"";

#[async_trait]
impl OrgStore for PostgresStore {
    async fn create_org(&self, org: &Organisation) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let name = org.name.as_str();
        // The organisation's row does not exist yet, so there is no row to
        // lock: creators of one name take turns on an advisory lock.
        Lock::share_orgs(&mut tx).await?;
        Lock::OrgName(name).take(&mut tx).await?;
        let (org_taken, account_taken, cluster_taken): (bool, bool, bool) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM orgs WHERE name = $1), \
                    EXISTS (SELECT 1 FROM accounts WHERE username = $1), \
                    EXISTS (SELECT 1 FROM clusters WHERE name = $1)",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        if org_taken {
            return Err(OrgError::Exists(org.name.clone()).into());
        }
        if account_taken {
            return Err(OrgError::NameTaken {
                name: org.name.clone(),
            }
            .into());
        }
        if cluster_taken {
            return Err(OrgError::ClusterExists(org.name.clone()).into());
        }
        save_org_row(&mut tx, org).await?;
        save_people_and_requests(&mut tx, org).await?;
        let mut changes = Vec::new();
        record_effects(&mut tx, org, &org.opening(), org.created_at, &mut changes).await?;
        commit_with(tx, &changes, org.created_at).await?;
        Ok(())
    }

    async fn get_org(&self, name: &OrgName) -> Result<Option<Organisation>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_org(&mut conn, name).await
    }

    async fn list_orgs(&self) -> Result<Vec<Organisation>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_orgs(&mut conn, None, true).await
    }

    async fn change_org(
        &self,
        name: &OrgName,
        now: DateTime<Utc>,
        change: OrgChange<'_>,
    ) -> Result<OrgChanged, StoreError> {
        let mut tx = self.begin().await?;
        Lock::share_orgs(&mut tx).await?;
        if !lock_org(&mut tx, name).await? {
            return Err(OrgError::Unknown(name.clone()).into());
        }
        let mut org = load_org(&mut tx, name)
            .await?
            .ok_or_else(|| OrgError::Unknown(name.clone()))?;
        let effects = change(&mut org)?;
        save_org_row(&mut tx, &org).await?;
        save_people_and_requests(&mut tx, &org).await?;
        let mut changes = Vec::new();
        let cluster = record_effects(&mut tx, &org, &effects, now, &mut changes).await?;
        commit_with(tx, &changes, now).await?;
        Ok(OrgChanged {
            org,
            effects,
            cluster,
        })
    }

    async fn expire_capacity(
        &self,
        now: DateTime<Utc>,
        fence: Fence,
    ) -> Result<Vec<OrgChanged>, StoreError> {
        let mut tx = self.begin().await?;
        check_fence(&mut tx, fence).await?;
        Lock::share_orgs(&mut tx).await?;
        // Lock the organisations with due requests in name order, then
        // read their requests again under the lock.
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM orgs WHERE name IN \
                 (SELECT org FROM capacity_requests WHERE expires_at <= $1) \
             ORDER BY name COLLATE \"C\" FOR UPDATE",
        )
        .bind(row::to_millis(now))
        .fetch_all(&mut *tx)
        .await?;
        let mut changed = Vec::new();
        let mut changes = Vec::new();
        for name in due {
            let name = ClusterName::new(name.as_str())
                .map_err(|e| corrupt("capacity_requests", &name, e))?;
            let Some(mut org) = load_org(&mut tx, &name).await? else {
                continue;
            };
            let before = org.requests.len();
            let effects = org.expire_requests(now);
            if org.requests.len() == before && effects == Effects::default() {
                // A racing caller expired them first.
                continue;
            }
            save_requests(&mut tx, &org).await?;
            let cluster = record_effects(&mut tx, &org, &effects, now, &mut changes).await?;
            changed.push(OrgChanged {
                org,
                effects,
                cluster,
            });
        }
        commit_with(tx, &changes, now).await?;
        Ok(changed)
    }

    async fn next_capacity_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let earliest: Option<i64> =
            sqlx::query_scalar("SELECT MIN(expires_at) FROM capacity_requests")
                .fetch_one(&self.pool)
                .await?;
        earliest
            .map(|ms| time("capacity_requests", "MIN", "expires_at", ms))
            .transpose()
    }

    async fn accrue(
        &self,
        usage: &[OrgUsage],
        now: DateTime<Utc>,
        fence: Fence,
    ) -> Result<Vec<OrgChanged>, StoreError> {
        // Charged up to a time the store can hold exactly: the next pass
        // starts from what is stored, so the pieces add up to the whole.
        let now = DateTime::from_timestamp_millis(row::to_millis(now)).unwrap_or(now);
        let mut tx = self.begin().await?;
        check_fence(&mut tx, fence).await?;
        // Every organisation at once: a racing pass waits here and then
        // reads what this one charged, so each moment is charged once; a
        // change of one organisation (or a publication of its nodes) waits
        // for the pass, and the pass for changes under way.
        Lock::Orgs.take(&mut tx).await?;
        crate::meters::add_listed(&mut tx, usage).await?;
        // The meters as this server last left them, brought up to date
        // (another server may have led since): a failed pass leaves none,
        // and the next reads them all again.
        let mut cache = self
            .meter_cache
            .lock()
            .expect("not poisoned")
            .take()
            .unwrap_or_default();
        let versions = crate::meters::versions(&mut tx).await?;
        crate::meters::refresh(&mut tx, &mut cache, &versions).await?;
        let orgs = load_orgs(&mut tx, None, false).await?;
        let mut next = MeterCache::default();
        let mut writes = PassWrites::default();
        let mut updates = OrgUpdates::default();
        let mut costs = CostInserts::default();
        let mut eventful = Vec::new();
        for mut org in orgs {
            let before = (
                org.budget.balance,
                org.accrued_until,
                org.budget.allowance_month,
                org.budget.exhausted_at,
            );
            let requests_before = org.requests.len();
            let (mut own, was) = meters::for_pass(cache.take(&org.name), org.accrued_until);
            let accrual = org.accrue(&mut own, now);
            let (kept, touched) = writes.after_pass(&org.name, was, own, org.accrued_until);
            let version = versions.get(&org.name).copied().unwrap_or(0) + i64::from(touched);
            next.put(org.name.clone(), version, kept);
            let name = org.name.to_string();
            for c in &accrual.charges {
                costs.org.push(name.clone());
                costs
                    .user
                    .push(c.user.as_ref().map_or("", |u| u.as_str()).to_owned());
                costs.day.push(c.day.to_string());
                costs.amount.push(c.amount.micros());
            }
            let after = (
                org.budget.balance,
                org.accrued_until,
                org.budget.allowance_month,
                org.budget.exhausted_at,
            );
            if after != before {
                updates.name.push(name);
                updates.balance.push(org.budget.balance.micros());
                updates
                    .accrued_until
                    .push(org.accrued_until.map(row::to_millis));
                updates
                    .allowance_month
                    .push(org.budget.allowance_month.map(encode_month));
                updates
                    .exhausted_at
                    .push(org.budget.exhausted_at.map(row::to_millis));
            }
            if accrual.effects != Effects::default() || org.requests.len() != requests_before {
                eventful.push((org, accrual.effects));
            }
        }
        if !updates.name.is_empty() {
            sqlx::query(
                "UPDATE orgs SET balance = u.balance, accrued_until = u.accrued_until, \
                     allowance_month = u.allowance_month, exhausted_at = u.exhausted_at \
                 FROM unnest($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[]) \
                     AS u(name, balance, accrued_until, allowance_month, exhausted_at) \
                 WHERE orgs.name = u.name",
            )
            .bind(&updates.name)
            .bind(&updates.balance)
            .bind(&updates.accrued_until)
            .bind(&updates.allowance_month)
            .bind(&updates.exhausted_at)
            .execute(&mut *tx)
            .await?;
        }
        if !costs.org.is_empty() {
            // An organisation's charges are grouped by (user, day), so no
            // row appears twice in one insert.
            sqlx::query(
                "INSERT INTO costs (org, cluster, username, day, amount) \
                 SELECT o, o, u, d, a FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[]) \
                     AS c(o, u, d, a) \
                 ON CONFLICT (org, cluster, day, username) \
                 DO UPDATE SET amount = costs.amount + excluded.amount",
            )
            .bind(&costs.org)
            .bind(&costs.user)
            .bind(&costs.day)
            .bind(&costs.amount)
            .execute(&mut *tx)
            .await?;
        }
        crate::meters::charged(&mut tx, &writes).await?;
        let mut changed = Vec::new();
        let mut changes = Vec::new();
        for (org, effects) in eventful {
            save_requests(&mut tx, &org).await?;
            let cluster = record_effects(&mut tx, &org, &effects, now, &mut changes).await?;
            changed.push(OrgChanged {
                org,
                effects,
                cluster,
            });
        }
        commit_with(tx, &changes, now).await?;
        *self.meter_cache.lock().expect("not poisoned") = Some(next);
        // The pass loaded organisations without their people; callers get
        // them whole.
        let mut conn = self.pool.acquire().await?;
        for c in &mut changed {
            if let Some(full) = load_org(&mut conn, &c.org.name).await? {
                c.org = full;
            }
        }
        Ok(changed)
    }

    async fn usage(&self, org: &OrgName) -> Result<Vec<NodeMeter>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        crate::meters::of_org(&mut conn, org).await
    }

    async fn ledger(&self, org: &OrgName) -> Result<Vec<LedgerEntry>, StoreError> {
        let until: Option<Option<i64>> =
            sqlx::query_scalar("SELECT accrued_until FROM orgs WHERE name = $1")
                .bind(org.as_str())
                .fetch_optional(&self.pool)
                .await?;
        let costs = self.costs(org).await?;
        let rows: Vec<row::LedgerRow> = sqlx::query_as(row::LEDGER_SELECT)
            .bind(org.as_str())
            .fetch_all(&self.pool)
            .await?;
        row::ledger_entries(org.as_str(), rows, &costs, until.flatten())
    }

    async fn costs(&self, org: &OrgName) -> Result<Vec<CostRow>, StoreError> {
        let rows: Vec<row::CostTuple> = sqlx::query_as(COSTS_SELECT)
            .bind(org.as_str())
            .fetch_all(&self.pool)
            .await?;
        row::cost_rows(org.as_str(), rows)
    }

    async fn events(&self, org: &OrgName, limit: usize) -> Result<Vec<OrgEvent>, StoreError> {
        let rows: Vec<row::ChangeRow> = sqlx::query_as(row::ORG_EVENTS_SELECT)
            .bind(org.as_str())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        row::org_events(rows)
    }
}

/// The columns of the organisations an accrual pass changed, as arrays.
#[derive(Default)]
struct OrgUpdates {
    name: Vec<String>,
    balance: Vec<i64>,
    accrued_until: Vec<Option<i64>>,
    allowance_month: Vec<Option<i64>>,
    exhausted_at: Vec<Option<i64>>,
}

/// An accrual pass's charges, as arrays (cluster is the organisation's).
#[derive(Default)]
struct CostInserts {
    org: Vec<String>,
    user: Vec<String>,
    day: Vec<String>,
    amount: Vec<i64>,
}
