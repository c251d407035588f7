//! Partitioned streams: events, deliveries and attempt records spread over `P` streams of each
//! kind (`HERALD_PARTITIONS`), so that their leaders, and the work of storing them, spread over
//! a cluster's nodes.
//!
//! A tenant's events are in one partition, chosen by a stable hash of the tenant id, so that
//! event order holds for the ordered subscriptions (which select one tenant's events). A
//! subscription's deliveries, lane, retries and attempt records are in one partition, chosen by
//! a stable hash of the subscription id, so that its order and limits hold. Partition 0 keeps
//! the names of the layout before partitions (`HERALD_EVENTS`, `herald.events.…`); partition
//! `p > 0` is `HERALD_EVENTS_{p}` on `herald.p{p}.events.…`, and so on for each kind.
//!
//! The hash is the 32-bit FNV-1a of the id's bytes, modulo `P`: other tools may compute it.

use std::fmt;

/// The largest `HERALD_PARTITIONS`.
pub const MAX_PARTITIONS: u16 = 64;

/// One partition: names its streams and subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Partition(pub u16);

/// How many partitions there are, and which one an id is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitions(u16);

fn fnv1a(id: &str) -> u32 {
    id.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

impl Default for Partitions {
    fn default() -> Self {
        Self(1)
    }
}

impl Partitions {
    /// `count` partitions, 1 to [`MAX_PARTITIONS`].
    pub fn new(count: u16) -> Result<Self, String> {
        if (1..=MAX_PARTITIONS).contains(&count) {
            Ok(Self(count))
        } else {
            Err(format!("HERALD_PARTITIONS must be 1 to {MAX_PARTITIONS}, not {count}"))
        }
    }

    /// How many.
    pub fn count(self) -> u16 {
        self.0
    }

    /// Every partition, from 0.
    pub fn all(self) -> impl Iterator<Item = Partition> + Clone {
        (0..self.0).map(Partition)
    }

    /// The partition of a tenant's events.
    pub fn of_tenant(self, tenant: &str) -> Partition {
        Partition((fnv1a(tenant) % u32::from(self.0)) as u16)
    }

    /// The partition of a subscription's deliveries, lane, retries and attempt records.
    pub fn of_subscription(self, subscription_id: &str) -> Partition {
        Partition((fnv1a(subscription_id) % u32::from(self.0)) as u16)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Partitions' numbers as metric labels.
const LABELS: [&str; MAX_PARTITIONS as usize] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16", "17", "18", "19", "20",
    "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32", "33", "34", "35", "36", "37", "38", "39",
    "40", "41", "42", "43", "44", "45", "46", "47", "48", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58",
    "59", "60", "61", "62", "63",
];

impl Partition {
    /// The partition of the layout before partitions.
    pub const ZERO: Self = Self(0);

    /// Its number as a metric label (`"64+"` past [`MAX_PARTITIONS`]: streams left by another
    /// tool).
    pub fn label(self) -> &'static str {
        LABELS.get(usize::from(self.0)).copied().unwrap_or("64+")
    }

    /// `base` for partition 0, `{base}_{p}` for the others.
    fn stream(self, base: &str) -> String {
        match self.0 {
            0 => base.to_owned(),
            p => format!("{base}_{p}"),
        }
    }

    /// `herald.{kind}.` for partition 0, `herald.p{p}.{kind}.` for the others.
    pub fn prefix(self, kind: &str) -> String {
        match self.0 {
            0 => format!("herald.{kind}."),
            p => format!("herald.p{p}.{kind}."),
        }
    }

    /// Its events stream.
    pub fn events_stream(self) -> String {
        self.stream(crate::nats::EVENTS_STREAM)
    }

    /// Its deliveries stream (due deliveries, lanes and retry schedules).
    pub fn deliveries_stream(self) -> String {
        self.stream(crate::nats::DELIVERIES_STREAM)
    }

    /// Its attempt records stream.
    pub fn attempts_stream(self) -> String {
        self.stream(crate::nats::ATTEMPTS_STREAM)
    }

    /// `herald[.p{p}].events.`, followed by `{tenant}.{type…}`.
    pub fn events_prefix(self) -> String {
        self.prefix("events")
    }

    /// `herald[.p{p}].events.{tenant}.{type}`.
    pub fn event_subject(self, tenant: &str, event_type: &str) -> String {
        let mut subject = self.events_prefix();
        subject.extend([tenant, ".", event_type]);
        subject
    }

    /// `herald[.p{p}].events.>`.
    pub fn events_filter(self) -> String {
        self.events_prefix() + ">"
    }

    /// `herald[.p{p}].deliveries.{tenant}.{subscription_id}`: where due deliveries wait for the
    /// shared delivery consumer.
    pub fn delivery_subject(self, tenant: &str, subscription_id: &str) -> String {
        let mut subject = self.prefix("deliveries");
        subject.extend([tenant, ".", subscription_id]);
        subject
    }

    /// `herald[.p{p}].deliveries.>`.
    pub fn deliveries_filter(self) -> String {
        self.prefix("deliveries") + ">"
    }

    /// `herald[.p{p}].lanes.{tenant}.{subscription_id}`: deliveries of a subscription with its
    /// own lane (ordered, or with cluster-wide limits), read by its own consumer.
    pub fn lane_subject(self, tenant: &str, subscription_id: &str) -> String {
        let mut subject = self.prefix("lanes");
        subject.extend([tenant, ".", subscription_id]);
        subject
    }

    /// `herald[.p{p}].retries.{tenant}.{subscription_id}.{event_id}`: the message schedule that
    /// brings one retry back when it is due. One subject per delivery, so republishing a retry
    /// (after a crash) replaces the schedule instead of adding a second one.
    pub fn retry_schedule_subject(self, tenant: &str, subscription_id: &str, event_id: &str) -> String {
        let mut subject = self.prefix("retries");
        subject.extend([tenant, ".", subscription_id, ".", event_id]);
        subject
    }

    /// `herald[.p{p}].attempts.{tenant}.{subscription_id}.{h}`: where the attempt records of
    /// `event_id` to that subscription are stored, `h` one hex digit of a hash of the event id
    /// ([`crate::nats::attempt_partition`]).
    pub fn attempt_subject(self, tenant: &str, subscription_id: &str, event_id: &str) -> String {
        let mut subject = self.prefix("attempts");
        subject.extend([tenant, ".", subscription_id, "."]);
        subject.push(crate::nats::attempt_partition(event_id));
        subject
    }

    /// Every attempt record of a subscription in this partition.
    pub fn subscription_attempts_filter(self, tenant: &str, subscription_id: &str) -> String {
        let mut subject = self.prefix("attempts");
        subject.extend([tenant, ".", subscription_id, ".*"]);
        subject
    }

    /// `herald[.p{p}].attempts.>`.
    pub fn attempts_filter(self) -> String {
        self.prefix("attempts") + ">"
    }

    /// The partition a subject of Herald's partitioned kinds is in: `herald.p{p}.…` is `p`,
    /// anything else 0.
    pub fn of_subject(subject: &str) -> Self {
        subject
            .strip_prefix("herald.p")
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(digits, _)| digits.parse().ok())
            .map_or(Self::ZERO, Self)
    }

    /// The partition a stream of Herald's partitioned kinds belongs to, if it is one:
    /// `HERALD_EVENTS` is 0, `HERALD_EVENTS_3` is 3.
    pub fn of_stream(name: &str) -> Option<Self> {
        let bases = [crate::nats::EVENTS_STREAM, crate::nats::DELIVERIES_STREAM, crate::nats::ATTEMPTS_STREAM];
        let rest = bases.iter().find_map(|b| name.strip_prefix(b))?;
        match rest {
            "" => Some(Self::ZERO),
            _ => {
                let digits = rest.strip_prefix('_')?;
                // `HERALD_EVENTS_03` is no partition of ours.
                if digits.starts_with('0') {
                    return None;
                }
                digits.parse().ok().filter(|p| *p > 0).map(Self)
            }
        }
    }
}

/// The tenant and type of an event subject of any partition
/// (`herald[.p{p}].events.{tenant}.{type…}`); `None` if it is not one.
pub fn split_event_subject(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("herald.")?;
    let rest = match rest.strip_prefix("events.") {
        Some(rest) => rest,
        None => {
            let (partition, rest) = rest.split_once('.')?;
            let digits = partition.strip_prefix('p')?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            rest.strip_prefix("events.")?
        }
    };
    rest.split_once('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_zero_keeps_the_names_of_before() {
        let p = Partition::ZERO;
        assert_eq!(p.events_stream(), "HERALD_EVENTS");
        assert_eq!(p.deliveries_stream(), "HERALD_DELIVERIES");
        assert_eq!(p.attempts_stream(), "HERALD_ATTEMPTS");
        assert_eq!(p.event_subject("t", "order.paid"), "herald.events.t.order.paid");
        assert_eq!(p.delivery_subject("t", "sub_1"), "herald.deliveries.t.sub_1");
        assert_eq!(p.lane_subject("t", "sub_1"), "herald.lanes.t.sub_1");
        assert_eq!(p.retry_schedule_subject("t", "sub_1", "e:1"), "herald.retries.t.sub_1.e:1");
        assert_eq!(p.attempt_subject("t", "sub_1", "a"), "herald.attempts.t.sub_1.c");
        assert_eq!(p.subscription_attempts_filter("t", "sub_1"), "herald.attempts.t.sub_1.*");
        assert_eq!(p.events_filter(), "herald.events.>");
    }

    #[test]
    fn other_partitions_have_names_of_their_own() {
        let p = Partition(5);
        assert_eq!(p.events_stream(), "HERALD_EVENTS_5");
        assert_eq!(p.deliveries_stream(), "HERALD_DELIVERIES_5");
        assert_eq!(p.attempts_stream(), "HERALD_ATTEMPTS_5");
        assert_eq!(p.event_subject("t", "order.paid"), "herald.p5.events.t.order.paid");
        assert_eq!(p.delivery_subject("t", "sub_1"), "herald.p5.deliveries.t.sub_1");
        assert_eq!(p.lane_subject("t", "sub_1"), "herald.p5.lanes.t.sub_1");
        assert_eq!(p.retry_schedule_subject("t", "s", "e"), "herald.p5.retries.t.s.e");
        assert_eq!(p.attempt_subject("t", "sub_1", "a"), "herald.p5.attempts.t.sub_1.c");
        assert_eq!(p.deliveries_filter(), "herald.p5.deliveries.>");
        assert_eq!(p.attempts_filter(), "herald.p5.attempts.>");
    }

    #[test]
    fn subjects_name_their_partition() {
        assert_eq!(Partition::of_subject("herald.p7.lanes.t.s"), Partition(7));
        assert_eq!(Partition::of_subject("herald.deliveries.t.s"), Partition::ZERO);
        assert_eq!(Partition::of_subject("herald.px.deliveries.t.s"), Partition::ZERO);
        let p = Partition(11);
        assert_eq!(Partition::of_subject(&p.delivery_subject("t", "s")), p);
    }

    #[test]
    fn streams_name_their_partition() {
        assert_eq!(Partition::of_stream("HERALD_EVENTS"), Some(Partition(0)));
        assert_eq!(Partition::of_stream("HERALD_DELIVERIES_12"), Some(Partition(12)));
        assert_eq!(Partition::of_stream("HERALD_ATTEMPTS_3"), Some(Partition(3)));
        assert_eq!(Partition::of_stream("HERALD_EVENTS_03"), None);
        assert_eq!(Partition::of_stream("HERALD_EVENTS_0"), None);
        assert_eq!(Partition::of_stream("HERALD_EVENTSX"), None);
        assert_eq!(Partition::of_stream("HERALD_DLQ"), None);
    }

    #[test]
    fn event_subjects_of_every_partition_split_into_tenant_and_type() {
        assert_eq!(split_event_subject("herald.events.t.order.paid"), Some(("t", "order.paid")));
        assert_eq!(split_event_subject("herald.p12.events.t.a"), Some(("t", "a")));
        assert_eq!(split_event_subject("herald.events.t"), None);
        assert_eq!(split_event_subject("herald.px.events.t.a"), None);
        assert_eq!(split_event_subject("herald.p.events.t.a"), None);
        assert_eq!(split_event_subject("herald.deliveries.t.s"), None);
    }

    #[test]
    fn ids_spread_evenly_and_stably() {
        assert!(Partitions::new(0).is_err());
        assert!(Partitions::new(MAX_PARTITIONS + 1).is_err());
        let one = Partitions::new(1).unwrap();
        assert_eq!(one.of_tenant("anything"), Partition::ZERO);
        let six = Partitions::new(6).unwrap();
        // FNV-1a 32 of "a" is 0xe40c292c = 3826002220, which is 4 modulo 6.
        assert_eq!(six.of_subscription("a"), Partition(4));
        assert_eq!(six.of_tenant("a"), Partition(4));
        let mut seen = [0u32; 6];
        for i in 0..6_000 {
            seen[six.of_subscription(&format!("sub_{i:026}")).0 as usize] += 1;
        }
        assert!(seen.iter().all(|n| (800..1200).contains(n)), "evenly: {seen:?}");
        assert_eq!(six.all().count(), 6);
    }
}
