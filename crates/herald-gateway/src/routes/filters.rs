//! `POST /v1/filters/test`: whether a payload filter matches an event, and why — for people
//! writing one. Nothing is stored or sent.

use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use herald_core::filter::Filter;

use crate::Body;
use crate::auth::Caller;
use crate::error::ApiError;

/// The fields of the document a filter sees.
const EVENT_FIELDS: [&str; 6] = ["id", "type", "tenant", "source", "time", "data"];

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilterTestInput {
    /// The filter document, as a subscription's `filter` takes it.
    #[schema(value_type = Object)]
    filter: Value,
    /// The event as a filter sees it: any of `id`, `type`, `tenant`, `source`, `time` (strings)
    /// and `data`; absent strings are empty, absent `data` is null.
    #[schema(value_type = Object)]
    event: Value,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct FilterTestResult {
    matches: bool,
    /// The conditions that decided it, `path: what it is, and what it fails`.
    reasons: Vec<String>,
}

/// Checks and compiles a filter given through the API, naming the bad part as `filter.<path>`.
pub(crate) fn parse_filter(value: &Value) -> Result<Filter, ApiError> {
    Filter::parse(value).map_err(|e| ApiError::invalid(Some("filter"), format!("filter: {e}")))
}

/// `POST /v1/filters/test`.
#[utoipa::path(post, path = "/v1/filters/test", tag = "subscriptions", request_body = FilterTestInput,
    responses((status = 200, description = "Whether the filter matches the event, and why", body = FilterTestResult), crate::error::Problems),
    security(("bearer" = [])))]
pub(crate) async fn test(_caller: Caller, body: Body) -> Result<Json<FilterTestResult>, ApiError> {
    let input: FilterTestInput = body.json()?;
    let filter = parse_filter(&input.filter)?;
    let Value::Object(given) = input.event else {
        return Err(ApiError::invalid(Some("event"), "event: must be an object like {\"type\": …, \"data\": …}"));
    };
    let mut document = Map::new();
    for field in EVENT_FIELDS {
        document.insert(field.into(), if field == "data" { Value::Null } else { Value::String(String::new()) });
    }
    for (key, value) in given {
        if !EVENT_FIELDS.contains(&key.as_str()) {
            return Err(ApiError::invalid(
                Some("event"),
                format!("event: unknown field {key:?}; an event has id, type, tenant, source, time and data"),
            ));
        }
        if key != "data" && !value.is_string() {
            return Err(ApiError::invalid(Some("event"), format!("event: {key} must be a string")));
        }
        document.insert(key, value);
    }
    let (matches, reasons) = filter.explain(&Value::Object(document));
    Ok(Json(FilterTestResult { matches, reasons }))
}
