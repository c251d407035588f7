//! Prometheus metrics on the Prometheus organisation's `prometheus-client`: counters, gauges
//! and histograms with fixed label names, rendered in the OpenMetrics text format on `/metrics`
//! (histograms carry the trace id of a sampled span as an exemplar). Label values always come
//! from small closed sets (outcomes, status classes, consumer names): never URLs or ids.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabel as _, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::{Family as Series, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A label set: the family's names and up to two values, all `'static` (they come from closed
/// sets), so recording allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Labels {
    names: &'static [&'static str],
    values: [&'static str; 2],
}

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        for (name, value) in self.names.iter().zip(&self.values) {
            (*name, *value).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// The `'static` copy of a label value, made once per distinct value (for values computed at
/// run time, such as consumer names).
pub fn intern(value: &str) -> &'static str {
    static SEEN: LazyLock<RwLock<HashSet<&'static str>>> = LazyLock::new(Default::default);
    if let Some(v) = SEEN.read().expect("labels lock").get(value) {
        return v;
    }
    let mut seen = SEEN.write().expect("labels lock");
    match seen.get(value) {
        Some(v) => v,
        None => {
            let leaked: &'static str = Box::leak(value.to_owned().into_boxed_str());
            seen.insert(leaked);
            leaked
        }
    }
}

fn labels(names: &'static [&'static str], values: &[&'static str]) -> Labels {
    debug_assert_eq!(names.len(), values.len());
    let mut out = ["", ""];
    for (slot, v) in out.iter_mut().zip(values) {
        *slot = v;
    }
    Labels { names, values: out }
}

/// Where a label value's text lies: its address and length. A label value is a `'static`
/// string, so where it lies names it as well as its text does.
type Place = [(usize, usize); 2];

fn place(values: &[&'static str]) -> Place {
    let mut out = [(0, 0); 2];
    for (slot, v) in out.iter_mut().zip(values) {
        *slot = (v.as_ptr() as usize, v.len());
    }
    out
}

/// Handles to the series already looked up, found by where their label values lie: comparing
/// two addresses instead of hashing and comparing the texts on every update (the series map's
/// lookup was 3 % of a delivery's CPU). A handle shares its series' value, and two copies of
/// one text found in two places reach the same series through the map, so what is rendered is
/// unchanged. Label values come from small closed sets, so the list stays short.
struct Handles<M>(RwLock<Vec<(Place, M)>>);

impl<M> Default for Handles<M> {
    fn default() -> Self {
        Self(RwLock::new(Vec::new()))
    }
}

impl<M: Clone> Handles<M> {
    /// Runs `with` on the series of `values`, looked up through `lookup` the first time.
    fn with(&self, values: &[&'static str], lookup: impl FnOnce() -> M, with: impl FnOnce(&M)) {
        let at = place(values);
        if let Some((_, m)) = self.0.read().expect("metric handles lock").iter().find(|(p, _)| *p == at) {
            return with(m);
        }
        let m = lookup();
        with(&m);
        let mut handles = self.0.write().expect("metric handles lock");
        if !handles.iter().any(|(p, _)| *p == at) {
            handles.push((at, m));
        }
    }
}

enum Kind {
    Counter(Series<Labels, Counter<f64, AtomicU64>>, Handles<Counter<f64, AtomicU64>>),
    Gauge(Series<Labels, Gauge<f64, AtomicU64>>, Handles<Gauge<f64, AtomicU64>>),
}

/// A family of counters or gauges keyed by label values.
pub struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    kind: Kind,
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family").field("name", &self.name).finish()
    }
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: &'static str, labels: &'static [&'static str]) -> Self {
        let kind = match kind {
            "counter" => Kind::Counter(Series::default(), Handles::default()),
            _ => Kind::Gauge(Series::default(), Handles::default()),
        };
        Self { name, help, labels, kind }
    }

    /// Adds `by` to the series with these label values (in the family's label order).
    pub fn add(&self, values: &[&'static str], by: f64) {
        let key = || labels(self.labels, values);
        match &self.kind {
            Kind::Counter(f, handles) => handles.with(
                values,
                || f.get_or_create(&key()).clone(),
                |c| {
                    c.inc_by(by);
                },
            ),
            Kind::Gauge(f, handles) => handles.with(
                values,
                || f.get_or_create(&key()).clone(),
                |g| {
                    g.inc_by(by);
                },
            ),
        }
    }

    /// Adds one.
    pub fn inc(&self, values: &[&'static str]) {
        self.add(values, 1.0);
    }

    /// Sets a gauge.
    pub fn set(&self, values: &[&'static str], value: f64) {
        if let Kind::Gauge(f, handles) = &self.kind {
            handles.with(
                values,
                || f.get_or_create(&labels(self.labels, values)).clone(),
                |g| {
                    g.set(value);
                },
            );
        }
    }

    fn register(&self, registry: &mut Registry) {
        match &self.kind {
            // prometheus-client names counters without `_total` and adds it when rendering.
            Kind::Counter(f, _) => registry.register(self.name.trim_end_matches("_total"), self.help, f.clone()),
            Kind::Gauge(f, _) => registry.register(self.name, self.help, f.clone()),
        }
    }
}

/// The exemplar a histogram observation carries: the trace id of the sampled span it was made
/// in.
type Exemplar = Vec<(&'static str, String)>;

#[derive(Clone)]
struct Buckets(&'static [f64]);

impl MetricConstructor<HistogramWithExemplars<Exemplar>> for Buckets {
    fn new_metric(&self) -> HistogramWithExemplars<Exemplar> {
        HistogramWithExemplars::new(self.0.iter().copied())
    }
}

/// A family of histograms keyed by label values.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Series<Labels, HistogramWithExemplars<Exemplar>, Buckets>,
    handles: Handles<HistogramWithExemplars<Exemplar>>,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram").field("name", &self.name).finish()
    }
}

impl Histogram {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str], buckets: &'static [f64]) -> Self {
        Self { name, help, labels, series: Series::new_with_constructor(Buckets(buckets)), handles: Handles::default() }
    }

    /// Records one observation, with the current span's trace id as its exemplar when the span
    /// is sampled and exported.
    pub fn observe(&self, values: &[&'static str], value: Duration) {
        let exemplar = crate::telemetry::current_trace_id().map(|id| vec![("trace_id", id)]);
        self.handles.with(
            values,
            || self.series.get_or_create(&labels(self.labels, values)).clone(),
            |h| h.observe(value.as_secs_f64(), exemplar, None),
        );
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(self.name, self.help, self.series.clone());
    }
}

const LATENCY: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Events the gateway was asked to store, by outcome (`accepted`, `duplicate`, `invalid`,
/// `forbidden`, `unavailable`).
pub static EVENTS_INGESTED: LazyLock<Family> = LazyLock::new(|| {
    Family::new("herald_events_ingested_total", "Events submitted to the gateway, by outcome.", "counter", &["outcome"])
});
/// Requests to inbound sources (`POST /in/{id}`), by provider and outcome: `accepted`,
/// `duplicate`, a refusal's reason (`missing_signature`, `bad_signature`, `stale_timestamp`,
/// `bad_credentials`), `invalid`, `too_large`, `unavailable`, `unknown_source`.
pub static INBOUND_REQUESTS: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_inbound_requests_total",
        "Requests to inbound sources, by provider and outcome (a refusal's outcome is its reason).",
        "counter",
        &["provider", "outcome"],
    )
});
/// Time from sending an event to its PubAck.
pub static PUBLISH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::new("herald_publish_duration_seconds", "Time to store an event in JetStream.", &[], LATENCY)
});
/// Events fanned out, by outcome (`fanned_out`, `invalid`, `retried`).
pub static FANOUT_EVENTS: LazyLock<Family> = LazyLock::new(|| {
    Family::new("herald_fanout_events_total", "Events taken by fan-out, by outcome.", "counter", &["outcome"])
});
/// Deliveries created by fan-out, by path (`stored` in `HERALD_DELIVERIES`, or first attempted
/// `inline` by fan-out).
pub static FANOUT_DELIVERIES: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_fanout_deliveries_total",
        "Deliveries created by fan-out, by path (stored first, or first attempted inline).",
        "counter",
        &["path"],
    )
});
/// Attempts, by outcome and status class (`2xx` … `5xx`, `none`).
pub static ATTEMPTS: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_delivery_attempts_total",
        "Webhook attempts, by outcome (delivered, retry, dead_letter) and status class.",
        "counter",
        &["outcome", "status_class"],
    )
});
/// Requests to endpoints' OAuth2 token endpoints, by outcome (`issued`, `failed`).
pub static TOKEN_REQUESTS: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_endpoint_token_requests_total",
        "Access tokens asked of subscriptions' OAuth2 token endpoints, by outcome (issued, failed).",
        "counter",
        &["outcome"],
    )
});
/// Duration of attempts.
pub static ATTEMPT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::new("herald_attempt_duration_seconds", "Duration of one webhook attempt.", &["status_class"], LATENCY)
});
/// Time subscriptions' transformations took, per call.
pub static TRANSFORMATION_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::new(
        "herald_transformation_duration_seconds",
        "Time one call of a subscription's transformation took.",
        &[],
        &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1],
    )
});
/// How late scheduled retries and deferrals come.
pub static RETRY_LATENESS: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::new(
        "herald_retry_lateness_seconds",
        "How long after it was due a scheduled retry or deferral was handed out (its schedule firing late, e.g. after a leader change, or a backlog ahead of it).",
        &[],
        LATENESS,
    )
});
const LATENESS: &[f64] = &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Deliveries put off without an attempt, by reason.
pub static DEFERRALS: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_deferrals_total",
        "Deliveries deferred without an attempt (open circuit, endpoint at its limit).",
        "counter",
        &["reason"],
    )
});
/// Retries scheduled.
pub static RETRIES: LazyLock<Family> =
    LazyLock::new(|| Family::new("herald_retries_scheduled_total", "Retries scheduled in JetStream.", "counter", &[]));
/// Dead letters written, by kind.
pub static DEAD_LETTERS: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_dead_letters_total",
        "Dead letters written, by kind (exhausted, refused, invalid_event, unroutable, poison).",
        "counter",
        &["kind"],
    )
});
/// Checks of the attempt records before a delivery is sent again, by what they found.
pub static RECORD_CHECKS: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_record_checks_total",
        "Checks of the attempt records made before a delivery handed out again (or on an ordered lane) is sent, by result (delivered, not_delivered, unreadable, inconclusive: too many records to read, sent).",
        "counter",
        &["result"],
    )
});
/// Deliveries handed out again that had already been delivered: acked without sending.
pub static REDELIVERIES_SKIPPED: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_redeliveries_skipped_total",
        "Deliveries handed out again (after a crash or a lost ack) whose attempt record shows them delivered: not sent again.",
        "counter",
        &[],
    )
});
/// Statistics deltas a dispatcher stored or could not store (`stored`, `failed`: kept for the
/// next flush).
pub static STATS_DELTAS: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_stats_deltas_total",
        "Statistics deltas (what a dispatcher counted since its last flush) stored, or that failed and were kept for the next flush.",
        "counter",
        &["result"],
    )
});
/// Events of a subscription's types that its payload filter left out.
pub static FILTERED_OUT: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_filtered_out_total",
        "Events of a subscription's types that its payload filter did not match: not deliveries, and not in the attempts.",
        "counter",
        &[],
    )
});
/// Events whose data violated their type's schema, by what was done (`refused`, `dead_lettered`, `warned`).
pub static SCHEMA_VIOLATIONS: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_schema_violations_total",
        "Events whose data violated their type's schema in the catalog, by what was done with them.",
        "counter",
        &["action"],
    )
});

pub static CONSUMER_REWINDS: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_consumer_rewinds_total",
        "Messages handed out under a consumer sequence this replica had already seen (a consumer's new leader starting from older state): checked against their attempt records before sending.",
        "counter",
        &[],
    )
});
/// Messages handed out again (a delivery count above 1), by consumer.
pub static HANDED_OUT_AGAIN: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_handed_out_again_total",
        "Messages a consumer handed out again after its ack wait (an ack or a hand-out lost with a NATS node, a replica that died with it, a nak for a record check), by consumer: checked against their attempt records before sending.",
        "counter",
        &["consumer"],
    )
});
/// Pulls dropped with their buffer after every slot of a consumer was taken for long.
pub static PULLS_DROPPED: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_pulls_dropped_total",
        "Pulls a replica dropped, with the messages buffered in them, after every slot of the consumer was taken for over half its ack wait (those messages come back after their ack wait rather than be sent twice), by consumer.",
        "counter",
        &["consumer"],
    )
});
/// Leader changes of Herald's streams and consumers (and reconnections) this replica noticed.
pub static LEADER_CHANGES: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_leader_changes_total",
        "Leader elections of Herald's streams and consumers (kind: consumer, stream) and reconnections to NATS this replica noticed; for two minutes after one, messages stored before it are checked against their attempt records before sending.",
        "counter",
        &["kind"],
    )
});
/// Messages checked against their attempt records because a leader changed after they were stored.
pub static ELECTION_CHECKS: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_election_checks_total",
        "Messages handed out with a delivery count of 1 but stored before a leader change this replica noticed, and therefore checked against their attempt records before sending.",
        "counter",
        &[],
    )
});
/// Webhook requests in flight in this replica.
pub static IN_FLIGHT: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_deliveries_in_flight",
        "Webhook requests in flight in this replica, from the request until its attempt is recorded.",
        "gauge",
        &[],
    )
});
/// Subscriptions whose circuit is open in this replica.
pub static CIRCUITS_OPEN: LazyLock<Family> = LazyLock::new(|| {
    Family::new("herald_circuits_open", "Subscriptions whose circuit is open in this replica.", "gauge", &[])
});
/// Consumer backlog, by consumer and kind (`pending`, `ack_pending`).
pub static CONSUMER_LAG: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_consumer_messages",
        "Messages waiting in a JetStream consumer (pending) or handed out and unacked (ack_pending).",
        "gauge",
        &["consumer", "state"],
    )
});
/// [`CONSUMER_LAG`] of each partition's consumer (`partition` is `0` … `P-1`, and any left to
/// drain): the KEDA trigger and the dashboard's per-partition panels.
pub static PARTITION_LAG: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_partition_consumer_messages",
        "Messages waiting (pending) or handed out and unacked (ack_pending) in one partition's JetStream consumer.",
        "gauge",
        &["consumer", "partition", "state"],
    )
});

/// Events of the operator tenant refused as not written by a dispatcher (no valid
/// `Herald-Operator-Mac`), by who refused them (`fanout`: dead-lettered, never delivered;
/// `gateway`: not believed by the console's open circuits).
pub static OPERATIONAL_FORGED: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_operational_events_forged_total",
        "Events of the operator tenant without a valid Herald-Operator-Mac, refused, by who refused them.",
        "counter",
        &["refused_by"],
    )
});

/// Statistics entries a gateway counted under `(other)` because it keeps series for
/// `HERALD_STATS_MAX_TENANTS` tenants already.
pub static STATS_TENANTS_CAPPED: LazyLock<Family> = LazyLock::new(|| {
    Family::new(
        "herald_stats_tenants_capped_total",
        "Statistics entries counted under (other): the gateway keeps series for HERALD_STATS_MAX_TENANTS tenants already.",
        "counter",
        &[],
    )
});

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let mut registry = Registry::default();
    for family in counters_and_gauges() {
        family.register(&mut registry);
    }
    for histogram in histograms() {
        histogram.register(&mut registry);
    }
    registry
});

fn counters_and_gauges() -> [&'static Family; 25] {
    [
        &*EVENTS_INGESTED,
        &*INBOUND_REQUESTS,
        &*FANOUT_EVENTS,
        &*FANOUT_DELIVERIES,
        &*ATTEMPTS,
        &*TOKEN_REQUESTS,
        &*DEFERRALS,
        &*RETRIES,
        &*DEAD_LETTERS,
        &*REDELIVERIES_SKIPPED,
        &*RECORD_CHECKS,
        &*FILTERED_OUT,
        &*STATS_DELTAS,
        &*SCHEMA_VIOLATIONS,
        &*CONSUMER_REWINDS,
        &*HANDED_OUT_AGAIN,
        &*PULLS_DROPPED,
        &*LEADER_CHANGES,
        &*ELECTION_CHECKS,
        &*IN_FLIGHT,
        &*CIRCUITS_OPEN,
        &*CONSUMER_LAG,
        &*PARTITION_LAG,
        &*OPERATIONAL_FORGED,
        &*STATS_TENANTS_CAPPED,
    ]
}

fn histograms() -> [&'static Histogram; 4] {
    [&*PUBLISH_SECONDS, &*ATTEMPT_SECONDS, &*TRANSFORMATION_SECONDS, &*RETRY_LATENESS]
}

/// Every family the registry holds, as scraped (a counter's name ends in `_total`), with its
/// type: what the book's metrics reference is checked against.
pub fn families() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<_> = counters_and_gauges()
        .into_iter()
        .map(|f| (f.name, if matches!(f.kind, Kind::Counter(..)) { "counter" } else { "gauge" }))
        .collect();
    out.extend(histograms().into_iter().map(|h| (h.name, "histogram")));
    out
}

/// `2xx`, `3xx`, `4xx`, `5xx`, or `none` when no response arrived.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "none",
    }
}

/// Every metric in the OpenMetrics text format.
pub fn render() -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &REGISTRY) {
        tracing::warn!(error = %e, "metrics could not be rendered");
    }
    out
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_with_the_names_of_before() {
        EVENTS_INGESTED.inc(&["accepted"]);
        EVENTS_INGESTED.add(&["o\"k"], 2.0);
        CONSUMER_LAG.set(&["herald-deliver", "pending"], 7.0);
        PUBLISH_SECONDS.observe(&[], Duration::from_millis(3));
        PUBLISH_SECONDS.observe(&[], Duration::from_secs(40));
        let out = render();
        assert!(out.contains("# TYPE herald_events_ingested counter\n"), "{out}");
        assert!(out.contains("herald_events_ingested_total{outcome=\"accepted\"} 1"), "{out}");
        assert!(out.contains("herald_events_ingested_total{outcome=\"o\\\"k\"} 2"), "{out}");
        assert!(out.contains("herald_consumer_messages{consumer=\"herald-deliver\",state=\"pending\"} 7"), "{out}");
        assert!(out.contains("herald_publish_duration_seconds_bucket{le=\"0.005\"} 1"), "{out}");
        assert!(out.contains("herald_publish_duration_seconds_bucket{le=\"+Inf\"} 2"), "{out}");
        assert!(out.contains("herald_publish_duration_seconds_count 2"), "{out}");
        assert!(out.ends_with("# EOF\n"));
        assert_eq!(intern("x"), intern(&String::from("x")));
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(None), "none");
    }

    #[test]
    fn one_text_in_two_places_is_one_series_and_each_update_counts() {
        // Two copies of a label value, at two addresses: the handle cache knows them apart,
        // the series map does not, so both add to one series.
        let here: &'static str = Box::leak(String::from("copy-test").into_boxed_str());
        let there: &'static str = Box::leak(String::from("copy-test").into_boxed_str());
        assert_ne!(here.as_ptr(), there.as_ptr());
        for _ in 0..3 {
            DEFERRALS.inc(&[here]);
        }
        DEFERRALS.add(&[there], 2.0);
        CONSUMER_LAG.set(&[here, "pending"], 4.0);
        CONSUMER_LAG.set(&[there, "pending"], 9.0);
        ATTEMPT_SECONDS.observe(&[here], Duration::from_millis(1));
        ATTEMPT_SECONDS.observe(&[there], Duration::from_millis(1));
        let out = render();
        // Exactly one line per series, with every update in it.
        let value = |prefix: &str| {
            let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(prefix)).collect();
            assert_eq!(lines.len(), 1, "{prefix}: {lines:?}");
            lines[0].rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).expect("a number")
        };
        assert_eq!(value("herald_deferrals_total{reason=\"copy-test\"}"), 5.0);
        assert_eq!(value("herald_consumer_messages{consumer=\"copy-test\",state=\"pending\"}"), 9.0);
        assert_eq!(value("herald_attempt_duration_seconds_count{status_class=\"copy-test\"}"), 2.0);
    }
}
