//! Soak: a steady delivery rate for minutes on a nats-server of its own, watching the memory of
//! nats-server, the gateway and the dispatcher as deliveries are retained; then the same messages
//! stored under a handful of subjects on a fresh server (the physical floor of what nats-server
//! needs to hold them). Afterwards, on what the soak retained: the cost of the record check made
//! before a delivery handed out again is sent, and the latency of the attempts API.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message as _;
use serde_json::json;

use crate::Bench;
use crate::load::{json_event, pipelined};
use crate::procs::{self, Proc};

/// One sample of the soak.
struct Sample {
    deliveries: u64,
    /// Messages and bytes per Herald stream.
    streams: Vec<(String, u64, u64)>,
    nats_kib: u64,
    gateway_kib: u64,
    dispatcher_kib: u64,
}

impl Sample {
    /// Deliveries since `delivered_before`, the streams, and the three processes' RSS now.
    async fn take(
        sink: &crate::sink::Sink,
        paths: &std::ops::Range<usize>,
        delivered_before: u64,
        js: &jetstream::Context,
        nats_pid: u32,
        gateway: &Proc,
        dispatcher: &Proc,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            deliveries: sink.delivered(paths.clone()) - delivered_before,
            streams: streams(js).await?,
            nats_kib: rss_kib(nats_pid),
            gateway_kib: gateway.memory().rss_kib,
            dispatcher_kib: dispatcher.memory().rss_kib,
        })
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

const STREAMS: [&str; 4] = [
    herald_core::nats::EVENTS_STREAM,
    herald_core::nats::DELIVERIES_STREAM,
    herald_core::nats::DLQ_STREAM,
    herald_core::nats::ATTEMPTS_STREAM,
];

async fn streams(js: &jetstream::Context) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let mut out = Vec::new();
    for name in STREAMS {
        let info = js.get_stream(name).await?.info().await?.clone();
        out.push((name.to_owned(), info.state.messages, info.state.bytes));
    }
    Ok(out)
}

impl Bench {
    pub(crate) async fn soak(&mut self) -> anyhow::Result<()> {
        let (rate, seconds) = (self.args.soak_rate, self.args.soak_seconds);
        let (types, fanout) = (self.args.soak_types, self.args.soak_fanout);
        let warm = (seconds / 5).max(1);
        let nats = herald_harness::NatsServer::start();
        let nats_pid = nats.pid().unwrap_or(0);
        let js = jetstream::new(nats.client().await);
        let port = herald_harness::free_port();
        let gateway = Proc::gateway(&nats.url(), port).await?;
        let gateway_url = format!("http://127.0.0.1:{port}");
        let dispatcher = Proc::dispatcher(&nats.url(), &[])?;
        dispatcher.wait_ready().await?;

        // `types` groups of `fanout` subscriptions, each group in a tenant of its own.
        let start = self.next_path;
        anyhow::ensure!(start + types * fanout <= crate::sink::PATHS, "more subscriptions than the receiver counts");
        self.next_path += types * fanout;
        let mut groups = Vec::new();
        let mut subscriptions = Vec::new();
        for g in 0..types {
            let (tenant, event_type) = (format!("soak{g}"), format!("soak.t{g}"));
            for index in start + g * fanout..start + (g + 1) * fanout {
                let body = json!({"url": self.sink.sub_url(index), "event_types": [event_type], "tenant": tenant, "secret": self.secret});
                let resp = self
                    .http
                    .post(format!("{gateway_url}/v1/subscriptions"))
                    .bearer_auth(herald_harness::ADMIN_TOKEN)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await?;
                let status = resp.status();
                let text = resp.text().await?;
                anyhow::ensure!(status == 201, "creating a subscription: {text}");
                let created: serde_json::Value = serde_json::from_str(&text)?;
                subscriptions.push((g, created["id"].as_str().unwrap_or_default().to_owned()));
            }
            groups.push((tenant, event_type));
        }
        let paths = start..start + types * fanout;
        tokio::time::sleep(Duration::from_secs(1)).await; // the dispatcher learns them
        let data = Self::data(256);

        // A steady rate, ten publishes a second, each event to the next group in turn.
        let delivered_before = self.sink.delivered(paths.clone());
        let tick = Duration::from_millis(100);
        let per_tick = (rate / 10).max(1);
        let began = Instant::now();
        let (mut next_sample, mut samples) = (began + Duration::from_secs(warm as u64), Vec::new());
        let mut published: Vec<(usize, String, time::OffsetDateTime)> = Vec::new();
        let mut n = 0usize;
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while began.elapsed() < Duration::from_secs(seconds as u64) {
            ticker.tick().await;
            let mut batch = Vec::with_capacity(per_tick);
            for _ in 0..per_tick {
                let g = n % types;
                n += 1;
                let id = self.next_id("soak");
                let (tenant, event_type) = &groups[g];
                let event = json!({"id": id, "type": event_type, "data": data});
                batch.push((herald_core::nats::event_subject(tenant, event_type), json_event(&id, &event)));
                published.push((g, id, time::OffsetDateTime::now_utc()));
            }
            pipelined(&js, batch).await?;
            if Instant::now() >= next_sample {
                next_sample += Duration::from_secs(10);
                samples.push(
                    Sample::take(&self.sink, &paths, delivered_before, &js, nats_pid, &gateway, &dispatcher).await?,
                );
            }
        }
        let took = began.elapsed();
        let want = delivered_before + (n * fanout) as u64;
        self.sink.wait_delivered(paths.clone(), want, Duration::from_secs(120)).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        samples.push(Sample::take(&self.sink, &paths, delivered_before, &js, nats_pid, &gateway, &dispatcher).await?);
        let (first, last) = (&samples[0], samples.last().expect("a sample"));
        let mib = |kib: u64| kib as f64 / 1024.0;
        let retained =
            |s: &Sample| s.streams.iter().find(|(n, ..)| n == herald_core::nats::ATTEMPTS_STREAM).map(|x| x.1);
        let records_last = retained(last).unwrap_or(0);
        println!(
            "soak: {} deliveries in {:.0} s ({:.0}/s), {records_last} records retained; samples every 10 s after {warm} s:",
            last.deliveries,
            took.as_secs_f64(),
            last.deliveries as f64 / took.as_secs_f64()
        );
        for s in &samples {
            println!(
                "  deliveries {:>9}  records {:>9}  nats-server {:>7.1} MiB  gateway {:>6.1} MiB  dispatcher {:>6.1} MiB",
                s.deliveries,
                retained(s).unwrap_or(0),
                mib(s.nats_kib),
                mib(s.gateway_kib),
                mib(s.dispatcher_kib)
            );
        }

        // While the records are fresh: a retry's check reads 30 s back.
        // (Its rows go after the soak's.)
        let before = self.rows.len();
        self.record_costs(&js, nats_pid, &gateway_url, &dispatcher, &published, &subscriptions, &groups).await?;
        let costs: Vec<crate::Row> = self.rows.drain(before..).collect();

        // The floor: the same messages, counts and sizes per stream, under four subjects each.
        let floor = herald_harness::NatsServer::start();
        let floor_js = jetstream::new(floor.client().await);
        for name in STREAMS {
            let config = jetstream::stream::Config {
                name: name.into(),
                subjects: vec![format!("floor.{name}.>")],
                ..Default::default()
            };
            floor_js.create_stream(config).await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let fill = |to: &[(String, u64, u64)], from: &[(String, u64, u64)]| -> Vec<(String, PublishMessage)> {
            let mut out = Vec::new();
            for ((name, count, bytes), (_, had, _)) in to.iter().zip(from) {
                let size = bytes.checked_div(*count).unwrap_or(0) as usize;
                // Stored bytes include the subject and headers: the payload is a little smaller.
                let payload = bytes::Bytes::from(vec![b'x'; size.saturating_sub(60).max(1)]);
                for i in *had..*count {
                    out.push((format!("floor.{name}.{}", i % 4), PublishMessage::build().payload(payload.clone())));
                }
            }
            out
        };
        // Filled in steps, as the soak's server filled: RSS after each (settled), so that both
        // growths are slopes fitted to the same retained counts.
        let steps: Vec<&Sample> = samples.iter().step_by((samples.len() / 8).max(1)).chain([last]).collect();
        let mut had: Vec<(String, u64, u64)> = STREAMS.iter().map(|n| (n.to_string(), 0, 0)).collect();
        let mut floor_points = Vec::new();
        for step in steps {
            if retained(step) <= had.iter().find(|(n, ..)| n == herald_core::nats::ATTEMPTS_STREAM).map(|x| x.1) {
                continue;
            }
            pipelined(&floor_js, fill(&step.streams, &had)).await?;
            had = step.streams.clone();
            tokio::time::sleep(Duration::from_secs(3)).await;
            floor_points.push((retained(step).unwrap_or(0) as f64, mib(rss_kib(floor.pid().unwrap_or(0)))));
        }
        let floor_last = floor_points.last().map(|p| p.1).unwrap_or(0.0);
        drop(floor);

        // Slopes over the second half of each: the first half still carries the working set
        // settling under load (43–49 MiB per million in two runs, then flat).
        let points: Vec<(f64, f64)> =
            samples.iter().map(|s| (retained(s).unwrap_or(0) as f64, mib(s.nats_kib))).collect();
        let herald_growth = slope(&points[points.len() / 2..]) * 1e6;
        let floor_growth = slope(&floor_points[floor_points.len() / 2..]) * 1e6;
        let whole_growth = slope(&points) * 1e6;
        println!(
            "floor: {}",
            floor_points.iter().map(|(n, m)| format!("{n:.0} → {m:.1} MiB")).collect::<Vec<_>>().join(", ")
        );
        self.push(
            256,
            format!("soak: deliveries/s ({rate} events/s × {fanout} subscriptions, {seconds} s)"),
            last.deliveries as f64 / took.as_secs_f64(),
            "deliveries/s",
        );
        self.push(256, "soak: attempt records retained at the end", records_last as f64, "records");
        self.push(256, "soak: nats-server RSS at the end", mib(last.nats_kib), "MiB");
        self.push(256, "floor: nats-server RSS, the same messages under 4 subjects (idle)", floor_last, "MiB");
        self.push(256, "soak: nats-server growth per million deliveries retained, second half", herald_growth, "MiB");
        self.push(256, "floor: nats-server growth per million messages, second half", floor_growth, "MiB");
        self.push(
            256,
            "soak: nats-server growth over the floor's, per million retained",
            herald_growth - floor_growth,
            "MiB",
        );
        self.push(256, "soak: nats-server growth per million deliveries retained, whole window", whole_growth, "MiB");
        self.push(
            256,
            "soak: gateway RSS growth over the measured window",
            mib(last.gateway_kib) - mib(first.gateway_kib),
            "MiB",
        );
        self.push(
            256,
            "soak: dispatcher RSS growth over the measured window",
            mib(last.dispatcher_kib) - mib(first.dispatcher_kib),
            "MiB",
        );

        self.rows.extend(costs);
        dispatcher.stop().await;
        drop(gateway);
        Ok(())
    }

    /// On what the soak retained: the record check before a retry fired twice is sent (its
    /// record says delivered), and the attempts API.
    #[allow(clippy::too_many_arguments)]
    async fn record_costs(
        &mut self,
        js: &jetstream::Context,
        nats_pid: u32,
        gateway_url: &str,
        dispatcher: &Proc,
        published: &[(usize, String, time::OffsetDateTime)],
        subscriptions: &[(usize, String)],
        groups: &[(String, String)],
    ) -> anyhow::Result<()> {
        // Events spread over the 20 s to 5 s before the end, each to every subscription of its
        // group, again as attempt 2: a retry's check reads its partition from 30 s before it was
        // stored (some 25 s of records here), and the event's own record is somewhere in there,
        // as a retry fired twice finds it.
        let checks = self.args.soak_checks;
        let end = published.last().map(|p| p.2).unwrap_or_else(time::OffsetDateTime::now_utc);
        let span: Vec<_> = published
            .iter()
            .filter(|p| p.2 >= end - time::Duration::seconds(20) && p.2 < end - time::Duration::seconds(5))
            .collect();
        let events = (checks / self.args.soak_fanout).max(1);
        let recent: Vec<_> = span.iter().step_by((span.len() / events).max(1)).collect();
        let mut messages = Vec::new();
        'fill: for (g, id, at) in &recent {
            for (_, sub) in subscriptions.iter().filter(|(sg, _)| sg == g) {
                if messages.len() == checks {
                    break 'fill;
                }
                let (tenant, event_type) = &groups[*g];
                let delivery = herald_core::proto::Delivery {
                    event: Some(herald_core::proto::Event {
                        id: id.clone(),
                        r#type: event_type.clone(),
                        tenant: tenant.clone(),
                        time: herald_core::rfc3339(*at),
                        data: br#"{}"#.to_vec(),
                        ..Default::default()
                    }),
                    subscription_id: sub.clone(),
                    attempt: 2,
                    ..Default::default()
                };
                let subject = herald_core::nats::Partition::ZERO.delivery_subject(tenant, sub);
                messages.push((subject, PublishMessage::build().payload(delivery.encode_to_vec().into())));
            }
        }
        let count = messages.len();
        let skipped_before = dispatcher.counter(&self.http, "herald_redeliveries_skipped_total").await;
        let cpu_before = dispatcher.cpu_seconds();
        let nats_before = procs::cpu_seconds(&nats_pid.to_string());
        let started = Instant::now();
        pipelined(js, messages).await?;
        let deadline = started + Duration::from_secs(120);
        loop {
            let skipped = dispatcher.counter(&self.http, "herald_redeliveries_skipped_total").await - skipped_before;
            if skipped as usize >= count || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        let skipped = dispatcher.counter(&self.http, "herald_redeliveries_skipped_total").await - skipped_before;
        let cpu = dispatcher.cpu_seconds() - cpu_before;
        let nats_cpu = procs::cpu_seconds(&nats_pid.to_string()) - nats_before;
        let inconclusive = dispatcher.counter(&self.http, r#"herald_record_checks_total{result="inconclusive"}"#).await;
        println!(
            "record check: {count} retries of delivered events, {skipped} not sent again, in {:.2} s ({inconclusive} inconclusive)",
            took.as_secs_f64()
        );
        self.push(
            256,
            "record check: retries of delivered events checked per second",
            count as f64 / took.as_secs_f64(),
            "checks/s",
        );
        self.push(256, "record check: dispatcher CPU per check", cpu * 1e6 / count.max(1) as f64, "µs");
        self.push(256, "record check: nats-server CPU per check", nats_cpu * 1e6 / count.max(1) as f64, "µs");
        self.push(256, "record check: of them not sent again", skipped, "deliveries");

        // The attempts API: one event's attempts (with its time as `since`, and without), one
        // subscription's newest page.
        let sample: Vec<_> = published.iter().step_by((published.len() / 20).max(1)).take(20).collect();
        let timed = |path: String| {
            let http = self.http.clone();
            let url = format!("{gateway_url}{path}");
            async move {
                let started = Instant::now();
                let resp = http.get(url).bearer_auth(herald_harness::ADMIN_TOKEN).send().await.ok()?;
                let ok = resp.status().is_success();
                let body: serde_json::Value = serde_json::from_str(&resp.text().await.ok()?).ok()?;
                ok.then(|| (started.elapsed().as_secs_f64() * 1e3, body["data"].as_array().map(Vec::len).unwrap_or(0)))
            }
        };
        let (mut with_since, mut without, mut by_sub) = (Vec::new(), Vec::new(), Vec::new());
        let mut in_tenant = Vec::new();
        for (g, id, at) in &sample {
            let since = herald_core::rfc3339(*at - time::Duration::seconds(1));
            let tenant = &groups[*g].0;
            if let Some((ms, found)) = timed(format!("/v1/events/{id}/attempts?since={since}&tenant={tenant}")).await {
                anyhow::ensure!(found == self.args.soak_fanout, "{id}: {found} attempts found");
                in_tenant.push(ms);
            }
            if let Some((ms, found)) = timed(format!("/v1/events/{id}/attempts?since={since}")).await {
                anyhow::ensure!(found == self.args.soak_fanout, "{id}: {found} attempts found");
                with_since.push(ms);
            }
            if let Some((ms, found)) = timed(format!("/v1/events/{id}/attempts")).await {
                anyhow::ensure!(found == self.args.soak_fanout, "{id}: {found} attempts found");
                without.push(ms);
            }
            let sub = &subscriptions.iter().find(|(sg, _)| sg == g).expect("a subscription").1;
            if let Some((ms, _)) = timed(format!("/v1/subscriptions/{sub}/attempts?limit=50")).await {
                by_sub.push(ms);
            }
        }
        for (name, values) in [
            ("attempts API: one event's attempts, with `since` and `tenant` (median)", in_tenant),
            ("attempts API: one event's attempts, with `since` (median)", with_since),
            ("attempts API: one event's attempts, client id, no `since` (median)", without),
            ("attempts API: a subscription's newest 50 (median)", by_sub),
        ] {
            if !values.is_empty() {
                self.push(256, name, crate::median(values), "ms");
            }
        }
        Ok(())
    }
}

/// The least-squares slope of `points` (y per x); 0 with fewer than two.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let cov: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}
