//! The engine under Herald on clusters of growing size: for each of `--engine-nodes` (3 and 6),
//! a JetStream cluster on loopback with every nats-server held to `--engine-cpu` (0.25) in a
//! cgroup of its own, as a pod's CPU limit holds it, and Herald on it with R3 streams at each of
//! `--engine-partitions` (1 and 6; the gateway and dispatchers uncapped): HTTP ingest (batches),
//! NATS ingest (JSON events published straight to each tenant's event subject) and end to end
//! (a backlog over twelve tenants' subscriptions, one each, drained by two dispatchers),
//! `--engine-events` events each, the median of `--runs` runs after a warm-up. Then each figure
//! on the largest cluster as a factor of the same on the smallest, per partition count.
//!
//! The load is spread over twelve tenants at every P alike, so P = 1 is the layout of before on
//! the same load: with one partition one stream leader of each kind carries it all whatever the
//! cluster's size; with six they spread (target: 6 nodes ≥ 1.6× 3 nodes end to end at P = 6).

use serde_json::json;

use crate::cluster::OnCluster;
use crate::load::{json_event, pipelined};
use crate::scaleout::Cgroups;
use crate::{Bench, median, per_sec};

/// The figures of one cluster size: HTTP ingest, NATS ingest, end to end, and the CPU the
/// nats-servers (all of them) and the dispatchers (both) spent per delivery end to end.
type Figures = [f64; 10];

const NAMES: [&str; 10] = [
    "HTTP ingest, batches",
    "NATS ingest, JSON",
    "end to end, 12 tenants × 1 sub, 2 dispatchers",
    "end to end: nats-server CPU per delivery (all nodes)",
    "end to end: dispatcher CPU per delivery (both)",
    "end to end: first attempts made inline by fan-out",
    "end to end: the machine's CPUs busy (all processes)",
    "end to end: deliveries sent twice",
    "end to end: NATS messages per delivery (received by all nodes, from clients and routes)",
    "end to end: JetStream API requests per delivery (all nodes)",
];
const UNITS: [&str; 10] =
    ["events/s", "events/s", "deliveries/s", "µs", "µs", "%", "%", "deliveries", "messages", "requests"];
/// The figures compared between cluster sizes (rates; the CPU figures are per delivery).
const RATES: usize = 3;

/// Tenants the load is spread over.
const TENANTS: usize = 12;

impl Bench {
    /// The engine rows for one payload size.
    pub(crate) async fn engine(&mut self, payload: usize) -> anyhow::Result<()> {
        let cpus = self.args.engine_cpu;
        let cgroups = match Cgroups::detect() {
            Ok(_) if cpus <= 0.0 => None,
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("engine: nats-servers run uncapped, so the figures say little: {e}");
                None
            }
        };
        let mut how = cgroups.map_or("uncapped".to_owned(), |_| format!("at {cpus:.2} CPU"));
        if self.args.engine_assign {
            how += ", partitions assigned to replicas";
        }
        if self.args.engine_random_leaders {
            how += ", leaders where elected";
        }
        let mut measured: Vec<(usize, u16, Figures)> = Vec::new();
        for nodes in self.args.engine_nodes.clone() {
            for partitions in self.args.engine_partitions.clone() {
                let figures = self.engine_on(nodes, partitions, cgroups, payload).await?;
                println!(
                    "engine, {nodes} nodes {how}, P={partitions}: {:.0} events/s HTTP, {:.0} events/s NATS, {:.0} deliveries/s end to end ({:.0} µs nats-server, {:.0} µs dispatcher CPU per delivery, {:.0} % inline, machine {:.0} % busy, {:.0} sent twice, {:.1} NATS messages and {:.3} JetStream API requests per delivery)",
                    figures[0],
                    figures[1],
                    figures[2],
                    figures[3],
                    figures[4],
                    figures[5],
                    figures[6],
                    figures[7],
                    figures[8],
                    figures[9]
                );
                for i in 0..figures.len() {
                    let name = format!("engine, {nodes} nodes {how}, R3, P={partitions}: {}", NAMES[i]);
                    self.push(payload, name, figures[i], UNITS[i]);
                }
                measured.push((nodes, partitions, figures));
            }
        }
        let (few, many) = (
            self.args.engine_nodes.iter().copied().min().unwrap_or(0),
            self.args.engine_nodes.iter().copied().max().unwrap_or(0),
        );
        if few == many {
            return Ok(());
        }
        for partitions in self.args.engine_partitions.clone() {
            let of = |n: usize| measured.iter().find(|(m, p, _)| *m == n && *p == partitions).map(|(_, _, f)| *f);
            if let (Some(small), Some(large)) = (of(few), of(many)) {
                for i in 0..RATES {
                    let name = format!("engine P={partitions}: {many} nodes ÷ {few} nodes, {}", NAMES[i]);
                    self.push(payload, name, large[i] / small[i], "×");
                }
            }
        }
        Ok(())
    }

    /// The three figures on a fresh cluster of `nodes`, each node capped if `cgroups`, Herald
    /// on `partitions`.
    async fn engine_on(
        &mut self,
        nodes: usize,
        partitions: u16,
        cgroups: Option<Cgroups>,
        payload: usize,
    ) -> anyhow::Result<Figures> {
        let cluster = herald_harness::NatsCluster::start_nodes(nodes, None);
        let mut caps = Vec::new();
        if let Some(cgroups) = cgroups {
            for (i, pid) in cluster.pids().into_iter().enumerate() {
                let cap = cgroups.cap(
                    &format!("herald-bench-nats-{}-{nodes}-{partitions}-{i}", std::process::id()),
                    self.args.engine_cpu,
                )?;
                cap.add(pid)?;
                caps.push(cap);
            }
        }
        cluster.wait_for_meta_leader().await;
        let url = cluster.url();
        // One partition is the default, and what a build without partitions runs (`--binaries`).
        let count = partitions.to_string();
        let flags: Vec<&str> = if partitions > 1 { vec!["--partitions", &count] } else { vec![] };
        let OnCluster { gateway, gateway_url, js, .. } = self.herald_on_cluster_with(&url, &flags).await?;
        let layout = herald_core::nats::Partitions::new(partitions).map_err(anyhow::Error::msg)?;
        // The streams' leaders spread before ingest, the consumers' once the dispatchers made them.
        if !self.args.engine_random_leaders {
            spread_leaders(&js, &layout).await?;
        }
        let tenants: Vec<String> = (0..TENANTS).map(|i| format!("engine{i}")).collect();
        // A subscription per tenant, made through this cluster's gateway.
        let main_gateway = std::mem::replace(&mut self.gateway_url, gateway_url.clone());
        let mut groups = Vec::new();
        for tenant in &tenants {
            match self.subscribe_with(1, json!({"tenant": tenant})).await {
                Ok(g) => groups.push((tenant.clone(), g)),
                Err(e) => {
                    self.gateway_url = main_gateway;
                    return Err(e);
                }
            }
        }
        self.gateway_url = main_gateway;
        let paths = groups[0].1.paths.start..groups[TENANTS - 1].1.paths.end;
        let n = self.args.engine_events;
        let runs = self.args.runs;
        // Each measurement: a warm-up with a fifth as many, then the runs.
        let sizes = || std::iter::once((n / 5).max(1)).chain(std::iter::repeat_n(n, runs));
        let data = Self::data(payload);
        let per_batch = (200_000 / (payload + 100)).clamp(1, 100);
        let mut http = Vec::new();
        for (run, size) in sizes().enumerate() {
            let rate =
                self.batch_ingest_to(&gateway_url, size, "bench.engine.http", &data, per_batch, &tenants).await?;
            if run > 0 {
                http.push(rate);
            }
        }
        let mut nats = Vec::new();
        let subjects: Vec<String> =
            tenants.iter().map(|t| layout.of_tenant(t).event_subject(t, "bench.engine.nats")).collect();
        for (run, size) in sizes().enumerate() {
            let messages = (0..size)
                .map(|i| {
                    let id = self.next_id("g");
                    let event = json!({"id": id, "type": "bench.engine.nats", "data": data});
                    (subjects[i % TENANTS].clone(), json_event(&id, &event))
                })
                .collect();
            let rate = pipelined(&js, messages).await?;
            if run > 0 {
                nats.push(rate);
            }
        }
        // The ingested events have no subscription; dispatchers start on empty streams.
        for partition in layout.all() {
            js.get_stream(partition.events_stream()).await?.purge().await?;
        }

        let replicas = self.args.engine_dispatchers;
        let dispatchers = if self.args.engine_assign && partitions > 1 {
            anyhow::ensure!(replicas <= usize::from(partitions), "--engine-assign: more dispatchers than partitions");
            let mut all = Vec::new();
            for i in 0..replicas {
                let share: Vec<String> =
                    layout.all().filter(|p| usize::from(p.0) % replicas == i).map(|p| p.0.to_string()).collect();
                let share = share.join(",");
                let mut own = flags.clone();
                own.extend(["--pull-partitions", share.as_str()]);
                all.extend(self.dispatchers_on_cluster_with(&url, 1, &own).await?);
            }
            all
        } else {
            self.dispatchers_on_cluster_with(&url, replicas, &flags).await?
        };
        if !self.args.engine_random_leaders {
            spread_leaders(&js, &layout).await?;
        }
        println!("  leaders, {nodes} nodes, P={partitions}: {}", leaders(&js, &layout).await);
        let mut e2e = Vec::new();
        let (mut nats_cpu, mut dispatcher_cpu, mut inline, mut busy) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut twice, mut messages_per, mut api_per) = (Vec::new(), Vec::new(), Vec::new());
        let monitors = cluster.monitor_urls();
        const INLINE: &str = r#"herald_fanout_deliveries_total{path="inline"}"#;
        let servers: Vec<String> = cluster.pids().iter().map(u32::to_string).collect();
        let cpu_of_servers = || servers.iter().map(|p| crate::procs::cpu_seconds(p)).sum::<f64>();
        let cpu_of_dispatchers = |ds: &[crate::procs::Proc]| ds.iter().map(|d| d.cpu_seconds()).sum::<f64>();
        for (run, size) in sizes().enumerate() {
            let target = self.sink.delivered(paths.clone()) + size as u64;
            let mut messages = Vec::with_capacity(size);
            let mut ids = std::collections::HashSet::with_capacity(size);
            for i in 0..size {
                let (tenant, group) = &groups[i % TENANTS];
                let id = self.next_id("e");
                let event = json!({"id": id, "type": group.event_type, "data": data});
                messages
                    .push((layout.of_tenant(tenant).event_subject(tenant, &group.event_type), json_event(&id, &event)));
                ids.insert(id);
            }
            let (servers_before, dispatchers_before) = (cpu_of_servers(), cpu_of_dispatchers(&dispatchers));
            let machine_before = machine_ticks();
            let mut inline_before = 0.0;
            for d in &dispatchers {
                inline_before += d.counter(&self.http, INLINE).await;
            }
            let delivered_before = self.sink.delivered(paths.clone());
            let work_before = NatsWork::of(&self.http, &monitors).await;
            self.sink.record_arrivals(true);
            let started = std::time::Instant::now();
            pipelined(&js, messages).await?;
            // Done when every event has arrived once: a delivery sent twice does not count.
            self.sink.wait_delivered(paths.clone(), target, std::time::Duration::from_secs(300)).await?;
            while self.sink.arrived() < size {
                anyhow::ensure!(started.elapsed().as_secs() < 600, "{} of {size} events arrived", self.sink.arrived());
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let done = std::time::Instant::now();
            let work = NatsWork::of(&self.http, &monitors).await.since(&work_before);
            let arrivals = self.sink.record_arrivals(false);
            let unique = arrivals.keys().filter(|id| ids.contains(*id)).count();
            if run > 0 {
                twice.push((self.sink.delivered(paths.clone()) - delivered_before) as f64 - unique as f64);
                e2e.push(per_sec(size, done - started));
                nats_cpu.push((cpu_of_servers() - servers_before) * 1e6 / size as f64);
                dispatcher_cpu.push((cpu_of_dispatchers(&dispatchers) - dispatchers_before) * 1e6 / size as f64);
                let mut inline_after = 0.0;
                for d in &dispatchers {
                    inline_after += d.counter(&self.http, INLINE).await;
                }
                inline.push(100.0 * (inline_after - inline_before) / size as f64);
                messages_per.push(work.messages / size as f64);
                api_per.push(work.api / size as f64);
                println!("  NATS work per delivery, run {run}: {}", work.per(size));
                let (machine_busy, machine_all) = machine_ticks();
                busy.push(100.0 * (machine_busy - machine_before.0) / (machine_all - machine_before.1).max(1.0));
            }
        }
        for d in dispatchers {
            d.stop().await;
        }
        gateway.stop().await;
        // The nodes exit before their cgroups are removed.
        drop(cluster);
        drop(caps);
        Ok([
            median(http),
            median(nats),
            median(e2e),
            median(nats_cpu),
            median(dispatcher_cpu),
            median(inline),
            median(busy),
            median(twice),
            median(messages_per),
            median(api_per),
        ])
    }
}

/// What the nodes of a cluster have done so far, from their monitoring endpoints: messages
/// and bytes received (from clients and routes), JetStream API requests served, and messages each kind of
/// client sent (by connection name, without its replica suffix). Deterministic where rates are
/// not: two builds that make the same publishes, acks and API calls per delivery do the same
/// work, whatever a capped node's scheduling made of it in one run.
#[derive(Default)]
struct NatsWork {
    messages: f64,
    bytes: f64,
    api: f64,
    by_client: std::collections::BTreeMap<String, f64>,
}

impl NatsWork {
    async fn of(http: &reqwest::Client, monitors: &[String]) -> Self {
        let mut work = Self::default();
        for base in monitors {
            let get = |path: &str| {
                let url = format!("{base}{path}");
                async move {
                    match http.get(&url).send().await {
                        Ok(r) => serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or_default(),
                        Err(_) => serde_json::Value::Null,
                    }
                }
            };
            let varz = get("/varz").await;
            work.messages += varz["in_msgs"].as_f64().unwrap_or(0.0);
            work.bytes += varz["in_bytes"].as_f64().unwrap_or(0.0);
            work.api += get("/jsz").await["api"]["total"].as_f64().unwrap_or(0.0);
            let connz = get("/connz?limit=1024").await;
            for c in connz["connections"].as_array().into_iter().flatten() {
                let name = c["name"].as_str().unwrap_or("(unnamed)");
                // `herald-dispatcher-<host>-<pid>` and the like: the kind of client.
                let kind: String = name.split('-').take(2).collect::<Vec<_>>().join("-");
                *work.by_client.entry(kind).or_default() += c["in_msgs"].as_f64().unwrap_or(0.0);
            }
        }
        work
    }

    /// The work done since `before`. Connections opened since count from zero.
    fn since(mut self, before: &Self) -> Self {
        self.messages -= before.messages;
        self.bytes -= before.bytes;
        self.api -= before.api;
        for (kind, n) in &mut self.by_client {
            *n -= before.by_client.get(kind).copied().unwrap_or(0.0);
        }
        self
    }

    /// `kind: n` messages sent per delivery, each kind of client.
    fn per(&self, deliveries: usize) -> String {
        let d = deliveries.max(1) as f64;
        let mut parts = vec![format!(
            "{:.2} messages ({:.0} bytes) in all, {:.3} API requests",
            self.messages / d,
            self.bytes / d,
            self.api / d
        )];
        parts.extend(self.by_client.iter().map(|(kind, n)| format!("{kind} {:.2}", n / d)));
        parts.join(", ")
    }
}

/// Moves the leaders of the partitions' events, deliveries and attempts streams, then of their
/// consumers, so that each lands on the node (among its group's peers) leading the fewest so far:
/// streams first, then consumers, a leader left where it is when its node is among the least
/// loaded. Elections place leaders at random, and a node at a small CPU share leading two busy
/// streams halves the end-to-end rate, which would make every comparison a comparison of
/// placements (JetStream's leader step-down with a preferred peer, nats-server ≥ 2.11).
async fn spread_leaders(
    js: &async_nats::jetstream::Context,
    layout: &herald_core::nats::Partitions,
) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    let mut groups = Vec::new();
    for partition in layout.all() {
        for name in [partition.events_stream(), partition.deliveries_stream(), partition.attempts_stream()] {
            let mut stream = js.get_stream(&name).await?;
            let info = stream.info().await?;
            groups.push((
                format!("STREAM.LEADER.STEPDOWN.{name}"),
                format!("STREAM.INFO.{name}"),
                info.cluster.clone(),
            ));
            let mut consumers = stream.consumers();
            let mut later = Vec::new();
            while let Some(c) = futures::StreamExt::next(&mut consumers).await {
                let c = c?;
                later.push((
                    format!("CONSUMER.LEADER.STEPDOWN.{name}.{}", c.name),
                    format!("CONSUMER.INFO.{name}.{}", c.name),
                    c.cluster,
                ));
            }
            groups.extend(later.into_iter().map(|g| (g.0, g.1, g.2)));
        }
    }
    // Streams before consumers: the busy groups spread first.
    groups.sort_by_key(|(stepdown, ..)| !stepdown.starts_with("STREAM"));
    for (stepdown, info, cluster) in groups {
        let Some(cluster) = cluster else { continue };
        let Some(leader) = cluster.leader.clone() else { continue };
        let mut peers: Vec<String> = cluster.replicas.iter().map(|p| p.name.clone()).collect();
        peers.push(leader.clone());
        for peer in &peers {
            load.entry(peer.clone()).or_default();
        }
        let least = peers.iter().map(|p| load[p]).min().unwrap_or(0);
        let target = if load[&leader] == least {
            leader.clone()
        } else {
            peers.iter().find(|p| load[*p] == least).cloned().unwrap_or(leader.clone())
        };
        *load.entry(target.clone()).or_default() += 1;
        if target == leader {
            continue;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let answer: serde_json::Value =
                js.request(stepdown.clone(), &json!({"placement": {"preferred": target}})).await?;
            if let Some(error) = answer.get("error") {
                if error["description"].as_str().is_some_and(|d| d.contains("already leader")) {
                    break;
                }
                eprintln!("engine: {stepdown} to {target}: {error}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let now: serde_json::Value = js.request(info.clone(), &()).await?;
            if now["cluster"]["leader"].as_str() == Some(target.as_str()) {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{stepdown}: the leader did not move to {target} in 20 s"
            );
        }
    }
    Ok(())
}

/// How many of the partitions' streams and consumers each node leads, as `n0: 4 + 6, …`
/// (streams + consumers): what spreads and what does not.
async fn leaders(js: &async_nats::jetstream::Context, layout: &herald_core::nats::Partitions) -> String {
    use std::collections::BTreeMap;
    let mut led: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for partition in layout.all() {
        for name in [partition.events_stream(), partition.deliveries_stream(), partition.attempts_stream()] {
            let Ok(mut stream) = js.get_stream(&name).await else { continue };
            let Ok(info) = stream.info().await else { continue };
            if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                led.entry(leader).or_default().0 += 1;
            }
            let mut consumers = stream.consumers();
            while let Some(Ok(c)) = futures::StreamExt::next(&mut consumers).await {
                if let Some(leader) = c.cluster.and_then(|c| c.leader) {
                    led.entry(leader).or_default().1 += 1;
                }
            }
        }
    }
    led.iter().map(|(node, (s, c))| format!("{node}: {s} + {c}")).collect::<Vec<_>>().join(", ")
}

/// The machine's CPU time so far (all CPUs, in clock ticks): busy, and in all.
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
    let all: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (all - idle, all)
}
