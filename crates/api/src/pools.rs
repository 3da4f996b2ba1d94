//! The pools: what each makes, written and retired through the API with
//! their history and schemas, and what went wrong making their nodes.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_api_types as types;
use flotilla_control::{
    ApplyPool, ClusterReplacement, PauseRollout, PoolApplied, PoolDetail, PoolRollout, PoolVersion,
    ResumeRollout, RetirePool, SharedConfigView, WriteSharedConfig,
};
use flotilla_domain::{authorize_status, Caller, ClusterName, PoolSource};
use flotilla_engine::PoolView;

use crate::extract::{malformed_query, CallerIdentity, JsonBody};
use crate::{ApiError, AppState};

fn source_str(source: PoolSource) -> &'static str {
    match source {
        PoolSource::Config => "config",
        PoolSource::Stored { .. } => "api",
    }
}

fn detail_body(detail: PoolDetail, caller: &Caller) -> types::PoolDetail {
    types::PoolDetail {
        name: detail.name.to_string(),
        source: source_str(detail.source).to_owned(),
        version: match detail.source {
            PoolSource::Stored { version } => Some(version),
            PoolSource::Config => None,
        },
        default: detail.is_default,
        document: serde_json::to_value(&detail.document).unwrap_or_default(),
        updated_at: detail.updated.as_ref().map(|(at, _)| *at),
        updated_by: detail.updated.map(|(_, by)| by),
        // Only those the caller may see the status of.
        clusters: detail
            .clusters
            .into_iter()
            .filter(|c| visible(caller, c))
            .map(|c| c.to_string())
            .collect(),
        image: detail
            .image
            .as_ref()
            .ok()
            .and_then(|i| i.as_ref().map(|i| i.image.clone())),
        image_from: detail.image.as_ref().ok().and_then(|i| {
            i.as_ref()
                .and_then(|i| i.from.as_ref())
                .map(|(name, version)| types::SharedConfigRef {
                    shared_config: name.to_string(),
                    version: *version,
                })
        }),
        image_problem: detail.image.err(),
        hidden: Vec::new(),
    }
}

fn visible(caller: &Caller, cluster: &ClusterName) -> bool {
    authorize_status(caller, cluster, false).is_ok()
}

fn version_body(v: PoolVersion) -> types::PoolVersion {
    types::PoolVersion {
        version: v.version,
        at: v.at,
        by: v.by,
        retired: v.document.is_none(),
        schema_version: v.schema_version,
        document: v.document,
    }
}

fn applied_body(applied: PoolApplied, dry_run: bool, caller: &Caller) -> types::PoolApplied {
    types::PoolApplied {
        outcome: applied.outcome.as_str().to_owned(),
        dry_run,
        changed_fields: applied.changed_fields,
        pool: detail_body(applied.pool, caller),
        launch_version: applied.launch_version.ok().map(|v| v.to_string()),
        replaces: applied.replaces.into_iter().map(replacement_body).collect(),
    }
}

fn replacement_body(c: ClusterReplacement) -> types::ClusterReplacement {
    types::ClusterReplacement {
        cluster: c.cluster.to_string(),
        nodes: c.nodes,
        outdated: c.outdated.into_iter().map(|id| id.to_string()).collect(),
    }
}

fn rollout_body(r: PoolRollout) -> types::PoolRollout {
    let rollout = r.rollout;
    types::PoolRollout {
        outdated: r.outdated() as u32,
        pool: r.pool.to_string(),
        state: r.state.to_owned(),
        launch_version: r.version.as_ref().ok().map(ToString::to_string),
        error: r.version.err(),
        paused: r
            .hold
            .as_ref()
            .and_then(|h| h.paused.as_ref())
            .map(|p| types::RolloutPause {
                by: p.by.clone(),
                at: p.at,
            }),
        stopped: r.hold.and_then(|h| h.stopped).map(|s| types::RolloutStop {
            launch_version: s.version.to_string(),
            reason: s.reason,
            at: s.at,
        }),
        clusters: r.clusters.into_iter().map(replacement_body).collect(),
        max_surge: rollout.max_surge.to_string(),
        max_unavailable: rollout.max_unavailable.to_string(),
        max_failures: rollout.max_failures,
    }
}

/// A pool's rollout: the nodes of its clusters (those the caller may see)
/// made from an older version of its launch configuration, which are
/// being replaced, and whether that is paused or stopped.
#[utoipa::path(
    get,
    path = "/api/v1/pools/{pool}/rollout",
    params(("pool" = String, Path, description = "Pool name")),
    responses(
        (status = 200, body = types::PoolRollout),
        (status = 401, body = types::ErrorBody),
        (status = 404, description = "No such pool", body = types::ErrorBody),
    )
)]
pub(crate) async fn get_rollout(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(pool): Path<String>,
) -> Result<Json<types::PoolRollout>, ApiError> {
    rollout_answer(state.control.pool_rollout(&caller, &pool))
}

/// Pauses a pool's rollout (admins and its owners): replacements under
/// way finish, no others start; outdated nodes keep serving. Until
/// resumed.
#[utoipa::path(
    post,
    path = "/api/v1/pools/{pool}/rollout/pause",
    params(("pool" = String, Path, description = "Pool name")),
    responses(
        (status = 200, body = types::PoolRollout),
        (status = 403, description = "Neither an admin nor one of its owners", body = types::ErrorBody),
        (status = 404, description = "No such pool", body = types::ErrorBody),
    )
)]
pub(crate) async fn pause_rollout(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(pool): Path<String>,
) -> Result<Json<types::PoolRollout>, ApiError> {
    let rollout = state.control.run(&caller, PauseRollout { pool }).await;
    rollout_answer(rollout)
}

/// The answer to a pause or a resumption.
fn rollout_answer(
    rollout: Result<PoolRollout, flotilla_engine::EngineError>,
) -> Result<Json<types::PoolRollout>, ApiError> {
    Ok(Json(rollout_body(rollout.map_err(not_found)?)))
}

/// Resumes a pool's rollout, paused or stopped (admins and its owners).
#[utoipa::path(
    post,
    path = "/api/v1/pools/{pool}/rollout/resume",
    params(("pool" = String, Path, description = "Pool name")),
    responses(
        (status = 200, body = types::PoolRollout),
        (status = 403, description = "Neither an admin nor one of its owners", body = types::ErrorBody),
        (status = 404, description = "No such pool", body = types::ErrorBody),
    )
)]
pub(crate) async fn resume_rollout(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(pool): Path<String>,
) -> Result<Json<types::PoolRollout>, ApiError> {
    let rollout = state.control.run(&caller, ResumeRollout { pool }).await;
    rollout_answer(rollout)
}

/// Creates or changes a pool (admins; and the pool's owners, for a pool
/// that names them). The body is the pool as written, checked against its
/// driver's schema (GET /api/v1/schemas/{driver}/pool) and by its driver:
/// every problem is answered at once, each at its JSON pointer, and
/// nothing is stored. Writing what the pool already is changes nothing.
/// A pool of the server's config file cannot be written here.
#[utoipa::path(
    put,
    path = "/api/v1/pools/{pool}",
    params(("pool" = String, Path, description = "Pool name"), types::DryRunQuery),
    request_body(content = Object, description = "The pool: driver, instance_type or instance_types, and the optional fields of its driver's schema"),
    responses(
        (status = 200, body = types::PoolApplied),
        (status = 401, body = types::ErrorBody),
        (status = 403, description = "Neither an admin nor one of its owners", body = types::ErrorBody),
        (status = 409, description = "A pool of the config file (pool_in_config), written by another meanwhile (pool_changed), or whose image names a shared config that gives none now (pool_image_unresolved, with problems)", body = types::ErrorBody),
        (status = 422, description = "Not a valid pool (invalid_pool, with problems), or an invalid name", body = types::ErrorBody),
    )
)]
pub(crate) async fn apply_pool(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(pool): Path<String>,
    query: Result<Query<types::DryRunQuery>, axum::extract::rejection::QueryRejection>,
    JsonBody(document): JsonBody<serde_json::Value>,
) -> Result<Json<types::PoolApplied>, ApiError> {
    let Query(query) =
        query.map_err(|e| malformed_query(e, "use ?dry_run=true and ?expected_version=N"))?;
    let dry_run = query.dry_run.unwrap_or(false);
    let command = ApplyPool {
        pool,
        document,
        expected_version: query.expected_version,
    };
    let applied = if dry_run {
        state.control.dry_run_pool(&caller, &command).await?
    } else {
        state.control.run(&caller, command).await?
    };
    Ok(Json(applied_body(applied, dry_run, &caller)))
}

/// A pool in full: its document, where it comes from, who last wrote it,
/// and the clusters (that the caller may see) using it. Admins and its
/// owners see all of it; others not what its nodes run (`init_data`) nor
/// its driver's section (`ec2`), which may hold secrets (`hidden` says).
#[utoipa::path(
    get,
    path = "/api/v1/pools/{pool}",
    params(("pool" = String, Path, description = "Pool name")),
    responses(
        (status = 200, body = types::PoolDetail),
        (status = 401, body = types::ErrorBody),
        (status = 404, description = "No such pool", body = types::ErrorBody),
    )
)]
pub(crate) async fn get_pool(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(pool): Path<String>,
) -> Result<Json<types::PoolDetail>, ApiError> {
    let (detail, hidden) = state
        .control
        .pool_detail_as(&caller, &pool)
        .await
        .map_err(not_found)?;
    let mut body = detail_body(detail, &caller);
    body.hidden = hidden.into_iter().map(str::to_owned).collect();
    Ok(Json(body))
}

/// Retires a pool written through the API (admins and its owners): no
/// cluster may use it afterwards. Refused while a cluster's record or an
/// organisation's settings name it. Its history is kept; applying it again
/// brings it back.
#[utoipa::path(
    delete,
    path = "/api/v1/pools/{pool}",
    params(("pool" = String, Path, description = "Pool name")),
    responses(
        (status = 200, description = "The version that retired it", body = types::PoolVersion),
        (status = 403, body = types::ErrorBody),
        (status = 404, description = "No such pool written through the API", body = types::ErrorBody),
        (status = 409, description = "A pool of the config file, or one in use (pool_in_use)", body = types::ErrorBody),
    )
)]
pub(crate) async fn retire_pool(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(pool): Path<String>,
) -> Result<Json<types::PoolVersion>, ApiError> {
    let retired = state
        .control
        .run(&caller, RetirePool { pool })
        .await
        .map_err(not_found)?;
    Ok(Json(version_body(retired)))
}

/// Every version of a pool written through the API, oldest first (none
/// for a pool of the config file).
#[utoipa::path(
    get,
    path = "/api/v1/pools/{pool}/history",
    params(("pool" = String, Path, description = "Pool name")),
    responses(
        (status = 200, body = types::PoolHistory),
        (status = 401, body = types::ErrorBody),
        (status = 404, description = "No such pool, now or ever", body = types::ErrorBody),
    )
)]
pub(crate) async fn pool_history(
    State(state): State<AppState>,
    Path(pool): Path<String>,
) -> Result<Json<types::PoolHistory>, ApiError> {
    let versions = state.control.pool_history(&pool).await.map_err(not_found)?;
    Ok(Json(types::PoolHistory {
        pool,
        versions: versions.into_iter().map(version_body).collect(),
    }))
}

/// The schemas this server publishes: for each configured driver, where
/// the JSON Schema of a pool on it is.
#[utoipa::path(get, path = "/api/v1/schemas", responses((status = 200, body = types::SchemaIndex)))]
pub(crate) async fn schema_index(State(state): State<AppState>) -> Json<types::SchemaIndex> {
    Json(types::SchemaIndex {
        drivers: state
            .control
            .catalog()
            .drivers()
            .map(|(name, kind)| types::SchemaEntry {
                driver: name.to_owned(),
                kind: kind.to_owned(),
                pool: format!("/api/v1/schemas/{name}/pool"),
                shared: state
                    .control
                    .catalog()
                    .shared_kinds(name)
                    .into_iter()
                    .map(|k| (k.to_owned(), format!("/api/v1/schemas/{name}/shared/{k}")))
                    .collect(),
            })
            .collect(),
    })
}

/// The JSON Schema (draft 2020-12) of a pool on driver `driver`: every
/// field, its type, its rules and what it means.
#[utoipa::path(
    get,
    path = "/api/v1/schemas/{driver}/pool",
    params(("driver" = String, Path, description = "A configured driver's name")),
    responses(
        (status = 200, description = "A JSON Schema", body = Object),
        (status = 404, description = "No such driver", body = types::ErrorBody),
    )
)]
pub(crate) async fn pool_schema(
    State(state): State<AppState>,
    Path(driver): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let catalog = state.control.catalog();
    match catalog.schema(&driver) {
        Some(schema) => Ok(Json(schema.clone())),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_driver",
            format!(
                "no driver named {driver:?}; configured: {}",
                catalog
                    .drivers()
                    .map(|(n, _)| n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The JSON Schema (draft 2020-12) of a shared config of kind `kind` on
/// driver `driver` (`images`: one image, or one per key).
#[utoipa::path(
    get,
    path = "/api/v1/schemas/{driver}/shared/{kind}",
    params(
        ("driver" = String, Path, description = "A configured driver's name"),
        ("kind" = String, Path, description = "A kind of shared config it publishes, as images"),
    ),
    responses(
        (status = 200, description = "A JSON Schema", body = Object),
        (status = 404, description = "No such driver or kind", body = types::ErrorBody),
    )
)]
pub(crate) async fn shared_schema(
    State(state): State<AppState>,
    Path((driver, kind)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let catalog = state.control.catalog();
    match catalog.shared_schema(&driver, &kind) {
        Some(schema) => Ok(Json(schema.clone())),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_schema",
            format!("no schema {driver}/{kind}; see GET /api/v1/schemas for those published"),
        )),
    }
}

fn shared_body(view: SharedConfigView) -> types::SharedConfigView {
    let r = view.record;
    types::SharedConfigView {
        name: r.name.to_string(),
        version: r.version,
        latest: view.latest,
        schema: r.kind,
        schema_document: r.schema,
        value: r.value,
        at: r.at,
        by: r.by,
        used_by: view.used_by.iter().map(ToString::to_string).collect(),
    }
}

/// Creates a shared config (admins; `schema` names the published schema
/// it follows, fixed from then on) or writes its next version, which must
/// follow that schema. Every problem is answered at once; nothing is
/// stored. Pools that name it launch with its latest version from then on.
#[utoipa::path(
    put,
    path = "/api/v1/shared-configs/{name}",
    params(("name" = String, Path, description = "Shared config name"), types::ExpectedVersionQuery),
    request_body = types::SharedConfigRequest,
    responses(
        (status = 200, body = types::SharedConfigView),
        (status = 403, description = "Not an admin", body = types::ErrorBody),
        (status = 404, description = "No such shared config to update (name its schema to create it)", body = types::ErrorBody),
        (status = 409, description = "Written by another meanwhile, or another schema than the one it was created with", body = types::ErrorBody),
        (status = 422, description = "Not valid (invalid_shared_config, with problems), or an invalid name", body = types::ErrorBody),
    )
)]
pub(crate) async fn write_shared_config(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(name): Path<String>,
    query: Result<Query<types::ExpectedVersionQuery>, axum::extract::rejection::QueryRejection>,
    JsonBody(body): JsonBody<types::SharedConfigRequest>,
) -> Result<Json<types::SharedConfigView>, ApiError> {
    let Query(query) = query.map_err(|e| malformed_query(e, "use ?expected_version=N"))?;
    let command = WriteSharedConfig {
        name,
        kind: body.schema,
        value: body.value,
        expected_version: query.expected_version,
    };
    Ok(Json(shared_body(
        state.control.run(&caller, command).await?,
    )))
}

/// A shared config: its latest version, or `?version=N`.
#[utoipa::path(
    get,
    path = "/api/v1/shared-configs/{name}",
    params(("name" = String, Path, description = "Shared config name"), types::VersionQuery),
    responses(
        (status = 200, body = types::SharedConfigView),
        (status = 404, description = "No such shared config (or version)", body = types::ErrorBody),
    )
)]
pub(crate) async fn get_shared_config(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<types::VersionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<types::SharedConfigView>, ApiError> {
    let Query(query) = query.map_err(|e| malformed_query(e, "use ?version=N"))?;
    Ok(Json(shared_body(
        state.control.shared_config(&name, query.version).await?,
    )))
}

/// Every shared config, at its latest version.
#[utoipa::path(
    get,
    path = "/api/v1/shared-configs",
    responses((status = 200, body = types::SharedConfigList))
)]
pub(crate) async fn list_shared_configs(
    State(state): State<AppState>,
) -> Result<Json<types::SharedConfigList>, ApiError> {
    Ok(Json(types::SharedConfigList {
        shared_configs: state
            .control
            .shared_configs()
            .await?
            .into_iter()
            .map(shared_body)
            .collect(),
    }))
}

/// A pool named in the path that does not exist is not found (in a body,
/// where it is a value, it is invalid).
fn not_found(e: flotilla_engine::EngineError) -> ApiError {
    match e {
        e @ flotilla_engine::EngineError::UnknownPool { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_pool", e.to_string())
        }
        other => other.into(),
    }
}

pub fn pool_body(view: PoolView) -> types::PoolView {
    let types: Vec<types::PoolTypeView> = view
        .types
        .into_iter()
        .map(|(t, offering)| types::PoolTypeView {
            instance_type: t.instance_type.to_string(),
            price_per_hour: t.price_per_hour.to_string(),
            shape: offering.shape.map(|s| types::InstanceShape {
                vcpus: s.vcpus,
                memory_mib: s.memory_mib,
            }),
            spot_price: offering.spot_price.map(|p| types::SpotPrice {
                usd_per_hour: p.usd_per_hour,
                availability_zone: p.availability_zone,
                since: p.since,
            }),
        })
        .collect();
    let first = types.first().cloned();
    types::PoolView {
        name: view.name.to_string(),
        driver: view.driver,
        instance_type: first
            .as_ref()
            .map_or_else(String::new, |t| t.instance_type.clone()),
        default: view.is_default,
        price_per_hour: first
            .as_ref()
            .map_or_else(String::new, |t| t.price_per_hour.clone()),
        shape: first.as_ref().and_then(|t| t.shape),
        spot_price: first.and_then(|t| t.spot_price),
        source: source_str(view.source).to_owned(),
        types,
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
    let errors = state
        .control
        .pool_errors(&caller, &pool, limit)
        .await
        .map_err(not_found)?;
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
