//! Notifications: `/api/v1/subscriptions` (an account's own; admins may
//! list all) and `/api/v1/deliveries`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_api_types as types;
use flotilla_control::{AddSubscription, ChangeSubscription, SubscriptionAction, TestSubscription};
use flotilla_domain::DeliveryState;
use flotilla_store::{Delivery, Subscription};

use crate::extract::malformed_query;
use crate::{ApiError, AppState, CallerIdentity, JsonBody};

/// The most deliveries one answer lists.
const MAX_DELIVERIES: usize = 500;

fn subscription_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_subscription",
            format!(
                "no subscription {raw:?}: subscriptions are numbered (`flotilla notify list` \
                 shows yours)"
            ),
        )
    })
}

fn subscription_body(s: Subscription, with_secret: bool) -> types::SubscriptionView {
    let (disabled_at, disabled_reason) = s
        .disabled
        .map_or((None, None), |(at, why)| (Some(at), Some(why)));
    types::SubscriptionView {
        id: s.id,
        account: s.account,
        channel: s.channel.kind().to_owned(),
        target: s.channel.target().to_owned(),
        events: s.patterns.iter().map(ToString::to_string).collect(),
        created_at: s.created_at,
        failures: s.failures,
        disabled_at,
        disabled_reason,
        last_sent_at: s.last_sent_at,
        secret: s.secret.filter(|_| with_secret),
    }
}

fn delivery_body(d: Delivery) -> types::DeliveryView {
    types::DeliveryView {
        id: d.id,
        subscription: d.subscription,
        seq: d.seq,
        kind: d.kind,
        key: d.key,
        state: d.state.as_str().to_owned(),
        attempts: d.attempts,
        next_at: (d.state == DeliveryState::Pending).then_some(d.next_at),
        last_error: d.last_error,
        created_at: d.created_at,
        finished_at: d.finished_at,
    }
}

/// The caller's subscriptions (every account's with `all`, for admins).
#[utoipa::path(
    get,
    path = "/api/v1/subscriptions",
    params(types::SubscriptionsQuery),
    responses((status = 200, body = types::SubscriptionList))
)]
pub(crate) async fn list_subscriptions(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    query: Result<Query<types::SubscriptionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<types::SubscriptionList>, ApiError> {
    let Query(query) = query.map_err(|e| malformed_query(e, "use ?all=true"))?;
    let subscriptions = state.control.subscriptions(&caller, query.all).await?;
    Ok(Json(types::SubscriptionList {
        subscriptions: subscriptions
            .into_iter()
            .map(|s| subscription_body(s, false))
            .collect(),
    }))
}

/// Subscribes the caller's account to the events it names, among those
/// the account may read (its clusters, its organisations', its jobs), by
/// mail or webhook. A webhook's answer carries its signing secret, once.
#[utoipa::path(
    post,
    path = "/api/v1/subscriptions",
    request_body = types::SubscriptionRequest,
    responses(
        (status = 201, body = types::SubscriptionView),
        (status = 422, description = "No or two channels, a bad address, URL or event name, mail on a server without a relay, or too many subscriptions (invalid_subscription)", body = types::ErrorBody),
    )
)]
pub(crate) async fn add_subscription(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    JsonBody(body): JsonBody<types::SubscriptionRequest>,
) -> Result<Response, ApiError> {
    let added = state
        .control
        .run(
            &caller,
            AddSubscription {
                email: body.email,
                webhook: body.webhook,
                events: body.events,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(subscription_body(added, true))).into_response())
}

/// Removes a subscription, and what was pending for it.
#[utoipa::path(
    delete,
    path = "/api/v1/subscriptions/{id}",
    params(("id" = String, Path, description = "The subscription's number")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such subscription of the caller's (unknown_subscription)", body = types::ErrorBody),
    )
)]
pub(crate) async fn remove_subscription(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    change(
        &state,
        &caller,
        subscription_id(&id)?,
        SubscriptionAction::Remove,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enables a subscription disabled for failing, its failures forgotten.
#[utoipa::path(
    post,
    path = "/api/v1/subscriptions/{id}/enable",
    params(("id" = String, Path, description = "The subscription's number")),
    responses(
        (status = 200, body = types::SubscriptionView),
        (status = 404, description = "No such subscription of the caller's (unknown_subscription)", body = types::ErrorBody),
    )
)]
pub(crate) async fn enable_subscription(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(id): Path<String>,
) -> Result<Json<types::SubscriptionView>, ApiError> {
    let id = subscription_id(&id)?;
    change(&state, &caller, id, SubscriptionAction::Enable).await?;
    let s = state.control.subscription(&caller, id).await?;
    Ok(Json(subscription_body(s, false)))
}

/// Sends a test event to a subscription (queued; the leader sends it at
/// once): `GET /api/v1/deliveries` shows how it went.
#[utoipa::path(
    post,
    path = "/api/v1/subscriptions/{id}/test",
    params(("id" = String, Path, description = "The subscription's number")),
    responses(
        (status = 202, body = types::DeliveryView),
        (status = 404, description = "No such subscription of the caller's (unknown_subscription)", body = types::ErrorBody),
    )
)]
pub(crate) async fn test_subscription(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = subscription_id(&id)?;
    let queued = state.control.run(&caller, TestSubscription { id }).await?;
    Ok((StatusCode::ACCEPTED, Json(delivery_body(queued))).into_response())
}

/// The latest deliveries to the caller's subscriptions, the newest first
/// (every one with `all`, for admins, the admin mail's included).
#[utoipa::path(
    get,
    path = "/api/v1/deliveries",
    params(types::DeliveriesQuery),
    responses((status = 200, body = types::DeliveryList))
)]
pub(crate) async fn list_deliveries(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    query: Result<Query<types::DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<types::DeliveryList>, ApiError> {
    let Query(query) = query.map_err(|e| malformed_query(e, "use ?all=true&limit=N"))?;
    let limit = query.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_DELIVERIES {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
            format!("limit {limit} is not between 1 and {MAX_DELIVERIES}"),
        ));
    }
    let deliveries = state.control.deliveries(&caller, query.all, limit).await?;
    Ok(Json(types::DeliveryList {
        deliveries: deliveries.into_iter().map(delivery_body).collect(),
    }))
}

async fn change(
    state: &AppState,
    caller: &flotilla_domain::Caller,
    id: i64,
    action: SubscriptionAction,
) -> Result<(), ApiError> {
    state
        .control
        .run(caller, ChangeSubscription { id, action })
        .await?;
    Ok(())
}
