//! Failures as `metav1.Status` documents: the body every Kubernetes client (the HPA controller,
//! `kubectl get --raw`) reads and shows on a non-2xx answer.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a request got no metrics. Cloned into caches, so a failed Redis read is answered from
/// memory for a few seconds like a successful one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request cannot be understood (a label selector this server cannot evaluate).
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or credentials nobody vouches for.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is known but may not read this.
    #[error("{0}")]
    Forbidden(String),
    /// No such metric, namespace, ScaledApp or pod.
    #[error("{0}")]
    NotFound(String),
    /// Only GET is served.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// This server failed (for example an authentication review it could not make).
    #[error("{0}")]
    Internal(String),
    /// Too many requests with bearer tokens this server has not reviewed yet: each costs a
    /// TokenReview, so their rate is bounded (cached callers are not affected).
    #[error("{0}")]
    TooManyRequests(String),
    /// A source of the metric is down (Redis, the API server): try again later. Never turned
    /// into a zero, which would scale a pool down.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `metav1.StatusReason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::NotFound(_) => "NotFound",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::Internal(_) => "InternalError",
            ApiError::TooManyRequests(_) => "TooManyRequests",
            ApiError::Unavailable(_) => "ServiceUnavailable",
        }
    }

    /// The `metav1.Status` document.
    pub fn status(&self) -> serde_json::Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.code(), Json(self.status())).into_response();
        if matches!(self, ApiError::Unavailable(_)) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_document_carries_code_reason_and_message() {
        let status = ApiError::NotFound("no metric \"x\"".into()).status();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["apiVersion"], "v1");
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["code"], 404);
        assert_eq!(status["message"], "no metric \"x\"");
    }
}
