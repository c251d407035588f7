//! `/v1/event-types`: the catalog of the types producers publish — what a subscriber browses to
//! pick types, and where a type's JSON Schema is kept. Anyone with a token reads it; only `admin`
//! changes it. Stored as protobuf in the `herald-event-types` bucket, keyed by name.

use async_nats::jetstream::kv;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use herald_core::catalog;
use herald_core::proto::EventType;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::{AppState, Body, Query};

/// An event type as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct EventTypeView {
    name: String,
    description: String,
    /// JSON Schema (draft 2020-12) the events' `data` must meet.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    schema: Option<Value>,
    /// An example `data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    example: Option<Value>,
    deprecated: bool,
    created_at: String,
    updated_at: String,
}

impl EventTypeView {
    fn of(t: &EventType) -> Self {
        Self {
            name: t.name.clone(),
            description: t.description.clone(),
            schema: serde_json::from_str(&t.schema).ok(),
            example: serde_json::from_str(&t.example).ok(),
            deprecated: t.deprecated,
            created_at: t.created_at.clone(),
            updated_at: t.updated_at.clone(),
        }
    }
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_admin() { Ok(()) } else { Err(ApiError::forbidden("changing the event-type catalog needs `admin`")) }
}

fn kv_error(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "event type {what} failed");
    ApiError::unavailable(format!("could not {what} the event type in NATS ({e}); retry later"))
}

/// Sets `schema` and `example` on `t` after checking them: the schema compiles (draft 2020-12,
/// self-contained), and the example, if any, meets it.
fn set_contract(
    t: &mut EventType,
    schema: Option<Option<&Value>>,
    example: Option<Option<&Value>>,
) -> Result<(), ApiError> {
    if let Some(schema) = schema {
        t.schema = match schema {
            None | Some(Value::Null) => String::new(),
            Some(s) => {
                catalog::compile(s).map_err(|e| ApiError::invalid(Some("schema"), format!("schema: {e}")))?;
                s.to_string()
            }
        };
    }
    if let Some(example) = example {
        t.example = match example {
            None | Some(Value::Null) => String::new(),
            Some(e) => e.to_string(),
        };
    }
    if !t.schema.is_empty() && !t.example.is_empty() {
        let schema: Value = serde_json::from_str(&t.schema).map_err(ApiError::internal)?;
        let validator = catalog::compile(&schema).map_err(ApiError::internal)?;
        let example: Value = serde_json::from_str(&t.example).map_err(ApiError::internal)?;
        if let Some(v) = catalog::violation(&validator, &example) {
            return Err(ApiError::invalid(
                Some("example"),
                format!("example: does not meet the schema at {:?}: {}", v.path, v.message),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventTypeInput {
    /// A dot-separated type without wildcards, e.g. `order.paid`.
    name: String,
    description: Option<String>,
    #[schema(value_type = Option<Object>)]
    schema: Option<Value>,
    #[schema(value_type = Option<Object>)]
    example: Option<Value>,
    deprecated: Option<bool>,
}

/// `POST /v1/event-types`.
#[utoipa::path(post, path = "/v1/event-types", tag = "event-types", request_body = EventTypeInput,
    responses((status = 201, description = "Created", body = EventTypeView),
        (status = 409, description = "It exists", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::Problems),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<(StatusCode, Json<EventTypeView>), ApiError> {
    require_admin(&caller)?;
    let input: EventTypeInput = body.json()?;
    herald_core::ids::EventType::parse(&input.name)
        .map_err(|e| ApiError::invalid(Some("name"), format!("name: {}", e.0)))?;
    let description = input.description.unwrap_or_default();
    if description.len() > 4096 {
        return Err(ApiError::invalid(Some("description"), "description: at most 4096 characters"));
    }
    let now = herald_core::now_rfc3339();
    let mut t = EventType {
        name: input.name,
        description,
        deprecated: input.deprecated.unwrap_or(false),
        created_at: now.clone(),
        updated_at: now,
        ..Default::default()
    };
    set_contract(&mut t, Some(input.schema.as_ref()), Some(input.example.as_ref()))?;
    let revision = match state.catalog_kv.create(&t.name, t.encode_to_vec().into()).await {
        Ok(r) => r,
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            return Err(ApiError::conflict(format!("event type {:?} exists; PATCH it", t.name)));
        }
        Err(e) => return Err(kv_error("store", e)),
    };
    state.catalog.upsert(revision, t.clone());
    tracing::info!(name = %t.name, schema = !t.schema.is_empty(), "event type created");
    Ok((StatusCode::CREATED, Json(EventTypeView::of(&t))))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
    /// Include deprecated types (default false).
    include_deprecated: Option<bool>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct EventTypePage {
    data: Vec<EventTypeView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// `GET /v1/event-types?limit=&after=&include_deprecated=`: by name, 100 a page.
#[utoipa::path(get, path = "/v1/event-types", tag = "event-types", params(ListQuery),
    responses((status = 200, description = "A page, by name", body = EventTypePage), crate::error::Problems), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<EventTypePage>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let types = state.catalog.list(q.after.as_deref(), limit + 1, q.include_deprecated.unwrap_or(false));
    let next = (types.len() > limit).then(|| types[limit - 1].name.clone());
    Ok(Json(EventTypePage { data: types.iter().take(limit).map(|t| EventTypeView::of(t)).collect(), next }))
}

async fn locate(state: &AppState, name: &str) -> Result<(kv::Entry, EventType), ApiError> {
    let missing = || ApiError::not_found(format!("there is no event type {name:?}"));
    herald_core::ids::EventType::parse(name).map_err(|_| missing())?;
    let entry = state.catalog_kv.entry(name).await.map_err(|e| kv_error("read", e))?.ok_or_else(missing)?;
    if entry.operation != kv::Operation::Put {
        return Err(missing());
    }
    let t = EventType::decode(entry.value.as_ref()).map_err(ApiError::internal)?;
    Ok((entry, t))
}

/// `GET /v1/event-types/{name}`.
#[utoipa::path(get, path = "/v1/event-types/{name}", tag = "event-types", params(("name" = String, Path, description = "Event type")),
    responses((status = 200, description = "The event type", body = EventTypeView), crate::error::Problems), security(("bearer" = [])))]
pub(crate) async fn get(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<EventTypeView>, ApiError> {
    let (_, t) = locate(&state, &name).await?;
    Ok(Json(EventTypeView::of(&t)))
}

/// `Some(value)` for a present field, `null` included; `None` when absent (with `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Value>>, D::Error> {
    Option::<Value>::deserialize(d).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventTypePatch {
    description: Option<String>,
    /// A new schema; `null` removes it. Applies to the next event of this type.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>, nullable)]
    schema: Option<Option<Value>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>, nullable)]
    example: Option<Option<Value>>,
    deprecated: Option<bool>,
}

/// `PATCH /v1/event-types/{name}`.
#[utoipa::path(patch, path = "/v1/event-types/{name}", tag = "event-types", params(("name" = String, Path, description = "Event type")), request_body = EventTypePatch,
    responses((status = 200, description = "Changed", body = EventTypeView),
        (status = 409, description = "Concurrent changes", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::Problems),
    security(("bearer" = [])))]
pub(crate) async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<EventTypeView>, ApiError> {
    require_admin(&caller)?;
    let input: EventTypePatch = body.json()?;
    for _ in 0..5 {
        let (entry, mut t) = locate(&state, &name).await?;
        if let Some(d) = &input.description {
            if d.len() > 4096 {
                return Err(ApiError::invalid(Some("description"), "description: at most 4096 characters"));
            }
            t.description = d.clone();
        }
        if let Some(d) = input.deprecated {
            t.deprecated = d;
        }
        set_contract(&mut t, input.schema.as_ref().map(Option::as_ref), input.example.as_ref().map(Option::as_ref))?;
        t.updated_at = herald_core::now_rfc3339();
        match state.catalog_kv.update(&name, t.encode_to_vec().into(), entry.revision).await {
            Ok(revision) => {
                state.catalog.upsert(revision, t.clone());
                tracing::info!(name = %t.name, "event type updated");
                return Ok(Json(EventTypeView::of(&t)));
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(kv_error("update", e)),
        }
    }
    Err(ApiError::conflict("the event type kept changing concurrently; retry"))
}

/// `DELETE /v1/event-types/{name}`: events of the type are no longer checked.
#[utoipa::path(delete, path = "/v1/event-types/{name}", tag = "event-types", params(("name" = String, Path, description = "Event type")),
    responses((status = 204, description = "Deleted"), crate::error::Problems), security(("bearer" = [])))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&caller)?;
    locate(&state, &name).await?;
    state.catalog_kv.delete(&name).await.map_err(|e| kv_error("delete", e))?;
    state.catalog.remove(&name);
    Ok(StatusCode::NO_CONTENT)
}
