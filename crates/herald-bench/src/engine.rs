//! The engine under Herald on clusters of growing size: for each of `--engine-nodes` (3 and 6),
//! a JetStream cluster on loopback with every nats-server held to `--engine-cpu` (0.25) in a
//! cgroup of its own, as a pod's CPU limit holds it, and Herald on it with R3 streams (the
//! gateway and dispatchers uncapped): HTTP ingest (batches), NATS ingest (JSON events published
//! straight to `herald.events.…`) and end to end (a backlog of one subscription drained by two
//! dispatchers), `--engine-events` events each, the median of `--runs` runs after a warm-up.
//! Then each figure on the largest cluster as a factor of the same on the smallest.
//!
//! Every event, delivery and attempt record goes through one stream of its kind, so one
//! stream leader carries each whatever the cluster's size: these rows are the baseline that
//! partitioned streams (issue 28) are measured against (target: 6 nodes ≥ 1.6× 3 nodes end to
//! end).

use serde_json::json;

use crate::cluster::OnCluster;
use crate::load::{json_event, pipelined};
use crate::scaleout::Cgroups;
use crate::{Bench, TENANT, median, per_sec};

/// The three figures of one cluster size: HTTP ingest, NATS ingest, end to end.
type Figures = [f64; 3];

const NAMES: [&str; 3] = ["HTTP ingest, batches", "NATS ingest, JSON", "end to end, 1 sub, 2 dispatchers"];
const UNITS: [&str; 3] = ["events/s", "events/s", "deliveries/s"];

impl Bench {
    /// The engine rows for one payload size.
    pub(crate) async fn engine(&mut self, payload: usize) -> anyhow::Result<()> {
        let cpus = self.args.engine_cpu;
        let cgroups = match Cgroups::detect() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("engine: nats-servers run uncapped, so the figures say little: {e}");
                None
            }
        };
        let how = cgroups.map_or("uncapped".to_owned(), |_| format!("at {cpus:.2} CPU"));
        let mut measured: Vec<(usize, Figures)> = Vec::new();
        for nodes in self.args.engine_nodes.clone() {
            let figures = self.engine_on(nodes, cgroups, payload).await?;
            println!(
                "engine, {nodes} nodes {how}: {:.0} events/s HTTP, {:.0} events/s NATS, {:.0} deliveries/s end to end",
                figures[0], figures[1], figures[2]
            );
            for i in 0..3 {
                let name = format!("engine, {nodes} nodes {how}, R3: {}", NAMES[i]);
                self.push(payload, name, figures[i], UNITS[i]);
            }
            measured.push((nodes, figures));
        }
        if let (Some((few, small)), Some((many, large))) = (measured.first(), measured.last())
            && few != many
        {
            for i in 0..3 {
                let name = format!("engine: {many} nodes ÷ {few} nodes, {}", NAMES[i]);
                self.push(payload, name, large[i] / small[i], "×");
            }
        }
        Ok(())
    }

    /// The three figures on a fresh cluster of `nodes`, each node capped if `cgroups`.
    async fn engine_on(&mut self, nodes: usize, cgroups: Option<Cgroups>, payload: usize) -> anyhow::Result<Figures> {
        let cluster = herald_harness::NatsCluster::start_nodes(nodes, None);
        let mut caps = Vec::new();
        if let Some(cgroups) = cgroups {
            for (i, pid) in cluster.pids().into_iter().enumerate() {
                let cap = cgroups
                    .cap(&format!("herald-bench-nats-{}-{nodes}-{i}", std::process::id()), self.args.engine_cpu)?;
                cap.add(pid)?;
                caps.push(cap);
            }
        }
        cluster.wait_for_meta_leader().await;
        let url = cluster.url();
        let OnCluster { gateway, gateway_url, group, js } = self.herald_on_cluster(&url).await?;

        let n = self.args.engine_events;
        let runs = self.args.runs;
        // Each measurement: a warm-up with a fifth as many, then the runs.
        let sizes = || std::iter::once((n / 5).max(1)).chain(std::iter::repeat_n(n, runs));
        let data = Self::data(payload);
        let per_batch = (200_000 / (payload + 100)).clamp(1, 100);
        let mut http = Vec::new();
        for (run, size) in sizes().enumerate() {
            let rate = self.batch_ingest(&gateway_url, size, "bench.engine.http", &data, per_batch).await?;
            if run > 0 {
                http.push(rate);
            }
        }
        let mut nats = Vec::new();
        let subject = herald_core::nats::event_subject(TENANT, "bench.engine.nats");
        for (run, size) in sizes().enumerate() {
            let messages = (0..size)
                .map(|_| {
                    let id = self.next_id("g");
                    (subject.clone(), json_event(&id, &json!({"id": id, "type": "bench.engine.nats", "data": data})))
                })
                .collect();
            let rate = pipelined(&js, messages).await?;
            if run > 0 {
                nats.push(rate);
            }
        }
        // The ingested events have no subscription; dispatchers start on an empty stream.
        js.get_stream(herald_core::nats::EVENTS_STREAM).await?.purge().await?;

        let dispatchers = self.dispatchers_on_cluster(&url, 2).await?;
        let mut e2e = Vec::new();
        for (run, size) in sizes().enumerate() {
            let took = self.drain_on_cluster(&js, &group, size, payload).await?;
            if run > 0 {
                e2e.push(per_sec(size, took));
            }
        }
        for d in dispatchers {
            d.stop().await;
        }
        gateway.stop().await;
        // The nodes exit before their cgroups are removed.
        drop(cluster);
        drop(caps);
        Ok([median(http), median(nats), median(e2e)])
    }
}
