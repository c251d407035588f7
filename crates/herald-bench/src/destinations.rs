//! Broker destinations: events delivered by one dispatcher to RabbitMQ (AMQP), a second
//! nats-server (a JetStream stream) and Redis (a stream), each against that broker's raw publish
//! rate with the same client code (pipelined, as many in flight as a dispatcher's default
//! concurrency, and as many as one subscription's default), in one sitting on this machine.
//! Herald's rate is measured twice per run: end to end (the events published while the
//! dispatcher delivers them, so that storing them shares the machine) and from a stored
//! backlog (published while the dispatcher is held, then delivered), which is delivery alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use herald_core::proto;
use herald_dispatcher::destinations::Raw;
use serde_json::json;

use crate::load::pipelined;
use crate::procs::{self, Proc};
use crate::{Bench, Group, median, per_sec};

/// What a destination's rate is a ratio of.
const RAW_BROKER: &str = "raw publish, 64 in flight";

/// Writes in flight at once in the raw loops: the dispatcher's default `HERALD_CONCURRENCY`,
/// and what one subscription may have in flight by default (`HERALD_SUBSCRIPTION_CONCURRENCY`):
/// a broker that confirms in batches (RabbitMQ syncs to disk first) is bound by it.
const RAW_IN_FLIGHT: [usize; 2] = [256, 64];

/// Confirmed writes to brokers, as the dispatcher's metrics count them.
const CONFIRMED: &str = r#"herald_delivery_attempts_total{outcome="delivered",status_class="confirmed"}"#;

impl Bench {
    pub(crate) async fn destinations(&mut self, payload: usize) -> anyhow::Result<()> {
        let n = self.args.destination_events;
        let (rabbit, redis) =
            tokio::task::block_in_place(|| (herald_harness::Rabbit::start(), herald_harness::Redis::start()));
        rabbit.declare("", "bench", "");
        let broker = herald_harness::NatsServer::start();
        let broker_js = async_nats::jetstream::new(broker.client().await);
        let config = async_nats::jetstream::stream::Config {
            name: "BENCH_DEST".into(),
            subjects: vec!["dest.>".into()],
            ..Default::default()
        };
        broker_js.create_stream(config).await?;
        let kinds = [
            ("amqp", json!({"type": "amqp", "url": rabbit.url(), "routing_key": "bench"})),
            ("nats", json!({"type": "nats", "url": broker.url(), "subject": "dest.{event_type}"})),
            ("redis", json!({"type": "redis", "url": redis.url(), "stream": "bench", "max_len": 100_000})),
        ];
        let body = serde_json::to_vec(&json!({"id": "evt_raw", "type": "bench.raw", "data": Self::data(payload)}))?;
        let dispatcher = Proc::dispatcher(&self.nats.url(), &[])?;
        let broker_pid = broker.pid().unwrap_or(0);
        let groups = [rabbit.process_group().unwrap_or(0), broker_pid, redis.process_group().unwrap_or(0)];
        // Herald's own nats-server, which stores the events, hands them out and keeps the
        // attempt records: its CPU per delivery is part of what a delivery costs the machine.
        let herald_nats = self.nats.pid().unwrap_or(0).to_string();
        for ((kind, destination), group) in kinds.into_iter().zip(groups) {
            if !self.args.destination_kinds.iter().any(|k| k == kind) {
                continue;
            }
            // The broker's CPU so far: a group of processes (RabbitMQ, Redis) or nats-server.
            let broker_cpu = || {
                if kind == "nats" { procs::cpu_seconds(&group.to_string()) } else { procs::group_cpu_seconds(group) }
            };
            let given: serde_json::Map<String, serde_json::Value> =
                destination.as_object().cloned().unwrap_or_default();
            let text = |k: &str| given.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            let spec = proto::Destination {
                r#type: kind.into(),
                url: text("url"),
                exchange: text("exchange"),
                routing_key: text("routing_key"),
                subject: text("subject").replace("{event_type}", "bench.raw"),
                stream: text("stream"),
                max_len: given.get("max_len").and_then(|v| v.as_u64()).unwrap_or(0),
                ..Default::default()
            };
            let raw = Arc::new(Raw::new(spec, Duration::from_secs(15)).map_err(anyhow::Error::msg)?);

            let event_type = format!("bench.dest.{kind}");
            let sub = json!({"destination": destination, "event_types": [event_type], "secret": self.secret});
            let resp = self.post_admin("/v1/subscriptions", &sub).await?;
            anyhow::ensure!(resp.status() == 201, "creating a {kind} subscription: {}", resp.text().await?);
            let group = Group { event_type, paths: 0..0 };
            // A warm-up event proves the dispatcher has the subscription and is connected.
            let mut confirmed = dispatcher.counter(&self.http, CONFIRMED).await;
            self.publish_events(&group, 1, payload).await?;
            confirmed = self.wait_confirmed(&dispatcher, confirmed + 1.0, Duration::from_secs(60)).await?;

            let paths_before = self.paths(&dispatcher).await;
            let (mut raw_rates, mut rates, mut ratios, mut cpu) =
                ([Vec::new(), Vec::new()], Vec::new(), Vec::new(), Vec::new());
            // Per write: the broker's CPU in the raw loop (64 in flight) and under Herald, and
            // how busy the whole machine was under Herald (cores).
            let (mut raw_broker, mut herald_broker, mut busy) = (Vec::new(), Vec::new(), Vec::new());
            // Per write or delivery, of a stored backlog: the raw loop's client (this process),
            // and under Herald the broker, Herald's nats-server and the whole machine.
            let (mut raw_client, mut backlog_broker, mut backlog_nats, mut backlog_busy) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut backlog_rates, mut backlog_ratios, mut backlog_cpu) = (Vec::new(), Vec::new(), Vec::new());
            for run in 0..self.args.runs {
                // Each phase starts with an empty queue: a queue that grows costs RabbitMQ more.
                let empty = || {
                    if kind == "amqp" {
                        rabbit.purge("bench");
                    }
                };
                empty();
                let wide = raw_publish(&raw, &format!("raw-{run}"), RAW_IN_FLIGHT[0], n, &body).await?;
                empty();
                let (before, client_before) = (broker_cpu(), procs::cpu_seconds("self"));
                let raw_rate = raw_publish(&raw, &format!("raw64-{run}"), RAW_IN_FLIGHT[1], n, &body).await?;
                raw_broker.push((broker_cpu() - before) * 1e6 / n as f64);
                raw_client.push((procs::cpu_seconds("self") - client_before) * 1e6 / n as f64);
                raw_rates[0].push(wide);
                empty();
                let (broker_before, busy_before) = (broker_cpu(), procs::machine_busy_seconds());
                let messages = self.events_for(&group, n, payload);
                let (started, cpu_before) = (Instant::now(), dispatcher.cpu_seconds());
                pipelined(&self.js, messages).await?;
                confirmed = self.wait_confirmed(&dispatcher, confirmed + n as f64, Duration::from_secs(120)).await?;
                let took = started.elapsed();
                let rate = per_sec(n, took);
                cpu.push((dispatcher.cpu_seconds() - cpu_before) * 1e6 / n as f64);
                herald_broker.push((broker_cpu() - broker_before) * 1e6 / n as f64);
                busy.push((procs::machine_busy_seconds() - busy_before) / took.as_secs_f64());
                raw_rates[1].push(raw_rate);
                rates.push(rate);
                ratios.push(rate / raw_rate);
                use herald_core::nats::{ATTEMPTS_STREAM, DELIVERIES_STREAM, EVENTS_STREAM};
                self.settle(&[EVENTS_STREAM, DELIVERIES_STREAM, ATTEMPTS_STREAM]).await?;

                // The same number of events as a backlog: stored while the dispatcher is held
                // (SIGSTOP), then delivered. The rate of delivery alone, as the raw loop's is of
                // writes alone, where the phase above also stores the events as they come.
                empty();
                dispatcher.hold(true)?;
                let messages = self.events_for(&group, n, payload);
                let stored = pipelined(&self.js, messages).await;
                let (started, cpu_before) = (Instant::now(), dispatcher.cpu_seconds());
                let (broker_before, nats_before, busy_before) =
                    (broker_cpu(), procs::cpu_seconds(&herald_nats), procs::machine_busy_seconds());
                dispatcher.hold(false)?;
                stored?;
                confirmed = self.wait_confirmed(&dispatcher, confirmed + n as f64, Duration::from_secs(120)).await?;
                let took = started.elapsed();
                let rate = per_sec(n, took);
                backlog_cpu.push((dispatcher.cpu_seconds() - cpu_before) * 1e6 / n as f64);
                backlog_broker.push((broker_cpu() - broker_before) * 1e6 / n as f64);
                backlog_nats.push((procs::cpu_seconds(&herald_nats) - nats_before) * 1e6 / n as f64);
                backlog_busy.push((procs::machine_busy_seconds() - busy_before) * 1e6 / n as f64);
                backlog_rates.push(rate);
                backlog_ratios.push(rate / raw_rate);
                // Every run, for the spread and the worst (the rows below are medians).
                let last = |v: &Vec<f64>| v.last().copied().unwrap_or_default();
                println!(
                    "{kind} run {run}: raw (64 in flight) {raw_rate:.0} writes/s ({:.1} µs client, {:.1} µs broker CPU); end to end {:.0} deliveries/s ({:.2} of raw, {:.1} µs dispatcher CPU); backlog {rate:.0} ({:.2}; CPU {:.1} µs dispatcher, {:.1} µs broker, {:.1} µs Herald's nats-server, {:.1} µs the machine)",
                    last(&raw_client),
                    last(&raw_broker),
                    last(&rates),
                    last(&ratios),
                    last(&cpu),
                    rate / raw_rate,
                    last(&backlog_cpu),
                    last(&backlog_broker),
                    last(&backlog_nats),
                    last(&backlog_busy),
                );
                self.settle(&[EVENTS_STREAM, DELIVERIES_STREAM, ATTEMPTS_STREAM]).await?;
            }
            let after = self.paths(&dispatcher).await;
            let paths: Vec<f64> = after.iter().zip(paths_before).map(|(a, b)| a - b).collect();
            println!(
                "{kind} destination: {} first attempts inline, {} stored first, {} deferred",
                paths[0], paths[1], paths[2]
            );
            let [wide, narrow] = raw_rates.map(median);
            self.push(
                payload,
                format!("{kind} raw publish (same client, {} in flight)", RAW_IN_FLIGHT[0]),
                wide,
                "writes/s",
            );
            self.push(
                payload,
                format!("{kind} raw publish (same client, {} in flight)", RAW_IN_FLIGHT[1]),
                narrow,
                "writes/s",
            );
            let row = format!("{kind} destination, 1 dispatcher");
            self.push_paired(payload, row, (median(rates), median(ratios)), "deliveries/s", RAW_BROKER);
            self.push(payload, format!("  dispatcher CPU, {kind} destination"), median(cpu), "µs/delivery");
            let row = format!("{kind} destination, 1 dispatcher, a stored backlog");
            self.push_paired(payload, row, (median(backlog_rates), median(backlog_ratios)), "deliveries/s", RAW_BROKER);
            self.push(
                payload,
                format!("  dispatcher CPU, {kind} destination, backlog"),
                median(backlog_cpu),
                "µs/delivery",
            );
            self.push(
                payload,
                format!("  {kind} broker CPU, raw publish (64 in flight)"),
                median(raw_broker),
                "µs/write",
            );
            self.push(payload, format!("  {kind} broker CPU, under Herald"), median(herald_broker), "µs/write");
            self.push(
                payload,
                format!("  raw loop's client CPU, {kind} (64 in flight)"),
                median(raw_client),
                "µs/write",
            );
            // Where a delivery of the backlog goes, beside the dispatcher's row above.
            self.push(payload, format!("  {kind} broker CPU, backlog"), median(backlog_broker), "µs/delivery");
            self.push(
                payload,
                format!("  Herald's nats-server CPU, {kind} backlog"),
                median(backlog_nats),
                "µs/delivery",
            );
            self.push(payload, format!("  the machine's CPU, {kind} backlog"), median(backlog_busy), "µs/delivery");
            self.push(payload, format!("  machine busy under Herald, {kind}"), median(busy), "cores");
        }
        dispatcher.stop().await;
        drop((rabbit, redis, broker));
        Ok(())
    }

    /// The dispatcher's deliveries so far: first attempted inline by fan-out, stored first, and
    /// deferred (a subscription at its in-flight limit defers the rest through the deliveries
    /// stream).
    async fn paths(&self, dispatcher: &Proc) -> [f64; 3] {
        let mut counts = [0.0; 3];
        for (count, name) in counts.iter_mut().zip([
            r#"herald_fanout_deliveries_total{path="inline"}"#,
            r#"herald_fanout_deliveries_total{path="stored"}"#,
            "herald_deferrals_total",
        ]) {
            *count = dispatcher.counter(&self.http, name).await;
        }
        counts
    }

    /// Waits until the dispatcher counted `target` confirmed writes; returns the count.
    async fn wait_confirmed(&self, dispatcher: &Proc, target: f64, within: Duration) -> anyhow::Result<f64> {
        let deadline = Instant::now() + within;
        loop {
            let now = dispatcher.counter(&self.http, CONFIRMED).await;
            if now >= target {
                return Ok(now);
            }
            anyhow::ensure!(Instant::now() < deadline, "{now} of {target} broker writes confirmed in {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `n` writes of `body` through `raw`, `in_flight` at a time; writes per second.
async fn raw_publish(raw: &Arc<Raw>, prefix: &str, in_flight: usize, n: usize, body: &[u8]) -> anyhow::Result<f64> {
    // The headers a delivery carries (Standard Webhooks'), so that the raw loop writes messages
    // of the same shape as Herald's: RabbitMQ, Redis and NATS each spend per header.
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in [
        ("content-type", "application/json"),
        ("user-agent", "Herald/raw"),
        ("webhook-timestamp", "1765000000"),
        ("webhook-id", "evt_01KBENCHRAWWRITE0000000000"),
        ("webhook-signature", "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="),
    ] {
        headers.insert(name, reqwest::header::HeaderValue::from_static(value));
    }
    let headers = &headers;
    let started = Instant::now();
    let mut writes = futures::stream::iter(0..n)
        .map(|i| {
            let raw = raw.clone();
            async move { raw.send(&format!("{prefix}-{i}"), "bench.raw", headers, body).await }
        })
        .buffer_unordered(in_flight);
    while let Some(written) = writes.next().await {
        written.map_err(|e| anyhow::anyhow!("raw write: {e}"))?;
    }
    Ok(per_sec(n, started.elapsed()))
}

/// Rounds of each run of the transformation rows, each of `--events` ÷ this many deliveries per
/// subscription.
const TRANSFORMATION_ROUNDS: usize = 4;

impl Bench {
    /// What a trivial transformation costs: one dispatcher delivering a backlog to a
    /// subscription with `function handler(webhook) { return webhook; }` and to one without,
    /// alternated in rounds within each run; deliveries per second and dispatcher CPU per delivery
    /// of each.
    /// A third subscription's script changes the payload (`webhook.payload.seen = true`), which
    /// takes the engine's whole path: the payload parsed, changed and written back.
    pub(crate) async fn transformation_cost(&mut self, payload: usize) -> anyhow::Result<()> {
        let plain = self.subscribe(1).await?;
        let script = "function handler(webhook) { return webhook; }";
        let shaped = self.subscribe_with(1, json!({"transformation": script})).await?;
        let script = "function handler(webhook) { webhook.payload.seen = true; return webhook; }";
        let edited = self.subscribe_with(1, json!({"transformation": script})).await?;
        let dispatcher = Proc::dispatcher(&self.nats.url(), &[])?;
        let groups = [&plain, &shaped, &edited];
        for group in groups {
            self.warm_up(group).await?;
        }
        // Each run alternates the three in rounds, in a rotating order, and adds up each one's
        // time and CPU: a phase of a third of a second on its own was as often hit by one of the
        // machine's jumps of speed as not, which put a single run's ratio off by up to a third
        // either way although the medians agreed.
        let n = (self.args.events / TRANSFORMATION_ROUNDS).max(10);
        let (mut rates, mut cpu) = ([Vec::new(), Vec::new(), Vec::new()], [Vec::new(), Vec::new(), Vec::new()]);
        for run in 0..self.args.runs {
            let (mut took, mut spent) = ([Duration::ZERO; 3], [0.0f64; 3]);
            for round in 0..TRANSFORMATION_ROUNDS {
                for k in 0..groups.len() {
                    let i = (k + round) % groups.len();
                    let group = groups[i];
                    let target = self.sink.delivered(group.paths.clone()) + n as u64;
                    let messages = self.events_for(group, n, payload);
                    let (started, cpu_before) = (Instant::now(), dispatcher.cpu_seconds());
                    pipelined(&self.js, messages).await?;
                    let done = self.sink.wait_delivered(group.paths.clone(), target, Duration::from_secs(120)).await?;
                    took[i] += done - started;
                    spent[i] += dispatcher.cpu_seconds() - cpu_before;
                    use herald_core::nats::{ATTEMPTS_STREAM, DELIVERIES_STREAM, EVENTS_STREAM};
                    self.settle(&[EVENTS_STREAM, DELIVERIES_STREAM, ATTEMPTS_STREAM]).await?;
                }
            }
            let each = n * TRANSFORMATION_ROUNDS;
            for i in 0..groups.len() {
                rates[i].push(per_sec(each, took[i]));
                cpu[i].push(spent[i] * 1e6 / each as f64);
            }
            // Every run, for the spread and the worst (the rows below are medians).
            let last = |v: &Vec<f64>| v.last().copied().unwrap_or_default();
            println!(
                "transformations run {run}: plain {:.0} deliveries/s ({:.1} µs); trivial {:.0} ({:.2} of plain, {:.1} µs); changing the payload {:.0} ({:.2}, {:.1} µs)",
                last(&rates[0]),
                last(&cpu[0]),
                last(&rates[1]),
                last(&rates[1]) / last(&rates[0]),
                last(&cpu[1]),
                last(&rates[2]),
                last(&rates[2]) / last(&rates[0]),
                last(&cpu[2]),
            );
        }
        let [plain_rate, shaped_rate, edited_rate] = rates.map(median);
        let [plain_cpu, shaped_cpu, edited_cpu] = cpu.map(median);
        self.push(payload, "end to end, no transformation (same sitting)", plain_rate, "deliveries/s");
        self.push(payload, "end to end, trivial transformation", shaped_rate, "deliveries/s");
        self.push(payload, "  transformed ÷ plain, deliveries/s", shaped_rate / plain_rate, "×");
        self.push(payload, "  dispatcher CPU, no transformation", plain_cpu, "µs/delivery");
        self.push(payload, "  dispatcher CPU, trivial transformation", shaped_cpu, "µs/delivery");
        self.push(payload, "end to end, a transformation changing the payload", edited_rate, "deliveries/s");
        self.push(payload, "  changing ÷ plain, deliveries/s", edited_rate / plain_rate, "×");
        self.push(payload, "  dispatcher CPU, changing the payload", edited_cpu, "µs/delivery");
        dispatcher.stop().await;
        Ok(())
    }
}
