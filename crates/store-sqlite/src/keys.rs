//! Signing keys: added and retired through the one writer, so a check for
//! "no keys yet" and the insert it allows cannot interleave with another.

use chrono::{DateTime, Utc};
use flotilla_store::sql::{self as row, SigningKeyRow};
use flotilla_store::{keys_change, AddKeys, SigningKeyRecord, StoreError};

use crate::{record_changes, SqliteStore};

pub(crate) async fn list(store: &SqliteStore) -> Result<Vec<SigningKeyRecord>, StoreError> {
    let rows: Vec<SigningKeyRow> = sqlx::query_as(row::SIGNING_KEYS_SELECT)
        .fetch_all(&store.reader)
        .await?;
    rows.into_iter().map(SigningKeyRecord::try_from).collect()
}

pub(crate) async fn add(
    store: &SqliteStore,
    keys: &[SigningKeyRecord],
    how: AddKeys,
) -> Result<bool, StoreError> {
    let mut tx = store.begin_write().await?;
    if how == AddKeys::IfNone {
        let any: Option<i64> =
            sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM signing_keys LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        if any.is_some() {
            return Ok(false);
        }
    }
    let mut changes = Vec::new();
    for k in keys {
        let added = sqlx::query(
            "INSERT INTO signing_keys (kid, pem, active, created_at) VALUES ($1, $2, FALSE, $3) \
             ON CONFLICT (kid) DO NOTHING",
        )
        .bind(&k.kid)
        .bind(&k.pem)
        .bind(row::to_millis(k.created_at))
        .execute(&mut *tx)
        .await?;
        if added.rows_affected() == 1 {
            changes.push(keys_change(&k.kid));
            if k.active {
                sqlx::query("UPDATE signing_keys SET active = (kid = $1)")
                    .bind(&k.kid)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    if changes.is_empty() {
        return Ok(false);
    }
    let at = keys.iter().map(|k| k.created_at).max().unwrap_or_default();
    record_changes(&mut tx, &changes, at).await?;
    store.commit(tx).await?;
    Ok(true)
}

pub(crate) async fn retire(
    store: &SqliteStore,
    kid: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let mut tx = store.begin_write().await?;
    let active: Option<bool> = sqlx::query_scalar("SELECT active FROM signing_keys WHERE kid = $1")
        .bind(kid)
        .fetch_optional(&mut *tx)
        .await?;
    match active {
        None => Ok(false),
        Some(true) => Err(StoreError::KeyActive(kid.to_owned())),
        Some(false) => {
            sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
                .bind(kid)
                .execute(&mut *tx)
                .await?;
            record_changes(&mut tx, &[keys_change(kid)], now).await?;
            store.commit(tx).await?;
            Ok(true)
        }
    }
}
