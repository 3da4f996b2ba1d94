//! Sign-in, tokens and accounts: LOGIN (password or GitHub), refresh,
//! logout, who am I, cluster tokens, signing keys, the JWKS, and account
//! management for admins.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_api_types as types;
use flotilla_domain::{Caller, Level, Username};
use flotilla_identity::{IdentityError, NewUser, Tokens};
use flotilla_store::AccountRecord;

use crate::access::rate_limited;
use crate::{cluster_name, ApiError, AppState, CallerIdentity, ClusterParam, JsonBody};

/// The client's address (see [`crate::access::peer`]).
pub struct Peer(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(a)| a.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ))
    }
}

pub(crate) fn level_out(level: Level) -> types::Level {
    match level {
        Level::Anonymous => types::Level::Anonymous,
        Level::GithubMember => types::Level::GithubMember,
        Level::OrgMember => types::Level::OrgMember,
        Level::Admin => types::Level::Admin,
    }
}

fn level_in(level: types::Level) -> Level {
    match level {
        types::Level::Anonymous => Level::Anonymous,
        types::Level::GithubMember => Level::GithubMember,
        types::Level::OrgMember => Level::OrgMember,
        types::Level::Admin => Level::Admin,
    }
}

fn token_body(tokens: Tokens, now: chrono::DateTime<chrono::Utc>) -> types::TokenResponse {
    let clusters =
        flotilla_domain::allowed_clusters(&tokens.account.username, &tokens.account.grants);
    types::TokenResponse {
        expires_in: (tokens.access.expires_at - now).num_seconds().max(0) as u64,
        access_token: tokens.access.token,
        token_type: "Bearer".into(),
        expires_at: tokens.access.expires_at,
        refresh_token: tokens.refresh_token,
        refresh_expires_at: tokens.refresh_expires_at,
        username: tokens.account.username.to_string(),
        level: level_out(tokens.account.level),
        clusters: clusters.iter().map(|c| c.to_string()).collect(),
    }
}

fn user_body(a: AccountRecord) -> types::UserView {
    let clusters = flotilla_domain::allowed_clusters(&a.username, &a.grants);
    types::UserView {
        username: a.username.to_string(),
        kind: a.kind.as_str().into(),
        level: level_out(a.level),
        grants: a.grants.iter().map(|c| c.to_string()).collect(),
        clusters: clusters.iter().map(|c| c.to_string()).collect(),
        created_at: a.created_at,
    }
}

/// LOGIN with a local account. Failures are counted per account and per
/// network; past the limit the answer is 429 until the window passes.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    security(()),
    request_body = types::LoginRequest,
    responses(
        (status = 200, body = types::TokenResponse),
        (status = 401, description = "Wrong username or password", body = types::ErrorBody),
        (status = 429, description = "Too many failed logins, or every password check busy for 10 s (`busy`, with Retry-After)", body = types::ErrorBody),
    )
)]
pub(crate) async fn login(
    State(state): State<AppState>,
    Peer(peer): Peer,
    JsonBody(body): JsonBody<types::LoginRequest>,
) -> Result<Response, ApiError> {
    let username = Username::new(body.username.as_str()).ok();
    if let Err(wait) = state.limits.check_login(username.as_ref(), peer) {
        return Ok(rate_limited(wait.seconds()));
    }
    let now = state.engine.now();
    match state
        .identity
        .login(&body.username, &body.password, now)
        .await
    {
        Ok(tokens) => Ok(Json(token_body(tokens, now)).into_response()),
        Err(IdentityError::BadCredentials) => {
            tracing::warn!(username = %body.username, %peer, "failed login");
            state.limits.login_failed(username.as_ref(), peer);
            Err(IdentityError::BadCredentials.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// LOGIN with a GitHub token: a GitHub user is a `github_member`, an active
/// member of the configured organisation an `org_member`.
#[utoipa::path(
    post,
    path = "/api/v1/auth/github",
    security(()),
    request_body = types::GithubLoginRequest,
    responses(
        (status = 200, body = types::TokenResponse),
        (status = 401, description = "GitHub refused the token", body = types::ErrorBody),
        (status = 404, description = "GitHub sign-in is not configured on this server", body = types::ErrorBody),
        (status = 503, description = "GitHub could not answer", body = types::ErrorBody),
    )
)]
pub(crate) async fn github_login(
    State(state): State<AppState>,
    Peer(peer): Peer,
    JsonBody(body): JsonBody<types::GithubLoginRequest>,
) -> Result<Response, ApiError> {
    if let Err(wait) = state.limits.check_login(None, peer) {
        return Ok(rate_limited(wait.seconds()));
    }
    let now = state.engine.now();
    match state.identity.github_login(&body.token, now).await {
        Ok(tokens) => Ok(Json(token_body(tokens, now)).into_response()),
        Err(e @ IdentityError::Github(flotilla_github::GithubError::BadToken)) => {
            state.limits.login_failed(None, peer);
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Exchanges a refresh token for a new pair. Each refresh token works once;
/// presenting a used one revokes that whole sign-in.
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    security(()),
    request_body = types::RefreshRequest,
    responses(
        (status = 200, body = types::TokenResponse),
        (status = 401, description = "Unknown, expired, revoked or reused", body = types::ErrorBody),
    )
)]
pub(crate) async fn refresh(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<types::RefreshRequest>,
) -> Result<Json<types::TokenResponse>, ApiError> {
    let now = state.engine.now();
    let tokens = state.identity.refresh(&body.refresh_token, now).await?;
    Ok(Json(token_body(tokens, now)))
}

/// Revokes the sign-in a refresh token belongs to.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    security(()),
    request_body = types::RefreshRequest,
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Unknown refresh token", body = types::ErrorBody),
    )
)]
pub(crate) async fn logout(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<types::RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    state
        .identity
        .logout(&body.refresh_token, state.engine.now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who the presented token stands for (anonymous without one).
#[utoipa::path(get, path = "/api/v1/auth/whoami", responses((status = 200, body = types::WhoAmI)))]
pub(crate) async fn whoami(CallerIdentity(caller): CallerIdentity) -> Json<types::WhoAmI> {
    Json(whoami_body(&caller))
}

fn whoami_body(caller: &Caller) -> types::WhoAmI {
    types::WhoAmI {
        username: caller.account.as_ref().map(|u| u.to_string()),
        level: level_out(caller.level),
        clusters: caller.allowed.iter().map(|c| c.to_string()).collect(),
    }
}

/// A short-lived token for one of the caller's clusters, with that cluster
/// as its audience, for the cluster's own proxy to verify with the JWKS.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{cluster}/token",
    params(("cluster" = String, Path, description = "Cluster name")),
    responses(
        (status = 200, body = types::ClusterTokenResponse),
        (status = 401, body = types::ErrorBody),
        (status = 403, body = types::ErrorBody),
    )
)]
pub(crate) async fn cluster_token(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    ClusterParam(cluster): ClusterParam,
) -> Result<Json<types::ClusterTokenResponse>, ApiError> {
    let cluster = cluster_name(&cluster)?;
    let issued = state
        .identity
        .cluster_token(&caller, &cluster, state.engine.now())?;
    Ok(Json(types::ClusterTokenResponse {
        token: issued.token,
        audience: cluster.to_string(),
        expires_at: issued.expires_at,
    }))
}

/// The public keys that verify flotilla's tokens (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", security(()), responses((status = 200, description = "JWK Set")))]
pub(crate) async fn jwks(State(state): State<AppState>) -> Response {
    (
        [(axum::http::header::CACHE_CONTROL, "max-age=300")],
        Json(state.identity.tokens().jwks()),
    )
        .into_response()
}

/// The keys that verify tokens, and which one signs (admins).
#[utoipa::path(get, path = "/api/v1/auth/keys", responses((status = 200, body = types::SigningKeyList), (status = 403, body = types::ErrorBody)))]
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
) -> Result<Json<types::SigningKeyList>, ApiError> {
    let keys = state.identity.keys(&caller).await?;
    Ok(Json(types::SigningKeyList {
        keys: keys
            .into_iter()
            .map(|k| types::SigningKeyView {
                kid: k.kid,
                signs: k.signs,
                created_at: k.created_at,
            })
            .collect(),
    }))
}

/// A new signing key (admins). Tokens signed by older keys stay valid until
/// those keys are retired.
#[utoipa::path(post, path = "/api/v1/auth/keys", responses((status = 200, description = "`{\"kid\": ...}` of the new key"), (status = 403, body = types::ErrorBody)))]
pub(crate) async fn rotate_key(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
) -> Result<Json<serde_json::Value>, ApiError> {
    let kid = state
        .identity
        .rotate_key(&caller, chrono::Utc::now())
        .await?;
    Ok(Json(serde_json::json!({ "kid": kid })))
}

/// Retires a key that no longer signs (admins): tokens it signed are refused.
#[utoipa::path(
    delete,
    path = "/api/v1/auth/keys/{kid}",
    params(("kid" = String, Path)),
    responses(
        (status = 204),
        (status = 403, body = types::ErrorBody),
        (status = 404, description = "No key of that id", body = types::ErrorBody),
        (status = 409, description = "The key signs new tokens: rotate first", body = types::ErrorBody),
    )
)]
pub(crate) async fn retire_key(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(kid): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .identity
        .retire_key(&caller, &kid, chrono::Utc::now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every account (admins).
#[utoipa::path(get, path = "/api/v1/users", responses((status = 200, body = types::UserList), (status = 403, body = types::ErrorBody)))]
pub(crate) async fn list_users(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
) -> Result<Json<types::UserList>, ApiError> {
    let users = state.identity.list_users(&caller).await?;
    Ok(Json(types::UserList {
        users: users.into_iter().map(user_body).collect(),
    }))
}

/// Creates a local account (admins).
#[utoipa::path(
    post,
    path = "/api/v1/users",
    request_body = types::CreateUserRequest,
    responses(
        (status = 201, body = types::UserView),
        (status = 403, body = types::ErrorBody),
        (status = 409, description = "The username is taken", body = types::ErrorBody),
        (status = 422, description = "Bad username, password or level", body = types::ErrorBody),
    )
)]
pub(crate) async fn create_user(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    JsonBody(body): JsonBody<types::CreateUserRequest>,
) -> Result<(StatusCode, Json<types::UserView>), ApiError> {
    let user = NewUser {
        username: body.username,
        password: body.password,
        level: level_in(body.level),
        grants: body.grants,
    };
    let created = state
        .identity
        .create_user(&caller, user, state.engine.now())
        .await?;
    Ok((StatusCode::CREATED, Json(user_body(created))))
}

/// One account (admins).
#[utoipa::path(get, path = "/api/v1/users/{username}", params(("username" = String, Path)), responses((status = 200, body = types::UserView), (status = 404, body = types::ErrorBody)))]
pub(crate) async fn get_user(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(username): Path<String>,
) -> Result<Json<types::UserView>, ApiError> {
    Ok(Json(user_body(
        state.identity.get_user(&caller, &username).await?,
    )))
}

/// Changes an account's level or grants (admins). Its tokens issued before
/// the change are refused from then on.
#[utoipa::path(
    patch,
    path = "/api/v1/users/{username}",
    params(("username" = String, Path)),
    request_body = types::UpdateUserRequest,
    responses((status = 200, body = types::UserView), (status = 404, body = types::ErrorBody), (status = 409, description = "The last admin", body = types::ErrorBody))
)]
pub(crate) async fn update_user(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(username): Path<String>,
    JsonBody(body): JsonBody<types::UpdateUserRequest>,
) -> Result<Json<types::UserView>, ApiError> {
    let updated = state
        .identity
        .update_user(
            &caller,
            &username,
            body.level.map(level_in),
            body.grants,
            state.engine.now(),
        )
        .await?;
    Ok(Json(user_body(updated)))
}

/// Removes an account with its grants and sign-ins (admins).
#[utoipa::path(delete, path = "/api/v1/users/{username}", params(("username" = String, Path)), responses((status = 204), (status = 404, body = types::ErrorBody), (status = 409, description = "The last admin", body = types::ErrorBody)))]
pub(crate) async fn delete_user(
    State(state): State<AppState>,
    CallerIdentity(caller): CallerIdentity,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .identity
        .delete_user(&caller, &username, state.engine.now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
