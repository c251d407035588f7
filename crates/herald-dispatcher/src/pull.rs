//! The pull loop every consumer of the dispatcher runs: at most `in_hand` messages held at
//! once, an optional pace (for rate-limited lanes), pinned pulls for priority groups, and a
//! clean stop that lets handlers finish (or abandons them, unacked, on a hard stop).
//!
//! Ack waits are short (seconds), so that a message lost on its way to a replica (a pull whose
//! NATS node died) or held by a replica that died comes back in seconds; every message a
//! replica holds longer than a fifth of its ack wait is kept by telling JetStream "still
//! working" ([`Progress`]), however long its attempt, stores or checks take.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use herald_core::metrics;

/// How a consumer is pulled.
#[derive(Debug, Clone)]
pub(crate) struct Pull {
    /// Messages held at once (being handled, or waiting their turn).
    pub slots: Slots,
    /// Pull as a member of the pinned priority group.
    pub pinned: bool,
    /// Messages per second handed to handlers, at most (0: no pace).
    pub rate_per_sec: u32,
    /// The consumer's ack wait: held messages are told in progress five times within it, and
    /// a pull whose buffered messages may have outlived it is dropped (see [`consume`]).
    pub ack_wait: Duration,
}

/// The messages a pull may hold at once, its own or shared with other pulls: every partition's
/// fan-out (and delivery) consumer draws on one budget per replica, so a replica holds as many
/// events on six partitions as on one. (Six budgets of their own held six times as many events
/// as fan-out had inline slots for: 11 % of first attempts were made inline instead of 65 %,
/// and nats-server spent twice the CPU per delivery storing the rest.)
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    permits: Arc<tokio::sync::Semaphore>,
    in_hand: usize,
    pulls: usize,
}

impl Slots {
    /// `in_hand` slots for one pull.
    pub(crate) fn own(in_hand: usize) -> Self {
        Self::shared(in_hand, 1)
    }

    /// `in_hand` slots shared by `pulls` pulls (each given a clone).
    pub(crate) fn shared(in_hand: usize, pulls: usize) -> Self {
        let in_hand = in_hand.max(1);
        Self { permits: Arc::new(tokio::sync::Semaphore::new(in_hand)), in_hand, pulls: pulls.max(1) }
    }

    /// Messages asked for per pull: about a pull's share of the slots (buffered messages age
    /// towards ack_wait), but never tiny batches: the client re-requests only below half a
    /// batch, and with a batch of one a message that outruns its request's bookkeeping leaves
    /// no request open, stalling the stream until the next heartbeat check. Small lanes are
    /// bounded by the server's max_ack_pending.
    fn batch(&self) -> usize {
        (self.in_hand / self.pulls).clamp(16, 256)
    }
}

/// The messages this replica holds, with when each is next told "in progress"; one task
/// ([`Progress::tell`]) tells JetStream. A task per message cost the ordered fan-out 14 % more
/// CPU per delivery in the benchmark.
#[derive(Clone, Default)]
pub(crate) struct Progress(Arc<Mutex<Holding>>);

/// Slots reused as messages are let go: no hashing on the path of every message.
#[derive(Default)]
struct Holding {
    slots: Vec<Option<Told>>,
    free: Vec<usize>,
}

struct Told {
    reply: async_nats::Subject,
    next: Instant,
    every: Duration,
}

/// A message taken from a pull, with what its hand-out says (read once, here).
pub(crate) struct Taken {
    pub(crate) msg: jetstream::Message,
    /// Times JetStream has handed it out, this one included.
    pub(crate) handed_out: i64,
    /// Its stream sequence.
    pub(crate) sequence: u64,
    /// When it was stored.
    pub(crate) published: time::OffsetDateTime,
    /// Handed out under a consumer sequence this pull has seen before, although its count may
    /// say otherwise (see [`Rewinds`]).
    pub(crate) rewound: bool,
}

/// Noticing a consumer that hands out again, as new, what it had handed out before.
///
/// On a cluster, a consumer's new leader starts from the state the old one had replicated:
/// messages the old leader handed out (and saw acked) shortly before it failed can come again
/// with a delivery count of 1, under consumer sequences already used. Nothing else marks
/// them, so each message's consumer sequence is compared with the highest this pull has seen:
/// one at or below it was handed out before, and its attempt records are consulted before
/// anything is sent. Replicas share a consumer's sequence, so each sees such a rewind in its
/// own share of the messages. Compared as they arrive, in the pull's order: the handlers run
/// in any order, and comparing there took ordinary messages for rewinds.
#[derive(Debug, Default)]
struct Rewinds {
    highest: Option<u64>,
}

/// A sequence further than this below the highest seen is not a rewind but a consumer made
/// anew under the same name: counting starts again there.
const MAX_REWIND: u64 = 100_000;

impl Rewinds {
    /// True if `sequence` is not above every one seen before.
    fn seen(&mut self, sequence: u64) -> bool {
        match self.highest {
            Some(h) if sequence <= h && h - sequence < MAX_REWIND => {
                metrics::CONSUMER_REWINDS.inc(&[]);
                true
            }
            _ => {
                self.highest = Some(sequence);
                false
            }
        }
    }
}

/// One message held, until dropped.
pub(crate) struct Held {
    progress: Progress,
    slot: usize,
}

/// How often [`Progress::tell`] looks for messages due.
const TELL_TICK: Duration = Duration::from_millis(250);

impl Progress {
    /// Notes `msg` as held until the returned guard is dropped: told in progress every `every`.
    pub(crate) fn hold(&self, msg: &jetstream::Message, every: Duration) -> Option<Held> {
        let reply = msg.reply.clone()?;
        let told = Some(Told { reply, next: Instant::now() + every, every });
        let mut holding = self.0.lock().expect("progress lock");
        let slot = match holding.free.pop() {
            Some(slot) => {
                holding.slots[slot] = told;
                slot
            }
            None => {
                holding.slots.push(told);
                holding.slots.len() - 1
            }
        };
        Some(Held { progress: self.clone(), slot })
    }

    /// Messages held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().expect("progress lock").slots.iter().flatten().count()
    }

    /// The reply subjects of the messages due to be told, moving their next time on.
    fn due(&self, now: Instant) -> Vec<async_nats::Subject> {
        let mut holding = self.0.lock().expect("progress lock");
        let mut due = Vec::new();
        for told in holding.slots.iter_mut().flatten().filter(|t| t.next <= now) {
            told.next = now + told.every;
            due.push(told.reply.clone());
        }
        due
    }

    /// Says "still working" (`+WPI`) for every message held past its time, until `shutdown`.
    pub(crate) async fn tell(self, client: async_nats::Client, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(TELL_TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            for reply in self.due(Instant::now()) {
                let _ = client.publish(reply, bytes::Bytes::from_static(b"+WPI")).await;
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut holding = self.progress.0.lock().expect("progress lock");
        holding.slots[self.slot] = None;
        holding.free.push(self.slot);
    }
}

/// Pulls until `shutdown`. For each message `inline` runs first, in message order; the future
/// it returns (if any) is spawned, holding the message's slot until it ends; the message is
/// told in progress ([`Progress`]) from when it is taken until then. Handlers still running at
/// `hard_stop` are abandoned, leaving their messages unacked.
pub(crate) async fn consume<F, I, S>(
    consumer: jetstream::consumer::PullConsumer,
    pull: Pull,
    progress: Progress,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    mut inline: F,
) where
    F: FnMut(Taken) -> I,
    I: Future<Output = Option<S>>,
    S: Future<Output = ()> + Send + 'static,
{
    let name = consumer.cached_info().name.clone();
    // Lanes are counted together: a label per subscription would grow without bound.
    let kind: &'static str = match name.as_str() {
        herald_core::nats::FANOUT_CONSUMER => herald_core::nats::FANOUT_CONSUMER,
        herald_core::nats::ORDERED_FANOUT_CONSUMER => herald_core::nats::ORDERED_FANOUT_CONSUMER,
        herald_core::nats::DELIVER_CONSUMER => herald_core::nats::DELIVER_CONSUMER,
        _ => "lanes",
    };
    // A consumer that never hands out more than the slots here buffers nothing while every
    // slot is taken (a lane, the ordered fan-out).
    let may_buffer = match consumer.cached_info().config.max_ack_pending {
        limit if limit > 0 => limit as usize > pull.slots.in_hand,
        _ => true,
    };
    let permits = pull.slots.permits.clone();
    let tasks = TaskTracker::new();
    let batch = pull.slots.batch();
    let interval = (pull.rate_per_sec > 0).then(|| Duration::from_secs_f64(1.0 / pull.rate_per_sec as f64));
    let mut next_slot = Instant::now();
    let mut rewinds = Rewinds::default();
    'outer: while !shutdown.is_cancelled() {
        // Short pulls with heartbeats: a pinned pull keeps its pin fresh, and a pull stream whose
        // request went missing (it happens with small batches) notices within seconds instead of
        // idling until a 30 s expiry.
        let mut builder = consumer
            .stream()
            .max_messages_per_batch(batch)
            .expires(Duration::from_secs(4))
            .heartbeat(Duration::from_secs(1));
        if pull.pinned {
            builder = builder.group(herald_core::nats::PRIORITY_GROUP);
        }
        let mut messages = match builder.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer = %name, error = %e, "cannot pull; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut consecutive_errors = 0u64;
        loop {
            let waiting = Instant::now();
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            };
            // Messages pulled ahead wait in the client's buffer, untold, while every slot is
            // taken: after a long wait they may have reached their ack wait and been handed to
            // another replica, and sending them here too would send them twice. The pull is
            // dropped with its buffer (those come back after their ack wait) and made afresh.
            if may_buffer && waiting.elapsed() > pull.ack_wait / 2 {
                drop(permit);
                tracing::info!(consumer = %name, waited = ?waiting.elapsed(), "every slot was taken for long; pulling afresh");
                metrics::PULLS_DROPPED.inc(&[kind]);
                continue 'outer;
            }
            let next = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                n = messages.next() => n,
            };
            match next {
                Some(Ok(msg)) => {
                    consecutive_errors = 0;
                    let (handed_out, sequence, published, consumer_sequence) = match msg.info() {
                        Ok(i) => (i.delivered, i.stream_sequence, i.published, i.consumer_sequence),
                        Err(e) => {
                            tracing::warn!(consumer = %name, error = %e, "message without JetStream metadata; skipped");
                            continue;
                        }
                    };
                    let held = progress.hold(&msg, pull.ack_wait / 5);
                    if handed_out > 1 {
                        metrics::HANDED_OUT_AGAIN.inc(&[kind]);
                    }
                    let rewound = rewinds.seen(consumer_sequence);
                    let msg = Taken { msg, handed_out, sequence, published, rewound };
                    if let Some(interval) = interval {
                        next_slot = next_slot.max(Instant::now());
                        tokio::time::sleep_until(next_slot).await;
                        next_slot += interval;
                    }
                    let Some(work) = inline(msg).await else { continue };
                    // Boxed: the task then moves a pointer, not the whole state machine, into place.
                    let work = Box::pin(work);
                    let hard_stop = hard_stop.clone();
                    tasks.spawn(async move {
                        tokio::select! {
                            _ = work => {}
                            _ = hard_stop.cancelled() => {}
                        }
                        drop(held);
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    // Missed heartbeats and the like while NATS reconnects; do not spin on them.
                    drop(permit);
                    consecutive_errors += 1;
                    tracing::debug!(consumer = %name, error = %e, "pull stream hiccup");
                    // No heartbeat means no pull request is open on the server: start afresh
                    // rather than wait for the stream to notice.
                    let missing = e.kind() == jetstream::consumer::pull::MessagesErrorKind::MissingHeartbeat;
                    if missing || consecutive_errors >= 10 {
                        tracing::warn!(consumer = %name, error = %e, "pull stream keeps failing; re-creating");
                        break;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'outer,
                        _ = tokio::time::sleep(Duration::from_millis(100 * consecutive_errors)) => {}
                    }
                }
                None => {
                    tracing::warn!(consumer = %name, "pull stream ended; re-creating");
                    break;
                }
            }
        }
    }
    tasks.close();
    tasks.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_not_above_the_highest_seen_is_a_rewind() {
        let mut r = Rewinds::default();
        assert!(!r.seen(1));
        assert!(!r.seen(5));
        assert!(r.seen(3), "handed out again under a used sequence");
        assert!(r.seen(5));
        assert!(!r.seen(6), "past the highest: new again");
        assert!(!r.seen(6 + MAX_REWIND));
        assert!(!r.seen(1), "far below: the consumer was made anew");
        assert!(!r.seen(2));
        assert!(r.seen(2));
    }

    #[test]
    fn a_held_message_is_told_every_time_it_is_due_until_it_is_let_go() {
        let progress = Progress::default();
        let every = Duration::from_secs(2);
        let t0 = Instant::now();
        let held = {
            let mut holding = progress.0.lock().unwrap();
            holding.slots.push(Some(Told { reply: "$JS.ACK.a".into(), next: t0 + every, every }));
            holding.slots.push(Some(Told { reply: "$JS.ACK.b".into(), next: t0 + every * 3, every }));
            Held { progress: progress.clone(), slot: 0 }
        };
        assert!(progress.due(t0).is_empty(), "nothing is due before its time");
        assert_eq!(progress.due(t0 + every), vec![async_nats::Subject::from("$JS.ACK.a")]);
        assert!(progress.due(t0 + every).is_empty(), "told once per period");
        let both = progress.due(t0 + every * 3);
        assert_eq!(both.len(), 2, "{both:?}");
        drop(held);
        assert_eq!(progress.len(), 1);
        assert_eq!(progress.due(t0 + every * 10), vec![async_nats::Subject::from("$JS.ACK.b")]);
    }
}
