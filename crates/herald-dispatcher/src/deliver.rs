//! Delivery: one signed POST → a 2xx, a scheduled retry, or a dead letter. Deliveries come from
//! `HERALD_DELIVERIES` (acked once their outcome is settled) or straight from fan-out, which
//! makes the first attempt to a healthy, fast endpoint itself rather than storing the delivery
//! first. Every attempt is recorded on `HERALD_ATTEMPTS`. Endpoint health is tracked here too:
//! the circuit breaker, and disabling a subscription whose endpoint is gone.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind, kv};
use prost::Message as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use herald_core::telemetry::{self, Carrier};
use herald_core::{metrics, nats, proto};
use tracing::Instrument as _;

use crate::Shared;
use tokio::sync::OwnedSemaphorePermit;

use crate::breaker::{Admission, Permit};
use crate::destinations::{self, Outgoing};
use crate::endpoint_auth;
use crate::http_client::{self, WebhookRequest};
use crate::operational::Notice;
use crate::pull::Taken;
use crate::records::{self, Made, Record, UNREADABLE_WAITS, outcome_name};
use crate::retry::{self, AttemptResult, DeliveryOutcome};

/// How long to wait before NATS is asked again when storing a retry or dead letter failed.
const STORE_RETRY: Duration = Duration::from_secs(5);

/// How long before a retry's message was stored a record can stop it: a schedule that fires
/// twice does so within an election's time (seconds). The check reads that much of the
/// partition's records.
const RETRY_LOOKBACK: time::Duration = time::Duration::seconds(30);

/// Which consumer a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The shared `herald-deliver` consumer.
    Shared,
    /// A subscription's own lane; `fifo` when it is delivered strictly in order.
    Lane { fifo: bool },
}

/// What becomes of the message a delivery came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Done with: delivered, or its retry or dead letter is stored.
    Ack,
    /// Hand it out again after this long: its outcome could not be stored, or an ordered
    /// delivery is retried in place.
    Nak(Duration),
}

/// Handles one message of `HERALD_DELIVERIES`, acking it once its outcome is settled.
pub(crate) async fn handle(shared: Arc<Shared>, taken: Taken, mode: Mode) {
    let msg = &taken.msg;
    match from_message(&shared, &taken, mode).await {
        Settle::Ack => {
            if let Err(e) = msg.ack().await {
                tracing::warn!(subject = %msg.subject, error = %e, "ack failed; the delivery may be handed out again");
            }
        }
        Settle::Nak(after) => {
            let _ = msg.ack_with(AckKind::Nak(Some(after))).await;
        }
    }
}

/// The first attempt of `event` to `sub`, made by fan-out under its endpoint's `permit` and
/// one of the replica's HTTP slots. `Ok` once the outcome is settled (delivered, or
/// the retry or dead letter stored); `Err` if it could not be stored, and the event must come
/// back.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn first_attempt(
    shared: Arc<Shared>,
    event: &proto::Event,
    event_sequence: u64,
    sub: Arc<proto::Subscription>,
    permit: Permit,
    http_slot: OwnedSemaphorePermit,
    trace: &Carrier,
) -> Result<(), ()> {
    // The event joins the delivery only if it has to be stored (a retry or a dead letter).
    let delivery =
        proto::Delivery { subscription_id: sub.id.clone(), attempt: 1, event_sequence, ..Default::default() };
    // A retry goes where the delivery would have been stored had fan-out not tried it.
    let target = nats::route_subject(shared.partitions, &sub);
    let admitted = Admitted { permit: Some(permit), http_slot: Some(http_slot) };
    match attempt(&shared, event, delivery, &sub, admitted, trace, &target, Made::default()).await {
        Settle::Ack => Ok(()),
        Settle::Nak(_) => Err(()),
    }
}

async fn from_message(shared: &Arc<Shared>, taken: &Taken, mode: Mode) -> Settle {
    let fifo = mode == Mode::Lane { fifo: true };
    let Taken { msg, handed_out: delivered, published: stored, rewound, .. } = taken;
    let (delivered, stored) = (*delivered, *stored);
    let mut delivery = match proto::Delivery::decode(msg.payload.as_ref()) {
        Ok(d) if d.event.is_some() => d,
        _ => return dead_letter(shared, Some(msg), "poison", None, "undecodable delivery message".into()).await,
    };
    if fifo {
        // An ordered delivery is retried in place (it must stay at the head), so every hand-out
        // is an attempt.
        delivery.attempt = delivery.attempt.max(1) - 1 + delivered.max(1) as u32;
    } else if delivered > shared.config.max_redeliveries {
        let reason = format!("handed out {delivered} times without an outcome (dispatcher crash loop?)");
        return dead_letter(shared, Some(msg), "poison", Some(delivery), reason).await;
    }
    let event = delivery.event.as_ref().expect("checked above");
    if delivered == 1 {
        lateness(msg, event, stored);
    }
    // A delivery nobody can receive is dead-lettered, not dropped: after re-enabling (or
    // re-creating) the subscription it can be redriven.
    let Some(sub) = shared.registry.get(&event.tenant, &delivery.subscription_id) else {
        let reason = "the subscription no longer exists".into();
        return dead_letter(shared, Some(msg), "unroutable", Some(delivery), reason).await;
    };
    if !sub.enabled {
        let reason = match sub.disabled_reason.as_str() {
            "" => "the subscription is disabled".to_owned(),
            why => format!("the subscription is disabled: {why}"),
        };
        return dead_letter(shared, Some(msg), "unroutable", Some(delivery), reason).await;
    }
    // Handed out again (after a crash or a lost ack): delivered if a record since it was
    // stored says so (since its event was stored, if fan-out stored it for an event handed out
    // again: see `records_since`). A retry (attempt > 1; only schedules make those, replays and
    // redrives start at 1): delivered if a record from shortly before it was stored says so — a
    // schedule can fire twice after a leader change, and NATS strips the message id from what
    // it fires. An ordered lane checks every delivery, and any earlier record counts unless an
    // operator asked for it again: after a consumer leader change on a cluster the new leader
    // may hand out again, as new, what the old one had seen acked, and ordered fan-out, started
    // again from an earlier event, may store a delivery again after the duplicate window;
    // sending either would break the order. So does any message under a consumer sequence
    // already seen (see `pull::Rewinds`).
    // So does a message stored before a leader change: another replica may have had it (see
    // `elections`).
    let rewound = *rewound || (delivered == 1 && shared.elections.suspect(stored));
    let resent = msg.headers.as_ref().is_some_and(|h| h.get(nats::RESEND_HEADER).is_some());
    if fifo || delivered > 1 || delivery.attempt > 1 || rewound {
        // A retry fired twice (after a leader change) is two messages stored moments apart.
        let marked = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(nats::RECORDS_SINCE_HEADER))
            .and_then(|v| OffsetDateTime::parse(v.as_str(), &time::format_description::well_known::Rfc3339).ok());
        let since = records_since(stored, delivery.attempt, resent, marked);
        let check = || async {
            if fifo && !resent {
                records::delivered_in_order(shared, &delivery, event, stored).await
            } else {
                records::delivered_since(shared, &event.tenant, &sub.id, &event.id, since, delivery.attempt).await
            }
        };
        let unreadable = |r: &Record| *r == Record::Unreadable;
        let record =
            records::readable_within(records::UNREADABLE_HOLD, records::UNREADABLE_POLL, check, unreadable).await;
        match record {
            Record::Delivered => {
                tracing::debug!(event = %event.id, subscription = %sub.id, "handed out again but already delivered; not sent again");
                metrics::REDELIVERIES_SKIPPED.inc(&[]);
                return Settle::Ack;
            }
            Record::Unreadable if delivered <= UNREADABLE_WAITS => {
                return Settle::Nak(records::UNREADABLE_RETRY);
            }
            Record::Unreadable => {
                tracing::warn!(event = %event.id, subscription = %sub.id, handed_out = delivered, "the attempt records stayed unreadable; sending without knowing whether it was delivered (at least once)");
            }
            Record::NotDelivered => {}
        }
    }
    let parent = Carrier::from_nats(msg.headers.as_ref());

    // An ordered lane has one delivery in flight and retries in place: it needs no breaker.
    let admission = if fifo { None } else { Some(shared.breakers.admit(&sub.id, sub.max_in_flight).await) };
    let permit = match admission {
        None => None,
        Some(Admission::Go(permit)) => Some(permit),
        Some(Admission::Defer { after, why }) => {
            tracing::debug!(event = %event.id, subscription = %sub.id, why, "delivery deferred");
            metrics::DEFERRALS.inc(&[why]);
            // Backs off while the endpoint stays saturated: 1 s, 2 s, 4 s … up to a minute.
            let mut deferred = delivery;
            let backoff = Duration::from_secs(1 << deferred.deferrals.min(6)).min(Duration::from_secs(60));
            deferred.deferrals += 1;
            return reschedule(shared, msg.subject.as_str(), &parent, deferred, after.max(backoff)).await;
        }
    };
    let event = delivery.event.take().expect("checked above");
    let admitted = Admitted { permit, http_slot: None };
    let made = Made { resent, ordered: fifo };
    attempt(shared, &event, delivery, &sub, admitted, &parent, msg.subject.as_str(), made).await
}

/// From when a record stops a delivery message stored at `stored` that is handed out again:
/// a retry, from shortly before (a schedule fired twice); an operator's replay, redrive or
/// resend, from the message on (sent whatever came before); a delivery fan-out stored for an
/// event handed out again, from when the event was stored (`marked`; the records of an inline
/// attempt of it may be younger than this message); any other, from the message on.
fn records_since(stored: OffsetDateTime, attempt: u32, resent: bool, marked: Option<OffsetDateTime>) -> OffsetDateTime {
    match (attempt > 1, resent, marked) {
        (true, _, _) => stored - RETRY_LOOKBACK,
        (false, true, _) => stored,
        (false, false, Some(event_stored)) => event_stored.min(stored),
        (false, false, None) => stored,
    }
}

/// What an attempt goes ahead with: its endpoint's slot (none on an ordered lane) and, if
/// already taken, one of the replica's HTTP slots.
struct Admitted {
    permit: Option<Permit>,
    http_slot: Option<OwnedSemaphorePermit>,
}

/// Signs and sends one attempt of `event` (`delivery` without it: it is put back only if the
/// delivery has to be stored), records it, and settles its outcome: a retry is scheduled back
/// to `target`, exhaustion is dead-lettered.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    shared: &Arc<Shared>,
    event: &proto::Event,
    mut delivery: proto::Delivery,
    sub: &Arc<proto::Subscription>,
    admitted: Admitted,
    parent: &Carrier,
    target: &str,
    made: Made,
) -> Settle {
    let fifo = made.ordered;
    let Admitted { permit, http_slot } = admitted;
    // Bodies and requests exist only for the requests this replica may have open at once.
    let _http_slot = match http_slot {
        Some(slot) => slot,
        None => shared.http_slots.clone().acquire_owned().await.expect("never closed"),
    };
    let body = match herald_core::event::webhook_body(event) {
        Ok(b) => b,
        Err(e) => {
            let reason = format!("cannot render the body: {e}");
            delivery.event = Some(event.clone());
            return dead_letter(shared, None, "poison", Some(delivery), reason).await;
        }
    };
    let now = OffsetDateTime::now_utc();
    let prepared = shared.prepared.get(sub);
    // The subscription's transformation, before signing: it may change what is sent.
    let shaped = match &prepared.transformation {
        None => Shaped::As(body),
        Some(transformation) => transformed(transformation, body, sub, event).await,
    };
    // `verdict`: the transformation cancelled the delivery (`Ok`) or failed (`Err`); either
    // way nothing is sent.
    let (body, request, verdict) = match shaped {
        Shaped::As(body) => (body, Request::default(), None),
        Shaped::Changed(body, request) => (body, request, None),
        Shaped::Cancelled => (Vec::new(), Request::default(), Some(Ok(()))),
        Shaped::Failed(why) => (Vec::new(), Request::default(), Some(Err(why))),
    };
    let signers = prepared.signers(now);
    let signature = match herald_signature::sign(&signers, &event.id, now.unix_timestamp(), &body) {
        Ok(s) if !signers.is_empty() => s,
        _ => {
            let reason = "the subscription has no usable signing secret".into();
            delivery.event = Some(event.clone());
            return dead_letter(shared, None, "poison", Some(delivery), reason).await;
        }
    };
    let span = herald_core::traced_span!(
        parent,
        "webhook attempt",
        otel.kind = "client",
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty
    );
    telemetry::set_parent(&span, parent);
    let onward = telemetry::onward(&span, parent);
    let sampled = telemetry::sampled(&span);
    if sampled {
        telemetry::attribute(&span, "http.request.method", request.method.to_string());
        telemetry::attribute(&span, "herald.event_id", event.id.clone());
        telemetry::attribute(&span, "herald.subscription_id", sub.id.clone());
        telemetry::attribute(&span, "herald.attempt", i64::from(delivery.attempt));
    }
    let own_headers = request.headers.as_ref().unwrap_or(&sub.headers);
    let headers = http_client::headers(&event.id, now.unix_timestamp(), &signature, &onward, own_headers);
    let redirected = request.url.as_ref().map(|url| {
        url::Url::parse(url)
            .map_err(|e| herald_core::ssrf::Refused(format!("the transformation's url does not parse: {e}")))
            .and_then(|u| shared.prepared.policy().check_url(&u).map(|()| u))
    });

    // Counted from the request until its record is written: what a crash here would send again.
    let mut in_flight = None;
    let sent = match (&verdict, &prepared.destination, redirected.as_ref().unwrap_or(&prepared.url), &prepared.client) {
        (Some(Err(failure)), _, _, _) => http_client::failed_before_sending(retry::ErrorClass::Transformation, failure),
        (Some(Ok(())), _, _, _) => http_client::Sent::cancelled(),
        (None, Some(Err(unusable)), _, _) => destinations::unusable(unusable),
        (None, Some(Ok(destination)), _, _) => {
            let message = Outgoing {
                id: &event.id,
                event_type: &event.r#type,
                tenant: &event.tenant,
                subscription_id: &sub.id,
                timestamp: now.unix_timestamp(),
                headers: headers
                    .iter()
                    .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
                    .collect(),
                body: &body,
            };
            in_flight = Some(InFlight::start());
            destination.send(message, shared.config.http_timeout).instrument(span.clone()).await
        }
        (None, None, Err(refusal), _) => http_client::refused_result(refusal),
        (None, None, Ok(_), Err(unusable)) => http_client::unusable_certificate(unusable),
        (None, None, Ok(url), Ok(own)) => {
            let request = WebhookRequest { method: request.method.clone(), url, headers, body };
            in_flight = Some(InFlight::start());
            let client = own.as_ref().unwrap_or(&shared.http);
            endpoint_auth::send(shared, &prepared, client, request).instrument(span.clone()).await
        }
    };
    // What the transformation decided says nothing of the endpoint: its permit is released
    // without a verdict and its health is left as it is.
    let endpoint_tried = verdict.is_none();
    if let Some(permit) = permit
        && endpoint_tried
    {
        permit.finish(sent.result.succeeded());
    }
    let policy = prepared.retry_schedule.as_ref().unwrap_or(&shared.config.retry_schedule);
    let mut outcome = match verdict {
        Some(Ok(())) => DeliveryOutcome::Cancelled,
        _ => retry::decide(policy, delivery.attempt.max(1), &sent.result, shared.config.retry_after_max),
    };
    let disable = if endpoint_tried { disable_reason(shared, sub, &sent.result, now) } else { None };
    if let Some(reason) = &disable {
        outcome = DeliveryOutcome::DeadLetter { reason: reason.clone() };
    }
    // What follows is inside the attempt's span, so its log lines carry the trace id.
    let within = span.clone();
    async move {
        // A retry or dead letter is stored before the attempt's record, which then says
        // whether it was: a copy of this delivery handed out again (its ack lost in an
        // election) finds it settled instead of being sent beside the retry (see
        // `records::settles`), and a dead letter that could not be stored is not taken for
        // one. Anything else is recorded first: should this message be handed out again while
        // the health update below waits on the KV bucket (a leader election), the record is
        // what stops a second send.
        let (settle, recorded_as, retry_stored) = match &outcome {
            DeliveryOutcome::Retry { after } if !fifo => {
                let settle = schedule_retry(shared, event, &delivery, &sent, now, target, parent, *after).await;
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
        records::write(shared, event, &delivery, &sub.url, now, &sent, recorded, made, retry_stored).await;
        shared.rollups.attempt(now, &delivery.subscription_id, &event.tenant, outcome_name(recorded), sent.elapsed.as_millis() as u64);
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
    .instrument(within)
    .await
}

/// How late a retry or deferral its schedule fired comes (a first hand-out): counted, and
/// told when it is late enough that an operator would ask why (a schedule firing late after its
/// stream's leader changed shows as late storing; a backlog, as a late hand-out).
fn lateness(msg: &jetstream::Message, event: &proto::Event, stored: OffsetDateTime) {
    let Some(due) = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(nats::DUE_HEADER))
        .and_then(|v| OffsetDateTime::parse(v.as_str(), &Rfc3339).ok())
    else {
        return;
    };
    let late = OffsetDateTime::now_utc() - due;
    metrics::RETRY_LATENESS.observe(&[], late.try_into().unwrap_or_default());
    if late > LATE {
        let fired_late = (stored - due).max(time::Duration::ZERO);
        tracing::warn!(event = %event.id, late = %late, fired_late = %fired_late, "a scheduled retry came late");
    }
}

/// How late a scheduled retry may come before it is told in the log.
const LATE: time::Duration = time::Duration::seconds(10);

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
async fn reschedule(
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
fn disable_reason(
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
async fn dead_letter(
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
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::IN_FLIGHT.add(&[], 1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::IN_FLIGHT.add(&[], -1.0);
    }
}

/// What a subscription's transformation made of a delivery's body.
enum Shaped {
    /// No transformation: the body as rendered.
    As(Vec<u8>),
    /// The transformed body, and how the request changed.
    Changed(Vec<u8>, Request),
    /// The transformation cancelled the delivery.
    Cancelled,
    /// The transformation failed: why.
    Failed(String),
}

/// How a transformation changed the request (nothing, by default: a POST to the endpoint).
struct Request {
    method: reqwest::Method,
    /// Another webhook URL (a broker destination ignores it).
    url: Option<String>,
    /// The subscription's headers with the transformation's over them.
    headers: Option<std::collections::BTreeMap<String, String>>,
}

impl Default for Request {
    fn default() -> Self {
        // Not `Method::default()`, which is GET.
        Self { method: reqwest::Method::POST, url: None, headers: None }
    }
}

/// Runs the subscription's transformation on `body`, on the transformation threads (see
/// `Transformation::run_pooled`).
async fn transformed(
    transformation: &Result<Arc<herald_core::transform::Transformation>, String>,
    body: Vec<u8>,
    sub: &proto::Subscription,
    event: &proto::Event,
) -> Shaped {
    use herald_core::transform::Webhook;
    let transformation = match transformation {
        Ok(t) => t,
        Err(why) => return Shaped::Failed(why.clone()),
    };
    let Ok(payload) = String::from_utf8(body)
        .map_err(|_| ())
        .and_then(|text| serde_json::value::RawValue::from_string(text).map_err(|_| ()))
    else {
        return Shaped::Failed("the webhook body is not JSON".into());
    };
    let webhook =
        Webhook { method: "POST", url: &sub.url, payload: &payload, event_type: &event.r#type, headers: &sub.headers };
    let started = std::time::Instant::now();
    let result = transformation.run_pooled(&webhook).await;
    metrics::TRANSFORMATION_SECONDS.observe(&[], started.elapsed());
    match result {
        Err(failure) => Shaped::Failed(failure.to_string()),
        Ok(out) if out.cancel => Shaped::Cancelled,
        Ok(out) => {
            let body = out.payload.get().as_bytes().to_vec();
            let mut headers = sub.headers.clone();
            if !out.headers.is_empty() {
                match herald_core::subscription::validate_headers(out.headers) {
                    Ok(extra) => headers.extend(extra),
                    Err(e) => {
                        return Shaped::Failed(format!(
                            "the transformation returned an invalid webhook: {}",
                            e.message
                        ));
                    }
                }
            }
            let method = if out.method == "PUT" { reqwest::Method::PUT } else { reqwest::Method::POST };
            let url = (out.url != sub.url).then_some(out.url);
            Shaped::Changed(body, Request { method, url, headers: Some(headers) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_from_before_the_message_stops_it_when_fan_out_marked_it_or_a_schedule_fired_twice() {
        let stored = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let event_stored = stored - time::Duration::seconds(40);
        // Stored by a fan-out of an event handed out again: from when the event was stored.
        assert_eq!(records_since(stored, 1, false, Some(event_stored)), event_stored);
        assert_eq!(records_since(stored, 1, false, Some(stored + time::Duration::seconds(1))), stored);
        assert_eq!(records_since(stored, 1, false, None), stored);
        // A retry fired twice.
        assert_eq!(records_since(stored, 3, false, None), stored - RETRY_LOOKBACK);
        // A replay or redrive: only what came after it.
        assert_eq!(records_since(stored, 1, true, Some(event_stored)), stored);
    }
}
