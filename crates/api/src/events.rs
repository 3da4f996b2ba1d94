//! The change feed: `GET /api/v1/events`.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_api_types as types;
use flotilla_control::{EventsQuery, MAX_PAGE};
use flotilla_domain::Change;

use crate::extract::malformed_query;
use crate::{cluster_name, ApiError, AppState, CallerIdentity};

/// Changes per page unless the caller asks otherwise.
const DEFAULT_PAGE: usize = 100;

pub(crate) fn event_body(change: Change) -> types::Event {
    types::Event {
        seq: change.seq,
        kind: change.kind.as_str().to_owned(),
        key: change.key,
        at: change.at,
        details: change.payload,
    }
}

/// The changes the caller may see, oldest first: its clusters', its
/// organisations', its account's, and public clusters' (admins: all). With
/// `follow=true` and nothing to return, waits up to the server's
/// `max_wait` for the next.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    params(types::EventsQuery),
    responses(
        (status = 200, body = types::EventList),
        (status = 400, description = "Malformed query", body = types::ErrorBody),
        (status = 403, description = "May not read that cluster's status", body = types::ErrorBody),
        (status = 422, description = "Invalid cluster name or limit", body = types::ErrorBody),
    )
)]
pub(crate) async fn list_events(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    query: Result<Query<types::EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<types::EventList>, ApiError> {
    let Query(q) =
        query.map_err(|e| malformed_query(e, "use ?after=SEQ&cluster=NAME&limit=N&follow=true"))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit > MAX_PAGE {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
            format!("limit {limit} is more than {MAX_PAGE}; page with ?after=NEXT instead"),
        ));
    }
    let cluster = q.cluster.as_deref().map(cluster_name).transpose()?;
    let page = state
        .control
        .events(
            &caller,
            &EventsQuery {
                after: q.after.unwrap_or(0).max(0),
                cluster,
                limit,
                follow: q.follow,
            },
        )
        .await?;
    Ok(Json(types::EventList {
        events: page.events.into_iter().map(event_body).collect(),
        next: page.next,
        more: page.more,
        latest: page.latest,
    }))
}
