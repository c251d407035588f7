//! What operators watch: Prometheus metrics that parse and move, and one trace from the
//! publisher to the subscriber.

use std::collections::HashMap;
use std::time::Duration;

use herald_harness::{Receiver, Stack, free_port};
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
    let publish = |id: &str, traceparent: Option<String>| {
        let mut req = stack
            .http
            .post(format!("{}/v1/events", stack.gateway))
            .bearer_auth(herald_harness::ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(json!({"id": id, "type": "t.x", "data": {}}).to_string());
        if let Some(traceparent) = traceparent {
            req = req.header("traceparent", traceparent);
        }
        async move { assert_eq!(req.send().await.unwrap().status(), 202) }
    };
    publish("t-1", Some(format!("00-{trace_id}-00f067aa0ba902b7-01"))).await;
    let got = rx.wait_for(1, SOON).await;
    let traceparent = got[0].header("traceparent").unwrap();
    assert!(herald_core::trace::is_valid(traceparent), "{traceparent}");
    assert_eq!(&traceparent[3..35], trace_id, "the same trace");
    assert_ne!(&traceparent[36..52], "00f067aa0ba902b7", "a span of Herald's own");

    // Without a caller's trace (and no span export) none is stored with the event; the
    // dispatcher starts one for the webhook.
    publish("t-2", None).await;
    let got = rx.wait_for(2, SOON).await;
    let second = got.iter().find(|r| r.header("webhook-id") == Some("t-2")).expect("t-2 delivered");
    let started = second.header("traceparent").unwrap();
    assert!(herald_core::trace::is_valid(started) && &started[3..35] != trace_id, "{started}");
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let events = js.get_stream("HERALD_EVENTS").await.unwrap();
    let stored_trace = |seq| {
        let events = events.clone();
        async move {
            let stored = events.get_raw_message(seq).await.unwrap();
            stored.headers.get("traceparent").map(|v| v.as_str().to_owned())
        }
    };
    assert!(stored_trace(1).await.is_some_and(|t| &t[3..35] == trace_id), "the caller's trace is stored");
    assert_eq!(stored_trace(2).await, None, "no trace to continue, none stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_and_linked_publisher_to_subscriber() {
    use herald_core::otel::wire::ExportTraceServiceRequest;
    use prost::Message as _;
    use std::sync::{Arc, Mutex};

    // An in-test OTLP/HTTP collector.
    let spans: Arc<Mutex<Vec<(String, herald_core::otel::wire::Span)>>> = Arc::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: bytes::Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for rs in request.resource_spans {
                    let service = rs.resource.unwrap().attributes[0].value.clone().unwrap().string_value;
                    for ss in rs.scope_spans {
                        sink.lock().unwrap().extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
                    }
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut stack = Stack::start_with(false, &["--otlp-endpoint", &collector]).await;
    stack.start_dispatcher_with(&[("--otlp-endpoint", &collector)]);
    let rx = Receiver::start().await;
    stack.subscribe(&rx.url("/otel"), &["otel.*"], None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let publisher_span = "b7ad6b7169203331";
    let resp = stack
        .http
        .post(format!("{}/v1/events", stack.gateway))
        .bearer_auth(herald_harness::ADMIN_TOKEN)
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-{publisher_span}-01"))
        .body(json!({"id": "otel-1", "type": "otel.x", "data": {}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let webhook = rx.wait_for(1, SOON).await.remove(0);
    let webhook_span = webhook.header("traceparent").unwrap()[36..52].to_owned();

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let deadline = std::time::Instant::now() + SOON;
    let ours = loop {
        let ours: Vec<_> =
            spans.lock().unwrap().iter().filter(|(_, s)| hex(&s.trace_id) == trace_id).cloned().collect();
        if ours.len() >= 4 {
            break ours;
        }
        assert!(std::time::Instant::now() < deadline, "spans received: {}", ours.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let find =
        |name: &str| ours.iter().find(|(_, s)| s.name == name).unwrap_or_else(|| panic!("no {name} span")).clone();
    let (gw_service, ingest) = find("POST /v1/events");
    let (_, publish) = find("jetstream publish");
    let (disp_service, fanout) = find("fanout");
    let (_, attempt) = find("webhook attempt");
    assert_eq!((gw_service.as_str(), disp_service.as_str()), ("herald-gateway", "herald-dispatcher"));
    assert_eq!(hex(&ingest.parent_span_id), publisher_span, "ingest is a child of the publisher's span");
    assert_eq!(publish.parent_span_id, ingest.span_id, "the publish is a child of ingest");
    assert_eq!(fanout.parent_span_id, publish.span_id, "fan-out continues from the publish");
    assert_eq!(attempt.parent_span_id, fanout.span_id, "the attempt is a child of fan-out");
    assert_eq!(hex(&attempt.span_id), webhook_span, "the subscriber sees the attempt's span as its parent");
    assert!(attempt.attributes.iter().any(|kv| kv.key == "http.response.status_code"));
}
