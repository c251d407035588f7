//! The pull loop every consumer of the dispatcher runs: at most `in_hand` messages held at
//! once, an optional pace (for rate-limited lanes), pinned pulls for priority groups, and a
//! clean stop that lets handlers finish (or abandons them, unacked, on a hard stop).

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a consumer is pulled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pull {
    /// Messages held at once (being handled, or waiting their turn).
    pub in_hand: usize,
    /// Pull as a member of the pinned priority group.
    pub pinned: bool,
    /// Messages per second handed to handlers, at most (0: no pace).
    pub rate_per_sec: u32,
}

/// Pulls until `shutdown`. For each message `inline` runs first, in message order; the future
/// it returns (if any) is spawned, holding the message's slot until it ends. Handlers still
/// running at `hard_stop` are abandoned, leaving their messages unacked.
pub(crate) async fn consume<F, I, S>(
    consumer: jetstream::consumer::PullConsumer,
    pull: Pull,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    mut inline: F,
) where
    F: FnMut(jetstream::Message) -> I,
    I: Future<Output = Option<S>>,
    S: Future<Output = ()> + Send + 'static,
{
    let name = consumer.cached_info().name.clone();
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(pull.in_hand.max(1)));
    let tasks = TaskTracker::new();
    // Pull about what can be worked on (buffered messages age towards ack_wait), but never in
    // tiny batches: the client re-requests only below half a batch, and with a batch of one a
    // message that outruns its request's bookkeeping leaves no request open, stalling the stream
    // until the next heartbeat check. Small lanes are bounded by the server's max_ack_pending.
    let batch = pull.in_hand.clamp(16, 256);
    let interval = (pull.rate_per_sec > 0).then(|| Duration::from_secs_f64(1.0 / pull.rate_per_sec as f64));
    let mut next_slot = Instant::now();
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
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                n = messages.next() => n,
            };
            match next {
                Some(Ok(msg)) => {
                    consecutive_errors = 0;
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
