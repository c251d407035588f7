//! Operational events: what Herald has to tell its operator, published as ordinary Herald events
//! of the operator tenant (`HERALD_OPERATOR_TENANT`, `herald` by default), so that they are
//! delivered, signed, retried and recorded like any other to whatever subscriptions that tenant
//! has. Types: `subscription.disabled`, `delivery.dead_lettered`, `circuit.opened`,
//! `circuit.closed`, `tenant.backlog_exceeded`, `tenant.backlog_cleared`.
//!
//! They never loop: nothing that happens to the operator tenant's own subscriptions produces an
//! operational event. Publishing is best-effort beside the delivery path: a notice waits in a
//! bounded queue and is published with its id as `Nats-Msg-Id` (so replicas and retries do not
//! double it), tried for a while when JetStream does not answer, then dropped with a warning —
//! the condition it reports stays visible in the metrics, the attempts and the dead letters.
//!
//! Each carries a MAC made with the key ring (`Herald-Operator-Mac`): an event of the operator
//! tenant without a valid one was written by someone else with access to `herald.events.>`, and
//! fan-out dead-letters it instead of delivering it; gateways do not believe it either.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message as _;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use herald_core::{nats, proto};

/// Notices waiting to be published, at most; more are dropped (and counted in the log).
const QUEUE: usize = 1024;
/// How long one notice is tried while JetStream does not acknowledge it.
const PATIENCE: Duration = Duration::from_secs(30);

/// Something the operator should hear about.
#[derive(Debug)]
pub(crate) enum Notice {
    /// Herald disabled a subscription.
    Disabled { sub: Arc<proto::Subscription>, reason: String },
    /// A delivery ran out of retries (or could not be made) and went to the dead letters.
    DeadLettered {
        tenant: String,
        subscription_id: String,
        event_id: String,
        event_type: String,
        attempt: u32,
        reason: String,
    },
    /// A subscription's circuit opened (`opened`) or closed again, in this replica.
    Circuit { subscription_id: String, opened: bool, consecutive_failures: u32 },
    /// A tenant's deliveries waiting went over the threshold (`exceeded`) or back under half.
    Backlog { tenant: String, waiting: u64, threshold: u64, exceeded: bool },
}

/// The sending end, shared by the stages; a no-op when operational events are off.
#[derive(Clone, Debug)]
pub(crate) struct Operational {
    tx: Option<mpsc::Sender<Notice>>,
    tenant: String,
}

impl Operational {
    /// Off: every notice is dropped.
    pub(crate) fn off() -> Self {
        Self { tx: None, tenant: String::new() }
    }

    /// Queues `notice`, unless it concerns the operator tenant itself (no loops) or the queue is
    /// full.
    pub(crate) fn notify(&self, notice: Notice) {
        let Some(tx) = &self.tx else { return };
        let tenant = match &notice {
            Notice::Disabled { sub, .. } => Some(sub.tenant.as_str()),
            Notice::DeadLettered { tenant, .. } | Notice::Backlog { tenant, .. } => Some(tenant.as_str()),
            Notice::Circuit { .. } => None, // resolved by the publisher, which has the registry
        };
        if tenant == Some(self.tenant.as_str()) {
            return;
        }
        if tx.try_send(notice).is_err() {
            tracing::warn!("operational events: queue full, a notice was dropped");
        }
    }
}

/// Where operational events are written, and with what they are authenticated.
pub(crate) struct Writer {
    pub js: jetstream::Context,
    pub partitions: nats::Partitions,
    pub keys: Arc<herald_core::secrets::KeyRing>,
}

/// Starts the publisher for `tenant` (empty: operational events off) and returns its sending end.
pub(crate) fn start(
    tenant: String,
    replica: String,
    writer: Writer,
    registry: Arc<herald_core::registry::Registry>,
    tracker: &tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) -> Operational {
    let Writer { js, partitions, keys } = writer;
    if tenant.is_empty() {
        return Operational::off();
    }
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let operator = tenant.clone();
    // Every operational event is the operator tenant's: one partition's.
    let partition = partitions.of_tenant(&tenant);
    tracker.spawn(async move {
        loop {
            let notice = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = rx.recv() => match n { Some(n) => n, None => return },
            };
            let Some(event) = event_of(&operator, &replica, &registry, notice) else { continue };
            publish(&js, partition, &keys, &event).await;
        }
    });
    Operational { tx: Some(tx), tenant }
}

/// The event a notice becomes, or `None` when it concerns the operator tenant.
fn event_of(
    operator: &str,
    replica: &str,
    registry: &herald_core::registry::Registry,
    notice: Notice,
) -> Option<proto::Event> {
    let now = herald_core::now_rfc3339();
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let (id, event_type, data) = match notice {
        Notice::Disabled { sub, reason } => (
            // One per disabling: the subscription's update time changes with each.
            format!("op_disabled_{}_{}", sub.id, stamp),
            "subscription.disabled",
            json!({"subscription_id": sub.id, "tenant": sub.tenant, "url": sub.url, "reason": reason,
                "disabled_at": now}),
        ),
        Notice::DeadLettered { tenant, subscription_id, event_id, event_type, attempt, reason } => (
            // One per (subscription, event): a repeat from another replica is deduplicated.
            format!("op_dead_{subscription_id}_{}", id_part(&event_id)),
            "delivery.dead_lettered",
            json!({"subscription_id": subscription_id, "tenant": tenant, "event_id": event_id,
                "event_type": event_type, "attempts": attempt, "reason": reason, "dead_at": now}),
        ),
        Notice::Backlog { tenant, waiting, threshold, exceeded } => {
            let kind = if exceeded { "backlog_exceeded" } else { "backlog_cleared" };
            // Replicas checking in the same minute make one event.
            (
                format!("op_{kind}_{tenant}_{}", stamp / 60_000),
                if exceeded { "tenant.backlog_exceeded" } else { "tenant.backlog_cleared" },
                json!({"tenant": tenant, "deliveries_waiting": waiting, "threshold": threshold, "at": now}),
            )
        }
        Notice::Circuit { subscription_id, opened, consecutive_failures } => {
            let sub = registry.find(&subscription_id)?;
            if sub.tenant == operator {
                return None;
            }
            let kind = if opened { "opened" } else { "closed" };
            (
                format!("op_circuit_{kind}_{subscription_id}_{stamp}"),
                if opened { "circuit.opened" } else { "circuit.closed" },
                json!({"subscription_id": subscription_id, "tenant": sub.tenant, "url": sub.url,
                    "consecutive_failures": consecutive_failures, "replica": replica, "at": now}),
            )
        }
    };
    Some(proto::Event {
        id,
        r#type: event_type.into(),
        tenant: operator.into(),
        source: "herald".into(),
        time: now,
        data: serde_json::to_vec(&data).unwrap_or_default(),
    })
}

/// An event id's characters as an id may hold them (`[A-Za-z0-9_:-]`), at most 64.
fn id_part(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-')).take(64).collect()
}

async fn publish(
    js: &jetstream::Context,
    partition: nats::Partition,
    keys: &herald_core::secrets::KeyRing,
    event: &proto::Event,
) {
    let subject = partition.event_subject(&event.tenant, &event.r#type);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let payload = bytes::Bytes::from(event.encode_to_vec());
    let mac = keys.operator_mac(&payload);
    loop {
        let mut message = PublishMessage::build().payload(payload.clone()).message_id(&event.id);
        if let Some(mac) = &mac {
            message = message.header(nats::OPERATOR_MAC_HEADER, mac.as_str());
        }
        let sent = match js.send_publish(subject.clone(), message).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match sent {
            Ok(()) => {
                tracing::info!(id = %event.id, r#type = %event.r#type, "operational event published");
                return;
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                tracing::warn!(id = %event.id, error = %e, "operational event dropped: JetStream did not take it");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_about_the_operator_tenant_are_never_queued() {
        let (tx, mut rx) = mpsc::channel(4);
        let op = Operational { tx: Some(tx), tenant: "herald".into() };
        let sub = |tenant: &str| {
            Arc::new(proto::Subscription { id: "sub_1".into(), tenant: tenant.into(), ..Default::default() })
        };
        op.notify(Notice::Disabled { sub: sub("herald"), reason: "410".into() });
        op.notify(Notice::Disabled { sub: sub("acme"), reason: "410".into() });
        assert!(matches!(rx.try_recv(), Ok(Notice::Disabled { sub, .. }) if sub.tenant == "acme"));
        assert!(rx.try_recv().is_err(), "the operator's own was not queued");
    }

    #[test]
    fn events_carry_what_happened_under_a_stable_id() {
        let registry = herald_core::registry::Registry::new();
        let notice = || Notice::DeadLettered {
            tenant: "acme".into(),
            subscription_id: "sub_1".into(),
            event_id: "ord.1/x".into(),
            event_type: "order.paid".into(),
            attempt: 9,
            reason: "retries exhausted".into(),
        };
        let a = event_of("herald", "r1", &registry, notice()).unwrap();
        let b = event_of("herald", "r2", &registry, notice()).unwrap();
        assert_eq!(a.id, b.id, "the same dead letter from two replicas is one event");
        assert_eq!(a.id, "op_dead_sub_1_ord1x");
        assert_eq!((a.tenant.as_str(), a.r#type.as_str()), ("herald", "delivery.dead_lettered"));
        let data: serde_json::Value = serde_json::from_slice(&a.data).unwrap();
        assert_eq!(data["attempts"], 9);
        // A circuit notice about an unknown (deleted) subscription is dropped.
        let gone = Notice::Circuit { subscription_id: "sub_x".into(), opened: true, consecutive_failures: 5 };
        assert!(event_of("herald", "r1", &registry, gone).is_none());
    }
}
