//! The HTTP API. Handlers only parse a request into a front-door command
//! (or question) and render the result; [`ApiError`] maps every failure to
//! a status code and a stable error code, in one place.

pub mod access;
mod accounts;
mod error;
mod events;
mod extract;
mod jobs;
mod nodes;
mod notify;
mod openapi;
mod orgs;
mod pools;
pub mod ratelimit;
mod schedules;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use flotilla_api_types as types;
use flotilla_control::{Control, Deploy, Destroy, Extend};
use flotilla_domain::{ClusterName, NodeState};
use flotilla_engine::{ClusterView, Engine};
use flotilla_identity::Identity;
use prometheus_client::registry::Registry;

use crate::ratelimit::RateLimits;

pub use error::ApiError;
pub use extract::{CallerIdentity, ClusterParam, JsonBody, WaitParam};
pub use jobs::{job_body, AGENT_SHA256_HEADER, ATTEMPT_HEADER, ATTEMPT_TOKEN_HEADER};
pub use openapi::ApiDoc;
pub use pools::pool_body;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    /// The loops: pools, metrics, the clock, who belongs to which
    /// organisation.
    pub engine: Engine,
    /// The front door: commands and the questions about them.
    pub control: Control,
    pub identity: Arc<Identity>,
    pub limits: Arc<RateLimits>,
    pub registry: Arc<Registry>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/api/v1/clusters", get(list_clusters))
        .route("/api/v1/pools", get(pools::list_pools))
        .route(
            "/api/v1/pools/{pool}",
            get(pools::get_pool)
                .put(pools::apply_pool)
                .delete(pools::retire_pool),
        )
        .route("/api/v1/pools/{pool}/errors", get(pools::pool_errors))
        .route("/api/v1/pools/{pool}/history", get(pools::pool_history))
        .route("/api/v1/pools/{pool}/rollout", get(pools::get_rollout))
        .route(
            "/api/v1/pools/{pool}/rollout/pause",
            axum::routing::post(pools::pause_rollout),
        )
        .route(
            "/api/v1/pools/{pool}/rollout/resume",
            axum::routing::post(pools::resume_rollout),
        )
        .route("/api/v1/schemas", get(pools::schema_index))
        .route("/api/v1/schemas/{driver}/pool", get(pools::pool_schema))
        .route(
            "/api/v1/schemas/{driver}/shared/{kind}",
            get(pools::shared_schema),
        )
        .route("/api/v1/shared-configs", get(pools::list_shared_configs))
        .route(
            "/api/v1/shared-configs/{name}",
            get(pools::get_shared_config).put(pools::write_shared_config),
        )
        .route("/api/v1/events", get(events::list_events))
        .route("/api/v1/jobs", get(jobs::list_jobs).post(jobs::submit_job))
        .route("/api/v1/jobs/{id}", get(jobs::get_job))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/api/v1/jobs/{id}/log", get(jobs::job_log))
        .route("/api/v1/jobs/{id}/files", get(jobs::job_files))
        .route("/api/v1/jobs/{id}/file", get(jobs::job_file))
        .route("/api/v1/job-templates", get(jobs::list_templates))
        .route(
            "/api/v1/subscriptions",
            get(notify::list_subscriptions).post(notify::add_subscription),
        )
        .route(
            "/api/v1/subscriptions/{id}",
            delete(notify::remove_subscription),
        )
        .route(
            "/api/v1/subscriptions/{id}/enable",
            post(notify::enable_subscription),
        )
        .route(
            "/api/v1/subscriptions/{id}/test",
            post(notify::test_subscription),
        )
        .route("/api/v1/deliveries", get(notify::list_deliveries))
        .route(
            "/api/v1/schedules",
            get(schedules::list_schedules).post(schedules::create_schedule),
        )
        .route(
            "/api/v1/schedules/{schedule}",
            get(schedules::get_schedule).delete(schedules::delete_schedule),
        )
        .route(
            "/api/v1/schedules/{schedule}/pause",
            post(schedules::pause_schedule),
        )
        .route(
            "/api/v1/schedules/{schedule}/resume",
            post(schedules::resume_schedule),
        )
        .route("/api/v1/job-templates/{template}", post(jobs::run_template))
        .route(
            "/api/v1/attempts/{job}/{attempt}",
            get(jobs::attempt_work).post(jobs::attempt_report),
        )
        .route(
            "/api/v1/attempts/{job}/{attempt}/agent",
            get(jobs::attempt_agent),
        )
        .route("/api/v1/warm", get(jobs::warm_assignment))
        .route(
            "/api/v1/attempts/{job}/{attempt}/file",
            put(jobs::attempt_file)
                .layer(axum::extract::DefaultBodyLimit::max(jobs::MAX_FILE_BYTES)),
        )
        .route(
            "/api/v1/clusters/{cluster}",
            get(cluster_status).put(deploy).delete(destroy),
        )
        .route(
            "/api/v1/clusters/{cluster}/token",
            post(accounts::cluster_token),
        )
        .route(
            "/api/v1/clusters/{cluster}/capacity",
            post(orgs::capacity).delete(orgs::withdraw_capacity),
        )
        .route("/api/v1/clusters/{cluster}/extend", post(extend))
        .route("/api/v1/clusters/{cluster}/logs", get(nodes::logs))
        .route("/api/v1/clusters/{cluster}/exec", post(nodes::exec))
        .route("/api/v1/orgs", get(orgs::list_orgs).post(orgs::create_org))
        .route(
            "/api/v1/orgs/{org}",
            get(orgs::get_org).patch(orgs::update_org),
        )
        .route(
            "/api/v1/orgs/{org}/membership-requests",
            post(orgs::request_membership),
        )
        .route(
            "/api/v1/orgs/{org}/membership-requests/{user}/approve",
            post(orgs::approve_membership),
        )
        .route(
            "/api/v1/orgs/{org}/membership-requests/{user}/refuse",
            post(orgs::refuse_membership),
        )
        .route(
            "/api/v1/orgs/{org}/members/{user}",
            axum::routing::put(orgs::set_member_role).delete(orgs::remove_member),
        )
        .route("/api/v1/orgs/{org}/credits", post(orgs::credit))
        .route("/api/v1/orgs/{org}/ledger", get(orgs::ledger))
        .route("/api/v1/orgs/{org}/costs", get(orgs::costs))
        .route("/api/v1/orgs/{org}/usage", get(orgs::usage))
        .route("/.well-known/jwks.json", get(accounts::jwks))
        .route("/api/v1/auth/login", post(accounts::login))
        .route("/api/v1/auth/github", post(accounts::github_login))
        .route("/api/v1/auth/refresh", post(accounts::refresh))
        .route("/api/v1/auth/logout", post(accounts::logout))
        .route("/api/v1/auth/whoami", get(accounts::whoami))
        .route(
            "/api/v1/auth/keys",
            get(accounts::list_keys).post(accounts::rotate_key),
        )
        .route("/api/v1/auth/keys/{kid}", delete(accounts::retire_key))
        .route(
            "/api/v1/users",
            get(accounts::list_users).post(accounts::create_user),
        )
        .route(
            "/api/v1/users/{username}",
            get(accounts::get_user)
                .patch(accounts::update_user)
                .delete(accounts::delete_user),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such API route; see /api/v1/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method; see /api/v1/openapi.json",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::authenticate,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

pub(crate) fn cluster_name(raw: &str) -> Result<ClusterName, ApiError> {
    ClusterName::new(raw).map_err(ApiError::from_name)
}

pub fn status_body(view: ClusterView) -> types::ClusterStatus {
    let asleep = view.state == flotilla_domain::ClusterState::Asleep;
    let org = view.org.map(|o| types::OrgClusterStatus {
        min_nodes: o.min_nodes,
        max_nodes: o.max_nodes,
        requests: o
            .requests
            .into_iter()
            .map(|r| types::CapacityRequestStatus {
                user: r.user.to_string(),
                nodes: r.nodes,
                expires_at: r.expires_at,
            })
            .collect(),
        next_change: o.next_change,
        shut_down: o.shut_down,
        hint: if o.shut_down {
            Some(format!(
                "shut down: organisation {} ran out of money; an admin can add credit with `flotilla org credit {} AMOUNT --reason TEXT`",
                view.cluster, view.cluster
            ))
        } else if asleep {
            Some(format!(
                "asleep at zero nodes; wake it with `flotilla scale {} --nodes N --ttl 1h` (POST /api/v1/clusters/{}/capacity)",
                view.cluster, view.cluster
            ))
        } else {
            None
        },
    });
    types::ClusterStatus {
        ssh_user: view.ssh_user,
        workload: view.workload.map(|w| types::WorkloadSpec {
            command: w.command,
            port: w.port,
        }),
        org,
        recent_events: Vec::new(),
        error: view.obstacle.map(|o| types::ClusterError {
            code: o.code.as_str().to_owned(),
            message: o.message,
            since: o.since,
            last_at: o.last_at,
            count: o.count,
            retry_at: o.retry_at,
        }),
        cluster: view.cluster.to_string(),
        state: match view.state {
            flotilla_domain::ClusterState::NotRunning => types::ClusterState::NotRunning,
            flotilla_domain::ClusterState::Deploying => types::ClusterState::Deploying,
            flotilla_domain::ClusterState::Running => types::ClusterState::Running,
            flotilla_domain::ClusterState::Destroying => types::ClusterState::Destroying,
            flotilla_domain::ClusterState::Asleep => types::ClusterState::Asleep,
        },
        is_public: view.is_public,
        node_capacity: view.node_capacity,
        pool: view.pool.map(|p| p.to_string()),
        expires_at: view.expires_at,
        nodes: view
            .nodes
            .into_iter()
            .map(|n| types::NodeStatus {
                id: n.id.to_string(),
                state: match n.state {
                    NodeState::Booting => types::NodeState::Booting,
                    NodeState::Ready => types::NodeState::Ready,
                    NodeState::Unhealthy => types::NodeState::Unhealthy,
                    NodeState::ShuttingDown => types::NodeState::ShuttingDown,
                },
                address: n.address,
                workload_address: n.workload_address,
                instance_type: n.instance_type.to_string(),
                launched_at: n.launched_at,
                pool_version: n.pool_version.map(|v| v.to_string()),
                outdated: n.outdated,
            })
            .collect(),
        settled: view.settled,
        rollout: view.rollout.map(rollout_body),
    }
}

/// A cluster's rollout as the API shows it.
pub(crate) fn rollout_body(r: flotilla_engine::RolloutView) -> types::ClusterRollout {
    let (reason, by, since) = match &r.state {
        flotilla_engine::RolloutState::Rolling => (None, None, None),
        flotilla_engine::RolloutState::Paused { by, at } => (None, Some(by.clone()), Some(*at)),
        flotilla_engine::RolloutState::Stopped { reason, at } => {
            (Some(reason.clone()), None, Some(*at))
        }
    };
    types::ClusterRollout {
        state: r.state.as_str().to_owned(),
        outdated: r.outdated,
        pool_version: r.version.to_string(),
        reason,
        by,
        since,
    }
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, body = types::Health)))]
async fn healthz() -> Json<types::Health> {
    Json(types::Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", security(()), responses((status = 200, content_type = "application/openmetrics-text")))]
async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => ApiError::internal(format!("encoding metrics failed: {e}")).into_response(),
    }
}

/// Every cluster that has a record or nodes.
#[utoipa::path(get, path = "/api/v1/clusters", responses((status = 200, body = types::ClusterList)))]
async fn list_clusters(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
) -> Json<types::ClusterList> {
    Json(types::ClusterList {
        clusters: state
            .control
            .list(&caller)
            .into_iter()
            .map(status_body)
            .collect(),
    })
}

/// STATUS: a valid name never deployed is `not_running`.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{cluster}",
    params(("cluster" = String, Path, description = "Cluster name"), types::StatusQuery),
    responses(
        (status = 200, body = types::ClusterStatus),
        (status = 400, description = "Malformed query", body = types::ErrorBody),
        (status = 422, description = "Invalid cluster name or events", body = types::ErrorBody),
    )
)]
async fn cluster_status(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    ClusterParam(cluster): ClusterParam,
    query: Result<
        axum::extract::Query<types::StatusQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Json<types::ClusterStatus>, ApiError> {
    let axum::extract::Query(query) =
        query.map_err(|e| extract::malformed_query(e, "use ?events=N"))?;
    if query.events > MAX_RECENT_EVENTS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
            format!(
                "events {} is more than {MAX_RECENT_EVENTS}; read GET /api/v1/events?cluster=NAME for more",
                query.events
            ),
        ));
    }
    let cluster = cluster_name(&cluster)?;
    let mut body = status_body(state.control.status(&caller, &cluster)?);
    if query.events > 0 {
        body.recent_events = state
            .control
            .recent_events(&caller, &cluster, query.events)
            .await?
            .into_iter()
            .map(events::event_body)
            .collect();
    }
    Ok(Json(body))
}

/// The most of its latest changes a cluster's status shows.
const MAX_RECENT_EVENTS: usize = 100;

/// DEPLOY: create the cluster or change its capacity, and (re)schedule its
/// deletion at now + `time_to_live`.
#[utoipa::path(
    put,
    path = "/api/v1/clusters/{cluster}",
    params(("cluster" = String, Path, description = "Cluster name"), types::WaitQuery),
    request_body = types::DeployRequest,
    responses(
        (status = 200, description = "Accepted (or, with wait, settled or timed out)", body = types::ClusterStatus),
        (status = 400, description = "Malformed request", body = types::ErrorBody),
        (status = 409, description = "is_public, pool or workload cannot change once deployed", body = types::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = types::ErrorBody),
        (status = 415, description = "Body not sent as application/json", body = types::ErrorBody),
        (status = 422, description = "Invalid value", body = types::ErrorBody),
    )
)]
async fn deploy(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    ClusterParam(cluster): ClusterParam,
    WaitParam(wait): WaitParam,
    JsonBody(body): JsonBody<types::DeployRequest>,
) -> Result<Json<types::ClusterStatus>, ApiError> {
    let cluster = cluster_name(&cluster)?;
    let command = Deploy {
        cluster,
        node_capacity: body.node_capacity,
        time_to_live: body.time_to_live,
        is_public: body.is_public,
        pool: body.pool,
        workload: body.workload.map(|w| (w.command, w.port)),
    };
    let view = state.control.run(&caller, command).await?;
    Ok(Json(status_body(settle(&state, view, wait).await)))
}

/// EXTEND: move a deployed cluster's scheduled deletion to now +
/// `time_to_live`, within the caller's limits; nothing else changes.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{cluster}/extend",
    params(("cluster" = String, Path, description = "Cluster name")),
    request_body = types::ExtendRequest,
    responses(
        (status = 200, body = types::ClusterStatus),
        (status = 400, description = "Malformed request", body = types::ErrorBody),
        (status = 404, description = "Not deployed, or being destroyed", body = types::ErrorBody),
        (status = 409, description = "An organisation's cluster (it has no time to live)", body = types::ErrorBody),
        (status = 422, description = "Invalid name or time to live", body = types::ErrorBody),
    )
)]
async fn extend(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    ClusterParam(cluster): ClusterParam,
    JsonBody(body): JsonBody<types::ExtendRequest>,
) -> Result<Json<types::ClusterStatus>, ApiError> {
    let cluster = cluster_name(&cluster)?;
    let command = Extend {
        cluster,
        time_to_live: body.time_to_live,
    };
    Ok(Json(status_body(
        state.control.run(&caller, command).await?,
    )))
}

/// DESTROY: clear the scheduled deletion and remove every node.
#[utoipa::path(
    delete,
    path = "/api/v1/clusters/{cluster}",
    params(("cluster" = String, Path, description = "Cluster name"), types::WaitQuery),
    responses(
        (status = 200, body = types::ClusterStatus),
        (status = 422, description = "Invalid cluster name", body = types::ErrorBody),
    )
)]
async fn destroy(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    ClusterParam(cluster): ClusterParam,
    WaitParam(wait): WaitParam,
) -> Result<Json<types::ClusterStatus>, ApiError> {
    let cluster = cluster_name(&cluster)?;
    let view = state.control.run(&caller, Destroy { cluster }).await?;
    Ok(Json(status_body(settle(&state, view, wait).await)))
}

/// With `wait`, the cluster's view once it settles (or the longest wait
/// passes); else the view as the command left it.
pub(crate) async fn settle(state: &AppState, view: ClusterView, wait: bool) -> ClusterView {
    if wait {
        state.control.wait_settled(&view.cluster).await
    } else {
        view
    }
}
