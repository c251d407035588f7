//! NATS names (streams, subjects, consumers, bucket) and the start-up bootstrap that creates or
//! updates them idempotently, refusing servers without JetStream or older than 2.12.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use time::format_description::well_known::Rfc3339;

pub use crate::partition::{Partition, Partitions};
pub use connect::{BootstrapError, NatsAuthArgs, check_server_version, connect, until_ready};

mod connect;

/// Stream of accepted events.
pub const EVENTS_STREAM: &str = "HERALD_EVENTS";
/// Stream of per-subscription deliveries, and of the schedules that bring retries back.
pub const DELIVERIES_STREAM: &str = "HERALD_DELIVERIES";
/// Stream of dead letters.
pub const DLQ_STREAM: &str = "HERALD_DLQ";
/// Stream of attempt records.
pub const ATTEMPTS_STREAM: &str = "HERALD_ATTEMPTS";
/// Stream of delivery statistics: what each dispatcher counted, flushed every few seconds
/// ([`stats_minutes_subject`]), and each hour's sum once it is over ([`stats_hours_subject`]).
pub const STATS_STREAM: &str = "HERALD_STATS";
/// KV bucket of subscriptions, keyed `{tenant}.{subscription_id}`.
pub const SUBSCRIPTIONS_BUCKET: &str = "herald-subscriptions";
/// Set by the gateway on events it checked against their type's schema; fan-out checks the rest.
pub const SCHEMA_CHECKED_HEADER: &str = "Herald-Schema-Checked";
/// Durable consumer of `HERALD_EVENTS` that fans events out.
pub const FANOUT_CONSUMER: &str = "herald-fanout";
/// Durable consumer of `HERALD_EVENTS` that stores the deliveries of ordered subscriptions, in
/// event order: pinned to one replica at a time, and filtered to those subscriptions' events.
pub const ORDERED_FANOUT_CONSUMER: &str = "herald-fanout-ordered";
/// The ordered fan-out's filter (in partition 0) while no subscription is ordered: no tenant id
/// holds a `$`, so no event is ever published there.
pub const ORDERED_IDLE_FILTER: &str = "herald.events.$none";

/// [`ORDERED_IDLE_FILTER`] in `partition`.
pub fn ordered_idle_filter(partition: Partition) -> String {
    partition.events_prefix() + "$none"
}
/// Durable consumer of due deliveries.
pub const DELIVER_CONSUMER: &str = "herald-deliver";

/// The priority group of pinned consumers (ordered fan-out and rate-limited lanes).
pub const PRIORITY_GROUP: &str = "herald";
/// How long a pinned consumer waits for its pinned replica before another takes over.
pub const PIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The ordered fan-out's ack wait. It makes no HTTP attempt, and the replica working on an
/// event says so every second, so this is how long an event handed out to a replica that died
/// or lost it (a pull given up on while it was on its way) holds up the ordered subscriptions:
/// one event is out at a time.
pub const ORDERED_ACK_WAIT: Duration = Duration::from_secs(5);
/// The ack wait of the shared fan-out and delivery consumers and of the lanes that are not
/// rate-limited, unless `HERALD_ACK_WAIT` says otherwise: how long a message lost with a NATS
/// node (or held by a replica that died) waits before it is handed out again. A replica tells
/// JetStream every fifth of it that it is still working on what it holds, however long an
/// attempt takes.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(10);

/// The oldest server Herald runs against (message schedules arrived in 2.12).
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 12);

/// `herald.events.{tenant}.{type}`: an event's subject in partition 0, where every event of a
/// deployment on one partition is, and where publishers straight to NATS may always publish
/// ([`Partition::event_subject`] names the others).
pub fn event_subject(tenant: &str, event_type: &str) -> String {
    Partition::ZERO.event_subject(tenant, event_type)
}

/// Durable name of a subscription's lane consumer.
pub fn lane_consumer(subscription_id: &str) -> String {
    format!("herald-lane-{subscription_id}")
}

/// Set on a delivery an operator asked for again (`replay`, `redrive`): it is sent even to a
/// subscription whose record says the event was delivered before the delivery was stored.
/// Without it, an ordered lane sends no event twice, however its delivery came back.
pub const RESEND_HEADER: &str = "Herald-Resend";

/// Set by a dispatcher on every operational event it publishes (`id:base64`, see
/// [`crate::secrets::KeyRing::operator_mac`]): an event of the operator tenant without a valid one
/// was written by someone else and is neither delivered nor believed.
pub const OPERATOR_MAC_HEADER: &str = "Herald-Operator-Mac";

/// Set on a retry's (or deferral's) message schedule, and so on the delivery it fires
/// (RFC 3339): when it was due. How late it comes is measured by the dispatcher that gets it
/// (`herald_retry_lateness_seconds`): a schedule may fire late after its stream's leader changed.
pub const DUE_HEADER: &str = "Herald-Due";

/// Set by fan-out on the delivery of an event handed out again (RFC 3339): when the event was
/// stored. A record from then on stops the delivery if it is handed out again: the records of
/// an inline attempt of the event can be stored after this message, while the attempts stream
/// elects a leader, and a check from the message's own time would miss them.
pub const RECORDS_SINCE_HEADER: &str = "Herald-Records-Since";

/// Where new deliveries for `sub` go, in its partition: its lane if it has one, else the shared
/// subject; a polling subscription's, to its own subject of `HERALD_POLL`, where its consumer
/// reads them.
pub fn route_subject(partitions: Partitions, sub: &crate::proto::Subscription) -> String {
    if crate::polling::is_polling(sub) {
        return crate::polling::subject(&sub.tenant, &sub.id);
    }
    let partition = partitions.of_subscription(&sub.id);
    if crate::subscription::needs_lane(sub) {
        partition.lane_subject(&sub.tenant, &sub.id)
    } else {
        partition.delivery_subject(&sub.tenant, &sub.id)
    }
}

/// The message that hands `event` (stored at `event_sequence` of `HERALD_EVENTS`, 0 if it was
/// not) to `sub` for its first attempt, and the subject it goes to
/// (the subscription's route). Deduplicated by `{event_id}:{subscription_id}`, so fanning the
/// same event out twice, or replaying it while it is under way, stores one delivery.
pub fn first_delivery(
    partitions: Partitions,
    event: &crate::proto::Event,
    event_sequence: u64,
    sub: &crate::proto::Subscription,
    trace: &crate::telemetry::Carrier,
) -> (String, jetstream::message::PublishMessage) {
    use prost::Message as _;
    let delivery = crate::proto::Delivery {
        event: Some(event.clone()),
        subscription_id: sub.id.clone(),
        attempt: 1,
        event_sequence,
        ..Default::default()
    };
    let publish = jetstream::message::PublishMessage::build()
        .payload(delivery.encode_to_vec().into())
        .message_id(format!("{}:{}", event.id, sub.id));
    (route_subject(partitions, sub), trace.add_to(publish))
}

/// `herald.stats.minutes.{hour}`: the deltas whose entries fall in the hour starting at `hour`
/// (unix seconds).
pub fn stats_minutes_subject(hour: i64) -> String {
    format!("herald.stats.minutes.{hour}")
}

/// `herald.stats.hours.{hour}.{chunk}`: a chunk of the seal of the hour starting at `hour`.
pub fn stats_hours_subject(hour: i64, chunk: u32) -> String {
    format!("herald.stats.hours.{hour}.{chunk}")
}

/// `herald.dlq.{tenant}.{subscription_id}`.
pub fn dlq_subject(tenant: &str, subscription_id: &str) -> String {
    format!("herald.dlq.{tenant}.{subscription_id}")
}

/// Where an event that failed validation is dead-lettered: no subscription ever saw it.
pub fn invalid_event_dlq_subject(subject_tenant_token: &str) -> String {
    dlq_subject(subject_tenant_token, "_invalid")
}

/// How many subjects a subscription's attempt records are spread over. nats-server keeps state
/// in memory for every subject a stream holds (~400 B each, measured on 2.15), so the records
/// must not have a subject per event; one subject per subscription would make finding one
/// event's records a walk through all of them. Sixteen bound the first and cut the second to a
/// sixteenth.
pub const ATTEMPT_PARTITIONS: u32 = 16;

/// The partition of `event_id`'s attempt records: one lowercase hex digit, the low four bits of
/// the 32-bit FNV-1a hash of the id's bytes (stable: other tools may compute it too).
pub fn attempt_partition(event_id: &str) -> char {
    let hash = event_id.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    char::from_digit(hash % ATTEMPT_PARTITIONS, 16).expect("a hex digit")
}

/// `herald.attempts.{tenant}.{subscription_id}.{event_id}`: where records were stored before
/// they were spread over sixteen subjects (in partition 0, the only stream then). Read, never
/// written, until they age out.
pub fn legacy_attempt_subject(tenant: &str, subscription_id: &str, event_id: &str) -> String {
    format!("herald.attempts.{tenant}.{subscription_id}.{event_id}")
}

/// Stream metadata: since when attempt records are partitioned (RFC 3339), empty if they always
/// were. Records older than that may be in the per-event layout.
pub const ATTEMPTS_PARTITIONED_SINCE: &str = "herald.attempts.partitioned_since";

/// The ordered fan-out consumer's filter subjects for the given `(tenant, type pattern)`
/// selections: their event subjects, sorted, each left out if another covers it (the server
/// refuses overlapping filters that are subsets of each other); [`ORDERED_IDLE_FILTER`] alone
/// when there are none.
pub fn ordered_filters<'a>(
    partition: Partition,
    selections: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<String> {
    let mut subjects: Vec<String> =
        selections.into_iter().map(|(tenant, pattern)| partition.event_subject(tenant, pattern)).collect();
    subjects.sort();
    subjects.dedup();
    let kept: Vec<String> = subjects
        .iter()
        .filter(|s| !subjects.iter().any(|other| other != *s && crate::pattern::covers(other, s)))
        .cloned()
        .collect();
    if kept.is_empty() { vec![ordered_idle_filter(partition)] } else { kept }
}

/// The ordered fan-out consumer reading `filters` from `start` on. Its filter changes by
/// re-creating it from a chosen point: a filter changed in place would replay the new
/// subjects' whole history from the consumer's last position.
pub fn ordered_fanout_config(filters: Vec<String>, start: consumer::DeliverPolicy) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(ORDERED_FANOUT_CONSUMER.into()),
        description: Some("Herald: stores the deliveries of ordered subscriptions, in event order".into()),
        filter_subjects: filters,
        deliver_policy: start,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ORDERED_ACK_WAIT,
        // One event out at a time, and one replica at a time, so that deliveries are stored in
        // event order. With more out at once, an event handed out to a replica that lost the pin
        // (or to a pull it gave up on) came back after later ones, which the new replica had
        // stored in the lanes meanwhile: the chaos test saw an ordered subscription receive
        // event 145 before 143 and 144.
        max_ack_pending: 1,
        priority_policy: consumer::PriorityPolicy::PinnedClient,
        priority_groups: vec![PRIORITY_GROUP.into()],
        priority_timeout: PIN_TIMEOUT,
        ..Default::default()
    }
}

/// KV key of a subscription.
pub fn subscription_key(tenant: &str, subscription_id: &str) -> String {
    format!("{tenant}.{subscription_id}")
}

/// Settings of the streams and consumers, with the defaults of DESIGN.md.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Replicas of every stream and of the bucket (1 for a single server, 3 in a cluster).
    pub replicas: usize,
    /// How long accepted events are kept (replay window).
    pub events_max_age: Duration,
    /// Window in which a repeated event id is recognised as a duplicate.
    pub duplicate_window: Duration,
    /// How long a delivery message is kept; must exceed the longest retry delay.
    pub deliveries_max_age: Duration,
    /// How long dead letters are kept.
    pub dlq_max_age: Duration,
    /// How long attempt records are kept.
    pub attempts_max_age: Duration,
    /// How long a message may go without an ack or a word of progress before JetStream hands it
    /// out again (the shared fan-out and delivery consumers, and lanes that are not
    /// rate-limited).
    pub deliver_ack_wait: Duration,
    /// Deliveries handed out and not yet acked, across all dispatcher replicas.
    pub deliver_max_ack_pending: i64,
    /// Events handed to fan-out and not yet acked.
    pub fanout_max_ack_pending: i64,
    /// How many streams of each partitioned kind (events, deliveries, attempt records).
    pub partitions: Partitions,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            replicas: 1,
            events_max_age: Duration::from_secs(7 * 86_400),
            duplicate_window: Duration::from_secs(120),
            deliveries_max_age: Duration::from_secs(7 * 86_400),
            dlq_max_age: Duration::from_secs(30 * 86_400),
            attempts_max_age: Duration::from_secs(7 * 86_400),
            deliver_ack_wait: DEFAULT_ACK_WAIT,
            deliver_max_ack_pending: 10_000,
            // Every replica holds a few hundred events while it fans them out.
            fanout_max_ack_pending: 20_000,
            partitions: Partitions::default(),
        }
    }
}

fn create_err(what: &str, e: impl std::fmt::Display) -> BootstrapError {
    BootstrapError::Create { what: what.to_owned(), detail: e.to_string() }
}

/// Everything Herald keeps on NATS, created or updated to match `topology`.
#[derive(Debug)]
pub struct Handles {
    /// The JetStream context.
    pub js: jetstream::Context,
    /// The subscriptions bucket.
    pub subscriptions: kv::Store,
    /// The event-type catalog's bucket ([`crate::catalog::BUCKET`]).
    pub event_types: kv::Store,
    /// Until when attempt records in the per-event layout of before may still be retained
    /// (`None`: the stream never held any).
    pub legacy_records_until: Option<time::OffsetDateTime>,
    /// Every partition with streams: those of [`Topology::partitions`], then any left by a
    /// deployment on more partitions before, which dispatchers drain and nothing writes to.
    pub in_use: Vec<Partition>,
}

/// Creates or updates the streams and the KV bucket (idempotent: every service calls it at
/// start-up). Refuses a server older than 2.12 or without JetStream.
pub async fn ensure_streams(js: &jetstream::Context, topology: &Topology) -> Result<Handles, BootstrapError> {
    check_server_version(&js.client().server_info().version)?;
    js.query_account().await.map_err(|e| {
        let detail = e.to_string();
        // No answer in time is a cluster still electing its meta leader, not a server without
        // JetStream (which answers at once that nobody responds).
        if detail.contains("timed out") {
            create_err("streams yet: JetStream did not answer (is the cluster still electing its leader?)", detail)
        } else {
            BootstrapError::NoJetStream(detail)
        }
    })?;

    let partitioned_since = attempts_partitioned_since(js).await?;
    let mut streams = Vec::new();
    for partition in topology.partitions.all() {
        streams.extend(partition_streams(partition, topology, &partitioned_since));
    }
    streams.extend([
        stream::Config {
            name: DLQ_STREAM.into(),
            description: Some("Herald: dead letters".into()),
            subjects: vec!["herald.dlq.>".into()],
            retention: stream::RetentionPolicy::Limits,
            max_age: topology.dlq_max_age,
            storage: stream::StorageType::File,
            num_replicas: topology.replicas,
            ..Default::default()
        },
        stream::Config {
            name: STATS_STREAM.into(),
            description: Some(
                "Herald: delivery statistics, herald.stats.minutes.{hour} (deltas) and herald.stats.hours.{hour}.{chunk} (seals)"
                    .into(),
            ),
            subjects: vec!["herald.stats.>".into()],
            retention: stream::RetentionPolicy::Limits,
            // As long as the records they count.
            max_age: topology.attempts_max_age,
            duplicate_window: topology.duplicate_window,
            storage: stream::StorageType::File,
            num_replicas: topology.replicas,
            allow_direct: true,
            ..Default::default()
        },
    ]);
    streams.push(crate::polling::stream_config(topology.events_max_age, topology.duplicate_window, topology.replicas));
    for config in streams {
        let name = config.name.clone();
        js.create_or_update_stream(config).await.map_err(|e| create_err(&format!("stream {name}"), e))?;
    }

    let bucket = kv::Config {
        bucket: SUBSCRIPTIONS_BUCKET.into(),
        description: "Herald: subscriptions, keyed {tenant}.{subscription_id}".into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        ..Default::default()
    };
    let subscriptions = js
        .create_or_update_key_value(bucket)
        .await
        .map_err(|e| create_err(&format!("KV bucket {SUBSCRIPTIONS_BUCKET}"), e))?;
    let catalog = crate::catalog::BUCKET;
    let bucket = kv::Config {
        bucket: catalog.into(),
        description: "Herald: the event-type catalog, keyed by type".into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        ..Default::default()
    };
    let event_types =
        js.create_or_update_key_value(bucket).await.map_err(|e| create_err(&format!("KV bucket {catalog}"), e))?;
    let legacy_records_until =
        time::OffsetDateTime::parse(&partitioned_since, &Rfc3339).ok().map(|since| since + topology.attempts_max_age);
    let in_use = partitions_in_use(js, topology.partitions).await?;
    Ok(Handles { js: js.clone(), subscriptions, event_types, legacy_records_until, in_use })
}

/// The events, deliveries and attempts streams of `partition`.
fn partition_streams(partition: Partition, topology: &Topology, partitioned_since: &str) -> [stream::Config; 3] {
    let numbered = |what: &str| match partition.0 {
        0 => format!("Herald: {what}"),
        p => format!("Herald: {what} (partition {p})"),
    };
    let (deliveries, lanes, retries) =
        (partition.prefix("deliveries"), partition.prefix("lanes"), partition.prefix("retries"));
    [
        stream::Config {
            name: partition.events_stream(),
            description: Some(numbered("accepted events")),
            subjects: vec![partition.events_filter()],
            retention: stream::RetentionPolicy::Limits,
            max_age: topology.events_max_age,
            duplicate_window: topology.duplicate_window,
            storage: stream::StorageType::File,
            num_replicas: topology.replicas,
            ..Default::default()
        },
        stream::Config {
            name: partition.deliveries_stream(),
            description: Some(numbered(&format!(
                "deliveries due ({deliveries}>, {lanes}>) and scheduled retries ({retries}>)"
            ))),
            subjects: vec![deliveries + ">", lanes + ">", retries + ">"],
            // Limits, not interest: a retry schedule waits on a subject no consumer reads.
            retention: stream::RetentionPolicy::Limits,
            max_age: topology.deliveries_max_age,
            duplicate_window: topology.duplicate_window,
            storage: stream::StorageType::File,
            num_replicas: topology.replicas,
            allow_message_schedules: true,
            allow_message_ttl: true,
            ..Default::default()
        },
        stream::Config {
            name: partition.attempts_stream(),
            description: Some(numbered(&format!(
                "delivery attempts, {}{{tenant}}.{{subscription}}.{{h}}",
                partition.prefix("attempts")
            ))),
            subjects: vec![partition.attempts_filter()],
            retention: stream::RetentionPolicy::Limits,
            max_age: topology.attempts_max_age,
            // Records carry a message id only on a replicated stream, where one is published
            // again for at most a few seconds until confirmed: the ids kept in memory (one
            // per record) need not outlive that.
            duplicate_window: ATTEMPTS_DUPLICATE_WINDOW,
            storage: stream::StorageType::File,
            num_replicas: topology.replicas,
            // Only partition 0 can hold records of the per-event layout of before.
            metadata: match partition.0 {
                0 => [(ATTEMPTS_PARTITIONED_SINCE.to_owned(), partitioned_since.to_owned())].into(),
                _ => Default::default(),
            },
            ..Default::default()
        },
    ]
}

/// The partitions of `partitions`, then those whose streams a deployment on more partitions
/// left: their events, deliveries and retries are still to be drained.
async fn partitions_in_use(js: &jetstream::Context, partitions: Partitions) -> Result<Vec<Partition>, BootstrapError> {
    use futures::TryStreamExt as _;
    let names: Vec<String> = js.stream_names().try_collect().await.map_err(|e| create_err("the list of streams", e))?;
    let mut in_use: Vec<Partition> = partitions.all().collect();
    let mut left: Vec<Partition> = names
        .iter()
        .filter(|n| n.starts_with(EVENTS_STREAM) || n.starts_with(DELIVERIES_STREAM))
        .filter_map(|n| Partition::of_stream(n))
        .filter(|p| p.0 >= partitions.count())
        .collect();
    left.sort();
    left.dedup();
    in_use.extend(left);
    Ok(in_use)
}

/// How long the attempts stream remembers record ids ([`ATTEMPTS_STREAM`]).
pub const ATTEMPTS_DUPLICATE_WINDOW: Duration = Duration::from_secs(60);

/// What the attempts stream's [`ATTEMPTS_PARTITIONED_SINCE`] says, or should say: kept as it
/// is; now, for a stream created by a version that stored a subject per event; empty for a new
/// stream.
async fn attempts_partitioned_since(js: &jetstream::Context) -> Result<String, BootstrapError> {
    match js.get_stream(ATTEMPTS_STREAM).await {
        Ok(stream) => Ok(match stream.cached_info().config.metadata.get(ATTEMPTS_PARTITIONED_SINCE) {
            Some(since) => since.clone(),
            None => crate::now_rfc3339(),
        }),
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(String::new())
            }
            _ => Err(create_err(ATTEMPTS_STREAM, e)),
        },
    }
}

/// The dispatcher's durable pull consumers of one partition (the same names in each).
#[derive(Debug)]
pub struct Consumers {
    /// Whose streams they read.
    pub partition: Partition,
    /// [`FANOUT_CONSUMER`]: every replica pulls it.
    pub fanout: consumer::PullConsumer,
    /// [`ORDERED_FANOUT_CONSUMER`]: pinned to one replica at a time.
    pub ordered: consumer::PullConsumer,
    /// [`DELIVER_CONSUMER`]: every replica pulls it.
    pub deliver: consumer::PullConsumer,
}

/// The dispatcher's durable pull consumers of every partition in `in_use`, created or updated
/// to match `topology`. The ordered fan-out consumer is created if missing and otherwise left
/// as it is: its filter follows the ordered subscriptions, which the dispatchers keep it in
/// line with.
pub async fn ensure_consumers(
    js: &jetstream::Context,
    topology: &Topology,
    in_use: &[Partition],
) -> Result<Vec<Consumers>, BootstrapError> {
    let mut all = Vec::with_capacity(in_use.len());
    for partition in in_use {
        all.push(ensure_partition_consumers(js, topology, *partition).await?);
    }
    Ok(all)
}

async fn ensure_partition_consumers(
    js: &jetstream::Context,
    topology: &Topology,
    partition: Partition,
) -> Result<Consumers, BootstrapError> {
    let fanout = consumer::pull::Config {
        durable_name: Some(FANOUT_CONSUMER.into()),
        description: Some("Herald: fans events out to unordered subscriptions (every replica)".into()),
        filter_subject: partition.events_filter(),
        ack_policy: consumer::AckPolicy::Explicit,
        // Fan-out holds an event while it makes first attempts inline, as long as an attempt
        // to a delivery may take.
        ack_wait: topology.deliver_ack_wait,
        max_ack_pending: topology.fanout_max_ack_pending,
        // Not pinned (it was before 0.2, and an update takes the pin off): every replica pulls
        // events, so fan-out and first attempts grow with replicas. Ordered subscriptions are
        // served by the ordered consumer instead.
        ..Default::default()
    };
    let deliver = consumer::pull::Config {
        durable_name: Some(DELIVER_CONSUMER.into()),
        description: Some("Herald: delivers due webhooks".into()),
        filter_subject: partition.deliveries_filter(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: topology.deliver_ack_wait,
        max_ack_pending: topology.deliver_max_ack_pending,
        ..Default::default()
    };
    let (events_name, deliveries_name) = (partition.events_stream(), partition.deliveries_stream());
    let events = js.get_stream(&events_name).await.map_err(|e| create_err(&events_name, e))?;
    let deliveries = js.get_stream(&deliveries_name).await.map_err(|e| create_err(&deliveries_name, e))?;
    let fanout = upsert_consumer(&events, fanout).await?;
    let ordered = match events.get_consumer(ORDERED_FANOUT_CONSUMER).await {
        // Created by a version that let more than one event out at a time: brought in line,
        // keeping its filter and position.
        Ok(c) if c.cached_info().config.max_ack_pending != 1 || c.cached_info().config.ack_wait != ORDERED_ACK_WAIT => {
            let mut config = c.cached_info().config.clone();
            config.max_ack_pending = 1;
            config.ack_wait = ORDERED_ACK_WAIT;
            let what = format!("consumer {ORDERED_FANOUT_CONSUMER}");
            events.update_consumer(config).await.map_err(|e| create_err(&what, e))?;
            events.get_consumer(ORDERED_FANOUT_CONSUMER).await.map_err(|e| create_err(&what, e))?
        }
        Ok(c) => c,
        Err(_) => {
            let config = ordered_fanout_config(vec![ordered_idle_filter(partition)], consumer::DeliverPolicy::New);
            match events.create_consumer(config).await {
                Ok(c) => c,
                // Another replica created it meanwhile.
                Err(_) => events
                    .get_consumer(ORDERED_FANOUT_CONSUMER)
                    .await
                    .map_err(|e| create_err(&format!("consumer {ORDERED_FANOUT_CONSUMER} of {events_name}"), e))?,
            }
        }
    };
    let deliver = upsert_consumer(&deliveries, deliver).await?;
    Ok(Consumers { partition, fanout, ordered, deliver })
}

/// Creates a durable pull consumer, or brings an existing one in line with `config`.
pub async fn upsert_consumer(
    stream: &stream::Stream,
    config: consumer::pull::Config,
) -> Result<consumer::PullConsumer, BootstrapError> {
    let name = config.durable_name.clone().unwrap_or_default();
    let what = format!("consumer {name}");
    match stream.create_consumer(config.clone()).await {
        Ok(c) => Ok(c),
        // Exists with other settings: bring it in line with this version's.
        Err(_) => {
            stream.update_consumer(config).await.map_err(|e| create_err(&what, e))?;
            stream.get_consumer(&name).await.map_err(|e| create_err(&what, e))
        }
    }
}

/// The stream settings both services apply at start-up, as flags and `HERALD_*` variables.
/// Gateway and dispatcher must be given the same values, or each start-up re-applies its own.
#[derive(Debug, Clone, clap::Args)]
pub struct TopologyArgs {
    /// Replicas of every stream and of the subscriptions bucket (3 in a NATS cluster).
    #[arg(long, env = "HERALD_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// How long accepted events are retained (the replay window).
    #[arg(long, env = "HERALD_EVENTS_MAX_AGE", default_value = "7d", value_parser = crate::runtime::parse_duration)]
    pub events_max_age: Duration,
    /// Window in which a repeated event id is reported as a duplicate and not delivered again.
    #[arg(long, env = "HERALD_DUPLICATE_WINDOW", default_value = "2m", value_parser = crate::runtime::parse_duration)]
    pub duplicate_window: Duration,
    /// How long dead letters are retained.
    #[arg(long, env = "HERALD_DLQ_MAX_AGE", default_value = "30d", value_parser = crate::runtime::parse_duration)]
    pub dlq_max_age: Duration,
    /// Streams of each partitioned kind (events, deliveries, attempt records), 1 to 64: on a
    /// NATS cluster their leaders spread over the nodes, so that more nodes carry more. Every
    /// gateway and dispatcher must be given the same; see the README on changing it.
    #[arg(long, env = "HERALD_PARTITIONS", default_value = "1", value_parser = parse_partitions)]
    pub partitions: Partitions,
}

fn parse_partitions(text: &str) -> Result<Partitions, String> {
    let count: u16 = text.trim().parse().map_err(|_| format!("{text:?} is not a number of partitions"))?;
    Partitions::new(count)
}

impl TopologyArgs {
    /// The topology these settings describe, other settings at their defaults.
    pub fn topology(&self) -> Topology {
        Topology {
            replicas: self.replicas,
            events_max_age: self.events_max_age,
            duplicate_window: self.duplicate_window,
            dlq_max_age: self.dlq_max_age,
            partitions: self.partitions,
            ..Topology::default()
        }
    }
}

#[cfg(test)]
mod tests;
