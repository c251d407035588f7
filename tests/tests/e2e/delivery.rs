//! Events in, signed webhooks out: over HTTP and straight from NATS, retries, duplicates,
//! matching and tenant separation.

use std::time::Duration;

use async_nats::jetstream;
use herald_harness::{Receiver, Stack};
use prost::Message as _;
use serde_json::json;

use crate::SOON;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_event_is_delivered_once_signed_with_the_specified_headers() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    let mut sub = json!({"url": rx.url("/hook"), "event_types": ["order.*"], "headers": {"X-Api-Key": "k-123"}});
    sub["tenant"] = json!("default");
    let (status, _, sub) = stack.call(reqwest::Method::POST, "/v1/subscriptions", Some(sub)).await;
    assert_eq!(status, 201, "{sub}");
    let secret = sub["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));

    // Sent as raw text: `data` must reach the subscriber byte for byte, spacing and key order kept.
    let raw = r#"{"id": "ord_1", "type": "order.created", "data": {"total": 42, "items": ["a"]}, "time": "2026-01-02T03:04:05Z"}"#;
    let resp = stack
        .http
        .post(format!("{}/v1/events", stack.gateway))
        .bearer_auth(herald_harness::PUBLISH_TOKEN)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let accepted: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(accepted["id"], "ord_1");
    assert_eq!(accepted["duplicate"], false);
    assert!(accepted["seq"].as_u64().unwrap() >= 1);

    let got = rx.wait_for(1, SOON).await;
    let req = &got[0];
    assert_eq!(req.path, "/hook");
    req.verify(secret).expect("signature verifies");
    assert_eq!(req.method, "POST", "webhooks are POSTed");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("webhook-id"), Some("ord_1"));
    assert_eq!(req.header("user-agent"), Some(format!("Herald/{}", herald_core::VERSION).as_str()));
    assert_eq!(req.header("x-api-key"), Some("k-123"));
    assert!(herald_core::trace::is_valid(req.header("traceparent").unwrap()));
    let ts: i64 = req.header("webhook-timestamp").unwrap().parse().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((now - ts).abs() < 60, "timestamp {ts} vs now {now}");
    assert_eq!(
        std::str::from_utf8(&req.body).unwrap(),
        r#"{"id":"ord_1","type":"order.created","timestamp":"2026-01-02T03:04:05Z","tenant":"default","data":{"total": 42, "items": ["a"]}}"#
    );
    // A different secret does not verify it.
    let other = herald_signature::Secret::generate().to_text();
    assert!(req.verify(&other).is_err());

    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.received().len(), 1, "delivered exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_on_nats_as_protobuf_and_json_with_or_without_content_type_are_delivered() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    let sub = stack.subscribe(&rx.url("/n"), &["user.>"], Some("acme")).await;
    let secret = sub["secret"].as_str().unwrap();
    let js = jetstream::new(stack.nats.client().await);

    // Protobuf with everything but tenant and type, which come from the subject.
    let event =
        herald_core::proto::Event { id: "pb-1".into(), data: br#"{"via":"protobuf"}"#.to_vec(), ..Default::default() };
    js.publish("herald.events.acme.user.signed_up", event.encode_to_vec().into()).await.unwrap().await.unwrap();

    // JSON without an id: the Nats-Msg-Id becomes the event id.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    headers.insert("Nats-Msg-Id", "json-1");
    js.publish_with_headers("herald.events.acme.user.deleted", headers, r#"{"data":{"via":"json"}}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    // JSON with no headers at all: recognised by its opening brace.
    js.publish("herald.events.acme.user.renamed", r#"{"id":"bare-1","data":{"via":"bare json"}}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();

    let got = rx.wait_for(3, SOON).await;
    let mut seen: Vec<(String, String, String)> = got
        .iter()
        .map(|r| {
            r.verify(secret).expect("signature verifies");
            let body = r.json();
            assert_eq!(body["tenant"], "acme");
            (
                body["id"].as_str().unwrap().to_owned(),
                body["type"].as_str().unwrap().to_owned(),
                body["data"]["via"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("bare-1".to_owned(), "user.renamed".to_owned(), "bare json".to_owned()),
            ("json-1".to_owned(), "user.deleted".to_owned(), "json".to_owned()),
            ("pb-1".to_owned(), "user.signed_up".to_owned(), "protobuf".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_on_nats_are_dead_lettered_not_delivered_and_do_not_block() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    stack.subscribe(&rx.url("/x"), &[">"], None).await;
    let js = jetstream::new(stack.nats.client().await);

    // Not protobuf; JSON with bad data; JSON whose tenant contradicts the subject.
    js.publish("herald.events.default.order.bad", vec![0xff, 0xff, 0x01].into()).await.unwrap().await.unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert("Content-Type", "application/json");
    js.publish_with_headers("herald.events.default.order.bad", h.clone(), r#"{"data":{nope}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish_with_headers("herald.events.default.order.bad", h.clone(), r#"{"tenant":"other","data":1}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    // A good one after them still flows.
    js.publish_with_headers("herald.events.default.order.good", h, r#"{"id":"good-1","data":1}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();

    let got = rx.wait_for(1, SOON).await;
    assert_eq!(got[0].header("webhook-id"), Some("good-1"));
    stack.wait_consumer_drained("HERALD_EVENTS", "herald-fanout", SOON).await;
    assert_eq!(stack.stream_messages("HERALD_DLQ").await, 3);

    // Events are fanned out concurrently, so the letters may be in any order.
    let stream = js.get_stream("HERALD_DLQ").await.unwrap();
    let mut letters = Vec::new();
    for seq in 1..=3 {
        let stored = stream.get_raw_message(seq).await.unwrap();
        assert_eq!(stored.subject.as_str(), "herald.dlq.default._invalid");
        letters.push(herald_core::proto::DeadLetter::decode(stored.payload.as_ref()).unwrap());
    }
    let not_protobuf = letters.iter().find(|l| l.raw_payload == [0xff, 0xff, 0x01]).expect("the binary garbage");
    assert!(not_protobuf.reason.contains("protobuf"), "{}", not_protobuf.reason);
    assert_eq!(not_protobuf.raw_subject, "herald.events.default.order.bad");
    let wrong_tenant = letters.iter().find(|l| l.raw_payload.starts_with(b"{\"tenant\"")).expect("the tenant mismatch");
    assert!(wrong_tenant.reason.contains("tenant"), "{}", wrong_tenant.reason);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.received().len(), 1, "invalid events never reach a subscriber");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receiver_gets_retries_until_it_answers_2xx_then_nothing_more() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    rx.respond_with(&[500, 500]);
    let sub = stack.subscribe(&rx.url("/r"), &["job.done"], None).await;
    let (status, _) = stack.publish(json!({"id": "job-7", "type": "job.done", "data": {"ok": true}})).await;
    assert_eq!(status, 202);

    let got = rx.wait_for(3, Duration::from_secs(30)).await;
    for r in &got {
        assert_eq!(r.header("webhook-id"), Some("job-7"), "same id across retries");
        r.verify(sub["secret"].as_str().unwrap()).unwrap();
    }
    // Each retry is a fresh signature over a fresh timestamp, same body.
    assert_eq!(got[0].body, got[2].body);

    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rx.received().len(), 3, "no deliveries after the 2xx");
    assert_eq!(stack.consumer_backlog("HERALD_DELIVERIES", "herald-deliver").await, (0, 0), "acked");
    // Three attempts recorded: two retries and the delivery.
    assert_eq!(stack.stream_messages("HERALD_ATTEMPTS").await, 3);
    assert_eq!(stack.stream_messages("HERALD_DLQ").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_are_dead_lettered_with_the_last_error() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    rx.respond_with(&[503, 503, 503, 503, 503]);
    let sub = stack.subscribe(&rx.url("/d"), &["x.y"], None).await;
    stack.publish(json!({"id": "dead-1", "type": "x.y", "data": 1})).await;

    // Schedule 1s,1s,1s: four attempts in all, then the DLQ.
    rx.wait_for(4, Duration::from_secs(30)).await;
    let js = jetstream::new(stack.nats.client().await);
    let deadline = std::time::Instant::now() + SOON;
    while stack.stream_messages("HERALD_DLQ").await == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let letter = js.get_stream("HERALD_DLQ").await.unwrap().get_raw_message(1).await.unwrap();
    assert_eq!(letter.subject.as_str(), format!("herald.dlq.default.{}", sub["id"].as_str().unwrap()));
    let letter = herald_core::proto::DeadLetter::decode(letter.payload.as_ref()).unwrap();
    let delivery = letter.delivery.unwrap();
    assert_eq!(delivery.attempt, 4);
    assert_eq!(delivery.last_status, 503);
    assert!(letter.reason.contains("4 attempts"), "{}", letter.reason);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.received().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_event_id_is_reported_duplicate_and_delivered_once() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    stack.subscribe(&rx.url("/dup"), &["order.paid"], None).await;
    let event = json!({"id": "pay-1", "type": "order.paid", "data": {"n": 1}});
    let (s1, first) = stack.publish(event.clone()).await;
    let (s2, second) = stack.publish(event).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!(first["seq"], second["seq"], "the duplicate points at the original");
    rx.wait_for(1, SOON).await;
    stack.wait_consumer_drained("HERALD_EVENTS", "herald-fanout", SOON).await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(rx.received().len(), 1);
    assert_eq!(stack.stream_messages("HERALD_EVENTS").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_select_types_and_tenants_never_see_each_others_events() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    stack.subscribe(&rx.url("/a-star"), &["order.*"], Some("a")).await;
    stack.subscribe(&rx.url("/a-rest"), &["order.>"], Some("a")).await;
    stack.subscribe(&rx.url("/a-exact"), &["order.created"], Some("a")).await;
    stack.subscribe(&rx.url("/b-all"), &[">"], Some("b")).await;

    for (id, ty, tenant) in [
        ("e1", "order.created", "a"),
        ("e2", "order.created.v2", "a"),
        ("e3", "invoice.paid", "a"),
        ("e4", "order.created", "b"),
    ] {
        let (status, body) = stack.publish(json!({"id": id, "type": ty, "tenant": tenant, "data": {}})).await;
        assert_eq!(status, 202, "{body}");
    }
    // e1 → a-star, a-rest, a-exact; e2 → a-rest; e3 → nobody; e4 → b-all only.
    rx.wait_for(5, SOON).await;
    stack.wait_consumer_drained("HERALD_EVENTS", "herald-fanout", SOON).await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    let ids = |path: &str| {
        let mut v: Vec<String> =
            rx.received_on(path).iter().map(|r| r.header("webhook-id").unwrap().to_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(ids("/a-star"), ["e1"]);
    assert_eq!(ids("/a-rest"), ["e1", "e2"]);
    assert_eq!(ids("/a-exact"), ["e1"]);
    assert_eq!(ids("/b-all"), ["e4"], "tenant b sees only its own event");
    for r in rx.received_on("/b-all") {
        assert_eq!(r.json()["tenant"], "b");
    }
    assert_eq!(rx.received().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_resume_after_a_nats_restart_without_restarting_herald() {
    let mut stack = Stack::start().await;
    let rx = Receiver::start().await;
    stack.subscribe(&rx.url("/resume"), &["resume.*"], None).await;
    stack.publish(json!({"id": "r-1", "type": "resume.test", "data": {}})).await;
    rx.wait_for(1, SOON).await;

    stack.nats.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.nats.restart();

    // Publish until the gateway has reconnected, then expect the dispatcher to deliver too.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stack.publish(json!({"id": "r-2", "type": "resume.test", "data": {}})).await.0 != 202 {
        assert!(std::time::Instant::now() < deadline, "gateway never reconnected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rx.wait_until(Duration::from_secs(45), "r-2 after the restart", |r| {
        r.iter().any(|r| r.header("webhook-id") == Some("r-2"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_attempts_to_a_healthy_endpoint_are_made_inline_unless_turned_off() {
    for (inline, stored) in [("64", 0), ("0", 1)] {
        let mut stack = Stack::gateway_only().await;
        let rx = Receiver::start().await;
        let sub = stack.subscribe(&rx.url("/fast"), &["fast.path"], None).await;
        stack.start_dispatcher_with(&[("--inline-attempts", inline)]);
        let (status, _) = stack.publish(json!({"id": "fast-1", "type": "fast.path", "data": {"n": 1}})).await;
        assert_eq!(status, 202);

        let got = rx.wait_for(1, SOON).await;
        got[0].verify(sub["secret"].as_str().unwrap()).expect("signed");
        assert_eq!(got[0].header("webhook-id"), Some("fast-1"));
        // The event is acked once the inline attempt settled, and its attempt is on record.
        stack.wait_consumer_drained("HERALD_EVENTS", "herald-fanout", SOON).await;
        stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
        assert_eq!(
            stack.stream_messages("HERALD_DELIVERIES").await,
            stored,
            "deliveries stored on the way with --inline-attempts {inline}"
        );
        let deadline = std::time::Instant::now() + SOON;
        let attempts = loop {
            let (status, _, page) = stack.call(reqwest::Method::GET, "/v1/events/fast-1/attempts", None).await;
            assert_eq!(status, 200, "{page}");
            if !page["data"].as_array().unwrap().is_empty() {
                break page;
            }
            assert!(std::time::Instant::now() < deadline, "no attempt recorded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(attempts["data"][0]["outcome"], "delivered", "{attempts}");
        assert_eq!(attempts["data"][0]["attempt"], 1, "{attempts}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(rx.received().len(), 1, "delivered once with --inline-attempts {inline}");
    }
}
