use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_api_types::ErrorBody;
use flotilla_domain::{Denied, FixedField, NameError, NameKind, OrgError, ValidationError};
use flotilla_engine::EngineError;
use flotilla_github::GithubError;
use flotilla_identity::IdentityError;
use flotilla_store::StoreError;

/// An error response: a status, a stable code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// Each thing wrong with a document sent, at its JSON pointer.
    pub problems: Vec<flotilla_domain::Problem>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            problems: Vec::new(),
        }
    }

    /// With a `Retry-After` of `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 401 when credentials might help, 403 naming the rule otherwise.
    pub fn denied(e: Denied) -> Self {
        let status = match e {
            Denied::NotAuthenticated | Denied::NotThisAttempt => StatusCode::UNAUTHORIZED,
            _ => StatusCode::FORBIDDEN,
        };
        Self::new(status, e.code(), e.to_string())
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "not_authenticated", message)
    }

    pub fn from_name(e: NameError) -> Self {
        let code = match e.kind {
            NameKind::Cluster => "invalid_cluster_name",
            NameKind::Username
            | NameKind::Pool
            | NameKind::SharedConfig
            | NameKind::InstanceSetId
            | NameKind::InstanceType => "invalid_name",
        };
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
    }
}

/// The one place engine errors become HTTP statuses and codes.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::InvalidName(n) => Self::from_name(n),
            EngineError::Invalid(ValidationError::NodeCapacity { .. }) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_node_capacity",
                message,
            ),
            EngineError::Invalid(ValidationError::Workload(_)) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_workload",
                message,
            ),
            EngineError::Invalid(ValidationError::TimeToLive { .. }) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_time_to_live",
                message,
            ),
            EngineError::UnknownPool { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_pool", message)
            }
            EngineError::InvalidPool { problems, .. } => {
                let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_pool", message);
                e.problems = problems;
                e
            }
            EngineError::PoolImageUnresolved { problems, .. } => {
                let mut e = Self::new(StatusCode::CONFLICT, "pool_image_unresolved", message);
                e.problems = problems;
                e
            }
            EngineError::InvalidSharedConfig { problems, .. } => {
                let mut e = Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_shared_config",
                    message,
                );
                e.problems = problems;
                e
            }
            EngineError::SharedConfigSchemaFixed { .. } => {
                Self::new(StatusCode::CONFLICT, "shared_config_schema_fixed", message)
            }
            EngineError::UnknownSharedConfig { .. } => {
                Self::new(StatusCode::NOT_FOUND, "unknown_shared_config", message)
            }
            EngineError::PoolInConfig(_) => {
                Self::new(StatusCode::CONFLICT, "pool_in_config", message)
            }
            EngineError::Conflict(StoreError::Stale { what, .. }) => {
                let code = if what.starts_with("shared config") {
                    "shared_config_changed"
                } else {
                    "pool_changed"
                };
                Self::new(StatusCode::CONFLICT, code, message)
            }
            EngineError::Conflict(StoreError::InUse { .. }) => {
                Self::new(StatusCode::CONFLICT, "pool_in_use", message)
            }
            EngineError::Conflict(StoreError::Conflict { field, .. }) => {
                let code = match field {
                    FixedField::IsPublic => "is_public_immutable",
                    FixedField::Pool => "pool_immutable",
                    FixedField::Workload => "workload_immutable",
                };
                Self::new(StatusCode::CONFLICT, code, message)
            }
            EngineError::Conflict(StoreError::JobState { .. }) => {
                Self::new(StatusCode::CONFLICT, "job_state", message)
            }
            EngineError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            EngineError::InvalidJob { problems } => {
                let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_job", message);
                e.problems = problems;
                e
            }
            EngineError::UnknownJob(_) => Self::new(StatusCode::NOT_FOUND, "unknown_job", message),
            EngineError::NoSuchFile { .. } => {
                Self::new(StatusCode::NOT_FOUND, "no_such_file", message)
            }
            EngineError::UnknownSchedule(_) => {
                Self::new(StatusCode::NOT_FOUND, "unknown_schedule", message)
            }
            EngineError::InvalidSchedule(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_schedule",
                message,
            ),
            EngineError::UnknownSubscription(_) => {
                Self::new(StatusCode::NOT_FOUND, "unknown_subscription", message)
            }
            EngineError::InvalidSubscription(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_subscription",
                message,
            ),
            EngineError::UnknownTemplate { .. } => {
                Self::new(StatusCode::NOT_FOUND, "unknown_template", message)
            }
            EngineError::Denied(d) => Self::denied(d),
            EngineError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            EngineError::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            }
            EngineError::NotLeading => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_leading", message)
            }
            EngineError::Store(StoreError::Duplicate(_)) => {
                Self::new(StatusCode::CONFLICT, "already_exists", message)
            }
            EngineError::Store(_) => {
                tracing::error!(error = %message, "storage failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    message,
                )
            }
            EngineError::Config(_) => Self::internal(message),
            EngineError::Org(o) => {
                let status = match &o {
                    OrgError::Unknown(_)
                    | OrgError::NoSuchRequest { .. }
                    | OrgError::NotAMember { .. } => StatusCode::NOT_FOUND,
                    OrgError::Exists(_)
                    | OrgError::NameTaken { .. }
                    | OrgError::ClusterExists(_)
                    | OrgError::AlreadyMember { .. }
                    | OrgError::LastOwner { .. } => StatusCode::CONFLICT,
                    OrgError::UnknownAccount(_) | OrgError::Invalid(_) => {
                        StatusCode::UNPROCESSABLE_ENTITY
                    }
                    OrgError::NotSignedIn => StatusCode::UNAUTHORIZED,
                    OrgError::NotMember { .. }
                    | OrgError::NotOwner { .. }
                    | OrgError::AdminOnly => StatusCode::FORBIDDEN,
                    OrgError::InsufficientFunds { .. } => StatusCode::PAYMENT_REQUIRED,
                };
                Self::new(status, o.code(), message)
            }
            EngineError::NotAnOrgCluster(_) => {
                Self::new(StatusCode::NOT_FOUND, "not_an_org_cluster", message)
            }
            EngineError::OrgCluster(_) => Self::new(StatusCode::CONFLICT, "org_cluster", message),
            EngineError::NoNodes(_) => Self::new(StatusCode::NOT_FOUND, "no_nodes", message),
            EngineError::NoSuchNode { .. } => {
                Self::new(StatusCode::NOT_FOUND, "no_such_node", message)
            }
            EngineError::Unsupported { .. } => {
                Self::new(StatusCode::CONFLICT, "not_supported_by_driver", message)
            }
            EngineError::NoCommand => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "no_command", message)
            }
            // The cloud asks for fewer calls: the server's budget for it
            // is spent for now.
            EngineError::Cloud(flotilla_engine::CloudError::RateLimited { .. }) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cloud_rate_limited",
                format!("{message}; try again in a few seconds"),
            ),
            EngineError::Cloud(e) => {
                tracing::warn!(error = %e, "a question to a node failed");
                Self::new(StatusCode::BAD_GATEWAY, "cloud_error", message)
            }
        }
    }
}

/// The one place sign-in and account errors become statuses and codes.
impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        let message = e.to_string();
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        match e {
            IdentityError::BadCredentials => {
                Self::new(StatusCode::UNAUTHORIZED, "invalid_credentials", message)
            }
            IdentityError::Token(t) => Self::new(StatusCode::UNAUTHORIZED, t.code(), message),
            IdentityError::Revoked => Self::new(StatusCode::UNAUTHORIZED, "token_revoked", message),
            IdentityError::RefreshInvalid => {
                Self::new(StatusCode::UNAUTHORIZED, "invalid_refresh_token", message)
            }
            IdentityError::RefreshReused => {
                Self::new(StatusCode::UNAUTHORIZED, "refresh_token_reused", message)
            }
            IdentityError::Denied(d) => Self::denied(d),
            IdentityError::InvalidName(n) => match n.kind {
                NameKind::Username => Self::new(unprocessable, "invalid_username", message),
                _ => Self::from_name(n),
            },
            IdentityError::Password(_) => Self::new(unprocessable, "invalid_password", message),
            IdentityError::AnonymousAccount => Self::new(unprocessable, "invalid_level", message),
            IdentityError::Exists { .. } => Self::new(StatusCode::CONFLICT, "user_exists", message),
            IdentityError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "user_not_found", message)
            }
            IdentityError::LastAdmin(_) => Self::new(StatusCode::CONFLICT, "last_admin", message),
            IdentityError::Busy => Self::new(StatusCode::TOO_MANY_REQUESTS, "busy", message)
                .retry_after(flotilla_identity::HASH_QUEUE_WAIT.as_secs()),
            IdentityError::Hashing(_) => Self::internal(message),
            IdentityError::GithubDisabled => {
                Self::new(StatusCode::NOT_FOUND, "github_login_disabled", message)
            }
            IdentityError::Github(g) => match g {
                GithubError::BadToken | GithubError::OrgAccessDenied { .. } => {
                    Self::new(StatusCode::UNAUTHORIZED, "invalid_github_token", message)
                }
                GithubError::BadLogin(_) => {
                    Self::new(unprocessable, "unsupported_github_login", message)
                }
                _ => {
                    tracing::warn!(error = %message, "GitHub sign-in failed on GitHub's side");
                    Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "github_unavailable",
                        message,
                    )
                }
            },
            IdentityError::Keys(k) => match k {
                flotilla_identity::KeyError::UnknownKey { .. } => {
                    Self::new(StatusCode::NOT_FOUND, "key_not_found", message)
                }
                flotilla_identity::KeyError::RetireActive { .. } => {
                    Self::new(StatusCode::CONFLICT, "key_is_active", message)
                }
                _ => Self::internal(message),
            },
            IdentityError::Issue(_) => Self::internal(message),
            IdentityError::Store(_) => {
                tracing::error!(error = %message, "storage failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    message,
                )
            }
        }
    }
}

impl From<Denied> for ApiError {
    fn from(e: Denied) -> Self {
        Self::denied(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let retry_after = self.retry_after;
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.code.to_owned(),
                message: self.message,
                problems: self
                    .problems
                    .into_iter()
                    .map(|p| flotilla_api_types::Problem {
                        pointer: p.pointer,
                        message: p.message,
                    })
                    .collect(),
            }),
        )
            .into_response();
        if unauthorized {
            // RFC 6750: say which scheme to use.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"flotilla\""),
            );
        }
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}
