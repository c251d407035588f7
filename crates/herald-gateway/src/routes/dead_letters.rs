//! `GET /v1/dead-letters` and `POST /v1/dead-letters/redrive`: what Herald gave up on, and
//! sending it again with a fresh retry schedule.

use async_nats::jetstream::message::PublishMessage;
use axum::Json;
use axum::extract::State;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use herald_core::{nats, proto};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::subscriptions::locate;
use crate::scan::{From, Read, Scanner, Stored, parse_time, scan};
use crate::{AppState, Query};

/// Most dead letters one request reads or redrives.
const SCAN_LIMIT: usize = 10_000;

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DeadLetterView {
    /// Stream sequence: the id to redrive it by, and the `after` cursor of the next page.
    id: u64,
    tenant: String,
    /// `_invalid` for events that failed validation.
    subscription_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type: Option<String>,
    reason: String,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_status: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    dead_at: String,
    /// Only for invalid events: the subject they were published to.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_subject: Option<String>,
}

fn subject_parts(subject: &str) -> (String, String) {
    let mut parts = subject.splitn(4, '.').skip(2);
    (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or_default().to_owned())
}

fn view(stored: &Stored) -> Option<(DeadLetterView, proto::DeadLetter)> {
    let letter = proto::DeadLetter::decode(stored.payload.as_ref()).ok()?;
    let (tenant, subscription_id) = subject_parts(&stored.subject);
    let d = letter.delivery.as_ref();
    let e = d.and_then(|d| d.event.as_ref());
    let v = DeadLetterView {
        id: stored.sequence,
        tenant,
        subscription_id,
        event_id: e.map(|e| e.id.clone()),
        event_type: e.map(|e| e.r#type.clone()),
        reason: letter.reason.clone(),
        attempts: d.map(|d| d.attempt).unwrap_or(0),
        last_status: d.map(|d| d.last_status).filter(|s| *s > 0),
        last_error: d.map(|d| d.last_error.clone()).filter(|s| !s.is_empty()),
        dead_at: letter.dead_at.clone(),
        raw_subject: (!letter.raw_subject.is_empty()).then(|| letter.raw_subject.clone()),
    };
    Some((v, letter))
}

/// Which dead letters a request means.
#[derive(Default)]
pub(crate) struct Filter {
    tenant: Option<String>,
    subscription: Option<String>,
    /// RFC 3339: dead-lettered at or after.
    since: Option<String>,
    /// RFC 3339: dead-lettered before.
    until: Option<String>,
}

/// The subject filters and time bounds a [`Filter`] means for this caller.
async fn resolve(
    state: &AppState,
    caller: &Caller,
    f: &Filter,
) -> Result<(Vec<String>, Option<OffsetDateTime>, Option<OffsetDateTime>), ApiError> {
    let since = parse_time("since", f.since.as_deref())?;
    let until = parse_time("until", f.until.as_deref())?;
    let filters = if let Some(id) = &f.subscription {
        let (_, _, sub) = locate(state, caller, id).await?;
        vec![nats::dlq_subject(&sub.tenant, &sub.id)]
    } else {
        let tenants = caller.readable_tenants(f.tenant.as_deref(), "dead letters")?;
        tenants.iter().map(|t| if t == "*" { "herald.dlq.>".to_owned() } else { format!("herald.dlq.{t}.*") }).collect()
    };
    Ok((filters, since, until))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    tenant: Option<String>,
    subscription: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = DeadLettersPage)]
pub(crate) struct Page {
    data: Vec<DeadLetterView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<u64>,
}

/// `GET /v1/dead-letters?tenant=&subscription=&since=&until=&limit=&after=`: oldest first.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "dead-letters", params(ListQuery),
    responses((status = 200, description = "Oldest first", body = Page), crate::error::Problems, crate::error::Limited), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page>, ApiError> {
    let f = Filter { tenant: q.tenant, subscription: q.subscription, since: q.since, until: q.until };
    let (filters, since, until) = resolve(&state, &caller, &f).await?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let from = From::page(q.after, since);
    let _scanning = state.limits.scans.enter(&caller.token_hash())?;
    let stored = scan(&state.js, nats::DLQ_STREAM, filters, from, until, limit + 1).await?;
    let more = stored.len() > limit;
    let data: Vec<DeadLetterView> = stored
        .iter()
        .take(limit)
        .filter(|s| since.is_none_or(|t| s.time >= t))
        .filter_map(|s| view(s).map(|(v, _)| v))
        .collect();
    let next = if more { stored.get(limit - 1).map(|s| s.sequence) } else { None };
    Ok(Json(Page { data, next }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedriveInput {
    /// Dead-letter ids (from the list); or leave out and filter instead.
    ids: Option<Vec<u64>>,
    tenant: Option<String>,
    subscription: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

#[derive(Serialize, Default, utoipa::ToSchema)]
pub(crate) struct RedriveResult {
    /// Handed to the dispatcher again, with a fresh schedule.
    redriven: usize,
    /// Not redriven: invalid events, or subscriptions that no longer exist (they stay listed).
    skipped: usize,
}

/// `POST /v1/dead-letters/redrive`: `{ids}` or `{subscription?, tenant?, since?, until?}`.
/// Each redriven delivery starts again at attempt 1 and leaves the dead-letter list.
#[utoipa::path(post, path = "/v1/dead-letters/redrive", tag = "dead-letters", request_body = RedriveInput,
    responses((status = 200, description = "Handed to the dispatcher again", body = RedriveResult), crate::error::Problems, crate::error::Limited), security(("bearer" = [])))]
pub(crate) async fn redrive(
    State(state): State<AppState>,
    caller: Caller,
    body: crate::Body,
) -> Result<Json<RedriveResult>, ApiError> {
    let input: RedriveInput = body.json()?;
    let f = Filter { tenant: input.tenant, subscription: input.subscription, since: input.since, until: input.until };
    let has_filter = f.tenant.is_some() || f.subscription.is_some() || f.since.is_some() || f.until.is_some();
    if input.ids.is_none() && !has_filter {
        return Err(ApiError::invalid(None, "give `ids`, or at least one of subscription, tenant, since, until"));
    }
    let (filters, since, until) = resolve(&state, &caller, &f).await?;
    let from = since.map_or(From::Beginning, From::Time);
    let _scanning = state.limits.scans.enter(&caller.token_hash())?;
    // One letter at a time: a redrive of 100,000 holds one of them in memory.
    let mut scanner = Scanner::open(&state.js, nats::DLQ_STREAM, filters, from, until, SCAN_LIMIT, Read::Whole).await?;
    let dlq = state.js.get_stream(nats::DLQ_STREAM).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    let mut result = RedriveResult::default();
    while let Some(s) = scanner.next().await? {
        if input.ids.as_ref().is_some_and(|ids| !ids.contains(&s.sequence)) {
            continue;
        }
        let Some((_, letter)) = view(&s) else {
            result.skipped += 1;
            continue;
        };
        let Some(mut delivery) = letter.delivery else {
            result.skipped += 1;
            continue;
        };
        let tenant = delivery.event.as_ref().map(|e| e.tenant.clone()).unwrap_or_default();
        let Some(sub) = state.registry.get(&tenant, &delivery.subscription_id) else {
            result.skipped += 1;
            continue;
        };
        let event_id = delivery.event.as_ref().map(|e| e.id.clone()).unwrap_or_default();
        delivery.attempt = 1;
        delivery.last_status = 0;
        delivery.last_error.clear();
        delivery.first_attempt_at.clear();
        let publish = PublishMessage::build()
            .payload(delivery.encode_to_vec().into())
            .message_id(format!("{event_id}:{}:redrive:{}", delivery.subscription_id, s.sequence))
            .header(nats::RESEND_HEADER, "redrive");
        let ack = state
            .js
            .send_publish(nats::route_subject(state.partitions, &sub), publish)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        ack.await.map_err(|e| ApiError::unavailable(e.to_string()))?;
        // Stored again as a delivery: now it may leave the dead-letter list.
        if let Err(e) = dlq.delete_message(s.sequence).await {
            tracing::warn!(seq = s.sequence, error = %e, "redriven dead letter could not be removed from the list");
        }
        result.redriven += 1;
    }
    tracing::info!(redriven = result.redriven, skipped = result.skipped, "dead letters redriven");
    Ok(Json(result))
}
