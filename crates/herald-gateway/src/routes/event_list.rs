//! `GET /v1/events`: the events stored, by tenant, type and time, oldest first and paged — what
//! a console lists and finds events by. Read from `HERALD_EVENTS` (kept `HERALD_EVENTS_MAX_AGE`).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use herald_core::event::{StoredAt, decode_stored};
use herald_core::pattern::TypePattern;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::scan::{From, Read, Scanner, Stored, parse_time, scan_each};
use crate::{AppState, Query};

/// Most stored events a search by id reads.
const ID_SEARCH_LIMIT: usize = 100_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// One tenant (a tenant token's own by default; all of them for `admin`).
    tenant: Option<String>,
    /// A type or type pattern (`order.paid`, `order.*`, `order.>`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    event_type: Option<String>,
    /// RFC 3339: stored at or after.
    since: Option<String>,
    /// RFC 3339: stored before.
    until: Option<String>,
    /// One event by its id (searches up to 100,000 stored events from `since`).
    id: Option<String>,
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct EventView {
    /// Stream sequence: the `after` cursor of the next page.
    seq: u64,
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    tenant: String,
    source: String,
    time: String,
    /// When Herald stored it (RFC 3339): no attempt of it is older (the `since` of its attempts).
    stored_at: String,
    /// The event's data, as published.
    #[schema(value_type = Object)]
    data: Box<serde_json::value::RawValue>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = EventsPage)]
pub(crate) struct Page {
    data: Vec<EventView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<u64>,
}

/// `GET /v1/events?tenant=&type=&since=&until=&limit=&after=`: oldest first, 50 a page.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(ListQuery),
    responses((status = 200, description = "Oldest first", body = Page), crate::error::Problems, crate::error::Limited), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page>, ApiError> {
    let since = parse_time("since", q.since.as_deref())?;
    let until = parse_time("until", q.until.as_deref())?;
    let pattern = match &q.event_type {
        Some(t) => TypePattern::parse(t)
            .map_err(|e| ApiError::invalid(Some("type"), format!("type: {}", e.0)))?
            .as_str()
            .to_owned(),
        None => ">".to_owned(),
    };
    let tenants = caller.readable_tenants(q.tenant.as_deref(), "events")?;
    // Each tenant's events are in one partition; those of several tenants may be in several,
    // whose sequences are their own: a page of several partitions has no `next` (page on with
    // `since`, or list one tenant at a time).
    let slices: Vec<(String, Vec<String>)> = state
        .event_partitions(&tenants)
        .into_iter()
        .map(|(p, tenants)| {
            let prefix = p.events_prefix();
            (p.events_stream(), tenants.iter().map(|t| format!("{prefix}{t}.{pattern}")).collect())
        })
        .collect();
    let several = slices.len() > 1;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let from = From::page(q.after, since);
    let _scanning = state.limits.scans.enter(&caller.token_hash())?;
    if let Some(id) = &q.id {
        herald_core::ids::EventId::parse(id).map_err(|e| ApiError::invalid(Some("id"), format!("id: {}", e.0)))?;
        let found = find_by_id(&state, slices, from, until, id).await?;
        return Ok(Json(Page { data: found.into_iter().collect(), next: None }));
    }
    let stored = scan_each(&state.js, slices, from, until, limit + 1).await?;
    let more = stored.len() > limit && !several;
    let data: Vec<EventView> =
        stored.iter().take(limit).filter(|s| since.is_none_or(|t| s.time >= t)).filter_map(view).collect();
    let next = if more { stored.get(limit - 1).map(|s| s.sequence) } else { None };
    Ok(Json(Page { data, next }))
}

/// The event with `id`: the slices' headers are read (an id is the `Nats-Msg-Id` the gateway
/// stored it with), and only the match is read whole — or an event stored without one, to read
/// its id from its body. At most [`ID_SEARCH_LIMIT`] events of each slice, for at most
/// [`crate::scan::SCAN_TIME`].
async fn find_by_id(
    state: &AppState,
    slices: Vec<(String, Vec<String>)>,
    from: From,
    until: Option<time::OffsetDateTime>,
    id: &str,
) -> Result<Option<EventView>, ApiError> {
    for (stream, filters) in slices {
        let mut scanner =
            Scanner::open(&state.js, &stream, filters, from, until, ID_SEARCH_LIMIT, Read::HeadersOnly).await?;
        while let Some(head) = scanner.next().await? {
            if head.header("Nats-Msg-Id").is_some_and(|m| m != id) {
                continue;
            }
            let whole = scanner.whole(head.sequence).await?;
            if let Some(found) = view(&whole).filter(|e| e.id == id) {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

fn view(s: &Stored) -> Option<EventView> {
    let at = StoredAt { sequence: s.sequence, time: s.time };
    let event = decode_stored(&s.subject, s.header("Content-Type"), s.header("Nats-Msg-Id"), &s.payload, at).ok()?;
    let data = serde_json::value::RawValue::from_string(String::from_utf8(event.data).ok()?).ok()?;
    Some(EventView {
        seq: s.sequence,
        id: event.id,
        event_type: event.r#type,
        tenant: event.tenant,
        source: event.source,
        time: event.time,
        stored_at: herald_core::rfc3339(s.time),
        data,
    })
}
