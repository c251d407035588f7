//! Delivery statistics, from the counts the dispatchers publish (`HERALD_STATS`): each
//! dispatcher replica adds up its attempts and the events it takes in per subscription and
//! minute and stores what changed every few seconds as a delta on `herald.stats.minutes.{hour}`;
//! once an hour is over, a gateway sums its deltas into a seal on
//! `herald.stats.hours.{hour}.{chunk}`. A gateway follows the deltas as they come, and on start
//! reads the seals of the window (`HERALD_STATS_WINDOW`, a day by default) and the deltas only of
//! the last hour or two and of hours not sealed yet: what it reads grows with subscriptions ×
//! hours, not with deliveries, and every gateway reads it once instead of every attempt record.
//! It is `warming` until it has. Memory: one counter per (subscription, minute) for the last hour
//! and per (subscription, hour) for the window, only where something happened.
//!
//! It also follows the operator tenant's `circuit.*` operational events to know which circuits
//! are open.

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

use herald_core::registry::Registry;
use herald_core::secrets::{KeyRing, Written};
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

    fn of_entry(e: &proto::StatsEntry) -> Self {
        Counts {
            events_in: e.events_in,
            attempts: e.attempts,
            delivered: e.delivered,
            failed: e.failed,
            dead_lettered: e.dead_lettered,
            skipped: 0,
            latency_ms_total: e.latency_ms_total,
        }
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
    /// Adds `counts` at `at` to the minute series (if `minutes`) and the hour series (if `hours`).
    fn add(&mut self, at: i64, counts: &Counts, minutes: bool, hours: bool) {
        if minutes {
            self.minutes.entry(at - at.rem_euclid(60)).or_default().add(counts);
        }
        if hours {
            self.hours.entry(at - at.rem_euclid(3600)).or_default().add(counts);
        }
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

/// Subscriptions whose open circuits a gateway keeps at most.
const MAX_CIRCUITS: usize = 10_000;
/// Replicas per subscription whose open circuit a gateway keeps at most.
const MAX_REPLICAS: usize = 256;

/// What a `circuit.*` event says, checked: ids that parse, a replica name and a URL of sane
/// lengths (a forged event could otherwise hold 250 KiB strings).
struct Circuit {
    subscription_id: String,
    tenant: String,
    url: String,
    replica: String,
    at: String,
}

impl Circuit {
    fn of(event: &proto::Event) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Data {
            subscription_id: String,
            tenant: String,
            #[serde(default)]
            url: String,
            replica: String,
            at: String,
        }
        let d: Data = serde_json::from_slice(&event.data).ok()?;
        let sane = herald_core::ids::SubscriptionId::parse(&d.subscription_id).is_ok()
            && herald_core::ids::TenantId::parse(&d.tenant).is_ok()
            && d.url.len() <= 2048
            && !d.replica.is_empty()
            && d.replica.len() <= 253
            && d.at.len() <= 64;
        sane.then_some(Self {
            subscription_id: d.subscription_id,
            tenant: d.tenant,
            url: d.url,
            replica: d.replica,
            at: d.at,
        })
    }
}

/// Where an hour's counts came from.
#[derive(Debug)]
enum Hour {
    /// Every delta of it, read by this gateway (`through`: the last one's stream sequence);
    /// summed by (subscription, tenant) for its seal. Sealed once it is over.
    Deltas { through: u64, sums: HashMap<(String, String), Counts> },
    /// Its seal; deltas stored after `through` come on top.
    Sealed { through: u64 },
}

/// How long after an hour is over its seal is made: deltas of its last seconds come within a
/// flush interval, and later only from a dispatcher that could not reach NATS (those are added
/// on top of the seal).
const SEAL_AFTER: i64 = 120;

/// Entries per seal chunk (well under NATS's default 1 MiB payload limit).
const SEAL_CHUNK: usize = 4_000;

#[derive(Default)]
struct Inner {
    overall: Series,
    by_tenant: HashMap<String, Series>,
    by_subscription: HashMap<String, Series>,
    hours: BTreeMap<i64, Hour>,
    /// Subscription → replica → (opened at, tenant, url).
    circuits: HashMap<String, BTreeMap<String, (String, String, String)>>,
}

/// Tenants with a series of their own by default (`HERALD_STATS_MAX_TENANTS`): about 1.5 KB each
/// for a day, 75 MB at the cap.
pub(crate) const DEFAULT_MAX_TENANTS: usize = 50_000;

/// The statistics a gateway keeps.
pub(crate) struct Stats {
    inner: Mutex<Inner>,
    /// Tenants with a series of their own, at most.
    max_tenants: std::sync::atomic::AtomicUsize,
    counts_caught_up: AtomicBool,
    circuits_caught_up: AtomicBool,
    window: Duration,
}

impl Stats {
    pub(crate) fn new(window: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            max_tenants: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_TENANTS),
            counts_caught_up: AtomicBool::new(false),
            circuits_caught_up: AtomicBool::new(false),
            window,
        })
    }

    /// Keeps at most `max` tenants' series; the rest are counted as [`herald_core::OTHER_TENANTS`].
    pub(crate) fn cap_tenants(&self, max: usize) {
        self.max_tenants.store(max.max(1), Ordering::Relaxed);
    }

    /// True until what happened within the window has been read back.
    pub(crate) fn warming(&self) -> bool {
        !(self.counts_caught_up.load(Ordering::Relaxed) && self.circuits_caught_up.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one delta (stored at `sequence`, its entries in the hour starting at `hour`).
    fn apply_delta(&self, sequence: u64, hour: i64, delta: &proto::StatsDelta, now: i64) {
        let first_minute = self.earliest(Interval::Minute, now);
        let max_tenants = self.max_tenants.load(Ordering::Relaxed);
        let mut guard = self.lock();
        let inner = &mut *guard;
        let state = inner.hours.entry(hour).or_insert_with(|| Hour::Deltas { through: 0, sums: HashMap::new() });
        for e in &delta.entries {
            let counts = Counts::of_entry(e);
            let to_hours = match state {
                Hour::Deltas { through, sums } => {
                    *through = (*through).max(sequence);
                    sums.entry((e.subscription_id.clone(), e.tenant.clone())).or_default().add(&counts);
                    true
                }
                Hour::Sealed { through } => sequence > *through,
            };
            let to_minutes = e.at >= first_minute;
            if !(to_minutes || to_hours) {
                continue;
            }
            inner.overall.add(e.at, &counts, to_minutes, to_hours);
            tenant_series(&mut inner.by_tenant, &e.tenant, max_tenants).add(e.at, &counts, to_minutes, to_hours);
            if !e.subscription_id.is_empty() {
                series_of(&mut inner.by_subscription, &e.subscription_id).add(e.at, &counts, to_minutes, to_hours);
            }
        }
    }

    /// Takes in the complete seal of `hour` (read on start, before any delta of it).
    fn apply_seal(&self, hour: i64, through: u64, entries: &[proto::StatsEntry]) {
        let max_tenants = self.max_tenants.load(Ordering::Relaxed);
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.hours.contains_key(&hour) {
            return;
        }
        inner.hours.insert(hour, Hour::Sealed { through });
        for e in entries {
            let counts = Counts::of_entry(e);
            inner.overall.add(hour, &counts, false, true);
            tenant_series(&mut inner.by_tenant, &e.tenant, max_tenants).add(hour, &counts, false, true);
            if !e.subscription_id.is_empty() {
                series_of(&mut inner.by_subscription, &e.subscription_id).add(hour, &counts, false, true);
            }
        }
    }

    /// The hours this gateway has every delta of, over for long enough to be sealed: each
    /// with the last delta's sequence and its entries.
    fn due_seals(&self, now: i64) -> Vec<(i64, u64, Vec<proto::StatsEntry>)> {
        let inner = self.lock();
        inner
            .hours
            .iter()
            .filter(|(hour, _)| **hour + 3600 + SEAL_AFTER <= now)
            .filter_map(|(hour, state)| match state {
                Hour::Deltas { through, sums } => {
                    let entries = sums
                        .iter()
                        .map(|((subscription_id, tenant), c)| proto::StatsEntry {
                            at: *hour,
                            subscription_id: subscription_id.clone(),
                            tenant: tenant.clone(),
                            events_in: c.events_in,
                            attempts: c.attempts,
                            delivered: c.delivered,
                            failed: c.failed,
                            dead_lettered: c.dead_lettered,
                            latency_ms_total: c.latency_ms_total,
                        })
                        .collect();
                    Some((*hour, *through, entries))
                }
                Hour::Sealed { .. } => None,
            })
            .collect()
    }

    /// The last delta the seal of `hour` took in, if this gateway read its seal.
    fn sealed_through(&self, hour: i64) -> Option<u64> {
        match self.lock().hours.get(&hour) {
            Some(Hour::Sealed { through }) => Some(*through),
            _ => None,
        }
    }

    /// Forgets the counts (a read-back that failed half-way starts again from nothing).
    fn reset(&self) {
        let mut inner = self.lock();
        inner.overall = Series::default();
        inner.by_tenant.clear();
        inner.by_subscription.clear();
        inner.hours.clear();
    }

    /// `hour` is sealed (by this gateway or another): its sums are no longer needed.
    fn sealed(&self, hour: i64) {
        let mut inner = self.lock();
        if let Some(state) = inner.hours.get_mut(&hour) {
            if let Hour::Deltas { through, .. } = state {
                *state = Hour::Sealed { through: *through };
            }
        }
    }

    /// Takes in a `circuit.*` event `written` by a dispatcher (forged ones are not believed),
    /// at `now`: opened or closed in one replica, for a subscription that has an id, a tenant, a
    /// URL and a time within the window. What it keeps is bounded: [`MAX_CIRCUITS`] subscriptions,
    /// [`MAX_REPLICAS`] replicas each, short strings.
    fn record_circuit(&self, event: &proto::Event, written: Written, now: i64) {
        if written == Written::Forged {
            return;
        }
        let Some(c) = Circuit::of(event) else { return };
        let Ok(at) = OffsetDateTime::parse(&c.at, &time::format_description::well_known::Rfc3339) else { return };
        let mut inner = self.lock();
        match event.r#type.as_str() {
            "circuit.opened" => {
                if at.unix_timestamp() < now - self.window.as_secs() as i64 {
                    return;
                }
                if !inner.circuits.contains_key(&c.subscription_id) && inner.circuits.len() >= MAX_CIRCUITS {
                    tracing::warn!(
                        subscription = %c.subscription_id,
                        "{MAX_CIRCUITS} open circuits known already: this one is not shown"
                    );
                    return;
                }
                let replicas = inner.circuits.entry(c.subscription_id).or_default();
                if replicas.len() < MAX_REPLICAS || replicas.contains_key(&c.replica) {
                    replicas.insert(c.replica, (c.at, c.tenant, c.url));
                }
            }
            "circuit.closed" => {
                if let Some(replicas) = inner.circuits.get_mut(&c.subscription_id) {
                    replicas.remove(&c.replica);
                    if replicas.is_empty() {
                        inner.circuits.remove(&c.subscription_id);
                    }
                }
            }
            _ => {}
        }
    }

    /// Forgets the circuits of subscriptions that no longer `exist`, and those opened before the
    /// window (a gateway started now would not know of them either).
    fn prune_circuits(&self, now: i64, exist: impl Fn(&str) -> bool) {
        let oldest = now - self.window.as_secs() as i64;
        let recent = |at: &str| {
            OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .is_ok_and(|t| t.unix_timestamp() >= oldest)
        };
        self.lock().circuits.retain(|sub, replicas| {
            replicas.retain(|_, (at, _, _)| recent(at));
            !replicas.is_empty() && exist(sub)
        });
    }

    fn prune(&self, now: i64) {
        let window = self.window.as_secs() as i64;
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.overall.prune(now, window);
        let first_hour = now - window - 3600;
        inner.hours = inner.hours.split_off(&first_hour);
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

fn series_of<'m>(map: &'m mut HashMap<String, Series>, key: &str) -> &'m mut Series {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), Series::default());
    }
    map.get_mut(key).expect("just inserted")
}

/// The series of `tenant`, or of [`herald_core::OTHER_TENANTS`] when `max` tenants have one already.
fn tenant_series<'m>(map: &'m mut HashMap<String, Series>, tenant: &str, max: usize) -> &'m mut Series {
    if !map.contains_key(tenant) && map.len() >= max {
        herald_core::metrics::STATS_TENANTS_CAPPED.inc(&[]);
        return series_of(map, herald_core::OTHER_TENANTS);
    }
    series_of(map, tenant)
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
#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: i64, sub: &str, tenant: &str, outcome: &str, ms: u64) -> proto::StatsEntry {
        let mut e = proto::StatsEntry {
            at: at - at.rem_euclid(60),
            subscription_id: sub.into(),
            tenant: tenant.into(),
            attempts: 1,
            latency_ms_total: ms,
            ..Default::default()
        };
        match outcome {
            "delivered" => e.delivered = 1,
            "retry" => e.failed = 1,
            _ => e.dead_lettered = 1,
        }
        e
    }

    fn delta(entries: Vec<proto::StatsEntry>) -> proto::StatsDelta {
        proto::StatsDelta { replica: "d1".into(), entries }
    }

    fn hour(at: i64) -> i64 {
        at - at.rem_euclid(3600)
    }

    #[test]
    fn counts_land_in_their_minute_and_hour_and_old_ones_are_pruned() {
        let stats = Stats::new(Duration::from_secs(24 * 3600));
        let now = 1_800_000_000 + 1830; // an hour starts at 1_800_000_000; this is half past
        let events = proto::StatsEntry { at: now - 60, tenant: "acme".into(), events_in: 1, ..Default::default() };
        stats.apply_delta(
            1,
            hour(now),
            &delta(vec![
                entry(now - 10, "s1", "acme", "delivered", 20),
                entry(now - 70, "s1", "acme", "retry", 100),
                events,
            ]),
            now,
        );
        stats.apply_delta(2, hour(now - 7200), &delta(vec![entry(now - 7200, "s2", "acme", "dead_letter", 5)]), now);
        stats.apply_delta(3, hour(now), &delta(vec![entry(now - 5, "s3", "zeta", "delivered", 1)]), now);
        let minutes = stats.series(Of::Subscription("s1"), Interval::Minute, None, now);
        assert_eq!(minutes.len(), 60);
        let last = minutes.last().unwrap().1;
        assert_eq!((last.attempts, last.delivered, last.latency_ms_total), (1, 1, 20));
        assert_eq!(minutes[58].1.failed, 1);
        let acme = total(&stats.series(Of::Tenant("acme"), Interval::Hour, None, now));
        assert_eq!((acme.events_in, acme.attempts, acme.delivered, acme.failed, acme.dead_lettered), (1, 3, 1, 1, 1));
        let all = total(&stats.series(Of::All, Interval::Hour, None, now));
        assert_eq!((all.attempts, all.delivered), (4, 2));
        // The two-hour-old one is beyond the minute series but within the hour series.
        assert_eq!(total(&stats.series(Of::Subscription("s2"), Interval::Minute, None, now)).attempts, 0);
        assert_eq!(total(&stats.series(Of::Subscription("s2"), Interval::Hour, None, now)).dead_lettered, 1);
        // A day later everything has aged out.
        stats.prune(now + 25 * 3600);
        assert!(stats.lock().by_subscription.is_empty());
        assert!(stats.lock().hours.is_empty());
        assert_eq!(stats.tenant_totals().len(), 0);
    }

    #[test]
    fn an_hour_is_sealed_once_over_and_a_seal_read_back_counts_the_same_plus_later_deltas() {
        let now = 1_800_000_000 + 3 * 3600 + 600;
        let old = 1_800_000_000; // three hours ago: beyond the minutes kept
        let live = Stats::new(Duration::from_secs(24 * 3600));
        live.apply_delta(5, old, &delta(vec![entry(old + 100, "s1", "acme", "delivered", 10)]), old + 200);
        live.apply_delta(9, old, &delta(vec![entry(old + 3500, "s1", "acme", "retry", 30)]), old + 3590);
        live.apply_delta(10, old + 3600, &delta(vec![entry(old + 3601, "s1", "acme", "delivered", 1)]), old + 3700);
        // Not over for long enough yet: nothing to seal.
        assert!(live.due_seals(old + 3600 + SEAL_AFTER - 1).is_empty());
        let due = live.due_seals(now);
        assert_eq!(due.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(), vec![(old, 9), (old + 3600, 10)]);
        let (_, through, entries) = &due[0];
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].attempts, entries[0].delivered, entries[0].failed, entries[0].latency_ms_total),
            (2, 1, 1, 40)
        );
        live.sealed(old);
        assert_eq!(live.due_seals(now).len(), 1, "sealed once");

        // A gateway started later reads the seal, then a delta stored after it: counted on top;
        // one the seal took in is not counted twice.
        let restarted = Stats::new(Duration::from_secs(24 * 3600));
        restarted.apply_seal(old, *through, entries);
        assert_eq!(restarted.sealed_through(old), Some(9));
        restarted.apply_delta(9, old, &delta(vec![entry(old + 3500, "s1", "acme", "retry", 30)]), now);
        restarted.apply_delta(12, old, &delta(vec![entry(old + 3599, "s1", "acme", "delivered", 2)]), now);
        let hours = restarted.series(Of::Subscription("s1"), Interval::Hour, None, now);
        let at_old = hours.iter().find(|(t, _)| *t == old).unwrap().1;
        assert_eq!((at_old.attempts, at_old.delivered, at_old.failed), (3, 2, 1));
        assert!(restarted.due_seals(now).is_empty(), "a read seal is not made again");
    }

    #[test]
    fn tenants_beyond_the_cap_are_counted_together() {
        let stats = Stats::new(Duration::from_secs(3600));
        stats.cap_tenants(3);
        let now = 1_800_000_000 + 1830;
        let events = |tenant: &str| proto::StatsEntry {
            at: now - 60,
            tenant: tenant.into(),
            events_in: 1,
            ..Default::default()
        };
        let entries = (0..10).map(|i| events(&format!("t{i}"))).collect();
        stats.apply_delta(1, hour(now), &delta(entries), now);
        let totals = stats.tenant_totals();
        assert_eq!(totals.len(), 4, "three tenants and (other): {:?}", totals.keys().collect::<Vec<_>>());
        assert_eq!(totals[herald_core::OTHER_TENANTS].events_in, 7);
        assert_eq!(totals.values().map(|c| c.events_in).sum::<u64>(), 10, "nothing lost");
        // A tenant that has a series keeps adding to it.
        stats.apply_delta(2, hour(now), &delta(vec![events("t0")]), now);
        assert_eq!(stats.tenant_totals()["t0"].events_in, 2);
    }

    #[test]
    fn circuits_open_per_replica_and_close() {
        let stats = Stats::new(Duration::from_secs(3600));
        let now = OffsetDateTime::parse("2026-01-01T00:30:00Z", &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp();
        let sub = "sub_01JABCDEFGHJKMNPQRSTVWXYZ0";
        let ev = |kind: &str, replica: &str, at: &str| circuit_event(kind, sub, replica, at, "https://x");
        stats.record_circuit(&ev("opened", "d1", "2026-01-01T00:00:02Z"), Written::ByHerald, now);
        stats.record_circuit(&ev("opened", "d2", "2026-01-01T00:00:01Z"), Written::Unknown, now);
        let open = stats.open_circuits();
        assert_eq!(open.len(), 1);
        assert_eq!((open[0].replicas.len(), open[0].since.as_str()), (2, "2026-01-01T00:00:01Z"));
        stats.record_circuit(&ev("closed", "d1", "2026-01-01T00:01:00Z"), Written::ByHerald, now);
        assert_eq!(stats.open_circuits()[0].replicas, vec!["d2".to_string()]);
        // A forged close does not hide the circuit; the real one does.
        stats.record_circuit(&ev("closed", "d2", "2026-01-01T00:01:00Z"), Written::Forged, now);
        assert_eq!(stats.open_circuits().len(), 1);
        stats.record_circuit(&ev("closed", "d2", "2026-01-01T00:01:00Z"), Written::ByHerald, now);
        assert!(stats.open_circuits().is_empty());
    }

    fn circuit_event(kind: &str, sub: &str, replica: &str, at: &str, url: &str) -> proto::Event {
        proto::Event {
            r#type: format!("circuit.{kind}"),
            data: serde_json::to_vec(&serde_json::json!({
                "subscription_id": sub, "tenant": "acme", "url": url, "replica": replica, "at": at
            }))
            .unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn circuits_kept_are_bounded_checked_and_pruned() {
        let stats = Stats::new(Duration::from_secs(3600));
        let now = 1_800_000_000;
        let at = |t: i64| {
            OffsetDateTime::from_unix_timestamp(t)
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let sub = |i: usize| format!("sub_{}", ulid::Ulid::from_parts(i as u64, 7));
        // Forged opens, strings too long, ids that do not parse, times outside the window: none kept.
        let huge = "x".repeat(250 * 1024);
        for (event, written) in [
            (circuit_event("opened", &sub(1), "d1", &at(now), "https://x"), Written::Forged),
            (circuit_event("opened", &sub(1), &huge, &at(now), "https://x"), Written::ByHerald),
            (circuit_event("opened", &sub(1), "d1", &at(now), &huge), Written::ByHerald),
            (circuit_event("opened", "not-a-sub", "d1", &at(now), "https://x"), Written::ByHerald),
            (circuit_event("opened", &sub(1), "d1", &at(now - 7200), "https://x"), Written::ByHerald),
            (circuit_event("opened", &sub(1), "d1", "yesterday", "https://x"), Written::ByHerald),
        ] {
            stats.record_circuit(&event, written, now);
        }
        assert!(stats.open_circuits().is_empty());
        // At most MAX_CIRCUITS subscriptions.
        for i in 0..MAX_CIRCUITS + 50 {
            stats.record_circuit(
                &circuit_event("opened", &sub(i), "d1", &at(now), "https://x"),
                Written::ByHerald,
                now,
            );
        }
        assert_eq!(stats.open_circuits().len(), MAX_CIRCUITS);
        // Pruned: those of subscriptions gone, and those opened before the window.
        stats.prune_circuits(now, |s| s != sub(0));
        assert_eq!(stats.open_circuits().len(), MAX_CIRCUITS - 1);
        stats.prune_circuits(now + 3601, |_| true);
        assert!(stats.open_circuits().is_empty());
    }
}
