//! Polling endpoints: subscriptions that are not pushed to, whose consumers read their events
//! with `GET /v1/subscriptions/{id}/poll` and acknowledge them by passing the cursor back.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use herald_harness::Stack;
use reqwest::Method;
use serde_json::{Value, json};

const ACME_TOKEN: &str = "test-acme-token-0123456789";

async fn create_polling(stack: &Stack, types: &[&str], extra: Value) -> String {
    let mut body = json!({"destination": {"type": "polling"}, "event_types": types, "tenant": "acme"});
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    let (status, _, sub) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{sub}");
    let id = sub["id"].as_str().unwrap().to_owned();
    assert_eq!(sub["destination"]["type"], "polling", "{sub}");
    assert_eq!(sub["url"], format!("/v1/subscriptions/{id}/poll"), "{sub}");
    id
}

/// One poll as the tenant's token: the ids of its events, its cursor and whether it was done.
async fn poll(stack: &Stack, id: &str, cursor: Option<&str>, limit: usize) -> (Vec<String>, String, bool) {
    let mut path = format!("/v1/subscriptions/{id}/poll?limit={limit}");
    if let Some(c) = cursor {
        path.push_str(&format!("&cursor={c}"));
    }
    let (status, _, page) = stack.call_as(ACME_TOKEN, Method::GET, &path, None).await;
    assert_eq!(status, 200, "{path}: {page}");
    let ids = page["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    (ids, page["cursor"].as_str().unwrap().to_owned(), page["done"].as_bool().unwrap())
}

async fn publish_batches(stack: &Stack, kind: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for start in (0..n).step_by(100) {
        let events: Vec<Value> =
            (start..(start + 100).min(n)).map(|i| json!({"type": kind, "tenant": "acme", "data": {"n": i}})).collect();
        let (status, _, body) = stack.call(Method::POST, "/v1/events/batch", Some(json!({ "events": events }))).await;
        assert_eq!(status, 202, "{body}");
        ids.extend(body["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_are_polled_by_two_pollers_in_turn_none_missing_none_repeated_once_acknowledged_across_a_gateway_restart()
 {
    let mut stack = Stack::start().await;
    let id = create_polling(&stack, &["poll.*"], json!({})).await;
    let published = publish_batches(&stack, "poll.made", 10_000).await;
    let wanted: HashSet<&str> = published.iter().map(String::as_str).collect();

    // Two pollers in turn, each passing on the cursor the other was given; halfway the gateway
    // restarts and the next poller starts without a cursor, from what was acknowledged.
    let mut read: Vec<String> = Vec::new();
    let mut last_page: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut restarted = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut turn = 0;
    while read.iter().collect::<HashSet<_>>().len() < wanted.len() {
        assert!(Instant::now() < deadline, "{} of {} read", read.len(), wanted.len());
        if !restarted && read.len() >= 5_000 {
            stack.restart_gateway(&[]).await;
            restarted = true;
            // The page read last was never acknowledged: it comes again, and only it.
            let (again, next, _) = poll(&stack, &id, None, 500).await;
            assert_eq!(again, last_page, "after the restart, the unacknowledged page and nothing else comes again");
            cursor = Some(next);
            last_page = again;
            continue;
        }
        // Poller A and poller B are the same token from two places; what tells them apart is
        // only whose turn it is.
        turn += 1;
        let (ids, next, done) = poll(&stack, &id, cursor.as_deref(), 500).await;
        if ids.is_empty() {
            assert!(done);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        read.extend(ids.iter().cloned());
        last_page = ids;
        cursor = Some(next);
    }
    assert!(restarted && turn > 10, "{turn} polls");
    let mut seen = HashMap::new();
    for id in &read {
        *seen.entry(id.as_str()).or_insert(0) += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "read twice although acknowledged: {} ids", repeated.len());
    assert_eq!(seen.keys().copied().collect::<HashSet<_>>(), wanted, "every event, nothing else");

    // Acknowledged: the final cursor reads nothing, and neither does a poller without one.
    let (after, end, done) = poll(&stack, &id, cursor.as_deref(), 500).await;
    assert!(after.is_empty() && done, "{after:?}");
    assert_eq!(Some(end.clone()), cursor);
    let (fresh, _, _) = poll(&stack, &id, None, 500).await;
    assert!(fresh.is_empty(), "acknowledged events are not read again: {} were", fresh.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_polling_subscription_reads_in_publish_order_and_polling_refuses_what_does_not_apply() {
    let stack = Stack::start().await;
    let ordered = create_polling(&stack, &["order.*"], json!({"ordering": "fifo"})).await;
    let webhook = stack.subscribe("http://127.0.0.1:9/none", &["other.*"], Some("acme")).await;
    let mut published = Vec::new();
    for i in 0..200 {
        let (status, body) = stack.publish(json!({"type": "order.placed", "tenant": "acme", "data": {"n": i}})).await;
        assert_eq!(status, 202, "{body}");
        published.push(body["id"].as_str().unwrap().to_owned());
    }
    let mut read = Vec::new();
    let mut cursor = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while read.len() < published.len() {
        assert!(Instant::now() < deadline, "{} of {} read", read.len(), published.len());
        let (ids, next, done) = poll(&stack, &ordered, cursor.as_deref(), 64).await;
        read.extend(ids);
        cursor = Some(next);
        if done {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(read, published, "in publish order");
    // What an event looks like: a webhook's body.
    let (status, _, page) = stack
        .call_as(ACME_TOKEN, Method::GET, &format!("/v1/subscriptions/{ordered}/poll?limit=1&cursor=pc_0"), None)
        .await;
    assert_eq!(status, 200, "{page}");
    let event = &page["data"][0];
    assert_eq!((event["type"].as_str(), event["tenant"].as_str()), (Some("order.placed"), Some("acme")), "{event}");
    assert!(event["data"]["n"].is_number() && event["timestamp"].is_string(), "{event}");

    let webhook_id = webhook["id"].as_str().unwrap();
    let refusals = [
        (format!("/v1/subscriptions/{webhook_id}/poll"), 409),
        (format!("/v1/subscriptions/{ordered}/poll?cursor=12"), 400),
        (format!("/v1/subscriptions/{ordered}/poll?limit=0"), 400),
        (format!("/v1/subscriptions/{ordered}/poll?limit=501"), 400),
    ];
    for (path, expected) in refusals {
        let (status, _, problem) = stack.call(Method::GET, &path, None).await;
        assert_eq!(status, expected, "{path}: {problem}");
    }
    for extra in [
        json!({"transformation": "function handler(w) { return w; }"}),
        json!({"rate_limit": 5}),
        json!({"auth": {"type": "bearer", "token": "t"}}),
        json!({"destination": {"type": "polling", "url": "http://127.0.0.1:9/"}}),
    ] {
        let mut body = json!({"destination": {"type": "polling"}, "event_types": [">"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, _, problem) = stack.call(Method::POST, "/v1/subscriptions", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {problem}");
    }
    // Another tenant's token does not find it; once deleted, nobody does.
    let (status, _, _) = stack
        .call_as("test-publish-token-0123456789", Method::GET, &format!("/v1/subscriptions/{ordered}/poll"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _, _) = stack.call(Method::DELETE, &format!("/v1/subscriptions/{ordered}"), None).await;
    assert_eq!(status, 204);
    let (status, _, _) = stack.call(Method::GET, &format!("/v1/subscriptions/{ordered}/poll"), None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_token_reads_its_own_polling_subscription_and_nothing_else() {
    let dir = herald_harness::temp_dir("poll-token");
    let file = dir.join("tokens");
    std::fs::write(&file, "# poll tokens are added below\n").unwrap();
    let stack = Stack::start_with(true, &["--tokens-file", file.to_str().unwrap()]).await;
    let mine = create_polling(&stack, &["order.*"], json!({})).await;
    let other = create_polling(&stack, &["order.*"], json!({})).await;
    std::fs::write(&file, format!("poll:{mine}=poll-token-0123456789abcdef\n")).unwrap();
    let token = "poll-token-0123456789abcdef";
    let (status, body) = stack.publish(json!({"type": "order.paid", "tenant": "acme", "data": {}})).await;
    assert_eq!(status, 202, "{body}");
    // The file is read again within a couple of seconds of changing.
    let deadline = Instant::now() + Duration::from_secs(15);
    let page = loop {
        let (status, _, page) =
            stack.call_as(token, Method::GET, &format!("/v1/subscriptions/{mine}/poll"), None).await;
        if status == 200 && page["data"].as_array().is_some_and(|d| !d.is_empty()) {
            break page;
        }
        assert!(Instant::now() < deadline, "the poll token never read its events: {status} {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(page["data"][0]["id"], body["id"]);
    // Nothing else: another polling subscription, the subscription itself, the API at large.
    for (method, path, expected) in [
        (Method::GET, format!("/v1/subscriptions/{other}/poll"), 404),
        (Method::GET, format!("/v1/subscriptions/{mine}"), 404),
        (Method::GET, "/v1/subscriptions".to_owned(), 403),
        (Method::GET, "/v1/events".to_owned(), 403),
        (Method::POST, "/v1/events".to_owned(), 403),
    ] {
        let body = (method == Method::POST).then(|| json!({"type": "order.paid", "data": {}}));
        let (status, _, problem) = stack.call_as(token, method.clone(), &path, body).await;
        assert_eq!(status, expected, "{method} {path}: {problem}");
    }
}
