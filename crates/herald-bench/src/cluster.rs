//! Node failures: a backlog drained on a three-node NATS cluster (R3 streams, nats-server at its
//! defaults) by two dispatchers, once with no node killed and once while a node is SIGKILLed
//! every 30 s (back 2 s later, the next only once every stream caught up), in pairs; deliveries/s
//! of each and their ratio. Then the recovery: events published at a steady pace while one
//! node is killed and restarted, and the time from the cluster being whole again (publishing
//! over) to the last delivery, against the 15 s target.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::procs::Proc;
use crate::{Bench, Group, per_sec, pipelined};

/// The node kill cadence.
const EVERY: Duration = Duration::from_secs(30);
/// How long a killed node stays down.
const DOWN: Duration = Duration::from_secs(2);

/// Herald on a cluster: its gateway, a subscription made through it, a context to publish with.
pub(crate) struct OnCluster {
    pub(crate) gateway: Proc,
    pub(crate) gateway_url: String,
    pub(crate) group: Group,
    pub(crate) js: async_nats::jetstream::Context,
}

impl Bench {
    /// The cluster rows for one payload size.
    pub(crate) async fn cluster(&mut self, payload: usize) -> anyhow::Result<()> {
        let backlog = self.args.cluster_backlog;
        let mut cluster = herald_harness::NatsCluster::start_with_sync(self.args.cluster_sync.as_deref());
        cluster.wait_for_meta_leader().await;
        let url = cluster.url();
        let OnCluster { gateway, group, js, .. } = self.herald_on_cluster(&url).await?;
        let dispatchers = self.dispatchers_on_cluster(&url, 2).await?;
        // A warm-up, then pairs: without and with kills alternately first.
        self.drain_on_cluster(&js, &group, (backlog / 10).max(1), payload).await?;
        let (mut calm, mut killed, mut ratios, mut kills) = (Vec::new(), Vec::new(), Vec::new(), 0);
        // Seconds a drain with kills took longer than the one without, per kill it had.
        let mut lost_per_kill = Vec::new();
        for run in 0..self.args.runs {
            let (mut pair, mut took, mut kills_in_drain) = ([0.0; 2], [Duration::ZERO; 2], 0);
            for with_kills in if run % 2 == 0 { [false, true] } else { [true, false] } {
                let target = self.sink.delivered(group.paths.clone()) + backlog as u64;
                let messages = self.events_for(&group, backlog, payload);
                pipelined(&js, messages).await?;
                let drain = Instant::now();
                let mut next_kill = drain + Duration::from_secs(2);
                let deadline = drain + Duration::from_secs(600);
                while self.sink.delivered(group.paths.clone()) < target {
                    anyhow::ensure!(Instant::now() < deadline, "the cluster backlog was not drained in 600 s");
                    if with_kills && Instant::now() >= next_kill {
                        let victim = kills % 3;
                        tokio::task::block_in_place(|| cluster.kill(victim));
                        tokio::time::sleep(DOWN).await;
                        tokio::task::block_in_place(|| cluster.restart(victim));
                        kills += 1;
                        kills_in_drain += 1;
                        cluster.wait_caught_up(Duration::from_secs(120)).await;
                        next_kill += EVERY;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                took[usize::from(with_kills)] = drain.elapsed();
                pair[usize::from(with_kills)] = per_sec(backlog, drain.elapsed());
            }
            calm.push(pair[0]);
            killed.push(pair[1]);
            ratios.push(pair[1] / pair[0]);
            lost_per_kill.push(took[1].saturating_sub(took[0]).as_secs_f64() / f64::from(kills_in_drain.max(1)));
        }
        let row = |name: String, value: f64, unit: &'static str, ratio: Option<(f64, &'static str)>| crate::Row {
            payload,
            name,
            value,
            unit,
            ratio,
            of_relay: None,
        };
        let sync = self.args.cluster_sync.as_deref().map(|s| format!(", sync_interval: {s}")).unwrap_or_default();
        let setup = format!("3 nodes, R3{sync}, 2 dispatchers, backlog of {backlog}");
        self.rows.push(row(format!("cluster ({setup}), no node killed"), crate::median(calm), "deliveries/s", None));
        self.rows.push(row(
            format!("cluster ({setup}), a node SIGKILLed every 30 s ({kills} kills in all)"),
            crate::median(killed),
            "deliveries/s",
            Some((crate::median(ratios), "no node killed")),
        ));
        self.rows.push(row(
            "cluster: drain time lost per node kill (the drain with kills against the one without)".into(),
            crate::median(lost_per_kill),
            "s",
            None,
        ));
        let recovered = self.recovery_on_cluster(&mut cluster, &js, &group, payload).await?;
        self.rows.push(row(
            "cluster: last delivery after a node kill, the cluster whole again (target 15 s)".into(),
            recovered.as_secs_f64(),
            "s",
            None,
        ));
        for d in dispatchers {
            d.stop().await;
        }
        drop(gateway);
        Ok(())
    }

    /// Publishes `n` events onto the cluster and waits until they are all delivered.
    /// A gateway (R3 streams) on the cluster at `url`, one subscription made through it, and a
    /// JetStream context on the cluster to publish events straight onto it.
    pub(crate) async fn herald_on_cluster(&mut self, url: &str) -> anyhow::Result<OnCluster> {
        self.herald_on_cluster_with(url, &[]).await
    }

    /// [`Bench::herald_on_cluster`] with more gateway flags.
    pub(crate) async fn herald_on_cluster_with(&mut self, url: &str, flags: &[&str]) -> anyhow::Result<OnCluster> {
        let port = herald_harness::free_port();
        let mut all = vec!["--replicas", "3"];
        all.extend_from_slice(flags);
        let gateway = Proc::gateway_with(url, port, &all).await?;
        let gateway_url = format!("http://127.0.0.1:{port}");
        let main_gateway = std::mem::replace(&mut self.gateway_url, gateway_url.clone());
        let group = self.subscribe(1).await;
        self.gateway_url = main_gateway;
        let group = group?;
        let addrs = url.split(',').map(str::parse).collect::<Result<Vec<async_nats::ServerAddr>, _>>()?;
        let client = async_nats::connect(addrs).await.context("connecting to the cluster")?;
        Ok(OnCluster { gateway, gateway_url, group, js: async_nats::jetstream::new(client) })
    }

    /// `count` dispatchers (R3) on the cluster at `url`, ready.
    pub(crate) async fn dispatchers_on_cluster(&self, url: &str, count: usize) -> anyhow::Result<Vec<Proc>> {
        self.dispatchers_on_cluster_with(url, count, &[]).await
    }

    /// [`Bench::dispatchers_on_cluster`] with more flags.
    pub(crate) async fn dispatchers_on_cluster_with(
        &self,
        url: &str,
        count: usize,
        flags: &[&str],
    ) -> anyhow::Result<Vec<Proc>> {
        let mut all = vec!["--replicas", "3"];
        all.extend_from_slice(flags);
        let mut dispatchers = Vec::new();
        for _ in 0..count {
            dispatchers.push(Proc::dispatcher_from(url, &all, self.args.dispatcher_binary.as_deref())?);
        }
        for d in &dispatchers {
            d.wait_ready().await?;
        }
        Ok(dispatchers)
    }

    pub(crate) async fn drain_on_cluster(
        &mut self,
        js: &async_nats::jetstream::Context,
        group: &Group,
        n: usize,
        payload: usize,
    ) -> anyhow::Result<Duration> {
        let target = self.sink.delivered(group.paths.clone()) + n as u64;
        let started = Instant::now();
        pipelined(js, self.events_for(group, n, payload)).await?;
        let done = self.sink.wait_delivered(group.paths.clone(), target, Duration::from_secs(300)).await?;
        Ok(done - started)
    }

    /// 100 events every 100 ms for 12 s, a node killed 3 s in and back 2 s later (events
    /// refused meanwhile are published again, deduplicated by their ids); the time from when
    /// publishing ended and the cluster was whole to the last delivery.
    async fn recovery_on_cluster(
        &mut self,
        cluster: &mut herald_harness::NatsCluster,
        js: &async_nats::jetstream::Context,
        group: &Group,
        payload: usize,
    ) -> anyhow::Result<Duration> {
        let before = self.sink.delivered(group.paths.clone());
        let started = Instant::now();
        let (mut published, mut killed) = (0u64, false);
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        while started.elapsed() < Duration::from_secs(12) {
            pace.tick().await;
            if !killed && started.elapsed() >= Duration::from_secs(3) {
                tokio::task::block_in_place(|| cluster.kill(2));
                killed = true;
                tokio::time::sleep(DOWN).await;
                tokio::task::block_in_place(|| cluster.restart(2));
            }
            let messages = self.events_for(group, 100, payload);
            let deadline = Instant::now() + Duration::from_secs(60);
            // Sent until stored, with the same ids (the stream's duplicate window drops copies).
            loop {
                match pipelined(js, messages.clone()).await {
                    Ok(_) => break,
                    Err(e) => {
                        anyhow::ensure!(Instant::now() < deadline, "the cluster refused events for 60 s: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            published += 100;
        }
        let whole = Instant::now();
        let done = self
            .sink
            .wait_delivered(group.paths.clone(), before + published, Duration::from_secs(300))
            .await
            .context("recovery after a node kill")?;
        Ok(done.saturating_duration_since(whole))
    }
}
