//! Prometheus metrics: a small registry of counters, gauges and histograms with fixed label
//! names, rendered in the text exposition format on `/metrics`. Label values are always from
//! small closed sets (outcomes, status classes, consumer names): never URLs or ids.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// A family of counters or gauges keyed by label values.
#[derive(Debug)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, f64>>,
}

impl Family {
    const fn new(name: &'static str, help: &'static str, kind: &'static str, labels: &'static [&'static str]) -> Self {
        Self { name, help, kind, labels, values: Mutex::new(BTreeMap::new()) }
    }

    /// Adds `by` to the series with these label values (in the family's label order).
    pub fn add(&self, labels: &[&str], by: f64) {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.name);
        *series(&mut self.values.lock().expect("metrics lock"), labels, || 0.0) += by;
    }

    /// Adds one.
    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1.0);
    }

    /// Sets a gauge.
    pub fn set(&self, labels: &[&str], value: f64) {
        *series(&mut self.values.lock().expect("metrics lock"), labels, || 0.0) = value;
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}", self.name, self.help, self.name, self.kind);
        for (values, v) in self.values.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "{}{} {}", self.name, label_text(self.labels, values, None), v);
        }
    }
}

/// A family of histograms keyed by label values.
#[derive(Debug)]
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    values: Mutex<BTreeMap<Vec<String>, Observed>>,
}

/// One histogram series: cumulative bucket counts, sum and count.
type Observed = (Vec<u64>, f64, u64);

impl Histogram {
    const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        Self { name, help, labels, buckets, values: Mutex::new(BTreeMap::new()) }
    }

    /// Records one observation.
    pub fn observe(&self, labels: &[&str], value: Duration) {
        let secs = value.as_secs_f64();
        let mut values = self.values.lock().expect("metrics lock");
        let (counts, sum, count) = series(&mut values, labels, || (vec![0; self.buckets.len()], 0.0, 0));
        for (i, le) in self.buckets.iter().enumerate() {
            if secs <= *le {
                counts[i] += 1;
            }
        }
        *sum += secs;
        *count += 1;
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} histogram", self.name, self.help, self.name);
        for (values, (counts, sum, count)) in self.values.lock().expect("metrics lock").iter() {
            for (le, c) in self.buckets.iter().zip(counts) {
                let _ =
                    writeln!(out, "{}_bucket{} {c}", self.name, label_text(self.labels, values, Some(&le.to_string())));
            }
            let _ = writeln!(out, "{}_bucket{} {count}", self.name, label_text(self.labels, values, Some("+Inf")));
            let _ = writeln!(out, "{}_sum{} {sum}", self.name, label_text(self.labels, values, None));
            let _ = writeln!(out, "{}_count{} {count}", self.name, label_text(self.labels, values, None));
        }
    }
}

/// The series with these label values, created on first use. Label sets are small and closed, so
/// a scan finds an existing series without allocating a key (this runs for every delivery).
fn series<'a, V>(values: &'a mut BTreeMap<Vec<String>, V>, labels: &[&str], new: impl FnOnce() -> V) -> &'a mut V {
    let same = |key: &Vec<String>| key.len() == labels.len() && key.iter().zip(labels).all(|(k, l)| k == l);
    match values.keys().position(same) {
        Some(index) => values.values_mut().nth(index).expect("the key was just found"),
        None => values.entry(labels.iter().map(|l| l.to_string()).collect()).or_insert_with(new),
    }
}

fn label_text(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
        .collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() { String::new() } else { format!("{{{}}}", pairs.join(",")) }
}

const LATENCY: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Events the gateway was asked to store, by outcome (`accepted`, `duplicate`, `invalid`,
/// `forbidden`, `unavailable`).
pub static EVENTS_INGESTED: Family = Family::new(
    "herald_events_ingested_total",
    "Events submitted to the gateway, by outcome.",
    "counter",
    &["outcome"],
);
/// Time from sending an event to its PubAck.
pub static PUBLISH_SECONDS: Histogram =
    Histogram::new("herald_publish_duration_seconds", "Time to store an event in JetStream.", &[], LATENCY);
/// Events fanned out, by outcome (`fanned_out`, `invalid`, `retried`).
pub static FANOUT_EVENTS: Family =
    Family::new("herald_fanout_events_total", "Events taken by fan-out, by outcome.", "counter", &["outcome"]);
/// Deliveries created by fan-out, by path (`stored` in `HERALD_DELIVERIES`, or first attempted
/// `inline` by fan-out).
pub static FANOUT_DELIVERIES: Family = Family::new(
    "herald_fanout_deliveries_total",
    "Deliveries created by fan-out, by path (stored first, or first attempted inline).",
    "counter",
    &["path"],
);
/// Attempts, by outcome and status class (`2xx` … `5xx`, `none`).
pub static ATTEMPTS: Family = Family::new(
    "herald_delivery_attempts_total",
    "Webhook attempts, by outcome (delivered, retry, dead_letter) and status class.",
    "counter",
    &["outcome", "status_class"],
);
/// Duration of attempts.
pub static ATTEMPT_SECONDS: Histogram =
    Histogram::new("herald_attempt_duration_seconds", "Duration of one webhook attempt.", &["status_class"], LATENCY);
/// Deliveries put off without an attempt, by reason.
pub static DEFERRALS: Family = Family::new(
    "herald_deferrals_total",
    "Deliveries deferred without an attempt (open circuit, endpoint at its limit).",
    "counter",
    &["reason"],
);
/// Retries scheduled.
pub static RETRIES: Family =
    Family::new("herald_retries_scheduled_total", "Retries scheduled in JetStream.", "counter", &[]);
/// Dead letters written, by kind.
pub static DEAD_LETTERS: Family = Family::new(
    "herald_dead_letters_total",
    "Dead letters written, by kind (exhausted, refused, invalid_event, unroutable, poison).",
    "counter",
    &["kind"],
);
/// Deliveries handed out again that had already been delivered: acked without sending.
pub static REDELIVERIES_SKIPPED: Family = Family::new(
    "herald_redeliveries_skipped_total",
    "Deliveries handed out again (after a crash or a lost ack) whose attempt record shows them delivered: not sent again.",
    "counter",
    &[],
);
/// Events of a subscription's types that its payload filter left out.
pub static FILTERED_OUT: Family = Family::new(
    "herald_filtered_out_total",
    "Events of a subscription's types that its payload filter did not match: not deliveries, and not in the attempts.",
    "counter",
    &[],
);
/// Events whose data violated their type's schema, by what was done (`refused`, `dead_lettered`, `warned`).
pub static SCHEMA_VIOLATIONS: Family = Family::new(
    "herald_schema_violations_total",
    "Events whose data violated their type's schema in the catalog, by what was done with them.",
    "counter",
    &["action"],
);

pub static CONSUMER_REWINDS: Family = Family::new(
    "herald_consumer_rewinds_total",
    "Messages handed out under a consumer sequence this replica had already seen (a consumer's new leader starting from older state): checked against their attempt records before sending.",
    "counter",
    &[],
);
/// Webhook requests in flight in this replica.
pub static IN_FLIGHT: Family =
    Family::new("herald_deliveries_in_flight", "Webhook requests in flight in this replica.", "gauge", &[]);
/// Subscriptions whose circuit is open in this replica.
pub static CIRCUITS_OPEN: Family =
    Family::new("herald_circuits_open", "Subscriptions whose circuit is open in this replica.", "gauge", &[]);
/// Consumer backlog, by consumer and kind (`pending`, `ack_pending`).
pub static CONSUMER_LAG: Family = Family::new(
    "herald_consumer_messages",
    "Messages waiting in a JetStream consumer (pending) or handed out and unacked (ack_pending).",
    "gauge",
    &["consumer", "state"],
);

static ALL: LazyLock<Vec<&'static (dyn Render + Sync)>> = LazyLock::new(|| {
    vec![
        &EVENTS_INGESTED,
        &PUBLISH_SECONDS,
        &FANOUT_EVENTS,
        &FANOUT_DELIVERIES,
        &ATTEMPTS,
        &ATTEMPT_SECONDS,
        &DEFERRALS,
        &RETRIES,
        &DEAD_LETTERS,
        &REDELIVERIES_SKIPPED,
        &FILTERED_OUT,
        &SCHEMA_VIOLATIONS,
        &CONSUMER_REWINDS,
        &IN_FLIGHT,
        &CIRCUITS_OPEN,
        &CONSUMER_LAG,
    ]
});

trait Render {
    fn render_to(&self, out: &mut String);
}

impl Render for Family {
    fn render_to(&self, out: &mut String) {
        self.render(out);
    }
}

impl Render for Histogram {
    fn render_to(&self, out: &mut String) {
        self.render(out);
    }
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

/// Every metric in the Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    for metric in ALL.iter() {
        metric.render_to(&mut out);
    }
    out
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        static C: Family = Family::new("t_total", "A test.", "counter", &["outcome"]);
        static H: Histogram = Histogram::new("t_seconds", "A test.", &[], &[0.1, 1.0]);
        C.inc(&["ok"]);
        C.add(&["o\"k"], 2.0);
        H.observe(&[], Duration::from_millis(50));
        H.observe(&[], Duration::from_secs(2));
        let mut out = String::new();
        C.render(&mut out);
        H.render(&mut out);
        assert!(out.contains("# TYPE t_total counter\n"));
        assert!(out.contains("t_total{outcome=\"ok\"} 1\n"));
        assert!(out.contains("t_total{outcome=\"o\\\"k\"} 2\n"));
        assert!(out.contains("t_seconds_bucket{le=\"0.1\"} 1\n"));
        assert!(out.contains("t_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(out.contains("t_seconds_count 2\n"));
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(None), "none");
    }
}
