//! End to end (publish → verified receipt) with 1, 10 and 100 subscriptions and 1 and 3
//! dispatchers, against the raw POST loop and the raw relay, with the CPU each process spent per
//! delivery; and latency from `POST /v1/events` to receipt at a fixed rate.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::load::{pipelined, post_json};
use crate::procs::{self, Proc};
use crate::{Bench, Group, RAW_POST, median, per_sec};

impl Bench {
    pub(crate) async fn end_to_end(
        &mut self,
        group: &Group,
        payload: usize,
        dispatchers: &[Proc],
    ) -> anyhow::Result<()> {
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
    pub(crate) async fn latency(&mut self, group: &Group, payload: usize) -> anyhow::Result<()> {
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
}
