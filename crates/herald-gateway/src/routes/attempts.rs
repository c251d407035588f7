//! `GET /v1/events/{id}/attempts` and `GET /v1/subscriptions/{id}/attempts`: the attempt
//! records on `HERALD_ATTEMPTS`, newest first.

use axum::Json;
use axum::extract::{Path, State};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use herald_core::ids::EventId;
use herald_core::{nats, proto};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::subscriptions::locate;
use crate::scan::{From, Stored, parse_time, scan, scan_each};
use crate::{AppState, Query};

/// Most records a query reads from the stream; older ones are beyond the answer.
const SCAN_LIMIT: usize = 100_000;

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AttemptView {
    /// Stream sequence: a stable id, and the `before` cursor of the next page.
    seq: u64,
    event_id: String,
    subscription_id: String,
    tenant: String,
    attempt: u32,
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u32>,
    outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_class: Option<String>,
    at: String,
    duration_ms: u64,
    response_body: String,
}

impl AttemptView {
    fn of(stored: &Stored) -> Option<Self> {
        let a = proto::Attempt::decode(stored.payload.as_ref()).ok()?;
        Some(Self {
            seq: stored.sequence,
            event_id: a.event_id,
            subscription_id: a.subscription_id,
            tenant: a.tenant,
            attempt: a.attempt,
            url: a.url,
            status: (a.status > 0).then_some(a.status),
            outcome: a.outcome,
            error: (!a.error.is_empty()).then_some(a.error),
            error_class: (!a.error_class.is_empty()).then_some(a.error_class),
            at: a.at,
            duration_ms: a.duration_ms,
            response_body: a.response_body,
        })
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    limit: Option<usize>,
    /// The `next` of the previous page: only records older than it.
    before: Option<u64>,
}

/// Query of one event's attempts.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventAttemptsQuery {
    limit: Option<usize>,
    /// The `next` of the previous page: only records older than it.
    before: Option<u64>,
    /// RFC 3339: no attempt of the event was made before this time (e.g. the event's `time`, or
    /// when it was published), so records older than it are not read. Not needed for `evt_`
    /// ids, which carry their time.
    since: Option<String>,
    /// The event's tenant: only its records are read (every tenant the caller may see, if
    /// absent).
    tenant: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = AttemptsPage)]
pub(crate) struct Page {
    data: Vec<AttemptView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<u64>,
}

fn newest_first(mut stored: Vec<Stored>, limit: Option<usize>, before: Option<u64>) -> Page {
    let limit = limit.unwrap_or(50).clamp(1, 500);
    stored.retain(|s| before.is_none_or(|b| s.sequence < b));
    stored.reverse();
    let more = stored.len() > limit;
    let data: Vec<AttemptView> = stored.iter().take(limit).filter_map(AttemptView::of).collect();
    let next = if more { data.last().map(|a| a.seq) } else { None };
    Page { data, next }
}

/// How long before an `evt_` id's time its attempts are looked for (clocks of the publishers).
const MINTED_LEEWAY: time::Duration = time::Duration::minutes(5);

/// `GET /v1/events/{id}/attempts`: every attempt of one event, across its subscriptions that
/// the caller may see. The records are found in the event's partition of every subscription
/// (`herald.attempts.{tenant}.*.{p}`), read from when the event can first have been attempted.
#[utoipa::path(get, path = "/v1/events/{id}/attempts", tag = "events", params(("id" = String, Path, description = "Event id"), EventAttemptsQuery),
    responses((status = 200, description = "Newest first", body = Page), crate::error::Problems, crate::error::Limited), security(("bearer" = [])))]
pub(crate) async fn for_event(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<EventAttemptsQuery>,
) -> Result<Json<Page>, ApiError> {
    EventId::parse(&id).map_err(|e| ApiError::invalid(Some("id"), e.0))?;
    let since = parse_time("since", q.since.as_deref())?;
    let tenants = caller.readable_tenants(q.tenant.as_deref(), "attempts")?;
    let partition = nats::attempt_partition(&id).to_string();
    let legacy = state.legacy_records_until.is_some_and(|until| OffsetDateTime::now_utc() < until) && id != partition;
    // The event's subscriptions may be in any partition.
    let mut slices = Vec::new();
    for p in &state.in_use {
        let prefix = p.prefix("attempts");
        let mut filters = Vec::new();
        for tenant in &tenants {
            filters.push(format!("{prefix}{tenant}.*.{partition}"));
            // Records of the per-event layout of before are in partition 0 alone.
            if legacy && *p == nats::Partition::ZERO {
                filters.push(format!("{prefix}{tenant}.*.{id}"));
            }
        }
        slices.push((p.attempts_stream(), filters));
    }
    let from = match since.or_else(|| EventId::minted_at(&id).map(|t| t - MINTED_LEEWAY)) {
        Some(t) => From::Time(t),
        None => From::Beginning,
    };
    let _scanning = state.limits.scans.enter(&caller.token_hash())?;
    let mut stored = scan_each(&state.js, slices, from, None, SCAN_LIMIT).await?;
    stored.retain(|s| proto::Attempt::decode(s.payload.as_ref()).is_ok_and(|a| a.event_id == id));
    Ok(Json(newest_first(stored, q.limit, q.before)))
}

/// `GET /v1/subscriptions/{id}/attempts`: its attempts, newest first, paged with `before`.
#[utoipa::path(get, path = "/v1/subscriptions/{id}/attempts", tag = "subscriptions", params(("id" = String, Path, description = "Subscription id"), PageQuery),
    responses((status = 200, description = "Newest first", body = Page), crate::error::Problems, crate::error::Limited), security(("bearer" = [])))]
pub(crate) async fn for_subscription(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page>, ApiError> {
    let (_, _, sub) = locate(&state, &caller, &id).await?;
    let partition = state.partitions.of_subscription(&sub.id);
    let (stream, filter) = (partition.attempts_stream(), partition.subscription_attempts_filter(&sub.tenant, &sub.id));
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    // A page is the newest records (before the cursor): looked for in the last hour, then the
    // last day, before the whole retention is read.
    let now = OffsetDateTime::now_utc();
    let _scanning = state.limits.scans.enter(&caller.token_hash())?;
    for window in RECENT_WINDOWS.map(Some).into_iter().chain([None]) {
        let from = window.map_or(From::Beginning, |w| From::Time(now - w));
        let mut stored = scan(&state.js, &stream, vec![filter.clone()], from, None, SCAN_LIMIT).await?;
        stored.retain(|s| q.before.is_none_or(|b| s.sequence < b));
        if window.is_none() || stored.len() > limit {
            return Ok(Json(newest_first(stored, Some(limit), None)));
        }
    }
    unreachable!("the last window is the whole retention")
}

/// How far back a subscription's newest attempts are looked for first.
const RECENT_WINDOWS: [time::Duration; 2] = [time::Duration::hours(1), time::Duration::days(1)];
