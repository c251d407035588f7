//! The regression guard (`--baseline DIR`): this build's gateway and dispatcher against another
//! build's (a directory holding its `herald-gateway` and `herald-dispatcher`, e.g. built from a
//! git ref by `scripts/build-ref.sh REF`), alternated `--baseline-runs` times in one sitting on
//! the same nats-server and receiver, so that a loss shows when it happens rather than sittings
//! later. Rows: single-event HTTP ingest with the gateway's and nats-server's CPU per event, end
//! to end with one subscription and one dispatcher, and the dispatcher's CPU per delivery, for
//! each build and as this build ÷ the baseline
//! (medians). `--smoke` runs it against this build itself, so the row cannot rot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::load::{pipelined, post_all};
use crate::procs::{self, Proc};
use crate::{Bench, Group, median, per_sec};

/// One build's figures over the alternations.
#[derive(Default)]
struct Side {
    single: Vec<f64>,
    gateway_cpu: Vec<f64>,
    nats_cpu: Vec<f64>,
    end_to_end: Vec<f64>,
    dispatcher_cpu: Vec<f64>,
}

impl Bench {
    pub(crate) async fn regression(&mut self, payload: usize, baseline: &Path) -> anyhow::Result<()> {
        let here = procs::binaries_dir()?;
        let builds: [PathBuf; 2] = [here, baseline.to_owned()];
        let group = self.subscribe(1).await?;
        let events = self.args.events;
        let mut sides = [Side::default(), Side::default()];
        for _ in 0..self.args.baseline_runs.max(1) {
            for (side, dir) in sides.iter_mut().zip(&builds) {
                self.regression_run(side, dir, &group, events, payload).await?;
            }
        }
        let [this, base] = sides;
        let rows = [
            ("HTTP ingest, one event per request", this.single, base.single, "events/s"),
            ("gateway CPU per event ingested", this.gateway_cpu, base.gateway_cpu, "µs/event"),
            ("nats-server CPU per event ingested", this.nats_cpu, base.nats_cpu, "µs/event"),
            ("end to end, 1 subscription, 1 dispatcher", this.end_to_end, base.end_to_end, "deliveries/s"),
            ("dispatcher CPU per delivery", this.dispatcher_cpu, base.dispatcher_cpu, "µs/delivery"),
        ];
        for (name, this, base, unit) in rows {
            let (this, base) = (median(this), median(base));
            self.push(payload, format!("regression: {name}, this build"), this, unit);
            self.push(payload, format!("regression: {name}, baseline"), base, unit);
            self.push(payload, format!("regression: {name}, this build ÷ baseline"), this / base, "×");
        }
        Ok(())
    }

    /// One alternation of one build: its gateway takes single events over HTTP, then its
    /// dispatcher drains `events` published to NATS.
    async fn regression_run(
        &mut self,
        side: &mut Side,
        dir: &Path,
        group: &Group,
        events: usize,
        payload: usize,
    ) -> anyhow::Result<()> {
        let port = herald_harness::free_port();
        let gateway = Proc::gateway_from(&self.nats.url(), port, dir).await?;
        let data = Self::data(payload);
        let bodies: Vec<String> = (0..events)
            .map(|_| json!({"id": self.next_id("g"), "type": "bench.regression.single", "data": data}).to_string())
            .collect();
        let url = format!("http://127.0.0.1:{port}/v1/events");
        let nats_pid = self.nats.pid().unwrap_or(0).to_string();
        let (gateway_before, nats_before) = (gateway.cpu_seconds(), procs::cpu_seconds(&nats_pid));
        side.single.push(post_all(&url, self.args.concurrency, bodies, events).await?);
        side.gateway_cpu.push((gateway.cpu_seconds() - gateway_before) * 1e6 / events as f64);
        side.nats_cpu.push((procs::cpu_seconds(&nats_pid) - nats_before) * 1e6 / events as f64);
        drop(gateway);

        let dispatcher = Proc::dispatcher_from(&self.nats.url(), &[], Some(&dir.join("herald-dispatcher")))?;
        dispatcher.wait_ready().await?;
        self.warm_up(group).await?;
        let target = self.sink.delivered(group.paths.clone()) + events as u64;
        let messages = self.events_for(group, events, payload);
        let (started, cpu_before) = (std::time::Instant::now(), dispatcher.cpu_seconds());
        pipelined(&self.js, messages).await?;
        let done = self.sink.wait_delivered(group.paths.clone(), target, Duration::from_secs(120)).await?;
        side.end_to_end.push(per_sec(events, done - started));
        side.dispatcher_cpu.push((dispatcher.cpu_seconds() - cpu_before) * 1e6 / events as f64);
        tokio::time::sleep(Duration::from_millis(200)).await;
        dispatcher.stop().await;
        use herald_core::nats::{ATTEMPTS_STREAM, DELIVERIES_STREAM, EVENTS_STREAM};
        self.settle(&[EVENTS_STREAM, DELIVERIES_STREAM, ATTEMPTS_STREAM]).await
    }
}
