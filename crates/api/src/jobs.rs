//! Jobs: `POST /api/v1/jobs` and what follows (list, show, cancel, log),
//! and the routes an attempt's agent reports on, authorised by the
//! attempt's token (`x-flotilla-attempt-token`) instead of an account's.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_api_types as types;
use flotilla_control::{AgentReport, CancelJob, JobView, RunTemplate, SubmitJob};
use flotilla_domain::{AttemptEnd, JobDocument, Problem};

use crate::extract::malformed_query;
use crate::{ApiError, AppState, CallerIdentity, JsonBody};

/// The header an attempt's agent presents its token in.
pub const ATTEMPT_TOKEN_HEADER: &str = "x-flotilla-attempt-token";
/// The header a log's answer names its attempt in.
pub const ATTEMPT_HEADER: &str = "x-flotilla-attempt";
/// The largest file an attempt may keep.
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;
/// The header the agent program's SHA-256 comes in.
pub const AGENT_SHA256_HEADER: &str = "x-flotilla-agent-sha256";
/// Jobs listed unless the caller asks otherwise.
const DEFAULT_LIST: usize = 50;
/// How often a followed log is read for more.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// `view` as the API shows it, its costs counted to `now` for attempts
/// under way.
pub fn job_body(view: JobView, now: chrono::DateTime<chrono::Utc>) -> types::JobView {
    let job = view.job;
    let cost_of = |a: &flotilla_store::AttemptRecord| {
        flotilla_domain::lifetime_cost(a.price_per_hour, a.started_at, a.ended_at.unwrap_or(now))
    };
    let cost = job
        .attempts
        .iter()
        .map(cost_of)
        .fold(flotilla_domain::Money::ZERO, |sum, c| sum + c);
    types::JobView {
        cost: cost.to_string(),
        id: job.id,
        name: job.name,
        state: job.state.as_str().to_owned(),
        reason: job.reason,
        position: view
            .place
            .map(|(place, of)| types::QueuePosition { place, of }),
        submitted_by: job.submitted_by,
        org: job.org.map(|o| o.to_string()),
        priority: job.priority,
        cancel_by: job.cancel_by,
        submitted_at: job.submitted_at,
        updated_at: job.updated_at,
        document: job.document,
        attempts: job
            .attempts
            .into_iter()
            .map(|a| types::AttemptView {
                cost: cost_of(&a).to_string(),
                attempt: a.attempt,
                pool: a.pool.to_string(),
                instance_type: a.instance_type.to_string(),
                market: a.market.as_str().to_owned(),
                price_per_hour: a.price_per_hour.to_string(),
                instance: a.instance.map(|i| i.to_string()),
                warm: a.warm.is_some(),
                started_at: a.started_at,
                running_at: a.running_at,
                ended_at: a.ended_at,
                end: a.end.map(|e| end_kind(e).to_owned()),
                exit_status: match a.end {
                    Some(AttemptEnd::Exited { status }) => Some(status),
                    _ => None,
                },
                message: a.end.map(|e| e.to_string()),
            })
            .collect(),
    }
}

fn end_kind(end: AttemptEnd) -> &'static str {
    match end {
        AttemptEnd::Exited { .. } => "exited",
        AttemptEnd::Interrupted => "interrupted",
        AttemptEnd::BootFailed => "boot_failed",
        AttemptEnd::Lost => "lost",
        AttemptEnd::TimedOut => "timed_out",
        AttemptEnd::Cancelled => "cancelled",
    }
}

/// A job's number from the path: anything else names no job.
fn job_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_job",
            format!("no job {raw:?}: jobs are numbered (`flotilla job list` shows yours)"),
        )
    })
}

/// Queues a job: a script run once on an instance of its own. The body is
/// a job file's fields as JSON (`GET /api/v1/schemas/job` is its schema).
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    request_body(content = Object, description = "The job: name, script, max_runtime (unless the server sets a default), and the optional fields of the job schema"),
    responses(
        (status = 201, body = types::JobView),
        (status = 403, description = "The caller's level may not run jobs, or it is not a member of the organisation named", body = types::ErrorBody),
        (status = 404, description = "No such organisation", body = types::ErrorBody),
        (status = 422, description = "Not a valid job (invalid_job, with problems), or an unknown pool", body = types::ErrorBody),
    )
)]
pub(crate) async fn submit_job(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    let document: JobDocument = serde_json::from_value(body).map_err(|e| {
        let mut err = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            format!("the job is not valid: {e}"),
        );
        err.problems = vec![Problem::new(String::new(), e.to_string())];
        err
    })?;
    let view = state.control.run(&caller, SubmitJob { document }).await?;
    Ok((
        StatusCode::CREATED,
        Json(job_body(view, state.engine.now())),
    )
        .into_response())
}

/// The caller's jobs, newest first (an admin's, with `all=true`,
/// everyone's).
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    params(types::JobsQuery),
    responses((status = 200, body = types::JobList))
)]
pub(crate) async fn list_jobs(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    query: Result<Query<types::JobsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<types::JobList>, ApiError> {
    let Query(q) = query.map_err(|e| malformed_query(e, "use ?all=true&limit=N"))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIST);
    if limit == 0 || limit > flotilla_control::MAX_JOBS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
            format!(
                "limit {limit} is not between 1 and {}",
                flotilla_control::MAX_JOBS
            ),
        ));
    }
    let jobs = state.control.jobs(&caller, q.all, limit).await?;
    Ok(Json(types::JobList {
        jobs: jobs
            .into_iter()
            .map(|j| job_body(j, state.engine.now()))
            .collect(),
    }))
}

/// One job: its state, why it waits, its attempts.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    params(("id" = String, Path, description = "The job's number")),
    responses(
        (status = 200, body = types::JobView),
        (status = 404, description = "No such job", body = types::ErrorBody),
    )
)]
pub(crate) async fn get_job(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(id): Path<String>,
) -> Result<Json<types::JobView>, ApiError> {
    let view = state.control.job(&caller, job_id(&id)?).await?;
    Ok(Json(job_body(view, state.engine.now())))
}

/// Cancels a job: one queued ends at once; one under way ends once the
/// leader has ended its attempt (and destroyed its instance).
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/cancel",
    params(("id" = String, Path, description = "The job's number")),
    responses(
        (status = 200, body = types::JobView),
        (status = 404, description = "No such job", body = types::ErrorBody),
        (status = 409, description = "The job has ended (job_state)", body = types::ErrorBody),
    )
)]
pub(crate) async fn cancel_job(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(id): Path<String>,
) -> Result<Json<types::JobView>, ApiError> {
    let view = state
        .control
        .run(&caller, CancelJob { id: job_id(&id)? })
        .await?;
    Ok(Json(job_body(view, state.engine.now())))
}

/// An attempt's log as plain text, a line each: time, stream (out or
/// err), text. With `follow=true` the answer stays open and lines come as
/// the agent sends them, until the attempt ends.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/log",
    params(("id" = String, Path, description = "The job's number"), types::JobLogQuery),
    responses(
        (status = 200, description = "The log", content_type = "text/plain", body = String),
        (status = 404, description = "No such job", body = types::ErrorBody),
        (status = 409, description = "No such attempt (job_state)", body = types::ErrorBody),
        (status = 500, description = "The server keeps no logs, or cannot read them", body = types::ErrorBody),
    )
)]
pub(crate) async fn job_log(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(id): Path<String>,
    query: Result<Query<types::JobLogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| malformed_query(e, "use ?attempt=N&follow=true"))?;
    let id = job_id(&id)?;
    let first = state.control.job_log(&caller, id, q.attempt, 0).await?;
    let attempt = first.attempt;
    let text: String = first.chunks.iter().map(|(_, t)| t.as_str()).collect();
    let headers = [
        (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
        (
            header::HeaderName::from_static(ATTEMPT_HEADER),
            attempt.to_string(),
        ),
    ];
    if !q.follow || first.done {
        return Ok((headers, text).into_response());
    }
    // Following: what there is, then each new chunk as it comes.
    let next = first.chunks.last().map_or(0, |(n, _)| n + 1);
    let control = state.control.clone();
    let asked = q.attempt.or((attempt > 0).then_some(attempt));
    let rest = futures::stream::unfold(
        (Some(text), next, asked, false),
        move |(pending, next, asked, over)| {
            let control = control.clone();
            let caller = caller.clone();
            async move {
                if let Some(text) = pending.filter(|t| !t.is_empty()) {
                    return Some((Ok::<_, std::io::Error>(text), (None, next, asked, over)));
                }
                if over {
                    return None;
                }
                loop {
                    if control.engine().is_stopping() {
                        return None;
                    }
                    let page = match control.job_log(&caller, id, asked, next).await {
                        Ok(page) => page,
                        Err(_) => return None,
                    };
                    // A job not started yet follows its first attempt.
                    let asked = asked.or((page.attempt > 0).then_some(page.attempt));
                    if !page.chunks.is_empty() {
                        let next = page.chunks.last().map_or(next, |(n, _)| n + 1);
                        let text: String = page.chunks.iter().map(|(_, t)| t.as_str()).collect();
                        return Some((Ok(text), (None, next, asked, page.done)));
                    }
                    if page.done {
                        return None;
                    }
                    tokio::time::sleep(FOLLOW_POLL).await;
                }
            }
        },
    );
    Ok((headers, Body::from_stream(rest)).into_response())
}

/// The job templates of the server's config (seed 000's TEST and
/// RELEASE among them).
#[utoipa::path(
    get,
    path = "/api/v1/job-templates",
    responses((status = 200, body = types::TemplateList))
)]
pub(crate) async fn list_templates(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
) -> Result<Json<types::TemplateList>, ApiError> {
    flotilla_domain::authorize_admin(&caller).map_err(ApiError::denied)?;
    Ok(Json(types::TemplateList {
        templates: state.control.template_names(),
    }))
}

/// Runs a job template against a cluster at a version (admins): the
/// template's placeholders filled in (`{{cluster}}`, `{{version}}`,
/// `{{address}}`, and in its secrets `{{cluster_token}}`, a token for the
/// cluster), then queued as a job.
#[utoipa::path(
    post,
    path = "/api/v1/job-templates/{template}",
    params(("template" = String, Path, description = "The template's name in the server's config")),
    request_body = types::RunTemplateRequest,
    responses(
        (status = 201, body = types::JobView),
        (status = 404, description = "No such template (unknown_template), or the cluster is not deployed", body = types::ErrorBody),
        (status = 422, description = "An invalid cluster name or version, or the job it makes is not valid", body = types::ErrorBody),
    )
)]
pub(crate) async fn run_template(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(template): Path<String>,
    JsonBody(body): JsonBody<types::RunTemplateRequest>,
) -> Result<Response, ApiError> {
    flotilla_domain::authorize_admin(&caller).map_err(ApiError::denied)?;
    let cluster = crate::cluster_name(&body.cluster)?;
    flotilla_domain::check_version(&body.version)
        .map_err(|why| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_version", why))?;
    let view = state
        .control
        .run(
            &caller,
            RunTemplate {
                template,
                cluster,
                version: body.version,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(job_body(view, state.engine.now())),
    )
        .into_response())
}

/// The token an agent presents.
fn attempt_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(ATTEMPT_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "attempt_token_invalid",
                format!("send the attempt's token in the {ATTEMPT_TOKEN_HEADER} header"),
            )
        })
}

fn attempt_number(raw: &str) -> Result<u32, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_job",
            format!("no attempt {raw:?}: attempts are numbered from 1"),
        )
    })
}

/// The agent program, for an attempt's instance to fetch at boot (by the
/// attempt's token, while it is under way): the server's own binary, its
/// SHA-256 in `x-flotilla-agent-sha256`. The instance checks what it
/// fetched against the SHA-256 its boot script was given.
#[utoipa::path(
    get,
    path = "/api/v1/attempts/{job}/{attempt}/agent",
    security(()),
    params(
        ("job" = String, Path, description = "The job's number"),
        ("attempt" = String, Path, description = "The attempt's number"),
        ("x-flotilla-attempt-token" = String, Header, description = "The attempt's token"),
    ),
    responses(
        (status = 200, description = "The program", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("x-flotilla-agent-sha256" = String, description = "Its SHA-256, hex"))),
        (status = 401, description = "Not the token of an attempt", body = types::ErrorBody),
        (status = 404, description = "Not a job or attempt number", body = types::ErrorBody),
        (status = 409, description = "The attempt is over", body = types::ErrorBody),
        (status = 500, description = "This server serves no agent program", body = types::ErrorBody),
    )
)]
pub(crate) async fn attempt_agent(
    State(state): State<AppState>,
    Path((job, attempt)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (job, attempt) = (job_id(&job)?, attempt_number(&attempt)?);
    let token = attempt_token(&headers)?;
    let agent = state.control.agent_program(job, attempt, token).await?;
    let unreadable = |e: std::io::Error| {
        tracing::error!(path = %agent.path.display(), error = %e, "cannot read the agent program");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "agent_unreadable",
            format!("the server cannot read its agent program: {e}"),
        )
    };
    let file = tokio::fs::File::open(&agent.path)
        .await
        .map_err(unreadable)?;
    let len = file.metadata().await.map_err(unreadable)?.len();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::HeaderName::from_static(AGENT_SHA256_HEADER),
                agent.sha256.clone(),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}

/// The attempt the agent of an instance kept warm for jobs (a pool's
/// `idle_nodes`) runs, by the token its boot was given: 204 until a job
/// takes the instance (after waiting up to `wait` seconds for one), then
/// the attempt and its token. With `Accept: text/plain`, one line a boot
/// script reads: `JOB ATTEMPT TOKEN MINUTES`.
#[utoipa::path(
    get,
    path = "/api/v1/warm",
    security(()),
    params(
        ("x-flotilla-attempt-token" = String, Header, description = "The token the instance's boot was given (64 hex digits)"),
        types::WarmQuery,
    ),
    responses(
        (status = 200, description = "The attempt it runs", content(
            (types::WarmAssignment = "application/json"),
            (String = "text/plain"),
        )),
        (status = 204, description = "No job has taken the instance (yet)"),
        (status = 400, description = "A wait over 25 seconds, or a malformed query", body = types::ErrorBody),
        (status = 401, description = "No token, or not one", body = types::ErrorBody),
    )
)]
pub(crate) async fn warm_assignment(
    State(state): State<AppState>,
    query: Result<Query<types::WarmQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| malformed_query(e, "use ?wait=SECONDS"))?;
    if q.wait > types::MAX_WARM_WAIT_SECS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_query",
            format!(
                "wait is at most {} seconds, not {}",
                types::MAX_WARM_WAIT_SECS,
                q.wait
            ),
        ));
    }
    let token = attempt_token(&headers)?;
    let wait = Duration::from_secs(q.wait);
    let Some(taken) = state.control.warm_assignment(token, wait).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let text = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/plain"));
    if text {
        let minutes = taken.lifetime.as_secs().div_ceil(60).max(1);
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!(
                "{} {} {} {minutes}\n",
                taken.job, taken.attempt, taken.token
            ),
        )
            .into_response());
    }
    Ok(Json(types::WarmAssignment {
        job: taken.job,
        attempt: taken.attempt,
        token: taken.token,
        lifetime_secs: taken.lifetime.as_secs(),
    })
    .into_response())
}

/// Keeps a file of an attempt's work directory (one of its job's
/// `artifacts`, or under one), sent by its agent with the attempt's token
/// while the attempt is under way; sent again, it replaces the first.
#[utoipa::path(
    put,
    path = "/api/v1/attempts/{job}/{attempt}/file",
    security(()),
    params(
        ("job" = String, Path, description = "The job's number"),
        ("attempt" = String, Path, description = "The attempt's number"),
        ("x-flotilla-attempt-token" = String, Header, description = "The attempt's token"),
        types::AttemptFileQuery,
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Kept"),
        (status = 400, description = "No path given", body = types::ErrorBody),
        (status = 401, description = "Not the token of an attempt", body = types::ErrorBody),
        (status = 404, description = "Not a job or attempt number", body = types::ErrorBody),
        (status = 409, description = "The attempt is over", body = types::ErrorBody),
        (status = 413, description = "Larger than the server keeps", body = types::ErrorBody),
        (status = 422, description = "Not among the job's artifacts (invalid_job)", body = types::ErrorBody),
        (status = 500, description = "The server cannot keep it", body = types::ErrorBody),
    )
)]
pub(crate) async fn attempt_file(
    State(state): State<AppState>,
    Path((job, attempt)): Path<(String, String)>,
    query: Result<Query<types::AttemptFileQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let (job, attempt) = (job_id(&job)?, attempt_number(&attempt)?);
    let token = attempt_token(&headers)?;
    let Query(q) = query.map_err(|e| malformed_query(e, "use ?path=PATH"))?;
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "a kept file is at most {} MiB",
                    MAX_FILE_BYTES / (1024 * 1024)
                ),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", e.body_text())
        }
    })?;
    state
        .control
        .attempt_file(job, attempt, token, &q.path, bytes.to_vec())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What one attempt of a job kept of its `artifacts`, by path.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/files",
    params(("id" = String, Path, description = "The job's number"), types::JobFilesQuery),
    responses(
        (status = 200, body = types::JobFiles),
        (status = 404, description = "No such job", body = types::ErrorBody),
        (status = 409, description = "No such attempt (job_state)", body = types::ErrorBody),
        (status = 500, description = "The server keeps no files, or cannot read them", body = types::ErrorBody),
    )
)]
pub(crate) async fn job_files(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(id): Path<String>,
    query: Result<Query<types::JobFilesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<types::JobFiles>, ApiError> {
    let Query(q) = query.map_err(|e| malformed_query(e, "use ?attempt=N"))?;
    let id = job_id(&id)?;
    let (attempt, files) = state.control.job_files(&caller, id, q.attempt).await?;
    Ok(Json(types::JobFiles {
        job: id,
        attempt,
        files: files
            .into_iter()
            .map(|f| types::KeptFileView {
                path: f.path,
                size: f.size,
            })
            .collect(),
    }))
}

/// One file one attempt of a job kept, as it was.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/file",
    params(("id" = String, Path, description = "The job's number"), types::JobFileQuery),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "No path given", body = types::ErrorBody),
        (status = 404, description = "No such job, or no such file (no_such_file)", body = types::ErrorBody),
        (status = 409, description = "No such attempt (job_state)", body = types::ErrorBody),
        (status = 500, description = "The server keeps no files, or cannot read them", body = types::ErrorBody),
    )
)]
pub(crate) async fn job_file(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(id): Path<String>,
    query: Result<Query<types::JobFileQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| malformed_query(e, "use ?path=PATH&attempt=N"))?;
    let id = job_id(&id)?;
    let (attempt, bytes) = state
        .control
        .job_file(&caller, id, q.attempt, &q.path)
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::HeaderName::from_static(ATTEMPT_HEADER),
                attempt.to_string(),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// What an attempt's agent runs: for the agent only, by the attempt's
/// token; secrets included.
#[utoipa::path(
    get,
    path = "/api/v1/attempts/{job}/{attempt}",
    security(()),
    params(
        ("job" = String, Path, description = "The job's number"),
        ("attempt" = String, Path, description = "The attempt's number"),
        ("x-flotilla-attempt-token" = String, Header, description = "The attempt's token"),
    ),
    responses(
        (status = 200, body = types::AttemptWork),
        (status = 401, description = "Not the token of an attempt under way", body = types::ErrorBody),
        (status = 404, description = "Not a job or attempt number", body = types::ErrorBody),
        (status = 409, description = "The attempt is over", body = types::ErrorBody),
    )
)]
pub(crate) async fn attempt_work(
    State(state): State<AppState>,
    Path((job, attempt)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<types::AttemptWork>, ApiError> {
    let (job, attempt) = (job_id(&job)?, attempt_number(&attempt)?);
    let token = attempt_token(&headers)?;
    let work = state.control.attempt_work(job, attempt, token).await?;
    let spec = work.spec;
    // A token for the job's cluster, issued now on its submitter's behalf
    // (as they may get one now), never stored.
    let secrets = match &spec.cluster {
        Some(cluster) if spec.wants_cluster_token() => {
            let submitter = (work.submitted_by != flotilla_control::SERVER_SUBMITTER)
                .then_some(work.submitted_by.as_str());
            let mut on_behalf = state.identity.caller_of(submitter).await?;
            state.engine.admit_org_clusters(&mut on_behalf);
            let issued = state
                .identity
                .cluster_token(&on_behalf, cluster, state.engine.now())?;
            spec.secrets_with_token(&issued.token)
        }
        _ => spec.secrets.clone(),
    };
    let mut env = spec.env.clone();
    env.extend(
        secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned())),
    );
    Ok(Json(types::AttemptWork {
        job,
        attempt,
        script: spec.script.clone(),
        repo: spec.checkout.as_ref().map(|c| c.repo.clone()),
        git_ref: spec.checkout.as_ref().and_then(|c| c.git_ref.clone()),
        env,
        secret_values: secrets.values().map(|v| v.expose().to_owned()).collect(),
        max_runtime_secs: spec.max_runtime.as_secs(),
        artifacts: spec.artifacts.clone(),
    }))
}

/// What an attempt's agent reports: its script runs, its output, that it
/// is alive, its exit status. The answer says whether to stop.
#[utoipa::path(
    post,
    path = "/api/v1/attempts/{job}/{attempt}",
    security(()),
    params(
        ("job" = String, Path, description = "The job's number"),
        ("attempt" = String, Path, description = "The attempt's number"),
        ("x-flotilla-attempt-token" = String, Header, description = "The attempt's token"),
    ),
    request_body = types::AgentReport,
    responses(
        (status = 200, body = types::AgentAnswer),
        (status = 401, description = "Not the token of this attempt", body = types::ErrorBody),
        (status = 404, description = "Not a job or attempt number", body = types::ErrorBody),
        (status = 409, description = "The report does not fit the attempt's state (its script runs once its instance is recorded)", body = types::ErrorBody),
        (status = 422, description = "A chunk number below 0 or an exit status outside 0 to 255 (invalid_report)", body = types::ErrorBody),
    )
)]
pub(crate) async fn attempt_report(
    State(state): State<AppState>,
    Path((job, attempt)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<JsonBody<types::AgentReport>, ApiError>,
) -> Result<Json<types::AgentAnswer>, ApiError> {
    let (job, attempt) = (job_id(&job)?, attempt_number(&attempt)?);
    // Who asks first: a caller without the token learns nothing of the
    // body it sent.
    let token = attempt_token(&headers)?;
    let JsonBody(report) = body?;
    let report = match report {
        types::AgentReport::Running => AgentReport::Running,
        types::AgentReport::Heartbeat => AgentReport::Heartbeat,
        types::AgentReport::Log { chunk, lines } => AgentReport::Log {
            chunk: u64::try_from(chunk).map_err(|_| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_report",
                    format!("chunk {chunk}: chunks are numbered from 0"),
                )
            })?,
            lines: lines
                .into_iter()
                .map(|l| (l.at, l.stream, l.text))
                .collect(),
        },
        types::AgentReport::Exited { status } => AgentReport::Exited {
            status: i32::try_from(status)
                .ok()
                .filter(|s| (0..=255).contains(s))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_report",
                        format!("exit status {status} is not between 0 and 255"),
                    )
                })?,
        },
    };
    let answer = state
        .control
        .attempt_report(job, attempt, token, report)
        .await?;
    Ok(Json(types::AgentAnswer { stop: answer.stop }))
}
