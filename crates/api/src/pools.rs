//! The pools: what each makes, and what went wrong making its nodes.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_api_types as types;
use flotilla_engine::PoolView;

use crate::extract::{malformed_query, CallerIdentity};
use crate::{ApiError, AppState};

pub fn pool_body(view: PoolView) -> types::PoolView {
    let offering = view.offering;
    types::PoolView {
        name: view.name.to_string(),
        driver: view.driver,
        instance_type: view.instance_type.to_string(),
        default: view.is_default,
        price_per_hour: view.price_per_hour.to_string(),
        shape: offering.shape.map(|s| types::InstanceShape {
            vcpus: s.vcpus,
            memory_mib: s.memory_mib,
        }),
        spot_price: offering.spot_price.map(|p| types::SpotPrice {
            usd_per_hour: p.usd_per_hour,
            availability_zone: p.availability_zone,
            since: p.since,
        }),
    }
}

/// Every pool, with what its driver says its nodes are and cost. Answered
/// from a cache (a minute), so listing pools does not spend the cloud's
/// API budget.
#[utoipa::path(get, path = "/api/v1/pools", responses((status = 200, body = types::PoolList)))]
pub(crate) async fn list_pools(State(state): State<AppState>) -> Json<types::PoolList> {
    Json(types::PoolList {
        pools: state
            .engine
            .list_pools()
            .await
            .into_iter()
            .map(pool_body)
            .collect(),
    })
}

/// What went wrong making a pool's nodes: failed creates and destroys,
/// nodes given up on (boot or probe timeout), each counted when it
/// happened again. Only those of clusters the caller may see.
#[utoipa::path(
    get,
    path = "/api/v1/pools/{pool}/errors",
    params(("pool" = String, Path, description = "Pool name"), types::PoolErrorsQuery),
    responses(
        (status = 200, body = types::PoolErrorList),
        (status = 400, description = "Malformed query", body = types::ErrorBody),
        (status = 404, description = "No such pool", body = types::ErrorBody),
        (status = 422, description = "A limit out of range", body = types::ErrorBody),
    )
)]
pub(crate) async fn pool_errors(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    axum::extract::Path(pool): axum::extract::Path<String>,
    query: Result<Query<types::PoolErrorsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<types::PoolErrorList>, ApiError> {
    let Query(query) = query.map_err(|e| malformed_query(e, "use ?limit=N"))?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > flotilla_control::MAX_POOL_ERRORS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
            format!(
                "limit {limit} is outside 1..={}",
                flotilla_control::MAX_POOL_ERRORS
            ),
        ));
    }
    // A pool in the path that does not exist is not found (in a body,
    // where it is a value, it is invalid).
    let errors = match state.control.pool_errors(&caller, &pool, limit).await {
        Err(e @ flotilla_engine::EngineError::UnknownPool { .. }) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_pool",
                e.to_string(),
            ))
        }
        other => other?,
    };
    Ok(Json(types::PoolErrorList {
        pool,
        errors: errors
            .into_iter()
            .map(|e| types::PoolErrorView {
                kind: e.key.kind.as_str().to_owned(),
                code: e.key.code.map(|c| c.as_str().to_owned()),
                cluster: e.key.cluster.to_string(),
                instance_type: e.key.instance_type.to_string(),
                message: e.message,
                count: e.count,
                first_at: e.first_at,
                last_at: e.last_at,
            })
            .collect(),
    }))
}
