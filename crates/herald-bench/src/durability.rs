//! What durability costs: HTTP ingest (batches) against nats-server with `sync_interval:
//! always` (every write flushed before the PubAck) and against a three-node cluster with R3
//! streams, at the default interval and at `always`, each as a ratio to the same ingest against the one server with R1 streams that the
//! rest of the benchmark uses, measured in pairs so that the machine's drift cancels.

use crate::Bench;
use crate::procs::Proc;

impl Bench {
    /// `n` events of `payload` bytes POSTed in batches to the gateway at `gateway_url`; events/s.
    async fn durable_ingest(&mut self, gateway_url: &str, n: usize, payload: usize) -> anyhow::Result<f64> {
        let per_batch = (200_000 / (payload + 100)).clamp(1, 100);
        let data = Self::data(payload);
        self.batch_ingest(gateway_url, n, "bench.durability", &data, per_batch).await
    }

    /// The durability rows for one payload size.
    pub(crate) async fn durability(&mut self, payload: usize) -> anyhow::Result<()> {
        let n = self.args.events.max(self.args.ingest_mib * 1024 * 1024 / payload.max(1) / 4).max(100);
        let synced = herald_harness::NatsServer::start_synced();
        let port = herald_harness::free_port();
        let synced_gateway = Proc::gateway(&synced.url(), port).await?;
        let synced_url = format!("http://127.0.0.1:{port}");
        let cluster = herald_harness::NatsCluster::start();
        cluster.wait_for_meta_leader().await;
        let port = herald_harness::free_port();
        let cluster_gateway = Proc::gateway_with(&cluster.url(), port, &["--replicas", "3"]).await?;
        let cluster_url = format!("http://127.0.0.1:{port}");
        // What the node chaos tests advise where nodes may die in quick succession.
        let synced_cluster = herald_harness::NatsCluster::start_with_sync(Some("always"));
        synced_cluster.wait_for_meta_leader().await;
        let port = herald_harness::free_port();
        let synced_cluster_gateway = Proc::gateway_with(&synced_cluster.url(), port, &["--replicas", "3"]).await?;
        let synced_cluster_url = format!("http://127.0.0.1:{port}");

        let setups = [
            ("HTTP ingest, one server, R1, sync_interval: always", synced_url),
            ("HTTP ingest, three servers, R3", cluster_url),
            ("HTTP ingest, three servers, R3, sync_interval: always", synced_cluster_url),
        ];
        let main_url = self.gateway_url.clone();
        for (name, url) in setups {
            // A warm-up, then pairs: R1 and the setup alternately first.
            self.durable_ingest(&url, (n / 5).max(1), payload).await?;
            let (mut rates, mut ratios) = (Vec::new(), Vec::new());
            for run in 0..self.args.runs {
                let (base, rate) = if run % 2 == 0 {
                    let base = self.durable_ingest(&main_url, n, payload).await?;
                    (base, self.durable_ingest(&url, n, payload).await?)
                } else {
                    let rate = self.durable_ingest(&url, n, payload).await?;
                    (self.durable_ingest(&main_url, n, payload).await?, rate)
                };
                rates.push(rate);
                ratios.push(rate / base);
            }
            self.settle(&[herald_core::nats::EVENTS_STREAM]).await?;
            let (rate, ratio) = (crate::median(rates), crate::median(ratios));
            self.rows.push(crate::Row {
                payload,
                name: name.to_owned(),
                value: rate,
                unit: "events/s",
                ratio: Some((ratio, "R1 HTTP ingest")),
                of_relay: None,
            });
        }
        drop((synced_gateway, cluster_gateway, synced_cluster_gateway));
        Ok(())
    }
}
