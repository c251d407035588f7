//! What operators watch: Prometheus metrics that parse and move, and one trace from the
//! publisher to the subscriber.

use std::collections::HashMap;
use std::time::Duration;

use herald_tests::{Receiver, Stack, free_port};
use serde_json::json;

use crate::SOON;

/// Parses Prometheus text into `series → value`, failing on any malformed line.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            assert!(matches!(words.first(), Some(&"HELP") | Some(&"TYPE")), "bad comment: {line}");
            if words[0] == "TYPE" {
                assert!(matches!(words.get(2), Some(&"counter" | &"gauge" | &"histogram")), "bad type: {line}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels: {line}");
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        out.insert(series.to_owned(), value);
    }
    out
}

async fn scrape(url: &str) -> HashMap<String, f64> {
    let resp = reqwest::get(url).await.unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    parse(&resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_as_deliveries_happen() {
    let mut stack = Stack::gateway_only().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    stack.start_dispatcher_with(&[("--listen", &listen)]);
    let dispatcher = format!("http://{listen}/metrics");
    let deadline = std::time::Instant::now() + SOON;
    while reqwest::get(format!("http://{listen}/readyz")).await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(std::time::Instant::now() < deadline, "dispatcher not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gateway = format!("{}/metrics", stack.gateway);
    let before_gw = scrape(&gateway).await;
    let before = scrape(&dispatcher).await;

    let rx = Receiver::start().await;
    stack.subscribe(&rx.url("/m"), &["m.*"], None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        stack.publish(json!({"id": format!("m-{i}"), "type": "m.x", "data": {}})).await;
    }
    let (status, _) = stack.publish(json!({"type": "m..bad", "data": {}})).await;
    assert_eq!(status, 400);
    rx.wait_for(3, SOON).await;
    tokio::time::sleep(Duration::from_secs(6)).await; // the gauges refresh every 5 s

    let after_gw = scrape(&gateway).await;
    let after = scrape(&dispatcher).await;
    let delta = |a: &HashMap<String, f64>, b: &HashMap<String, f64>, k: &str| {
        a.get(k).copied().unwrap_or(0.0) - b.get(k).copied().unwrap_or(0.0)
    };
    assert!(delta(&after_gw, &before_gw, r#"herald_events_ingested_total{outcome="accepted"}"#) >= 3.0, "{after_gw:?}");
    assert!(delta(&after_gw, &before_gw, r#"herald_events_ingested_total{outcome="invalid"}"#) >= 1.0);
    assert!(delta(&after_gw, &before_gw, "herald_publish_duration_seconds_count") >= 3.0);
    assert!(
        delta(&after, &before, r#"herald_delivery_attempts_total{outcome="delivered",status_class="2xx"}"#) >= 3.0,
        "{after:?}"
    );
    assert!(delta(&after, &before, r#"herald_attempt_duration_seconds_count{status_class="2xx"}"#) >= 3.0);
    assert!(delta(&after, &before, r#"herald_fanout_events_total{outcome="fanned_out"}"#) >= 3.0);
    assert!(after.contains_key(r#"herald_consumer_messages{consumer="herald-deliver",state="pending"}"#), "lag gauge");
    assert!(after.contains_key("herald_circuits_open"));
    // No unbounded labels: no URL, event id or subscription id in any series.
    for series in after.keys().chain(after_gw.keys()) {
        assert!(!series.contains("http://") && !series.contains("m-0") && !series.contains("sub_"), "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publishers_trace_reaches_the_subscriber() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    stack.subscribe(&rx.url("/t"), &["t.*"], None).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = stack
        .http
        .post(format!("{}/v1/events", stack.gateway))
        .bearer_auth(herald_tests::ADMIN_TOKEN)
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body(json!({"id": "t-1", "type": "t.x", "data": {}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let got = rx.wait_for(1, SOON).await;
    let traceparent = got[0].header("traceparent").unwrap();
    assert!(herald_core::trace::is_valid(traceparent), "{traceparent}");
    assert_eq!(&traceparent[3..35], trace_id, "the same trace");
    assert_ne!(&traceparent[36..52], "00f067aa0ba902b7", "a span of Herald's own");
}
