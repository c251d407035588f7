//! `herald-bench`: measures Herald against the physical limits of the same machine in the same
//! run, so machine noise cancels in the ratios. It starts its own nats-server (JetStream), the
//! gateway and dispatchers as processes (the binaries built next to it) and a lean local
//! receiver that verifies every signature, then reports, for each payload size:
//!
//! - the limits: pipelined JetStream publish (many PubAcks in flight), a raw POST loop to the
//!   receiver at the same concurrency as the HTTP clients, and a raw relay (a durable pull
//!   consumer POSTing each message and acking it after the 2xx: the least any JetStream-backed
//!   webhook sender does);
//! - HTTP ingest (`POST /v1/events/batch`, `POST /v1/events`) and NATS ingest (publishing
//!   straight to `herald.events.…`, JSON and protobuf events), as ratios to raw publish;
//! - end to end (publish → verified receipt) with 1, 10 and 100 subscriptions per event type and
//!   1 and 3 dispatchers, as deliveries/s and ratios to the raw POST loop and the raw relay;
//! - latency publish (`POST /v1/events`) → receipt, p50/p95/p99, at a fixed rate;
//! - durability: HTTP ingest with `sync_interval: always` and on a three-node cluster at R3, as
//!   ratios to the same ingest at R1;
//! - scale-out: one backlog drained by 1, 2, 3 and 4 dispatchers, each held to a CPU share in
//!   a cgroup of its own: deliveries/s, the factor over one, each replica's share of attempts;
//! - node failures: a backlog drained on a three-node cluster with no node killed and with a
//!   node SIGKILLed every 30 s (deliveries/s and their ratio), and the last delivery after a
//!   node kill once the cluster is whole again;
//! - peak memory of the gateway (idle and under load) and of a dispatcher holding 10,000
//!   deliveries to a slow receiver;
//! - statistics read back by a gateway started afresh (`stats`), a million subscriptions held by
//!   every replica (`registry`), and Herald on 3- and 6-node clusters with every node capped
//!   (`engine`).
//!
//! Every figure is the median of `--runs` runs after a warm-up. A ratio is the median of each
//! run's ratio to its limit measured next to it (raw publish for ingest, the raw POST loop for
//! end to end), so that the drift of a shared machine over the benchmark cancels. End to end
//! also reports the CPU time per delivery of the dispatchers, nats-server and the benchmark
//! itself (steadier than any rate, and what bounds it on a machine they share), and the
//! dispatcher CPU per delivery those leave at half the raw POST loop's rate. `--smoke`
//! runs a tiny configuration (CI runs it so the benchmark cannot rot). Results are printed as a table and
//! written as JSON. A benchmark, not a test: it never fails on a number.
#![forbid(unsafe_code)]

mod args;
mod cluster;
mod destinations;
mod durability;
mod e2e;
mod engine;
mod filters;
mod inbound;
mod ingest;
mod load;
mod memory;
mod ordered;
mod procs;
mod production;
mod registry;
mod regression;
mod report;
mod scaleout;
mod schema;
mod sink;
mod soak;
mod stats;

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage};
use clap::Parser;
use serde_json::{Value, json};

use crate::args::Args;
use crate::load::{json_event, pipelined};
use crate::memory::InFlight;
use crate::procs::Proc;
use crate::sink::Sink;

/// One line of the table.
struct Row {
    payload: usize,
    name: String,
    value: f64,
    unit: &'static str,
    /// The value as a fraction of a limit, with the limit's name.
    ratio: Option<(f64, &'static str)>,
    /// End to end: the value as a fraction of the raw relay.
    of_relay: Option<f64>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn per_sec(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

const TENANT: &str = "default";
const RAW_POST: &str = "raw POST loop";
const RAW_PUBLISH: &str = "raw publish";
const RAW_PUBLISH_DEDUP: &str = "raw publish with Nats-Msg-Id";
const RAW_RELAY: &str = "raw relay: consume → POST → ack";

struct Bench {
    args: Args,
    nats: herald_harness::NatsServer,
    js: jetstream::Context,
    http: reqwest::Client,
    gateway_url: String,
    gateway: Proc,
    sink: Sink,
    secret: String,
    /// The next unused sink path.
    next_path: usize,
    rows: Vec<Row>,
    /// Unique ids across the whole run.
    serial: usize,
}

/// A set of subscriptions to one event type, on consecutive sink paths.
struct Group {
    event_type: String,
    paths: std::ops::Range<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.events = 200;
        args.ingest_mib = 0;
        args.payloads = vec![256];
        args.concurrency = 4;
        args.batch_clients = 2;
        args.subscriptions = vec![1, 10];
        args.dispatchers = vec![1];
        args.latency_rate = 100;
        args.latency_seconds = 1;
        args.in_flight = 200;
        args.slow_ms = 200;
        args.runs = 1;
        args.scale_replicas = vec![1, 2];
        args.scale_backlog = 200;
        args.cluster_backlog = 200;
        args.production_hosts = 10;
        args.production_subscriptions = 100;
        args.production_latency_ms = 5;
        args.production_deliveries = 200;
        args.production_payloads = vec![256];
        args.production_concurrency = vec![16];
        args.soak_rate = 50;
        args.soak_seconds = 10;
        args.soak_types = 2;
        args.soak_fanout = 2;
        args.soak_checks = 20;
        args.stats_deliveries = 2_000;
        args.stats_day_subscriptions = 20;
        args.registry_subscriptions = 2_000;
        args.registry_tenants = 200;
        args.engine_nodes = vec![3];
        args.engine_events = 300;
        args.engine_partitions = vec![1, 2];
        args.baseline_runs = 1;
        args.destination_events = 200;
    }
    if let Some(dir) = &args.binaries {
        procs::use_binaries_from(dir.clone());
    }
    // The smoke run compares this build with itself, so the regression rows run on every CI run.
    if args.smoke && args.baseline.is_none() {
        args.baseline = Some(procs::binaries_dir()?);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secret = herald_signature::Secret::generate();
    let sink = Sink::start(&secret).await?;
    let nats = herald_harness::NatsServer::start();
    let js = jetstream::new(nats.client().await);
    let port = herald_harness::free_port();
    let gateway = Proc::gateway(&nats.url(), port).await?;
    let mut bench = Bench {
        args: args.clone(),
        js,
        http: reqwest::Client::new(),
        gateway_url: format!("http://127.0.0.1:{port}"),
        nats,
        gateway,
        sink,
        secret: secret.to_text(),
        next_path: 0,
        rows: Vec::new(),
        serial: 0,
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gateway_idle = bench.gateway.memory();
    println!(
        "herald-bench: {} events, payloads {:?} B, {} clients ({} sending batches), median of {} run(s) after a warm-up; Herald logging at {}",
        args.events,
        args.payloads,
        args.concurrency,
        args.batch_clients,
        args.runs,
        std::env::var("HERALD_LOG").unwrap_or_else(|_| "info (the default)".into())
    );

    // Ingest and the limits, with no dispatcher running: nothing else competes for the CPU.
    for (name, subjects) in [("BENCH_RAW", "bench.raw.>"), ("BENCH_RELAY", "bench.relay.>")] {
        let config =
            jetstream::stream::Config { name: name.into(), subjects: vec![subjects.into()], ..Default::default() };
        bench.js.create_stream(config).await?;
    }
    for &payload in &args.payloads {
        bench.limits_and_ingest(payload).await?;
        bench.settle(&["BENCH_RAW", "BENCH_RELAY", herald_core::nats::EVENTS_STREAM]).await?;
    }
    if bench.wants("durability") {
        for &payload in &args.payloads {
            bench.durability(payload).await?;
        }
    }
    let gateway_loaded = bench.gateway.memory();
    // The ingest runs' events have no subscriptions; drop them before dispatchers start.
    bench.settle(&["BENCH_RAW", "BENCH_RELAY", herald_core::nats::EVENTS_STREAM]).await?;

    // End to end.
    let mut groups = Vec::new();
    for &subs in &args.subscriptions {
        groups.push(bench.subscribe(subs).await?);
    }
    let mut dispatchers: Vec<Proc> = Vec::new();
    let mut dispatcher_peak = 0;
    let replica_counts = if bench.wants("e2e") || bench.wants("latency") { args.dispatchers.clone() } else { vec![] };
    for &replicas in &replica_counts {
        while dispatchers.len() < replicas {
            dispatchers.push(Proc::dispatcher(&bench.nats.url(), &[])?);
        }
        for group in &groups {
            bench.warm_up(group).await?;
        }
        for &payload in &args.payloads {
            for group in &groups {
                if bench.wants("e2e") {
                    bench.end_to_end(group, payload, &dispatchers).await?;
                }
            }
        }
        if replicas == 1 && bench.wants("latency") {
            for &payload in &args.payloads {
                bench.latency(&groups[0], payload).await?;
            }
        }
        dispatcher_peak = dispatchers.iter().map(|d| d.memory().peak_kib).max().unwrap_or(0).max(dispatcher_peak);
    }
    // Healthy runs defer nothing and retry nothing; say so if they did.
    let mut extra_work = [0.0; 4];
    for d in &dispatchers {
        extra_work[0] += d.counter(&bench.http, "herald_deferrals_total").await;
        extra_work[1] += d.counter(&bench.http, "herald_retries_scheduled_total").await;
        extra_work[2] += d.counter(&bench.http, r#"herald_fanout_deliveries_total{path="inline"}"#).await;
        extra_work[3] += d.counter(&bench.http, "herald_fanout_deliveries_total").await;
    }
    for d in dispatchers {
        d.stop().await;
    }

    // Scale-out, with dispatchers of its own (capped), on a subscription of its own.
    if bench.wants("scaleout") {
        let group = bench.subscribe(1).await?;
        for &payload in &args.payloads {
            bench.scale_out(&group, payload).await?;
        }
    }

    // What payload filters cost at fan-out.
    if bench.wants("filters") {
        for &payload in &args.payloads {
            bench.filter_cost(payload).await?;
        }
    }

    // What order costs: a FIFO subscription's deliveries one at a time.
    if bench.wants("ordered") {
        for &payload in &args.payloads {
            bench.ordered(payload).await?;
        }
    }

    // Broker destinations against each broker's raw publish rate, on brokers of their own.
    if bench.wants("destinations") {
        bench.destinations(args.payloads[0]).await?;
    }

    // What a trivial transformation costs per delivery.
    if bench.wants("transformations") {
        bench.transformation_cost(args.payloads[0]).await?;
    }

    // Memory with deliveries in flight to a slow receiver.
    let memory = if bench.wants("memory") {
        bench.in_flight_memory().await?
    } else {
        InFlight { deliveries: 0, slow_ms: 0, runs: vec![] }
    };
    let gateway_end = bench.gateway.memory();

    // Statistics at volume: a gateway started after a million deliveries.
    if bench.wants("stats") {
        let payload = args.payloads[0];
        bench.statistics(payload).await?;
    }

    // Production shape: HTTPS hosts with latency, many subscriptions, one dispatcher.
    if bench.wants("production") {
        bench.production().await?;
    }

    // Deliveries on a three-node cluster, with and without node kills, on servers of its own.
    if bench.wants("cluster") {
        for &payload in &args.payloads {
            bench.cluster(payload).await?;
        }
    }

    // Many subscriptions, last on the main server: they stay in its bucket.
    if bench.wants("registry") {
        let payload = args.payloads[0];
        bench.many_subscriptions(payload).await?;
    }

    // The engine on clusters of growing size, nodes capped, on servers of their own.
    if bench.wants("engine") {
        for &payload in &args.payloads {
            bench.engine(payload).await?;
        }
    }

    // Memory over minutes of steady deliveries, on a server of its own.
    if bench.wants("soak") {
        bench.soak().await?;
    }

    // This build against another, alternated: the regression guard.
    if let (true, Some(baseline)) = (bench.wants("regression"), args.baseline.clone()) {
        bench.regression(args.payloads[0], &baseline).await?;
    }

    let memory_rows = [
        ("gateway idle, RSS after start", gateway_idle.rss_kib),
        ("gateway peak RSS, ingest runs", gateway_loaded.peak_kib),
        ("gateway peak RSS, whole run", gateway_end.peak_kib),
        ("gateway RSS at the end, idle", gateway_end.rss_kib),
        ("dispatcher peak RSS, end-to-end runs", dispatcher_peak),
    ];
    bench.report(&memory_rows, &memory, gateway_idle, extra_work)?;
    Ok(())
}

impl Bench {
    fn next_id(&mut self, prefix: &str) -> String {
        self.serial += 1;
        format!("{prefix}-{}", self.serial)
    }

    fn data(payload: usize) -> Value {
        json!({"blob": "x".repeat(payload.saturating_sub(12))})
    }

    fn push(&mut self, payload: usize, name: impl Into<String>, value: f64, unit: &'static str) {
        self.rows.push(Row { payload, name: name.into(), value, unit, ratio: None, of_relay: None });
    }

    fn limit(&self, payload: usize, name: &str) -> f64 {
        self.rows.iter().find(|r| r.payload == payload && r.name == name).map(|r| r.value).unwrap_or(f64::NAN)
    }

    /// A row whose ratio was measured in pairs (see [`Bench::paired_median_of`]).
    fn push_paired(
        &mut self,
        payload: usize,
        name: impl Into<String>,
        (value, ratio): (f64, f64),
        unit: &'static str,
        of: &'static str,
    ) {
        let of_relay = (of == RAW_POST).then(|| value / self.limit(payload, RAW_RELAY));
        self.rows.push(Row { payload, name: name.into(), value, unit, ratio: Some((ratio, of)), of_relay });
    }

    /// `measure(events)` once as a warm-up with a fifth of the events, then `runs` times, each
    /// from empty streams; the median of the rates.
    async fn median_of<F, Fut>(&mut self, events: usize, mut measure: F) -> anyhow::Result<f64>
    where
        F: FnMut(&mut Self, usize) -> Fut,
        Fut: Future<Output = anyhow::Result<f64>>,
    {
        let streams = ["BENCH_RAW", herald_core::nats::EVENTS_STREAM];
        measure(self, (events / 5).max(1)).await?;
        let mut rates = Vec::new();
        for _ in 0..self.args.runs {
            self.settle(&streams).await?;
            rates.push(measure(self, events).await?);
        }
        self.settle(&streams).await?;
        Ok(median(rates))
    }

    /// Like [`Bench::median_of`], but each measured run is paired with a run of `limit` right
    /// before or after it (alternately; from empty streams too): the median rate, and the median
    /// of each run's ratio to its pair's limit, so that the machine's drift cancels.
    async fn paired_median_of<L, LFut, F, Fut>(
        &mut self,
        events: usize,
        mut limit: L,
        mut measure: F,
    ) -> anyhow::Result<(f64, f64)>
    where
        L: FnMut(&mut Self, usize) -> LFut,
        LFut: Future<Output = anyhow::Result<f64>>,
        F: FnMut(&mut Self, usize) -> Fut,
        Fut: Future<Output = anyhow::Result<f64>>,
    {
        let streams = ["BENCH_RAW", herald_core::nats::EVENTS_STREAM];
        measure(self, (events / 5).max(1)).await?;
        let (mut rates, mut ratios) = (Vec::new(), Vec::new());
        for run in 0..self.args.runs {
            // Which goes first alternates, so that neither always runs on the other's heels.
            self.settle(&streams).await?;
            let (base, rate) = if run % 2 == 0 {
                let base = limit(self, events).await?;
                self.settle(&streams).await?;
                (base, measure(self, events).await?)
            } else {
                let rate = measure(self, events).await?;
                self.settle(&streams).await?;
                (limit(self, events).await?, rate)
            };
            rates.push(rate);
            ratios.push(rate / base);
        }
        self.settle(&streams).await?;
        Ok((median(rates), median(ratios)))
    }

    fn wants(&self, phase: &str) -> bool {
        self.args.only.iter().any(|p| p == phase)
    }

    /// `count` subscriptions to one new event type, all signing with the bench's secret.
    async fn subscribe(&mut self, count: usize) -> anyhow::Result<Group> {
        self.subscribe_with(count, json!({})).await
    }

    /// [`Bench::subscribe`], each subscription with the fields of `extra` (a filter, an ordering).
    async fn subscribe_with(&mut self, count: usize, extra: Value) -> anyhow::Result<Group> {
        let start = self.next_path;
        anyhow::ensure!(start + count <= sink::PATHS, "more subscriptions than the receiver counts");
        self.next_path += count;
        let event_type = format!("bench.fan{count}.p{start}");
        for index in start..start + count {
            let mut body = json!({"url": self.sink.sub_url(index), "event_types": [event_type], "secret": self.secret});
            for (field, value) in extra.as_object().into_iter().flatten() {
                body[field] = value.clone();
            }
            let resp = self.post_admin("/v1/subscriptions", &body).await?;
            anyhow::ensure!(resp.status() == 201, "creating a subscription: {}", resp.text().await?);
        }
        Ok(Group { event_type, paths: start..start + count })
    }

    /// POSTs `body` to the gateway's `path` with the admin token.
    async fn post_admin(&self, path: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(format!("{}{path}", self.gateway_url))
            .bearer_auth(herald_harness::ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?)
    }

    /// Empties `streams` and flushes dirty pages to disk, so that no measurement pays for the
    /// write-back of an earlier one's data (with 16 KiB payloads that is gigabytes).
    async fn settle(&self, streams: &[&str]) -> anyhow::Result<()> {
        for name in streams {
            self.js.get_stream(*name).await?.purge().await?;
        }
        tokio::task::spawn_blocking(|| std::process::Command::new("sync").status()).await??;
        Ok(())
    }

    /// One event through a group, proving the dispatchers have its subscriptions.
    async fn warm_up(&mut self, group: &Group) -> anyhow::Result<()> {
        let before = self.sink.delivered(group.paths.clone());
        self.publish_events(group, 1, 256).await?;
        let want = before + group.paths.len() as u64;
        self.sink.wait_delivered(group.paths.clone(), want, Duration::from_secs(30)).await.context("warm-up")?;
        Ok(())
    }

    async fn publish_events(&mut self, group: &Group, n: usize, payload: usize) -> anyhow::Result<f64> {
        let messages = self.events_for(group, n, payload);
        pipelined(&self.js, messages).await
    }

    /// `n` events of `group`'s type as a service publishes them straight to NATS.
    fn events_for(&mut self, group: &Group, n: usize, payload: usize) -> Vec<(String, PublishMessage)> {
        let data = Self::data(payload);
        let subject = herald_core::nats::event_subject(TENANT, &group.event_type);
        (0..n)
            .map(|_| {
                let id = self.next_id("e");
                let event = json!({"id": id, "type": group.event_type, "data": data});
                (subject.clone(), json_event(&id, &event))
            })
            .collect()
    }
}
