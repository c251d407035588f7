//! Delivery: one message from `HERALD_DELIVERIES` → one signed POST → ack on 2xx, a scheduled
//! retry, or a dead letter. Every attempt is recorded on `HERALD_ATTEMPTS`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind};
use prost::Message as _;
use time::OffsetDateTime;

use herald_core::retry::RetryPolicy;
use herald_core::{nats, proto, trace};

use crate::Shared;
use crate::http_client::{self, WebhookRequest};
use crate::retry::{self, AttemptResult, DeliveryOutcome};

/// How long to wait before NATS is asked again when storing a retry or dead letter failed.
const STORE_RETRY: Duration = Duration::from_secs(5);

pub(crate) async fn handle(shared: Arc<Shared>, msg: jetstream::Message) {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let delivery = match proto::Delivery::decode(msg.payload.as_ref()) {
        Ok(d) if d.event.is_some() => d,
        _ => return dead_letter(&shared, &msg, None, "undecodable delivery message".into()).await,
    };
    if delivered > shared.config.max_redeliveries {
        let reason = format!("handed out {delivered} times without an outcome (dispatcher crash loop?)");
        return dead_letter(&shared, &msg, Some(delivery), reason).await;
    }
    let event = delivery.event.as_ref().expect("checked above");
    let Some(sub) = shared.registry.get(&event.tenant, &delivery.subscription_id) else {
        tracing::info!(event = %event.id, subscription = %delivery.subscription_id, "subscription deleted; delivery dropped");
        let _ = msg.ack().await;
        return;
    };
    if !sub.enabled {
        tracing::info!(event = %event.id, subscription = %sub.id, "subscription disabled; delivery dropped");
        let _ = msg.ack().await;
        return;
    }

    let body = match herald_core::event::webhook_body(event) {
        Ok(b) => b,
        Err(e) => return dead_letter(&shared, &msg, Some(delivery), format!("cannot render the body: {e}")).await,
    };
    let now = OffsetDateTime::now_utc();
    let secrets = herald_core::subscription::signing_secrets(&sub, now);
    let refs: Vec<_> = secrets.iter().collect();
    let signature = match herald_signature::sign(&refs, &event.id, now.unix_timestamp(), &body) {
        Ok(s) if !secrets.is_empty() => s,
        _ => {
            return dead_letter(&shared, &msg, Some(delivery), "the subscription has no usable signing secret".into())
                .await;
        }
    };
    let parent = msg.headers.as_ref().and_then(|h| h.get(trace::TRACEPARENT)).map(|v| v.as_str());
    let traceparent = trace::child_of(parent);
    let headers = http_client::headers(&event.id, now.unix_timestamp(), &signature, &traceparent, &sub.headers);

    let sent = http_client::send(
        &shared.http,
        WebhookRequest { url: &sub.url, headers, body },
        shared.config.response_body_limit,
    )
    .await;
    let policy = subscription_policy(&sub).unwrap_or_else(|| shared.config.retry_schedule.clone());
    let outcome = retry::decide(&policy, delivery.attempt.max(1), &sent.result, shared.config.retry_after_max);
    record_attempt(&shared, &delivery, &sub.url, now, &sent, &outcome).await;

    match outcome {
        DeliveryOutcome::Delivered => {
            if let Err(e) = msg.ack().await {
                tracing::warn!(event = %event.id, error = %e, "ack after delivery failed; it may be delivered again");
            }
            tracing::debug!(event = %event.id, subscription = %sub.id, attempt = delivery.attempt, "delivered");
        }
        DeliveryOutcome::Retry { after } => schedule_retry(&shared, &msg, delivery, &sent.result, now, after).await,
        DeliveryOutcome::DeadLetter { reason } => {
            let mut last = delivery;
            last.last_status = sent.result.status.unwrap_or(0).into();
            last.last_error = sent.result.error.clone().unwrap_or_default();
            dead_letter(&shared, &msg, Some(last), reason).await
        }
    }
}

/// The subscription's own retry schedule, if it has a valid one.
fn subscription_policy(sub: &proto::Subscription) -> Option<RetryPolicy> {
    if sub.retry_schedule.is_empty() {
        return None;
    }
    RetryPolicy::parse(&sub.retry_schedule).ok()
}

/// Stores the next attempt as a JetStream message schedule that publishes it back to the
/// delivery subject when due, then acks this one: the wait holds no consumer slot.
async fn schedule_retry(
    shared: &Shared,
    msg: &jetstream::Message,
    mut delivery: proto::Delivery,
    result: &AttemptResult,
    attempted_at: OffsetDateTime,
    after: Duration,
) {
    let event = delivery.event.clone().unwrap_or_default();
    if delivery.first_attempt_at.is_empty() {
        delivery.first_attempt_at = herald_core::rfc3339(attempted_at);
    }
    delivery.attempt = delivery.attempt.max(1) + 1;
    delivery.last_status = result.status.unwrap_or(0).into();
    delivery.last_error = result.error.clone().unwrap_or_default();
    // Schedules fire with one-second granularity and the time is truncated to whole seconds:
    // round up, so a retry never comes early, and never ask for a time already past.
    let due = OffsetDateTime::now_utc() + after.max(Duration::from_secs(1)) + Duration::from_millis(999);
    let target = nats::delivery_subject(&event.tenant, &delivery.subscription_id);
    let parent = msg.headers.as_ref().and_then(|h| h.get(trace::TRACEPARENT)).map(|v| v.as_str().to_owned());
    let mut publish = PublishMessage::build()
        .payload(delivery.encode_to_vec().into())
        .header("Nats-Schedule", format!("@at {}", herald_core::rfc3339(due)))
        .header("Nats-Schedule-Target", target.as_str());
    if let Some(p) = parent {
        publish = publish.header(trace::TRACEPARENT, p);
    }
    let subject = nats::retry_schedule_subject(&event.tenant, &delivery.subscription_id, &event.id);
    match publish_and_confirm(shared, subject, publish).await {
        Ok(()) => {
            tracing::info!(
                event = %event.id,
                subscription = %delivery.subscription_id,
                next_attempt = delivery.attempt,
                after = ?after,
                error = %delivery.last_error,
                "attempt failed; retry scheduled"
            );
            let _ = msg.ack().await;
        }
        Err(e) => {
            tracing::warn!(event = %event.id, error = %e, "could not schedule the retry; the delivery will be handed out again");
            let _ = msg.ack_with(AckKind::Nak(Some(STORE_RETRY.max(after.min(Duration::from_secs(60)))))).await;
        }
    }
}

async fn publish_and_confirm(shared: &Shared, subject: String, publish: PublishMessage) -> Result<(), String> {
    let ack = shared.js.send_publish(subject, publish).await.map_err(|e| e.to_string())?;
    ack.await.map(|_| ()).map_err(|e| e.to_string())
}

/// Moves a delivery to `HERALD_DLQ` with its reason, then acks it. If the DLQ cannot be written,
/// the delivery is handed out again later instead: nothing is dropped.
async fn dead_letter(shared: &Shared, msg: &jetstream::Message, delivery: Option<proto::Delivery>, reason: String) {
    let (tenant, sub_id) =
        match delivery.as_ref().and_then(|d| d.event.as_ref().map(|e| (e.tenant.clone(), d.subscription_id.clone()))) {
            Some((t, s)) if !t.is_empty() && !s.is_empty() => (t, s),
            _ => {
                // Undecodable: take the tenant and subscription from the delivery subject.
                let mut parts = msg.subject.as_str().split('.').skip(2);
                (parts.next().unwrap_or("_unknown").to_owned(), parts.next().unwrap_or("_unknown").to_owned())
            }
        };
    let letter = proto::DeadLetter {
        reason: reason.clone(),
        raw_subject: if delivery.is_none() { msg.subject.to_string() } else { String::new() },
        raw_payload: if delivery.is_none() { msg.payload.to_vec() } else { Vec::new() },
        delivery,
        dead_at: herald_core::now_rfc3339(),
    };
    let publish = PublishMessage::build().payload(letter.encode_to_vec().into());
    match publish_and_confirm(shared, nats::dlq_subject(&tenant, &sub_id), publish).await {
        Ok(()) => {
            tracing::warn!(tenant, subscription = sub_id, reason, "delivery dead-lettered");
            let _ = msg.ack().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not dead-letter; the delivery will be handed out again");
            let _ = msg.ack_with(AckKind::Nak(Some(STORE_RETRY))).await;
        }
    }
}

/// Records the attempt on `HERALD_ATTEMPTS`. A failure to record is logged, never fatal.
async fn record_attempt(
    shared: &Shared,
    delivery: &proto::Delivery,
    url: &str,
    at: OffsetDateTime,
    sent: &http_client::Sent,
    outcome: &DeliveryOutcome,
) {
    let event = delivery.event.as_ref().expect("deliveries carry their event");
    let attempt = proto::Attempt {
        event_id: event.id.clone(),
        subscription_id: delivery.subscription_id.clone(),
        tenant: event.tenant.clone(),
        attempt: delivery.attempt.max(1),
        url: url.to_owned(),
        status: sent.result.status.unwrap_or(0).into(),
        error: sent.result.error.clone().unwrap_or_default(),
        at: herald_core::rfc3339(at),
        duration_ms: sent.elapsed.as_millis() as u64,
        outcome: match outcome {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retry { .. } => "retry",
            DeliveryOutcome::DeadLetter { .. } => "dead_letter",
        }
        .to_owned(),
        response_body: sent.response_excerpt.clone(),
        error_class: sent.result.class.map(|c| c.as_str().to_owned()).unwrap_or_default(),
    };
    let subject = nats::attempt_subject(&event.tenant, &delivery.subscription_id, &event.id);
    let publish = PublishMessage::build().payload(attempt.encode_to_vec().into());
    if let Err(e) = publish_and_confirm(shared, subject, publish).await {
        tracing::warn!(event = %event.id, error = %e, "could not record the attempt");
    }
}
