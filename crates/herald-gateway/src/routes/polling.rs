//! `GET /v1/subscriptions/{id}/poll`: a polling subscription's events, oldest first, for a
//! consumer that cannot take webhooks. Fan-out stores them on the subscription's subject of
//! `HERALD_POLL`; the page starts after what the consumer acknowledged — the cursor it passes,
//! or the furthest cursor any of its pollers passed before, kept in `herald-poll-cursors` — so
//! what was read and not acknowledged is read again (at least once) and what was acknowledged
//! never is.

use async_nats::jetstream::kv;
use axum::Json;
use axum::extract::{Path, State};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use herald_core::{polling, proto};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::scan::{From, scan};
use crate::{AppState, Query};

/// Events a page holds by default, and at most.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PollQuery {
    /// The `cursor` of the previous page: acknowledges every event up to it. Absent: start after
    /// what was acknowledged last.
    cursor: Option<String>,
    /// Events at most (default 50, at most 500).
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PollPage {
    /// The events, oldest first, each as a webhook's body (`id`, `type`, `timestamp`, `tenant`,
    /// `data`).
    #[schema(value_type = Vec<Object>)]
    data: Vec<Box<serde_json::value::RawValue>>,
    /// Pass it to the next poll: it acknowledges these events and reads on after them.
    cursor: String,
    /// True when this page reached the end of what is stored now.
    done: bool,
}

/// `GET /v1/subscriptions/{id}/poll`.
#[utoipa::path(get, path = "/v1/subscriptions/{id}/poll", tag = "subscriptions",
    params(("id" = String, Path, description = "Subscription id (sub_…)"), PollQuery),
    responses((status = 200, description = "The next events", body = PollPage),
        (status = 409, description = "Not a polling subscription", body = crate::error::Problem, content_type = "application/problem+json"),
        crate::error::Problems), security(("bearer" = [])))]
pub(crate) async fn poll(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<PollQuery>,
) -> Result<Json<PollPage>, ApiError> {
    // A tenant's token (or admin), or a `poll:` token of this subscription alone.
    let tenant = if caller.may_poll(&id) { None } else { caller.own_tenant() };
    let visible = |sub: &proto::Subscription| caller.may_manage(&sub.tenant) || caller.may_poll(&sub.id);
    let (_, _, sub) = super::subscriptions::locate_where(&state, tenant, &id, visible).await?;
    if !polling::is_polling(&sub) {
        return Err(ApiError::conflict(format!(
            "{id} is not a polling subscription; its deliveries are pushed (give it destination {{\"type\": \"polling\"}} to poll it)"
        )));
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(Some("limit"), format!("limit: must be 1 to {MAX_LIMIT}")));
    }
    let given = match &query.cursor {
        None => None,
        Some(text) => Some(polling::parse_cursor(text).ok_or_else(|| {
            ApiError::invalid(Some("cursor"), "cursor: pass the `cursor` a poll of this subscription returned")
        })?),
    };
    let floor = acknowledge(&state, &sub.id, given).await?;
    let subject = polling::subject(&sub.tenant, &sub.id);
    let stored = scan(&state.js, polling::STREAM, vec![subject], From::Sequence(floor + 1), None, limit).await?;
    let mut data = Vec::with_capacity(stored.len());
    for message in &stored {
        let Some(event) = proto::Delivery::decode(message.payload.as_ref()).ok().and_then(|d| d.event) else {
            continue;
        };
        let Ok(body) = herald_core::event::webhook_body(&event) else { continue };
        let Ok(text) = String::from_utf8(body) else { continue };
        if let Ok(raw) = serde_json::value::RawValue::from_string(text) {
            data.push(raw);
        }
    }
    let last = stored.last().map_or(floor, |m| m.sequence);
    Ok(Json(PollPage { done: stored.len() < limit, data, cursor: polling::cursor(last) }))
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "poll cursor not read or stored");
    ApiError::unavailable(format!("could not read or store the poll cursor in NATS ({e}); retry later"))
}

/// Moves the subscription's acknowledged position up to `given` (never back) and returns it.
async fn acknowledge(state: &AppState, subscription_id: &str, given: Option<u64>) -> Result<u64, ApiError> {
    let cursors = &state.poll_cursors;
    for _ in 0..10 {
        let entry = cursors.entry(subscription_id).await.map_err(unavailable)?;
        let (stored, revision) = match &entry {
            Some(e) if e.operation == kv::Operation::Put => {
                (std::str::from_utf8(&e.value).ok().and_then(|v| v.parse().ok()).unwrap_or(0), e.revision)
            }
            Some(e) => (0, e.revision),
            None => (0, 0),
        };
        let Some(given) = given.filter(|g| *g > stored) else { return Ok(stored) };
        let value = given.to_string().into();
        let written = match revision {
            0 => cursors.create(subscription_id, value).await.map(|_| ()).map_err(|e| e.to_string()),
            r => cursors.update(subscription_id, value, r).await.map(|_| ()).map_err(|e| e.to_string()),
        };
        match written {
            Ok(()) => return Ok(given),
            // Another poller moved it meanwhile: read again.
            Err(_) => continue,
        }
    }
    Err(ApiError::unavailable("the poll cursor kept changing under this request; retry"))
}

/// Refuses what a polling subscription cannot have: it is never sent, so nothing shapes,
/// authenticates, paces or limits a request.
pub(crate) fn check_subscription(sub: &proto::Subscription) -> Result<(), ApiError> {
    if !polling::is_polling(sub) {
        return Ok(());
    }
    let refused = [
        ("transformation", !sub.transformation.is_empty()),
        ("rate_limit", sub.rate_limit > 0),
        ("max_in_flight", sub.max_in_flight > 0),
        ("client_certificate", sub.client_certificate.is_some()),
        ("headers", !sub.headers.is_empty()),
    ];
    match refused.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(ApiError::invalid(
            Some(field),
            format!("{field}: does not apply to a polling subscription (nothing is sent to it)"),
        )),
        None => Ok(()),
    }
}

/// Forgets a deleted polling subscription's cursor and stored deliveries.
pub(crate) async fn forget(state: &AppState, sub: &proto::Subscription) {
    if !polling::is_polling(sub) {
        return;
    }
    if let Err(e) = state.poll_cursors.purge(&sub.id).await {
        tracing::warn!(subscription = %sub.id, error = %e, "the poll cursor of a deleted subscription was not removed");
    }
    match state.js.get_stream(polling::STREAM).await {
        Ok(stream) => {
            if let Err(e) = stream.purge().filter(polling::subject(&sub.tenant, &sub.id)).await {
                tracing::warn!(subscription = %sub.id, error = %e, "a deleted polling subscription's events were not purged; they age out");
            }
        }
        Err(e) => tracing::warn!(error = %e, "HERALD_POLL not found"),
    }
}
