//! What the attempt records of the last few minutes say, held in memory while record checks
//! need them: a check whose event's partition has newer records than its own would otherwise
//! read the partition's slice from nats-server, and nats-server finds a subject's records in a
//! block by scanning it (no per-subject index inside blocks), so a burst of checks (a backlog
//! handed out again, a crashed replica's deliveries) cost it tens of milliseconds each. Here one
//! ordered consumer reads the stream's tail once, from the earliest point a check asks for,
//! and catches up as later checks need newer records; every check is then a lookup.
//!
//! Bounded: records older than [`WINDOW`] are dropped (checks reaching further back read their
//! partition instead), and the whole index is dropped when no check has come for that long.
//! An entry is a 64-bit hash of the (subscription, event) pair with the record's time and
//! outcome: ~40 B, so 3,000 deliveries/s need ~20 MB for the window while checks last.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use async_nats::jetstream::consumer;
use futures::StreamExt as _;
use prost::Message as _;
use time::OffsetDateTime;

use herald_core::{nats, proto};

/// How far back the index reaches.
pub(crate) const WINDOW: time::Duration = time::Duration::minutes(3);

/// How much further back than the check that starts it the index is read from.
const RESTART_SLACK: time::Duration = time::Duration::seconds(30);

/// Most records one catch-up reads.
const READ_LIMIT: usize = 2_000_000;

/// How long a catch-up waits for the next record.
const READ_WAIT: Duration = Duration::from_secs(2);

/// How long checks are answered "unreadable" after a catch-up failed, and how long one waits
/// for another's catch-up.
const FAILED_PAUSE: Duration = Duration::from_secs(2);

pub(crate) struct RecentRecords {
    /// Whose attempts stream it reads.
    partition: nats::Partition,
    index: tokio::sync::Mutex<Option<Index>>,
    /// Until when the stream counts as unreadable after a catch-up failed (an election): the
    /// checks queued behind it answer at once instead of each waiting out its own read.
    failed_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

struct Index {
    /// Complete from this time on.
    from: OffsetDateTime,
    /// The next stream sequence to read.
    next: u64,
    /// (subscription, event) → the time and outcome of its last record.
    last: HashMap<u64, (OffsetDateTime, u32)>,
    /// Keys by the time of their record, to drop what leaves the window.
    order: VecDeque<(OffsetDateTime, u64)>,
    /// When a check last used it.
    used: OffsetDateTime,
    /// The consumer reading the stream, kept between catch-ups (creating one per check cost
    /// more than the reading).
    reader: Option<consumer::pull::Ordered>,
}

fn key(subscription: &str, event: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (subscription, event).hash(&mut h);
    h.finish()
}

impl RecentRecords {
    /// The index of `partition`'s records, empty until a check needs it.
    pub(crate) fn new(partition: nats::Partition) -> Self {
        Self { partition, index: Default::default(), failed_until: Default::default() }
    }

    /// What the last record of (`subscription`, `event`) stored at or after `since` says
    /// (the attempts it settles: [`crate::records::settles`]), reading the stream up to sequence `upto` first; `Ok(None)`:
    /// no such record. `Err` if the stream cannot be read, or `since` is beyond the window.
    pub(crate) async fn last(
        &self,
        js: &async_nats::jetstream::Context,
        subscription: &str,
        event: &str,
        since: OffsetDateTime,
        upto: u64,
    ) -> Result<Option<u32>, Beyond> {
        let now = OffsetDateTime::now_utc();
        if since < now - WINDOW {
            return Err(Beyond::Window);
        }
        let failed = || Beyond::Unreadable("the attempt records could not be read a moment ago".into());
        let paused = || {
            let until = self.failed_until.lock().unwrap_or_else(|e| e.into_inner());
            until.is_some_and(|u| tokio::time::Instant::now() < u)
        };
        let Ok(mut guard) = tokio::time::timeout(FAILED_PAUSE + READ_WAIT, self.index.lock()).await else {
            return Err(failed());
        };
        if guard.as_ref().is_some_and(|i| i.from > since || now - i.used > WINDOW) {
            *guard = None;
        }
        // Started a little before the check that starts it, so that checks reaching slightly
        // further back (events of a backlog, handed out again in any order) do not start over.
        let from = (since - RESTART_SLACK).max(now - WINDOW);
        let index = guard.get_or_insert_with(|| Index {
            from,
            next: 0,
            last: HashMap::new(),
            order: VecDeque::new(),
            used: now,
            reader: None,
        });
        index.used = now;
        // What the index has read it answers even while reading more fails: only checks that
        // need newer records wait out the pause.
        if index.next <= upto {
            if paused() {
                return Err(failed());
            }
            if let Err(error) = index.read(js, self.partition, upto).await {
                *self.failed_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(tokio::time::Instant::now() + FAILED_PAUSE);
                return Err(Beyond::Unreadable(error));
            }
        }
        index.forget_before(now - WINDOW);
        Ok(index.last.get(&key(subscription, event)).filter(|(at, _)| *at >= since).map(|(_, settles)| *settles))
    }
}

/// Why the index cannot answer.
#[derive(Debug)]
pub(crate) enum Beyond {
    /// The check reaches further back than the index keeps.
    Window,
    /// The stream could not be read.
    Unreadable(String),
}

impl Index {
    /// Reads every record from where it stopped (or from `from`) to sequence `upto`.
    async fn read(
        &mut self,
        js: &async_nats::jetstream::Context,
        partition: nats::Partition,
        upto: u64,
    ) -> Result<(), String> {
        let result = self.read_with_reader(js, partition, upto).await;
        if result.is_err() {
            // Started again from where it stopped, next time.
            self.reader = None;
        }
        result
    }

    async fn read_with_reader(
        &mut self,
        js: &async_nats::jetstream::Context,
        partition: nats::Partition,
        upto: u64,
    ) -> Result<(), String> {
        if self.reader.is_none() {
            let stream = js.get_stream_no_info(partition.attempts_stream()).await.map_err(|e| e.to_string())?;
            let deliver_policy = if self.next == 0 {
                consumer::DeliverPolicy::ByStartTime { start_time: self.from }
            } else {
                consumer::DeliverPolicy::ByStartSequence { start_sequence: self.next }
            };
            let config = consumer::pull::OrderedConfig {
                filter_subject: partition.attempts_filter(),
                deliver_policy,
                ..Default::default()
            };
            // A reader made while the stream elects its leader can wait out the client's 5 s
            // request timeout, with every check queued behind it: given up after READ_WAIT.
            let created = tokio::time::timeout(READ_WAIT, stream.create_consumer(config))
                .await
                .map_err(|_| format!("no reader of the records within {READ_WAIT:?}"))?
                .map_err(|e| e.to_string())?;
            self.reader = Some(created.messages().await.map_err(|e| e.to_string())?);
        }
        let reader = self.reader.as_mut().expect("set above");
        for _ in 0..READ_LIMIT {
            let next =
                tokio::time::timeout(READ_WAIT, reader.next()).await.map_err(|_| "reading the records timed out")?;
            let Some(message) = next else { return Err("the records' reader ended".into()) };
            let message = message.map_err(|e| e.to_string())?;
            let info = message.info().map_err(|e| e.to_string())?;
            let (sequence, at) = (info.stream_sequence, info.published);
            self.next = sequence + 1;
            // A consumer whose start time is past the last message starts at the first one
            // (nats-server 2.15): what precedes the window is skipped.
            if at >= self.from
                && let Ok(record) = proto::Attempt::decode(message.payload.as_ref())
            {
                let k = key(&record.subscription_id, &record.event_id);
                self.last.insert(k, (at, crate::records::settles(&record)));
                self.order.push_back((at, k));
            }
            if sequence >= upto {
                return Ok(());
            }
        }
        Err("more records than a catch-up reads".into())
    }

    /// Drops what was recorded before `horizon`; the index is then complete from there on.
    fn forget_before(&mut self, horizon: OffsetDateTime) {
        while let Some(&(at, k)) = self.order.front() {
            if at >= horizon {
                break;
            }
            self.order.pop_front();
            if self.last.get(&k).is_some_and(|(last_at, _)| *last_at <= at) {
                self.last.remove(&k);
            }
        }
        if self.from < horizon {
            self.from = horizon;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(from: OffsetDateTime) -> Index {
        Index { from, next: 0, last: HashMap::new(), order: VecDeque::new(), used: from, reader: None }
    }

    #[test]
    fn what_leaves_the_window_is_forgotten_but_a_later_record_of_the_pair_stays() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let at = |s: i64| t0 + time::Duration::seconds(s);
        let mut i = index(t0);
        for (s, sub, event, settles) in [(1, "s1", "e1", 0), (2, "s1", "e2", u32::MAX), (5, "s1", "e1", u32::MAX)] {
            let k = key(sub, event);
            i.last.insert(k, (at(s), settles));
            i.order.push_back((at(s), k));
        }
        i.forget_before(at(3));
        assert_eq!(i.from, at(3));
        // e2's only record left the window; e1's later record (delivered) is kept.
        assert_eq!(i.last.get(&key("s1", "e2")), None);
        assert_eq!(i.last.get(&key("s1", "e1")), Some(&(at(5), u32::MAX)));
        assert_eq!(i.order.len(), 1);
        assert_ne!(key("s1", "e1"), key("s2", "e1"));
        assert_ne!(key("s1", "e1"), key("s1e", "1"), "the pair, not the concatenation");
    }
}
