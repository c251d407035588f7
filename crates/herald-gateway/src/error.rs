//! One error type for every handler, rendered as `application/problem+json` (RFC 9457) with a
//! stable `type`, a `title` and a `detail` a person can act on. Internal causes are logged, not
//! sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The content type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answered to an API client.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    field: Option<String>,
    retry_after: Option<u64>,
}

/// The problem+json answers every authenticated route can give, listed once for the OpenAPI
/// document (`responses(..., Problems)`); never built.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum Problems {
    #[response(status = 400, description = "Invalid request", content_type = "application/problem+json")]
    Invalid(Problem),
    #[response(status = 401, description = "No or unknown token", content_type = "application/problem+json")]
    Unauthenticated(Problem),
    #[response(status = 403, description = "The token lacks the scope", content_type = "application/problem+json")]
    Forbidden(Problem),
    #[response(status = 404, description = "Not found", content_type = "application/problem+json")]
    NotFound(Problem),
    #[response(status = 503, description = "NATS unavailable; retry", content_type = "application/problem+json")]
    Unavailable(Problem),
}

/// The 429 of the routes with a rate limit or a bound on scans at once, listed for the OpenAPI
/// document beside [`Problems`]; never built.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum Limited {
    #[response(
        status = 429,
        description = "Over a rate limit, or too many scans of this caller at once; retry after `Retry-After`",
        content_type = "application/problem+json"
    )]
    TooMany(Problem),
}

/// An RFC 9457 problem: every error the API answers.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Problem {
    /// Stable, `urn:herald:problem:<kind>`.
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    /// What went wrong and what to do.
    detail: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, kind, title, detail: detail.into(), field: None, retry_after: None }
    }

    /// 400: the request is malformed or fails validation; `field` names the culprit.
    pub fn invalid(field: Option<&str>, detail: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid-request", "The request is invalid", detail);
        e.field = field.map(str::to_owned);
        e
    }

    /// Names the request field at fault.
    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    /// 400: the body is not the JSON this route takes.
    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed-json", "The body is not valid JSON for this route", detail)
    }

    /// 401: no or unknown bearer token.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "Authentication required", detail)
    }

    /// 403: the token lacks the scope.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "The token does not allow this", detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 410: it existed and is no more (a portal link already opened, or expired).
    pub fn gone(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "gone", "No longer available", detail)
    }

    /// 409: a concurrent change won.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflicting change", detail)
    }

    /// 413.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "The body is too large", detail)
    }

    /// 415: the body must be `application/json`.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "The body's content type is not accepted",
            detail,
        )
    }

    /// 429 with `Retry-After`: over a rate limit.
    pub fn too_many_requests(detail: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests", detail);
        e.retry_after = Some(retry_after);
        e
    }

    /// 503 with `Retry-After`: the broker cannot take the write now; nothing was accepted.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker-unavailable",
            "The event store is unavailable; nothing was accepted",
            detail,
        );
        e.retry_after = Some(5);
        e
    }

    /// 500: logs `cause` and tells the client only that it failed.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", "the gateway failed; see its logs")
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The problem body as a JSON value (used for per-item batch results).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.problem()).unwrap_or_default()
    }

    fn problem(&self) -> Problem {
        Problem {
            kind: format!("urn:herald:problem:{}", self.kind),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            field: self.field.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut res = (self.status, body).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}
