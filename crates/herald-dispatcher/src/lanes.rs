//! Lanes: a subscription that is ordered (`ordering: "fifo"`) or limited (`max_in_flight`,
//! `rate_limit`) gets its deliveries on `herald.lanes.{tenant}.{id}`, read by a consumer of its
//! own. That consumer's `max_ack_pending` is the in-flight limit, enforced by the server across
//! every replica. An ordered lane has one delivery out at a time, retried in place, so a
//! failing head holds up that subscription alone. A rate-limited lane is pinned to one replica
//! at a time (a priority group), so that replica's pace is the cluster's rate.
//!
//! A lane is in its subscription's partition (`herald.p{p}.lanes.…` in `HERALD_DELIVERIES_{p}`).
//! A lane left in another partition (by a change of `HERALD_PARTITIONS`) is drained like a
//! deleted subscription's, then removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use herald_core::nats::{self, Topology};
use herald_core::subscription::{is_fifo, needs_lane};

use crate::Shared;
use crate::deliver::{self, Mode};
use crate::pull::{Pull, Slots, consume};

/// What a lane's consumer and pull loop are set up from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    tenant: String,
    fifo: bool,
    max_in_flight: u32,
    rate_limit: u32,
}

impl Spec {
    fn of(sub: &herald_core::proto::Subscription) -> Self {
        Self {
            tenant: sub.tenant.clone(),
            fifo: is_fifo(sub),
            max_in_flight: sub.max_in_flight,
            rate_limit: sub.rate_limit,
        }
    }

    /// Deliveries out at once across the cluster.
    fn in_flight(&self) -> u32 {
        match (self.fifo, self.max_in_flight) {
            (true, _) => 1,
            (false, 0) => 64,
            (false, n) => n,
        }
    }
}

struct Running {
    spec: Spec,
    stop: CancellationToken,
}

/// A lane: its partition and subscription.
type Key = (nats::Partition, String);

/// The deliveries stream of each partition in use.
type Streams = HashMap<nats::Partition, jetstream::stream::Stream>;

/// Keeps one pull loop per lane running in this replica until `shutdown`, following the
/// subscriptions as they change. A deleted subscription's lane is drained (its deliveries are
/// dead-lettered) before its consumer is removed.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    topology: Topology,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) {
    let lanes = Lanes {
        shared: &shared,
        topology: &topology,
        tasks: TaskTracker::new(),
        shutdown: &shutdown,
        hard_stop: &hard_stop,
    };
    let mut running: HashMap<Key, Running> = HashMap::new();
    let mut first = true;
    loop {
        let mut streams = HashMap::new();
        for partition in &shared.in_use {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                s = shared.js.get_stream(partition.deliveries_stream()) => s,
            };
            match stream {
                Ok(s) => {
                    streams.insert(*partition, s);
                }
                Err(e) => {
                    tracing::warn!(error = %e, %partition, "lanes: cannot reach the deliveries stream");
                }
            }
        }
        if streams.len() < shared.in_use.len() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        }
        if first {
            lanes.adopt_orphans(&streams, &mut running).await;
            first = false;
        }
        lanes.reconcile(&streams, &mut running).await;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    lanes.tasks.close();
    lanes.tasks.wait().await;
}

/// What every lane of this replica is started with.
struct Lanes<'a> {
    shared: &'a Arc<Shared>,
    topology: &'a Topology,
    /// The lanes' pull loops.
    tasks: TaskTracker,
    shutdown: &'a CancellationToken,
    hard_stop: &'a CancellationToken,
}

impl Lanes<'_> {
    async fn reconcile(&self, streams: &Streams, running: &mut HashMap<Key, Running>) {
        let shared = self.shared;
        let subs = shared.registry.notable();
        for sub in subs.iter().filter(|s| needs_lane(s)) {
            let spec = Spec::of(sub);
            let key = (shared.partitions.of_subscription(&sub.id), sub.id.clone());
            if running.get(&key).is_some_and(|r| r.spec == spec) {
                continue;
            }
            if let Some(old) = running.remove(&key) {
                old.stop.cancel();
            }
            let Some(stream) = streams.get(&key.0) else { continue };
            match self.start(stream, &sub.id, spec.clone()).await {
                Ok(stop) => {
                    running.insert(key, Running { spec, stop });
                }
                Err(e) => tracing::warn!(subscription = %sub.id, error = %e, "lane: cannot start; will retry"),
            }
        }
        // A subscription that lost its limits keeps its lane running (idle once drained); a
        // deleted one's lane, or one left in another partition, goes once nothing is left in it.
        let gone: Vec<Key> = running
            .iter()
            .filter(|((partition, id), lane)| {
                !shared.registry.contains(&lane.spec.tenant, id) || shared.partitions.of_subscription(id) != *partition
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            let Some(stream) = streams.get(&key.0) else { continue };
            let name = nats::lane_consumer(&key.1);
            let drained = match stream.consumer_info(&name).await {
                Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
                Err(_) => true,
            };
            if drained {
                if let Some(lane) = running.remove(&key) {
                    lane.stop.cancel();
                }
                let _ = stream.delete_consumer(&name).await;
                tracing::info!(subscription = %key.1, partition = %key.0, "lane drained and removed");
            }
        }
    }

    /// Lanes of subscriptions deleted while no dispatcher ran, and lanes left in another
    /// partition than their subscription's: drain them (a deleted subscription's deliveries are
    /// dead-lettered) so that nothing is left behind, then they are removed like any other.
    async fn adopt_orphans(&self, streams: &Streams, running: &mut HashMap<Key, Running>) {
        let shared = self.shared;
        use futures::TryStreamExt as _;
        for (partition, stream) in streams {
            let Ok(names) = stream.consumer_names().try_collect::<Vec<String>>().await else { continue };
            for name in names {
                let Some(id) = name.strip_prefix("herald-lane-") else { continue };
                let key = (*partition, id.to_owned());
                let found = shared.registry.find(id);
                let home = found.is_some() && shared.partitions.of_subscription(id) == *partition;
                if home || running.contains_key(&key) {
                    continue;
                }
                let Ok(info) = stream.consumer_info(&name).await else { continue };
                // `herald[.p{p}].lanes.{tenant}.{id}`
                let tenant = info.config.filter_subject.rsplit('.').nth(1).unwrap_or_default().to_owned();
                let spec = match &found {
                    // Left by a change of partitions: drained in order, within its limits.
                    Some(sub) => Spec::of(sub),
                    None => Spec { tenant, fifo: false, max_in_flight: 0, rate_limit: 0 },
                };
                if let Ok(stop) = self.start(stream, id, spec.clone()).await {
                    tracing::info!(subscription = id, %partition, "draining a lane left behind");
                    running.insert(key, Running { spec, stop });
                }
            }
        }
    }

    async fn start(
        &self,
        stream: &jetstream::stream::Stream,
        subscription: &str,
        spec: Spec,
    ) -> Result<CancellationToken, nats::BootstrapError> {
        let Self { shared, topology, tasks, shutdown, hard_stop } = self;
        let config = consumer::pull::Config {
            durable_name: Some(nats::lane_consumer(subscription)),
            description: Some(format!("Herald: lane of subscription {subscription}")),
            filter_subject: nats::Partition::of_stream(&stream.cached_info().config.name)
                .unwrap_or_default()
                .lane_subject(&spec.tenant, subscription),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ack_wait(shared, topology, &spec),
            max_ack_pending: spec.in_flight() as i64,
            ..Default::default()
        };
        let pinned = spec.rate_limit > 0;
        let config = if pinned {
            consumer::pull::Config {
                priority_policy: consumer::PriorityPolicy::PinnedClient,
                priority_groups: vec![nats::PRIORITY_GROUP.into()],
                priority_timeout: nats::PIN_TIMEOUT,
                ..config
            }
        } else {
            config
        };
        let consumer = nats::upsert_consumer(stream, config).await?;
        let stop = shutdown.child_token();
        let in_hand = spec.in_flight() as usize;
        let ack_wait = ack_wait(shared, topology, &spec);
        let pull = Pull { slots: Slots::own(in_hand), pinned, rate_per_sec: spec.rate_limit, ack_wait };
        let mode = Mode::Lane { fifo: spec.fifo };
        let shared = Arc::clone(shared);
        let progress = shared.progress.clone();
        tasks.spawn(consume(
            consumer,
            pull,
            progress,
            stop.clone(),
            CancellationToken::clone(hard_stop),
            move |taken| {
                let shared = shared.clone();
                async move { Some(deliver::handle(shared, taken, mode)) }
            },
        ));
        tracing::info!(
            subscription,
            fifo = spec.fifo,
            max_in_flight = spec.in_flight(),
            rate_limit = spec.rate_limit,
            "lane running"
        );
        Ok(stop)
    }
}

/// A lane's ack wait: a rate-limited one holds messages while it paces them (see
/// [`crate::Config::paced_ack_wait`]).
fn ack_wait(shared: &Shared, topology: &Topology, spec: &Spec) -> Duration {
    if spec.rate_limit > 0 {
        shared.config.paced_ack_wait(topology.deliver_ack_wait)
    } else {
        topology.deliver_ack_wait
    }
}
