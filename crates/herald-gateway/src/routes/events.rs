//! `POST /v1/events` and `POST /v1/events/batch`: validate, publish to `HERALD_EVENTS` with the
//! event id as `Nats-Msg-Id`, answer only after JetStream acknowledged.

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use herald_core::event::{EventInput, Text};
use herald_core::telemetry::{self, Carrier};
use herald_core::{metrics, nats, proto};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::{AppState, Body};

/// What a client learns of one accepted event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted {
    pub(crate) id: String,
    pub(crate) seq: u64,
    /// True if an event with this id was already accepted within the duplicate window: it was
    /// not stored or delivered again.
    pub(crate) duplicate: bool,
}

/// Parses and validates one event for `caller`: a tenant token's events default to its tenant,
/// and an event of a tenant the token does not cover is refused, as is any event of the
/// operator tenant whatever the token (a forged `circuit.closed` would hide an open circuit).
fn parse_event(state: &AppState, caller: &Caller, raw: &[u8]) -> Result<proto::Event, ApiError> {
    let mut input: EventInput = serde_json::from_slice(raw).map_err(|e| ApiError::malformed_json(e.to_string()))?;
    if input.tenant.is_none() {
        input.tenant = caller.own_tenant().map(Text::from);
    }
    let event =
        input.validate().map_err(|e| ApiError::invalid(Some(e.field), format!("{}: {}", e.field, e.message)))?;
    caller.require_publish_for(&event.tenant)?;
    let operator = &state.config.operator_tenant;
    if !operator.is_empty() && event.tenant == *operator {
        return Err(ApiError::forbidden(format!(
            "tenant {operator:?} is the operator tenant (HERALD_OPERATOR_TENANT): only Herald's dispatchers publish its operational events"
        )));
    }
    check_schema(state, &event)?;
    Ok(event)
}

/// Checks the event's `data` against its type's schema in the catalog, if it has one, as
/// `HERALD_SCHEMA_VALIDATION` says: refused (400 naming the failing place), warned, or not checked.
pub(crate) fn check_schema(state: &AppState, event: &proto::Event) -> Result<(), ApiError> {
    use herald_core::catalog::Mode;
    let mode = state.config.common.schema_validation;
    if mode == Mode::Off {
        return Ok(());
    }
    let Err(violation) = state.catalog.check(&event.r#type, &event.data) else { return Ok(()) };
    let detail = format!(
        "data{}: {} (the schema of {} in the event-type catalog)",
        violation.path, violation.message, event.r#type
    );
    if mode == Mode::Warn {
        herald_core::metrics::SCHEMA_VIOLATIONS.inc(&["warned"]);
        tracing::warn!(id = %event.id, r#type = %event.r#type, "{detail}; accepted (HERALD_SCHEMA_VALIDATION=warn)");
        return Ok(());
    }
    herald_core::metrics::SCHEMA_VIOLATIONS.inc(&["refused"]);
    Err(ApiError::invalid(Some("data"), detail))
}

pub(crate) fn ensure_connected(state: &AppState) -> Result<(), ApiError> {
    match state.client.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        _ => Err(ApiError::unavailable("the gateway is not connected to NATS; retry later")),
    }
}

fn publish_error(kind: PublishErrorKind, detail: impl std::fmt::Display) -> ApiError {
    match kind {
        PublishErrorKind::MaxPayloadExceeded => ApiError::too_large(format!("NATS refused the message size: {detail}")),
        PublishErrorKind::StreamNotFound => {
            ApiError::unavailable("an events stream is missing; a gateway restart recreates it")
        }
        _ => {
            tracing::warn!(error = %detail, "publish to JetStream failed");
            ApiError::unavailable(format!(
                "JetStream did not acknowledge the event ({detail}); it may not be stored, retry with the same id"
            ))
        }
    }
}

/// Sends one event and returns the future of its PubAck, so that a caller can have many in
/// flight at once. `trace`, when there is one, goes along for fan-out to continue from.
pub(crate) async fn send(
    state: &AppState,
    event: &proto::Event,
    trace: Option<&Carrier>,
) -> Result<PublishAckFuture, ApiError> {
    let subject = state.partitions.of_tenant(&event.tenant).event_subject(&event.tenant, &event.r#type);
    let mut publish = PublishMessage::build().payload(event.encode_to_vec().into()).message_id(&event.id);
    if state.config.common.schema_validation != herald_core::catalog::Mode::Off
        && state.catalog.has_schema(&event.r#type)
    {
        // Checked here against the schema in force now: fan-out does not check it again (a
        // schema changed meanwhile must not turn an accepted event into a dead letter).
        publish = publish.header(nats::SCHEMA_CHECKED_HEADER, "1");
    }
    if let Some(trace) = trace {
        publish = trace.add_to(publish);
    }
    state.js.send_publish(subject, publish).await.map_err(|e| publish_error(e.kind(), &e))
}

/// Whether events carry trace context on to fan-out: when the caller sent some, or when this
/// gateway exports its own spans. Otherwise there is no trace to continue, and the dispatcher
/// starts one (a header less per event for JetStream to store and parse).
fn propagates(incoming: &Carrier) -> bool {
    incoming.traceparent.is_some() || telemetry::exporting()
}

pub(crate) async fn confirm(
    event: &proto::Event,
    ack: PublishAckFuture,
    sent_at: std::time::Instant,
) -> Result<Accepted, ApiError> {
    let ack = ack.await.map_err(|e| publish_error(e.kind(), &e))?;
    metrics::PUBLISH_SECONDS.observe(&[], sent_at.elapsed());
    Ok(Accepted { id: event.id.clone(), seq: ack.sequence, duplicate: ack.duplicate })
}

/// Counts one event's outcome.
fn count(result: &Result<Accepted, ApiError>) {
    metrics::EVENTS_INGESTED.inc(&[outcome(result)]);
}

/// One event's outcome, as `herald_events_ingested_total` labels it.
fn outcome(result: &Result<Accepted, ApiError>) -> &'static str {
    match result {
        Ok(a) if a.duplicate => "duplicate",
        Ok(_) => "accepted",
        Err(e) if e.status() == StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        Err(e) if e.status() == StatusCode::FORBIDDEN => "forbidden",
        Err(_) => "invalid",
    }
}

/// The caller's trace context (`traceparent`, `tracestate`, `baggage`), if valid.
fn incoming(headers: &HeaderMap) -> Carrier {
    Carrier::read(|name| headers.get(name).and_then(|v| v.to_str().ok()))
}

/// `POST /v1/events`.
#[utoipa::path(post, path = "/v1/events", tag = "events", request_body = crate::openapi::EventBody,
    responses(
        (status = 202, description = "Stored durably in JetStream", body = Accepted),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::Problems
    ), security(("bearer" = [])))]
pub(crate) async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    caller.require_publish()?;
    use tracing::Instrument as _;
    let parent = incoming(&headers);
    // The request's server span (see `request_log`): the publish is its child.
    let span = if telemetry::traced(&parent) { tracing::Span::current() } else { tracing::Span::none() };
    let request = telemetry::onward(&span, &parent);
    // The JetStream publish is a child span of the request's; fan-out continues from it.
    let publish_span = if telemetry::sampled(&span) {
        tracing::info_span!(parent: &span, "jetstream publish", otel.kind = "producer",
            messaging.system = "nats", messaging.destination.name = nats::EVENTS_STREAM,
            trace_id = tracing::field::Empty, span_id = tracing::field::Empty)
    } else {
        tracing::Span::none()
    };
    let publish_trace = telemetry::onward(&publish_span, &request);
    let result = async {
        let event = parse_event(&state, &caller, &body.0)?;
        telemetry::attribute(&span, "herald.event_id", event.id.clone());
        ensure_connected(&state)?;
        let sent_at = std::time::Instant::now();
        let carried = propagates(&parent).then_some(&publish_trace);
        let confirmed = async {
            let ack = send(&state, &event, carried).await?;
            confirm(&event, ack, sent_at).await
        }
        .instrument(publish_span.clone())
        .await;
        telemetry::set_outcome(&publish_span, confirmed.as_ref().err().map(|_| "no PubAck"));
        drop(publish_span);
        confirmed
    }
    .await;
    count(&result);
    let accepted = result?;
    tracing::debug!(id = %accepted.id, seq = accepted.seq, duplicate = accepted.duplicate, "event accepted");
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchInput<'a> {
    /// Each item is parsed on its own (a bad one fails alone), from the body: not copied.
    #[schema(value_type = Vec<crate::openapi::EventBody>)]
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// One item's outcome in a batch.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ItemResult {
    index: usize,
    status: u16,
    /// For a stored item: its id, stream sequence and whether it was a duplicate.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::error::Problem>)]
    error: Option<serde_json::Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BatchResult {
    accepted: usize,
    failed: usize,
    results: Vec<ItemResult>,
}

/// `POST /v1/events/batch`: `{"events": [...]}`. Every valid item is published with its PubAck
/// in flight alongside the others. 202 when all were accepted, 207 with per-item results when
/// some were not, 503 when the broker is unreachable (nothing accepted).
#[utoipa::path(post, path = "/v1/events/batch", tag = "events", request_body = BatchInput,
    responses(
        (status = 202, description = "All stored", body = BatchResult),
        (status = 207, description = "Some not stored: see each result", body = BatchResult),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::Problems
    ), security(("bearer" = [])))]
pub(crate) async fn publish_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<BatchResult>), ApiError> {
    caller.require_publish()?;
    let input: BatchInput = body.json()?;
    if input.events.is_empty() {
        return Err(ApiError::invalid(Some("events"), "events: the batch is empty"));
    }
    if input.events.len() > state.config.max_batch {
        return Err(ApiError::invalid(
            Some("events"),
            format!(
                "events: {} items exceed the limit of {} (HERALD_MAX_BATCH)",
                input.events.len(),
                state.config.max_batch
            ),
        ));
    }
    ensure_connected(&state)?;
    // One context for the batch (no span per item).
    let parent = incoming(&headers);
    let trace = propagates(&parent).then(|| telemetry::onward(&tracing::Span::none(), &parent));

    // Send everything first, then collect the acknowledgements: one round trip, not N.
    let sent_at = std::time::Instant::now();
    let mut pending = Vec::with_capacity(input.events.len());
    for raw in &input.events {
        let item = match parse_event(&state, &caller, raw.get().as_bytes()) {
            Ok(event) => match send(&state, &event, trace.as_ref()).await {
                Ok(ack) => Ok((event, ack)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        pending.push(item);
    }
    let outcomes = futures::future::join_all(pending.into_iter().map(|item| async move {
        match item {
            Ok((event, ack)) => confirm(&event, ack, sent_at).await,
            Err(e) => Err(e),
        }
    }))
    .await;
    // Counted per outcome, not per event: one lock of the metric for the batch.
    let mut tally = std::collections::BTreeMap::new();
    for result in &outcomes {
        *tally.entry(outcome(result)).or_insert(0.0) += 1.0;
    }
    for (label, n) in tally {
        metrics::EVENTS_INGESTED.add(&[label], n);
    }

    let mut results = Vec::with_capacity(outcomes.len());
    let (mut accepted, mut failed, mut unavailable) = (0, 0, 0);
    for (index, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(a) => {
                accepted += 1;
                let (id, seq, duplicate) = (Some(a.id), Some(a.seq), Some(a.duplicate));
                results.push(ItemResult { index, status: 202, id, seq, duplicate, error: None });
            }
            Err(e) => {
                failed += 1;
                if e.status() == StatusCode::SERVICE_UNAVAILABLE {
                    unavailable += 1;
                }
                results.push(ItemResult {
                    index,
                    status: e.status().as_u16(),
                    id: None,
                    seq: None,
                    duplicate: None,
                    error: Some(e.to_json()),
                });
            }
        }
    }
    if accepted == 0 && unavailable > 0 {
        return Err(ApiError::unavailable("JetStream did not acknowledge any event of the batch; retry it"));
    }
    let status = if failed == 0 { StatusCode::ACCEPTED } else { StatusCode::MULTI_STATUS };
    Ok((status, Json(BatchResult { accepted, failed, results })))
}
