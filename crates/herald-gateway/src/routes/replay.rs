//! `POST /v1/subscriptions/{id}/replay`: redeliver retained events of a time range to one
//! subscription (backfill after an outage, or for a new subscriber).

use std::future::IntoFuture;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use herald_core::event::{StoredAt, decode_stored};
use herald_core::nats;
use herald_core::pattern::TypePattern;
use herald_core::subscription::wants;
use herald_core::telemetry::{self, Carrier};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::subscriptions::locate;
use crate::scan::{From, Read, Scanner, parse_time};
use crate::{AppState, Body};

/// Most events one replay request reads.
const SCAN_LIMIT: usize = 100_000;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayInput {
    /// RFC 3339: events stored at or after.
    since: String,
    /// RFC 3339: events stored before (default: now).
    until: Option<String>,
    /// Narrow further, within the subscription's own patterns.
    event_types: Option<Vec<String>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ReplayResult {
    /// Events of the range and tenant that were read.
    scanned: usize,
    /// Handed to the dispatcher for this subscription.
    replayed: usize,
    /// Matching events whose delivery to this subscription is still under way (a retry is
    /// scheduled, or they were fanned out within the duplicate window): not doubled.
    in_flight: usize,
}

/// `POST /v1/subscriptions/{id}/replay` `{since, until?, event_types?}`.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/replay", tag = "subscriptions", params(("id" = String, Path, description = "Subscription id")), request_body = ReplayInput,
    responses((status = 200, description = "Replayed", body = ReplayResult), crate::error::Problems, crate::error::Limited), security(("bearer" = [])))]
pub(crate) async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<ReplayResult>, ApiError> {
    let input: ReplayInput = body.json()?;
    let (_, _, sub) = locate(&state, &caller, &id).await?;
    let since = parse_time("since", Some(&input.since))?.expect("given");
    let until = parse_time("until", input.until.as_deref())?;
    let narrow: Vec<TypePattern> = input
        .event_types
        .unwrap_or_default()
        .iter()
        .map(|p| TypePattern::parse(p).map_err(|e| ApiError::invalid(Some("event_types"), e.0)))
        .collect::<Result<_, _>>()?;
    // Replay ignores `enabled`: it is an explicit request for this subscription.
    let mut selector = sub.clone();
    selector.enabled = true;
    // The payload filter holds for replays too: what it leaves out was never a delivery.
    let payload_filter = herald_core::filter::Filter::parse_stored(&sub.filter);

    let events = state.partitions.of_tenant(&sub.tenant);
    let filter = format!("{}{}.>", events.events_prefix(), sub.tenant);
    let _scanning = state.limits.scans.enter(&caller.token_hash())?;
    // Read one event at a time and stored as it goes: what the gateway holds is one event and
    // the PubAcks in flight, however many the range has.
    let mut scanner = Scanner::open(
        &state.js,
        &events.events_stream(),
        vec![filter],
        From::Time(since),
        until,
        SCAN_LIMIT,
        Read::Whole,
    )
    .await?;
    let partition = state.partitions.of_subscription(&sub.id);
    let deliveries =
        state.js.get_stream(partition.deliveries_stream()).await.map_err(|e| ApiError::unavailable(e.to_string()))?;

    let mut pending = Vec::new();
    let (mut in_flight, mut replayed, mut scanned) = (0, 0, 0);
    while let Some(s) = scanner.next().await? {
        scanned += 1;
        if pending.len() >= 1_000 {
            settle(std::mem::take(&mut pending), &mut replayed, &mut in_flight).await?;
        }
        let at = StoredAt { sequence: s.sequence, time: s.time };
        let Ok(event) = decode_stored(&s.subject, s.header("Content-Type"), s.header("Nats-Msg-Id"), &s.payload, at)
        else {
            continue; // invalid events were dead-lettered, never delivered
        };
        if !wants(&selector, &event.r#type) || !(narrow.is_empty() || narrow.iter().any(|p| p.matches(&event.r#type))) {
            continue;
        }
        if let Some(f) = &payload_filter
            && !f.matches(&herald_core::filter::event_document(&event))
        {
            continue;
        }
        let schedule = partition.retry_schedule_subject(&sub.tenant, &sub.id, &event.id);
        if deliveries.get_last_raw_message_by_subject(&schedule).await.is_ok() {
            in_flight += 1;
            continue;
        }
        let trace = telemetry::onward(&tracing::Span::none(), &Carrier::read(|k| s.header(k)));
        let (subject, publish) = nats::first_delivery(state.partitions, &event, s.sequence, &sub, &trace);
        let publish = publish.header(nats::RESEND_HEADER, "replay");
        let ack = state.js.send_publish(subject, publish).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
        pending.push(ack);
    }
    settle(pending, &mut replayed, &mut in_flight).await?;
    tracing::info!(subscription = %sub.id, scanned, replayed, in_flight, "replay");
    Ok(Json(ReplayResult { scanned, replayed, in_flight }))
}

/// Waits for the PubAcks of replayed deliveries: each one new is replayed, each duplicate was
/// under way already.
async fn settle(
    pending: Vec<async_nats::jetstream::context::PublishAckFuture>,
    replayed: &mut usize,
    in_flight: &mut usize,
) -> Result<(), ApiError> {
    for ack in futures::future::join_all(pending.into_iter().map(IntoFuture::into_future)).await {
        let ack =
            ack.map_err(|e| ApiError::unavailable(format!("replay partly stored: {e}; repeat it (no doubles)")))?;
        if ack.duplicate {
            *in_flight += 1;
        } else {
            *replayed += 1;
        }
    }
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResendInput {
    /// The event's `seq`, as `GET /v1/events` lists it.
    seq: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Resent {
    event_id: String,
    subscription_id: String,
}

/// `POST /v1/subscriptions/{id}/resend {seq}`: sends one stored event to this subscription again,
/// as a new delivery with a fresh retry schedule (an ordered subscription sends it even if it was
/// delivered before: an operator asked). The event must be of the subscription's tenant; its
/// type need not match the subscription's patterns or filter — the request names it.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/resend", tag = "subscriptions", params(("id" = String, Path, description = "Subscription id")), request_body = ResendInput,
    responses((status = 202, description = "Queued for delivery", body = Resent), crate::error::Problems), security(("bearer" = [])))]
pub(crate) async fn resend(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<(axum::http::StatusCode, Json<Resent>), ApiError> {
    caller.limit_fields(&body.0, &["seq"])?;
    let input: ResendInput = body.json()?;
    let (_, _, sub) = locate(&state, &caller, &id).await?;
    let missing = || ApiError::not_found(format!("there is no stored event {} of tenant {:?}", input.seq, sub.tenant));
    // `seq` is a sequence of the tenant's events stream.
    let events = state.partitions.of_tenant(&sub.tenant).events_stream();
    let stream = state.js.get_stream(events).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    let stored = stream.get_raw_message(input.seq).await.map_err(|_| missing())?;
    let header = |name: &str| stored.headers.get(name).map(|v| v.as_str());
    let at = StoredAt { sequence: input.seq, time: stored.time };
    let event =
        decode_stored(stored.subject.as_str(), header("Content-Type"), header("Nats-Msg-Id"), &stored.payload, at)
            .map_err(|_| missing())?;
    if event.tenant != sub.tenant {
        return Err(missing());
    }
    let trace = telemetry::onward(&tracing::Span::none(), &Carrier::read(|k| header(k)));
    let (subject, publish) = nats::first_delivery(state.partitions, &event, input.seq, &sub, &trace);
    // A new message id: the delivery's own would be deduplicated against the first.
    let publish = publish.header(nats::RESEND_HEADER, "resend").message_id(format!(
        "resend-{}-{}-{}",
        sub.id,
        event.id,
        herald_core::now_rfc3339()
    ));
    let ack = state.js.send_publish(subject, publish).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    ack.into_future().await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    tracing::info!(subscription = %sub.id, event = %event.id, "event resent");
    Ok((axum::http::StatusCode::ACCEPTED, Json(Resent { event_id: event.id, subscription_id: sub.id })))
}
