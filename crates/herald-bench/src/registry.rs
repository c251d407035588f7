//! Many subscriptions: `--registry-subscriptions` subscriptions over `--registry-tenants`
//! tenants written straight into the `herald-subscriptions` bucket (copies of one made through
//! the API, each with an id, tenant, URL and timestamps of its own), then a gateway and a
//! dispatcher started afresh: how long until each is ready, what each holds, how fast the API
//! answers, and the delivery rate of ten subscriptions beside them against the same ten alone.
//! Targets (issue 28) at 1,000,000 over 100,000 tenants: each replica ≤ 512 MiB, ready ≤ 5 s,
//! delivery ≥ 0.9 of the rate with ten subscriptions.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::message::PublishMessage;
use prost::Message as _;

use crate::procs::Proc;
use crate::{Bench, Group, median, per_sec};

/// Subscriptions stored per pipelined batch.
const BATCH: usize = 50_000;

/// Delivery rate of `group` with a fresh dispatcher: deliveries/s (median of the runs after a
/// warm-up) and the dispatcher's CPU µs per delivery over the measured runs.
struct Rate {
    deliveries_per_sec: f64,
    cpu_us: f64,
    ready: Duration,
    rss_kib: u64,
}

impl Bench {
    pub(crate) async fn many_subscriptions(&mut self, payload: usize) -> anyhow::Result<()> {
        let (count, tenants) = (self.args.registry_subscriptions, self.args.registry_tenants.max(1));
        let group = self.subscribe(10).await?;
        let alone = self.delivery_rate(&group, payload).await?;

        // One subscription made through the API, as the template of the others.
        let listed = self
            .http
            .get(format!("{}/v1/subscriptions?tenant={}&limit=1", self.gateway_url, crate::TENANT))
            .bearer_auth(herald_harness::ADMIN_TOKEN)
            .send()
            .await?
            .bytes()
            .await?;
        let listed: serde_json::Value = serde_json::from_slice(&listed)?;
        let id = listed["data"][0]["id"].as_str().context("no subscription listed")?.to_owned();
        let store = self.js.get_key_value(herald_core::nats::SUBSCRIPTIONS_BUCKET).await?;
        let stored = store.get(format!("{}.{id}", crate::TENANT)).await?.context("the template is not stored")?;
        let template = herald_core::proto::Subscription::decode(stored.as_ref())?;

        let started = Instant::now();
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() as u64 * 1000;
        let mut ids = Vec::with_capacity(count);
        for first in (0..count).step_by(BATCH) {
            let messages: Vec<(String, PublishMessage)> = (first..count.min(first + BATCH))
                .map(|i| {
                    let mut sub = template.clone();
                    sub.id = format!("sub_{}", ulid::Ulid::from_parts(now_ms, i as u128));
                    sub.tenant = format!("t{:06}", i % tenants);
                    sub.url = format!("https://hooks.{}.example.com/herald/{i}", sub.tenant);
                    sub.event_types = vec!["order.*".into(), "invoice.paid".into()];
                    let key = format!("$KV.{}.{}.{}", herald_core::nats::SUBSCRIPTIONS_BUCKET, sub.tenant, sub.id);
                    if i % (count / 1000).max(1) == 0 {
                        ids.push(sub.id.clone());
                    }
                    (key, PublishMessage::build().payload(sub.encode_to_vec().into()))
                })
                .collect();
            crate::load::pipelined(&self.js, messages).await?;
        }
        let stored_in = started.elapsed();
        println!(
            "subscriptions: {count} over {tenants} tenants stored in {:.1} s ({} B each encoded)",
            stored_in.as_secs_f64(),
            template.encoded_len()
        );

        let port = herald_harness::free_port();
        let spawned = Instant::now();
        let gateway = Proc::gateway(&self.nats.url(), port).await?;
        let gateway_ready = spawned.elapsed();
        let gateway_rss = gateway.memory().rss_kib;
        let base = format!("http://127.0.0.1:{port}");
        let (one, page) = self.api_latency(&base, &ids).await?;
        let beside = self.delivery_rate(&group, payload).await?;
        println!(
            "subscriptions: gateway ready in {} ms, {:.1} MiB; dispatcher ready in {} ms, {:.1} MiB; {:.0} vs {:.0} deliveries/s alone",
            gateway_ready.as_millis(),
            gateway_rss as f64 / 1024.0,
            beside.ready.as_millis(),
            beside.rss_kib as f64 / 1024.0,
            beside.deliveries_per_sec,
            alone.deliveries_per_sec
        );
        let mib = |kib: u64| kib as f64 / 1024.0;
        self.push(
            payload,
            format!("subscriptions: {count} over {tenants} tenants, stored in"),
            stored_in.as_secs_f64(),
            "s",
        );
        self.push(
            payload,
            "  a gateway started afresh: ready after (target 5 s)",
            gateway_ready.as_secs_f64() * 1e3,
            "ms",
        );
        self.push(payload, "  its RSS once ready (target 512 MiB)", mib(gateway_rss), "MiB");
        self.push(payload, "  GET /v1/subscriptions/{id}, median", one.as_secs_f64() * 1e3, "ms");
        self.push(payload, "  GET /v1/subscriptions (first page of all), median", page.as_secs_f64() * 1e3, "ms");
        self.push(
            payload,
            "  a dispatcher started afresh: ready after (target 5 s)",
            beside.ready.as_secs_f64() * 1e3,
            "ms",
        );
        self.push(payload, "  its RSS after the deliveries (target 512 MiB)", mib(beside.rss_kib), "MiB");
        self.push(payload, "  10 subscriptions beside them, end to end", beside.deliveries_per_sec, "deliveries/s");
        self.push(payload, "  the same 10 alone, end to end", alone.deliveries_per_sec, "deliveries/s");
        self.push(payload, "  ratio (target 0.9)", beside.deliveries_per_sec / alone.deliveries_per_sec, "");
        self.push(payload, "  dispatcher CPU per delivery beside them", beside.cpu_us, "µs");
        self.push(payload, "  dispatcher CPU per delivery alone", alone.cpu_us, "µs");
        gateway.stop().await;
        Ok(())
    }

    /// A fresh dispatcher's readiness, then `group`'s deliveries/s over a warm-up and `--runs`
    /// runs of `--events` events each, and the dispatcher's memory after them.
    async fn delivery_rate(&mut self, group: &Group, payload: usize) -> anyhow::Result<Rate> {
        let spawned = Instant::now();
        let dispatcher = Proc::dispatcher(&self.nats.url(), &[])?;
        dispatcher.wait_ready().await?;
        let ready = spawned.elapsed();
        self.warm_up(group).await?;
        let events = (self.args.events / group.paths.len()).max(10);
        let (mut rates, mut cpu, mut measured) = (Vec::new(), 0.0, 0);
        for run in 0..=self.args.runs {
            let n = if run == 0 { (events / 5).max(1) } else { events };
            let deliveries = n * group.paths.len();
            let target = self.sink.delivered(group.paths.clone()) + deliveries as u64;
            let messages = self.events_for(group, n, payload);
            let (started, before) = (Instant::now(), dispatcher.cpu_seconds());
            crate::load::pipelined(&self.js, messages).await?;
            let done = self.sink.wait_delivered(group.paths.clone(), target, Duration::from_secs(120)).await?;
            if run > 0 {
                rates.push(per_sec(deliveries, done - started));
                cpu += dispatcher.cpu_seconds() - before;
                measured += deliveries;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rss_kib = dispatcher.memory().rss_kib;
        dispatcher.stop().await;
        Ok(Rate { deliveries_per_sec: median(rates), cpu_us: cpu * 1e6 / measured as f64, ready, rss_kib })
    }

    /// Median latency of reading one subscription (of `ids`, in turn) and the first page of all
    /// subscriptions from the gateway at `base`.
    async fn api_latency(&self, base: &str, ids: &[String]) -> anyhow::Result<(Duration, Duration)> {
        let (mut one, mut page) = (Vec::new(), Vec::new());
        for id in ids.iter().take(200) {
            one.push(self.timed_get(&format!("{base}/v1/subscriptions/{id}")).await?);
        }
        for _ in 0..20 {
            page.push(self.timed_get(&format!("{base}/v1/subscriptions?limit=50")).await?);
        }
        Ok((Duration::from_secs_f64(median(one)), Duration::from_secs_f64(median(page))))
    }

    /// Seconds a `GET url` with the admin token took, body read; an error unless 200.
    async fn timed_get(&self, url: &str) -> anyhow::Result<f64> {
        let started = Instant::now();
        let resp = self.http.get(url).bearer_auth(herald_harness::ADMIN_TOKEN).send().await?;
        anyhow::ensure!(resp.status() == 200, "GET {url}: {}", resp.status());
        resp.bytes().await?;
        Ok(started.elapsed().as_secs_f64())
    }
}
