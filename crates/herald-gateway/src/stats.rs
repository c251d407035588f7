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

use serde::Serialize;
use time::OffsetDateTime;

use herald_core::proto;
use herald_core::secrets::Written;

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

mod follow;
pub(crate) use follow::spawn;

#[cfg(test)]
mod tests;
