//! Statistics at volume: `--stats-deliveries` deliveries made (ten subscriptions of one event
//! type, so a tenth as many events), then a gateway started afresh, timed until it is warm
//! (`warming: false`), its memory read, and its figures compared with the running gateway's.
//! Targets (issue 28): warm within 5 s and within 64 MiB at 1,000,000 deliveries.

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

        let port = herald_harness::free_port();
        let spawned = Instant::now();
        let gateway = Proc::gateway(&self.nats.url(), port).await?;
        let fresh = format!("http://127.0.0.1:{port}");
        let after = loop {
            let body = stats(&self.http, &fresh).await?;
            if body["warming"] == false {
                break body;
            }
            anyhow::ensure!(spawned.elapsed() < Duration::from_secs(300), "statistics: the new gateway stayed warming");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let warm = spawned.elapsed();
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
        Ok(())
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
