//! The gateway's OpenAPI 3.1 document, generated from the handlers and types themselves (so it
//! cannot drift from them) and served at `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    attempts, dead_letters, event_list, event_types, events, filters, health, polling, replay, sessions, sources,
    stats, subscriptions, transformations,
};

/// An event as `POST /v1/events` takes it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EventBody {
    /// Idempotency key: 1–128 of `[A-Za-z0-9_:-]`; generated (`evt_…`) when absent.
    id: Option<String>,
    /// Dot-separated tokens of `[A-Za-z0-9_-]`, e.g. `order.created`.
    #[schema(rename = "type")]
    event_type: String,
    /// Any JSON value but null; delivered verbatim.
    #[schema(value_type = Object)]
    data: serde_json::Value,
    /// 1–64 of `[A-Za-z0-9_-]`; `default` (or the token's tenant) when absent.
    tenant: Option<String>,
    /// Free-form origin, at most 1024 characters.
    source: Option<String>,
    /// RFC 3339; the time of acceptance when absent.
    time: Option<String>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Herald", description = "Webhook delivery on NATS JetStream: events in, signed webhooks out."),
    paths(
        events::publish,
        events::publish_batch,
        event_list::list,
        attempts::for_event,
        subscriptions::create,
        subscriptions::list,
        subscriptions::get,
        subscriptions::patch,
        subscriptions::delete,
        subscriptions::rotate_secret,
        subscriptions::test,
        polling::poll,
        filters::test,
        transformations::test,
        event_types::create,
        event_types::list,
        event_types::get,
        event_types::patch,
        event_types::delete,
        attempts::for_subscription,
        replay::replay,
        replay::resend,
        dead_letters::list,
        dead_letters::redrive,
        stats::stats,
        stats::overview,
        sources::create,
        sources::list,
        sources::get,
        sources::delete,
        sources::receive,
        sessions::create_portal_session,
        sessions::current,
        sessions::sign_out,
        sessions::list,
        sessions::revoke,
        health::healthz,
        health::readyz,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "events", description = "Publish events and read their attempts"),
        (name = "subscriptions", description = "Subscriber endpoints"),
        (name = "event-types", description = "The catalog of event types and their schemas"),
        (name = "dead-letters", description = "What Herald gave up on"),
        (name = "portal", description = "One-time links into a tenant's portal"),
        (name = "sources", description = "Inbound webhooks: URLs providers call, checked and stored as events"),
        (name = "stats", description = "Deliveries over time, kept as they happen"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().expect("the document serialises")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_covers_the_api() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths: Vec<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
        for p in [
            "/v1/events",
            "/v1/events/batch",
            "/v1/events/{id}/attempts",
            "/v1/subscriptions",
            "/v1/subscriptions/{id}",
            "/v1/subscriptions/{id}/rotate-secret",
            "/v1/subscriptions/{id}/test",
            "/v1/subscriptions/{id}/attempts",
            "/v1/subscriptions/{id}/replay",
            "/v1/dead-letters",
            "/v1/dead-letters/redrive",
            "/v1/sessions",
            "/v1/sessions/{id}",
            "/v1/sources",
            "/v1/sources/{id}",
            "/in/{id}",
            "/healthz",
            "/readyz",
        ] {
            assert!(paths.contains(&p), "{p} is missing from the document");
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for s in ["EventBody", "Accepted", "Problem", "View", "CreateInput", "AttemptsPage", "DeadLettersPage"] {
            assert!(schemas.contains_key(s), "{s}");
        }
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    }
}
