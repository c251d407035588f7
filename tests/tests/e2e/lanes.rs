//! Lanes: strictly ordered subscriptions, and limits that hold across dispatcher replicas (three
//! of them: one in the test process, two as processes).

use std::time::Duration;

use herald_harness::{DispatcherProcess, Receiver, Reply, Stack};
use reqwest::Method;
use serde_json::json;

use crate::SOON;

async fn publish_batches(stack: &Stack, tag: &str, event_type: &str, n: usize) {
    for chunk in 0..n.div_ceil(100) {
        let events: Vec<_> = (chunk * 100..((chunk + 1) * 100).min(n))
            .map(|i| json!({"id": format!("{tag}-{i}"), "type": event_type, "data": {"i": i}}))
            .collect();
        let (status, _, body) = stack.call(Method::POST, "/v1/events/batch", Some(json!({"events": events}))).await;
        assert_eq!(status, 202, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_subscription_receives_every_event_in_publish_order_despite_failures() {
    let stack = Stack::start().await;
    let others = [DispatcherProcess::start(&stack.nats.url()), DispatcherProcess::start(&stack.nats.url())];
    let rx = Receiver::start().await;
    // Every 97th request fails, so about ten events need a retry.
    rx.script_per_path("/fifo", (0..1200).map(|k| Reply::status(if k % 97 == 50 { 503 } else { 200 })));
    let body = json!({"url": rx.url("/fifo"), "event_types": ["seq.*"], "ordering": "fifo"});
    let (status, _, sub) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["ordering"], "fifo");
    // A neighbour without ordering, fed the same events, is not held up by the ordered one.
    stack.subscribe(&rx.url("/free"), &["seq.*"], None).await;

    let n = 1000;
    publish_batches(&stack, "seq", "seq.x", n).await;
    rx.wait_until(Duration::from_secs(60), "all ordered deliveries", |r| {
        r.iter()
            .filter(|r| r.path == "/fifo")
            .map(|r| r.header("webhook-id"))
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= n
    })
    .await;

    // Walk the requests in arrival order: each is the same event again (a retry in place) or the
    // next one in publish order, never anything else.
    let got = rx.received_on("/fifo");
    let mut expected = 0usize;
    let mut retries = 0;
    for (k, r) in got.iter().enumerate() {
        let i: usize = r.json()["data"]["i"].as_u64().unwrap() as usize;
        if k > 0 && i + 1 == expected {
            retries += 1;
            continue;
        }
        assert_eq!(i, expected, "request {k} carried event {i}, expected {expected}");
        expected += 1;
    }
    assert_eq!(expected, n);
    assert!(retries >= 5, "the failures were retried in place ({retries})");
    assert_eq!(stack.stream_messages("HERALD_DLQ").await, 0);
    drop(others);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_holds_across_three_dispatcher_replicas() {
    let stack = Stack::start().await;
    let others = [DispatcherProcess::start(&stack.nats.url()), DispatcherProcess::start(&stack.nats.url())];
    let rx = Receiver::start().await;
    rx.script_per_path("/limited", (0..200).map(|_| Reply { delay: Duration::from_millis(100), ..Reply::status(200) }));
    let body = json!({"url": rx.url("/limited"), "event_types": ["lim.*"], "max_in_flight": 3});
    let (status, _, sub) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{sub}");
    tokio::time::sleep(Duration::from_secs(2)).await; // every replica starts the lane

    publish_batches(&stack, "lim", "lim.x", 60).await;
    rx.wait_for(60, Duration::from_secs(20)).await;
    let max = rx.max_in_flight();
    assert!(max <= 3, "the receiver saw {max} requests at once; the limit is 3");
    assert!(max >= 2, "deliveries did run concurrently ({max})");
    drop(others);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_across_three_dispatcher_replicas() {
    let stack = Stack::start().await;
    let others = [DispatcherProcess::start(&stack.nats.url()), DispatcherProcess::start(&stack.nats.url())];
    let rx = Receiver::start().await;
    let body = json!({"url": rx.url("/paced"), "event_types": ["rate.*"], "rate_limit": 10});
    let (status, _, sub) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{sub}");
    tokio::time::sleep(Duration::from_secs(2)).await;

    publish_batches(&stack, "rate", "rate.x", 40).await;
    let got = rx.wait_for(40, Duration::from_secs(60)).await;
    // No one-second window holds more than the limit (one extra allowed for the window's edges).
    let times: Vec<_> = got.iter().map(|r| r.at).collect();
    let busiest = times
        .iter()
        .map(|&t| times.iter().filter(|&&u| u >= t && u < t + Duration::from_secs(1)).count())
        .max()
        .unwrap();
    assert!(busiest <= 11, "{busiest} requests within one second; the limit is 10/s");
    let lane = format!("herald-lane-{}", sub["id"].as_str().unwrap());
    stack.wait_consumer_drained("HERALD_DELIVERIES", &lane, SOON).await;
    drop(others);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_lane_sends_an_event_once_however_its_delivery_comes_back_unless_an_operator_resends_it() {
    use herald_core::{nats, proto};
    use prost::Message as _;

    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    let body = json!({"url": rx.url("/o"), "event_types": ["once.*"], "ordering": "fifo"});
    let (status, _, sub) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{sub}");
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let publish = |id: &'static str| stack.publish(json!({"id": id, "type": "once.x", "data": {"id": id}}));
    publish("o-1").await;
    rx.wait_for(1, SOON).await;

    // The delivery of o-1 stored in the lane again, as a new message: what ordered fan-out does
    // when it starts over from an earlier event after the duplicate window, or a consumer's new
    // leader handing out again what was acked.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let events = js.get_stream("HERALD_EVENTS").await.unwrap();
    let stored = events.get_last_raw_message_by_subject("herald.events.default.once.x").await.unwrap();
    let at = herald_core::event::StoredAt { sequence: stored.sequence, time: stored.time };
    let event = herald_core::event::decode_stored(&stored.subject, None, Some("o-1"), &stored.payload, at).unwrap();
    let delivery =
        proto::Delivery { event: Some(event), subscription_id: sub_id.clone(), attempt: 1, ..Default::default() };
    let lane = nats::Partition::ZERO.lane_subject("default", &sub_id);
    js.publish(lane.clone(), delivery.encode_to_vec().into()).await.unwrap().await.unwrap();
    publish("o-2").await;
    rx.wait_for(2, SOON).await;
    // Again once o-2 was sent (the lane's newest record is then another event's): as stored by
    // ordered fan-out, with where the event was stored, the lane has moved past it; without
    // (as an earlier version stored it), its own record is looked up.
    let placed = proto::Delivery { event_sequence: stored.sequence, ..delivery.clone() };
    js.publish(lane.clone(), placed.encode_to_vec().into()).await.unwrap().await.unwrap();
    js.publish(lane.clone(), delivery.encode_to_vec().into()).await.unwrap().await.unwrap();
    stack.wait_consumer_drained("HERALD_DELIVERIES", &nats::lane_consumer(&sub_id), SOON).await;

    // An operator's resend (replay, redrive) is sent again, in its place in the lane.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(nats::RESEND_HEADER, "replay");
    js.publish_with_headers(lane, headers, delivery.encode_to_vec().into()).await.unwrap().await.unwrap();
    publish("o-3").await;
    rx.wait_for(4, SOON).await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", &nats::lane_consumer(&sub_id), SOON).await;
    let ids: Vec<String> = rx.received().iter().map(|r| r.header("webhook-id").unwrap().to_owned()).collect();
    assert_eq!(ids, ["o-1", "o-2", "o-1", "o-3"]);
}
