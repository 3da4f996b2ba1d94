//! Node meters on SQLite (see `flotilla_store::meters`): moved when the
//! leader publishes a metered cluster's nodes and charged by the accrual
//! pass, each inside the caller's write transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flotilla_domain::{LedgerEntry, NodeMeter, OrgName};
use flotilla_store::sql::{self as row, MeterColumns, MeterRow, METER_COLUMNS};
use flotilla_store::{meters, ClusterNodes, OrgUsage, StoreError};
use sqlx::SqliteConnection;

/// Adds meters, keeping any already on record. A node already running
/// when meters came in is metered from where the passes before them had
/// charged it (`metered_from`). Organisations that do not exist are
/// skipped.
async fn add(conn: &mut SqliteConnection, new: &MeterColumns) -> Result<(), StoreError> {
    if new.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO meters (org, id, launched_at, price, charged_until, ended_at, ended, settled) \
         SELECT json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'), \
                json_extract(j.value, '$[2]'), json_extract(j.value, '$[3]'), \
                CASE WHEN o.metered_from > json_extract(j.value, '$[2]') THEN o.metered_from END, \
                json_extract(j.value, '$[5]'), json_extract(j.value, '$[6]'), FALSE \
         FROM json_each($1) AS j JOIN orgs AS o ON o.name = json_extract(j.value, '$[0]') \
         WHERE TRUE ON CONFLICT (org, id) DO NOTHING",
    )
    .bind(new.to_json())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Writes back how far each meter is charged, its end, and whether it is
/// settled.
async fn update(conn: &mut SqliteConnection, changed: &MeterColumns) -> Result<(), StoreError> {
    if changed.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE meters SET charged_until = json_extract(j.value, '$[4]'), \
             ended_at = json_extract(j.value, '$[5]'), ended = json_extract(j.value, '$[6]'), \
             settled = json_extract(j.value, '$[7]') \
         FROM json_each($1) AS j \
         WHERE meters.org = json_extract(j.value, '$[0]') AND meters.id = json_extract(j.value, '$[1]')",
    )
    .bind(changed.to_json())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn unsettled(
    conn: &mut SqliteConnection,
    org: Option<&OrgName>,
) -> Result<Vec<NodeMeter>, StoreError> {
    let rows: Vec<MeterRow> = sqlx::query_as(&format!(
        "SELECT {METER_COLUMNS} FROM meters WHERE NOT settled AND ($1 OR org = $2)"
    ))
    .bind(org.is_none())
    .bind(org.map(|o| o.as_str()))
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter().map(NodeMeter::try_from).collect()
}

async fn note(
    conn: &mut SqliteConnection,
    org: &OrgName,
    e: &LedgerEntry,
) -> Result<(), StoreError> {
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
    conn: &mut SqliteConnection,
    published: &ClusterNodes,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let Some(price) = published.meter else {
        return Ok(());
    };
    let org = &published.cluster;
    let exists: Option<bool> = sqlx::query_scalar("SELECT TRUE FROM orgs WHERE name = $1")
        .bind(org.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Ok(());
    }
    let writes = meters::on_publish(unsettled(conn, Some(org)).await?, published, price, now);
    let mut add_cols = MeterColumns::default();
    writes.add.iter().for_each(|m| add_cols.push(m));
    add(conn, &add_cols).await?;
    let mut ended = MeterColumns::default();
    writes.ended.iter().for_each(|m| ended.push(m));
    update(conn, &ended).await?;
    for n in &writes.notes {
        note(conn, org, n).await?;
    }
    Ok(())
}

/// Puts on the meter the listed nodes not on it yet.
pub(crate) async fn add_listed(
    conn: &mut SqliteConnection,
    usage: &[OrgUsage],
) -> Result<(), StoreError> {
    let mut cols = MeterColumns::default();
    for u in usage {
        for (id, launched) in &u.nodes {
            cols.push(&NodeMeter::new(
                u.org.clone(),
                id.clone(),
                *launched,
                u.price_per_hour,
            ));
        }
    }
    add(conn, &cols).await
}

/// Every meter not yet settled, by organisation.
pub(crate) async fn unsettled_by_org(
    conn: &mut SqliteConnection,
) -> Result<HashMap<OrgName, Vec<NodeMeter>>, StoreError> {
    let mut by_org: HashMap<OrgName, Vec<NodeMeter>> = HashMap::new();
    for m in unsettled(conn, None).await? {
        by_org.entry(m.cluster.clone()).or_default().push(m);
    }
    Ok(by_org)
}

/// Writes back the meters a pass charged.
pub(crate) async fn charged(
    conn: &mut SqliteConnection,
    meters: impl Iterator<Item = NodeMeter>,
) -> Result<(), StoreError> {
    let mut cols = MeterColumns::default();
    meters.for_each(|m| cols.push(&m));
    update(conn, &cols).await
}

/// An organisation's meters, by launch.
pub(crate) async fn of_org(
    conn: &mut SqliteConnection,
    org: &OrgName,
) -> Result<Vec<NodeMeter>, StoreError> {
    let rows: Vec<MeterRow> = sqlx::query_as(&format!(
        "SELECT {METER_COLUMNS} FROM meters WHERE org = $1 ORDER BY launched_at, id"
    ))
    .bind(org.as_str())
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter().map(NodeMeter::try_from).collect()
}
