//! `herald-bench`: measures Herald against the physical limits of the same machine in the same
//! run, so machine noise cancels in the ratios. It starts its own nats-server (JetStream), the
//! gateway and a dispatcher in-process, and a fast local receiver, then reports:
//!
//! - raw pipelined JetStream publish (many PubAcks in flight) and a raw POST loop to the
//!   receiver at the same concurrency: the limits;
//! - HTTP ingest through `POST /v1/events/batch` and `POST /v1/events`, as a ratio to raw publish;
//! - end to end, publish to receipt with one subscription, as a ratio to the raw POST loop.
//!
//! `--smoke` runs a tiny configuration (CI runs it so the benchmark cannot rot). Results are
//! printed as a table and written as JSON. A benchmark, not a test: it never fails on a number.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use herald_tests::{Receiver, Stack};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Herald against the raw limits of this machine")]
struct Args {
    /// Events per measurement.
    #[arg(long, default_value_t = 5_000)]
    events: usize,
    /// Payload size in bytes (the event's data).
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Repetitions of each measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A tiny configuration, to check the benchmark still runs.
    #[arg(long)]
    smoke: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/herald-bench.json")]
    json: std::path::PathBuf,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        (args.events, args.runs, args.concurrency) = (200, 1, 4);
    }
    let data = json!({"blob": "x".repeat(args.payload.saturating_sub(12))});
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    stack.subscribe(&rx.url("/bench"), &["bench.*"], None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let js = async_nats::jetstream::new(stack.nats.client().await);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.>".into()],
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(serde_json::to_vec(&data)?);
    let http = reqwest::Client::new();

    let mut raw_publish = Vec::new();
    let mut raw_post = Vec::new();
    let mut batch_ingest = Vec::new();
    let mut single_ingest = Vec::new();
    let mut end_to_end = Vec::new();
    for run in 0..args.runs {
        // Raw pipelined publish.
        let started = Instant::now();
        let mut acks = Vec::with_capacity(args.events);
        for i in 0..args.events {
            acks.push(js.publish(format!("bench.raw.{}", i % 16), payload.clone()).await?);
        }
        for ack in acks {
            ack.await?;
        }
        raw_publish.push(rate(args.events, started.elapsed()));

        // Raw POST loop to the receiver, same concurrency as the HTTP clients.
        let started = Instant::now();
        let url = rx.url("/raw");
        futures::stream::iter(0..args.events)
            .for_each_concurrent(args.concurrency, |_| {
                let (http, url, body) = (&http, &url, payload.clone());
                async move {
                    let _ = http.post(url.as_str()).body(body).send().await;
                }
            })
            .await;
        raw_post.push(rate(args.events, started.elapsed()));

        // HTTP ingest, batches of 100, and end to end with one subscription.
        let before = rx.count_on("/bench");
        let started = Instant::now();
        let batches: Vec<Vec<serde_json::Value>> = (0..args.events)
            .map(|i| json!({"id": format!("b{run}-{i}"), "type": "bench.x", "data": data}))
            .collect::<Vec<_>>()
            // Batches of up to 100, kept under the gateway's 256 KiB body limit.
            .chunks((200_000 / (args.payload + 100)).clamp(1, 100))
            .map(<[serde_json::Value]>::to_vec)
            .collect();
        futures::stream::iter(batches)
            .for_each_concurrent(args.concurrency.min(8), |events| {
                let (http, gateway) = (&http, &stack.gateway);
                async move {
                    let resp = http
                        .post(format!("{gateway}/v1/events/batch"))
                        .bearer_auth(herald_tests::PUBLISH_TOKEN)
                        .json_body(&json!({"events": events}))
                        .send()
                        .await;
                    assert!(resp.is_ok_and(|r| r.status() == 202), "batch refused");
                }
            })
            .await;
        batch_ingest.push(rate(args.events, started.elapsed()));
        let want = before + args.events;
        rx.wait_until(Duration::from_secs(600), "end to end", |r| {
            r.iter().filter(|r| r.path == "/bench").count() >= want
        })
        .await;
        end_to_end.push(rate(args.events, started.elapsed()));

        // HTTP ingest, one event per request.
        let n = args.events / 4;
        let started = Instant::now();
        futures::stream::iter(0..n)
            .for_each_concurrent(args.concurrency, |i| {
                let (http, gateway, data) = (&http, &stack.gateway, &data);
                async move {
                    let body = json!({"id": format!("s{run}-{i}"), "type": "bench.single", "data": data});
                    let resp = http
                        .post(format!("{gateway}/v1/events"))
                        .bearer_auth(herald_tests::PUBLISH_TOKEN)
                        .json_body(&body)
                        .send()
                        .await;
                    assert!(resp.is_ok_and(|r| r.status() == 202), "event refused");
                }
            })
            .await;
        single_ingest.push(rate(n, started.elapsed()));
    }

    let raw_publish = median(raw_publish);
    let raw_post = median(raw_post);
    let rows = [
        ("raw JetStream publish (pipelined)", raw_publish, None),
        ("raw POST loop to the receiver", raw_post, None),
        ("HTTP ingest, POST /v1/events/batch", median(batch_ingest), Some(raw_publish)),
        ("HTTP ingest, POST /v1/events", median(single_ingest), Some(raw_publish)),
        ("end to end, 1 subscription", median(end_to_end), Some(raw_post)),
    ];
    println!(
        "herald-bench: {} events, {} B payload, {} clients, median of {} run(s)",
        args.events, args.payload, args.concurrency, args.runs
    );
    println!("{:<40} {:>12} {:>8}", "measurement", "events/s", "ratio");
    let mut results = Vec::new();
    for (name, value, base) in rows {
        let ratio = base.map(|b| value / b);
        println!("{name:<40} {value:>12.0} {:>8}", ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into()));
        results.push(json!({"measurement": name, "events_per_second": value, "ratio": ratio}));
    }
    let report = json!({
        "events": args.events, "payload_bytes": args.payload, "concurrency": args.concurrency, "runs": args.runs,
        "results": results,
    });
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_vec_pretty(&report)?)?;
    println!("written to {}", args.json.display());
    Ok(())
}

/// A JSON body without reqwest's `json` feature.
trait JsonBody {
    fn json_body(self, value: &serde_json::Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, value: &serde_json::Value) -> Self {
        self.header("content-type", "application/json").body(value.to_string())
    }
}
