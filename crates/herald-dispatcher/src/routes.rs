//! Which fan-out serves which subscription. Every replica pulls the shared consumer
//! (`herald-fanout`), which serves unordered subscriptions: fan-out and first attempts grow with
//! replicas. Ordered (`fifo`) subscriptions are served by the ordered consumer
//! (`herald-fanout-ordered`), pinned to one replica at a time so their deliveries are stored in
//! event order, and filtered to their events alone, so that other subscriptions pay nothing
//! for it. A subscription whose ordering changes is served by both for [`GRACE`] after this
//! replica learns of the change (the registry notes when), so no event falls between them while
//! replicas learn of it (a delivery stored by both is deduplicated by its id). Only the
//! registry's few notable subscriptions (ordered, limited, or changed lately) are looked at
//! every second, never all of them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use herald_core::nats;
use herald_core::proto::Subscription;
use herald_core::registry::Registry;
use herald_core::subscription::is_fifo;

/// How long a subscription stays served by the fan-out it leaves, and how long a subject stays
/// in the ordered consumer's filter after nothing here wants it any more.
pub(crate) const GRACE: Duration = Duration::from_secs(10);

/// How often the registry is looked at and the ordered consumer's filter checked.
const EVERY: Duration = Duration::from_secs(1);

/// How far back the stream's end is remembered, to start the ordered consumer where a newly
/// ordered subscription began.
const MARKS_KEPT: Duration = Duration::from_secs(60);

/// What this replica remembers of the ordered filter.
#[derive(Debug)]
pub(crate) struct Routes {
    registry: Arc<Registry>,
    /// Which partition a tenant's events are in.
    partitions: nats::Partitions,
    /// Subjects of the ordered consumers' filters (each names its partition), with when each
    /// was last wanted here (or first found in a filter: another replica may want it for
    /// reasons this one has not seen).
    subjects: Mutex<HashMap<String, Instant>>,
    /// Each events stream's last sequence as seen at each round, newest last: where the stream
    /// ended at a given time.
    marks: Mutex<HashMap<nats::Partition, VecDeque<(SystemTime, u64)>>>,
}

impl Routes {
    pub(crate) fn new(registry: Arc<Registry>, partitions: nats::Partitions) -> Self {
        Self { registry, partitions, subjects: Mutex::default(), marks: Mutex::default() }
    }

    /// Those of `subs` whose events are in `partition`: every one in a partition left by a
    /// deployment on more partitions, which may hold any tenant's events.
    fn in_partition<'a>(
        &self,
        partition: nats::Partition,
        subs: &'a [Arc<Subscription>],
    ) -> impl Iterator<Item = &'a Arc<Subscription>> {
        let partitions = self.partitions;
        let left = partition.0 >= partitions.count();
        subs.iter().filter(move |s| left || partitions.of_tenant(&s.tenant) == partition)
    }

    fn changed_lately(&self, sub: &Subscription) -> bool {
        self.registry.ordering_changed_within(&sub.id, GRACE)
    }

    /// The shared fan-out serves `sub`: it is unordered, or was moments ago.
    pub(crate) fn shared_serves(&self, sub: &Subscription) -> bool {
        !is_fifo(sub) || self.changed_lately(sub)
    }

    /// The ordered fan-out serves `sub`: it is ordered, or was moments ago.
    pub(crate) fn ordered_serves(&self, sub: &Subscription) -> bool {
        is_fifo(sub) || self.changed_lately(sub)
    }

    /// The filter the ordered consumer of `partition` should have, given its `current` one: the
    /// subjects of the enabled subscriptions served by the ordered fan-out whose events are in
    /// that partition, and those of `current` wanted within [`GRACE`].
    fn wanted_filter(&self, partition: nats::Partition, subs: &[Arc<Subscription>], current: &[String]) -> Vec<String> {
        let now = Instant::now();
        let wanted: Vec<String> = self
            .in_partition(partition, subs)
            .filter(|s| s.enabled && self.ordered_serves(s))
            .flat_map(|s| s.event_types.iter().map(|p| partition.event_subject(&s.tenant, p)))
            .collect();
        let idle = nats::ordered_idle_filter(partition);
        let prefix = partition.events_prefix();
        let mut subjects = self.subjects.lock().expect("routes lock");
        for subject in &wanted {
            subjects.insert(subject.clone(), now);
        }
        for subject in current.iter().filter(|s| **s != idle) {
            subjects.entry(subject.clone()).or_insert(now);
        }
        subjects.retain(|s, _| !s.starts_with(&prefix) || current.contains(s) || wanted.contains(s));
        let selections = subjects
            .iter()
            .filter(|(_, at)| at.elapsed() < GRACE)
            .filter_map(|(s, _)| s.strip_prefix(&prefix)?.split_once('.'));
        nats::ordered_filters(partition, selections)
    }

    /// Notes that the events stream of `partition` ended at `last` now.
    fn mark(&self, partition: nats::Partition, last: u64) {
        let now = SystemTime::now();
        let mut marks = self.marks.lock().expect("routes lock");
        let marks = marks.entry(partition).or_default();
        marks.push_back((now, last));
        while marks.front().is_some_and(|(at, _)| now.duration_since(*at).unwrap_or_default() > MARKS_KEPT) {
            marks.pop_front();
        }
    }

    /// When the earliest of the subscriptions the ordered consumer newly serves (those
    /// `current` does not cover) became ordered: its `updated_at`, a second early for clocks,
    /// and at most [`MARKS_KEPT`] / 2 ago (what is fanned out again is deduplicated within
    /// the duplicate window). `None` if it serves no new subscription.
    fn new_since(
        &self,
        partition: nats::Partition,
        subs: &[Arc<Subscription>],
        current: &[String],
    ) -> Option<SystemTime> {
        let covered = |tenant: &str, pattern: &str| {
            let subject = partition.event_subject(tenant, pattern);
            current.iter().any(|c| herald_core::pattern::covers(c, &subject))
        };
        let since = self
            .in_partition(partition, subs)
            .filter(|s| s.enabled && self.ordered_serves(s))
            .filter(|s| s.event_types.iter().any(|p| !covered(&s.tenant, p)))
            .map(|s| if s.updated_at.is_empty() { &s.created_at } else { &s.updated_at })
            .filter_map(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
            .min()?;
        let now = SystemTime::now();
        Some((SystemTime::from(since) - Duration::from_secs(1)).clamp(now - MARKS_KEPT / 2, now))
    }

    /// The sequence after the stream's end as of the last mark taken at or before `since` (or
    /// the oldest mark).
    fn sequence_at(&self, partition: nats::Partition, since: SystemTime) -> Option<u64> {
        let marks = self.marks.lock().expect("routes lock");
        let marks = marks.get(&partition)?;
        let mark = marks.iter().rev().find(|(at, _)| *at <= since).or(marks.front())?;
        Some(mark.1 + 1)
    }
}

/// Keeps the routes current and the ordered consumer's filter in line with the ordered
/// subscriptions, until `shutdown`. Every replica does it; they agree within moments, and a
/// replica only re-creates the consumer when its filter differs from what it wants.
/// In partitions left by a deployment on more partitions, the ordered consumer reads every
/// ordered subscription's events until they are drained.
pub(crate) async fn supervise(
    routes: Arc<Routes>,
    js: async_nats::jetstream::Context,
    in_use: Vec<nats::Partition>,
    shutdown: CancellationToken,
) {
    loop {
        let subs = routes.registry.notable();
        for partition in in_use.iter().copied() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = reconcile(&routes, partition, &subs, &js) => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, %partition, "ordered fan-out: cannot check or update its filter; will retry");
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

async fn reconcile(
    routes: &Routes,
    partition: nats::Partition,
    subs: &[Arc<Subscription>],
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::DeliverPolicy;
    let mut stream = js.get_stream(partition.events_stream()).await?;
    // The stream's end first, then the consumer: if the consumer has nothing left to do, every
    // event it selects up to that end has been fanned out.
    let last = stream.info().await?.state.last_sequence;
    routes.mark(partition, last);
    let info = stream.consumer_info(nats::ORDERED_FANOUT_CONSUMER).await?;
    let current = if info.config.filter_subjects.is_empty() {
        vec![info.config.filter_subject.clone()]
    } else {
        info.config.filter_subjects.clone()
    };
    let mut current_sorted = current.clone();
    current_sorted.sort();
    let wanted = routes.wanted_filter(partition, subs, &current);
    if wanted == current_sorted {
        return Ok(());
    }
    // Where to start: where a newly served subscription became ordered, and no later than
    // the old consumer's unfinished work (what is fanned out again is deduplicated by
    // delivery id); after the end if there is neither.
    let since = routes.new_since(partition, subs, &current);
    let start = if info.num_pending == 0 && info.num_ack_pending == 0 {
        match since {
            Some(t) => DeliverPolicy::ByStartTime { start_time: t.into() },
            None => DeliverPolicy::ByStartSequence { start_sequence: last + 1 },
        }
    } else {
        let unfinished = info.ack_floor.stream_sequence + 1;
        let new = since.and_then(|t| routes.sequence_at(partition, t)).unwrap_or(unfinished);
        DeliverPolicy::ByStartSequence { start_sequence: unfinished.min(new) }
    };
    stream.delete_consumer(nats::ORDERED_FANOUT_CONSUMER).await.ok();
    let config = nats::ordered_fanout_config(wanted.clone(), start);
    match stream.create_consumer(config).await {
        Ok(_) => {
            tracing::info!(filter = ?wanted, ?start, %partition, "ordered fan-out now reads the ordered subscriptions' events")
        }
        // Another replica re-created it at the same moment; the next round compares again.
        Err(e) => tracing::debug!(error = %e, "ordered fan-out: re-created by another replica"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P0: nats::Partition = nats::Partition::ZERO;

    /// `sub_` and a ULID of `n`.
    fn id(n: u128) -> String {
        format!("sub_{n:026}")
    }

    fn sub(id: &str, fifo: bool, types: &[&str]) -> Arc<Subscription> {
        Arc::new(Subscription {
            id: id.into(),
            tenant: "t".into(),
            enabled: true,
            ordering: if fifo { "fifo".into() } else { String::new() },
            event_types: types.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscription_changing_its_ordering_is_served_by_both_fan_outs_for_a_while() {
        let registry = Registry::new();
        let routes = Routes::new(registry.clone(), nats::Partitions::default());
        let before = sub(&id(1), false, &["a.b"]);
        registry.upsert(1, (*before).clone());
        assert!(routes.shared_serves(&before));
        assert!(!routes.ordered_serves(&before));
        assert!(registry.notable().is_empty(), "an unordered subscription is not looked at every second");

        // Once this replica learns of the change, both serve it for the grace period.
        let after = sub(&id(1), true, &["a.b"]);
        registry.upsert(2, (*after).clone());
        assert!(routes.shared_serves(&after) && routes.ordered_serves(&after));
        assert_eq!(registry.notable().len(), 1);
        tokio::time::sleep(GRACE).await;
        assert!(!routes.shared_serves(&after), "the shared fan-out lets go after the grace period");
        assert!(routes.ordered_serves(&after));

        // And back: the ordered fan-out keeps it for the grace period.
        registry.upsert(3, (*before).clone());
        assert!(routes.shared_serves(&before) && routes.ordered_serves(&before));
        tokio::time::sleep(GRACE).await;
        assert!(!routes.ordered_serves(&before));

        // A subscription this replica never saw unordered goes the ordered way at once.
        let new = sub(&id(2), true, &["x"]);
        registry.upsert(4, (*new).clone());
        assert!(!routes.shared_serves(&new));
    }

    #[tokio::test(start_paused = true)]
    async fn the_ordered_filter_follows_ordered_subscriptions_and_keeps_what_others_want_for_a_while() {
        let routes = Routes::new(Registry::new(), nats::Partitions::default());
        let idle = vec![nats::ORDERED_IDLE_FILTER.to_owned()];
        let plain = sub(&id(10), false, &["p.q"]);
        assert_eq!(
            routes.wanted_filter(P0, std::slice::from_ref(&plain), &idle),
            idle,
            "no ordered subscription: idle"
        );

        let ordered = sub(&id(11), true, &["a.*", "a.b"]);
        let filter = routes.wanted_filter(P0, &[plain.clone(), ordered.clone()], &idle);
        assert_eq!(filter, vec!["herald.events.t.a.*"]);

        // A subject found in the filter that this replica does not want (another replica put it
        // there) stays for the grace period, then goes.
        let current = vec!["herald.events.t.a.*".to_owned(), "herald.events.t.z".to_owned()];
        assert_eq!(routes.wanted_filter(P0, std::slice::from_ref(&ordered), &current), current);
        tokio::time::sleep(GRACE).await;
        assert_eq!(routes.wanted_filter(P0, std::slice::from_ref(&ordered), &current), vec!["herald.events.t.a.*"]);

        // A disabled ordered subscription needs no events.
        let disabled = Arc::new(Subscription { enabled: false, ..(*ordered).clone() });
        let current = vec!["herald.events.t.a.*".to_owned()];
        tokio::time::sleep(GRACE).await;
        assert_eq!(routes.wanted_filter(P0, &[disabled], &current), idle);
    }

    #[test]
    fn the_ordered_consumer_starts_where_a_newly_ordered_subscription_began() {
        let routes = Routes::new(Registry::new(), nats::Partitions::default());
        let rfc3339 = |t: SystemTime| {
            time::OffsetDateTime::from(t).format(&time::format_description::well_known::Rfc3339).unwrap()
        };
        let now = SystemTime::now();
        {
            let mut marks = routes.marks.lock().unwrap();
            let marks = marks.entry(P0).or_default();
            for (ago, last) in [(25, 100), (20, 200), (10, 300), (0, 400)] {
                marks.push_back((now - Duration::from_secs(ago), last));
            }
        }
        let mut new = (*sub(&id(11), true, &["a.b"])).clone();
        new.updated_at = rfc3339(now - Duration::from_secs(15));
        let new = Arc::new(new);
        let idle = vec![nats::ORDERED_IDLE_FILTER.to_owned()];
        // Made 15 s ago: a second earlier, and after the mark of 20 s ago, the last before it.
        let since = routes.new_since(P0, std::slice::from_ref(&new), &idle).unwrap();
        let ago = now.duration_since(since).unwrap().as_secs_f64();
        assert!((15.9..16.5).contains(&ago), "{ago}");
        assert_eq!(routes.sequence_at(P0, since), Some(201));
        // Already read by the consumer: no constraint.
        assert_eq!(routes.new_since(P0, std::slice::from_ref(&new), &["herald.events.t.>".to_owned()]), None);
        // Made long ago (a replica lost it from the filter for a moment): not further back
        // than the duplicate window keeps track of.
        let mut old = (*new).clone();
        old.updated_at = rfc3339(now - Duration::from_secs(3600));
        let since = routes.new_since(P0, &[Arc::new(old)], &idle).unwrap();
        assert!(now.duration_since(since).unwrap() <= MARKS_KEPT / 2);
        assert_eq!(routes.sequence_at(P0, now - Duration::from_secs(90)), Some(101), "before every mark: the oldest");
        // Unordered ones do not count.
        assert_eq!(routes.new_since(P0, &[sub(&id(12), false, &["x"])], &idle), None);
    }

    #[tokio::test(start_paused = true)]
    async fn each_partitions_ordered_consumer_reads_the_ordered_subscriptions_of_its_tenants() {
        let partitions = nats::Partitions::new(4).unwrap();
        let routes = Routes::new(Registry::new(), partitions);
        let mut subs = Vec::new();
        for (n, tenant) in ["t", "u", "v", "w", "x"].into_iter().enumerate() {
            let mut ordered = (*sub(&id(20 + n as u128), true, &["a"])).clone();
            ordered.tenant = tenant.into();
            subs.push(Arc::new(ordered));
        }
        let mut seen = 0;
        for partition in partitions.all() {
            let idle = vec![nats::ordered_idle_filter(partition)];
            let filter = routes.wanted_filter(partition, &subs, &idle);
            let mine: Vec<String> = subs
                .iter()
                .filter(|s| partitions.of_tenant(&s.tenant) == partition)
                .map(|s| partition.event_subject(&s.tenant, "a"))
                .collect();
            if mine.is_empty() {
                assert_eq!(filter, idle, "partition {partition}");
            } else {
                let mut mine = mine;
                mine.sort();
                assert_eq!(filter, mine, "partition {partition}");
                seen += mine.len();
            }
        }
        assert_eq!(seen, subs.len(), "every ordered subscription is read in exactly one partition");
    }
}
