//! Inbound webhooks: GitHub-signed requests spread over 100 sources (`POST /in/{id}`, each
//! checked, turned into an event and stored), paired in one sitting with plain single-event
//! ingest (`POST /v1/events`) at the same concurrency.

use serde_json::{Value, json};

use crate::Bench;
use crate::load::{Target, post_raw};

/// The row inbound webhooks are compared with.
pub(crate) const SINGLE_INGEST: &str = "HTTP ingest, one event per request";

impl Bench {
    /// The inbound measurement for one payload size: `events` requests per run.
    pub(crate) async fn inbound(&mut self, payload: usize, events: usize) -> anyhow::Result<()> {
        const SOURCES: usize = 100;
        let mut sources = Vec::with_capacity(SOURCES);
        for i in 0..SOURCES {
            let secret = format!("bench-inbound-secret-{i}");
            let body = json!({"provider": "github", "secret": secret, "event_type": "bench.inbound.{type}"});
            let resp = self.post_admin("/v1/sources", &body).await?;
            anyhow::ensure!(resp.status() == 201, "creating a source: {}", resp.text().await?);
            let created: Value = serde_json::from_str(&resp.text().await?)?;
            let id = created["id"].as_str().unwrap_or_default().to_owned();
            sources.push((
                format!("{}/in/{id}", self.gateway_url),
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
            ));
        }
        let data = Self::data(payload);
        let measured = self
            .paired_median_of(
                events,
                |b, n| b.single_ingest(n, &data),
                |b, n| {
                    // Signed before the clock starts, as a provider's requests arrive signed;
                    // sent as the single-event requests beside them are (`post_raw`).
                    let requests: anyhow::Result<Vec<Vec<u8>>> = (0..n)
                        .map(|i| {
                            let (url, key) = &sources[i % SOURCES];
                            let body = json!({"after": b.next_id("g"), "data": data}).to_string();
                            let tag = ring::hmac::sign(key, body.as_bytes());
                            let signature: String = tag.as_ref().iter().map(|x| format!("{x:02x}")).collect();
                            let signature = format!("sha256={signature}");
                            let delivery = b.next_id("d");
                            let headers = [
                                ("x-hub-signature-256", signature.as_str()),
                                ("x-github-event", "push"),
                                ("x-github-delivery", delivery.as_str()),
                                ("content-type", "application/json"),
                            ];
                            Ok(Target::parse(url)?.request(&headers, &body))
                        })
                        .collect();
                    let target = Target::parse(&sources[0].0);
                    let clients = b.args.concurrency;
                    async move {
                        // Every source is on the same gateway: one address for all.
                        let (requests, target) = (requests?, target?);
                        post_raw(&target, clients, requests, n).await
                    }
                },
            )
            .await?;
        let name = format!("inbound webhooks, {SOURCES} GitHub sources (POST /in/…)");
        self.push_paired(payload, name, measured, "events/s", SINGLE_INGEST);
        Ok(())
    }
}
