//! Subscription management through the API, and its effect on deliveries.

use std::time::Duration;

use herald_harness::{Receiver, Stack};
use reqwest::Method;
use serde_json::json;

use crate::SOON;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_get_patch_delete() {
    let stack = Stack::start_with(false, &[]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let tenant = if i < 3 { "acme" } else { "globex" };
        let sub = stack.subscribe(&format!("https://example.com/h{i}"), &["order.*"], Some(tenant)).await;
        assert!(sub["id"].as_str().unwrap().starts_with("sub_"));
        assert_eq!(sub["enabled"], true);
        ids.push(sub["id"].as_str().unwrap().to_owned());
    }

    // Paged listing, in creation order, secrets never shown.
    let (status, _, page1) = stack.call(Method::GET, "/v1/subscriptions?limit=2", None).await;
    assert_eq!(status, 200);
    let got: Vec<&str> = page1["data"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(got, [ids[0].as_str(), ids[1].as_str()]);
    assert!(page1["data"][0].get("secret").is_none());
    let next = page1["next"].as_str().unwrap();
    let (_, _, page2) = stack.call(Method::GET, &format!("/v1/subscriptions?limit=10&after={next}"), None).await;
    assert_eq!(page2["data"].as_array().unwrap().len(), 3);
    assert!(page2.get("next").is_none());
    let (_, _, acme) = stack.call(Method::GET, "/v1/subscriptions?tenant=acme", None).await;
    assert_eq!(acme["data"].as_array().unwrap().len(), 3);

    // A tenant-scoped token sees only its tenant.
    let (_, _, own) = stack.call_as("test-acme-token-0123456789", Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(own["data"].as_array().unwrap().len(), 3);
    let (status, _, _) =
        stack.call_as("test-acme-token-0123456789", Method::GET, &format!("/v1/subscriptions/{}", ids[4]), None).await;
    assert_eq!(status, 404, "another tenant's subscription is invisible");
    let (status, _, _) =
        stack.call_as("test-acme-token-0123456789", Method::GET, "/v1/subscriptions?tenant=globex", None).await;
    assert_eq!(status, 403);

    // Patch.
    let patch = json!({"url": "https://example.com/new", "enabled": false, "description": "paused", "metadata": {"team": "billing"}});
    let (status, _, patched) = stack.call(Method::PATCH, &format!("/v1/subscriptions/{}", ids[0]), Some(patch)).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["url"], "https://example.com/new");
    assert_eq!(patched["enabled"], false);
    let (_, _, read) = stack.call(Method::GET, &format!("/v1/subscriptions/{}", ids[0]), None).await;
    assert_eq!(read["description"], "paused");
    assert_eq!(read["metadata"]["team"], "billing");
    assert_eq!(read["event_types"], json!(["order.*"]));

    // Bad input is refused with the field named.
    let (status, _, problem) =
        stack.call(Method::PATCH, &format!("/v1/subscriptions/{}", ids[0]), Some(json!({"url": "ftp://x"}))).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("url")));
    let (status, _, problem) = stack
        .call(Method::POST, "/v1/subscriptions", Some(json!({"url": "https://x.test/", "event_types": ["a..b"]})))
        .await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("event_types")));
    let bad_header =
        json!({"url": "https://x.test/", "event_types": [">"], "headers": {"webhook-signature": "forged"}});
    let (status, _, problem) = stack.call(Method::POST, "/v1/subscriptions", Some(bad_header)).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("headers")));

    // Delete.
    let (status, _, _) = stack.call(Method::DELETE, &format!("/v1/subscriptions/{}", ids[1]), None).await;
    assert_eq!(status, 204);
    let (status, _, problem) = stack.call(Method::GET, &format!("/v1/subscriptions/{}", ids[1]), None).await;
    assert_eq!((status, problem["type"].as_str()), (404, Some("urn:herald:problem:not-found")));
    let (status, _, _) = stack.call(Method::DELETE, &format!("/v1/subscriptions/{}", ids[1]), None).await;
    assert_eq!(status, 404);
    let (status, _, _) = stack.call(Method::GET, "/v1/subscriptions/sub_nonsense", None).await;
    assert_eq!(status, 404);
    let (status, _, _) = stack.call_as("", Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_or_deleted_subscriptions_get_no_further_deliveries() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    let keep = stack.subscribe(&rx.url("/keep"), &["ping"], None).await;
    let paused = stack.subscribe(&rx.url("/paused"), &["ping"], None).await;
    let gone = stack.subscribe(&rx.url("/gone"), &["ping"], None).await;
    let _ = keep;

    stack.publish(json!({"id": "p1", "type": "ping", "data": {}})).await;
    rx.wait_for(3, SOON).await;

    let (s, _, _) = stack
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{}", paused["id"].as_str().unwrap()),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _, _) =
        stack.call(Method::DELETE, &format!("/v1/subscriptions/{}", gone["id"].as_str().unwrap()), None).await;
    assert_eq!(s, 204);
    // The dispatcher sees changes through its KV watch within moments; give it a second.
    tokio::time::sleep(Duration::from_secs(1)).await;

    stack.publish(json!({"id": "p2", "type": "ping", "data": {}})).await;
    rx.wait_until(SOON, "p2 on /keep", |r| r.iter().any(|r| r.path == "/keep" && r.header("webhook-id") == Some("p2")))
        .await;
    stack.wait_consumer_drained("HERALD_EVENTS", "herald-fanout", SOON).await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    assert_eq!(rx.received_on("/paused").len(), 1, "disabled: only the event from before");
    assert_eq!(rx.received_on("/gone").len(), 1, "deleted: only the event from before");

    // Re-enabled, it receives again.
    stack
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{}", paused["id"].as_str().unwrap()),
            Some(json!({"enabled": true})),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.publish(json!({"id": "p3", "type": "ping", "data": {}})).await;
    rx.wait_until(SOON, "p3 on /paused", |r| {
        r.iter().any(|r| r.path == "/paused" && r.header("webhook-id") == Some("p3"))
    })
    .await;
}
