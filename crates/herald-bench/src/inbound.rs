//! Inbound webhooks: GitHub-signed requests spread over 100 sources (`POST /in/{id}`, each
//! checked, turned into an event and stored), paired in one sitting with plain single-event
//! ingest (`POST /v1/events`) at the same concurrency.

use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::{Bench, per_sec};

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
                    // Signed before the clock starts, as a provider's requests arrive signed.
                    let requests: Vec<(String, String, String, String)> = (0..n)
                        .map(|i| {
                            let (url, key) = &sources[i % SOURCES];
                            let body = json!({"after": b.next_id("g"), "data": data}).to_string();
                            let tag = ring::hmac::sign(key, body.as_bytes());
                            let signature: String = tag.as_ref().iter().map(|x| format!("{x:02x}")).collect();
                            (url.clone(), format!("sha256={signature}"), b.next_id("d"), body)
                        })
                        .collect();
                    let (http, clients) = (b.http.clone(), b.args.concurrency);
                    async move {
                        let started = std::time::Instant::now();
                        let refused = futures::stream::iter(requests)
                            .map(|(url, signature, delivery, body)| {
                                let http = &http;
                                async move {
                                    let sent = http
                                        .post(url)
                                        .header("x-hub-signature-256", signature)
                                        .header("x-github-event", "push")
                                        .header("x-github-delivery", delivery)
                                        .header("content-type", "application/json")
                                        .body(body)
                                        .send()
                                        .await;
                                    sent.map(|r| r.status().as_u16()).unwrap_or(0)
                                }
                            })
                            .buffer_unordered(clients)
                            .filter(|status| std::future::ready(*status != 202))
                            .count()
                            .await;
                        anyhow::ensure!(refused == 0, "{refused} inbound requests were not accepted");
                        Ok(per_sec(n, started.elapsed()))
                    }
                },
            )
            .await?;
        let name = format!("inbound webhooks, {SOURCES} GitHub sources (POST /in/…)");
        self.push_paired(payload, name, measured, "events/s", SINGLE_INGEST);
        Ok(())
    }
}
