//! Fan-out: one event from `HERALD_EVENTS` becomes one delivery per matching, enabled
//! subscription of its tenant. Two consumers feed it (see `routes.rs`): the shared one, pulled
//! by every replica, for unordered subscriptions, and the pinned, filtered one for ordered
//! subscriptions. A delivery to a healthy, fast endpoint with a free slot is
//! attempted right here (the first attempt inline: no store, hand-out and ack of a delivery
//! message on the way); every other one is published to `HERALD_DELIVERIES`, all with their
//! PubAcks in flight together. The event is acked only once every delivery is stored or
//! settled (delivered, or its retry or dead letter stored), so a crash at any point brings the
//! event back. Invalid events are dead-lettered, never delivered and never retried.

use std::future::IntoFuture;

use futures::future::Either;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use prost::Message as _;

use herald_core::event::{self, StoredAt};
use herald_core::subscription::needs_lane;
use herald_core::telemetry::{self, Carrier};
use herald_core::{metrics, nats, proto};

use crate::breaker::Admission;
use crate::pull::Taken;
use crate::{Shared, deliver, records, settle};

/// Which consumer an event came from, and so which subscriptions it is fanned out to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `herald-fanout`, every replica: unordered subscriptions, first attempts inline.
    Shared,
    /// `herald-fanout-ordered`, one replica at a time: ordered subscriptions, stored in their
    /// lanes in event order.
    Ordered,
}

impl Role {
    fn span_name(self) -> &'static str {
        match self {
            Self::Shared => "fanout",
            Self::Ordered => "fanout ordered",
        }
    }
}

/// The in-order part of fanning out one event: decode it, match subscriptions, and send one
/// delivery per match (for the ordered role in event order, since one replica reads that
/// consumer and sends are ordered on its connection). Returns the rest, which waits for the
/// PubAcks and acks the event, to run alongside other events.
pub(crate) async fn send(
    shared: Arc<Shared>,
    role: Role,
    taken: Taken,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let Taken { msg, handed_out, sequence, published, rewound } = taken;
    if role == Role::Shared && handed_out == 1 {
        if let Some((tenant, _)) = herald_core::partition::split_event_subject(&msg.subject) {
            // Statistics keep a series per tenant that exists (has subscriptions); events of
            // any other name, which anyone may publish, are counted together.
            let known = shared.registry.has_tenant(tenant) || tenant == shared.config.operator_tenant;
            shared.rollups.event(published, if known { tenant } else { herald_core::OTHER_TENANTS });
        }
    }
    let header = |name: &str| msg.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
    let content_type = header("Content-Type");
    let msg_id = header("Nats-Msg-Id");
    let parent = Carrier::from_nats(msg.headers.as_ref());

    let decoded = event::decode_stored(
        msg.subject.as_str(),
        content_type.as_deref(),
        msg_id.as_deref(),
        &msg.payload,
        StoredAt { sequence, time: published },
    );
    let event = match decoded {
        Ok(event) => event,
        Err(invalid) => {
            return Some(Either::Left(set_aside(shared, role, msg, Aside::Invalid(invalid.to_string()))));
        }
    };
    if let Some(forged) = forged_operational(&shared, &event, &msg) {
        return Some(Either::Left(set_aside(shared, role, msg, Aside::Invalid(forged))));
    }

    let span = herald_core::traced_span!(
        &parent,
        "fanout",
        otel.name = role.span_name(),
        otel.kind = "consumer",
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty
    );
    telemetry::set_parent(&span, &parent);
    let trace = telemetry::onward(&span, &parent);
    let sampled = telemetry::sampled(&span);
    if sampled {
        telemetry::attribute(&span, "herald.event_id", event.id.clone());
        telemetry::attribute(&span, "herald.tenant", event.tenant.clone());
    }
    if let Some(reason) = schema_violation(&shared, &msg, &event, role, handed_out) {
        return Some(Either::Left(set_aside(shared, role, msg, Aside::Invalid(reason))));
    }
    let matched = shared.registry.matching_event(&event);
    let mut subs = matched.subs;
    if matched.filtered_out > 0 && handed_out == 1 && role == Role::Shared {
        metrics::FILTERED_OUT.add(&[], matched.filtered_out as f64);
    }
    match role {
        Role::Shared => subs.retain(|s| shared.routes.shared_serves(s)),
        // A subscription made ordered after the event was stored had it from the shared
        // fan-out (the ordered consumer may start behind, where it left off).
        Role::Ordered => subs.retain(|s| shared.routes.ordered_serves(s) && !created_after(s, published)),
    }
    // Handed out again (its fan-out died, or the ack was lost, or its consumer rewound after a
    // leader change): what was already delivered inline is not sent again.
    let rewound = rewound || (handed_out == 1 && shared.elections.suspect(published));
    let again = handed_out > 1 || rewound;
    let records_since = again.then_some(published);
    let fanned = Fanned { sequence, again, records_since, trace, span, sampled };
    if again && !subs.is_empty() {
        if role == Role::Ordered {
            // The ordered fan-out must not go on to later events while this one is checked
            // (they would be stored, and so delivered, before it): it waits here, in order.
            let subs = checked(&shared, role, &event, published, handed_out, subs).await.expect("waits in place");
            return Some(Either::Right(Either::Left(fan_out(shared, role, msg, event, subs, fanned).await)));
        }
        // The shared fan-out's events are in no order: each is checked on its own, not ahead
        // of those pulled behind it. A check can take seconds while a cluster elects leaders,
        // and events held that long past their hand-out reach their ack wait and are handed
        // out to another replica as well, which sends them too.
        return Some(Either::Right(Either::Right(Box::pin(async move {
            match checked(&shared, role, &event, published, handed_out, subs).await {
                Some(subs) => fan_out(shared, role, msg, event, subs, fanned).await.await,
                None => set_aside(shared, role, msg, Aside::RecordsUnreadable).await,
            }
        }))));
    }
    Some(Either::Right(Either::Left(fan_out(shared, role, msg, event, subs, fanned).await)))
}

/// Why `event` must not be delivered, if it claims to be an operational event (the operator
/// tenant's) without a MAC from a dispatcher's key ring: anyone who may publish to
/// `herald.events.>` could otherwise tell the operator's receivers that a circuit closed.
fn forged_operational(shared: &Shared, event: &proto::Event, msg: &jetstream::Message) -> Option<String> {
    let operator = &shared.config.operator_tenant;
    if operator.is_empty() || event.tenant != *operator {
        return None;
    }
    let mac = msg.headers.as_ref().and_then(|h| h.get(nats::OPERATOR_MAC_HEADER)).map(|v| v.as_str());
    match shared.keys.operator_written(&msg.payload, mac) {
        herald_core::secrets::Written::Forged => Some({
            metrics::OPERATIONAL_FORGED.inc(&["fanout"]);
            format!(
                "an event of the operator tenant {operator:?} not written by a Herald dispatcher (no valid {})",
                nats::OPERATOR_MAC_HEADER
            )
        }),
        _ => None,
    }
}

/// How long one try to store a delivery again waits for its confirmation.
const STORE_TRY: Duration = Duration::from_secs(2);

/// How long fan-out keeps trying to store a delivery whose first store failed before the event
/// is handed out again instead (its ack wait is the HTTP timeout + 15 s).
const STORE_PATIENCE: Duration = Duration::from_secs(10);

/// What the fan-out of an event needs besides the event, from its hand-out.
struct Fanned {
    sequence: u64,
    /// Handed out before, or perhaps (see `elections`): not attempted inline.
    again: bool,
    /// When the event was stored, if it was handed out again (see [`delivery`]).
    records_since: Option<time::OffsetDateTime>,
    trace: Carrier,
    span: tracing::Span,
    sampled: bool,
}

/// `subs` without those an attempt record says the event was already delivered to since it was
/// stored. `None`: the records cannot be read now and the event should come back later (the
/// ordered fan-out instead waits, and in the end goes on: at least once comes first).
async fn checked(
    shared: &Arc<Shared>,
    role: Role,
    event: &proto::Event,
    published: time::OffsetDateTime,
    handed_out: i64,
    mut subs: Vec<Arc<proto::Subscription>>,
) -> Option<Vec<Arc<proto::Subscription>>> {
    let check = || {
        let checks =
            subs.iter().map(|s| records::delivered_since(shared, &event.tenant, &s.id, &event.id, published, 1));
        futures::future::join_all(checks)
    };
    let unreadable = |found: &Vec<records::Record>| found.contains(&records::Record::Unreadable);
    let found = if role == Role::Ordered {
        // 2 s each, 8 s in all: waiting longer than the consumer's pin timeout (10 s) would
        // let another replica take the pin and store later events ahead of this one.
        let mut found = check().await;
        for _ in 0..records::UNREADABLE_WAITS {
            if !unreadable(&found) {
                break;
            }
            tokio::time::sleep(records::UNREADABLE_RETRY).await;
            found = check().await;
        }
        found
    } else {
        let found =
            records::readable_within(records::UNREADABLE_HOLD, records::UNREADABLE_POLL, check, unreadable).await;
        if handed_out <= records::UNREADABLE_WAITS && unreadable(&found) {
            return None;
        }
        found
    };
    if unreadable(&found) {
        tracing::warn!(event = %event.id, handed_out, "the attempt records stayed unreadable; fanning out without knowing what was delivered (at least once)");
    }
    tracing::debug!(event = %event.id, handed_out, found = ?found, "fan-out: records checked of an event handed out again");
    let before = subs.len();
    let mut found = found.into_iter();
    subs.retain(|_| found.next() != Some(records::Record::Delivered));
    metrics::REDELIVERIES_SKIPPED.add(&[], (before - subs.len()) as f64);
    Some(subs)
}

/// Sends one delivery per subscription of `subs` (inline attempts to healthy endpoints, the
/// others published with their PubAcks in flight together) and returns the rest, which waits
/// for them and acks the event.
async fn fan_out(
    shared: Arc<Shared>,
    role: Role,
    msg: jetstream::Message,
    event: proto::Event,
    subs: Vec<Arc<proto::Subscription>>,
    fanned: Fanned,
) -> impl Future<Output = ()> + Send + 'static {
    let Fanned { sequence, again, records_since, trace, span, sampled } = fanned;
    // An event handed out again (its dispatcher may have crashed on it) takes the stored way,
    // with its crash-loop guard. So does one a consumer's new leader may have handed out to
    // another replica at the same moment: both copies store the same delivery message id, and
    // JetStream keeps one, where two inline attempts would both be sent (their records come
    // too late to stop the other).
    // A polling subscription is never sent to: its deliveries are stored for its consumer.
    let fit = |sub: &proto::Subscription| {
        !needs_lane(sub) && !herald_core::polling::is_polling(sub) && shared.breakers.fit_for_inline(&sub.id)
    };
    let inline_slot =
        if role == Role::Shared && !again && subs.iter().any(|s| fit(s)) { shared.inline.take().await } else { None };
    let mut inline = Vec::new();
    // PubAcks to come, each with its subscription's place in `subs`, and the places of those
    // whose sending failed.
    let mut acks = Vec::with_capacity(subs.len());
    let mut unsent = Vec::new();
    for (i, sub) in subs.iter().enumerate() {
        if inline_slot.is_some() && fit(sub) {
            inline.push(sub.clone());
            continue;
        }
        if role == Role::Ordered {
            store_in_order(&shared, &event, sequence, sub, &trace).await;
            continue;
        }
        let (subject, publish) = delivery(shared.partitions, &event, sequence, sub, &trace, records_since);
        match shared.js.send_publish(subject, publish).await {
            Ok(ack) => acks.push((i, ack.into_future())),
            Err(_) => unsent.push(i),
        }
    }
    let inline_slot = if inline.is_empty() { None } else { inline_slot };
    let mut stored = if role == Role::Ordered { subs.len() } else { acks.len() + unsent.len() };
    use tracing::Instrument as _;
    async move {
        let attempts = futures::future::join_all(
            inline.into_iter().map(|sub| attempt_inline(shared.clone(), &event, sequence, sub, &trace)),
        );
        let acks = futures::future::join_all(acks.into_iter().map(|(i, ack)| async move { (i, ack.await.is_ok()) }));
        let (acks, attempts) = futures::future::join(acks, attempts).await;
        drop(inline_slot);
        let unconfirmed = acks.iter().filter(|(_, confirmed)| !confirmed).map(|(i, _)| *i);
        for i in unsent.iter().copied().chain(unconfirmed) {
            // The deliveries stream is electing its leader: stored again in place (the same
            // message id, deduplicated) for a while, rather than the event coming back, which
            // costs a hand-out of its waits for readable records and a check of what was
            // attempted inline.
            let sub = &subs[i];
            let store = || delivery(shared.partitions, &event, sequence, sub, &trace, records_since);
            let stored_again = settle::publish_until_confirmed(&shared, store, Some(STORE_TRY), Some(STORE_PATIENCE), |error, retry_in| {
                tracing::debug!(event = %event.id, subscription = %sub.id, error, retry_in = ?retry_in, "delivery not stored yet; trying again");
            });
            if let Err(e) = stored_again.await {
                // Deliveries already stored are deduplicated by their ids when the event comes
                // back; those attempted inline are checked against their records.
                metrics::FANOUT_EVENTS.inc(&["retried"]);
                return retry_later(&msg, &event.id, &e).await;
            }
        }
        let mut attempted = 0;
        for result in attempts {
            match result {
                Ok(Path::Inline) => attempted += 1,
                Ok(Path::Stored) => stored += 1,
                Err(e) => {
                    metrics::FANOUT_EVENTS.inc(&["retried"]);
                    return retry_later(&msg, &event.id, &e).await;
                }
            }
        }
        if let Err(e) = msg.ack().await {
            tracing::warn!(event = %event.id, error = %e, "ack of fanned-out event failed; it will be fanned out again (deduplicated)");
        }
        if role == Role::Ordered && subs.is_empty() {
            return;
        }
        if role == Role::Shared {
            metrics::FANOUT_EVENTS.inc(&["fanned_out"]);
        }
        if sampled {
            telemetry::attribute(&tracing::Span::current(), "herald.deliveries", subs.len() as i64);
        }
        metrics::FANOUT_DELIVERIES.add(&["stored"], stored as f64);
        metrics::FANOUT_DELIVERIES.add(&["inline"], attempted as f64);
        tracing::debug!(event = %event.id, tenant = %event.tenant, r#type = %event.r#type, deliveries = subs.len(), sequence, again, "fanned out");
    }
    .instrument(span)
}

/// The first delivery of `event` to `sub` as fan-out stores it; for an event handed out again,
/// marked with when the event was stored ([`nats::RECORDS_SINCE_HEADER`]): the records of an
/// inline attempt made of it may be stored after this message (seen in the node chaos test: a
/// record that took 5 s to store while its stream elected a leader, the event back meanwhile,
/// its delivery stored again and sent again although the record said delivered).
fn delivery(
    partitions: nats::Partitions,
    event: &proto::Event,
    sequence: u64,
    sub: &proto::Subscription,
    trace: &Carrier,
    records_since: Option<time::OffsetDateTime>,
) -> (String, async_nats::jetstream::message::PublishMessage) {
    let (subject, publish) = nats::first_delivery(partitions, event, sequence, sub, trace);
    match records_since {
        Some(since) => (subject, publish.header(nats::RECORDS_SINCE_HEADER, herald_core::rfc3339(since).as_str())),
        None => (subject, publish),
    }
}

/// Why an event is not fanned out now.
/// Why an event published straight to NATS is refused by its type's schema, under
/// `HERALD_SCHEMA_VALIDATION=enforce`. Events the gateway checked carry a header and are not
/// checked again; under `warn` a violation is logged (once, by the shared fan-out).
fn schema_violation(
    shared: &Shared,
    msg: &jetstream::Message,
    event: &proto::Event,
    role: Role,
    handed_out: i64,
) -> Option<String> {
    use herald_core::catalog::Mode;
    let mode = shared.config.common.schema_validation;
    let checked = msg.headers.as_ref().is_some_and(|h| h.get(nats::SCHEMA_CHECKED_HEADER).is_some());
    if mode == Mode::Off || checked || !shared.catalog.has_schema(&event.r#type) {
        return None;
    }
    let violation = shared.catalog.check(&event.r#type, &event.data).err()?;
    let reason = format!(
        "data{}: {} (the schema of {} in the event-type catalog)",
        violation.path, violation.message, event.r#type
    );
    let first = role == Role::Shared && handed_out == 1;
    match mode {
        Mode::Warn => {
            if first {
                metrics::SCHEMA_VIOLATIONS.inc(&["warned"]);
                tracing::warn!(id = %event.id, "{reason}; delivered (HERALD_SCHEMA_VALIDATION=warn)");
            }
            None
        }
        _ => {
            if first {
                metrics::SCHEMA_VIOLATIONS.inc(&["dead_lettered"]);
            }
            Some(reason)
        }
    }
}

enum Aside {
    /// It is not a valid event.
    Invalid(String),
    /// It was handed out before, and its attempt records cannot be read yet.
    RecordsUnreadable,
}

/// Settles an event fan-out does not go on with: an invalid one is dead-lettered by the shared
/// fan-out and let go by the ordered one; one whose records cannot be read comes back later.
async fn set_aside(shared: Arc<Shared>, role: Role, msg: jetstream::Message, why: Aside) {
    match (why, role) {
        (Aside::Invalid(reason), Role::Shared) => dead_letter_invalid(&shared, &msg, &reason).await,
        (Aside::Invalid(_), Role::Ordered) => {
            let _ = msg.ack().await;
        }
        (Aside::RecordsUnreadable, _) => {
            let _ = msg.ack_with(AckKind::Nak(Some(records::UNREADABLE_RETRY))).await;
        }
    }
}

/// Stores the delivery of `event` to the ordered `sub` and waits until JetStream confirms it,
/// trying again (deduplicated by its id) for as long as it takes: a later event's delivery
/// must not be stored before it, which a store failing during a leader election and the next
/// one succeeding would do. The ordered fan-out waits here, which is what order costs.
async fn store_in_order(
    shared: &Shared,
    event: &proto::Event,
    sequence: u64,
    sub: &proto::Subscription,
    trace: &Carrier,
) {
    let store = || nats::first_delivery(shared.partitions, event, sequence, sub, trace);
    let _ = settle::publish_until_confirmed(shared, store, None, None, |error, retry_in| {
        tracing::warn!(event = %event.id, subscription = %sub.id, error, retry_in = ?retry_in, "ordered delivery not stored yet; trying again before any later event");
    })
    .await;
}

/// True if `sub` was created after `stored` (a few seconds' leeway for clocks), so it never
/// wanted the event.
fn created_after(sub: &proto::Subscription, stored: time::OffsetDateTime) -> bool {
    let Ok(created) = time::OffsetDateTime::parse(&sub.created_at, &time::format_description::well_known::Rfc3339)
    else {
        return false;
    };
    created - time::Duration::seconds(5) > stored
}

/// How long fan-out waits for an event to be let through inline while all inline slots are
/// taken; if none frees up in time, it stops waiting for [`INLINE_BACKOFF`]. Long enough for a
/// healthy endpoint that answers in batches: RabbitMQ confirms persistent messages a disk sync
/// at a time, and went 20 ms without a confirm often enough, under load, that with a 20 ms wait
/// most of its deliveries were stored first (costing a write, a hand-out and an ack each, and
/// the broker's share of the CPU). An endpoint whose attempts average 250 ms or more is not
/// attempted inline at all (see `Breakers::fit_for_inline`).
const INLINE_WAIT: Duration = Duration::from_millis(100);
const INLINE_BACKOFF: Duration = Duration::from_secs(1);

/// The events that fan-out may hold while it makes their first attempts inline
/// (`HERALD_INLINE_ATTEMPTS`). Those attempts go to healthy, fast endpoints, so a slot frees up
/// in moments and an event waits for one rather than take the slower stored way. If the slots
/// stay taken (endpoints turned slow under their attempts), events stop waiting for a while
/// and are stored: fan-out never stalls behind a slow endpoint.
pub(crate) struct InlineSlots {
    slots: Arc<tokio::sync::Semaphore>,
    /// Inline attempts are turned off (`HERALD_INLINE_ATTEMPTS=0`).
    off: bool,
    /// While set and in the future, events do not wait for a slot.
    backoff_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl InlineSlots {
    pub(crate) fn new(slots: usize) -> Self {
        Self { slots: Arc::new(tokio::sync::Semaphore::new(slots)), off: slots == 0, backoff_until: Default::default() }
    }

    /// A slot, if one is free or frees up within [`INLINE_WAIT`].
    async fn take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        if self.off {
            return None;
        }
        let now = tokio::time::Instant::now();
        if self.backoff_until.lock().expect("inline lock").is_some_and(|until| now < until) {
            return None;
        }
        match tokio::time::timeout(INLINE_WAIT, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Some(slot),
            _ => {
                *self.backoff_until.lock().expect("inline lock") = Some(now + INLINE_BACKOFF);
                None
            }
        }
    }
}

/// How a delivery left fan-out.
enum Path {
    /// Attempted by fan-out, its outcome settled.
    Inline,
    /// Stored in `HERALD_DELIVERIES` for the delivery consumer.
    Stored,
}

/// The first attempt of `event` to `sub`, made here once the endpoint has a free slot. An
/// endpoint that stays at its limit or starts struggling meanwhile gets the delivery stored
/// instead, as any other.
async fn attempt_inline(
    shared: Arc<Shared>,
    event: &proto::Event,
    sequence: u64,
    sub: Arc<proto::Subscription>,
    trace: &Carrier,
) -> Result<Path, String> {
    match shared.breakers.admit(&sub.id, 0).await {
        // Boxed, once it may send: the attempt's state exists for the requests open, not for
        // every delivery an event holds (100 subscriptions × 256 events in hand).
        Admission::Go(permit) => {
            let http_slot = shared.http_slots.clone().acquire_owned().await.expect("never closed");
            let settled =
                Box::pin(deliver::first_attempt(shared, event, sequence, sub, permit, http_slot, trace)).await;
            settled
                .map(|()| Path::Inline)
                .map_err(|()| "the outcome of an inline attempt could not be stored".to_owned())
        }
        Admission::Defer { .. } => {
            let (subject, publish) = nats::first_delivery(shared.partitions, event, sequence, &sub, trace);
            let ack = shared.js.send_publish(subject, publish).await.map_err(|e| e.to_string())?;
            ack.await.map(|_| Path::Stored).map_err(|e| e.to_string())
        }
    }
}

async fn retry_later(msg: &jetstream::Message, event_id: &str, error: &str) {
    tracing::warn!(event = %event_id, error, "could not store deliveries; the event will be fanned out again");
    let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
}

async fn dead_letter_invalid(shared: &Shared, msg: &jetstream::Message, reason: &str) {
    // `herald[.p{p}].events.{tenant}…`, with or without a type.
    let subject = msg.subject.as_str();
    let tenant_token = herald_core::partition::split_event_subject(subject)
        .map(|(tenant, _)| tenant)
        .or_else(|| subject.rsplit_once(".events.").map(|(_, tenant)| tenant))
        .filter(|t| herald_core::ids::TenantId::parse(t).is_ok())
        .unwrap_or("_unknown");
    let letter = proto::DeadLetter {
        reason: format!("invalid event: {reason}"),
        delivery: None,
        raw_subject: msg.subject.to_string(),
        raw_payload: msg.payload.to_vec(),
        dead_at: herald_core::now_rfc3339(),
    };
    let subject = nats::invalid_event_dlq_subject(tenant_token);
    let stored = match shared.js.publish(subject, letter.encode_to_vec().into()).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match stored {
        Ok(()) => {
            metrics::FANOUT_EVENTS.inc(&["invalid"]);
            metrics::DEAD_LETTERS.inc(&["invalid_event"]);
            tracing::warn!(subject = %msg.subject, reason, "invalid event dead-lettered");
            // Term, not ack: it was not processed, and it must never come back.
            let _ = msg.ack_with(AckKind::Term).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not dead-letter an invalid event; will retry");
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn events_wait_for_a_moving_inline_slot_but_not_behind_stuck_ones() {
        let slots = InlineSlots::new(1);
        let held = slots.take().await.expect("free");
        // A slot freed within the wait is taken.
        let waiter = tokio::spawn(async move {
            let got = slots.take().await.is_some();
            (slots, got)
        });
        tokio::time::sleep(INLINE_WAIT / 2).await;
        drop(held);
        let (slots, got) = waiter.await.unwrap();
        assert!(got, "a slot freed within the wait");

        // None frees up: one event waits out INLINE_WAIT, the next ones do not wait at all.
        let _stuck = slots.take().await.expect("free again");
        let started = tokio::time::Instant::now();
        assert!(slots.take().await.is_none());
        assert_eq!(started.elapsed(), INLINE_WAIT);
        let started = tokio::time::Instant::now();
        assert!(slots.take().await.is_none());
        assert_eq!(started.elapsed(), Duration::ZERO, "no waiting while backing off");
        // After the back-off, events wait again.
        tokio::time::sleep(INLINE_BACKOFF).await;
        let started = tokio::time::Instant::now();
        assert!(slots.take().await.is_none());
        assert_eq!(started.elapsed(), INLINE_WAIT);
    }

    #[tokio::test]
    async fn turned_off_means_never_inline_and_never_waiting() {
        let slots = InlineSlots::new(0);
        assert!(slots.take().await.is_none());
        assert!(slots.take().await.is_none());
    }
}
