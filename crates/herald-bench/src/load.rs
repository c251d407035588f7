//! The load the benchmark makes: pipelined JetStream publishing, the raw relay, HTTP posting.

use std::collections::VecDeque;
use std::future::IntoFuture as _;
use std::time::Instant;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use futures::StreamExt as _;
use serde_json::Value;

use crate::per_sec;

/// Publishes `messages` (built beforehand, so only publishing is timed) with up to 4,096
/// PubAcks outstanding; returns messages/s.
pub(crate) async fn pipelined(js: &jetstream::Context, messages: Vec<(String, PublishMessage)>) -> anyhow::Result<f64> {
    const WINDOW: usize = 4096;
    let n = messages.len();
    let started = Instant::now();
    let mut acks: VecDeque<PublishAckFuture> = VecDeque::with_capacity(WINDOW);
    for (subject, publish) in messages {
        if acks.len() == WINDOW {
            acks.pop_front().expect("full").into_future().await?;
        }
        acks.push_back(js.send_publish(subject, publish).await?);
    }
    for ack in acks {
        ack.into_future().await?;
    }
    Ok(per_sec(n, started.elapsed()))
}

/// The least a durable relay from JetStream to HTTP can do: publish `messages`, pull them with
/// a durable consumer, POST each to the receiver (`clients` at once) and ack it after the 2xx.
/// Returns messages/s from the first publish to the last ack sent.
pub(crate) async fn relay(
    js: &jetstream::Context,
    http: &reqwest::Client,
    url: &str,
    clients: usize,
    messages: Vec<(String, PublishMessage)>,
) -> anyhow::Result<f64> {
    let n = messages.len();
    let stream = js.get_stream("BENCH_RELAY").await?;
    let _ = stream.delete_consumer("relay").await;
    stream.purge().await?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("relay".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let consume = async {
        let pulled = consumer.stream().max_messages_per_batch(256).messages().await?;
        pulled
            .take(n)
            .for_each_concurrent(clients, |msg| async move {
                let Ok(msg) = msg else { return };
                let sent = http.post(url).body(msg.payload.clone()).send().await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    let _ = msg.ack().await;
                }
            })
            .await;
        anyhow::Ok(())
    };
    let (published, consumed) = tokio::join!(pipelined(js, messages), consume);
    published?;
    consumed?;
    Ok(per_sec(n, started.elapsed()))
}

/// An event as a service publishes it straight to NATS: JSON (recognised by its opening brace,
/// so no Content-Type header), its id as the dedup id.
pub(crate) fn json_event(id: &str, event: &Value) -> PublishMessage {
    PublishMessage::build().payload(serde_json::to_vec(event).expect("JSON").into()).message_id(id)
}

/// POSTs `bodies` (carrying `events` events in all) with `clients` requests at once; every one
/// must be answered 202. Returns events/s.
pub(crate) async fn post_all(
    http: &reqwest::Client,
    url: &str,
    clients: usize,
    bodies: Vec<String>,
    events: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let refused = futures::stream::iter(bodies)
        .map(|body| post_json(http, url, body))
        .buffer_unordered(clients)
        .filter(|status| std::future::ready(*status != 202))
        .count()
        .await;
    anyhow::ensure!(refused == 0, "{refused} requests were not accepted");
    Ok(per_sec(events, started.elapsed()))
}

/// POSTs a JSON body with the publish token; the status (0 when no answer came).
pub(crate) async fn post_json(http: &reqwest::Client, url: &str, body: String) -> u16 {
    let resp = http
        .post(url)
        .bearer_auth(herald_harness::PUBLISH_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    resp.map(|r| r.status().as_u16()).unwrap_or(0)
}
