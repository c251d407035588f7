//! `POST /v1/transformations/test`: runs a transformation on a payload, as a delivery would, and
//! answers what would be sent (or the error) — for people writing one. Nothing is stored or sent.

use std::collections::BTreeMap;

use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use herald_core::transform::{Failure, Transformation, Transformed, Webhook};

use crate::Body;
use crate::auth::Caller;
use crate::error::ApiError;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransformationTestInput {
    /// The JavaScript source, defining `handler(webhook)`.
    code: String,
    /// The webhook body the handler gets as `webhook.payload` (by default `{}`).
    #[schema(value_type = Option<Object>)]
    payload: Option<Value>,
    /// `webhook.eventType` (by default `herald.test`).
    event_type: Option<String>,
    /// `webhook.url` (by default `https://example.com/webhook`).
    url: Option<String>,
    /// `webhook.headers` (by default none).
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TransformationTestResult {
    /// What would be sent, if the handler ran to the end.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    result: Option<Transformed>,
    /// Why it did not, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<TransformationError>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TransformationError {
    /// `syntax`, `threw`, `timed_out`, `out_of_memory` or `invalid`.
    kind: &'static str,
    message: String,
}

/// The stable name of a failure's kind.
pub(crate) fn failure_kind(failure: &Failure) -> &'static str {
    match failure {
        Failure::Syntax(_) => "syntax",
        Failure::Threw(_) => "threw",
        Failure::TimedOut => "timed_out",
        Failure::OutOfMemory => "out_of_memory",
        Failure::Invalid(_) => "invalid",
    }
}

/// Checks a transformation given on a subscription: it must compile and define `handler`.
pub(crate) fn checked(source: &str) -> Result<(), ApiError> {
    herald_core::transform::in_place(|| Transformation::compile(source))
        .map(drop)
        .map_err(|e| ApiError::invalid(Some("transformation"), format!("transformation: {e}")))
}

/// `POST /v1/transformations/test`.
#[utoipa::path(post, path = "/v1/transformations/test", tag = "subscriptions", request_body = TransformationTestInput,
    responses((status = 200, description = "What the transformation made of the payload, or why it failed", body = TransformationTestResult), crate::error::Problems),
    security(("bearer" = [])))]
pub(crate) async fn test(caller: Caller, body: Body) -> Result<Json<TransformationTestResult>, ApiError> {
    caller.require_transformations()?;
    let input: TransformationTestInput = body.json()?;
    let payload = serde_json::value::to_raw_value(&input.payload.unwrap_or_else(|| serde_json::json!({})))
        .map_err(|e| ApiError::invalid(Some("payload"), format!("payload: {e}")))?;
    let event_type = input.event_type.unwrap_or_else(|| "herald.test".into());
    let url = input.url.unwrap_or_else(|| "https://example.com/webhook".into());
    let webhook =
        Webhook { method: "POST", url: &url, payload: &payload, event_type: &event_type, headers: &input.headers };
    let ran = herald_core::transform::in_place(|| Transformation::compile(&input.code).and_then(|t| t.run(&webhook)));
    Ok(Json(match ran {
        Ok(result) => TransformationTestResult { result: Some(result), error: None },
        Err(failure) => TransformationTestResult {
            result: None,
            error: Some(TransformationError { kind: failure_kind(&failure), message: failure.to_string() }),
        },
    }))
}
