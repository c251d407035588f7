//! Reading the statistics from NATS: the deltas as they come, the seals of the window at start,
//! sealing each hour once it is over, and the operator tenant's `circuit.*` events.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use herald_core::registry::Registry;
use herald_core::secrets::{KeyRing, Written};
use herald_core::{nats, proto};

use super::*;

/// Follows the streams until `cancel`.
pub(crate) fn spawn(
    stats: Arc<Stats>,
    js: jetstream::Context,
    operator_tenant: String,
    partitions: nats::Partitions,
    keys: Arc<KeyRing>,
    registry: Arc<Registry>,
    cancel: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(follow_counts(stats.clone(), js.clone(), cancel.clone()))];
    if operator_tenant.is_empty() {
        stats.circuits_caught_up.store(true, Ordering::Relaxed);
    } else {
        let s = stats.clone();
        // The operator tenant's events are in one partition.
        let partition = partitions.of_tenant(&operator_tenant);
        tasks.push(tokio::spawn(follow(
            js.clone(),
            partition.events_stream(),
            format!("{}{operator_tenant}.circuit.>", partition.events_prefix()),
            consumer::DeliverPolicy::ByStartTime { start_time: OffsetDateTime::now_utc() - stats.window },
            cancel.clone(),
            move |msg| {
                let written = keys.operator_written(msg.payload, msg.mac);
                if written == Written::Forged {
                    herald_core::metrics::OPERATIONAL_FORGED.inc(&["gateway"]);
                } else if let Ok(e) = proto::Event::decode(msg.payload) {
                    s.record_circuit(&e, written, OffsetDateTime::now_utc().unix_timestamp());
                }
            },
            {
                let s = stats.clone();
                move || s.circuits_caught_up.store(true, Ordering::Relaxed)
            },
        )));
    }
    let s = stats;
    tasks.push(tokio::spawn(async move {
        for tick in 1u64.. {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            let now = OffsetDateTime::now_utc().unix_timestamp();
            if tick % 6 == 0 {
                s.prune(now);
                if registry.is_ready() {
                    s.prune_circuits(now, |sub| registry.find(sub).is_some());
                }
            }
            if s.counts_caught_up.load(Ordering::Relaxed) {
                seal(&s, &js, now).await;
            }
        }
    }));
    tasks
}

/// Reads back what the window holds, then follows the deltas as they are stored.
async fn follow_counts(stats: Arc<Stats>, js: jetstream::Context, cancel: CancellationToken) {
    let next = loop {
        let read = tokio::select! {
            _ = cancel.cancelled() => return,
            read = read_back(&stats, &js) => read,
        };
        match read {
            Ok(next) => break next,
            Err(e) => {
                tracing::warn!(error = %e, "statistics: reading them back failed; starting again");
                stats.reset();
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    stats.counts_caught_up.store(true, Ordering::Relaxed);
    let s = stats.clone();
    follow(
        js,
        nats::STATS_STREAM.to_owned(),
        "herald.stats.minutes.>".into(),
        consumer::DeliverPolicy::ByStartSequence { start_sequence: next },
        cancel,
        move |msg| {
            if let (Some(hour), Ok(delta)) = (hour_of(msg.subject), proto::StatsDelta::decode(msg.payload)) {
                s.apply_delta(msg.sequence, hour, &delta, OffsetDateTime::now_utc().unix_timestamp());
            }
        },
        || {},
    )
    .await
}

/// The hour a `herald.stats.minutes.{hour}` or `herald.stats.hours.{hour}.{chunk}` subject names.
fn hour_of(subject: &str) -> Option<i64> {
    let rest = subject.strip_prefix("herald.stats.")?;
    let rest = rest.strip_prefix("minutes.").or_else(|| rest.strip_prefix("hours."))?;
    rest.split('.').next()?.parse().ok()
}

/// A seal as its chunks are read.
#[derive(Default)]
struct Seal {
    chunks: u32,
    seen: std::collections::BTreeSet<u32>,
    through: u64,
    entries: Vec<proto::StatsEntry>,
}

/// Reads the window's complete seals, then the deltas that are needed besides (see
/// [`Stats::apply_delta`]), up to the stream's last message when it started. Returns the
/// sequence to follow from.
async fn read_back(stats: &Stats, js: &jetstream::Context) -> Result<u64, String> {
    let started = std::time::Instant::now();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let stream = js.get_stream(nats::STATS_STREAM).await.map_err(|e| e.to_string())?;
    let last = stream.cached_info().state.last_sequence;
    if last == 0 {
        return Ok(1);
    }
    let window_start = now - stats.window.as_secs() as i64 - 3600;
    let start_time = OffsetDateTime::from_unix_timestamp(window_start).map_err(|e| e.to_string())?;

    let mut seals: BTreeMap<i64, Seal> = BTreeMap::new();
    let seals_read = read_until(
        &stream,
        vec!["herald.stats.hours.>".into()],
        consumer::DeliverPolicy::ByStartTime { start_time },
        last,
        |_, subject, payload| {
            let (Some(hour), Ok(chunk)) = (hour_of(subject), proto::StatsSeal::decode(payload)) else { return };
            let seal = seals.entry(hour).or_default();
            if seal.seen.insert(chunk.chunk) {
                seal.chunks = chunk.chunks;
                seal.through = seal.through.max(chunk.through);
                seal.entries.extend(chunk.entries);
            }
        },
    )
    .await?;
    for (hour, seal) in seals {
        // A seal whose maker died half-way is not used: its hour's deltas are read instead.
        if seal.chunks > 0 && seal.seen.len() == seal.chunks as usize {
            stats.apply_seal(hour, seal.through, &seal.entries);
        }
    }

    let first_minute = stats.earliest(Interval::Minute, now);
    let mut needed = Vec::new();
    let mut subjects = stream.info_with_subjects("herald.stats.minutes.>").await.map_err(|e| e.to_string())?;
    while let Some(found) = subjects.next().await {
        let (subject, _) = found.map_err(|e| e.to_string())?;
        let Some(hour) = hour_of(&subject) else { continue };
        if hour + 3600 <= window_start {
            continue;
        }
        let needs = match stats.sealed_through(hour) {
            Some(through) if hour + 3600 <= first_minute => {
                let newest = stream.get_last_raw_message_by_subject(&subject).await.map_err(|e| e.to_string())?;
                newest.sequence > through
            }
            _ => true,
        };
        if needs {
            needed.push(subject);
        }
    }
    let mut deltas_read = 0;
    if !needed.is_empty() {
        needed.sort();
        deltas_read = read_until(&stream, needed, consumer::DeliverPolicy::All, last, |sequence, subject, payload| {
            if let (Some(hour), Ok(delta)) = (hour_of(subject), proto::StatsDelta::decode(payload)) {
                stats.apply_delta(sequence, hour, &delta, now);
            }
        })
        .await?;
    }
    tracing::info!(
        seals = seals_read,
        deltas = deltas_read,
        took_ms = started.elapsed().as_millis() as u64,
        "statistics read back"
    );
    Ok(last + 1)
}

/// Reads the messages of `filters` from `deliver_policy` up to sequence `last`; returns how many.
async fn read_until(
    stream: &jetstream::stream::Stream,
    filters: Vec<String>,
    deliver_policy: consumer::DeliverPolicy,
    last: u64,
    mut apply: impl FnMut(u64, &str, &[u8]),
) -> Result<u64, String> {
    let mut config = consumer::pull::OrderedConfig { deliver_policy, ..Default::default() };
    match <[String; 1]>::try_from(filters) {
        Ok([one]) => config.filter_subject = one,
        Err(many) => config.filter_subjects = many,
    }
    let consumer = stream.create_consumer(config).await.map_err(|e| e.to_string())?;
    let mut pending = consumer.cached_info().num_pending;
    let mut read = 0;
    if pending == 0 {
        return Ok(0);
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| e.to_string())?;
        let sequence = msg.info().map_err(|e| e.to_string())?.stream_sequence;
        if sequence > last {
            break;
        }
        apply(sequence, msg.subject.as_str(), &msg.payload);
        read += 1;
        pending -= 1;
        if pending == 0 || sequence == last {
            break;
        }
    }
    Ok(read)
}

/// Seals the hours that are due (see [`Stats::due_seals`]). Each chunk is stored only if its
/// subject holds nothing yet: another gateway may have sealed the hour first.
async fn seal(stats: &Stats, js: &jetstream::Context, now: i64) {
    'hours: for (hour, through, mut entries) in stats.due_seals(now) {
        entries.sort_by(|a, b| (&a.subscription_id, &a.tenant).cmp(&(&b.subscription_id, &b.tenant)));
        let chunks: Vec<Vec<proto::StatsEntry>> =
            if entries.is_empty() { vec![Vec::new()] } else { entries.chunks(SEAL_CHUNK).map(<[_]>::to_vec).collect() };
        let count = chunks.len() as u32;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let seal = proto::StatsSeal { hour, chunk: i as u32, chunks: count, through, entries: chunk };
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(seal.encode_to_vec().into())
                .expected_last_subject_sequence(0);
            let stored = match js.send_publish(nats::stats_hours_subject(hour, i as u32), publish).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match stored {
                Ok(_) => {}
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {}
                Err(e) => {
                    tracing::warn!(hour, error = %e, "statistics: could not seal an hour; trying again later");
                    continue 'hours;
                }
            }
        }
        stats.sealed(hour);
    }
}

/// One message as a follower sees it.
struct Seen<'a> {
    sequence: u64,
    subject: &'a str,
    payload: &'a [u8],
    /// Its `Herald-Operator-Mac` header, if any.
    mac: Option<&'a str>,
}

/// Reads `stream` (matching `filter`) from `deliver_policy`, then every new message as it is
/// stored, resuming after the last one read when the consumer fails.
async fn follow(
    js: jetstream::Context,
    stream: String,
    filter: String,
    deliver_policy: consumer::DeliverPolicy,
    cancel: CancellationToken,
    mut apply: impl FnMut(Seen<'_>) + Send,
    caught_up: impl Fn() + Send,
) {
    let mut next: Option<u64> = None;
    loop {
        let deliver_policy = match next {
            Some(start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
            None => deliver_policy,
        };
        let read = async {
            let stream = js.get_stream(&stream).await.map_err(|e| e.to_string())?;
            let config =
                consumer::pull::OrderedConfig { filter_subject: filter.clone(), deliver_policy, ..Default::default() };
            let consumer = stream.create_consumer(config).await.map_err(|e| e.to_string())?;
            let mut pending = consumer.cached_info().num_pending;
            if pending == 0 {
                caught_up();
            }
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            while let Some(msg) = messages.next().await {
                let msg = msg.map_err(|e| e.to_string())?;
                let sequence = msg.info().map_err(|e| e.to_string())?.stream_sequence;
                let mac = msg.headers.as_ref().and_then(|h| h.get(nats::OPERATOR_MAC_HEADER)).map(|v| v.as_str());
                apply(Seen { sequence, subject: msg.subject.as_str(), payload: msg.payload.as_ref(), mac });
                next = Some(sequence + 1);
                if pending > 0 {
                    pending -= 1;
                    if pending == 0 {
                        caught_up();
                    }
                }
            }
            Ok::<(), String>(())
        };
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = read => outcome,
        };
        if let Err(e) = outcome {
            tracing::warn!(stream, error = %e, "statistics: following the stream failed; resuming");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
