//! The gateway's routes, one file per resource.

pub(crate) mod attempts;
pub(crate) mod dead_letters;
pub(crate) mod endpoint_auth;
pub(crate) mod event_list;
pub(crate) mod event_types;
pub(crate) mod events;
pub(crate) mod filters;
pub(crate) mod health;
pub(crate) mod pages;
pub(crate) mod polling;
pub(crate) mod replay;
pub(crate) mod sessions;
pub(crate) mod sources;
pub(crate) mod stats;
pub(crate) mod subscriptions;
pub(crate) mod transformations;

use axum::Router;
use axum::routing::{get, post};

use crate::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi))
        .route("/v1/events", post(events::publish).get(event_list::list))
        .route("/v1/events/batch", post(events::publish_batch))
        .route("/v1/events/{id}/attempts", get(attempts::for_event))
        .route("/v1/subscriptions/{id}/attempts", get(attempts::for_subscription))
        .route("/v1/subscriptions/{id}/replay", post(replay::replay))
        .route("/v1/subscriptions/{id}/resend", post(replay::resend))
        .route("/v1/subscriptions/{id}/rotate-secret", post(subscriptions::rotate_secret))
        .route("/v1/subscriptions/{id}/test", post(subscriptions::test))
        .route("/v1/subscriptions/{id}/poll", get(polling::poll))
        .route("/v1/filters/test", post(filters::test))
        .route("/v1/transformations/test", post(transformations::test))
        .route("/v1/event-types", post(event_types::create).get(event_types::list))
        .route("/v1/event-types/{name}", get(event_types::get).patch(event_types::patch).delete(event_types::delete))
        .route("/console", get(pages::console_redirect))
        .route("/console/", get(pages::console))
        .route("/console/session", post(sessions::sign_in))
        .route("/portal", get(pages::portal_redirect))
        .route("/portal/", get(pages::portal))
        .route("/portal/session", post(sessions::open_portal))
        .route("/ui/{name}", get(pages::asset))
        .route("/v1/session", get(sessions::current).delete(sessions::sign_out))
        .route("/v1/portal/sessions", post(sessions::create_portal_session))
        .route("/v1/sessions", get(sessions::list))
        .route("/v1/sessions/{id}", axum::routing::delete(sessions::revoke))
        .route("/v1/stats", get(stats::stats))
        .route("/v1/overview", get(stats::overview))
        .route("/v1/dead-letters", get(dead_letters::list))
        .route("/v1/dead-letters/redrive", post(dead_letters::redrive))
        .route("/v1/sources", post(sources::create).get(sources::list))
        .route("/v1/sources/{id}", get(sources::get).delete(sources::delete))
        .route("/in/{id}", post(sources::receive))
        .route("/v1/subscriptions", post(subscriptions::create).get(subscriptions::list))
        .route(
            "/v1/subscriptions/{id}",
            get(subscriptions::get).patch(subscriptions::patch).delete(subscriptions::delete),
        )
}
