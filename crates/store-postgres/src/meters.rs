//! Node meters on PostgreSQL (see `flotilla_store::meters`): moved when the
//! leader publishes a metered cluster's nodes and charged by the accrual
//! pass, each inside the caller's transaction. Publishing holds
//! [`Lock::Orgs`] shared, so a pass (which holds it alone) never charges a
//! meter that a publication read and is about to end.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flotilla_domain::{LedgerEntry, NodeMeter, OrgName};
use flotilla_store::sql::{self as row, MeterColumns, MeterRow, METERS_FROM, METER_COLUMNS_NAMED};
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
        "INSERT INTO meters (org, id, launched_at, price, charged_until, ended_at, ended, settled) \
         SELECT j.v->>0, j.v->>1, (j.v->>2)::BIGINT, (j.v->>3)::BIGINT, \
                CASE WHEN o.metered_from > (j.v->>2)::BIGINT THEN o.metered_from END, \
                (j.v->>5)::BIGINT, j.v->>6, FALSE \
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

async fn unsettled(
    conn: &mut PgConnection,
    org: Option<&OrgName>,
) -> Result<Vec<NodeMeter>, StoreError> {
    // Two statements, not one with `$1 OR m.org = $2`: one organisation's
    // is found through the index.
    let filter = if org.is_some() { " AND m.org = $1" } else { "" };
    let sql =
        format!("SELECT {METER_COLUMNS_NAMED} FROM {METERS_FROM} WHERE NOT m.settled{filter}");
    let mut query = sqlx::query_as::<_, MeterRow>(&sql);
    if let Some(org) = org {
        query = query.bind(org.as_str());
    }
    let rows: Vec<MeterRow> = query.fetch_all(&mut *conn).await?;
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
    let Some(price) = published.meter else {
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
         WHERE m.settled AND m.org = $1 AND m.id = ANY($2)"
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
    conn: &mut PgConnection,
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
    conn: &mut PgConnection,
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
