//! Delivery statistics, counted where the attempts are made: each replica adds every attempt
//! (and every event it takes into fan-out) to per-minute counters by subscription and tenant,
//! and publishes what changed every `HERALD_STATS_FLUSH` as one delta on
//! `herald.stats.minutes.{hour}` (`HERALD_STATS`). Gateways build their statistics from those
//! deltas and from the hours' seals, so what statistics cost grows with subscriptions × minutes,
//! not with deliveries × gateways.
//!
//! A replica that is killed loses what it counted since its last flush (at most one interval);
//! one that stops flushes first. A delta that cannot be stored stays counted and goes out with
//! the next one; its message id makes a delta stored twice count once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message as _;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use herald_core::{metrics, nats, proto};

/// Counts of one subscription in one minute.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    attempts: u64,
    delivered: u64,
    failed: u64,
    dead_lettered: u64,
    latency_ms_total: u64,
}

#[derive(Debug, Default)]
struct Minute {
    /// Subscription → (tenant, counts).
    subs: HashMap<String, (String, Counts)>,
    /// Tenant → events taken in.
    events: HashMap<String, u64>,
}

/// The counters of one replica since its last flush.
#[derive(Debug, Default)]
pub(crate) struct Rollups {
    minutes: Mutex<BTreeMap<i64, Minute>>,
}

fn minute_of(at: OffsetDateTime) -> i64 {
    let t = at.unix_timestamp();
    t - t.rem_euclid(60)
}

impl Rollups {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Minute>> {
        self.minutes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one attempt, recorded with `outcome` (`delivered`, `retry`, `dead_letter`).
    pub(crate) fn attempt(&self, at: OffsetDateTime, subscription: &str, tenant: &str, outcome: &str, ms: u64) {
        let mut minutes = self.lock();
        let minute = minutes.entry(minute_of(at)).or_default();
        let counts = match minute.subs.get_mut(subscription) {
            Some((_, counts)) => counts,
            None => {
                &mut minute
                    .subs
                    .entry(subscription.to_owned())
                    .or_insert_with(|| (tenant.to_owned(), Counts::default()))
                    .1
            }
        };
        counts.attempts += 1;
        counts.latency_ms_total += ms;
        match outcome {
            "delivered" => counts.delivered += 1,
            "retry" => counts.failed += 1,
            "dead_letter" => counts.dead_lettered += 1,
            _ => {}
        }
    }

    /// Counts one event taken into fan-out.
    pub(crate) fn event(&self, at: OffsetDateTime, tenant: &str) {
        let mut minutes = self.lock();
        let minute = minutes.entry(minute_of(at)).or_default();
        match minute.events.get_mut(tenant) {
            Some(n) => *n += 1,
            None => {
                minute.events.insert(tenant.to_owned(), 1);
            }
        }
    }

    /// Takes what was counted, as entries by hour.
    fn take(&self) -> BTreeMap<i64, Vec<proto::StatsEntry>> {
        let taken = std::mem::take(&mut *self.lock());
        let mut by_hour: BTreeMap<i64, Vec<proto::StatsEntry>> = BTreeMap::new();
        for (at, minute) in taken {
            let entries = by_hour.entry(at - at.rem_euclid(3600)).or_default();
            for (tenant, events_in) in minute.events {
                entries.push(proto::StatsEntry { at, tenant, events_in, ..Default::default() });
            }
            for (subscription_id, (tenant, c)) in minute.subs {
                entries.push(proto::StatsEntry {
                    at,
                    subscription_id,
                    tenant,
                    attempts: c.attempts,
                    delivered: c.delivered,
                    failed: c.failed,
                    dead_lettered: c.dead_lettered,
                    latency_ms_total: c.latency_ms_total,
                    ..Default::default()
                });
            }
        }
        by_hour
    }

    /// Puts entries that could not be stored back, to go out with the next flush.
    fn restore(&self, entries: Vec<proto::StatsEntry>) {
        let mut minutes = self.lock();
        for e in entries {
            let minute = minutes.entry(e.at).or_default();
            if e.subscription_id.is_empty() {
                *minute.events.entry(e.tenant).or_default() += e.events_in;
            } else {
                let (_, c) = minute.subs.entry(e.subscription_id).or_insert_with(|| (e.tenant, Counts::default()));
                c.attempts += e.attempts;
                c.delivered += e.delivered;
                c.failed += e.failed;
                c.dead_lettered += e.dead_lettered;
                c.latency_ms_total += e.latency_ms_total;
            }
        }
    }
}

/// Entries per delta message: a flush with more goes out as several (each well under NATS's
/// default 1 MiB payload limit).
const ENTRIES_PER_MESSAGE: usize = 4_000;

/// How long one delta waits for its confirmation.
const CONFIRM: Duration = Duration::from_secs(5);

/// Publishes what `rollups` counted every `every` until `stop`, then once more.
pub(crate) async fn flush_every(
    rollups: std::sync::Arc<Rollups>,
    js: jetstream::Context,
    replica: String,
    every: Duration,
    stop: CancellationToken,
) {
    // Distinct per process: a replica restarted under the same name does not reuse ids.
    let instance = format!("{replica}:{}", OffsetDateTime::now_utc().unix_timestamp_nanos());
    let mut sequence = 0u64;
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(every) => false,
        };
        flush(&rollups, &js, &replica, &instance, &mut sequence).await;
        if stopping {
            return;
        }
    }
}

async fn flush(rollups: &Rollups, js: &jetstream::Context, replica: &str, instance: &str, sequence: &mut u64) {
    for (hour, entries) in rollups.take() {
        let mut rest = entries;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(ENTRIES_PER_MESSAGE));
            let chunk = std::mem::replace(&mut rest, tail);
            *sequence += 1;
            let delta = proto::StatsDelta { replica: replica.to_owned(), entries: chunk };
            let publish = PublishMessage::build()
                .payload(delta.encode_to_vec().into())
                .message_id(format!("stats:{instance}:{sequence}"));
            let stored = async {
                let ack =
                    js.send_publish(nats::stats_minutes_subject(hour), publish).await.map_err(|e| e.to_string())?;
                tokio::time::timeout(CONFIRM, ack)
                    .await
                    .map_err(|_| format!("not confirmed within {CONFIRM:?}"))?
                    .map_err(|e| e.to_string())
            };
            let stored = stored.await;
            metrics::STATS_DELTAS.inc(&[if stored.is_ok() { "stored" } else { "failed" }]);
            if let Err(error) = stored {
                // The next flush sends these again under a new id. Should this one have been
                // stored after all, they count twice: rarer than losing them.
                tracing::warn!(error, "statistics: could not store a delta; keeping it for the next flush");
                rollups.restore(delta.entries);
                rollups.restore(std::mem::take(&mut rest));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_go_out_by_hour_and_minute_and_come_back_when_not_stored() {
        let r = Rollups::default();
        let t = OffsetDateTime::from_unix_timestamp(1_800_003_599).unwrap(); // last second of an hour
        r.attempt(t, "s1", "acme", "delivered", 10);
        r.attempt(t, "s1", "acme", "retry", 30);
        r.attempt(t + Duration::from_secs(1), "s1", "acme", "dead_letter", 5);
        r.event(t, "acme");
        r.event(t, "acme");
        let taken = r.take();
        assert_eq!(taken.keys().copied().collect::<Vec<_>>(), vec![1_800_000_000, 1_800_003_600]);
        let first = &taken[&1_800_000_000];
        let sub = first.iter().find(|e| e.subscription_id == "s1").unwrap();
        assert_eq!(
            (sub.at, sub.attempts, sub.delivered, sub.failed, sub.latency_ms_total),
            (1_800_003_540, 2, 1, 1, 40)
        );
        let events = first.iter().find(|e| e.subscription_id.is_empty()).unwrap();
        assert_eq!((events.tenant.as_str(), events.events_in), ("acme", 2));
        assert!(r.take().is_empty(), "taken once");
        r.restore(first.clone());
        r.attempt(t, "s1", "acme", "delivered", 1);
        let again = r.take();
        let sub = again[&1_800_000_000].iter().find(|e| e.subscription_id == "s1").unwrap();
        assert_eq!((sub.attempts, sub.delivered), (3, 2));
    }
}
