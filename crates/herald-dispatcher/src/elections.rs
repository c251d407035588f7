//! Noticing leader changes, so that what a consumer's new leader hands out again, as new, is
//! checked before it is sent.
//!
//! On a cluster, a consumer's new leader starts from the state the old one had replicated:
//! messages the old leader handed out (and saw acked) shortly before it failed can come again
//! with a delivery count of 1. [`crate::pull`] catches those that come back to the replica
//! that had them, by their consumer sequence; one that goes to another replica, under a
//! sequence that replica never saw, carries no mark at all, and was sent a second time (the
//! node chaos tests saw a run of a replica's recent events sent again 1 s after their first
//! delivery, records and all). So every replica listens to JetStream's leader-election
//! advisories for Herald's streams and consumers, and for [`SUSPECT_FOR`] after one, a message
//! stored before it ([`CLOCK_SLACK`] later, for clocks) is checked against its attempt records
//! like any message handed out again. A reconnection to NATS counts as an election (advisories
//! may have been missed meanwhile). Messages stored after the election are not checked: no
//! earlier leader can have handed them out.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use herald_core::{metrics, nats};

/// How long after a leader change messages stored before it are checked: a new leader hands
/// out what it believes unacknowledged at once, but a backlog ahead of them can take a while.
const SUSPECT_FOR: Duration = Duration::from_secs(120);

/// How much later than the election a message may have been stored and still be suspect
/// (clocks of the dispatcher and nats-server, the advisory's way here).
const CLOCK_SLACK: time::Duration = time::Duration::seconds(5);

/// The last leader change noticed: one atomic load on every message handed out, and nothing
/// more unless one was noticed lately.
#[derive(Debug, Default)]
pub(crate) struct Elections {
    /// When, in Unix milliseconds (0: never).
    last_ms: AtomicI64,
}

impl Elections {
    /// Notes a leader change (or a reconnection) now.
    pub(crate) fn note(&self, kind: &'static str) {
        metrics::LEADER_CHANGES.inc(&[kind]);
        self.last_ms.store(unix_ms(OffsetDateTime::now_utc()), Ordering::Relaxed);
    }

    /// True if a message stored at `published` was stored before a leader change of the last [`SUSPECT_FOR`]: a
    /// consumer's new leader may be handing it out again.
    pub(crate) fn suspect(&self, published: OffsetDateTime) -> bool {
        if self.last_ms.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let suspect = self.stored_before_recent(published);
        if suspect {
            metrics::ELECTION_CHECKS.inc(&[]);
        }
        suspect
    }

    fn stored_before_recent(&self, stored: OffsetDateTime) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        let now = unix_ms(OffsetDateTime::now_utc());
        last != 0
            && now.saturating_sub(last) < SUSPECT_FOR.as_millis() as i64
            && unix_ms(stored) < last + CLOCK_SLACK.whole_milliseconds() as i64
    }
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Whether an advisory's leader change matters here: one of Herald's durable consumers that
/// hand out work (not the short-lived readers of the attempt records, whose creation is an
/// election too), or the leader of a stream they read or the checks read.
fn watched(kind: &str, stream: &str, consumer: Option<&str>) -> bool {
    match kind {
        "CONSUMER" => {
            (stream.starts_with(nats::EVENTS_STREAM) || stream.starts_with(nats::DELIVERIES_STREAM))
                && nats::Partition::of_stream(stream).is_some()
                && consumer.is_some_and(|c| c.starts_with("herald-"))
        }
        // Every partition's events, deliveries and attempts streams.
        "STREAM" => nats::Partition::of_stream(stream).is_some(),
        _ => false,
    }
}

/// Listens to JetStream's leader-election advisories (with replicated streams: on one server a
/// leader changes only when a consumer is made) and the client's reconnections until
/// `shutdown`, noting each in `elections`.
pub(crate) async fn watch(
    elections: std::sync::Arc<Elections>,
    client: async_nats::Client,
    replicated: bool,
    shutdown: CancellationToken,
) {
    // On one server nothing is published here.
    let subject = if replicated { "$JS.EVENT.ADVISORY.*.LEADER_ELECTED.>" } else { "herald.internal.no-elections" };
    let mut advisories = loop {
        match client.subscribe(subject).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen to leader elections; trying again");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let statistics = client.statistics();
    let mut connects = statistics.connects.load(Ordering::Relaxed);
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            advisory = advisories.next() => {
                let Some(advisory) = advisory else { return };
                // $JS.EVENT.ADVISORY.{CONSUMER|STREAM}.LEADER_ELECTED.{stream}[.{consumer}]
                let mut parts = advisory.subject.as_str().split('.').skip(3);
                let (Some(kind), Some(stream)) = (parts.next(), parts.nth(1)) else { continue };
                if watched(kind, stream, parts.next()) {
                    tracing::info!(subject = %advisory.subject, "leader elected; checking earlier messages handed out as new");
                    elections.note(if kind == "CONSUMER" { "consumer" } else { "stream" });
                }
            }
            _ = poll.tick() => {
                let now = statistics.connects.load(Ordering::Relaxed);
                if now != connects {
                    connects = now;
                    elections.note("reconnect");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_stored_before_a_recent_election_are_suspect_and_later_ones_not() {
        let e = Elections::default();
        let now = OffsetDateTime::now_utc();
        assert!(!e.stored_before_recent(now - time::Duration::minutes(1)), "no election yet");
        e.note("consumer");
        assert!(e.stored_before_recent(now - time::Duration::minutes(1)));
        assert!(e.stored_before_recent(now + time::Duration::seconds(2)), "within the clocks' slack");
        assert!(!e.stored_before_recent(now + time::Duration::seconds(10)), "stored after it");
        assert!(watched("CONSUMER", "HERALD_EVENTS", Some("herald-fanout")));
        assert!(watched("CONSUMER", "HERALD_DELIVERIES", Some("herald-lane-sub_1")));
        assert!(!watched("CONSUMER", "HERALD_ATTEMPTS", Some("Vd8xQx2a")), "a reader of the records");
        assert!(watched("STREAM", "HERALD_ATTEMPTS", None) && !watched("STREAM", "KV_herald-subscriptions", None));
    }
}
