//! Extractors that turn every way a request can be malformed into an
//! [`ApiError`] with the JSON error body, rather than axum's plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use flotilla_api_types::WaitQuery;
use flotilla_domain::Caller;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// The caller's identity. No authentication is configured yet, so every
/// caller is the local operator (the server binds to loopback by default).
pub struct CallerIdentity(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for CallerIdentity {
    type Rejection = ApiError;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(CallerIdentity(Caller::local_operator()))
    }
}

/// `?wait=true|false`.
pub struct WaitParam(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for WaitParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(q) = Query::<WaitQuery>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_query",
                    format!("{}; use ?wait=true or ?wait=false", e.body_text()),
                )
            })?;
        Ok(WaitParam(q.wait))
    }
}

/// A JSON body: syntax errors, wrong types, missing or unknown fields are
/// 400 (the request is not the shape the API takes); values of the right
/// shape that break a rule are 422, decided later by the engine.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("request bodies are limited to {} bytes", crate::MAX_BODY_BYTES),
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
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            let code = if e.is_data() { "invalid_request" } else { "malformed_json" };
            ApiError::new(StatusCode::BAD_REQUEST, code, format!("request body: {e}"))
        })
    }
}
