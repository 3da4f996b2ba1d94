//! Node meters on SQLite (see `flotilla_store::meters`): moved when the
//! leader publishes a metered cluster's nodes and charged by the accrual
//! pass, each inside the caller's write transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flotilla_domain::{LedgerEntry, NodeMeter, OrgName};
use flotilla_store::sql::{
    self as row, MeterColumns, MeterRow, METERS_FROM, METER_COLUMNS, METER_COLUMNS_NAMED,
};
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
        // The rows drive the statement (each looks its organisation up by
        // key); a join would let SQLite scan the rows once per organisation.
        "INSERT INTO meters (org, id, launched_at, price, charged_until, ended_at, ended, settled) \
         SELECT j.org, j.id, j.launched_at, j.price, \
                (SELECT CASE WHEN o.metered_from > j.launched_at THEN o.metered_from END \
                 FROM orgs AS o WHERE o.name = j.org), \
                j.ended_at, j.ended, FALSE \
         FROM (SELECT json_extract(value, '$[0]') AS org, json_extract(value, '$[1]') AS id, \
                      json_extract(value, '$[2]') AS launched_at, json_extract(value, '$[3]') AS price, \
                      json_extract(value, '$[5]') AS ended_at, json_extract(value, '$[6]') AS ended \
               FROM json_each($1)) AS j \
         WHERE EXISTS (SELECT 1 FROM orgs WHERE orgs.name = j.org) \
         ON CONFLICT (org, id) DO NOTHING",
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
        "UPDATE meters SET charged_until = json_extract(j.value, '$[4]'), follows = FALSE, \
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

/// The meters not yet settled, of one organisation or of all. Read as one
/// JSON value, not a row at a time: a pass reads one per running node, and
/// rows cross from SQLite's thread one by one.
async fn unsettled(
    conn: &mut SqliteConnection,
    org: Option<&OrgName>,
) -> Result<Vec<NodeMeter>, StoreError> {
    // Two statements, not one with `$1 OR m.org = $2`: one organisation's
    // is found through the index.
    let filter = if org.is_some() { " AND m.org = $1" } else { "" };
    let sql = format!(
        "SELECT json_group_array(json_array({METER_COLUMNS})) FROM {METERS_FROM} \
         WHERE NOT m.settled{filter}"
    );
    let mut query = sqlx::query_scalar::<_, String>(&sql);
    if let Some(org) = org {
        query = query.bind(org.as_str());
    }
    let json: String = query.fetch_one(&mut *conn).await?;
    let rows: Vec<MeterRow> =
        serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("meters: {e}")))?;
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
    let mut on_record = unsettled(conn, Some(org)).await?;
    on_record.extend(settled_of(conn, org, published).await?);
    let writes = meters::on_publish(on_record, published, price, now);
    let mut add_cols = MeterColumns::default();
    writes.add.iter().for_each(|m| add_cols.push(m));
    add(conn, &add_cols).await?;
    let mut ended = MeterColumns::default();
    writes.changed.iter().for_each(|m| ended.push(m));
    update(conn, &ended).await?;
    for n in &writes.notes {
        note(conn, org, n).await?;
    }
    Ok(())
}

/// The settled meters of the nodes `published` lists: a listing missed
/// them, and they run again.
async fn settled_of(
    conn: &mut SqliteConnection,
    org: &OrgName,
    published: &ClusterNodes,
) -> Result<Vec<NodeMeter>, StoreError> {
    if published.nodes.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = published.nodes.iter().map(|n| n.id.as_str()).collect();
    let rows: Vec<MeterRow> = sqlx::query_as(&format!(
        "SELECT {METER_COLUMNS_NAMED} FROM {METERS_FROM} \
         WHERE m.settled AND m.org = $1 AND m.id IN (SELECT value FROM json_each($2))"
    ))
    .bind(org.as_str())
    .bind(serde_json::to_string(&ids).expect("strings serialise"))
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter().map(NodeMeter::try_from).collect()
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

/// Writes back the meters a pass charged, which were every meter not yet
/// settled: the running ones were charged to `now`, the organisations'
/// `accrued_until`, which they follow from then on (no row per node and
/// pass); the ended ones (few) each to its end, explicitly.
pub(crate) async fn charged(
    conn: &mut SqliteConnection,
    meters: impl Iterator<Item = NodeMeter>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut ended = MeterColumns::default();
    let mut running = false;
    for m in meters {
        if m.end.is_some() {
            ended.push(&m);
        } else {
            running = true;
        }
    }
    if running {
        // Charged to `now`, which is the organisations' accrued_until now:
        // those not following yet follow from here on.
        sqlx::query(
            // Only where the organisation's accrued_until is that `now`
            // (it is not if the clock went back).
            "UPDATE meters SET follows = TRUE, charged_until = NULL \
             WHERE NOT settled AND NOT follows AND ended_at IS NULL AND launched_at <= $1 \
                 AND (SELECT accrued_until FROM orgs WHERE orgs.name = meters.org) = $1",
        )
        .bind(row::to_millis(now))
        .execute(&mut *conn)
        .await?;
    }
    update(conn, &ended).await
}

/// An organisation's meters, by launch.
pub(crate) async fn of_org(
    conn: &mut SqliteConnection,
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
