//! Payload filters end to end: subscriptions of one type with different filters each get
//! exactly the events their filter matches; what a filter leaves out is no delivery and no
//! attempt; a bad filter is refused with the path of its bad part; a changed filter applies to
//! the next event; `POST /v1/filters/test` says whether and why.

use std::time::Duration;

use herald_harness::{Receiver, Stack};
use reqwest::Method;
use serde_json::{Value, json};

use crate::SOON;

async fn subscribe_with(stack: &Stack, url: &str, filter: Option<Value>) -> String {
    let mut body = json!({"url": url, "event_types": ["order.*"]});
    if let Some(f) = filter {
        body["filter"] = f;
    }
    let (status, _, sub) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{sub}");
    sub["id"].as_str().unwrap().to_owned()
}

fn ids(received: &[herald_harness::Received]) -> Vec<String> {
    let mut ids: Vec<String> = received.iter().filter_map(|r| r.header("webhook-id").map(str::to_owned)).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_of_one_type_get_exactly_the_events_their_filters_match() {
    let stack = Stack::start().await;
    let (big, eu, all) = (Receiver::start().await, Receiver::start().await, Receiver::start().await);
    let big_id = subscribe_with(&stack, &big.url("/big"), Some(json!({"data": {"amount": {"$gte": 100}}}))).await;
    let eu_filter =
        json!({"$or": [{"data": {"region": "eu"}}, {"data": {"tags": "eu"}}], "type": {"$neq": "order.refunded"}});
    subscribe_with(&stack, &eu.url("/eu"), Some(eu_filter.clone())).await;
    subscribe_with(&stack, &all.url("/all"), None).await;
    let (_, _, read) = stack.call(Method::GET, &format!("/v1/subscriptions/{big_id}"), None).await;
    assert_eq!(read["filter"], json!({"data": {"amount": {"$gte": 100}}}), "the filter is shown as given");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let events = [
        ("o-1", "order.paid", json!({"amount": 250, "region": "us"})),
        ("o-2", "order.paid", json!({"amount": 20, "region": "eu"})),
        ("o-3", "order.paid", json!({"amount": 500, "tags": ["vip", "eu"]})),
        ("o-4", "order.refunded", json!({"amount": 300, "region": "eu"})),
        ("o-5", "order.paid", json!({"amount": "lots", "region": "apac"})),
    ];
    for (id, event_type, data) in &events {
        let (status, body) = stack.publish(json!({"id": id, "type": event_type, "data": data})).await;
        assert_eq!(status, 202, "{body}");
    }
    assert_eq!(ids(&all.wait_for(5, SOON).await), ["o-1", "o-2", "o-3", "o-4", "o-5"]);
    assert_eq!(ids(&big.wait_for(3, SOON).await), ["o-1", "o-3", "o-4"]);
    assert_eq!(ids(&eu.wait_for(2, SOON).await), ["o-2", "o-3"]);
    // Nothing more comes, and a left-out event is not an attempt of the subscription.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(big.received().len(), 3);
    assert_eq!(eu.received().len(), 2);
    let (_, _, attempts) = stack.call(Method::GET, &format!("/v1/subscriptions/{big_id}/attempts"), None).await;
    let attempted: Vec<&str> =
        attempts["data"].as_array().unwrap().iter().filter_map(|a| a["event_id"].as_str()).collect();
    assert!(!attempted.contains(&"o-2") && !attempted.contains(&"o-5"), "{attempted:?}");

    // A changed filter applies to the next event; `{}` removes it.
    let (status, _, patched) = stack
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{big_id}"),
            Some(json!({"filter": {"data": {"region": "apac"}}})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    until_applied(&stack, &big, "apac", json!({"amount": 1, "region": "apac"})).await;
    stack.publish(json!({"id": "o-6", "type": "order.paid", "data": {"amount": 900, "region": "us"}})).await;
    stack.publish(json!({"id": "o-7", "type": "order.paid", "data": {"amount": 1, "region": "apac"}})).await;
    all.wait_until(SOON, "o-6 and o-7", |r| ids(r).contains(&"o-6".to_owned()) && ids(r).contains(&"o-7".to_owned()))
        .await;
    let seen = big.wait_until(SOON, "o-7", |r| ids(r).contains(&"o-7".to_owned())).await;
    let events: Vec<String> = ids(&seen).into_iter().filter(|id| !id.starts_with("probe-")).collect();
    assert_eq!(events, ["o-1", "o-3", "o-4", "o-7"]);
    let (_, _, removed) =
        stack.call(Method::PATCH, &format!("/v1/subscriptions/{big_id}"), Some(json!({"filter": {}}))).await;
    assert!(removed.get("filter").is_none(), "{removed}");
    // An event the removed filter left out (no region) reaches the subscription.
    until_applied(&stack, &big, "unfiltered", json!({})).await;
    stack.publish(json!({"id": "o-8", "type": "order.paid", "data": {}})).await;
    big.wait_until(SOON, "o-8", |r| ids(r).contains(&"o-8".to_owned())).await;
}

/// Publishes probes (`probe-{name}-{n}`, with `data` that only the changed filter lets through)
/// until one reaches `sink`. A dispatcher applies a change through its KV watch "within
/// moments", and an event published after the probe arrived is matched after the change: a
/// fixed wait instead raced the watch on a loaded machine. Fails if no probe arrives in time.
async fn until_applied(stack: &Stack, sink: &Receiver, name: &str, data: Value) {
    let deadline = tokio::time::Instant::now() + SOON;
    let arrived = |sink: &Receiver| ids(&sink.received()).iter().any(|id| id.starts_with(&format!("probe-{name}-")));
    for n in 1.. {
        let (status, body) =
            stack.publish(json!({"id": format!("probe-{name}-{n}"), "type": "order.paid", "data": data})).await;
        assert_eq!(status, 202, "{body}");
        let wait = tokio::time::Instant::now() + Duration::from_millis(200);
        while tokio::time::Instant::now() < wait {
            if arrived(sink) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change was not applied: no probe-{name} arrived in {SOON:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_are_refused_with_their_path_and_filters_can_be_tried_first() {
    let stack = Stack::gateway_only().await;
    for (filter, says) in [
        (json!({"data": {"amount": {"$gte": true}}}), "filter: data.amount.$gte: takes a number or a string"),
        (json!({"$or": [{"data": {"x": {"$regex": "a"}}}]}), "filter: $or[0].data.x.$regex: unknown operator"),
        (json!("paid"), "filter: (filter): a filter document must be an object"),
    ] {
        let body = json!({"url": "https://example.com/", "event_types": ["a"], "filter": filter});
        let (status, _, problem) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
        assert_eq!((status, problem["field"].as_str()), (400, Some("filter")), "{problem}");
        assert!(problem["detail"].as_str().unwrap().starts_with(says), "{problem} should say {says:?}");
    }

    let try_it = |filter: Value, event: Value| {
        stack.call(Method::POST, "/v1/filters/test", Some(json!({"filter": filter, "event": event})))
    };
    let (status, _, result) =
        try_it(json!({"data": {"amount": {"$gte": 100}}}), json!({"type": "order.paid", "data": {"amount": 50}})).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result, json!({"matches": false, "reasons": ["data.amount: is 50, which fails $gte 100"]}));
    let (_, _, result) = try_it(json!({"type": {"$startsWith": "order."}}), json!({"type": "order.paid"})).await;
    assert_eq!(result["matches"], true);
    let (status, _, problem) = try_it(json!({}), json!({"payload": {}})).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("event")), "{problem}");
}
