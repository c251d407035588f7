//! Delivery: one signed POST (or a broker's write) → a 2xx, a scheduled retry, or a dead letter.
//! Deliveries come from `HERALD_DELIVERIES` (acked once their outcome is settled) or straight
//! from fan-out, which makes the first attempt to a healthy, fast endpoint itself rather than
//! storing the delivery first. This module reads a delivery top to bottom: whether it may go
//! (records checked for one handed out again, the endpoint's circuit and limits), the body and
//! its transformation, the signature, the request; `settle` then records the attempt and
//! settles its outcome (retry, dead letter, endpoint health).

use std::sync::Arc;

use async_nats::jetstream::{self, AckKind};
use prost::Message as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use herald_core::telemetry::{self, Carrier};
use herald_core::{metrics, nats, proto};
use tracing::Instrument as _;

use crate::Shared;
use tokio::sync::OwnedSemaphorePermit;

use crate::breaker::{self, Admission, Permit};
use crate::destinations::{self, Outgoing};
use crate::endpoint_auth;
use crate::http_client::{self, WebhookRequest};
use crate::pull::Taken;
use crate::records::{self, Made, Record, UNREADABLE_WAITS};
use crate::retry::{self, DeliveryOutcome};
use crate::settle::{self, Attempted, InFlight, Settle, dead_letter, disable_reason, reschedule};

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
            let mut deferred = delivery;
            let backoff = breaker::deferral_backoff(deferred.deferrals);
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
                headers: &headers,
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
            let client = own.as_ref().unwrap_or(&shared.webhooks);
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
    let attempted = Attempted {
        event,
        delivery: &delivery,
        sub,
        sent: &sent,
        now,
        target,
        parent,
        made,
        endpoint_tried,
        outcome,
        disable,
        in_flight,
    };
    // What follows is inside the attempt's span, so its log lines carry the trace id.
    let within = span.clone();
    settle::settle(shared, attempted, span, sampled).instrument(within).await
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

/// Runs the subscription's transformation on `body`: on this thread while it is quick, else on
/// the transformation threads (see `Transformation::run_async`). A webhook the handler returned
/// as it came goes as rendered.
async fn transformed(
    transformation: &Result<Arc<herald_core::transform::Transformation>, String>,
    body: Vec<u8>,
    sub: &proto::Subscription,
    event: &proto::Event,
) -> Shaped {
    use herald_core::transform::{Outcome, Webhook};
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
    let result = transformation.run_async(&webhook).await;
    metrics::TRANSFORMATION_SECONDS.observe(&[], started.elapsed());
    match result {
        Err(failure) => Shaped::Failed(failure.to_string()),
        Ok(Outcome::Unchanged) => Shaped::As(String::from(Box::<str>::from(payload)).into_bytes()),
        Ok(Outcome::Changed(out)) if out.cancel => Shaped::Cancelled,
        Ok(Outcome::Changed(out)) => {
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
