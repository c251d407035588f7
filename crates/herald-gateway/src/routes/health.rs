//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Up", body = Object)))]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: NATS is connected, subscriptions and the event-type catalog are loaded.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Ready", body = Object),
    (status = 503, description = "Not ready", body = crate::error::Problem, content_type = "application/problem+json")))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.client.connection_state() != async_nats::connection::State::Connected {
        return Err(ApiError::unavailable("not connected to NATS"));
    }
    if !state.registry.is_ready() {
        return Err(ApiError::unavailable("subscriptions are still loading"));
    }
    if !state.catalog.is_ready() {
        return Err(ApiError::unavailable("the event-type catalog is still loading"));
    }
    Ok(Json(json!({"status": "ready"})))
}

/// `GET /metrics`: Prometheus text.
pub(crate) async fn metrics() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, herald_core::metrics::CONTENT_TYPE)], herald_core::metrics::render())
}

/// `GET /openapi.json`: this API's OpenAPI 3.1 document.
pub(crate) async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], crate::openapi::document())
}
