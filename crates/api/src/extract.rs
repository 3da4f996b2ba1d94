//! Extractors that turn every way a request can be malformed into an
//! [`ApiError`] with the JSON error body, rather than axum's plain text.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use flotilla_api_types::WaitQuery;
use flotilla_domain::Caller;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// The caller, as the access layer authenticated it. A route that did not
/// go through that layer fails closed.
pub struct CallerIdentity(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for CallerIdentity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(CallerIdentity)
            .ok_or_else(|| ApiError::internal("this route is not behind the access layer"))
    }
}

/// The `{cluster}` path segment, not yet checked as a name (the handler
/// does that). A segment that is not UTF-8 once percent-decoded gets the
/// JSON error body rather than axum's plain text.
pub struct ClusterParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClusterParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(cluster) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                if e.status().is_server_error() {
                    ApiError::internal(e.body_text())
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, "malformed_request", e.body_text())
                }
            })?;
        Ok(ClusterParam(cluster))
    }
}

/// A query string that is not the shape a route takes: 400, saying how to
/// ask (`hint`).
pub(crate) fn malformed_query(e: QueryRejection, hint: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed_query",
        format!("{}; {hint}", e.body_text()),
    )
}

/// `?wait=true|false`.
pub struct WaitParam(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for WaitParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(q) = Query::<WaitQuery>::from_request_parts(parts, state)
            .await
            .map_err(|e| malformed_query(e, "use ?wait=true or ?wait=false"))?;
        Ok(WaitParam(q.wait))
    }
}

/// A JSON body: a content type other than JSON is 415; syntax errors,
/// wrong types, missing or unknown fields are 400 (the request is not the
/// shape the API takes); values of the right shape that break a rule are
/// 422, decided later by the engine.
pub struct JsonBody<T>(pub T);

/// `application/json` or `application/*+json`, with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON, with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!(
                        "request bodies are limited to {} bytes",
                        crate::MAX_BODY_BYTES
                    ),
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed_request", e.body_text())
            }
        })?;
        if bytes.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "the request needs a JSON body",
            ));
        }
        // Serde's derived structs also take arrays (`[3, 3600]`); the API
        // documents objects, so nothing else is accepted.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request body must be a JSON object",
            ));
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            let code = if e.is_data() {
                "invalid_request"
            } else {
                "malformed_json"
            };
            ApiError::new(StatusCode::BAD_REQUEST, code, format!("request body: {e}"))
        })
    }
}
