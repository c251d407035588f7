//! The command line.

use clap::Parser;

#[derive(Parser, Clone)]
#[command(about = "Herald against the raw limits of this machine")]
pub(crate) struct Args {
    /// Events per ingest measurement, and deliveries per end-to-end measurement.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) events: usize,
    /// Each ingest run carries at least this many MiB of payload: more events than `--events`
    /// for small payloads (10,000 of 256 B are published in some 50 ms, too short to time).
    #[arg(long, default_value_t = 12)]
    pub(crate) ingest_mib: usize,
    /// Payload sizes in bytes (the event's data), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "256,16384")]
    pub(crate) payloads: Vec<usize>,
    /// Concurrent HTTP clients (single-event ingest and the raw POST loop).
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Concurrent clients sending batches.
    #[arg(long, default_value_t = 8)]
    pub(crate) batch_clients: usize,
    /// Subscriptions per event type, comma-separated, for the end-to-end runs.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub(crate) subscriptions: Vec<usize>,
    /// Dispatcher replicas, comma-separated, for the end-to-end runs.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub(crate) dispatchers: Vec<usize>,
    /// Events per second for the latency measurement.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) latency_rate: usize,
    /// Seconds the latency measurement lasts.
    #[arg(long, default_value_t = 10)]
    pub(crate) latency_seconds: usize,
    /// Deliveries held by the dispatcher in the memory measurement.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) in_flight: usize,
    /// How long the slow receiver of the memory measurement holds each request, in ms.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) slow_ms: u64,
    /// Measured repetitions of each figure (after a warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// What to measure besides the limits, comma-separated: ingest, inbound (with ingest), durability, e2e, latency,
    /// memory, scaleout, filters, ordered, destinations, transformations, schema (with ingest), stats, registry,
    /// production, cluster, engine, soak, regression (with `--baseline`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingest,inbound,durability,e2e,latency,memory,scaleout,filters,ordered,destinations,transformations,schema,stats,registry,production,cluster,engine,soak,regression"
    )]
    pub(crate) only: Vec<String>,
    /// Broker destinations: deliveries per measured run, per broker (RabbitMQ, NATS, Redis).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) destination_events: usize,
    /// Broker destinations measured, comma-separated: amqp, nats, redis.
    #[arg(long, value_delimiter = ',', default_value = "amqp,nats,redis")]
    pub(crate) destination_kinds: Vec<String>,
    /// Production shape: HTTPS hosts (distinct loopback addresses 127.0.1.x).
    #[arg(long, default_value_t = 100)]
    pub(crate) production_hosts: usize,
    /// Production shape: subscriptions, spread evenly over the hosts and over 100 event types.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) production_subscriptions: usize,
    /// Production shape: the receivers' mean answer time in ms (each drawn from ±50 %).
    #[arg(long, default_value_t = 50)]
    pub(crate) production_latency_ms: u64,
    /// Production shape: deliveries per measured run.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) production_deliveries: usize,
    /// Production shape: payload sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "256,4096")]
    pub(crate) production_payloads: Vec<usize>,
    /// Production shape: dispatcher `HERALD_CONCURRENCY` values, comma-separated (the default
    /// first).
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    pub(crate) production_concurrency: Vec<usize>,
    /// Production shape: the protocols the receivers offer through ALPN, in order of preference
    /// (`h2,http/1.1` needs a build with `--features herald-bench/http2,herald-dispatcher/http2`).
    #[arg(long, value_delimiter = ',', default_value = "http/1.1")]
    pub(crate) production_alpn: Vec<String>,
    /// Scale-out: dispatcher replica counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4")]
    pub(crate) scale_replicas: Vec<usize>,
    /// Scale-out: the CPU share each replica is held to (cgroup quota), in CPUs.
    #[arg(long, default_value_t = 0.2)]
    pub(crate) scale_cpu: f64,
    /// Scale-out: events in the backlog each run drains (one subscription).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) scale_backlog: usize,
    /// Run the gateway and dispatchers from this directory instead of the one the benchmark is
    /// in: another build, to compare two in one sitting (`scripts/bench-ab.sh` alternates them).
    #[arg(long)]
    pub(crate) binaries: Option<std::path::PathBuf>,
    /// Regression guard: a directory holding another build's `herald-gateway` and
    /// `herald-dispatcher` (`scripts/build-ref.sh REF` builds a git ref's), run alternately with
    /// this build's in the same sitting; the `regression` rows give this build ÷ it.
    #[arg(long)]
    pub(crate) baseline: Option<std::path::PathBuf>,
    /// Regression guard: alternations of the two builds (each figure the median).
    #[arg(long, default_value_t = 3)]
    pub(crate) baseline_runs: usize,
    /// Scale-out: run this dispatcher binary instead of the one built next to the benchmark
    /// (to compare two builds on the same machine).
    #[arg(long)]
    pub(crate) dispatcher_binary: Option<std::path::PathBuf>,
    /// Cluster: events in the backlog each run drains on three nodes (one subscription).
    #[arg(long, default_value_t = 60_000)]
    pub(crate) cluster_backlog: usize,
    /// Cluster: the nodes' `sync_interval` (e.g. `always`); nats-server's default if not given.
    #[arg(long)]
    pub(crate) cluster_sync: Option<String>,
    /// Statistics: deliveries made before a gateway is started afresh and timed until warm.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) stats_deliveries: usize,
    /// Statistics: subscriptions active every minute of the day read back by a fresh gateway.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) stats_day_subscriptions: usize,
    /// Engine: cluster sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "3,6")]
    pub(crate) engine_nodes: Vec<usize>,
    /// Engine: each nats-server's CPU share (a cgroup of its own); 0 runs them uncapped. Small
    /// enough that six nodes (0.9 CPU) leave the gateway, dispatchers and receiver room on a
    /// two-core machine: at 0.25, six nodes may take 1.5 cores and the figure measures the machine.
    #[arg(long, default_value_t = 0.15)]
    pub(crate) engine_cpu: f64,
    /// Engine: partitions Herald runs with on each cluster (`HERALD_PARTITIONS`), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,6")]
    pub(crate) engine_partitions: Vec<u16>,
    /// Engine: dispatcher replicas draining the end-to-end backlog.
    #[arg(long, default_value_t = 2)]
    pub(crate) engine_dispatchers: usize,
    /// Engine: give each dispatcher a share of the partitions (`HERALD_PULL_PARTITIONS`, the
    /// i-th of n replicas pulling p mod n = i) instead of every replica pulling every partition.
    #[arg(long)]
    pub(crate) engine_assign: bool,
    /// Engine: leave the stream and consumer leaders where the cluster elected them, instead of
    /// spreading them (each leader moved, among its group's peers, to the node leading the
    /// fewest). Where two busy streams' leaders share a node at 0.15 CPU, end to end halves: so
    /// the rows compare builds and cluster sizes at one placement unless this is given.
    #[arg(long)]
    pub(crate) engine_random_leaders: bool,
    /// Engine: events per measurement.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) engine_events: usize,
    /// Registry: subscriptions stored beside the ten that are delivered to.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) registry_subscriptions: usize,
    /// Registry: the tenants they are spread over.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) registry_tenants: usize,
    /// Soak: events per second, published steadily.
    #[arg(long, default_value_t = 300)]
    pub(crate) soak_rate: usize,
    /// Soak: how long it lasts, in seconds (the first fifth is a warm-up).
    #[arg(long, default_value_t = 340)]
    pub(crate) soak_seconds: usize,
    /// Soak: event types, each in a tenant of its own with `--soak-fanout` subscriptions.
    #[arg(long, default_value_t = 20)]
    pub(crate) soak_types: usize,
    /// Soak: subscriptions per event type (deliveries per event).
    #[arg(long, default_value_t = 10)]
    pub(crate) soak_fanout: usize,
    /// Soak: retries of delivered events sent through the record check afterwards.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) soak_checks: usize,
    /// A tiny configuration, to check the benchmark still runs.
    #[arg(long)]
    pub(crate) smoke: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/herald-bench.json")]
    pub(crate) json: std::path::PathBuf,
}
