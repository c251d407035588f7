//! The outcome of an attempt, settled in one place: the attempt's record and statistics, a retry
//! scheduled back to its route, a dead letter (with its operational event), the endpoint's
//! health (and disabling a subscription whose endpoint is gone), and what becomes of the message
//! the delivery came in. `deliver` sends; this settles.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, kv};
use prost::Message as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use herald_core::telemetry::{self, Carrier};
use herald_core::{metrics, nats, proto};

use crate::Shared;
use crate::http_client::{self, Sent};
use crate::operational::Notice;
use crate::records::{self, Made, outcome_name};
use crate::retry::{self, AttemptResult, DeliveryOutcome};

/// What becomes of the message a delivery came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Done with: delivered, or its retry or dead letter is stored.
    Ack,
    /// Hand it out again after this long: its outcome could not be stored, or an ordered
    /// delivery is retried in place.
    Nak(Duration),
}

/// How long to wait before NATS is asked again when storing a retry or dead letter failed.
const STORE_RETRY: Duration = Duration::from_secs(5);

/// One attempt made, and what was decided of it: what [`settle`] records and stores.
pub(crate) struct Attempted<'a> {
    pub event: &'a proto::Event,
    /// The delivery (without its event).
    pub delivery: &'a proto::Delivery,
    pub sub: &'a proto::Subscription,
    pub sent: &'a Sent,
    pub now: OffsetDateTime,
    /// Where a retry goes: the delivery's route.
    pub target: &'a str,
    pub parent: &'a Carrier,
    pub made: Made,
    /// False when nothing was sent (a transformation cancelled or failed): the endpoint's
    /// health is left as it is.
    pub endpoint_tried: bool,
    pub outcome: DeliveryOutcome,
    /// Why the attempt disables the subscription, if it does (see [`disable_reason`]).
    pub disable: Option<String>,
    /// The request on `herald_deliveries_in_flight`, released once the record is written.
    pub in_flight: Option<InFlight>,
}

/// Records the attempt and settles its outcome; see the comment at the top of its body.
pub(crate) async fn settle(
    shared: &Arc<Shared>,
    attempted: Attempted<'_>,
    span: tracing::Span,
    sampled: bool,
) -> Settle {
    let Attempted {
        event,
        delivery,
        sub,
        sent,
        now,
        target,
        parent,
        made,
        endpoint_tried,
        outcome,
        disable,
        in_flight,
    } = attempted;
    let fifo = made.ordered;
    // A retry or dead letter is stored before the attempt's record, which then says
    // whether it was: a copy of this delivery handed out again (its ack lost in an
    // election) finds it settled instead of being sent beside the retry (see
    // `records::settles`), and a dead letter that could not be stored is not taken for
    // one. Anything else is recorded first: should this message be handed out again while
    // the health update below waits on the KV bucket (a leader election), the record is
    // what stops a second send.
    let (settle, recorded_as, retry_stored) = match &outcome {
        DeliveryOutcome::Retry { after } if !fifo => {
            let settle = schedule_retry(shared, event, delivery, sent, now, target, parent, *after).await;
            (Some(settle), None, settle == Settle::Ack)
        }
        DeliveryOutcome::DeadLetter { reason } => {
            let mut last = delivery.clone();
            last.event = Some(event.clone());
            last.last_status = sent.result.status.unwrap_or(0).into();
            last.last_error = sent.result.error.clone().unwrap_or_default();
            let kind = if sent.result.class == Some(retry::ErrorClass::Refused) { "refused" } else { "exhausted" };
            let settle = dead_letter(shared, None, kind, Some(last), reason.clone()).await;
            // Not stored: the message comes back and the delivery is tried again.
            let recorded_as = match settle {
                Settle::Ack => None,
                Settle::Nak(after) => Some(DeliveryOutcome::Retry { after }),
            };
            (Some(settle), recorded_as, false)
        }
        _ => (None, None, false),
    };
    let recorded = recorded_as.as_ref().unwrap_or(&outcome);
    records::write(shared, event, delivery, &sub.url, now, sent, recorded, made, retry_stored).await;
    shared.rollups.attempt(
        now,
        &delivery.subscription_id,
        &event.tenant,
        outcome_name(recorded),
        sent.elapsed.as_millis() as u64,
    );
    drop(in_flight);
    if endpoint_tried {
        track_endpoint_health(shared, sub, &sent.result, now, disable.as_deref()).await;
    }
    if sampled {
        telemetry::attribute(&span, "herald.outcome", outcome_name(recorded));
        if let Some(status) = sent.result.status {
            telemetry::attribute(&span, "http.response.status_code", i64::from(status));
        }
        telemetry::set_outcome(&span, sent.result.error.as_deref());
    }
    let class = if sent.result.confirmed { "confirmed" } else { metrics::status_class(sent.result.status) };
    metrics::ATTEMPTS.inc(&[outcome_name(recorded), class]);
    metrics::ATTEMPT_SECONDS.observe(&[class], sent.elapsed);

    match (&outcome, settle) {
        (_, Some(settle)) => settle,
        (DeliveryOutcome::Cancelled, None) => {
            tracing::debug!(event = %event.id, subscription = %sub.id, "cancelled by the subscription's transformation");
            Settle::Ack
        }
        (DeliveryOutcome::Delivered, None) => {
            tracing::debug!(event = %event.id, subscription = %sub.id, attempt = delivery.attempt, "delivered");
            Settle::Ack
        }
        (DeliveryOutcome::Retry { after }, None) => {
            tracing::info!(event = %event.id, subscription = %sub.id, after = ?after, "ordered delivery failed; retrying in place");
            Settle::Nak(*after)
        }
        (DeliveryOutcome::DeadLetter { .. }, None) => unreachable!("dead letters are stored above"),
    }
}

/// Schedules the next attempt of `delivery` after its attempt failed: `Ack` once stored.
#[allow(clippy::too_many_arguments)]
async fn schedule_retry(
    shared: &Shared,
    event: &proto::Event,
    delivery: &proto::Delivery,
    sent: &http_client::Sent,
    now: OffsetDateTime,
    target: &str,
    parent: &Carrier,
    after: Duration,
) -> Settle {
    metrics::RETRIES.inc(&[]);
    let mut next = delivery.clone();
    next.event = Some(event.clone());
    if next.first_attempt_at.is_empty() {
        next.first_attempt_at = herald_core::rfc3339(now);
    }
    next.attempt = next.attempt.max(1) + 1;
    next.last_status = sent.result.status.unwrap_or(0).into();
    next.last_error = sent.result.error.clone().unwrap_or_default();
    tracing::info!(
        event = %event.id,
        subscription = %delivery.subscription_id,
        next_attempt = next.attempt,
        after = ?after,
        error = %next.last_error,
        "attempt failed; retry scheduled"
    );
    reschedule(shared, target, parent, next, after).await
}

/// Stores `delivery` as a JetStream message schedule that publishes it to `target` after
/// `after`: the wait holds no consumer slot. Used for retries (with the attempt count raised)
/// and for deferrals (unchanged).
pub(crate) async fn reschedule(
    shared: &Shared,
    target: &str,
    parent: &Carrier,
    delivery: proto::Delivery,
    after: Duration,
) -> Settle {
    let event = delivery.event.clone().unwrap_or_default();
    // Schedules fire with one-second granularity and the time is truncated to whole seconds:
    // round up, so a retry never comes early, and never ask for a time already past.
    let due = OffsetDateTime::now_utc() + after.max(Duration::from_secs(1)) + Duration::from_millis(999);
    let publish = parent.add_to(
        PublishMessage::build()
            .payload(delivery.encode_to_vec().into())
            .header("Nats-Schedule", format!("@at {}", herald_core::rfc3339(due)))
            .header(nats::DUE_HEADER, herald_core::rfc3339(due))
            .header("Nats-Schedule-Target", target),
    );
    // A schedule must be in its target's stream: its partition's.
    let partition = nats::Partition::of_subject(target);
    let subject = partition.retry_schedule_subject(&event.tenant, &delivery.subscription_id, &event.id);
    match publish_and_confirm(shared, subject, publish).await {
        Ok(()) => Settle::Ack,
        Err(e) => {
            tracing::warn!(event = %event.id, error = %e, "could not schedule the delivery; it will be handed out again");
            Settle::Nak(STORE_RETRY.max(after.min(Duration::from_secs(60))))
        }
    }
}

pub(crate) async fn publish_and_confirm(
    shared: &Shared,
    subject: String,
    publish: PublishMessage,
) -> Result<(), String> {
    let ack = shared.js.send_publish(subject, publish).await.map_err(|e| e.to_string())?;
    ack.await.map(|_| ()).map_err(|e| e.to_string())
}

/// Why `result` disables `sub`, if it does: a `410 Gone`, or failing for longer than
/// `HERALD_DISABLE_AFTER`. The delivery at hand is then dead-lettered.
pub(crate) fn disable_reason(
    shared: &Shared,
    sub: &proto::Subscription,
    result: &AttemptResult,
    now: OffsetDateTime,
) -> Option<String> {
    let failing_for = OffsetDateTime::parse(&sub.failing_since, &Rfc3339).ok().map(|since| now - since);
    let expired = !result.succeeded() && failing_for.is_some_and(|d| d >= shared.config.disable_after);
    if result.status == Some(410) {
        Some(format!("the endpoint answered 410 Gone at {}", herald_core::rfc3339(now)))
    } else if expired {
        Some(format!(
            "the endpoint failed every attempt since {} ({})",
            sub.failing_since,
            herald_core::runtime::format_duration(shared.config.disable_after)
        ))
    } else {
        None
    }
}

/// Keeps the subscription's shared health fields current, changing the KV entry only on
/// transitions: `failing_since` is set by the first failure after a success and cleared by the
/// first success after failures; `disable` (see [`disable_reason`]) disables it.
async fn track_endpoint_health(
    shared: &Shared,
    sub: &proto::Subscription,
    result: &AttemptResult,
    now: OffsetDateTime,
    disable: Option<&str>,
) {
    let succeeded = result.succeeded();
    let change_needed = disable.is_some()
        || (succeeded && !sub.failing_since.is_empty())
        || (!succeeded && sub.failing_since.is_empty());
    if !change_needed {
        return;
    }
    let key = nats::subscription_key(&sub.tenant, &sub.id);
    for _ in 0..3 {
        let Ok(Some(entry)) = shared.subscriptions.entry(&key).await else { return };
        if entry.operation != kv::Operation::Put {
            return;
        }
        let Ok(mut current) = proto::Subscription::decode(entry.value.as_ref()) else { return };
        let before = (current.failing_since.clone(), current.enabled);
        if succeeded {
            current.failing_since.clear();
        } else if current.failing_since.is_empty() {
            current.failing_since = herald_core::rfc3339(now);
        }
        if disable.is_none() && before == (current.failing_since.clone(), current.enabled) {
            // Another attempt (or replica) already recorded this transition.
            return;
        }
        if let Some(reason) = disable {
            current.enabled = false;
            current.disabled_reason = reason.to_owned();
        }
        match shared.subscriptions.update(&key, current.encode_to_vec().into(), entry.revision).await {
            Ok(revision) => {
                if let Some(reason) = disable {
                    tracing::warn!(subscription = %sub.id, reason, "subscription disabled");
                    let notice = Notice::Disabled { sub: Arc::new(current.clone()), reason: reason.to_owned() };
                    shared.operational.notify(notice);
                }
                shared.registry.upsert(revision, current);
                return;
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => {
                tracing::warn!(subscription = %sub.id, error = %e, "could not update endpoint health");
                return;
            }
        }
    }
}

/// Moves a delivery to `HERALD_DLQ` with its reason. If the DLQ cannot be written, the
/// delivery is handed out again later instead: nothing is dropped. `msg` is the message it came
/// in, kept whole in the letter when it could not be decoded (`delivery` is `None`).
pub(crate) async fn dead_letter(
    shared: &Shared,
    msg: Option<&jetstream::Message>,
    kind: &'static str,
    delivery: Option<proto::Delivery>,
    reason: String,
) -> Settle {
    let target =
        delivery.as_ref().and_then(|d| d.event.as_ref().map(|e| (e.tenant.clone(), d.subscription_id.clone())));
    let raw = if delivery.is_none() { msg } else { None };
    let notice = delivery.as_ref().and_then(|d| {
        let event = d.event.as_ref()?;
        Some(Notice::DeadLettered {
            tenant: event.tenant.clone(),
            subscription_id: d.subscription_id.clone(),
            event_id: event.id.clone(),
            event_type: event.r#type.clone(),
            attempt: d.attempt,
            reason: reason.clone(),
        })
    });
    let (tenant, sub_id) = match target {
        Some((t, s)) if !t.is_empty() && !s.is_empty() => (t, s),
        _ => {
            // Undecodable: take the tenant and subscription from the delivery subject.
            let mut parts = raw.map(|m| m.subject.as_str()).unwrap_or_default().split('.').skip(2);
            (parts.next().unwrap_or("_unknown").to_owned(), parts.next().unwrap_or("_unknown").to_owned())
        }
    };
    let letter = proto::DeadLetter {
        reason: reason.clone(),
        raw_subject: raw.map(|m| m.subject.to_string()).unwrap_or_default(),
        raw_payload: raw.map(|m| m.payload.to_vec()).unwrap_or_default(),
        delivery,
        dead_at: herald_core::now_rfc3339(),
    };
    let publish = PublishMessage::build().payload(letter.encode_to_vec().into());
    match publish_and_confirm(shared, nats::dlq_subject(&tenant, &sub_id), publish).await {
        Ok(()) => {
            metrics::DEAD_LETTERS.inc(&[kind]);
            tracing::warn!(tenant, subscription = sub_id, reason, "delivery dead-lettered");
            if let Some(notice) = notice {
                shared.operational.notify(notice);
            }
            Settle::Ack
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not dead-letter; the delivery will be handed out again");
            Settle::Nak(STORE_RETRY)
        }
    }
}

/// Publishes what `message` builds until JetStream confirms it, pausing 100 ms, 200 ms … up to
/// 2 s between tries (each reported to `on_retry` with the error and the pause); a try waits at
/// most `per_try` for its confirmation (else the context's timeout), and the whole at most
/// `patience` (else until it succeeds), then the last error is returned. The message must carry
/// a message id, so that a try whose confirmation was lost is deduplicated.
pub(crate) async fn publish_until_confirmed(
    shared: &Shared,
    message: impl Fn() -> (String, PublishMessage),
    per_try: Option<Duration>,
    patience: Option<Duration>,
    on_retry: impl Fn(&str, Duration),
) -> Result<(), String> {
    let deadline = patience.map(|p| tokio::time::Instant::now() + p);
    let mut pause = Duration::from_millis(100);
    loop {
        let (subject, publish) = message();
        let confirmed = publish_and_confirm(shared, subject, publish);
        let error = match per_try {
            None => confirmed.await.err(),
            Some(limit) => match tokio::time::timeout(limit, confirmed).await {
                Ok(result) => result.err(),
                Err(_) => Some(format!("not confirmed within {limit:?}")),
            },
        };
        let Some(error) = error else { return Ok(()) };
        if deadline.is_some_and(|d| tokio::time::Instant::now() + pause >= d) {
            return Err(error);
        }
        on_retry(&error, pause);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// One webhook request on `herald_deliveries_in_flight`, from its start until its attempt is
/// recorded (dropped): a dispatcher killed now sends again at most what this gauge showed.
pub(crate) struct InFlight;

impl InFlight {
    pub(crate) fn start() -> Self {
        metrics::IN_FLIGHT.add(&[], 1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::IN_FLIGHT.add(&[], -1.0);
    }
}
