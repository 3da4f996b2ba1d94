//! Node meters on PostgreSQL (see `flotilla_store::meters`): moved when the
//! leader publishes a metered cluster's nodes and charged by the accrual
//! pass, each inside the caller's transaction. Publishing holds
//! [`Lock::Orgs`] shared, so a pass (which holds it alone) never charges a
//! meter that a publication read and is about to end.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flotilla_domain::{LedgerEntry, NodeMeter, OrgName};
use flotilla_store::meters::{MeterCache, PassWrites, StoredMeter};
use flotilla_store::sql::{
    self as row, MeterColumns, MeterRow, StoredMeterRow, METERS_FROM, METER_COLUMNS_NAMED,
    STORED_METER_COLUMNS,
};
use flotilla_store::{meters, ClusterNodes, OrgUsage, StoreError};
use sqlx::PgConnection;

use crate::Lock;

/// Adds meters, keeping any already on record. A node already running
/// when meters came in is metered from where the passes before them had
/// charged it (`metered_from`). Organisations that do not exist are
/// skipped.
async fn add(conn: &mut PgConnection, new: &MeterColumns) -> Result<(), StoreError> {
    if new.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO meters (org, id, launched_at, price, charged_until, ended_at, ended, settled, \
             job, charged_to) \
         SELECT j.v->>0, j.v->>1, (j.v->>2)::BIGINT, (j.v->>3)::BIGINT, \
                CASE WHEN o.metered_from > (j.v->>2)::BIGINT THEN o.metered_from END, \
                (j.v->>5)::BIGINT, j.v->>6, FALSE, j.v->>8, j.v->>9 \
         FROM jsonb_array_elements($1::jsonb) AS j(v) JOIN orgs AS o ON o.name = j.v->>0 \
         ON CONFLICT (org, id) DO NOTHING",
    )
    .bind(new.to_json())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Writes back how far each meter is charged, its end, and whether it is
/// settled.
async fn update(conn: &mut PgConnection, changed: &MeterColumns) -> Result<(), StoreError> {
    if changed.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE meters SET charged_until = (j.v->>4)::BIGINT, follows = FALSE, ended_at = (j.v->>5)::BIGINT, \
             ended = j.v->>6, settled = (j.v->>7)::BOOLEAN \
         FROM jsonb_array_elements($1::jsonb) AS j(v) \
         WHERE meters.org = j.v->>0 AND meters.id = j.v->>1",
    )
    .bind(changed.to_json())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The meters of one organisation not yet settled.
async fn unsettled(conn: &mut PgConnection, org: &OrgName) -> Result<Vec<NodeMeter>, StoreError> {
    let rows: Vec<MeterRow> = sqlx::query_as(&format!(
        "SELECT {METER_COLUMNS_NAMED} FROM {METERS_FROM} WHERE NOT m.settled AND m.org = $1 AND m.job IS NULL"
    ))
    .bind(org.as_str())
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter().map(NodeMeter::try_from).collect()
}

async fn note(conn: &mut PgConnection, org: &OrgName, e: &LedgerEntry) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO ledger (org, at, kind, amount, reason, actor) VALUES ($1, $2, $3, $4, $5, NULL)",
    )
    .bind(org.as_str())
    .bind(row::to_millis(e.at))
    .bind(e.kind.as_str())
    .bind(e.amount.micros())
    .bind(&e.reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves the meters of one published cluster, if it is metered and its
/// organisation exists.
pub(crate) async fn on_publish(
    conn: &mut PgConnection,
    published: &ClusterNodes,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let Some(prices) = &published.meter else {
        return Ok(());
    };
    let org = &published.cluster;
    Lock::share_orgs(&mut *conn).await?;
    let exists: Option<bool> = sqlx::query_scalar("SELECT TRUE FROM orgs WHERE name = $1")
        .bind(org.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Ok(());
    }
    let mut on_record = unsettled(conn, org).await?;
    on_record.extend(settled_of(conn, org, published).await?);
    let writes = meters::on_publish(on_record, published, prices, now);
    let mut add_cols = MeterColumns::default();
    writes.add.iter().for_each(|m| add_cols.push(m));
    add(conn, &add_cols).await?;
    let mut ended = MeterColumns::default();
    writes.changed.iter().for_each(|m| ended.push(m));
    update(conn, &ended).await?;
    for (org, n) in &writes.notes {
        note(conn, org, n).await?;
    }
    if !add_cols.is_empty() || !ended.is_empty() {
        bump(conn, std::slice::from_ref(org)).await?;
    }
    Ok(())
}

/// Moves the meters of the job attempts' instances after a listing (see
/// [`meters::on_job_listing`]): `listed` are the meters the listed
/// instances of jobs charged to organisations would get. Holds
/// [`Lock::Orgs`] shared, as a publication does.
pub(crate) async fn on_job_listing(
    conn: &mut PgConnection,
    listed: &[NodeMeter],
    unwatched: bool,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    Lock::share_orgs(&mut *conn).await?;
    let orgs: Vec<&str> = listed.iter().map(|m| m.cluster.as_str()).collect();
    let ids: Vec<&str> = listed.iter().map(|m| m.id.as_str()).collect();
    // The unsettled by the partial index, the listed settled ones by key:
    // never a scan of every job meter ever kept.
    let rows: Vec<MeterRow> = sqlx::query_as(&format!(
        "SELECT {METER_COLUMNS_NAMED} FROM {METERS_FROM} WHERE NOT m.settled AND m.job IS NOT NULL \
         UNION ALL \
         SELECT {METER_COLUMNS_NAMED} FROM unnest($1::TEXT[], $2::TEXT[]) AS k(org, id) \
             JOIN meters AS m ON m.org = k.org AND m.id = k.id \
             JOIN orgs AS o ON o.name = m.org \
         WHERE m.settled AND m.job IS NOT NULL"
    ))
    .bind(&orgs)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let on_record = rows
        .into_iter()
        .map(NodeMeter::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let writes = meters::on_job_listing(on_record, listed.to_vec(), now, unwatched);
    let mut add_cols = MeterColumns::default();
    writes.add.iter().for_each(|m| add_cols.push(m));
    add(conn, &add_cols).await?;
    let mut changed = MeterColumns::default();
    writes.changed.iter().for_each(|m| changed.push(m));
    update(conn, &changed).await?;
    for (org, n) in &writes.notes {
        note(conn, org, n).await?;
    }
    bump(conn, &writes.orgs()).await
}

/// The settled meters of the nodes `published` lists: a listing missed
/// them, and they run again.
async fn settled_of(
    conn: &mut PgConnection,
    org: &OrgName,
    published: &ClusterNodes,
) -> Result<Vec<NodeMeter>, StoreError> {
    if published.nodes.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = published.nodes.iter().map(|n| n.id.as_str()).collect();
    let rows: Vec<MeterRow> = sqlx::query_as(&format!(
        "SELECT {METER_COLUMNS_NAMED} FROM {METERS_FROM} \
         WHERE m.settled AND m.org = $1 AND m.job IS NULL AND m.id = ANY($2)"
    ))
    .bind(org.as_str())
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter().map(NodeMeter::try_from).collect()
}

/// Puts on the meter the listed nodes not on it yet.
pub(crate) async fn add_listed(
    conn: &mut PgConnection,
    usage: &[OrgUsage],
) -> Result<(), StoreError> {
    let mut cols = MeterColumns::default();
    for u in usage {
        for n in &u.nodes {
            cols.push(&NodeMeter::new(
                u.org.clone(),
                n.id.clone(),
                n.launched_at,
                n.price_per_hour,
            ));
        }
    }
    add(conn, &cols).await?;
    let orgs: Vec<OrgName> = usage
        .iter()
        .filter(|u| !u.nodes.is_empty())
        .map(|u| u.org.clone())
        .collect();
    bump(conn, &orgs).await
}

/// Raises the `meters_version` of each of `orgs` by one: their meters
/// changed in this transaction (see [`MeterCache`]).
async fn bump(conn: &mut PgConnection, orgs: &[OrgName]) -> Result<(), StoreError> {
    if orgs.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = orgs.iter().map(|o| o.as_str()).collect();
    sqlx::query("UPDATE orgs SET meters_version = meters_version + 1 WHERE name = ANY($1)")
        .bind(&names)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Every organisation's `meters_version`.
pub(crate) async fn versions(conn: &mut PgConnection) -> Result<HashMap<OrgName, i64>, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT name, meters_version FROM orgs")
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter()
        .map(|(name, v)| {
            OrgName::new(name.as_str())
                .map(|n| (n, v))
                .map_err(|e| StoreError::Corrupt(format!("orgs {name:?}: {e}")))
        })
        .collect()
}

/// Brings `cache` up to date with the store: reads again the unsettled
/// meters of every organisation whose copy is missing or outdated (all of
/// them, the first time).
pub(crate) async fn refresh(
    conn: &mut PgConnection,
    cache: &mut MeterCache,
    versions: &HashMap<OrgName, i64>,
) -> Result<(), StoreError> {
    let stale = cache.stale(versions);
    if stale.is_empty() {
        return Ok(());
    }
    let all = cache.is_empty();
    let filter = if all { "" } else { " AND m.org = ANY($1)" };
    let sql = format!("SELECT {STORED_METER_COLUMNS} FROM meters AS m WHERE NOT m.settled{filter}");
    let mut query = sqlx::query_as::<_, StoredMeterRow>(&sql);
    if !all {
        query = query.bind(stale.iter().map(|o| o.as_str()).collect::<Vec<_>>());
    }
    let read = query
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(StoredMeter::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    cache.refill(&stale, versions, read);
    Ok(())
}

/// Writes back what a pass charged: the meters that follow their
/// organisation's `accrued_until` from now on, those written as they are,
/// and each touched organisation's new `meters_version`.
pub(crate) async fn charged(
    conn: &mut PgConnection,
    writes: &PassWrites,
) -> Result<(), StoreError> {
    if !writes.follow.is_empty() {
        sqlx::query(
            "UPDATE meters SET follows = TRUE, charged_until = NULL \
             FROM unnest($1::TEXT[], $2::TEXT[]) AS k(org, id) \
             WHERE meters.org = k.org AND meters.id = k.id",
        )
        .bind(
            writes
                .follow
                .iter()
                .map(|m| m.cluster.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .follow
                .iter()
                .map(|m| m.id.as_str())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    }
    let mut written = MeterColumns::default();
    writes.written.iter().for_each(|m| written.push(m));
    update(conn, &written).await?;
    bump(conn, &writes.touched).await
}

/// An organisation's meters, by launch.
pub(crate) async fn of_org(
    conn: &mut PgConnection,
    org: &OrgName,
) -> Result<Vec<NodeMeter>, StoreError> {
    let rows: Vec<MeterRow> = sqlx::query_as(&format!(
        "SELECT {METER_COLUMNS_NAMED} FROM {METERS_FROM} WHERE m.org = $1 \
         ORDER BY m.launched_at, m.id"
    ))
    .bind(org.as_str())
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter().map(NodeMeter::try_from).collect()
}
