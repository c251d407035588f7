//! What the event-type catalog's schemas cost at ingest: HTTP ingest in batches of a type whose
//! schema every event meets, against the same ingest of a type without a schema, in pairs.

use serde_json::json;

use crate::Bench;

impl Bench {
    /// The schema measurement for one payload size (`n` events a run, `per_batch` a request).
    pub(crate) async fn schema_cost(&mut self, payload: usize, n: usize, per_batch: usize) -> anyhow::Result<()> {
        const TYPE: &str = "bench.ingest.schema";
        // What a producer's contract typically says of such an event: an object with a required
        // string property of bounded length and nothing else.
        let schema = json!({"type": "object", "required": ["blob"], "additionalProperties": false,
            "properties": {"blob": {"type": "string", "maxLength": 1_048_576}}});
        let resp = self.post_admin("/v1/event-types", &json!({"name": TYPE, "schema": schema})).await?;
        // 409: made for an earlier payload size.
        let created = resp.status().is_success() || resp.status() == reqwest::StatusCode::CONFLICT;
        anyhow::ensure!(created, "creating the event type: {}", resp.text().await?);
        // Every gateway replica follows the catalog; one moment for the watch.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let data = Self::data(payload);
        let rates = self
            .paired_median_of(
                n,
                |b, n| {
                    let url = b.gateway_url.clone();
                    b.batch_ingest(&url, n, "bench.ingest.batch", &data, per_batch)
                },
                |b, n| {
                    let url = b.gateway_url.clone();
                    b.batch_ingest(&url, n, TYPE, &data, per_batch)
                },
            )
            .await?;
        self.rows.push(crate::Row {
            payload,
            name: format!("HTTP ingest, batch of {per_batch}, type with a JSON Schema"),
            value: rates.0,
            unit: "events/s",
            ratio: Some((rates.1, "no schema")),
            of_relay: None,
        });
        Ok(())
    }
}
