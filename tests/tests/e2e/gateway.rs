//! The gateway's contract: validation with problem+json, auth, batches, and honesty when NATS
//! is down (503, never a false 2xx).

use std::time::{Duration, Instant};

use herald_harness::{PUBLISH_TOKEN, Receiver, Stack};
use reqwest::Method;
use serde_json::json;

use crate::SOON;

async fn raw_post(stack: &Stack, token: Option<&str>, path: &str, body: Vec<u8>) -> (u16, String, serde_json::Value) {
    let mut req =
        stack.http.post(format!("{}{path}", stack.gateway)).header("content-type", "application/json").body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = serde_json::from_slice(&resp.bytes().await.unwrap_or_default()).unwrap_or(serde_json::Value::Null);
    (status, ct, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_problem_json_and_nothing_is_published() {
    let stack = Stack::start_with(false, &["--max-body", "1KiB"]).await;
    // (what, token, body, expected status, expected problem type)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("malformed JSON", Some(PUBLISH_TOKEN), b"{\"type\": ".to_vec(), 400, "malformed-json"),
        ("missing type", Some(PUBLISH_TOKEN), br#"{"data": {}}"#.to_vec(), 400, "invalid-request"),
        ("missing data", Some(PUBLISH_TOKEN), br#"{"type": "a.b"}"#.to_vec(), 400, "invalid-request"),
        ("bad type", Some(PUBLISH_TOKEN), br#"{"type": "a..b", "data": 1}"#.to_vec(), 400, "invalid-request"),
        (
            "bad id",
            Some(PUBLISH_TOKEN),
            br#"{"id": "has.dot", "type": "a.b", "data": 1}"#.to_vec(),
            400,
            "invalid-request",
        ),
        (
            "bad tenant",
            Some(PUBLISH_TOKEN),
            br#"{"tenant": "a b", "type": "a.b", "data": 1}"#.to_vec(),
            400,
            "invalid-request",
        ),
        (
            "unknown field",
            Some(PUBLISH_TOKEN),
            br#"{"type": "a.b", "data": 1, "colour": 2}"#.to_vec(),
            400,
            "malformed-json",
        ),
        (
            "oversized",
            Some(PUBLISH_TOKEN),
            format!(r#"{{"type":"a.b","data":"{}"}}"#, "x".repeat(2000)).into_bytes(),
            413,
            "payload-too-large",
        ),
        ("no token", None, br#"{"type": "a.b", "data": 1}"#.to_vec(), 401, "unauthorized"),
        ("bad token", Some("not-a-real-token-at-all"), br#"{"type": "a.b", "data": 1}"#.to_vec(), 401, "unauthorized"),
        (
            "tenant token publishing for another tenant",
            Some("test-acme-token-0123456789"),
            br#"{"type": "a.b", "data": 1, "tenant": "globex"}"#.to_vec(),
            403,
            "forbidden",
        ),
    ];
    for (what, token, body, want_status, want_type) in cases {
        let (status, ct, problem) = raw_post(&stack, token, "/v1/events", body).await;
        assert_eq!(status, want_status, "{what}: {problem}");
        assert_eq!(ct, "application/problem+json", "{what}");
        assert_eq!(problem["type"], format!("urn:herald:problem:{want_type}"), "{what}: {problem}");
        assert_eq!(problem["status"], want_status, "{what}");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: detail");
    }
    // The field at fault is named.
    let (_, _, p) =
        raw_post(&stack, Some(PUBLISH_TOKEN), "/v1/events", br#"{"id": "has.dot", "type": "a.b", "data": 1}"#.to_vec())
            .await;
    assert_eq!(p["field"], "id");
    assert!(p["detail"].as_str().unwrap().contains("'.'") || p["detail"].as_str().unwrap().contains("\".\""), "{p}");

    assert_eq!(stack.stream_messages("HERALD_EVENTS").await, 0, "nothing was published");
    // Unknown routes are problem+json too.
    let (status, _, body) = stack.call(Method::GET, "/v1/nope", None).await;
    assert_eq!((status, body["type"].as_str()), (404, Some("urn:herald:problem:not-found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reports_each_item_and_delivers_the_valid_ones() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    stack.subscribe(&rx.url("/b"), &["batch.*"], None).await;

    let events: Vec<_> =
        (0..20).map(|i| json!({"id": format!("b-{i}"), "type": "batch.item", "data": {"i": i}})).collect();
    let (status, _, body) = stack.call(Method::POST, "/v1/events/batch", Some(json!({"events": events}))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 20);
    assert_eq!(body["results"].as_array().unwrap().len(), 20);
    assert_eq!(body["results"][7]["id"], "b-7");

    let mixed = json!({"events": [
        {"id": "m-1", "type": "batch.ok", "data": 1},
        {"id": "m.2", "type": "batch.ok", "data": 1},
        {"id": "b-3", "type": "batch.item", "data": {"i": 3}},
        {"type": "batch.ok"}
    ]});
    let (status, _, body) = stack.call(Method::POST, "/v1/events/batch", Some(mixed)).await;
    assert_eq!(status, 207, "{body}");
    let r = body["results"].as_array().unwrap();
    assert_eq!((r[0]["status"].as_u64(), r[0]["duplicate"].as_bool()), (Some(202), Some(false)));
    assert_eq!(r[1]["status"], 400);
    assert_eq!(r[1]["error"]["field"], "id");
    assert_eq!((r[2]["status"].as_u64(), r[2]["duplicate"].as_bool()), (Some(202), Some(true)));
    assert_eq!(r[3]["status"], 400);
    assert_eq!((body["accepted"].as_u64(), body["failed"].as_u64()), (Some(2), Some(2)));

    let (status, _, body) = stack.call(Method::POST, "/v1/events/batch", Some(json!({"events": []}))).await;
    assert_eq!(status, 400, "{body}");

    rx.wait_for(21, SOON).await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    let mut ids: Vec<String> = rx.received().iter().map(|r| r.header("webhook-id").unwrap().to_owned()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 21, "20 batch items and m-1, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_means_503_and_nats_back_means_accepted_without_restart() {
    let mut stack = Stack::start_with(false, &[]).await;
    let event = |id: &str| json!({"id": id, "type": "outage.test", "data": {}});
    let (status, _) = stack.publish(event("before")).await;
    assert_eq!(status, 202);

    stack.nats.stop();
    let (status, headers, body) = stack.call(Method::POST, "/v1/events", Some(event("during"))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers.get("content-type").unwrap(), "application/problem+json");
    assert!(headers.get("retry-after").is_some(), "503 carries Retry-After");
    assert_eq!(body["type"], "urn:herald:problem:broker-unavailable");
    let (status, _, _) = stack.call(Method::GET, "/readyz", None).await;
    assert_eq!(status, 503, "not ready while NATS is down");

    stack.nats.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = stack.publish(event("after")).await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 503, "only 503 while reconnecting: {body}");
        assert!(Instant::now() < deadline, "gateway never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A 503 says "may not be stored, retry with the same id": the publish can sit in the
    // client's buffer until NATS is back (the gateway had not yet noticed the connection gone)
    // and be stored then. Retried as the problem says, it is stored once either way.
    let (status, body) = stack.publish(event("during")).await;
    assert!(status == 202 || status == 200, "the retried event is accepted: {status} {body}");
    // What was accepted before the outage survived it, and nothing is stored twice.
    assert_eq!(stack.stream_messages("HERALD_EVENTS").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let stack = Stack::start_with(false, &[]).await;
    let (status, _, body) = stack.call_as("", Method::GET, "/healthz", None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, headers, _) = stack.call_as("", Method::GET, "/readyz", None).await;
    assert_eq!(status, 200);
    assert!(headers.get("x-request-id").is_some_and(|v| v.len() == 26), "a generated request id");
    let resp =
        stack.http.get(format!("{}/healthz", stack.gateway)).header("x-request-id", "req-42").send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-42", "the caller's request id is kept");
}

/// Reads from `conn` until the server closes it (end of stream or a reset), for at most `limit`;
/// returns whether it did.
async fn closed_within(conn: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a 408 or the like before the close
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_half_a_request_or_nothing_is_cut_off() {
    use tokio::io::AsyncWriteExt as _;
    let stack = Stack::start_with(false, &["--header-timeout", "1s"]).await;
    let addr = stack.gateway.trim_start_matches("http://").to_owned();
    let mut half = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"POST /v1/events HTTP/1.1\r\nhost: herald\r\ncontent-type: appl").await.unwrap();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A kept-alive connection, idle after a complete request.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: herald\r\n\r\n").await.unwrap();
    for (what, conn) in [("half a request", &mut half), ("nothing", &mut silent), ("idle after a request", &mut idle)] {
        assert!(closed_within(conn, Duration::from_secs(10)).await, "a connection that sent {what} stays open");
    }
    // Meanwhile the gateway serves everyone else.
    let (status, _, _) = stack.call(Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_within_its_grace_while_clients_hold_connections_open() {
    use tokio::io::AsyncWriteExt as _;
    herald_harness::init();
    let nats = herald_harness::NatsServer::start();
    let config = herald_harness::gateway_config(&nats.url(), &["--header-timeout", "60s", "--shutdown-grace", "2s"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let gateway = tokio::spawn(herald_gateway::run(config, listener, stop.clone().cancelled_owned()));
    let http = reqwest::Client::new();
    let deadline = Instant::now() + SOON;
    while !http.get(format!("http://{addr}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "gateway not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Clients holding connections: half a request each, and idle ones.
    let mut held = Vec::new();
    for i in 0..300 {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            conn.write_all(b"POST /v1/events HTTP/1.1\r\nhost: herald\r\n").await.unwrap();
        }
        held.push(conn);
    }
    let started = Instant::now();
    stop.cancel();
    let finished = tokio::time::timeout(Duration::from_secs(30), gateway).await;
    assert!(finished.is_ok(), "the gateway was still running 30 s after shutdown with {} connections open", held.len());
    finished.unwrap().unwrap().unwrap();
    // Not a timing assertion: the bound is the 30 s above; this says how long it took.
    eprintln!("gateway stopped {:?} after shutdown (grace 2 s)", started.elapsed());
    drop(held);
}
