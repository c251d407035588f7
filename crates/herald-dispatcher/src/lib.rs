//! Herald's dispatcher: consumes `HERALD_EVENTS`, fans each event out into one delivery per
//! matching subscription, and POSTs each delivery signed the Standard Webhooks way, acking only
//! after a 2xx. Failed attempts come back later through a JetStream message schedule, holding no
//! consumer slot meanwhile; exhausted ones are dead-lettered. Replicas share the durable
//! consumers (events and deliveries alike), so it scales by running more; only ordered
//! subscriptions are fanned out by one replica at a time.
//!
//! # Layout
//! - [`Config`] and [`run`]: start-up, the consumer loops, graceful shutdown.
//! - `fanout.rs`: event → deliveries. `deliver.rs`: delivery → HTTP attempt → outcome.
//! - `records.rs`: attempt records, and the check before a delivery is sent again;
//!   `recent.rs`: the last minutes of records in memory while checks need them.
//! - `routes.rs`: which fan-out serves which subscription; the ordered consumer's filter.
//! - `lanes.rs`: a consumer per ordered or limited subscription. `pull.rs`: the pull loop.
//! - [`retry`]: the outcome decision. [`http_client`]: the webhook request.
//! - `health.rs`: `/healthz` and `/readyz` on `HERALD_LISTEN`.
#![forbid(unsafe_code)]

mod backlog;
pub mod breaker;
mod deliver;
pub mod destinations;
mod direct;
mod elections;
mod endpoint_auth;
mod fanout;
mod health;
pub mod http_client;
mod lanes;
mod operational;
mod prepared;
mod pull;
mod recent;
mod records;
pub mod retry;
mod rollups;
mod routes;
mod settle;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pull::{Pull, Slots, consume};

use herald_core::nats;
use herald_core::registry::Registry;
use herald_core::retry::RetryPolicy;

/// Dispatcher settings. Every flag has a `HERALD_*` variable; defaults suit local use.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "herald-dispatcher",
    version,
    about = "Herald's dispatcher: fans events out and delivers signed webhooks"
)]
pub struct Config {
    /// Address of the health endpoints (`/healthz`, `/readyz`).
    #[arg(long, env = "HERALD_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: String,
    /// Delays before each retry, comma-separated; after the last, the delivery is dead-lettered.
    #[arg(long, env = "HERALD_RETRY_SCHEDULE", default_value = herald_core::retry::DEFAULT_SCHEDULE, value_parser = RetryPolicy::parse)]
    pub retry_schedule: RetryPolicy,
    /// Longest wait a subscriber's `Retry-After` (on 429 and 503) can ask for.
    #[arg(long, env = "HERALD_RETRY_AFTER_MAX", default_value = "1h", value_parser = herald_core::runtime::parse_duration)]
    pub retry_after_max: Duration,
    /// Bytes of each response body kept in the attempt record.
    #[arg(long, env = "HERALD_RESPONSE_BODY_LIMIT", default_value_t = 4096)]
    pub response_body_limit: usize,
    /// Fixed DNS answers, `name=ip` comma-separated (tests, split-horizon set-ups). The SSRF
    /// guard checks them like any other answer.
    #[arg(long, env = "HERALD_RESOLVE", default_value = "")]
    pub resolve: String,
    /// Extra root certificates (PEM) trusted for subscribers' HTTPS, beside the platform's.
    #[arg(long, env = "HERALD_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// An HTTP proxy every delivery goes through (CONNECT for HTTPS), e.g.
    /// `http://user:pass@egress:4750`: one source address for subscribers to allow.
    #[arg(long, env = "HERALD_PROXY_URL")]
    pub proxy_url: Option<String>,
    /// Hosts reached without the proxy: comma-separated names (`.example.com` and
    /// `example.com` cover subdomains), IP addresses and CIDRs, as in `NO_PROXY`.
    #[arg(long, env = "HERALD_NO_PROXY", default_value = "")]
    pub no_proxy: String,
    /// Timeout of one delivery attempt.
    #[arg(long, env = "HERALD_HTTP_TIMEOUT", default_value = "15s", value_parser = herald_core::runtime::parse_duration)]
    pub http_timeout: Duration,
    /// How long a message lost on its way (with a NATS node) or held by a replica that died
    /// waits before JetStream hands it out again (default 10 s). A replica tells JetStream every
    /// fifth of it that it is still working on what it holds, so an attempt may take longer.
    /// Rate-limited lanes wait at least the HTTP timeout + 15 s: they hold messages while they
    /// pace them.
    #[arg(long, env = "HERALD_ACK_WAIT", value_parser = herald_core::runtime::parse_duration)]
    pub ack_wait: Option<Duration>,
    /// Consecutive failed attempts to one subscription that open its circuit (per replica).
    #[arg(long, env = "HERALD_BREAKER_THRESHOLD", default_value_t = 5)]
    pub breaker_threshold: u32,
    /// How long an open circuit waits before letting one probe through.
    #[arg(long, env = "HERALD_BREAKER_COOLDOWN", default_value = "30s", value_parser = herald_core::runtime::parse_duration)]
    pub breaker_cooldown: Duration,
    /// Requests in flight to one subscription from this replica, unless the subscription sets
    /// its own `max_in_flight`: one slow endpoint cannot take every slot.
    #[arg(long, env = "HERALD_SUBSCRIPTION_CONCURRENCY", default_value_t = 64)]
    pub subscription_concurrency: u32,
    /// A subscription failing without a single success for this long is disabled.
    #[arg(long, env = "HERALD_DISABLE_AFTER", default_value = "5d", value_parser = herald_core::runtime::parse_duration)]
    pub disable_after: Duration,
    /// HTTP requests in flight at once in this replica (up to four times as many deliveries may
    /// be in hand, queued behind busy subscriptions).
    #[arg(long, env = "HERALD_CONCURRENCY", default_value_t = 256)]
    pub concurrency: usize,
    /// Events fanned out at once in this replica.
    #[arg(long, env = "HERALD_FANOUT_CONCURRENCY", default_value_t = 32)]
    pub fanout_concurrency: usize,
    /// Partitions whose fan-out and delivery consumers this replica pulls, comma-separated
    /// (`0,2,4`); empty, the default: every partition. A static assignment: a partition that no
    /// running replica lists waits until one does. Ordered fan-out and lanes are pulled from
    /// every partition whatever it says.
    #[arg(long, env = "HERALD_PULL_PARTITIONS", value_delimiter = ',')]
    pub pull_partitions: Vec<u16>,
    /// Events whose first attempts fan-out may be making itself at once, to endpoints that are
    /// healthy, fast and not at their limit (the rest are stored in `HERALD_DELIVERIES` first,
    /// as every delivery is with 0).
    #[arg(long, env = "HERALD_INLINE_ATTEMPTS", default_value_t = 256)]
    pub inline_attempts: usize,
    /// On SIGTERM, how long in-flight deliveries may take to finish; the rest stay unacked and
    /// are redelivered to another replica.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE", default_value = "20s", value_parser = herald_core::runtime::parse_duration)]
    pub shutdown_grace: Duration,
    /// A delivery handed out this many times without an outcome (a crash loop) is dead-lettered.
    #[arg(long, env = "HERALD_MAX_REDELIVERIES", default_value_t = 10)]
    pub max_redeliveries: i64,
    /// The tenant whose events are Herald's own operational events (`subscription.disabled`,
    /// `delivery.dead_lettered`, `circuit.opened`, `circuit.closed`); empty turns them off.
    #[arg(long, env = "HERALD_OPERATOR_TENANT", default_value = "herald")]
    pub operator_tenant: String,
    /// Deliveries waiting for one tenant that make a `tenant.backlog_exceeded` operational event
    /// (and, once under half of it again, `tenant.backlog_cleared`); 0 turns the check off.
    #[arg(long, env = "HERALD_BACKLOG_ALERT", default_value_t = 10_000)]
    pub backlog_alert: u64,
    /// How often tenants' backlogs are counted.
    #[arg(long, env = "HERALD_BACKLOG_CHECK_INTERVAL", default_value = "60s", value_parser = herald_core::runtime::parse_duration)]
    pub backlog_check_interval: Duration,
    /// How often this replica publishes the statistics it counted (`HERALD_STATS`): what a
    /// replica that is killed has counted since is lost from the statistics.
    #[arg(long, env = "HERALD_STATS_FLUSH", default_value = "5s", value_parser = herald_core::runtime::parse_duration)]
    pub stats_flush: Duration,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: herald_core::CommonArgs,
}

/// What the stages share.
pub(crate) struct Shared {
    pub js: jetstream::Context,
    pub subscriptions: jetstream::kv::Store,
    pub registry: Arc<Registry>,
    /// The event-type catalog (schemas checked at fan-out for events published to NATS).
    pub catalog: Arc<herald_core::catalog::Catalog>,
    pub breakers: Arc<breaker::Breakers>,
    /// HTTP requests in flight in this replica (`HERALD_CONCURRENCY`). Deliveries waiting for
    /// their subscription's turn hold a message, not one of these.
    pub http_slots: Arc<tokio::sync::Semaphore>,
    /// Events held by fan-out while it makes their first attempts (`HERALD_INLINE_ATTEMPTS`).
    pub inline: fanout::InlineSlots,
    /// The key ring: opens sealed secrets, authenticates operational events.
    pub keys: Arc<herald_core::secrets::KeyRing>,
    /// Subscriptions' URLs, secrets, schedules and own clients, worked out once per revision.
    pub prepared: prepared::PreparedSubscriptions,
    /// Access tokens for subscriptions' OAuth2 endpoints, shared by their deliveries.
    pub(crate) tokens: endpoint_auth::Tokens,
    /// Which fan-out serves which subscription.
    pub routes: Arc<routes::Routes>,
    /// Leader changes noticed lately: messages stored before one are checked before sending.
    pub elections: Arc<elections::Elections>,
    /// Operational events for the operator tenant.
    pub operational: operational::Operational,
    /// The client that serves every subscription without a client certificate.
    pub webhooks: http_client::WebhookClient,
    /// The client token requests go out on (the same guard, roots and proxy).
    pub http: reqwest::Client,
    /// Until when records of the per-event layout may be retained (read by the record check).
    pub legacy_records_until: Option<time::OffsetDateTime>,
    /// How many partitions new events, deliveries and records are spread over.
    pub partitions: nats::Partitions,
    /// Every partition with streams: [`Shared::partitions`]' and any left to drain.
    pub in_use: Vec<nats::Partition>,
    /// The last few minutes of attempt records, while record checks need them: one index per
    /// partition.
    pub(crate) recent: Box<[recent::RecentRecords]>,
    /// Record reads at nats-server at once.
    pub(crate) record_reads: records::Reads,
    /// The messages this replica holds, told in progress while it works on them.
    pub(crate) progress: pull::Progress,
    /// What this replica counted for the statistics since its last flush.
    pub(crate) rollups: Arc<rollups::Rollups>,
    pub config: Config,
}

/// Readiness as `/readyz` reports it.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    consuming: AtomicBool,
}

/// The shortest `HERALD_ACK_WAIT`.
const MIN_ACK_WAIT: Duration = Duration::from_secs(2);

impl Config {
    /// The ack wait of a rate-limited lane: it holds messages while it paces them (untold, in
    /// the pull's buffer), so it waits as long as it did before messages were told in progress.
    pub(crate) fn paced_ack_wait(&self, ack_wait: Duration) -> Duration {
        ack_wait.max(self.http_timeout + Duration::from_secs(15))
    }
}

/// How long the exit waits for NATS to take what the client still buffers.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// Runs until `shutdown` is cancelled: bootstraps NATS, loads subscriptions, then consumes.
/// After cancellation, pulling stops, in-flight deliveries get `shutdown_grace` to finish, and
/// whatever is still unfinished is left unacked for redelivery.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let keys = Arc::new(config.common.keys.load()?);
    let client = config.common.connect("herald-dispatcher").await?;
    let js = jetstream::new(client.clone());
    let mut topology = config.common.topology.topology();
    topology.deliver_ack_wait = config.ack_wait.unwrap_or(nats::DEFAULT_ACK_WAIT);
    if topology.deliver_ack_wait < MIN_ACK_WAIT {
        anyhow::bail!(
            "HERALD_ACK_WAIT ({:?}) must be at least {MIN_ACK_WAIT:?}: held messages are told in progress every fifth of it",
            topology.deliver_ack_wait,
        );
    }
    if let Some(p) = config.pull_partitions.iter().find(|p| **p >= topology.partitions.count()) {
        anyhow::bail!(
            "HERALD_PULL_PARTITIONS lists partition {p}, but there are {} (HERALD_PARTITIONS; they count from 0)",
            topology.partitions.count()
        );
    }
    let handles =
        nats::until_ready("streams and the subscriptions bucket", || nats::ensure_streams(&js, &topology)).await?;
    let in_use = handles.in_use.clone();
    let consumers =
        nats::until_ready("the dispatcher's consumers", || nats::ensure_consumers(&js, &topology, &in_use)).await?;
    if in_use.len() > usize::from(topology.partitions.count()) {
        let left: Vec<String> =
            in_use[usize::from(topology.partitions.count())..].iter().map(|p| p.to_string()).collect();
        tracing::warn!(
            partitions = topology.partitions.count(),
            draining = %left.join(","),
            "streams of partitions beyond HERALD_PARTITIONS exist: their events and deliveries are drained, nothing new goes there"
        );
    }
    let policy = Arc::new(config.common.ssrf_policy());
    let overrides =
        http_client::parse_overrides(&config.resolve).map_err(|e| anyhow::anyhow!("HERALD_RESOLVE: {e}"))?;
    let egress = http_client::Egress::from_config(&config)?;
    let tls = destinations::tls_config(egress.extra_roots_der.clone())?;
    let brokers = destinations::Brokers::new(policy.clone(), overrides.clone(), config.http_timeout, tls.clone());
    let clients = http_client::ClientSettings::new(
        config.http_timeout,
        config.concurrency,
        policy.clone(),
        overrides,
        egress,
        tls,
    );
    let http = clients.build(None).context("building the HTTP client")?;
    let webhooks = clients.webhooks(None).context("building the webhook client")?;

    let registry = Registry::new();
    let tracker = TaskTracker::new();
    tracker.spawn(registry.clone().follow(handles.subscriptions.clone(), shutdown.clone().cancelled_owned()));
    let catalog = herald_core::catalog::Catalog::new();
    tracker.spawn(herald_core::registry::follow(
        catalog.clone(),
        handles.event_types.clone(),
        shutdown.clone().cancelled_owned(),
    ));

    let readiness = Arc::new(Readiness::default());
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("HERALD_LISTEN: cannot bind {}", config.listen))?;
    tracker.spawn(health::serve(listener, client.clone(), registry.clone(), readiness.clone(), shutdown.clone()));

    // Fanning out before the subscriptions are loaded would match events against nothing.
    tokio::select! {
        _ = async { registry.wait_ready().await; catalog.wait_ready().await } => {}
        _ = shutdown.cancelled() => return Ok(()),
    }
    tracing::info!(
        retry_schedule = %config.retry_schedule.describe(),
        concurrency = config.concurrency,
        partitions = topology.partitions.count(),
        "dispatcher consuming"
    );
    readiness.consuming.store(true, Ordering::Relaxed);

    let grace = config.shutdown_grace;
    let breakers = breaker::Breakers::new(breaker::BreakerConfig {
        threshold: config.breaker_threshold.max(1),
        cooldown: config.breaker_cooldown,
        max_in_flight: config.subscription_concurrency.max(1),
    });
    tracker.spawn({
        let (breakers, shutdown) = (breakers.clone(), shutdown.clone());
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => breakers.sweep(),
                }
            }
        }
    });
    tracker.spawn(watch_gauges(js.clone(), in_use.clone(), breakers.clone(), shutdown.clone()));
    if !config.operator_tenant.is_empty() {
        herald_core::ids::TenantId::parse(&config.operator_tenant)
            .map_err(|e| anyhow::anyhow!("HERALD_OPERATOR_TENANT: {}", e.0))?;
    }
    let replica = std::env::var("HOSTNAME").unwrap_or_else(|_| format!("pid-{}", std::process::id()));
    let rollups = Arc::new(rollups::Rollups::default());
    // Stopped after the deliveries are drained, so that their counts go out with the last flush.
    let stop_flushing = CancellationToken::new();
    let flusher = tokio::spawn(rollups::flush_every(
        rollups.clone(),
        js.clone(),
        replica.clone(),
        config.stats_flush.max(Duration::from_millis(100)),
        stop_flushing.clone(),
    ));
    let operational = operational::start(
        config.operator_tenant.clone(),
        replica,
        operational::Writer { js: js.clone(), partitions: topology.partitions, keys: keys.clone() },
        registry.clone(),
        &tracker,
        shutdown.clone(),
    );
    breakers.observe(operational.clone());
    let http_slots = Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1)));
    let routes = Arc::new(routes::Routes::new(registry.clone(), topology.partitions));
    let elections = Arc::new(elections::Elections::default());
    tracker.spawn(elections::watch(elections.clone(), client.clone(), topology.replicas > 1, shutdown.clone()));
    tracker.spawn(routes::supervise(routes.clone(), js.clone(), in_use.clone(), shutdown.clone()));
    let progress = pull::Progress::default();
    let shared = Arc::new(Shared {
        js,
        subscriptions: handles.subscriptions,
        registry,
        catalog,
        breakers,
        http_slots,
        inline: fanout::InlineSlots::new(config.inline_attempts),
        keys: keys.clone(),
        prepared: prepared::PreparedSubscriptions::new(prepared::PrepareWith { keys, policy, clients, brokers }),
        tokens: endpoint_auth::Tokens::new(),
        routes,
        elections,
        operational,
        webhooks,
        http,
        legacy_records_until: handles.legacy_records_until,
        partitions: topology.partitions,
        recent: topology.partitions.all().map(recent::RecentRecords::new).collect(),
        in_use,
        record_reads: Default::default(),
        progress: progress.clone(),
        rollups,
        config,
    });
    tracker.spawn(progress.tell(client.clone(), shutdown.clone()));
    // Cancelled when the grace period ends: in-flight work then stops where it is, unacked.
    let hard_stop = CancellationToken::new();
    tracker.spawn(backlog::watch(shared.clone(), shutdown.clone()));
    // Every replica pulls every partition's consumers unless told which (HERALD_PULL_PARTITIONS):
    // the partitions spread the streams' leaders over the cluster's nodes, and each consumer is
    // shared by every replica as one stream's were.
    let mut loops = Vec::new();
    // Fan-out and delivery hold as many messages per replica whatever the partitions: events
    // held by inline attempts come on top of fan-out's own; deliveries in hand are requests in
    // flight plus those queued behind a busy subscription.
    // Partitions left by a larger HERALD_PARTITIONS are drained by every replica.
    let pulled = |p: nats::Partition| {
        let listed = &shared.config.pull_partitions;
        listed.is_empty() || listed.contains(&p.0) || p.0 >= shared.partitions.count()
    };
    let shared_pulls = consumers.iter().filter(|c| pulled(c.partition)).count();
    let fanout_slots =
        Slots::shared(shared.config.fanout_concurrency.max(1) + shared.config.inline_attempts, shared_pulls);
    let deliver_slots = Slots::shared(shared.config.concurrency.saturating_mul(4), shared_pulls);
    for c in consumers {
        loops.push(tokio::spawn({
            let shared = shared.clone();
            // Each partition's ordered fan-out: JetStream hands out one event at a time.
            let slots = Slots::own(shared.config.fanout_concurrency.max(1));
            let pull = Pull { slots, pinned: true, rate_per_sec: 0, ack_wait: nats::ORDERED_ACK_WAIT };
            consume(c.ordered, pull, shared.progress.clone(), shutdown.clone(), hard_stop.clone(), move |msg| {
                fanout::send(shared.clone(), fanout::Role::Ordered, msg)
            })
        }));
        if !pulled(c.partition) {
            continue;
        }
        loops.push(tokio::spawn({
            let shared = shared.clone();
            let pull = Pull {
                slots: fanout_slots.clone(),
                pinned: false,
                rate_per_sec: 0,
                ack_wait: topology.deliver_ack_wait,
            };
            consume(c.fanout, pull, shared.progress.clone(), shutdown.clone(), hard_stop.clone(), move |msg| {
                fanout::send(shared.clone(), fanout::Role::Shared, msg)
            })
        }));
        loops.push(tokio::spawn({
            let shared = shared.clone();
            let pull = Pull {
                slots: deliver_slots.clone(),
                pinned: false,
                rate_per_sec: 0,
                ack_wait: topology.deliver_ack_wait,
            };
            consume(c.deliver, pull, shared.progress.clone(), shutdown.clone(), hard_stop.clone(), move |taken| {
                let shared = shared.clone();
                async move { Some(deliver::handle(shared, taken, deliver::Mode::Shared)) }
            })
        }));
    }
    let lanes = tokio::spawn(lanes::supervise(shared.clone(), topology.clone(), shutdown.clone(), hard_stop.clone()));

    shutdown.cancelled().await;
    readiness.consuming.store(false, Ordering::Relaxed);
    tracing::info!(grace = ?grace, "stopped pulling; finishing in-flight work");
    let drained = tokio::time::timeout(grace, async {
        for consuming in loops {
            let _ = consuming.await;
        }
        let _ = lanes.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("grace period over; unfinished deliveries stay unacked and will be redelivered");
        hard_stop.cancel();
    }
    stop_flushing.cancel();
    if tokio::time::timeout(FINAL_FLUSH, flusher).await.is_err() {
        tracing::warn!("statistics: the last counts could not be stored before exit");
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    // Send what acks and attempt records are still buffered, if NATS is there to take them. A
    // flush waits for a reconnect, so with NATS gone (stopped along with us) it would never end.
    if tokio::time::timeout(FINAL_FLUSH, client.flush()).await.is_err() {
        tracing::warn!("NATS unreachable at exit; unacked deliveries will be handed out again");
    }
    Ok(())
}

/// Refreshes the gauges that are read rather than counted: open circuits and the backlog of
/// the fan-out and delivery consumers. Those of the two shared ones are what more replicas
/// relieve, and what an autoscaler scales dispatchers on; the ordered one is served by one
/// replica at a time.
async fn watch_gauges(
    js: jetstream::Context,
    in_use: Vec<nats::Partition>,
    breakers: Arc<breaker::Breakers>,
    shutdown: CancellationToken,
) {
    use herald_core::metrics::{CIRCUITS_OPEN, CONSUMER_LAG, PARTITION_LAG};
    loop {
        CIRCUITS_OPEN.set(&[], breakers.open_count() as f64);
        let mut totals = [[0u64; 2]; 3];
        for partition in &in_use {
            let label = partition.label();
            for (i, (stream, consumer)) in [
                (partition.events_stream(), nats::FANOUT_CONSUMER),
                (partition.events_stream(), nats::ORDERED_FANOUT_CONSUMER),
                (partition.deliveries_stream(), nats::DELIVER_CONSUMER),
            ]
            .into_iter()
            .enumerate()
            {
                if let Ok(stream) = js.get_stream_no_info(stream).await
                    && let Ok(info) = stream.consumer_info(consumer).await
                {
                    let (pending, ack_pending) = (info.num_pending, info.num_ack_pending as u64);
                    PARTITION_LAG.set(&[consumer, label, "pending"], pending as f64);
                    PARTITION_LAG.set(&[consumer, label, "ack_pending"], ack_pending as f64);
                    totals[i][0] += pending;
                    totals[i][1] += ack_pending;
                }
            }
        }
        for (i, consumer) in
            [nats::FANOUT_CONSUMER, nats::ORDERED_FANOUT_CONSUMER, nats::DELIVER_CONSUMER].iter().enumerate()
        {
            CONSUMER_LAG.set(&[consumer, "pending"], totals[i][0] as f64);
            CONSUMER_LAG.set(&[consumer, "ack_pending"], totals[i][1] as f64);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
