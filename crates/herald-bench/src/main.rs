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
//! - peak memory of the gateway (idle and under load) and of a dispatcher holding 10,000
//!   deliveries to a slow receiver.
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

mod durability;
mod filters;
mod procs;
mod production;
mod scaleout;
mod schema;
mod sink;

use std::collections::VecDeque;
use std::future::IntoFuture as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::procs::Proc;
use crate::sink::Sink;

#[derive(Parser, Clone)]
#[command(about = "Herald against the raw limits of this machine")]
struct Args {
    /// Events per ingest measurement, and deliveries per end-to-end measurement.
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Each ingest run carries at least this many MiB of payload: more events than `--events`
    /// for small payloads (10,000 of 256 B are published in some 50 ms, too short to time).
    #[arg(long, default_value_t = 12)]
    ingest_mib: usize,
    /// Payload sizes in bytes (the event's data), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "256,16384")]
    payloads: Vec<usize>,
    /// Concurrent HTTP clients (single-event ingest and the raw POST loop).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Concurrent clients sending batches.
    #[arg(long, default_value_t = 8)]
    batch_clients: usize,
    /// Subscriptions per event type, comma-separated, for the end-to-end runs.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    subscriptions: Vec<usize>,
    /// Dispatcher replicas, comma-separated, for the end-to-end runs.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    dispatchers: Vec<usize>,
    /// Events per second for the latency measurement.
    #[arg(long, default_value_t = 1_000)]
    latency_rate: usize,
    /// Seconds the latency measurement lasts.
    #[arg(long, default_value_t = 10)]
    latency_seconds: usize,
    /// Deliveries held by the dispatcher in the memory measurement.
    #[arg(long, default_value_t = 10_000)]
    in_flight: usize,
    /// How long the slow receiver of the memory measurement holds each request, in ms.
    #[arg(long, default_value_t = 2_000)]
    slow_ms: u64,
    /// Measured repetitions of each figure (after a warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// What to measure besides the limits, comma-separated: ingest, durability, e2e, latency,
    /// memory, scaleout, filters, schema (with ingest), production.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingest,durability,e2e,latency,memory,scaleout,filters,schema,production"
    )]
    only: Vec<String>,
    /// Production shape: HTTPS hosts (distinct loopback addresses 127.0.1.x).
    #[arg(long, default_value_t = 100)]
    production_hosts: usize,
    /// Production shape: subscriptions, spread evenly over the hosts and over 100 event types.
    #[arg(long, default_value_t = 1_000)]
    production_subscriptions: usize,
    /// Production shape: the receivers' mean answer time in ms (each drawn from ±50 %).
    #[arg(long, default_value_t = 50)]
    production_latency_ms: u64,
    /// Production shape: deliveries per measured run.
    #[arg(long, default_value_t = 50_000)]
    production_deliveries: usize,
    /// Production shape: payload sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "256,4096")]
    production_payloads: Vec<usize>,
    /// Production shape: dispatcher `HERALD_CONCURRENCY` values, comma-separated (the default
    /// first).
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    production_concurrency: Vec<usize>,
    /// Production shape: the protocols the receivers offer through ALPN, in order of preference
    /// (`h2,http/1.1` needs a build with `--features herald-bench/http2,herald-dispatcher/http2`).
    #[arg(long, value_delimiter = ',', default_value = "http/1.1")]
    production_alpn: Vec<String>,
    /// Scale-out: dispatcher replica counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4")]
    scale_replicas: Vec<usize>,
    /// Scale-out: the CPU share each replica is held to (cgroup quota), in CPUs.
    #[arg(long, default_value_t = 0.2)]
    scale_cpu: f64,
    /// Scale-out: events in the backlog each run drains (one subscription).
    #[arg(long, default_value_t = 20_000)]
    scale_backlog: usize,
    /// Scale-out: run this dispatcher binary instead of the one built next to the benchmark
    /// (to compare two builds on the same machine).
    #[arg(long)]
    dispatcher_binary: Option<std::path::PathBuf>,
    /// A tiny configuration, to check the benchmark still runs.
    #[arg(long)]
    smoke: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/herald-bench.json")]
    json: std::path::PathBuf,
}

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
    nats: herald_tests::NatsServer,
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
        args.production_hosts = 10;
        args.production_subscriptions = 100;
        args.production_latency_ms = 5;
        args.production_deliveries = 200;
        args.production_payloads = vec![256];
        args.production_concurrency = vec![16];
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secret = herald_signature::Secret::generate();
    let sink = Sink::start(&secret).await?;
    let nats = herald_tests::NatsServer::start();
    let js = jetstream::new(nats.client().await);
    let port = herald_tests::free_port();
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
        "herald-bench: {} events, payloads {:?} B, {} clients ({} sending batches), median of {} run(s) after a warm-up",
        args.events, args.payloads, args.concurrency, args.batch_clients, args.runs
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

    // Memory with deliveries in flight to a slow receiver.
    let memory = if bench.wants("memory") {
        bench.in_flight_memory().await?
    } else {
        InFlight { deliveries: 0, slow_ms: 0, runs: vec![] }
    };
    let gateway_end = bench.gateway.memory();

    // Production shape: HTTPS hosts with latency, many subscriptions, one dispatcher.
    if bench.wants("production") {
        bench.production().await?;
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

/// What the slow-receiver measurement found.
struct InFlight {
    deliveries: usize,
    slow_ms: u64,
    /// `(flags, requests held by the receiver at most, peak RSS KiB)` per dispatcher set-up.
    runs: Vec<(String, i64, u64)>,
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

    /// `n` copies of `body` published to a plain stream, many PubAcks in flight.
    fn raw_publish(&self, n: usize, body: bytes::Bytes) -> impl Future<Output = anyhow::Result<f64>> + use<> {
        let js = self.js.clone();
        let messages =
            (0..n).map(|i| (format!("bench.raw.{}", i % 16), PublishMessage::build().payload(body.clone()))).collect();
        async move { pipelined(&js, messages).await }
    }

    /// `n` POSTs of `body` to the receiver, `--concurrency` at a time.
    fn raw_post(&self, n: usize, body: bytes::Bytes) -> impl Future<Output = anyhow::Result<f64>> + use<> {
        let (http, url, clients) = (self.http.clone(), self.sink.raw_url(), self.args.concurrency);
        async move {
            let started = Instant::now();
            futures::stream::iter(0..n)
                .for_each_concurrent(clients, |_| {
                    let (http, url, body) = (&http, &url, body.clone());
                    async move {
                        let _ = http.post(url.as_str()).body(body).send().await;
                    }
                })
                .await;
            Ok(per_sec(n, started.elapsed()))
        }
    }

    /// `n` events of `event_type` posted to the gateway at `gateway_url` in batches of
    /// `per_batch`, `--batch-clients` at a time; events/s.
    fn batch_ingest(
        &mut self,
        gateway_url: &str,
        n: usize,
        event_type: &str,
        data: &Value,
        per_batch: usize,
    ) -> impl Future<Output = anyhow::Result<f64>> + use<> {
        let events: Vec<Value> =
            (0..n).map(|_| json!({"id": self.next_id("b"), "type": event_type, "data": data})).collect();
        let (http, url, clients) =
            (self.http.clone(), format!("{gateway_url}/v1/events/batch"), self.args.batch_clients);
        async move {
            let bodies = events.chunks(per_batch).map(|chunk| json!({"events": chunk}).to_string()).collect();
            post_all(&http, &url, clients, bodies, n).await
        }
    }

    fn wants(&self, phase: &str) -> bool {
        self.args.only.iter().any(|p| p == phase)
    }

    async fn limits_and_ingest(&mut self, payload: usize) -> anyhow::Result<()> {
        let events = self.args.events;
        let ingest = events.max(self.args.ingest_mib * 1024 * 1024 / payload.max(1));
        let data = Self::data(payload);
        let body = bytes::Bytes::from(serde_json::to_vec(&data)?);

        let raw = self.median_of(ingest, |b, n| b.raw_publish(n, body.clone())).await?;
        self.push(payload, RAW_PUBLISH, raw, "msg/s");
        let dedup = self
            .median_of(ingest, |b, n| {
                let body = body.clone();
                let js = b.js.clone();
                let messages = (0..n)
                    .map(|i| {
                        let publish = PublishMessage::build().payload(body.clone()).message_id(b.next_id("r"));
                        (format!("bench.raw.{}", i % 16), publish)
                    })
                    .collect();
                async move { pipelined(&js, messages).await }
            })
            .await?;
        self.push(payload, RAW_PUBLISH_DEDUP, dedup, "msg/s");
        let post = self.median_of(events, |b, n| b.raw_post(n, body.clone())).await?;
        self.push(payload, RAW_POST, post, "req/s");
        let relay = self
            .median_of(events, |b, n| {
                let messages = (0..n)
                    .map(|i| (format!("bench.relay.{}", i % 16), PublishMessage::build().payload(body.clone())))
                    .collect();
                let (js, http, url, clients) = (b.js.clone(), b.http.clone(), b.sink.raw_url(), b.args.concurrency);
                async move { relay(&js, &http, &url, clients, messages).await }
            })
            .await?;
        self.push(payload, RAW_RELAY, relay, "msg/s");
        if !self.wants("ingest") {
            return Ok(());
        }

        let nats_json = |id: String| {
            let event = json!({"id": id, "type": "bench.ingest.json", "data": data});
            json_event(&id, &event)
        };
        self.nats_ingest(payload, ingest, &body, "JSON", "bench.ingest.json", nats_json).await?;
        // The same as a protobuf herald.v1.Event, the format the gateway stores.
        let data_bytes = serde_json::to_vec(&data)?;
        let nats_proto = |id: String| {
            let event = herald_core::proto::Event { id: id.clone(), data: data_bytes.clone(), ..Default::default() };
            PublishMessage::build().payload(prost::Message::encode_to_vec(&event).into()).message_id(id)
        };
        self.nats_ingest(payload, ingest, &body, "protobuf", "bench.ingest.proto", nats_proto).await?;

        // Batches of up to the gateway's 100 events, kept under its 256 KiB body limit.
        let per_batch = (200_000 / (payload + 100)).clamp(1, 100);
        let batch = self
            .paired_median_of(
                ingest,
                |b, n| b.raw_publish(n, body.clone()),
                |b, n| {
                    let url = b.gateway_url.clone();
                    b.batch_ingest(&url, n, "bench.ingest.batch", &data, per_batch)
                },
            )
            .await?;
        self.push_paired(payload, format!("HTTP ingest, batch of {per_batch}"), batch, "events/s", RAW_PUBLISH);
        if self.wants("schema") {
            self.schema_cost(payload, ingest, per_batch).await?;
        }

        let single = self
            .paired_median_of(
                ingest / 2,
                |b, n| b.raw_publish(n, body.clone()),
                |b, n| {
                    let bodies: Vec<String> = (0..n)
                        .map(|_| json!({"id": b.next_id("s"), "type": "bench.ingest.single", "data": data}).to_string())
                        .collect();
                    let (http, url, clients) =
                        (b.http.clone(), format!("{}/v1/events", b.gateway_url), b.args.concurrency);
                    async move { post_all(&http, &url, clients, bodies, n).await }
                },
            )
            .await?;
        self.push_paired(payload, "HTTP ingest, one event per request", single, "events/s", RAW_PUBLISH);
        Ok(())
    }

    /// NATS ingest: `events` events of `event_type`, each `message(id)`, published straight to
    /// `herald.events.…`, paired with raw publish of `body`.
    async fn nats_ingest(
        &mut self,
        payload: usize,
        events: usize,
        body: &bytes::Bytes,
        format: &str,
        event_type: &str,
        message: impl Fn(String) -> PublishMessage,
    ) -> anyhow::Result<()> {
        let subject = herald_core::nats::event_subject(TENANT, event_type);
        let measured = self
            .paired_median_of(
                events,
                |b, n| b.raw_publish(n, body.clone()),
                |b, n| {
                    let js = b.js.clone();
                    let messages = (0..n).map(|_| (subject.clone(), message(b.next_id("n")))).collect();
                    async move { pipelined(&js, messages).await }
                },
            )
            .await?;
        let name = format!("NATS ingest, {format} (herald.events.…)");
        self.push_paired(payload, name, measured, "events/s", RAW_PUBLISH);
        Ok(())
    }

    /// `count` subscriptions to one new event type, all signing with the bench's secret.
    async fn subscribe(&mut self, count: usize) -> anyhow::Result<Group> {
        self.subscribe_with(count, None).await
    }

    /// [`Bench::subscribe`], each subscription with `filter` if given.
    async fn subscribe_with(&mut self, count: usize, filter: Option<Value>) -> anyhow::Result<Group> {
        let start = self.next_path;
        anyhow::ensure!(start + count <= sink::PATHS, "more subscriptions than the receiver counts");
        self.next_path += count;
        let event_type = format!("bench.fan{count}.p{start}");
        for index in start..start + count {
            let mut body = json!({"url": self.sink.sub_url(index), "event_types": [event_type], "secret": self.secret});
            if let Some(f) = &filter {
                body["filter"] = f.clone();
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
            .bearer_auth(herald_tests::ADMIN_TOKEN)
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

    async fn end_to_end(&mut self, group: &Group, payload: usize, dispatchers: &[Proc]) -> anyhow::Result<()> {
        let (subs, replicas) = (group.paths.len(), dispatchers.len());
        let events = (self.args.events / subs).max(10);
        let nats_pid = self.nats.pid().map(|p| p.to_string()).unwrap_or_default();
        // CPU seconds so far of the dispatchers, nats-server and this process (the publisher
        // and the receiver).
        let cpu = || {
            [
                dispatchers.iter().map(Proc::cpu_seconds).sum::<f64>(),
                procs::cpu_seconds(&nats_pid),
                procs::cpu_seconds("self"),
            ]
        };
        let (mut rates, mut ratios, mut posts) = (Vec::new(), Vec::new(), Vec::new());
        // CPU seconds over the measured runs (not the warm-up), and what they carried: clock
        // ticks are 10 ms, so totals over all runs are finer than any one run's figure.
        let (mut cpu_spent, mut post_cpu_spent, mut measured) = ([0.0; 3], 0.0, 0);
        let post_body = bytes::Bytes::from(serde_json::to_vec(&Self::data(payload))?);
        // A warm-up with a fifth of the events, then the measured runs.
        let runs = std::iter::once((events / 5).max(1)).chain(std::iter::repeat_n(events, self.args.runs));
        for (run, n) in runs.enumerate() {
            let deliveries = n * subs;
            // The raw POST loop right before each run, as the ratio's base.
            let own_before = procs::cpu_seconds("self");
            let post = self.raw_post(deliveries, post_body.clone()).await?;
            let post_cpu = procs::cpu_seconds("self") - own_before;
            let target = self.sink.delivered(group.paths.clone()) + deliveries as u64;
            let messages = self.events_for(group, n, payload);
            let (started, before) = (Instant::now(), cpu());
            pipelined(&self.js, messages).await?;
            let done = self.sink.wait_delivered(group.paths.clone(), target, Duration::from_secs(60)).await?;
            let after = cpu();
            let rate = per_sec(deliveries, done - started);
            rates.push(rate);
            ratios.push(rate / post);
            posts.push(post);
            if run > 0 {
                measured += deliveries;
                post_cpu_spent += post_cpu;
                for (i, spent) in cpu_spent.iter_mut().enumerate() {
                    *spent += after[i] - before[i];
                }
            }
            // Everything was received; the acks follow within milliseconds.
            tokio::time::sleep(Duration::from_millis(200)).await;
            use herald_core::nats::{ATTEMPTS_STREAM, DELIVERIES_STREAM, EVENTS_STREAM};
            self.settle(&[EVENTS_STREAM, DELIVERIES_STREAM, ATTEMPTS_STREAM]).await?;
        }
        let (rate, ratio) = (median(rates.split_off(1)), median(ratios.split_off(1)));
        let setup = format!(
            "{subs} subscription{}, {replicas} dispatcher{}",
            if subs == 1 { "" } else { "s" },
            if replicas == 1 { "" } else { "s" }
        );
        self.push_paired(payload, format!("end to end, {setup}"), (rate, ratio), "deliveries/s", RAW_POST);
        // CPU time is steadier than throughput on a shared machine: what optimisations move,
        // and, with the other processes' share, what bounds the rate. "benchmark" is this
        // process: the publisher and the receiver; the raw POST loop's CPU is its client's and
        // the receiver's, per request.
        let per_delivery = |seconds: f64| seconds * 1e6 / measured as f64;
        let [dispatcher, nats, own] = cpu_spent.map(per_delivery);
        self.push(payload, format!("  dispatcher CPU, {setup}"), dispatcher, "µs/delivery");
        self.push(payload, format!("  nats-server CPU, {setup}"), nats, "µs/delivery");
        self.push(payload, format!("  benchmark CPU, {setup}"), own, "µs/delivery");
        let post_cpu = per_delivery(post_cpu_spent);
        self.push(payload, format!("  raw POST loop CPU, {setup}"), post_cpu, "µs/request");
        // What the machine's cores leave the dispatchers per delivery at half the raw POST
        // loop's rate, once nats-server and the benchmark have had their share.
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let budget = cores * 1e6 / (0.5 * median(posts.split_off(1))) - nats - own;
        self.push(payload, format!("  dispatcher budget at 0.5×, {setup}"), budget, "µs/delivery");
        Ok(())
    }

    /// Events POSTed one by one at a fixed rate; the time from sending each to its verified
    /// receipt.
    async fn latency(&mut self, group: &Group, payload: usize) -> anyhow::Result<()> {
        let (rate, seconds) = (self.args.latency_rate, self.args.latency_seconds);
        let n = rate * seconds;
        let data = Self::data(payload);
        let url = format!("{}/v1/events", self.gateway_url);
        let target = self.sink.delivered(group.paths.clone()) + n as u64;
        self.sink.record_arrivals(true);
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut sent = Vec::with_capacity(n);
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..n {
            interval.tick().await;
            let id = self.next_id("l");
            let body = json!({"id": id, "type": group.event_type, "data": data}).to_string();
            sent.push((id, Instant::now()));
            let (http, url) = (self.http.clone(), url.clone());
            requests.spawn(async move { post_json(&http, &url, body).await });
        }
        while let Some(status) = requests.join_next().await {
            anyhow::ensure!(status? == 202, "an event was not accepted");
        }
        self.sink.wait_delivered(group.paths.clone(), target, Duration::from_secs(30)).await?;
        let arrivals = self.sink.record_arrivals(false);
        let mut ms: Vec<f64> = sent
            .iter()
            .filter_map(|(id, at)| arrivals.get(id).map(|got| got.saturating_duration_since(*at).as_secs_f64() * 1e3))
            .collect();
        anyhow::ensure!(ms.len() == n, "{} of {n} events arrived with their id", ms.len());
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
        for (name, q) in [("p50", 0.50), ("p95", 0.95), ("p99", 0.99)] {
            self.push(payload, format!("latency {name}, POST → receipt at {rate}/s"), at(q), "ms");
        }
        Ok(())
    }

    /// A fresh dispatcher holding `in_flight` deliveries (100 subscriptions) to a receiver that
    /// holds each request `slow_ms`: with its defaults, and sized to have every one of them
    /// open as an HTTP request at once.
    async fn in_flight_memory(&mut self) -> anyhow::Result<InFlight> {
        let subs = 100.min(self.args.in_flight);
        let group = self.subscribe(subs).await?;
        let per_sub = (self.args.in_flight / subs).max(1);
        let deliveries = per_sub * subs;
        let everything = deliveries.to_string();
        let per_sub_text = per_sub.to_string();
        let setups: [(String, Vec<&str>); 2] = [
            ("defaults".into(), vec![]),
            (
                format!("--concurrency {deliveries} --subscription-concurrency {per_sub}"),
                vec!["--concurrency", &everything, "--subscription-concurrency", &per_sub_text],
            ),
        ];
        let mut runs = Vec::new();
        for (name, flags) in setups {
            let dispatcher = Proc::dispatcher(&self.nats.url(), &flags)?;
            self.warm_up(&group).await?;
            self.sink.set_delay(Duration::from_millis(self.args.slow_ms));
            self.sink.take_max_in_flight();
            let target = self.sink.delivered(group.paths.clone()) + deliveries as u64;
            self.publish_events(&group, per_sub, 256).await?;
            self.sink.wait_delivered(group.paths.clone(), target, Duration::from_secs(60)).await?;
            runs.push((name, self.sink.take_max_in_flight(), dispatcher.memory().peak_kib));
            self.sink.set_delay(Duration::ZERO);
            dispatcher.stop().await;
        }
        Ok(InFlight { deliveries, slow_ms: self.args.slow_ms, runs })
    }

    fn report(
        &self,
        memory: &[(&str, u64)],
        in_flight: &InFlight,
        gateway_idle: procs::Memory,
        [deferrals, retries, inline, fanned_out]: [f64; 4],
    ) -> anyhow::Result<()> {
        println!(
            "{:>7}  {:<60} {:>12} {:<13} {:>6}  {:<16} {:>8}",
            "payload", "measurement", "value", "unit", "ratio", "of", "of relay"
        );
        for r in &self.rows {
            let (ratio, of) = r.ratio.map(|(x, of)| (format!("{x:.2}"), of)).unwrap_or(("".into(), ""));
            let relay = r.of_relay.map(|x| format!("{x:.2}")).unwrap_or_default();
            let value = if r.unit == "ms" || r.unit.starts_with("µs") {
                format!("{:.1}", r.value)
            } else {
                format!("{:.0}", r.value)
            };
            println!("{:>6}B  {:<60} {value:>12} {:<13} {ratio:>6}  {of:<16} {relay:>8}", r.payload, r.name, r.unit);
        }
        let mib = |kib: u64| kib as f64 / 1024.0;
        for (name, kib) in memory {
            println!("{:>7}  {name:<60} {:>12.1} MiB", "", mib(*kib));
        }
        for (flags, held, peak) in &in_flight.runs {
            println!(
                "{:>7}  dispatcher peak RSS, {} deliveries to a {} ms receiver ({flags}): {:.1} MiB, {held} requests open at most",
                "",
                in_flight.deliveries,
                in_flight.slow_ms,
                mib(*peak)
            );
        }
        println!(
            "bad signatures at the receiver: {}; deferrals: {deferrals}, retries: {retries} (end-to-end and latency runs)",
            self.sink.bad_signatures()
        );
        println!("first attempts made inline by fan-out: {inline} of {fanned_out} deliveries (the rest stored first)");
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "payload_bytes": r.payload, "measurement": r.name, "value": r.value, "unit": r.unit,
                    "ratio": r.ratio.map(|(x, _)| x), "ratio_of": r.ratio.map(|(_, of)| of),
                    "ratio_to_raw_relay": r.of_relay,
                })
            })
            .collect();
        let report = json!({
            "machine": machine(),
            "config": {
                "events": self.args.events, "payloads": self.args.payloads, "concurrency": self.args.concurrency,
                "batch_clients": self.args.batch_clients, "runs": self.args.runs, "smoke": self.args.smoke,
            },
            "results": rows,
            "memory_kib": memory.iter().map(|(n, k)| json!({"measurement": n, "kib": k})).collect::<Vec<_>>(),
            "gateway_idle_rss_kib": gateway_idle.rss_kib,
            "in_flight": in_flight.runs.iter().map(|(flags, held, peak)| json!({
                "dispatcher_flags": flags, "deliveries": in_flight.deliveries, "receiver_delay_ms": in_flight.slow_ms,
                "max_requests_open": held, "dispatcher_peak_rss_kib": peak,
            })).collect::<Vec<_>>(),
            "bad_signatures": self.sink.bad_signatures(),
            "deferrals": deferrals,
            "retries": retries,
            "inline_first_attempts": inline,
            "fanned_out_deliveries": fanned_out,
        });
        if let Some(dir) = self.args.json.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.args.json, serde_json::to_vec_pretty(&report)?)?;
        println!("written to {}", self.args.json.display());
        Ok(())
    }
}

/// Publishes `messages` (built beforehand, so only publishing is timed) with up to 4,096
/// PubAcks outstanding; returns messages/s.
async fn pipelined(js: &jetstream::Context, messages: Vec<(String, PublishMessage)>) -> anyhow::Result<f64> {
    const WINDOW: usize = 4096;
    let n = messages.len();
    let started = Instant::now();
    let mut acks: VecDeque<PublishAckFuture> = VecDeque::with_capacity(WINDOW);
    for (subject, publish) in messages {
        if acks.len() == WINDOW {
            acks.pop_front().expect("full").into_future().await?;
        }
        acks.push_back(js.send_publish(subject, publish).await?);
    }
    for ack in acks {
        ack.into_future().await?;
    }
    Ok(per_sec(n, started.elapsed()))
}

/// The least a durable relay from JetStream to HTTP can do: publish `messages`, pull them with
/// a durable consumer, POST each to the receiver (`clients` at once) and ack it after the 2xx.
/// Returns messages/s from the first publish to the last ack sent.
async fn relay(
    js: &jetstream::Context,
    http: &reqwest::Client,
    url: &str,
    clients: usize,
    messages: Vec<(String, PublishMessage)>,
) -> anyhow::Result<f64> {
    let n = messages.len();
    let stream = js.get_stream("BENCH_RELAY").await?;
    let _ = stream.delete_consumer("relay").await;
    stream.purge().await?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("relay".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let consume = async {
        let pulled = consumer.stream().max_messages_per_batch(256).messages().await?;
        pulled
            .take(n)
            .for_each_concurrent(clients, |msg| async move {
                let Ok(msg) = msg else { return };
                let sent = http.post(url).body(msg.payload.clone()).send().await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    let _ = msg.ack().await;
                }
            })
            .await;
        anyhow::Ok(())
    };
    let (published, consumed) = tokio::join!(pipelined(js, messages), consume);
    published?;
    consumed?;
    Ok(per_sec(n, started.elapsed()))
}

/// An event as a service publishes it straight to NATS: JSON (recognised by its opening brace,
/// so no Content-Type header), its id as the dedup id.
fn json_event(id: &str, event: &Value) -> PublishMessage {
    PublishMessage::build().payload(serde_json::to_vec(event).expect("JSON").into()).message_id(id)
}

/// POSTs `bodies` (carrying `events` events in all) with `clients` requests at once; every one
/// must be answered 202. Returns events/s.
async fn post_all(
    http: &reqwest::Client,
    url: &str,
    clients: usize,
    bodies: Vec<String>,
    events: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let refused = futures::stream::iter(bodies)
        .map(|body| post_json(http, url, body))
        .buffer_unordered(clients)
        .filter(|status| std::future::ready(*status != 202))
        .count()
        .await;
    anyhow::ensure!(refused == 0, "{refused} requests were not accepted");
    Ok(per_sec(events, started.elapsed()))
}

/// POSTs a JSON body with the publish token; the status (0 when no answer came).
async fn post_json(http: &reqwest::Client, url: &str, body: String) -> u16 {
    let resp = http
        .post(url)
        .bearer_auth(herald_tests::PUBLISH_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    resp.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// What the figures were measured on.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']));
    let memory = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory": memory.lines().next(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}
