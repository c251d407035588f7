//! Tenants' backlogs, watched for the operator: every `HERALD_BACKLOG_CHECK_INTERVAL`, each
//! tenant's deliveries waiting in `HERALD_DELIVERIES` are counted, and crossing
//! `HERALD_BACKLOG_ALERT` (up, then back down) becomes a `tenant.backlog_exceeded` (then
//! `tenant.backlog_cleared`) operational event.
//!
//! The count: the tenant's deliveries due and not yet made — what the dispatchers have not
//! caught up with. JetStream keeps no pending count per subject for a consumer, so a
//! short-lived consumer filtered to `herald.deliveries.{tenant}.>` and starting just above the
//! shared delivery consumer's ack floor is made, its pending count read, and deleted. What is
//! above the floor but already acked out of order (at most what is in flight) is counted too, so
//! the figure errs high by at most the replicas' in-flight deliveries. Not counted: retries and
//! deferrals waiting for their time (JetStream keeps a fired schedule, so scheduled and fired
//! cannot be told apart by counting; failing endpoints show as dead letters and open circuits),
//! and deliveries of ordered or limited subscriptions, which wait in their lanes.
//!
//! With many tenants, one probe each would be many JetStream requests every round, so the
//! whole stream is probed first: when fewer deliveries than half the threshold wait in all,
//! no tenant can be over it and only tenants reported over are looked at (to clear them).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use tokio_util::sync::CancellationToken;

use herald_core::nats;

use crate::Shared;
use crate::operational::Notice;

/// Watches until `shutdown`; does nothing with a threshold of 0 or operational events off.
pub(crate) async fn watch(shared: Arc<Shared>, shutdown: CancellationToken) {
    let (threshold, interval) = (shared.config.backlog_alert, shared.config.backlog_check_interval);
    if threshold == 0 || shared.config.operator_tenant.is_empty() {
        return;
    }
    let mut over: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        // A tenant's deliveries are in its subscriptions' partitions: counted in each.
        let mut partitions = Vec::new();
        for partition in &shared.in_use {
            let Ok(stream) = shared.js.get_stream(partition.deliveries_stream()).await else { continue };
            let Ok(info) = stream.consumer_info(nats::DELIVER_CONSUMER).await else { continue };
            partitions.push((*partition, stream, info.ack_floor.stream_sequence));
        }
        if partitions.len() < shared.in_use.len() {
            continue;
        }
        let mut all = Some(0);
        for (partition, stream, floor) in &partitions {
            all = match (all, pending(stream, *partition, ">", *floor).await) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
        }
        let Some(all) = all else { continue };
        let tenants = if all < threshold / 2 { over.iter().cloned().collect() } else { shared.registry.tenants() };
        for tenant in tenants {
            if tenant == shared.config.operator_tenant {
                continue;
            }
            let mut waiting = 0;
            for (partition, stream, floor) in &partitions {
                waiting += pending(stream, *partition, &tenant, *floor).await.unwrap_or(0);
            }
            let was_over = over.contains(&tenant);
            if waiting >= threshold && !was_over {
                over.insert(tenant.clone());
                tracing::warn!(tenant, waiting, threshold, "tenant backlog over the threshold");
                shared.operational.notify(Notice::Backlog { tenant, waiting, threshold, exceeded: true });
            } else if waiting < threshold / 2 && was_over {
                // Cleared below half the threshold, so a backlog hovering at it does not flap.
                over.remove(&tenant);
                tracing::info!(tenant, waiting, "tenant backlog cleared");
                shared.operational.notify(Notice::Backlog { tenant, waiting, threshold, exceeded: false });
            }
        }
    }
}

/// Deliveries of `tenant` (`>`: of every tenant) stored in `partition`'s `stream` above `floor`.
async fn pending(
    stream: &jetstream::stream::Stream,
    partition: nats::Partition,
    tenant: &str,
    floor: u64,
) -> Option<u64> {
    let filter_subject = match tenant {
        ">" => partition.deliveries_filter(),
        tenant => format!("{}{tenant}.>", partition.prefix("deliveries")),
    };
    let config = consumer::pull::Config {
        filter_subject,
        deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: floor + 1 },
        ack_policy: consumer::AckPolicy::None,
        inactive_threshold: Duration::from_secs(30),
        memory_storage: true,
        num_replicas: 1,
        ..Default::default()
    };
    let mut probe = stream.create_consumer(config).await.ok()?;
    let waiting = probe.info().await.ok().map(|i| i.num_pending);
    let name = probe.cached_info().name.clone();
    let _ = stream.delete_consumer(&name).await;
    waiting
}
