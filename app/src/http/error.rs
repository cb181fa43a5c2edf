//! The one error type of the HTTP layer. Every failure a handler or extractor can meet becomes an
//! [`AppError`], which renders as `{"error":{"code":..,"message":..}}` with the right status.
//! 5xx bodies never carry internal detail (SQL, Redis); that goes to the log.

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use scaled_contract::error_chain;
use serde_json::json;

use crate::{
    db::DbError, passwords::PasswordError, redis_client::RedisCallError, sessions::SessionError,
};

/// Response extension naming a failed dependency, read by the metrics middleware.
#[derive(Clone, Copy, Debug)]
pub struct FailedDependency(pub &'static str);

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed (bad JSON, bad query string, bad path parameter).
    #[error("{0}")]
    BadRequest(String),
    /// The resource does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request needs a credential it did not carry, or carried a wrong one.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The caller is signed in, but not as someone allowed to do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The method is not supported on this path.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request conflicts with current state (duplicate email).
    #[error("{0}")]
    Conflict(String),
    /// The body exceeds the limit.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// The body is not JSON.
    #[error("expected a body with content-type application/json")]
    UnsupportedMediaType,
    /// A field is invalid.
    #[error("{field}: {reason}")]
    InvalidField {
        /// Which field.
        field: String,
        /// Why.
        reason: String,
    },
    /// The client is over its rate limit.
    #[error("rate limit of {limit} requests exceeded; retry in {retry_after_seconds} s")]
    RateLimited {
        /// Requests per window.
        limit: u32,
        /// Seconds until a request would pass.
        retry_after_seconds: u64,
    },
    /// Too many failed sign-ins for one account; the window slides, so this passes.
    #[error("too many failed sign-ins for this account; retry in {retry_after_seconds} s")]
    TooManyAttempts {
        /// Seconds until an attempt is allowed again.
        retry_after_seconds: u64,
    },
    /// A dependency needed for this request is down.
    #[error("{what} is temporarily unavailable")]
    Unavailable {
        /// What is down (a category, not an address).
        what: &'static str,
        /// Suggested wait.
        retry_after_seconds: u64,
    },
    /// A bug or an unexpected failure; details are logged, not returned.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl AppError {
    /// A field error.
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        AppError::InvalidField {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::RateLimited { .. } | AppError::TooManyAttempts { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest(_) => "bad_request",
            AppError::NotFound(_) => "not_found",
            AppError::Unauthorized(_) => "unauthorized",
            AppError::Forbidden(_) => "forbidden",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::Conflict(_) => "conflict",
            AppError::PayloadTooLarge => "payload_too_large",
            AppError::UnsupportedMediaType => "unsupported_media_type",
            AppError::InvalidField { .. } => "invalid_field",
            AppError::RateLimited { .. } => "rate_limited",
            AppError::TooManyAttempts { .. } => "too_many_attempts",
            AppError::Unavailable { .. } => "unavailable",
            AppError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        if let AppError::InvalidField { field, .. } = &self {
            error["field"] = json!(field);
        }
        if let AppError::Internal(source) = &self {
            tracing::error!(error = %error_chain(source.as_ref()), "request failed");
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            AppError::RateLimited {
                limit,
                retry_after_seconds,
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
                headers.insert("x-ratelimit-limit", HeaderValue::from(*limit));
                headers.insert("x-ratelimit-remaining", HeaderValue::from(0));
                headers.insert("x-ratelimit-reset", HeaderValue::from(*retry_after_seconds));
            }
            AppError::TooManyAttempts {
                retry_after_seconds,
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
            }
            AppError::Unavailable {
                retry_after_seconds,
                what,
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
                response.extensions_mut().insert(FailedDependency(what));
            }
            _ => {}
        }
        response
    }
}

impl From<DbError> for AppError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Unavailable { .. } => {
                tracing::warn!(error = %error_chain(&error), "database unavailable");
                AppError::Unavailable {
                    what: "database",
                    retry_after_seconds: 2,
                }
            }
            other => AppError::Internal(Box::new(other)),
        }
    }
}

impl From<SessionError> for AppError {
    fn from(error: SessionError) -> Self {
        match error {
            SessionError::Unavailable(source) => {
                tracing::warn!(error = %error_chain(&source), "session store unavailable");
                AppError::Unavailable {
                    what: "session store",
                    retry_after_seconds: 1,
                }
            }
            corrupt @ SessionError::Corrupt(_) => AppError::Internal(Box::new(corrupt)),
        }
    }
}

impl From<PasswordError> for AppError {
    fn from(error: PasswordError) -> Self {
        AppError::Internal(Box::new(error))
    }
}

impl From<RedisCallError> for AppError {
    fn from(error: RedisCallError) -> Self {
        SessionError::Unavailable(error).into()
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(error) => AppError::invalid("body", error.body_text()),
            JsonRejection::JsonSyntaxError(error) => AppError::BadRequest(error.body_text()),
            JsonRejection::MissingJsonContentType(_) => AppError::UnsupportedMediaType,
            JsonRejection::BytesRejection(error)
                if error.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                AppError::PayloadTooLarge
            }
            other => AppError::BadRequest(other.body_text()),
        }
    }
}

impl From<PathRejection> for AppError {
    fn from(rejection: PathRejection) -> Self {
        AppError::BadRequest(rejection.body_text())
    }
}

impl From<QueryRejection> for AppError {
    fn from(rejection: QueryRejection) -> Self {
        AppError::BadRequest(rejection.body_text())
    }
}
