//! Organisations on SQLite. Every change loads the organisation, runs the
//! domain's function on it and writes the result back inside one
//! `BEGIN IMMEDIATE` transaction. The accrual pass covers every
//! organisation in one transaction too, and writes its charges with a few
//! set-based statements (rows passed as one JSON array) rather than a
//! statement per node, so a pass over thousands of nodes stays a few
//! milliseconds.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_domain::{
    org_changes, target_record, ClusterName, ClusterRecord, Effects, LedgerEntry, NodeMeter,
    OrgError, OrgEvent, OrgName, Organisation,
};
use sqlx::{SqliteConnection, SqlitePool};

use flotilla_store::meters::{self, MeterCache, PassWrites};
use flotilla_store::sql::{
    self as row, add_person, add_request, corrupt, encode_month, time, OrgRow, PersonRow,
    RequestRow, ORG_COLUMNS,
};
use flotilla_store::{
    cluster_columns, CostRow, Fence, OrgChange, OrgChanged, OrgStore, OrgUsage, StoreError,
};

use crate::lease::check_fence;
use crate::{cluster_in, record_changes, SqliteStore};

/// `SELECT columns FROM from ORDER BY order` as one JSON array of row
/// arrays, decoded by serde. One value crosses from SQLite instead of a
/// row at a time, which is what makes reading every organisation in an
/// accrual pass cheap.
async fn fetch_rows<T: serde::de::DeserializeOwned>(
    conn: &mut SqliteConnection,
    columns: &str,
    from: &str,
    order: &str,
    only: Option<(&str, &OrgName)>,
) -> Result<Vec<T>, StoreError> {
    let filter = only.map_or(String::new(), |(column, _)| format!(" WHERE {column} = $1"));
    let sql = format!(
        "SELECT json_group_array(json_array({columns})) FROM \
         (SELECT {columns} FROM {from}{filter} ORDER BY {order})"
    );
    let mut query = sqlx::query_scalar::<_, String>(&sql);
    if let Some((_, name)) = only {
        query = query.bind(name.as_str());
    }
    let json = query.fetch_one(&mut *conn).await?;
    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("{from}: {e}")))
}

/// Every organisation (or the one named), with requests and, if asked,
/// people.
async fn load_orgs(
    conn: &mut SqliteConnection,
    only: Option<&OrgName>,
    with_people: bool,
) -> Result<Vec<Organisation>, StoreError> {
    let rows: Vec<OrgRow> =
        fetch_rows(conn, ORG_COLUMNS, "orgs", "name", only.map(|o| ("name", o))).await?;
    let mut orgs: Vec<Organisation> = rows
        .into_iter()
        .map(OrgRow::into_org)
        .collect::<Result<_, _>>()?;
    let index: HashMap<String, usize> = orgs
        .iter()
        .enumerate()
        .map(|(i, o)| (o.name.to_string(), i))
        .collect();
    let only = only.map(|o| ("org", o));
    if with_people {
        let people: Vec<PersonRow> = fetch_rows(
            conn,
            "org, username, role, since",
            "org_people",
            "org, username",
            only,
        )
        .await?;
        for p in people {
            if let Some(&i) = index.get(&p.org) {
                add_person(&mut orgs[i], p)?;
            }
        }
    }
    let requests: Vec<RequestRow> = fetch_rows(
        conn,
        "org, username, nodes, created_at, expires_at",
        "capacity_requests",
        "id",
        only,
    )
    .await?;
    for r in requests {
        if let Some(&i) = index.get(&r.org) {
            add_request(&mut orgs[i], r)?;
        }
    }
    Ok(orgs)
}

async fn load_org(
    conn: &mut SqliteConnection,
    name: &OrgName,
) -> Result<Option<Organisation>, StoreError> {
    Ok(load_orgs(conn, Some(name), true).await?.pop())
}

/// Writes the organisation's own row.
async fn save_org_row(conn: &mut SqliteConnection, org: &Organisation) -> Result<(), StoreError> {
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

/// Writes the organisation's people and requests, replacing what was there.
async fn save_people_and_requests(
    conn: &mut SqliteConnection,
    org: &Organisation,
) -> Result<(), StoreError> {
    let name = org.name.as_str();
    sqlx::query("DELETE FROM org_people WHERE org = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    let people = org
        .members
        .iter()
        .map(|(u, r)| (u, r.as_str(), org.created_at))
        .chain(org.pending.iter().map(|(u, since)| (u, "pending", *since)));
    for (username, role, since) in people {
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM accounts WHERE username = $1")
            .bind(username.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        if exists.is_none() {
            return Err(OrgError::UnknownAccount(username.clone()).into());
        }
        sqlx::query("INSERT INTO org_people (org, username, role, since) VALUES ($1, $2, $3, $4)")
            .bind(name)
            .bind(username.as_str())
            .bind(role)
            .bind(row::to_millis(since))
            .execute(&mut *conn)
            .await?;
    }
    save_requests(conn, org).await
}

async fn save_requests(conn: &mut SqliteConnection, org: &Organisation) -> Result<(), StoreError> {
    let name = org.name.as_str();
    sqlx::query("DELETE FROM capacity_requests WHERE org = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    for r in &org.requests {
        sqlx::query(
            "INSERT INTO capacity_requests (org, username, nodes, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(name)
        .bind(r.user.as_str())
        .bind(i64::from(r.nodes))
        .bind(row::to_millis(r.created_at))
        .bind(row::to_millis(r.expires_at))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Records a change's ledger entries, events and cluster record.
async fn record_effects(
    conn: &mut SqliteConnection,
    org: &Organisation,
    effects: &Effects,
    now: DateTime<Utc>,
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
        let changes = org_changes(name, &effects.events, None, None);
        record_changes(conn, &changes, now).await?;
        return Ok(None);
    };
    let current = cluster_in(conn, name).await?;
    let record = target_record(current.as_ref(), org, target, now);
    let changes = org_changes(name, &effects.events, current.as_ref(), record.as_ref());
    record_changes(conn, &changes, now).await?;
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

async fn reader_conn(
    pool: &SqlitePool,
) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>, StoreError> {
    Ok(pool.acquire().await?)
}

/// An organisation's costs in the order readers see them.
const COSTS_SELECT: &str = "SELECT cluster, username, day, amount FROM costs WHERE org = $1 \
     ORDER BY day, cluster, username";

#[async_trait]
impl OrgStore for SqliteStore {
    async fn create_org(&self, org: &Organisation) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let name = org.name.as_str();
        let taken: Option<i64> = sqlx::query_scalar("SELECT 1 FROM orgs WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(OrgError::Exists(org.name.clone()).into());
        }
        let account: Option<i64> = sqlx::query_scalar("SELECT 1 FROM accounts WHERE username = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if account.is_some() {
            return Err(OrgError::NameTaken {
                name: org.name.clone(),
            }
            .into());
        }
        let cluster: Option<i64> = sqlx::query_scalar("SELECT 1 FROM clusters WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if cluster.is_some() {
            return Err(OrgError::ClusterExists(org.name.clone()).into());
        }
        save_org_row(&mut tx, org).await?;
        save_people_and_requests(&mut tx, org).await?;
        record_effects(&mut tx, org, &org.opening(), org.created_at).await?;
        self.commit(tx).await?;
        Ok(())
    }

    async fn get_org(&self, name: &OrgName) -> Result<Option<Organisation>, StoreError> {
        let mut conn = reader_conn(&self.reader).await?;
        load_org(&mut conn, name).await
    }

    async fn list_orgs(&self) -> Result<Vec<Organisation>, StoreError> {
        let mut conn = reader_conn(&self.reader).await?;
        load_orgs(&mut conn, None, true).await
    }

    async fn change_org(
        &self,
        name: &OrgName,
        now: DateTime<Utc>,
        change: OrgChange<'_>,
    ) -> Result<OrgChanged, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut org = load_org(&mut tx, name)
            .await?
            .ok_or_else(|| OrgError::Unknown(name.clone()))?;
        let effects = change(&mut org)?;
        save_org_row(&mut tx, &org).await?;
        save_people_and_requests(&mut tx, &org).await?;
        let cluster = record_effects(&mut tx, &org, &effects, now).await?;
        self.commit(tx).await?;
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
        let mut tx = self.begin_write().await?;
        check_fence(&mut tx, fence).await?;
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT org FROM capacity_requests WHERE expires_at <= $1 ORDER BY org",
        )
        .bind(row::to_millis(now))
        .fetch_all(&mut *tx)
        .await?;
        let mut changed = Vec::new();
        for name in due {
            let name = ClusterName::new(name.as_str())
                .map_err(|e| corrupt("capacity_requests", &name, e))?;
            let Some(mut org) = load_org(&mut tx, &name).await? else {
                continue;
            };
            let effects = org.expire_requests(now);
            save_requests(&mut tx, &org).await?;
            let cluster = record_effects(&mut tx, &org, &effects, now).await?;
            changed.push(OrgChanged {
                org,
                effects,
                cluster,
            });
        }
        self.commit(tx).await?;
        Ok(changed)
    }

    async fn next_capacity_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let earliest: Option<i64> =
            sqlx::query_scalar("SELECT MIN(expires_at) FROM capacity_requests")
                .fetch_one(&self.reader)
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
        let mut tx = self.begin_write().await?;
        check_fence(&mut tx, fence).await?;
        crate::meters::add_listed(&mut tx, usage).await?;
        // The meters as this store last left them, brought up to date: a
        // failed pass leaves none, and the next reads them all again.
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
        let mut org_rows = Vec::new();
        let mut cost_rows = Vec::new();
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
            let name = org.name.as_str();
            for c in &accrual.charges {
                cost_rows.push(serde_json::json!([
                    name,
                    name,
                    c.user.as_ref().map_or("", |u| u.as_str()),
                    c.day.to_string(),
                    c.amount.micros()
                ]));
            }
            let after = (
                org.budget.balance,
                org.accrued_until,
                org.budget.allowance_month,
                org.budget.exhausted_at,
            );
            if after != before {
                org_rows.push(serde_json::json!([
                    name,
                    org.budget.balance.micros(),
                    org.accrued_until.map(row::to_millis),
                    org.budget.allowance_month.map(encode_month),
                    org.budget.exhausted_at.map(row::to_millis)
                ]));
            }
            if accrual.effects != Effects::default() || org.requests.len() != requests_before {
                eventful.push((org, accrual.effects));
            }
        }
        if !org_rows.is_empty() {
            sqlx::query(
                "UPDATE orgs SET balance = json_extract(j.value, '$[1]'), \
                 accrued_until = json_extract(j.value, '$[2]'), \
                 allowance_month = json_extract(j.value, '$[3]'), \
                 exhausted_at = json_extract(j.value, '$[4]') \
             FROM json_each($1) AS j WHERE orgs.name = json_extract(j.value, '$[0]')",
            )
            .bind(serde_json::Value::Array(org_rows).to_string())
            .execute(&mut *tx)
            .await?;
        }
        if !cost_rows.is_empty() {
            sqlx::query(
                "INSERT INTO costs (org, cluster, username, day, amount) \
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                    json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
                    json_extract(value, '$[4]') \
             FROM json_each($1) WHERE TRUE \
             ON CONFLICT (org, cluster, day, username) \
             DO UPDATE SET amount = costs.amount + excluded.amount",
            )
            .bind(serde_json::Value::Array(cost_rows).to_string())
            .execute(&mut *tx)
            .await?;
        }
        crate::meters::charged(&mut tx, &writes).await?;
        let mut changed = Vec::new();
        for (org, effects) in eventful {
            save_requests(&mut tx, &org).await?;
            let cluster = record_effects(&mut tx, &org, &effects, now).await?;
            changed.push(OrgChanged {
                org,
                effects,
                cluster,
            });
        }
        self.commit(tx).await?;
        *self.meter_cache.lock().expect("not poisoned") = Some(next);
        // The pass loaded organisations without their people; callers get
        // them whole.
        let mut conn = reader_conn(&self.reader).await?;
        for c in &mut changed {
            if let Some(full) = load_org(&mut conn, &c.org.name).await? {
                c.org = full;
            }
        }
        Ok(changed)
    }

    async fn usage(&self, org: &OrgName) -> Result<Vec<NodeMeter>, StoreError> {
        let mut conn = reader_conn(&self.reader).await?;
        crate::meters::of_org(&mut conn, org).await
    }

    async fn ledger(&self, org: &OrgName) -> Result<Vec<LedgerEntry>, StoreError> {
        let until: Option<Option<i64>> =
            sqlx::query_scalar("SELECT accrued_until FROM orgs WHERE name = $1")
                .bind(org.as_str())
                .fetch_optional(&self.reader)
                .await?;
        let costs = self.costs(org).await?;
        let rows: Vec<row::LedgerRow> = sqlx::query_as(row::LEDGER_SELECT)
            .bind(org.as_str())
            .fetch_all(&self.reader)
            .await?;
        row::ledger_entries(org.as_str(), rows, &costs, until.flatten())
    }

    async fn costs(&self, org: &OrgName) -> Result<Vec<CostRow>, StoreError> {
        let rows: Vec<row::CostTuple> = sqlx::query_as(COSTS_SELECT)
            .bind(org.as_str())
            .fetch_all(&self.reader)
            .await?;
        row::cost_rows(org.as_str(), rows)
    }

    async fn events(&self, org: &OrgName, limit: usize) -> Result<Vec<OrgEvent>, StoreError> {
        let rows: Vec<row::ChangeRow> = sqlx::query_as(row::ORG_EVENTS_SELECT)
            .bind(org.as_str())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.reader)
            .await?;
        row::org_events(rows)
    }
}
