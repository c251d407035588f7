//! The retry policy as subscribers see it: `Retry-After`, per-subscription schedules, and the
//! attempt records.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use herald_harness::{Receiver, Reply, Stack};
use prost::Message as _;
use serde_json::json;

use crate::SOON;

/// Every attempt record in the stream, in order.
async fn attempts(stack: &Stack) -> Vec<herald_core::proto::Attempt> {
    let js = jetstream::new(stack.nats.client().await);
    let stream = js.get_stream("HERALD_ATTEMPTS").await.unwrap();
    let consumer = stream.create_consumer(jetstream::consumer::pull::OrderedConfig::default()).await.unwrap();
    let total = stack.stream_messages("HERALD_ATTEMPTS").await as usize;
    let mut messages = consumer.messages().await.unwrap().take(total);
    let mut out = Vec::new();
    while let Some(m) = messages.next().await {
        out.push(herald_core::proto::Attempt::decode(m.unwrap().payload.as_ref()).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_honoured() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    // The deployment's schedule says 1 s; the subscriber asks for 4, in a body longer than the
    // record keeps (`HERALD_RESPONSE_BODY_LIMIT`, 4096 bytes by default).
    let said: &'static str = Box::leak((0..1000).map(|i| format!("{i:04} ")).collect::<String>().into_boxed_str());
    rx.script([Reply { retry_after: Some(4), body: said, ..Reply::status(429) }]);
    stack.subscribe(&rx.url("/ra"), &["ra.test"], None).await;
    stack.publish(json!({"id": "ra-1", "type": "ra.test", "data": {}})).await;

    rx.wait_for(1, SOON).await;
    let first = Instant::now();
    rx.wait_for(2, Duration::from_secs(30)).await;
    let gap = first.elapsed();
    assert!(gap >= Duration::from_millis(3500), "retried after {gap:?}, before the 4 s Retry-After");
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    let recorded = attempts(&stack).await;
    assert_eq!(recorded.len(), 2);
    assert_eq!(
        (recorded[0].status, recorded[0].outcome.as_str(), recorded[0].error_class.as_str()),
        (429, "retry", "http_status")
    );
    assert_eq!(recorded[0].response_body, said[..4096], "the answer's first 4096 bytes");
    assert_eq!(
        (recorded[1].status, recorded[1].outcome.as_str(), recorded[1].error_class.as_str()),
        (200, "delivered", "")
    );
    assert_eq!(recorded[1].response_body, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_can_override_the_retry_schedule() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    rx.respond_with(&[500; 10]);
    let body = json!({"url": rx.url("/own"), "event_types": ["own.*"], "retry_schedule": "1s"});
    let (status, _, sub) = stack.call(reqwest::Method::POST, "/v1/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["retry_schedule"], "1s");
    stack.publish(json!({"id": "own-1", "type": "own.test", "data": {}})).await;

    // Its own schedule has one retry: two attempts (the deployment's would make four).
    rx.wait_for(2, Duration::from_secs(30)).await;
    let deadline = Instant::now() + SOON;
    while stack.stream_messages("HERALD_DLQ").await == 0 {
        assert!(Instant::now() < deadline, "not dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.received().len(), 2);

    // Invalid schedules are refused; an empty one returns to the deployment's.
    let id = sub["id"].as_str().unwrap();
    let (status, _, p) = stack
        .call(reqwest::Method::PATCH, &format!("/v1/subscriptions/{id}"), Some(json!({"retry_schedule": "5x"})))
        .await;
    assert_eq!((status, p["field"].as_str()), (400, Some("retry_schedule")));
    let (status, _, s) = stack
        .call(reqwest::Method::PATCH, &format!("/v1/subscriptions/{id}"), Some(json!({"retry_schedule": ""})))
        .await;
    assert_eq!(status, 200);
    assert!(s.get("retry_schedule").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_and_timeouts_are_classified() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    // Nothing listens on this port; the hanging reply outlasts the 3 s test timeout.
    let dead = format!("http://127.0.0.1:{}/nobody", herald_harness::free_port());
    let body = json!({"url": dead, "event_types": ["cls.*"], "retry_schedule": "1s"});
    stack.call(reqwest::Method::POST, "/v1/subscriptions", Some(body)).await;
    rx.script([Reply { delay: Duration::from_secs(10), ..Reply::status(200) }]);
    let body = json!({"url": rx.url("/slow"), "event_types": ["cls.*"], "retry_schedule": "1s"});
    stack.call(reqwest::Method::POST, "/v1/subscriptions", Some(body)).await;
    stack.publish(json!({"id": "cls-1", "type": "cls.test", "data": {}})).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recorded = attempts(&stack).await;
        let classes: Vec<&str> = recorded.iter().map(|a| a.error_class.as_str()).collect();
        if classes.contains(&"connection") && classes.contains(&"timeout") {
            break;
        }
        assert!(Instant::now() < deadline, "attempt classes seen: {classes:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_whose_schedule_fires_twice_is_sent_once() {
    // After a leader change a message schedule may fire again, and NATS strips the
    // `Nats-Msg-Id` from what it fires, so the repeat is not deduplicated: the dispatcher must
    // see from the attempt record that the retry was already delivered.
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    let sub = stack.subscribe(&rx.url("/twice"), &["twice.x"], None).await;
    let event = herald_core::proto::Event {
        id: "fired-twice".into(),
        r#type: "twice.x".into(),
        tenant: "default".into(),
        data: br#"{"n":1}"#.to_vec(),
        time: herald_core::now_rfc3339(),
        ..Default::default()
    };
    let retry = herald_core::proto::Delivery {
        event: Some(event),
        subscription_id: sub["id"].as_str().unwrap().to_owned(),
        attempt: 2,
        ..Default::default()
    };
    let js = jetstream::new(stack.nats.client().await);
    let subject = herald_core::nats::Partition::ZERO.delivery_subject("default", sub["id"].as_str().unwrap());
    // The retry as its schedule fires it: no message id.
    js.publish(subject.clone(), retry.encode_to_vec().into()).await.unwrap().await.unwrap();
    rx.wait_for(1, SOON).await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the record is stored
    js.publish(subject, retry.encode_to_vec().into()).await.unwrap().await.unwrap();
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rx.received().len(), 1, "the repeat was sent again");
}
