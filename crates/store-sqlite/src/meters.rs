//! Node meters on SQLite (see `flotilla_store::meters`): moved when the
//! leader publishes a metered cluster's nodes and charged by the accrual
//! pass, each inside the caller's write transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flotilla_domain::{LedgerEntry, NodeMeter, OrgName};
use flotilla_store::meters::{MeterCache, PassWrites, StoredMeter};
use flotilla_store::sql::{
    self as row, MeterColumns, MeterRow, StoredMeterRow, METERS_FROM, METER_COLUMNS_NAMED,
    STORED_METER_COLUMNS,
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
        "INSERT INTO meters (org, id, launched_at, price, charged_until, ended_at, ended, settled, \
             job, charged_to) \
         SELECT j.org, j.id, j.launched_at, j.price, \
                (SELECT CASE WHEN o.metered_from > j.launched_at THEN o.metered_from END \
                 FROM orgs AS o WHERE o.name = j.org), \
                j.ended_at, j.ended, FALSE, j.job, j.charged_to \
         FROM (SELECT json_extract(value, '$[0]') AS org, json_extract(value, '$[1]') AS id, \
                      json_extract(value, '$[2]') AS launched_at, json_extract(value, '$[3]') AS price, \
                      json_extract(value, '$[5]') AS ended_at, json_extract(value, '$[6]') AS ended, \
                      json_extract(value, '$[8]') AS job, json_extract(value, '$[9]') AS charged_to \
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

/// The meters of one organisation not yet settled.
async fn unsettled(
    conn: &mut SqliteConnection,
    org: &OrgName,
) -> Result<Vec<NodeMeter>, StoreError> {
    let rows: Vec<MeterRow> = sqlx::query_as(&format!(
        "SELECT {METER_COLUMNS_NAMED} FROM {METERS_FROM} WHERE NOT m.settled AND m.org = $1 AND m.job IS NULL"
    ))
    .bind(org.as_str())
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
    let Some(prices) = &published.meter else {
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
/// instances of jobs charged to organisations would get.
pub(crate) async fn on_job_listing(
    conn: &mut SqliteConnection,
    listed: &[NodeMeter],
    unwatched: bool,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let keys: Vec<(&str, &str)> = listed
        .iter()
        .map(|m| (m.cluster.as_str(), m.id.as_str()))
        .collect();
    // The unsettled by the partial index, the listed settled ones by key:
    // never a scan of every job meter ever kept.
    let rows: Vec<MeterRow> = sqlx::query_as(&format!(
        "SELECT {METER_COLUMNS_NAMED} FROM {METERS_FROM} WHERE NOT m.settled AND m.job IS NOT NULL \
         UNION ALL \
         SELECT {METER_COLUMNS_NAMED} FROM json_each($1) AS j \
             JOIN meters AS m ON m.org = json_extract(j.value, '$[0]') \
                 AND m.id = json_extract(j.value, '$[1]') \
             JOIN orgs AS o ON o.name = m.org \
         WHERE m.settled AND m.job IS NOT NULL"
    ))
    .bind(serde_json::to_string(&keys).expect("strings serialise"))
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
         WHERE m.settled AND m.org = $1 AND m.job IS NULL \
             AND m.id IN (SELECT value FROM json_each($2))"
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
async fn bump(conn: &mut SqliteConnection, orgs: &[OrgName]) -> Result<(), StoreError> {
    if orgs.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = orgs.iter().map(|o| o.as_str()).collect();
    sqlx::query(
        "UPDATE orgs SET meters_version = meters_version + 1 \
         WHERE name IN (SELECT value FROM json_each($1))",
    )
    .bind(serde_json::to_string(&names).expect("strings serialise"))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Every organisation's `meters_version`.
pub(crate) async fn versions(
    conn: &mut SqliteConnection,
) -> Result<HashMap<OrgName, i64>, StoreError> {
    let json: String =
        sqlx::query_scalar("SELECT json_group_array(json_array(name, meters_version)) FROM orgs")
            .fetch_one(&mut *conn)
            .await?;
    let rows: Vec<(String, i64)> =
        serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("orgs: {e}")))?;
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
/// them, the first time), as one JSON value.
pub(crate) async fn refresh(
    conn: &mut SqliteConnection,
    cache: &mut MeterCache,
    versions: &HashMap<OrgName, i64>,
) -> Result<(), StoreError> {
    let stale = cache.stale(versions);
    if stale.is_empty() {
        return Ok(());
    }
    let all = cache.is_empty();
    let filter = if all {
        ""
    } else {
        " AND m.org IN (SELECT value FROM json_each($1))"
    };
    let sql = format!(
        "SELECT json_group_array(json_array({STORED_METER_COLUMNS})) FROM meters AS m \
         WHERE NOT m.settled{filter}"
    );
    let mut query = sqlx::query_scalar::<_, String>(&sql);
    if !all {
        let names: Vec<&str> = stale.iter().map(|o| o.as_str()).collect();
        query = query.bind(serde_json::to_string(&names).expect("strings serialise"));
    }
    let json: String = query.fetch_one(&mut *conn).await?;
    let rows: Vec<StoredMeterRow> =
        serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("meters: {e}")))?;
    let read = rows
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
    conn: &mut SqliteConnection,
    writes: &PassWrites,
) -> Result<(), StoreError> {
    if !writes.follow.is_empty() {
        let keys: Vec<(&str, &str)> = writes
            .follow
            .iter()
            .map(|m| (m.cluster.as_str(), m.id.as_str()))
            .collect();
        sqlx::query(
            "UPDATE meters SET follows = TRUE, charged_until = NULL FROM json_each($1) AS j \
             WHERE meters.org = json_extract(j.value, '$[0]') \
                 AND meters.id = json_extract(j.value, '$[1]')",
        )
        .bind(serde_json::to_string(&keys).expect("strings serialise"))
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
