//! Attempt records on `HERALD_ATTEMPTS`: writing one per attempt, and the check made before a
//! delivery handed out again is sent again ("does a record say it was delivered?").
//!
//! Records are stored under a bounded set of subjects, `herald.attempts.{tenant}.{sub}.{p}`
//! with `p` one hex digit of a hash of the event id ([`nats::attempt_subject`]): nats-server keeps
//! state in memory for every subject a stream holds, so a subject per event grew its memory with
//! every delivery for as long as records were retained. The event id is in the record. Finding
//! the records of one (subscription, event) pair is therefore a walk over its partition, from
//! a point in time at which the pair can have had no record yet that matters, to the newest
//! record of the partition, one `STREAM.MSG.GET` at a time (the stream leader answers, so a
//! record confirmed before an election is found after it). An ordered lane, which checks every
//! delivery, needs no walk: its records follow the events' order (see [`delivered_in_order`]).
//!
//! Records of the per-event layout of before are still read until they age out
//! ([`nats::Handles::legacy_records_until`]).

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::{self, ErrorCode, consumer};
use prost::Message as _;
use time::OffsetDateTime;

use herald_core::{metrics, nats, proto};

use crate::Shared;
use crate::http_client;
use crate::retry::DeliveryOutcome;
use crate::settle::publish_until_confirmed;

/// How long an attempt record waits for its confirmation before it is published again, and
/// for how long it is tried: across a NATS node's failure, the client's reconnection and the
/// attempts stream's leader election, and the seconds a cluster whose nodes fail in quick
/// succession has no quorum. The record is what stops a copy of the delivery handed out later
/// from being sent again: given up after 10 s, 6 records of one chaos run were lost while the
/// attempts stream had no leader for 15 s, and 5 of those deliveries were sent twice. Within
/// [`nats::ATTEMPTS_DUPLICATE_WINDOW`], so that a record stored but not confirmed is stored
/// once. The message stays held (and told in progress) meanwhile.
const RECORD_CONFIRM: Duration = Duration::from_secs(1);
const RECORD_PATIENCE: Duration = Duration::from_secs(50);

/// Most records a check reads from one partition before it gives up and sends (at least once
/// comes first).
pub(crate) const WALK_LIMIT: usize = 1_000;

/// What the attempt records of an (event, subscription) pair say about a message handed out
/// again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    /// The last record for the pair, stored after `since`, settles the message ([`settles`]:
    /// delivered, dead-lettered, or this attempt's retry stored; or, on an ordered lane, the
    /// lane has moved past the event): not sent again.
    Delivered,
    /// No such record: sent.
    NotDelivered,
    /// The records could not be read (the stream is electing a leader, or the request timed
    /// out): the message waits in place and asks again ([`readable_within`]), then is let go to
    /// come back after [`UNREADABLE_RETRY`], up to [`UNREADABLE_WAITS`] times, then is sent.
    Unreadable,
}

/// How many hand-outs a message waits for its record to become readable before it is sent
/// anyway: at least once comes first.
pub(crate) const UNREADABLE_WAITS: i64 = 4;

/// How long a message whose record could not be read within [`UNREADABLE_HOLD`] waits before it
/// is handed out again: 4 × (6 + 2) + 6 = 38 s in all before it is sent anyway. Records stay
/// unreadable for 10–20 s while a cluster whose nodes fail in quick succession elects leaders.
pub(crate) const UNREADABLE_RETRY: Duration = Duration::from_secs(2);

/// How long a check whose records cannot be read waits in place, asking again every
/// [`UNREADABLE_POLL`], before its message is let go to come back later. In place, the check
/// goes on within a second of the records becoming readable; a message let go comes back
/// after its wait whenever that is (waits of 2, 4, 6 and 8 s, as before, left deliveries
/// waiting 8 s after the attempts stream had its leader again: the last delivery came 16 s
/// after the cluster was whole). Short enough that the message, told in progress meanwhile,
/// does not reach its ack wait on a consumer that lost its leader too.
pub(crate) const UNREADABLE_HOLD: Duration = Duration::from_secs(6);
pub(crate) const UNREADABLE_POLL: Duration = Duration::from_secs(1);

/// Runs `check` until `unreadable` says no of what it found, every `poll` for up to `hold`, and
/// returns the last finding ([`UNREADABLE_HOLD`], [`UNREADABLE_POLL`]).
pub(crate) async fn readable_within<T, F, Fut>(
    hold: Duration,
    poll: Duration,
    mut check: F,
    unreadable: impl Fn(&T) -> bool,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let until = tokio::time::Instant::now() + hold;
    loop {
        let found = check().await;
        if !unreadable(&found) || tokio::time::Instant::now() + poll > until {
            return found;
        }
        tokio::time::sleep(poll).await;
    }
}

/// How an attempt came to be made, as its record tells.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Made {
    /// An operator asked for the delivery again (replay, redrive, resend).
    pub resent: bool,
    /// By an ordered lane.
    pub ordered: bool,
}

/// Records the attempt on `HERALD_ATTEMPTS`. A failure to record is logged, never fatal.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write(
    shared: &Shared,
    event: &proto::Event,
    delivery: &proto::Delivery,
    url: &str,
    at: OffsetDateTime,
    sent: &http_client::Sent,
    outcome: &DeliveryOutcome,
    made: Made,
    retry_stored: bool,
) {
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
        outcome: outcome_name(outcome).to_owned(),
        response_body: sent.response_excerpt.clone(),
        error_class: sent.result.class.map(|c| c.as_str().to_owned()).unwrap_or_default(),
        event_sequence: delivery.event_sequence,
        resent: made.resent,
        ordered: made.ordered,
        retry_stored,
    };
    let partition = shared.partitions.of_subscription(&delivery.subscription_id);
    let subject = partition.attempt_subject(&event.tenant, &delivery.subscription_id, &event.id);
    let payload: bytes::Bytes = attempt.encode_to_vec().into();
    if shared.config.common.topology.replicas <= 1 {
        // One server: the record goes out on the connection ahead of the message's ack, and a
        // server that is gone loses both alike. Waiting for its confirmation cost a capped
        // replica 40 % of its deliveries per second in the scale-out benchmark.
        if let Err(e) = shared.js.client().publish(subject, payload).await {
            tracing::warn!(event = %event.id, error = %e, "could not record the attempt");
        }
        return;
    }
    // Replicated streams: confirmed, and tried again (deduplicated by its id) if the
    // confirmation does not come, before the message is acked. A plain publish is dropped while
    // the attempts stream elects a leader, and a message handed out again would then be sent
    // again although it was delivered (85–243 of 1,800 deliveries in the cluster chaos test).
    let id = format!("{}:{}:{}:{}", delivery.subscription_id, event.id, attempt.attempt, at.unix_timestamp_nanos());
    let record = || (subject.clone(), PublishMessage::build().payload(payload.clone()).message_id(&id));
    let stored = publish_until_confirmed(shared, record, Some(RECORD_CONFIRM), Some(RECORD_PATIENCE), |error, _| {
        tracing::debug!(event = %event.id, error, "attempt record not stored yet; trying again");
    })
    .await;
    if let Err(error) = stored {
        tracing::warn!(event = %event.id, error, "could not record the attempt");
    }
}

/// The name an outcome has in records and metrics.
pub(crate) fn outcome_name(outcome: &DeliveryOutcome) -> &'static str {
    match outcome {
        DeliveryOutcome::Delivered => "delivered",
        DeliveryOutcome::Cancelled => "cancelled",
        DeliveryOutcome::Retry { .. } => "retry",
        DeliveryOutcome::DeadLetter { .. } => "dead_letter",
    }
}

/// The attempts of a delivery a record settles, so that a copy of one of them handed out again
/// is not sent: all of them if it was delivered or dead-lettered (sending it again would make a
/// second attempt and a second dead letter; an operator's redrive is a new message, stored after
/// the record); those up to its own if it failed and its retry was stored (the retry carries
/// the delivery on); none otherwise.
pub(crate) fn settles(record: &proto::Attempt) -> u32 {
    match record.outcome.as_str() {
        "delivered" | "dead_letter" | "cancelled" => u32::MAX,
        "retry" if record.retry_stored => record.attempt,
        _ => 0,
    }
}

/// What a record that settles attempts up to `settles` says of a delivery at `attempt`.
pub(crate) fn says(settles: u32, attempt: u32) -> Record {
    if settles >= attempt.max(1) { Record::Delivered } else { Record::NotDelivered }
}

/// One record as read back.
struct Stored {
    sequence: u64,
    time: OffsetDateTime,
    attempt: proto::Attempt,
}

impl Stored {
    fn says(&self, attempt: u32) -> Record {
        says(settles(&self.attempt), attempt)
    }
}

#[derive(serde::Deserialize)]
struct GetResponse {
    message: jetstream::stream::RawMessage,
}

/// Record reads one replica has at nats-server at once. After a leader change every message
/// of a backlog stored before it is checked: unbounded, a few thousand reads at once queued at
/// the stream leader's API, timed out together and made the records "unreadable" for everyone
/// (500 timeouts a second, 15 s after the cluster was whole again, in the node chaos test),
/// and deliveries went out unchecked after their waits.
const READS_AT_ONCE: usize = 32;

/// How long a check waits for its turn before the records count as unreadable for now (the
/// message waits, see [`Record::Unreadable`]).
const READ_TURN: Duration = Duration::from_secs(2);

/// How long a read waits for its answer. A stream leader answers in milliseconds; while the
/// stream elects one, nobody answers, and reads waiting out the client's 5 s request timeout
/// held every turn: the checks queued behind them counted as unreadable for seconds after the
/// leader was back.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The turns of [`READS_AT_ONCE`].
pub(crate) struct Reads(tokio::sync::Semaphore);

impl Default for Reads {
    fn default() -> Self {
        Self(tokio::sync::Semaphore::new(READS_AT_ONCE))
    }
}

/// One `STREAM.MSG.GET` of the attempts stream (answered by its leader). `None`: no such
/// message. A record that does not decode is skipped over as if it were another event's.
async fn get(
    shared: &Shared,
    partition: nats::Partition,
    request: serde_json::Value,
) -> Result<Option<Stored>, String> {
    let Ok(turn) = tokio::time::timeout(READ_TURN, shared.record_reads.0.acquire()).await else {
        return Err(format!("more than {READS_AT_ONCE} record reads waiting for nats-server"));
    };
    let _turn = turn.expect("never closed");
    let subject = format!("STREAM.MSG.GET.{}", partition.attempts_stream());
    let answer = tokio::time::timeout(READ_TIMEOUT, shared.js.request(subject, &request));
    let response: Response<GetResponse> =
        answer.await.map_err(|_| format!("no answer within {READ_TIMEOUT:?}"))?.map_err(|e| e.to_string())?;
    let raw = match response {
        Response::Ok(found) => found.message,
        Response::Err { error } if error.error_code() == ErrorCode::NO_MESSAGE_FOUND => return Ok(None),
        Response::Err { error } => return Err(error.to_string()),
    };
    let message = jetstream::message::StreamMessage::try_from(raw).map_err(|e| e.to_string())?;
    Ok(Some(Stored {
        sequence: message.sequence,
        time: message.time,
        attempt: proto::Attempt::decode(message.payload.as_ref()).unwrap_or_default(),
    }))
}

/// Whether `event` reached `subscription` after `since`: the last attempt record for the pair,
/// stored after that, says delivered. A dispatcher that died between the subscriber's 2xx and
/// its ack leaves exactly that behind. `since` is the earliest a record that should stop this
/// send can have been stored: when the message now handed out again was stored, so that an
/// explicit replay or redrive (a new message, stored after any earlier record) is still sent.
pub(crate) async fn delivered_since(
    shared: &Shared,
    tenant: &str,
    subscription: &str,
    event: &str,
    since: OffsetDateTime,
    attempt: u32,
) -> Record {
    let (record, label) = match find(shared, tenant, subscription, event, since, attempt).await {
        Ok(Found::Read(record)) => (record, check_label(record)),
        Ok(Found::TooMany) => (Record::NotDelivered, "inconclusive"),
        Err(error) => {
            tracing::debug!(event, subscription, error, "cannot read the attempt records; the delivery waits");
            (Record::Unreadable, check_label(Record::Unreadable))
        }
    };
    metrics::RECORD_CHECKS.inc(&[label]);
    record
}

/// What reading the records found.
enum Found {
    /// What they say.
    Read(Record),
    /// More records to read than a check reads: the delivery is sent (at least once first).
    TooMany,
}

fn check_label(record: Record) -> &'static str {
    match record {
        Record::Delivered => "delivered",
        Record::NotDelivered => "not_delivered",
        Record::Unreadable => "unreadable",
    }
}

async fn find(
    shared: &Shared,
    tenant: &str,
    subscription: &str,
    event: &str,
    since: OffsetDateTime,
    attempt: u32,
) -> Result<Found, String> {
    let partition = shared.partitions.of_subscription(subscription);
    let subject = partition.attempt_subject(tenant, subscription, event);
    let newest = get(shared, partition, serde_json::json!({ "last_by_subj": subject })).await?;
    let found = match newest {
        // Nothing in the partition since `since`: no walk needed.
        None => None,
        Some(newest) if newest.time < since => None,
        Some(newest) if newest.attempt.event_id == event => Some(newest.says(attempt)),
        // Newer records of other events: the recent records in memory tell, or the partition
        // is read (a check reaching further back than they do, or the stream unreadable).
        Some(newest) => match shared.recent[usize::from(partition.0)]
            .last(&shared.js, subscription, event, since, newest.sequence)
            .await
        {
            Ok(Some(settled)) => Some(says(settled, attempt)),
            Ok(None) => None,
            Err(crate::recent::Beyond::Unreadable(error)) => return Err(error),
            Err(crate::recent::Beyond::Window) => {
                match walk(shared, partition, &subject, event, since, attempt, newest.sequence).await? {
                    Walked::Complete(last) => last,
                    Walked::Incomplete(Some(record)) => Some(record),
                    Walked::Incomplete(None) => {
                        tracing::warn!(
                            event,
                            subject,
                            limit = WALK_LIMIT,
                            "more attempt records since the delivery was stored than a check reads; sending it again"
                        );
                        return Ok(Found::TooMany);
                    }
                }
            }
        },
    };
    match found {
        Some(record) => Ok(Found::Read(record)),
        None => legacy(shared, tenant, subscription, event, since, attempt).await.map(Found::Read),
    }
}

/// What a walk over a partition found of one event: the last of its records read, if any.
enum Walked {
    /// Read to the end.
    Complete(Option<Record>),
    /// Stopped at [`WALK_LIMIT`].
    Incomplete(Option<Record>),
}

/// Reads the partition from `since` up to `newest` (its last record, known not to be `event`'s)
/// and returns what the last record of `event` says, if there is one. One ordered consumer
/// reads the slice in a single pass: `next_by_subj` gets one at a time made nats-server search
/// its blocks again for every record (~1.8 ms of its CPU each on a million records).
async fn walk(
    shared: &Shared,
    partition: nats::Partition,
    subject: &str,
    event: &str,
    since: OffsetDateTime,
    attempt: u32,
    newest: u64,
) -> Result<Walked, String> {
    use futures::StreamExt as _;
    let stream = shared.js.get_stream_no_info(partition.attempts_stream()).await.map_err(|e| e.to_string())?;
    let config = consumer::pull::OrderedConfig {
        filter_subject: subject.to_owned(),
        deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: since },
        ..Default::default()
    };
    let reader = stream.create_consumer(config).await.map_err(|e| e.to_string())?;
    let mut records = reader.messages().await.map_err(|e| e.to_string())?.take(WALK_LIMIT);
    let mut last = None;
    loop {
        let next =
            tokio::time::timeout(WALK_WAIT, records.next()).await.map_err(|_| "reading the records timed out")?;
        let Some(message) = next else { return Ok(Walked::Incomplete(last)) };
        let message = message.map_err(|e| e.to_string())?;
        let info = message.info().map_err(|e| e.to_string())?;
        let sequence = info.stream_sequence;
        // nats-server starts a consumer whose start time is past its last message at the first
        // one (2.15): what precedes `since` is not in the slice.
        if info.published >= since
            && let Ok(record) = proto::Attempt::decode(message.payload.as_ref())
            && record.event_id == event
        {
            last = Some(says(settles(&record), attempt));
        }
        if sequence >= newest {
            return Ok(Walked::Complete(last));
        }
    }
}

/// How long a walk waits for its next record before the records count as unreadable.
const WALK_WAIT: Duration = Duration::from_secs(5);

/// What a record of the per-event layout of before says, while such records may be retained.
async fn legacy(
    shared: &Shared,
    tenant: &str,
    subscription: &str,
    event: &str,
    since: OffsetDateTime,
    attempt: u32,
) -> Result<Record, String> {
    if shared.legacy_records_until.is_none_or(|until| OffsetDateTime::now_utc() >= until) {
        return Ok(Record::NotDelivered);
    }
    let subject = nats::legacy_attempt_subject(tenant, subscription, event);
    // The layout of before had one attempts stream: partition 0's.
    Ok(match get(shared, nats::Partition::ZERO, serde_json::json!({ "last_by_subj": subject })).await? {
        // An event id that looks like a partition ("7") shares its subject with new records.
        Some(r) if r.time >= since && r.attempt.event_id == event => r.says(attempt),
        _ => Record::NotDelivered,
    })
}

/// How far back an ordered lane looks for a delivery's records when the order of its records
/// cannot tell.
const ORDERED_LOOKBACK: time::Duration = time::Duration::minutes(15);

/// The check of an ordered (FIFO) lane, made on every delivery it hands out: one read. The lane
/// sends its events in their `HERALD_EVENTS` order, one at a time, and records each attempt
/// before it moves on, so the subscription's newest record, if the lane made it, tells: the
/// same event → what it says; an earlier one → not sent yet. Otherwise — a later event (the lane
/// has moved past this one, or it was overtaken), a resend, a record of before the
/// subscription was ordered, or of before event sequences were recorded — the event's own
/// records are looked up: delivered, it is not sent again. `stored` is when the lane message was stored.
pub(crate) async fn delivered_in_order(
    shared: &Shared,
    delivery: &proto::Delivery,
    event: &proto::Event,
    stored: OffsetDateTime,
) -> Record {
    let partition = shared.partitions.of_subscription(&delivery.subscription_id);
    let filter = partition.subscription_attempts_filter(&event.tenant, &delivery.subscription_id);
    let newest = get(shared, partition, serde_json::json!({ "last_by_subj": filter })).await;
    let sequence = delivery.event_sequence;
    let record = match newest {
        Err(error) => {
            tracing::warn!(event = %event.id, subscription = %delivery.subscription_id, error, "cannot read the attempt records; the delivery waits");
            Record::Unreadable
        }
        Ok(None) => Record::NotDelivered,
        Ok(Some(newest)) if newest.attempt.event_id == event.id => newest.says(delivery.attempt),
        Ok(Some(newest))
            if newest.attempt.ordered
                && !newest.attempt.resent
                && newest.attempt.event_sequence > 0
                && sequence > 0
                && sequence > newest.attempt.event_sequence =>
        {
            Record::NotDelivered
        }
        Ok(Some(newest)) => {
            // A later event's record (the lane has moved past this one, or this one was
            // overtaken: the ordered fan-out's pin moved while its replica still held it), or one
            // that cannot tell: the event's own records decide. Overtaken and never sent, it is
            // sent now, late rather than never.
            let later = newest.attempt.ordered && sequence > 0 && sequence < newest.attempt.event_sequence;
            let own = delivered_since(
                shared,
                &event.tenant,
                &delivery.subscription_id,
                &event.id,
                stored - ORDERED_LOOKBACK,
                delivery.attempt,
            )
            .await;
            if later && own == Record::NotDelivered {
                tracing::warn!(event = %event.id, subscription = %delivery.subscription_id, "ordered lane: a later event was delivered before this one; sending it now, out of order, rather than never");
            }
            return own;
        }
    };
    metrics::RECORD_CHECKS.inc(&[check_label(record)]);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_retry_settles_its_own_attempt_and_earlier_ones_only() {
        let record = |outcome: &str, attempt, retry_stored| proto::Attempt {
            outcome: outcome.into(),
            attempt,
            retry_stored,
            ..Default::default()
        };
        let settles_attempt = |r: &proto::Attempt, attempt| says(settles(r), attempt) == Record::Delivered;
        let delivered = record("delivered", 2, false);
        assert!(settles_attempt(&delivered, 1) && settles_attempt(&delivered, 9));
        let dead = record("dead_letter", 5, false);
        assert!(settles_attempt(&dead, 5) && settles_attempt(&dead, 6));
        // Attempt 2 failed and its retry (attempt 3) is stored: a copy of attempt 1 or 2
        // handed out again is settled; the retry itself is not.
        let stored = record("retry", 2, true);
        assert!(settles_attempt(&stored, 1) && settles_attempt(&stored, 2));
        assert!(!settles_attempt(&stored, 3));
        // Its retry not stored (or a record of before the flag): the message comes back and
        // is sent.
        assert!(!settles_attempt(&record("retry", 2, false), 2));
        assert!(!settles_attempt(&record("skipped", 1, false), 1));
        // Fan-out checks its first attempts as attempt 1; a delivery without a count is one.
        assert!(settles_attempt(&record("retry", 1, true), 0));
    }

    #[tokio::test]
    async fn a_check_asks_again_in_place_until_the_records_are_readable_or_its_time_is_up() {
        let (hold, poll) = (Duration::from_millis(300), Duration::from_millis(20));
        let asked = std::sync::atomic::AtomicU32::new(0);
        // Readable at the fourth asking: found then, not after the hold.
        let started = tokio::time::Instant::now();
        let found = readable_within(
            hold,
            poll,
            || async {
                let n = asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n < 4 { Record::Unreadable } else { Record::Delivered }
            },
            |r| *r == Record::Unreadable,
        )
        .await;
        assert_eq!(found, Record::Delivered);
        assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 4);
        assert!(started.elapsed() < hold, "{:?}", started.elapsed());
        // Never readable: given up within the hold, still unreadable.
        asked.store(0, std::sync::atomic::Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        let found = readable_within(
            hold,
            poll,
            || async {
                asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Record::Unreadable
            },
            |r| *r == Record::Unreadable,
        )
        .await;
        assert_eq!(found, Record::Unreadable);
        assert!(started.elapsed() <= hold + poll, "{:?}", started.elapsed());
        assert!(asked.load(std::sync::atomic::Ordering::Relaxed) >= 5, "asked again in place");
    }
}
