//! Schedules (admins): `/api/v1/schedules`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_api_types as types;
use flotilla_control::{CreateSchedule, DeleteSchedule, PauseSchedule};
use flotilla_domain::{Missed, Schedule};

use crate::{ApiError, AppState, CallerIdentity, JsonBody};

fn schedule_body(s: Schedule) -> types::ScheduleView {
    types::ScheduleView {
        name: s.name,
        cron: s.cron,
        template: s.template,
        cluster: s.cluster.to_string(),
        version: s.version,
        missed: s.missed.as_str().to_owned(),
        paused: s.paused,
        created_by: s.created_by,
        created_at: s.created_at,
        next_at: s.next_at,
        last_fired_at: s.last_fired_at,
        last_job: s.last_job,
        last_error: s.last_error,
    }
}

/// Every schedule.
#[utoipa::path(get, path = "/api/v1/schedules", responses((status = 200, body = types::ScheduleList)))]
pub(crate) async fn list_schedules(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
) -> Result<Json<types::ScheduleList>, ApiError> {
    let schedules = state.control.schedules(&caller).await?;
    Ok(Json(types::ScheduleList {
        schedules: schedules.into_iter().map(schedule_body).collect(),
    }))
}

/// Creates a schedule: a job template of the server's config, run
/// against a cluster at a version whenever the cron expression says (in
/// UTC), by the leader, on time.
#[utoipa::path(
    post,
    path = "/api/v1/schedules",
    request_body = types::ScheduleRequest,
    responses(
        (status = 201, body = types::ScheduleView),
        (status = 404, description = "No such template (unknown_template)", body = types::ErrorBody),
        (status = 409, description = "A schedule of that name exists", body = types::ErrorBody),
        (status = 422, description = "An invalid name, cron expression, cluster name or version (invalid_schedule)", body = types::ErrorBody),
    )
)]
pub(crate) async fn create_schedule(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    JsonBody(body): JsonBody<types::ScheduleRequest>,
) -> Result<Response, ApiError> {
    let missed = match body.missed.as_deref() {
        None => Missed::RunOnce,
        Some(m) => Missed::parse(m).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_schedule",
                format!("missed {m:?}: run_once or skip"),
            )
        })?,
    };
    let view = state
        .control
        .run(
            &caller,
            CreateSchedule {
                name: body.name,
                cron: body.cron,
                template: body.template,
                cluster: body.cluster,
                version: body.version,
                missed,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(schedule_body(view))).into_response())
}

/// One schedule: when it fires next, what its last fire queued.
#[utoipa::path(
    get,
    path = "/api/v1/schedules/{schedule}",
    params(("schedule" = String, Path, description = "The schedule's name")),
    responses(
        (status = 200, body = types::ScheduleView),
        (status = 404, description = "No such schedule", body = types::ErrorBody),
    )
)]
pub(crate) async fn get_schedule(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(name): Path<String>,
) -> Result<Json<types::ScheduleView>, ApiError> {
    Ok(Json(schedule_body(
        state.control.schedule(&caller, &name).await?,
    )))
}

/// Deletes a schedule; the jobs it queued stay.
#[utoipa::path(
    delete,
    path = "/api/v1/schedules/{schedule}",
    params(("schedule" = String, Path, description = "The schedule's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such schedule", body = types::ErrorBody),
    )
)]
pub(crate) async fn delete_schedule(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.control.run(&caller, DeleteSchedule { name }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses a schedule: it fires no more until resumed.
#[utoipa::path(
    post,
    path = "/api/v1/schedules/{schedule}/pause",
    params(("schedule" = String, Path, description = "The schedule's name")),
    responses(
        (status = 200, body = types::ScheduleView),
        (status = 404, description = "No such schedule", body = types::ErrorBody),
    )
)]
pub(crate) async fn pause_schedule(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(name): Path<String>,
) -> Result<Json<types::ScheduleView>, ApiError> {
    pause(state, caller, name, true).await
}

/// Resumes a schedule: it fires next at its next time after now (what it
/// missed while paused is not run).
#[utoipa::path(
    post,
    path = "/api/v1/schedules/{schedule}/resume",
    params(("schedule" = String, Path, description = "The schedule's name")),
    responses(
        (status = 200, body = types::ScheduleView),
        (status = 404, description = "No such schedule", body = types::ErrorBody),
    )
)]
pub(crate) async fn resume_schedule(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(name): Path<String>,
) -> Result<Json<types::ScheduleView>, ApiError> {
    pause(state, caller, name, false).await
}

async fn pause(
    state: AppState,
    caller: flotilla_domain::Caller,
    name: String,
    paused: bool,
) -> Result<Json<types::ScheduleView>, ApiError> {
    let view = state
        .control
        .run(&caller, PauseSchedule { name, paused })
        .await?;
    Ok(Json(schedule_body(view)))
}
