//! A way into a cluster's nodes: their output, and commands run on them.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_api_types as types;
use flotilla_control::MAX_EXEC_TIMEOUT;

use crate::extract::{malformed_query, CallerIdentity, ClusterParam, JsonBody};
use crate::{cluster_name, ApiError, AppState};

/// How long a command runs unless the request says otherwise.
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// What a node printed (the local driver's node log; on EC2 the console
/// output EC2 keeps). Seen by whoever may see the cluster.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{cluster}/logs",
    params(("cluster" = String, Path, description = "Cluster name"), types::LogsQuery),
    responses(
        (status = 200, body = types::NodeLogs),
        (status = 400, description = "Malformed query", body = types::ErrorBody),
        (status = 404, description = "No such node, or the cluster has none", body = types::ErrorBody),
        (status = 409, description = "The cluster's driver keeps no output", body = types::ErrorBody),
        (status = 422, description = "Invalid cluster name, from or limit", body = types::ErrorBody),
    )
)]
pub(crate) async fn logs(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    ClusterParam(cluster): ClusterParam,
    query: Result<Query<types::LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<types::NodeLogs>, ApiError> {
    let Query(query) =
        query.map_err(|e| malformed_query(e, "use ?node=ID&from=BYTES&limit=BYTES"))?;
    let limit = query.limit.unwrap_or(flotilla_control::MAX_CONSOLE_BYTES);
    if limit == 0 || limit > flotilla_control::MAX_CONSOLE_BYTES {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
            format!(
                "limit {limit} is outside 1..={} bytes",
                flotilla_control::MAX_CONSOLE_BYTES
            ),
        ));
    }
    let from = match query.from {
        None => None,
        Some(from) => Some(u64::try_from(from).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_from",
                format!("from {from} is negative; give a byte offset, 0 or more"),
            )
        })?),
    };
    let cluster = cluster_name(&cluster)?;
    let (node, console) = state
        .control
        .node_console(&caller, &cluster, query.node.as_deref(), from, limit)
        .await?;
    Ok(Json(types::NodeLogs {
        cluster: cluster.to_string(),
        node: node.id.to_string(),
        from: console.from,
        to: console.to,
        text: console.text,
    }))
}

/// Runs a command on a node and answers with its exit status and output.
/// For the cluster's owners where its pool has `allow_exec`, and admins.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{cluster}/exec",
    params(("cluster" = String, Path, description = "Cluster name")),
    request_body = types::ExecRequest,
    responses(
        (status = 200, description = "The command ran (whatever its exit status)", body = types::ExecResponse),
        (status = 400, description = "Malformed request", body = types::ErrorBody),
        (status = 403, description = "Not your cluster, or its pool does not allow commands", body = types::ErrorBody),
        (status = 404, description = "No such node, or the cluster has none", body = types::ErrorBody),
        (status = 409, description = "The cluster's driver cannot run commands", body = types::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = types::ErrorBody),
        (status = 415, description = "Body not sent as application/json", body = types::ErrorBody),
        (status = 422, description = "No command, or a timeout out of range", body = types::ErrorBody),
    )
)]
pub(crate) async fn exec(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    ClusterParam(cluster): ClusterParam,
    JsonBody(body): JsonBody<types::ExecRequest>,
) -> Result<Json<types::ExecResponse>, ApiError> {
    let cluster = cluster_name(&cluster)?;
    let timeout = match body.timeout {
        None => DEFAULT_EXEC_TIMEOUT,
        Some(secs) if (1..=MAX_EXEC_TIMEOUT.as_secs()).contains(&secs) => Duration::from_secs(secs),
        Some(secs) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_timeout",
                format!(
                    "timeout {secs} is outside 1..={} seconds",
                    MAX_EXEC_TIMEOUT.as_secs()
                ),
            ))
        }
    };
    let (node, output) = state
        .control
        .node_exec(
            &caller,
            &cluster,
            body.node.as_deref(),
            &body.command,
            timeout,
        )
        .await?;
    Ok(Json(types::ExecResponse {
        cluster: cluster.to_string(),
        node: node.id.to_string(),
        exit_code: output.exit_code,
        signal: output.signal,
        stdout: output.stdout,
        stderr: output.stderr,
        timed_out: output.timed_out,
        truncated: output.truncated,
    }))
}
