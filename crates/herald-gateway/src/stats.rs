//! Delivery statistics, kept up to date as deliveries happen so that no page view scans a
//! stream: each gateway follows `HERALD_ATTEMPTS` (every attempt record) and `HERALD_EVENTS`
//! (headers only: the subject names tenant and type) with ordered consumers, and adds each
//! message to per-minute and per-hour counters by subscription, by tenant and overall. It also
//! follows the operator tenant's `circuit.*` operational events to know which circuits are open.
//!
//! On start it reads back the window it keeps (`HERALD_STATS_WINDOW`, a day by default) and is
//! `warming` until it has caught up; afterwards every record costs a map update. Memory: one
//! counter per (subscription, minute) for the last hour and per (subscription, hour) for the
//! window, only where something happened.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use prost::Message as _;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use herald_core::{nats, proto};

/// Minutes kept at minute resolution.
const MINUTES_KEPT: i64 = 60;

/// Counts of one bucket.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct Counts {
    /// Events taken in (tenant and overall series only).
    pub events_in: u64,
    /// Delivery attempts made.
    pub attempts: u64,
    /// Attempts answered with a 2xx.
    pub delivered: u64,
    /// Failed attempts that will be retried.
    pub failed: u64,
    /// Deliveries given up on.
    pub dead_lettered: u64,
    /// Deliveries dropped without an attempt (the subscription was gone or disabled).
    pub skipped: u64,
    /// Sum of the attempts' durations, in milliseconds (`latency_ms_total / attempts` is the
    /// mean).
    pub latency_ms_total: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.events_in += other.events_in;
        self.attempts += other.attempts;
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.dead_lettered += other.dead_lettered;
        self.skipped += other.skipped;
        self.latency_ms_total += other.latency_ms_total;
    }

    fn of_attempt(a: &proto::Attempt) -> Self {
        let mut c = Counts::default();
        match a.outcome.as_str() {
            "delivered" => c.delivered = 1,
            "retry" => c.failed = 1,
            "dead_letter" => c.dead_lettered = 1,
            "skipped" => c.skipped = 1,
            _ => {}
        }
        // A skipped delivery made no request.
        if a.outcome != "skipped" {
            c.attempts = 1;
            c.latency_ms_total = a.duration_ms;
        }
        c
    }
}

/// The resolution of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Interval {
    /// The last hour, a bucket a minute.
    Minute,
    /// The window, a bucket an hour.
    Hour,
}

impl Interval {
    fn seconds(self) -> i64 {
        match self {
            Self::Minute => 60,
            Self::Hour => 3600,
        }
    }
}

#[derive(Debug, Default)]
struct Series {
    minutes: BTreeMap<i64, Counts>,
    hours: BTreeMap<i64, Counts>,
}

impl Series {
    fn add(&mut self, at: i64, counts: &Counts) {
        self.minutes.entry(at - at.rem_euclid(60)).or_default().add(counts);
        self.hours.entry(at - at.rem_euclid(3600)).or_default().add(counts);
    }

    fn prune(&mut self, now: i64, window: i64) {
        let keep_minutes = now - now.rem_euclid(60) - (MINUTES_KEPT - 1) * 60;
        self.minutes = self.minutes.split_off(&keep_minutes);
        let keep_hours = now - window;
        self.hours = self.hours.split_off(&(keep_hours - keep_hours.rem_euclid(3600)));
    }

    fn is_empty(&self) -> bool {
        self.minutes.is_empty() && self.hours.is_empty()
    }

    /// Buckets from `from` (a bucket start) to now, zeros where nothing happened.
    fn buckets(&self, interval: Interval, from: i64, now: i64) -> Vec<(i64, Counts)> {
        let map = match interval {
            Interval::Minute => &self.minutes,
            Interval::Hour => &self.hours,
        };
        let step = interval.seconds();
        let mut out = Vec::new();
        let mut t = from;
        while t <= now {
            out.push((t, map.get(&t).copied().unwrap_or_default()));
            t += step;
        }
        out
    }
}

/// A subscription's open circuit, as the dispatchers reported it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct OpenCircuit {
    pub subscription_id: String,
    pub tenant: String,
    pub url: String,
    /// The dispatcher replicas whose circuit for it is open.
    pub replicas: Vec<String>,
    /// When the first of them opened (RFC 3339).
    pub since: String,
}

#[derive(Default)]
struct Inner {
    overall: Series,
    by_tenant: HashMap<String, Series>,
    by_subscription: HashMap<String, Series>,
    /// Subscription → replica → (opened at, tenant, url).
    circuits: HashMap<String, BTreeMap<String, (String, String, String)>>,
}

/// The statistics a gateway keeps.
pub(crate) struct Stats {
    inner: Mutex<Inner>,
    attempts_caught_up: AtomicBool,
    events_caught_up: AtomicBool,
    circuits_caught_up: AtomicBool,
    window: Duration,
}

impl Stats {
    pub(crate) fn new(window: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            attempts_caught_up: AtomicBool::new(false),
            events_caught_up: AtomicBool::new(false),
            circuits_caught_up: AtomicBool::new(false),
            window,
        })
    }

    /// True until what happened within the window has been read back.
    pub(crate) fn warming(&self) -> bool {
        !(self.attempts_caught_up.load(Ordering::Relaxed)
            && self.events_caught_up.load(Ordering::Relaxed)
            && self.circuits_caught_up.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record_attempt(&self, at: i64, attempt: &proto::Attempt) {
        let counts = Counts::of_attempt(attempt);
        let mut inner = self.lock();
        inner.overall.add(at, &counts);
        inner.by_tenant.entry(attempt.tenant.clone()).or_default().add(at, &counts);
        inner.by_subscription.entry(attempt.subscription_id.clone()).or_default().add(at, &counts);
    }

    fn record_event(&self, at: i64, tenant: &str) {
        let counts = Counts { events_in: 1, ..Counts::default() };
        let mut inner = self.lock();
        inner.overall.add(at, &counts);
        match inner.by_tenant.get_mut(tenant) {
            Some(series) => series.add(at, &counts),
            None => inner.by_tenant.entry(tenant.to_owned()).or_default().add(at, &counts),
        }
    }

    fn record_circuit(&self, event: &proto::Event) {
        let Ok(data) = serde_json::from_slice::<serde_json::Value>(&event.data) else { return };
        let text = |k: &str| data.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let (sub, replica) = (text("subscription_id"), text("replica"));
        let mut inner = self.lock();
        match event.r#type.as_str() {
            "circuit.opened" => {
                inner.circuits.entry(sub).or_default().insert(replica, (text("at"), text("tenant"), text("url")));
            }
            "circuit.closed" => {
                if let Some(replicas) = inner.circuits.get_mut(&sub) {
                    replicas.remove(&replica);
                    if replicas.is_empty() {
                        inner.circuits.remove(&sub);
                    }
                }
            }
            _ => {}
        }
    }

    fn prune(&self, now: i64) {
        let window = self.window.as_secs() as i64;
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.overall.prune(now, window);
        for map in [&mut inner.by_tenant, &mut inner.by_subscription] {
            map.retain(|_, s| {
                s.prune(now, window);
                !s.is_empty()
            });
        }
    }

    /// The first bucket start a query may ask for.
    pub(crate) fn earliest(&self, interval: Interval, now: i64) -> i64 {
        match interval {
            Interval::Minute => now - now.rem_euclid(60) - (MINUTES_KEPT - 1) * 60,
            Interval::Hour => {
                let t = now - self.window.as_secs() as i64 + 3600;
                t - t.rem_euclid(3600)
            }
        }
    }

    /// The buckets of one series from `from` (clamped to what is kept) to now.
    pub(crate) fn series(&self, of: Of<'_>, interval: Interval, from: Option<i64>, now: i64) -> Vec<(i64, Counts)> {
        let earliest = self.earliest(interval, now);
        let from = from.map(|f| f - f.rem_euclid(interval.seconds())).unwrap_or(earliest).max(earliest);
        let inner = self.lock();
        let series = match of {
            Of::All => Some(&inner.overall),
            Of::Tenant(t) => inner.by_tenant.get(t),
            Of::Subscription(s) => inner.by_subscription.get(s),
        };
        match series {
            Some(s) => s.buckets(interval, from, now),
            None => Series::default().buckets(interval, from, now),
        }
    }

    /// Totals of the window, by tenant.
    pub(crate) fn tenant_totals(&self) -> BTreeMap<String, Counts> {
        let inner = self.lock();
        inner
            .by_tenant
            .iter()
            .map(|(t, s)| {
                let mut total = Counts::default();
                s.hours.values().for_each(|c| total.add(c));
                (t.clone(), total)
            })
            .collect()
    }

    /// The circuits some dispatcher reports open.
    pub(crate) fn open_circuits(&self) -> Vec<OpenCircuit> {
        let inner = self.lock();
        let mut out: Vec<OpenCircuit> = inner
            .circuits
            .iter()
            .map(|(sub, replicas)| {
                let (since, tenant, url) = replicas.values().min_by(|a, b| a.0.cmp(&b.0)).cloned().unwrap_or_default();
                OpenCircuit {
                    subscription_id: sub.clone(),
                    tenant,
                    url,
                    replicas: replicas.keys().cloned().collect(),
                    since,
                }
            })
            .collect();
        out.sort_by(|a, b| a.since.cmp(&b.since));
        out
    }
}

/// Which series.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Of<'a> {
    All,
    Tenant(&'a str),
    Subscription(&'a str),
}

/// Sums buckets.
pub(crate) fn total(buckets: &[(i64, Counts)]) -> Counts {
    let mut t = Counts::default();
    buckets.iter().for_each(|(_, c)| t.add(c));
    t
}

/// Follows the streams until `cancel`.
pub(crate) fn spawn(
    stats: Arc<Stats>,
    js: jetstream::Context,
    operator_tenant: String,
    cancel: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let s = stats.clone();
    tasks.push(tokio::spawn(follow(
        js.clone(),
        nats::ATTEMPTS_STREAM,
        "herald.attempts.>".into(),
        false,
        stats.window,
        cancel.clone(),
        move |msg| {
            if let Ok(a) = proto::Attempt::decode(msg.payload) {
                s.record_attempt(msg.at, &a);
            }
        },
        {
            let s = stats.clone();
            move || s.attempts_caught_up.store(true, Ordering::Relaxed)
        },
    )));
    let s = stats.clone();
    tasks.push(tokio::spawn(follow(
        js.clone(),
        nats::EVENTS_STREAM,
        "herald.events.>".into(),
        true,
        stats.window,
        cancel.clone(),
        move |msg| {
            if let Some(tenant) =
                msg.subject.strip_prefix(nats::EVENTS_SUBJECT_PREFIX).and_then(|r| r.split('.').next())
            {
                s.record_event(msg.at, tenant);
            }
        },
        {
            let s = stats.clone();
            move || s.events_caught_up.store(true, Ordering::Relaxed)
        },
    )));
    if operator_tenant.is_empty() {
        stats.circuits_caught_up.store(true, Ordering::Relaxed);
    } else {
        let s = stats.clone();
        tasks.push(tokio::spawn(follow(
            js,
            nats::EVENTS_STREAM,
            format!("{}{operator_tenant}.circuit.>", nats::EVENTS_SUBJECT_PREFIX),
            false,
            stats.window,
            cancel.clone(),
            move |msg| {
                if let Ok(e) = proto::Event::decode(msg.payload) {
                    s.record_circuit(&e);
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
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
            s.prune(OffsetDateTime::now_utc().unix_timestamp());
        }
    }));
    tasks
}

/// One message as a follower sees it.
struct Seen<'a> {
    at: i64,
    subject: &'a str,
    payload: &'a [u8],
}

/// Reads `stream` (matching `filter`) from the start of the window, then every new message as
/// it is stored, resuming after the last one read when the consumer fails.
#[allow(clippy::too_many_arguments)]
async fn follow(
    js: jetstream::Context,
    stream: &'static str,
    filter: String,
    headers_only: bool,
    window: Duration,
    cancel: CancellationToken,
    mut apply: impl FnMut(Seen<'_>) + Send,
    caught_up: impl Fn() + Send,
) {
    let mut next: Option<u64> = None;
    loop {
        let deliver_policy = match next {
            Some(start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
            None => consumer::DeliverPolicy::ByStartTime { start_time: OffsetDateTime::now_utc() - window },
        };
        let read = async {
            let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
            let config = consumer::pull::OrderedConfig {
                filter_subject: filter.clone(),
                deliver_policy,
                headers_only,
                ..Default::default()
            };
            let consumer = stream.create_consumer(config).await.map_err(|e| e.to_string())?;
            let mut pending = consumer.cached_info().num_pending;
            if pending == 0 {
                caught_up();
            }
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            while let Some(msg) = messages.next().await {
                let msg = msg.map_err(|e| e.to_string())?;
                let info = msg.info().map_err(|e| e.to_string())?;
                let (seq, at) = (info.stream_sequence, info.published.unix_timestamp());
                apply(Seen { at, subject: msg.subject.as_str(), payload: msg.payload.as_ref() });
                next = Some(seq + 1);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(sub: &str, tenant: &str, outcome: &str, ms: u64) -> proto::Attempt {
        proto::Attempt {
            subscription_id: sub.into(),
            tenant: tenant.into(),
            outcome: outcome.into(),
            duration_ms: ms,
            ..Default::default()
        }
    }

    #[test]
    fn counts_land_in_their_minute_and_hour_and_old_ones_are_pruned() {
        let stats = Stats::new(Duration::from_secs(24 * 3600));
        let now = 1_800_000_000 + 1830; // an hour starts at 1_800_000_000; this is half past
        stats.record_attempt(now - 10, &attempt("s1", "acme", "delivered", 20));
        stats.record_attempt(now - 70, &attempt("s1", "acme", "retry", 100));
        stats.record_attempt(now - 7200, &attempt("s2", "acme", "dead_letter", 5));
        stats.record_attempt(now - 5, &attempt("s3", "zeta", "skipped", 0));
        stats.record_event(now - 3, "acme");
        let minutes = stats.series(Of::Subscription("s1"), Interval::Minute, None, now);
        assert_eq!(minutes.len(), 60);
        let last = minutes.last().unwrap().1;
        assert_eq!((last.attempts, last.delivered, last.latency_ms_total), (1, 1, 20));
        assert_eq!(minutes[58].1.failed, 1);
        let acme = total(&stats.series(Of::Tenant("acme"), Interval::Hour, None, now));
        assert_eq!((acme.events_in, acme.attempts, acme.delivered, acme.failed, acme.dead_lettered), (1, 3, 1, 1, 1));
        let all = total(&stats.series(Of::All, Interval::Hour, None, now));
        assert_eq!((all.attempts, all.skipped), (3, 1));
        // The two-hour-old one is beyond the minute series but within the hour series.
        assert_eq!(total(&stats.series(Of::Subscription("s2"), Interval::Minute, None, now)).attempts, 0);
        assert_eq!(total(&stats.series(Of::Subscription("s2"), Interval::Hour, None, now)).dead_lettered, 1);
        // A day later everything has aged out.
        stats.prune(now + 25 * 3600);
        assert!(stats.lock().by_subscription.is_empty());
        assert_eq!(stats.tenant_totals().len(), 0);
    }

    #[test]
    fn circuits_open_per_replica_and_close() {
        let stats = Stats::new(Duration::from_secs(3600));
        let ev = |kind: &str, replica: &str, at: &str| proto::Event {
            r#type: format!("circuit.{kind}"),
            data: serde_json::to_vec(&serde_json::json!({
                "subscription_id": "s1", "tenant": "acme", "url": "https://x", "replica": replica, "at": at
            }))
            .unwrap(),
            ..Default::default()
        };
        stats.record_circuit(&ev("opened", "d1", "2026-01-01T00:00:02Z"));
        stats.record_circuit(&ev("opened", "d2", "2026-01-01T00:00:01Z"));
        let open = stats.open_circuits();
        assert_eq!(open.len(), 1);
        assert_eq!((open[0].replicas.len(), open[0].since.as_str()), (2, "2026-01-01T00:00:01Z"));
        stats.record_circuit(&ev("closed", "d1", "2026-01-01T00:01:00Z"));
        assert_eq!(stats.open_circuits()[0].replicas, vec!["d2".to_string()]);
        stats.record_circuit(&ev("closed", "d2", "2026-01-01T00:01:00Z"));
        assert!(stats.open_circuits().is_empty());
    }
}
