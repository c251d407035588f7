//! The limits (raw publish, the raw POST loop, the raw relay) and ingest: HTTP (batches, single
//! events) and NATS (JSON and protobuf events published straight to the stream), as ratios to
//! raw publish.

use std::time::Instant;

use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::load::{json_event, pipelined, post_all, relay};
use crate::{Bench, RAW_POST, RAW_PUBLISH, RAW_PUBLISH_DEDUP, RAW_RELAY, TENANT, per_sec};

impl Bench {
    /// `n` copies of `body` published to a plain stream, many PubAcks in flight.
    pub(crate) fn raw_publish(
        &self,
        n: usize,
        body: bytes::Bytes,
    ) -> impl Future<Output = anyhow::Result<f64>> + use<> {
        let js = self.js.clone();
        let messages =
            (0..n).map(|i| (format!("bench.raw.{}", i % 16), PublishMessage::build().payload(body.clone()))).collect();
        async move { pipelined(&js, messages).await }
    }

    /// `n` POSTs of `body` to the receiver, `--concurrency` at a time.
    pub(crate) fn raw_post(&self, n: usize, body: bytes::Bytes) -> impl Future<Output = anyhow::Result<f64>> + use<> {
        let (http, url, clients) = (self.http.clone(), self.sink.raw_url(), self.args.concurrency);
        async move {
            let started = Instant::now();
            futures::stream::iter(0..n)
                .for_each_concurrent(clients, |_| {
                    let (http, url, body) = (&http, &url, body.clone());
                    async move {
                        let _ = http.post(url.as_str()).body(body).send().await;
                    }
                })
                .await;
            Ok(per_sec(n, started.elapsed()))
        }
    }

    /// `n` events of `event_type` posted to the gateway at `gateway_url` in batches of
    /// `per_batch`, `--batch-clients` at a time; events/s.
    pub(crate) fn batch_ingest(
        &mut self,
        gateway_url: &str,
        n: usize,
        event_type: &str,
        data: &Value,
        per_batch: usize,
    ) -> impl Future<Output = anyhow::Result<f64>> + use<> {
        self.batch_ingest_to(gateway_url, n, event_type, data, per_batch, &[])
    }

    /// [`Bench::batch_ingest`], the events spread over `tenants` in turn (the token's own
    /// tenant if empty).
    pub(crate) fn batch_ingest_to(
        &mut self,
        gateway_url: &str,
        n: usize,
        event_type: &str,
        data: &Value,
        per_batch: usize,
        tenants: &[String],
    ) -> impl Future<Output = anyhow::Result<f64>> + use<> {
        let events: Vec<Value> = (0..n)
            .map(|i| {
                let mut event = json!({"id": self.next_id("b"), "type": event_type, "data": data});
                if !tenants.is_empty() {
                    event["tenant"] = json!(tenants[i % tenants.len()]);
                }
                event
            })
            .collect();
        let (url, clients) = (format!("{gateway_url}/v1/events/batch"), self.args.batch_clients);
        async move {
            let bodies = events.chunks(per_batch).map(|chunk| json!({"events": chunk}).to_string()).collect();
            post_all(&url, clients, bodies, n).await
        }
    }

    pub(crate) async fn limits_and_ingest(&mut self, payload: usize) -> anyhow::Result<()> {
        let events = self.args.events;
        let ingest = events.max(self.args.ingest_mib * 1024 * 1024 / payload.max(1));
        let data = Self::data(payload);
        let body = bytes::Bytes::from(serde_json::to_vec(&data)?);

        let raw = self.median_of(ingest, |b, n| b.raw_publish(n, body.clone())).await?;
        self.push(payload, RAW_PUBLISH, raw, "msg/s");
        let dedup = self
            .median_of(ingest, |b, n| {
                let body = body.clone();
                let js = b.js.clone();
                let messages = (0..n)
                    .map(|i| {
                        let publish = PublishMessage::build().payload(body.clone()).message_id(b.next_id("r"));
                        (format!("bench.raw.{}", i % 16), publish)
                    })
                    .collect();
                async move { pipelined(&js, messages).await }
            })
            .await?;
        self.push(payload, RAW_PUBLISH_DEDUP, dedup, "msg/s");
        let post = self.median_of(events, |b, n| b.raw_post(n, body.clone())).await?;
        self.push(payload, RAW_POST, post, "req/s");
        let relay = self
            .median_of(events, |b, n| {
                let messages = (0..n)
                    .map(|i| (format!("bench.relay.{}", i % 16), PublishMessage::build().payload(body.clone())))
                    .collect();
                let (js, http, url, clients) = (b.js.clone(), b.http.clone(), b.sink.raw_url(), b.args.concurrency);
                async move { relay(&js, &http, &url, clients, messages).await }
            })
            .await?;
        self.push(payload, RAW_RELAY, relay, "msg/s");
        if !self.wants("ingest") {
            return Ok(());
        }

        let nats_json = |id: String| {
            let event = json!({"id": id, "type": "bench.ingest.json", "data": data});
            json_event(&id, &event)
        };
        self.nats_ingest(payload, ingest, &body, "JSON", "bench.ingest.json", nats_json).await?;
        // The same as a protobuf herald.v1.Event, the format the gateway stores.
        let data_bytes = serde_json::to_vec(&data)?;
        let nats_proto = |id: String| {
            let event = herald_core::proto::Event { id: id.clone(), data: data_bytes.clone(), ..Default::default() };
            PublishMessage::build().payload(prost::Message::encode_to_vec(&event).into()).message_id(id)
        };
        self.nats_ingest(payload, ingest, &body, "protobuf", "bench.ingest.proto", nats_proto).await?;

        // Batches of up to the gateway's 100 events, kept under its 256 KiB body limit.
        let per_batch = (200_000 / (payload + 100)).clamp(1, 100);
        let batch = self
            .paired_median_of(
                ingest,
                |b, n| b.raw_publish(n, body.clone()),
                |b, n| {
                    let url = b.gateway_url.clone();
                    b.batch_ingest(&url, n, "bench.ingest.batch", &data, per_batch)
                },
            )
            .await?;
        self.push_paired(payload, format!("HTTP ingest, batch of {per_batch}"), batch, "events/s", RAW_PUBLISH);
        if self.wants("schema") {
            self.schema_cost(payload, ingest, per_batch).await?;
        }

        let single = self
            .paired_median_of(ingest / 2, |b, n| b.raw_publish(n, body.clone()), |b, n| b.single_ingest(n, &data))
            .await?;
        self.push_paired(payload, crate::inbound::SINGLE_INGEST, single, "events/s", RAW_PUBLISH);
        if self.wants("inbound") {
            self.inbound(payload, ingest / 2).await?;
        }
        Ok(())
    }

    /// `n` events posted one per request to `POST /v1/events`, `--concurrency` at a time;
    /// events/s.
    pub(crate) fn single_ingest(
        &mut self,
        n: usize,
        data: &Value,
    ) -> impl Future<Output = anyhow::Result<f64>> + use<> {
        let bodies: Vec<String> = (0..n)
            .map(|_| json!({"id": self.next_id("s"), "type": "bench.ingest.single", "data": data}).to_string())
            .collect();
        let (url, clients) = (format!("{}/v1/events", self.gateway_url), self.args.concurrency);
        async move { post_all(&url, clients, bodies, n).await }
    }

    /// NATS ingest: `events` events of `event_type`, each `message(id)`, published straight to
    /// `herald.events.…`, paired with raw publish of `body`.
    pub(crate) async fn nats_ingest(
        &mut self,
        payload: usize,
        events: usize,
        body: &bytes::Bytes,
        format: &str,
        event_type: &str,
        message: impl Fn(String) -> PublishMessage,
    ) -> anyhow::Result<()> {
        let subject = herald_core::nats::event_subject(TENANT, event_type);
        let measured = self
            .paired_median_of(
                events,
                |b, n| b.raw_publish(n, body.clone()),
                |b, n| {
                    let js = b.js.clone();
                    let messages = (0..n).map(|_| (subject.clone(), message(b.next_id("n")))).collect();
                    async move { pipelined(&js, messages).await }
                },
            )
            .await?;
        let name = format!("NATS ingest, {format} (herald.events.…)");
        self.push_paired(payload, name, measured, "events/s", RAW_PUBLISH);
        Ok(())
    }
}
