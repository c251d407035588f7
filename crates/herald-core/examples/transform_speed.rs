//! How long one call of a trivial transformation takes, in the engine alone.
use std::collections::BTreeMap;
use std::time::Instant;

fn main() {
    let t = herald_core::transform::Transformation::compile("function handler(webhook) { return webhook; }").unwrap();
    let body = format!(
        r#"{{"id":"evt_01J0000000000000000000000","type":"bench.fan1.p0","timestamp":"2026-12-06T22:00:00Z","tenant":"default","data":{{"pad":"{}"}}}}"#,
        "x".repeat(200)
    );
    let raw = serde_json::value::RawValue::from_string(body).unwrap();
    let headers = BTreeMap::new();
    let w = herald_core::transform::Webhook {
        method: "POST",
        url: "http://127.0.0.1:9/x",
        payload: &raw,
        event_type: "bench",
        headers: &headers,
    };
    for _ in 0..1000 {
        t.run(&w).unwrap();
    }
    let n = 20_000;
    let started = Instant::now();
    for _ in 0..n {
        t.run(&w).unwrap();
    }
    println!("{:.1} µs per call", started.elapsed().as_secs_f64() * 1e6 / n as f64);
}
