//! Endpoint health: the circuit breaker, automatic disabling, and isolation of healthy
//! subscriptions from failing ones.

use std::time::{Duration, Instant};

use herald_harness::{Receiver, Reply, Stack};
use reqwest::Method;
use serde_json::json;

use crate::SOON;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_is_down_gets_a_trickle_then_everything_once_it_recovers() {
    let mut stack = Stack::gateway_only().await;
    stack.start_dispatcher_with(&[
        ("--breaker-threshold", "3"),
        ("--breaker-cooldown", "2s"),
        ("--retry-schedule", "1s,1s,1s,1s,1s,1s,1s,1s"),
    ]);
    let rx = Receiver::start().await;
    rx.respond_with(&[503; 1000]);
    stack.subscribe(&rx.url("/down"), &["cb.*"], None).await;
    let events = 30;
    for i in 0..events {
        stack.publish(json!({"id": format!("cb-{i}"), "type": "cb.x", "data": {}})).await;
    }
    // Six seconds of outage: without a breaker, 30 deliveries retried every second would knock
    // well over a hundred times.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let knocked = rx.received().len();
    assert!(knocked <= 3 + 32 + 6, "a trickle, not a flood: {knocked} requests in 6 s");

    // Recovery: the next probe succeeds, the circuit closes, everything arrives.
    rx.clear_script();
    rx.wait_until(Duration::from_secs(40), "every event delivered", |r| {
        let mut ok: Vec<_> = r.iter().filter_map(|r| r.header("webhook-id")).collect();
        ok.sort();
        ok.dedup();
        ok.len() == events
    })
    .await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", Duration::from_secs(30)).await;
    assert_eq!(stack.stream_messages("HERALD_DLQ").await, 0, "deferral spends no attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_disables_the_subscription_with_a_visible_reason() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    rx.respond_with(&[410]);
    let sub = stack.subscribe(&rx.url("/gone"), &["g.*"], None).await;
    let id = sub["id"].as_str().unwrap();
    stack.publish(json!({"id": "g-1", "type": "g.x", "data": {}})).await;
    rx.wait_for(1, SOON).await;

    let deadline = Instant::now() + SOON;
    let read = loop {
        let (_, _, read) = stack.call(Method::GET, &format!("/v1/subscriptions/{id}"), None).await;
        if read["enabled"] == false {
            break read;
        }
        assert!(Instant::now() < deadline, "not disabled: {read}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(read["disabled_reason"].as_str().unwrap().contains("410"), "{read}");
    let deadline = Instant::now() + SOON;
    while stack.stream_messages("HERALD_DLQ").await == 0 {
        assert!(Instant::now() < deadline, "the 410'd delivery is dead-lettered, not retried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Re-enabling through the API clears the reason, and deliveries flow again.
    let (status, _, read) =
        stack.call(Method::PATCH, &format!("/v1/subscriptions/{id}"), Some(json!({"enabled": true}))).await;
    assert_eq!(status, 200);
    assert!(read.get("disabled_reason").is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.publish(json!({"id": "g-2", "type": "g.x", "data": {}})).await;
    rx.wait_until(SOON, "g-2", |r| r.iter().any(|r| r.header("webhook-id") == Some("g-2"))).await;
    assert_eq!(rx.received().len(), 2, "the 410 was not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_for_too_long_is_disabled() {
    let mut stack = Stack::gateway_only().await;
    stack.start_dispatcher_with(&[
        ("--disable-after", "2s"),
        ("--retry-schedule", "1s,1s,1s,1s,1s,1s,1s,1s"),
        ("--breaker-threshold", "100"),
    ]);
    let rx = Receiver::start().await;
    rx.respond_with(&[500; 1000]);
    let sub = stack.subscribe(&rx.url("/sick"), &["s.*"], None).await;
    let id = sub["id"].as_str().unwrap();
    stack.publish(json!({"id": "s-1", "type": "s.x", "data": {}})).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, read) = stack.call(Method::GET, &format!("/v1/subscriptions/{id}"), None).await;
        if read["enabled"] == false {
            assert!(read["disabled_reason"].as_str().unwrap().contains("failed every attempt since"), "{read}");
            break;
        }
        assert!(Instant::now() < deadline, "never disabled: {read}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Publishes `n` events of `type` at a steady pace (batches of 25 every 100 ms, 250 events/s)
/// and returns how long it took until `path` had all of them. A paced load measures whether one
/// subscription holds up another, not how fast a 2-core test machine can go flat out.
async fn timed_batch(stack: &Stack, rx: &Receiver, tag: &str, event_type: &str, path: &str, n: usize) -> Duration {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for chunk in 0..(n / 25) {
        tick.tick().await;
        let events: Vec<_> = (0..25)
            .map(|i| json!({"id": format!("{tag}-{chunk}-{i}"), "type": event_type, "data": {"i": i}}))
            .collect();
        let (status, _, body) = stack.call(Method::POST, "/v1/events/batch", Some(json!({"events": events}))).await;
        assert_eq!(status, 202, "{body}");
    }
    let prefix = format!("{tag}-");
    rx.wait_until(Duration::from_secs(120), &format!("{n} {tag} events on {path}"), |r| {
        r.iter().filter(|r| r.path == path && r.header("webhook-id").is_some_and(|id| id.starts_with(&prefix))).count()
            >= n
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_subscriptions_do_not_slow_a_healthy_one() {
    let mut stack = Stack::gateway_only().await;
    // The test timeout is 3 s; the breaker at its default threshold.
    stack.start_dispatcher_with(&[("--breaker-threshold", "5"), ("--breaker-cooldown", "5s")]);
    let healthy = Receiver::start().await;
    let bad = Receiver::start().await;
    stack.subscribe(&healthy.url("/healthy"), &["iso.*"], None).await;
    let n = 1000;

    // Warm up (connections, caches), then measure alone.
    timed_batch(&stack, &healthy, "warm", "iso.x", "/healthy", 200).await;
    let alone = timed_batch(&stack, &healthy, "alone", "iso.x", "/healthy", n).await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", Duration::from_secs(60)).await;

    // Beside one endpoint that hangs past the timeout and one that answers 500, every time.
    bad.script_per_path("/hang", (0..20 * n).map(|_| Reply { delay: Duration::from_secs(10), ..Reply::status(200) }));
    bad.script_per_path("/fail", (0..20 * n).map(|_| Reply::status(500)));
    stack.subscribe(&bad.url("/hang"), &["iso.*"], None).await;
    stack.subscribe(&bad.url("/fail"), &["iso.*"], None).await;
    let beside = timed_batch(&stack, &healthy, "beside", "iso.x", "/healthy", n).await;
    assert!(
        !bad.received_on("/hang").is_empty() && !bad.received_on("/fail").is_empty(),
        "the bad endpoints were tried"
    );

    let ratio = alone.as_secs_f64() / beside.as_secs_f64();
    eprintln!(
        "healthy subscription: {n} deliveries alone in {alone:?}, beside a hanging and a failing one in {beside:?} (rate ratio {ratio:.2})"
    );
    assert!(ratio >= 0.8, "the healthy subscription's rate fell to {:.0} % of its rate alone", ratio * 100.0);
}
