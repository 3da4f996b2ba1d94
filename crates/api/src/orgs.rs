//! Organisations, capacity requests, credits, the ledger and costs.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_api_types as types;
use flotilla_control::{
    CreateOrg, CreditOrg, DecideMembership, OrgView, RemoveMember, RequestCapacity,
    RequestMembership, SetMemberRole, UpdateOrg, WithdrawCapacity,
};
use flotilla_domain::{
    Caller, ClusterName, Money, OrgName, OrgRole, Organisation, SettingsPatch, Username,
};
use flotilla_store::CostRow;

use crate::{
    cluster_name, status_body, ApiError, AppState, CallerIdentity, ClusterParam, JsonBody,
    WaitParam,
};

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

fn org_name(raw: &str) -> Result<OrgName, ApiError> {
    ClusterName::new(raw).map_err(|e| unprocessable("invalid_org_name", e.to_string()))
}

fn username(raw: &str) -> Result<Username, ApiError> {
    Username::new(raw).map_err(|e| unprocessable("invalid_username", e.to_string()))
}

fn money(field: &str, raw: &str) -> Result<Money, ApiError> {
    raw.parse()
        .map_err(|e| unprocessable("invalid_amount", format!("{field}: {e}")))
}

fn count(field: &str, v: i64) -> Result<u32, ApiError> {
    u32::try_from(v).map_err(|_| {
        unprocessable(
            "invalid_value",
            format!(
                "{field} must be a whole number from 0 to {}, got {v}",
                u32::MAX
            ),
        )
    })
}

pub(crate) fn org_body(view: OrgView) -> types::OrgView {
    let OrgView {
        org,
        sizing,
        requests,
        running_nodes,
        price_per_hour,
        burn_per_hour,
        forecast_hours,
        recent_events,
    } = view;
    types::OrgView {
        name: org.name.to_string(),
        cluster: org.cluster().to_string(),
        members: org
            .members
            .iter()
            .map(|(u, r)| types::OrgMember {
                username: u.to_string(),
                role: r.as_str().into(),
            })
            .collect(),
        pending: org
            .pending
            .iter()
            .map(|(u, since)| types::PendingMember {
                username: u.to_string(),
                since: *since,
            })
            .collect(),
        settings: types::OrgSettingsView {
            min_nodes: org.settings.min_nodes,
            max_nodes: org.settings.max_nodes,
            node_limit: org.settings.node_limit,
            pool: org.settings.pool.to_string(),
        },
        budget: types::OrgBudgetView {
            balance: org.budget.balance.to_string(),
            monthly_allowance: org.budget.monthly_allowance.to_string(),
            max_balance: org.budget.max_balance.to_string(),
            shutdown_threshold: org.budget.shutdown_threshold.to_string(),
            min_runway: org.budget.min_runway.as_secs(),
            exhausted_at: org.budget.exhausted_at,
            charged_until: org.accrued_until,
        },
        forecast: types::OrgForecast {
            running_nodes,
            price_per_hour: price_per_hour.to_string(),
            burn_per_hour: burn_per_hour.to_string(),
            hours_left: forecast_hours.map(|h| (h * 100.0).round() / 100.0),
        },
        size: sizing.nodes,
        asleep: sizing.asleep,
        requests: requests
            .into_iter()
            .map(|r| types::CapacityRequestStatus {
                user: r.user.to_string(),
                nodes: r.nodes,
                expires_at: r.expires_at,
            })
            .collect(),
        next_change: sizing.next_change,
        events: recent_events
            .into_iter()
            .map(|e| types::OrgEventView {
                at: e.at,
                kind: e.kind.as_str().to_owned(),
                message: e.message,
            })
            .collect(),
        created_at: org.created_at,
    }
}

fn summary(org: &Organisation, caller: &Caller) -> types::OrgSummary {
    let role = caller.account.as_ref().and_then(|u| {
        org.role(u)
            .map(|r| r.as_str().to_owned())
            .or_else(|| org.pending.contains_key(u).then(|| "pending".to_owned()))
    });
    types::OrgSummary {
        name: org.name.to_string(),
        role,
        members: org.members.len(),
        balance: org.budget.balance.to_string(),
    }
}

/// Organisations: all of them for admins, the caller's own otherwise.
#[utoipa::path(get, path = "/api/v1/orgs", responses((status = 200, body = types::OrgList), (status = 401, body = types::ErrorBody)))]
pub(crate) async fn list_orgs(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
) -> Result<Json<types::OrgList>, ApiError> {
    let orgs = state.control.list_orgs(&caller)?;
    Ok(Json(types::OrgList {
        orgs: orgs.iter().map(|o| summary(o, &caller)).collect(),
    }))
}

/// Creates an organisation (admins).
#[utoipa::path(
    post,
    path = "/api/v1/orgs",
    request_body = types::CreateOrgRequest,
    responses(
        (status = 201, body = types::OrgView),
        (status = 403, description = "Not an admin", body = types::ErrorBody),
        (status = 409, description = "The name is taken (organisation, account or deployed cluster)", body = types::ErrorBody),
        (status = 422, description = "Invalid name, unknown owner or pool", body = types::ErrorBody),
    )
)]
pub(crate) async fn create_org(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    JsonBody(body): JsonBody<types::CreateOrgRequest>,
) -> Result<(StatusCode, Json<types::OrgView>), ApiError> {
    let name = org_name(&body.name)?;
    let command = CreateOrg {
        name,
        owners: body.owners,
        pool: body.pool,
    };
    let view = state.control.run(&caller, command).await?;
    Ok((StatusCode::CREATED, Json(org_body(view))))
}

/// An organisation: members, pending requests, settings, balance and
/// forecast, the cluster's size and requests, recent events.
#[utoipa::path(
    get,
    path = "/api/v1/orgs/{org}",
    params(("org" = String, Path, description = "Organisation name")),
    responses((status = 200, body = types::OrgView), (status = 403, body = types::ErrorBody), (status = 404, body = types::ErrorBody))
)]
pub(crate) async fn get_org(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(org): Path<String>,
) -> Result<Json<types::OrgView>, ApiError> {
    let org = org_name(&org)?;
    Ok(Json(org_body(state.control.get_org(&caller, &org).await?)))
}

/// Changes settings: owners set min_nodes, max_nodes and pool; admins
/// also node_limit and the budget's terms. Raising the floor must be
/// affordable (402 otherwise).
#[utoipa::path(
    patch,
    path = "/api/v1/orgs/{org}",
    params(("org" = String, Path, description = "Organisation name")),
    request_body = types::UpdateOrgRequest,
    responses(
        (status = 200, body = types::OrgView),
        (status = 402, description = "The new floor cannot be paid for", body = types::ErrorBody),
        (status = 403, body = types::ErrorBody),
        (status = 404, body = types::ErrorBody),
        (status = 422, description = "min_nodes > max_nodes, over the limit, bad amount", body = types::ErrorBody),
    )
)]
pub(crate) async fn update_org(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<types::UpdateOrgRequest>,
) -> Result<Json<types::OrgView>, ApiError> {
    let org = org_name(&org)?;
    let patch = SettingsPatch {
        min_nodes: body.min_nodes.map(|v| count("min_nodes", v)).transpose()?,
        max_nodes: body.max_nodes.map(|v| count("max_nodes", v)).transpose()?,
        pool: body
            .pool
            .as_deref()
            .map(|p| {
                flotilla_domain::PoolName::new(p)
                    .map_err(|e| unprocessable("unknown_pool", e.to_string()))
            })
            .transpose()?,
        node_limit: body
            .node_limit
            .map(|v| count("node_limit", v))
            .transpose()?,
        monthly_allowance: body
            .monthly_allowance
            .as_deref()
            .map(|v| money("monthly_allowance", v))
            .transpose()?,
        max_balance: body
            .max_balance
            .as_deref()
            .map(|v| money("max_balance", v))
            .transpose()?,
        shutdown_threshold: body
            .shutdown_threshold
            .as_deref()
            .map(|v| money("shutdown_threshold", v))
            .transpose()?,
        min_runway: body
            .min_runway
            .map(|v| count("min_runway", v).map(|s| Duration::from_secs(u64::from(s))))
            .transpose()?,
    };
    Ok(Json(org_body(
        state.control.run(&caller, UpdateOrg { org, patch }).await?,
    )))
}

/// Asks to join (any signed-in account). Asking again is harmless.
#[utoipa::path(
    post,
    path = "/api/v1/orgs/{org}/membership-requests",
    params(("org" = String, Path, description = "Organisation name")),
    responses((status = 202, description = "Waiting for an owner", body = types::MembershipRequestResponse), (status = 404, body = types::ErrorBody), (status = 409, description = "Already a member", body = types::ErrorBody))
)]
pub(crate) async fn request_membership(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(org): Path<String>,
) -> Result<(StatusCode, Json<types::MembershipRequestResponse>), ApiError> {
    let org = org_name(&org)?;
    let org = state
        .control
        .run(&caller, RequestMembership { org })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(types::MembershipRequestResponse {
            org: org.name.to_string(),
            username: caller.account.map(|u| u.to_string()).unwrap_or_default(),
            status: "pending".into(),
            message: format!(
                "an owner of {} will approve or refuse the request",
                org.name
            ),
        }),
    ))
}

async fn decide(
    state: AppState,
    caller: Caller,
    org: String,
    user: String,
    approve: bool,
) -> Result<StatusCode, ApiError> {
    let org = org_name(&org)?;
    let user = username(&user)?;
    let command = DecideMembership { org, user, approve };
    state.control.run(&caller, command).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Approves a membership request (owners and admins).
#[utoipa::path(
    post,
    path = "/api/v1/orgs/{org}/membership-requests/{user}/approve",
    params(("org" = String, Path, description = "Organisation name"), ("user" = String, Path, description = "Who asked")),
    responses((status = 204, description = "Now a member"), (status = 403, body = types::ErrorBody), (status = 404, body = types::ErrorBody))
)]
pub(crate) async fn approve_membership(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path((org, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    decide(state, caller, org, user, true).await
}

/// Refuses a membership request (owners and admins).
#[utoipa::path(
    post,
    path = "/api/v1/orgs/{org}/membership-requests/{user}/refuse",
    params(("org" = String, Path, description = "Organisation name"), ("user" = String, Path, description = "Who asked")),
    responses((status = 204, description = "Refused"), (status = 403, body = types::ErrorBody), (status = 404, body = types::ErrorBody))
)]
pub(crate) async fn refuse_membership(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path((org, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    decide(state, caller, org, user, false).await
}

/// Sets a member's role (owners and admins); the last owner stays owner.
#[utoipa::path(
    put,
    path = "/api/v1/orgs/{org}/members/{user}",
    params(("org" = String, Path, description = "Organisation name"), ("user" = String, Path, description = "A member")),
    request_body = types::MemberRoleRequest,
    responses((status = 204, description = "Role set"), (status = 403, body = types::ErrorBody), (status = 404, body = types::ErrorBody), (status = 409, description = "The last owner", body = types::ErrorBody))
)]
pub(crate) async fn set_member_role(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path((org, user)): Path<(String, String)>,
    JsonBody(body): JsonBody<types::MemberRoleRequest>,
) -> Result<StatusCode, ApiError> {
    let org = org_name(&org)?;
    let user = username(&user)?;
    let role = OrgRole::parse(&body.role).ok_or_else(|| {
        unprocessable(
            "invalid_role",
            format!("role must be owner or member, got {:?}", body.role),
        )
    })?;
    let command = SetMemberRole { org, user, role };
    state.control.run(&caller, command).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a member (owners and admins; members may remove themselves).
/// Their capacity requests go with them.
#[utoipa::path(
    delete,
    path = "/api/v1/orgs/{org}/members/{user}",
    params(("org" = String, Path, description = "Organisation name"), ("user" = String, Path, description = "A member")),
    responses((status = 204, description = "Removed"), (status = 403, body = types::ErrorBody), (status = 404, body = types::ErrorBody), (status = 409, description = "The last owner", body = types::ErrorBody))
)]
pub(crate) async fn remove_member(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path((org, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let org = org_name(&org)?;
    let user = username(&user)?;
    state
        .control
        .run(&caller, RemoveMember { org, user })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A credit, or with a negative amount a correction (admins). Recorded in
/// the ledger; a correction that takes the balance to the shutdown
/// threshold shuts the cluster down.
#[utoipa::path(
    post,
    path = "/api/v1/orgs/{org}/credits",
    params(("org" = String, Path, description = "Organisation name")),
    request_body = types::CreditRequest,
    responses((status = 200, body = types::OrgView), (status = 403, body = types::ErrorBody), (status = 404, body = types::ErrorBody), (status = 422, body = types::ErrorBody))
)]
pub(crate) async fn credit(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<types::CreditRequest>,
) -> Result<Json<types::OrgView>, ApiError> {
    let org = org_name(&org)?;
    let amount = money("amount", &body.amount)?;
    let command = CreditOrg {
        org,
        amount,
        reason: body.reason,
    };
    Ok(Json(org_body(state.control.run(&caller, command).await?)))
}

/// Every change of the balance, oldest first (spending: one entry a day).
#[utoipa::path(
    get,
    path = "/api/v1/orgs/{org}/ledger",
    params(("org" = String, Path, description = "Organisation name")),
    responses((status = 200, body = types::Ledger), (status = 403, body = types::ErrorBody), (status = 404, body = types::ErrorBody))
)]
pub(crate) async fn ledger(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(org): Path<String>,
) -> Result<Json<types::Ledger>, ApiError> {
    let org = org_name(&org)?;
    let entries = state.control.org_ledger(&caller, &org).await?;
    let balance: Money = entries.iter().map(|e| e.amount).sum();
    Ok(Json(types::Ledger {
        org: org.to_string(),
        balance: balance.to_string(),
        entries: entries
            .into_iter()
            .map(|e| types::LedgerEntryView {
                at: e.at,
                kind: e.kind.as_str().into(),
                amount: e.amount.to_string(),
                reason: e.reason,
                actor: e.actor.map(|a| a.to_string()),
            })
            .collect(),
    }))
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.split(';').next().unwrap_or("").trim() == "text/csv")
}

/// Costs by day, cluster and user (whose request kept the nodes). JSON, or
/// CSV when asked for `text/csv`.
#[utoipa::path(
    get,
    path = "/api/v1/orgs/{org}/costs",
    params(("org" = String, Path, description = "Organisation name")),
    responses(
        (status = 200, body = types::Costs, content_type = "application/json"),
        (status = 200, description = "day,cluster,user,amount rows", content_type = "text/csv"),
        (status = 403, body = types::ErrorBody),
        (status = 404, body = types::ErrorBody),
    )
)]
pub(crate) async fn costs(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let org = org_name(&org)?;
    let rows = state.control.org_costs(&caller, &org).await?;
    if wants_csv(&headers) {
        return Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            costs_csv(&rows),
        )
            .into_response());
    }
    let total: Money = rows.iter().map(|r| r.amount).sum();
    Ok(Json(types::Costs {
        org: org.to_string(),
        total: total.to_string(),
        rows: rows
            .into_iter()
            .map(|r| types::CostRowView {
                day: r.day,
                cluster: r.cluster.to_string(),
                user: r.user.map(|u| u.to_string()),
                amount: r.amount.to_string(),
            })
            .collect(),
    })
    .into_response())
}

/// Every node the organisation's cluster ran: its launch, when it was
/// gone, its price and what it was charged. The costs add up to the sum of
/// these charges.
#[utoipa::path(
    get,
    path = "/api/v1/orgs/{org}/usage",
    params(("org" = String, Path, description = "Organisation name")),
    responses(
        (status = 200, body = types::Usage),
        (status = 403, body = types::ErrorBody),
        (status = 404, body = types::ErrorBody),
    )
)]
pub(crate) async fn usage(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(org): Path<String>,
) -> Result<Json<types::Usage>, ApiError> {
    let org = org_name(&org)?;
    let meters = state.control.org_usage(&caller, &org).await?;
    let total: Money = meters.iter().map(|m| m.charged()).sum();
    Ok(Json(types::Usage {
        org: org.to_string(),
        total: total.to_string(),
        nodes: meters
            .into_iter()
            .map(|m| types::NodeUsageView {
                charged: m.charged().to_string(),
                cluster: m.cluster.to_string(),
                id: m.id.to_string(),
                job: m.job.as_ref().map(|j| j.attempt.clone()),
                charged_to: m
                    .job
                    .as_ref()
                    .and_then(|j| j.user.as_ref())
                    .map(ToString::to_string),
                launched_at: m.launched_at,
                ended_at: m.end.map(|e| e.at),
                ended: m.end.map(|e| e.seen.as_str().to_owned()),
                price_per_hour: m.price_per_hour.to_string(),
                charged_until: m.charged_until,
            })
            .collect(),
    }))
}

/// Names are validated (letters, digits, `-`, and `.`/`_` in usernames),
/// so no field needs quoting.
fn costs_csv(rows: &[CostRow]) -> String {
    let mut out = String::from("day,cluster,user,amount\n");
    for r in rows {
        out += &format!(
            "{},{},{},{}\n",
            r.day,
            r.cluster,
            r.user.as_ref().map_or("", |u| u.as_str()),
            r.amount
        );
    }
    out
}

/// A capacity request on an organisation's cluster: `nodes` for
/// `time_to_live` seconds. The cluster's size is the sum over users of each
/// user's largest active request, within min_nodes..max_nodes.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{cluster}/capacity",
    params(("cluster" = String, Path, description = "The organisation's cluster"), types::WaitQuery),
    request_body = types::CapacityRequest,
    responses(
        (status = 200, description = "Recorded (with wait: settled or timed out)", body = types::CapacityResponse),
        (status = 402, description = "insufficient_funds: the organisation cannot pay for the cluster at its new size over the minimum runway", body = types::ErrorBody),
        (status = 403, description = "Not a member", body = types::ErrorBody),
        (status = 404, description = "Not an organisation's cluster", body = types::ErrorBody),
        (status = 422, description = "nodes < 1, or TTL out of bounds", body = types::ErrorBody),
    )
)]
pub(crate) async fn capacity(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    ClusterParam(cluster): ClusterParam,
    WaitParam(wait): WaitParam,
    JsonBody(body): JsonBody<types::CapacityRequest>,
) -> Result<Json<types::CapacityResponse>, ApiError> {
    let cluster = cluster_name(&cluster)?;
    let command = RequestCapacity {
        cluster,
        nodes: body.nodes,
        time_to_live: body.time_to_live,
    };
    let mut view = state.control.run(&caller, command).await?;
    view.cluster = crate::settle(&state, view.cluster, wait).await;
    let cluster = view.cluster.cluster.clone();
    let message = view.clamped.then(|| {
        format!(
            "asked for {} nodes; the cluster is capped at max_nodes = {}",
            view.requested, view.max_nodes
        )
    });
    Ok(Json(types::CapacityResponse {
        cluster: cluster.to_string(),
        requested: view.requested,
        clamped: view.clamped,
        max_nodes: view.max_nodes,
        expires_at: view.expires_at,
        message,
        status: status_body(view.cluster),
    }))
}

/// Withdraws the caller's own capacity requests on an organisation's
/// cluster: it shrinks to what the other members ask. Ask again with POST
/// for fewer nodes.
#[utoipa::path(
    delete,
    path = "/api/v1/clusters/{cluster}/capacity",
    params(("cluster" = String, Path, description = "An organisation's cluster")),
    responses(
        (status = 200, body = types::ClusterStatus),
        (status = 403, description = "Not a member", body = types::ErrorBody),
        (status = 404, description = "Not an organisation's cluster", body = types::ErrorBody),
        (status = 422, description = "No active request of the caller's", body = types::ErrorBody),
    )
)]
pub(crate) async fn withdraw_capacity(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    ClusterParam(cluster): ClusterParam,
) -> Result<Json<types::ClusterStatus>, ApiError> {
    let cluster = cluster_name(&cluster)?;
    let view = state
        .control
        .run(&caller, WithdrawCapacity { cluster })
        .await?;
    Ok(Json(status_body(view)))
}
