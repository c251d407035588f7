//! Statistics at volume: `--stats-deliveries` deliveries made (ten subscriptions of one event
//! type, so a tenth as many events), then a gateway started afresh, timed until it is warm
//! (`warming: false`), its memory read, and its figures compared with the running gateway's.
//! Targets (issue 28): warm within 5 s and within 64 MiB at 1,000,000 deliveries.
//!
//! Then, on a server of its own, a day of `--stats-day-subscriptions` subscriptions each
//! active every minute, stored as dispatchers and gateways store it (seals for the hours before
//! the last two, deltas after): what a gateway started afresh takes to read a busy day back.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

use crate::Bench;
use crate::procs::Proc;

/// Events published at once (each a pipelined batch).
const BATCH: usize = 50_000;

impl Bench {
    pub(crate) async fn statistics(&mut self, payload: usize) -> anyhow::Result<()> {
        let group = self.subscribe(10).await?;
        let events = self.args.stats_deliveries.div_ceil(group.paths.len());
        let deliveries = (events * group.paths.len()) as u64;
        let dispatcher = Proc::dispatcher(&self.nats.url(), &[])?;
        dispatcher.wait_ready().await?;
        self.warm_up(&group).await?;
        let target = self.sink.delivered(group.paths.clone()) + deliveries;
        let started = Instant::now();
        let mut left = events;
        while left > 0 {
            let n = left.min(BATCH);
            self.publish_events(&group, n, payload).await?;
            left -= n;
        }
        let patience = Duration::from_secs(60 + deliveries / 2_000);
        self.sink.wait_delivered(group.paths.clone(), target, patience).await.context("statistics: deliveries")?;
        let made_in = started.elapsed();
        // Stopping flushes what the dispatcher counted last.
        dispatcher.stop().await;

        // The running gateway follows the deltas; wait until it has the last flush.
        let running = self.gateway_url.clone();
        let before = wait_totals(&self.http, &running, |t| t["delivered"].as_u64() >= Some(deliveries)).await?;

        let (gateway, after, warm) = fresh_gateway(&self.http, &self.nats.url()).await?;
        let memory = gateway.memory();
        let equal = after["totals"] == before["totals"];
        println!(
            "statistics: {deliveries} deliveries made in {:.1} s; a new gateway warm in {} ms, RSS {:.1} MiB; totals {} / {}",
            made_in.as_secs_f64(),
            warm.as_millis(),
            memory.rss_kib as f64 / 1024.0,
            after["totals"],
            before["totals"]
        );
        let window = before["totals"]["attempts"].as_u64().unwrap_or(0);
        self.push(
            payload,
            format!("statistics: attempts in the window ({deliveries} just made)"),
            window as f64,
            "attempts",
        );
        self.push(payload, "  a gateway started afresh: warm after (target 5 s)", warm.as_secs_f64() * 1e3, "ms");
        self.push(payload, "  its RSS once warm (target 64 MiB)", memory.rss_kib as f64 / 1024.0, "MiB");
        self.push(payload, "  its figures equal the running gateway's (1 = yes)", f64::from(u8::from(equal)), "");
        gateway.stop().await;
        self.statistics_of_a_day(payload).await
    }

    async fn statistics_of_a_day(&mut self, payload: usize) -> anyhow::Result<()> {
        use herald_core::{nats, proto};
        use prost::Message as _;

        let subs = self.args.stats_day_subscriptions;
        let server = herald_harness::NatsServer::start();
        // A gateway creates the streams.
        Proc::gateway(&server.url(), herald_harness::free_port()).await?.stop().await;
        let js = async_nats::jetstream::new(server.client().await);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let this_hour = now - now.rem_euclid(3600);
        let entries = |at: i64, attempts: u64| -> Vec<proto::StatsEntry> {
            (0..subs)
                .map(|i| proto::StatsEntry {
                    at,
                    subscription_id: format!("sub_{i:020}"),
                    tenant: format!("t{}", i % 1000),
                    attempts,
                    delivered: attempts,
                    latency_ms_total: 20 * attempts,
                    ..Default::default()
                })
                .collect()
        };
        let mut messages = Vec::new();
        let mut expected = 0u64;
        let mut stored_entries = 0usize;
        for ago in 3..24 {
            let hour = this_hour - ago * 3600;
            let all = entries(hour, 60);
            let chunks: Vec<_> = all.chunks(4_000).map(<[_]>::to_vec).collect();
            let count = chunks.len() as u32;
            for (i, chunk) in chunks.into_iter().enumerate() {
                stored_entries += chunk.len();
                let seal = proto::StatsSeal { hour, chunk: i as u32, chunks: count, through: 0, entries: chunk };
                let publish =
                    async_nats::jetstream::message::PublishMessage::build().payload(seal.encode_to_vec().into());
                messages.push((nats::stats_hours_subject(hour, i as u32), publish));
            }
            expected += 60 * subs as u64;
        }
        let mut minute = this_hour - 2 * 3600;
        while minute <= now {
            for chunk in entries(minute, 1).chunks(4_000) {
                stored_entries += chunk.len();
                let delta = proto::StatsDelta { replica: "bench".into(), entries: chunk.to_vec() };
                let publish =
                    async_nats::jetstream::message::PublishMessage::build().payload(delta.encode_to_vec().into());
                messages.push((nats::stats_minutes_subject(minute - minute.rem_euclid(3600)), publish));
            }
            expected += subs as u64;
            minute += 60;
        }
        crate::load::pipelined(&js, messages).await?;

        let (gateway, after, warm) = fresh_gateway(&self.http, &server.url()).await?;
        let memory = gateway.memory();
        let read = after["totals"]["attempts"].as_u64().unwrap_or(0);
        println!(
            "statistics of a day: {subs} subscriptions active every minute, {stored_entries} entries stored; warm in {} ms, RSS {:.1} MiB; {read} of {expected} attempts read back",
            warm.as_millis(),
            memory.rss_kib as f64 / 1024.0,
        );
        let setup = format!("statistics: a day of {subs} subscriptions active every minute ({stored_entries} entries)");
        self.push(payload, setup, read as f64 / expected as f64, "read back");
        self.push(payload, "  a gateway started afresh: warm after", warm.as_secs_f64() * 1e3, "ms");
        self.push(payload, "  its RSS once warm", memory.rss_kib as f64 / 1024.0, "MiB");
        gateway.stop().await;
        Ok(())
    }
}

/// A gateway started afresh on `nats_url`, its overall statistics once it is warm, and how long
/// that took from its start.
async fn fresh_gateway(http: &reqwest::Client, nats_url: &str) -> anyhow::Result<(Proc, Value, Duration)> {
    let port = herald_harness::free_port();
    let spawned = Instant::now();
    let gateway = Proc::gateway(nats_url, port).await?;
    let base = format!("http://127.0.0.1:{port}");
    loop {
        let body = stats(http, &base).await?;
        if body["warming"] == false {
            return Ok((gateway, body, spawned.elapsed()));
        }
        anyhow::ensure!(spawned.elapsed() < Duration::from_secs(300), "statistics: the new gateway stayed warming");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stats(http: &reqwest::Client, base: &str) -> anyhow::Result<Value> {
    let resp = http.get(format!("{base}/v1/stats")).bearer_auth(herald_harness::ADMIN_TOKEN).send().await?;
    Ok(serde_json::from_slice(&resp.bytes().await?)?)
}

/// Polls the overall statistics until `done(totals)`; fails after a minute.
async fn wait_totals(http: &reqwest::Client, base: &str, done: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = stats(http, base).await?;
        if done(&body["totals"]) {
            return Ok(body);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "statistics: the running gateway's figures stopped at {}",
            body["totals"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
