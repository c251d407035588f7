//! Secrets and tenants: rotation with a grace period, encryption at rest, cross-tenant access.

use std::time::Duration;

use herald_tests::{Receiver, Stack};
use reqwest::Method;
use serde_json::json;

use crate::SOON;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secrets_sign_side_by_side_for_the_grace_period_then_only_the_new_one() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    let sub = stack.subscribe(&rx.url("/rot"), &["rot.*"], None).await;
    let id = sub["id"].as_str().unwrap();
    let old = sub["secret"].as_str().unwrap().to_owned();

    let (status, _, rotated) =
        stack.call(Method::POST, &format!("/v1/subscriptions/{id}/rotate-secret"), Some(json!({"grace": "3s"}))).await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(old, new);
    // Never shown again.
    let (_, _, read) = stack.call(Method::GET, &format!("/v1/subscriptions/{id}"), None).await;
    assert!(read.get("secret").is_none() && !read.to_string().contains(&new));
    tokio::time::sleep(Duration::from_millis(500)).await;

    stack.publish(json!({"id": "rot-1", "type": "rot.x", "data": {}})).await;
    let first = rx.wait_for(1, SOON).await.remove(0);
    assert_eq!(first.header("webhook-signature").unwrap().split(' ').count(), 2, "both secrets sign during the grace");
    first.verify(&old).expect("the old secret still verifies");
    first.verify(&new).expect("the new secret verifies");

    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.publish(json!({"id": "rot-2", "type": "rot.x", "data": {}})).await;
    let second = rx.wait_for(2, SOON).await.remove(1);
    assert_eq!(second.header("webhook-signature").unwrap().split(' ').count(), 1, "only the new one after the grace");
    second.verify(&new).expect("the new secret verifies");
    assert!(second.verify(&old).is_err(), "the old secret no longer verifies");

    let (status, _, p) = stack
        .call(Method::POST, &format!("/v1/subscriptions/{id}/rotate-secret"), Some(json!({"grace": "forever"})))
        .await;
    assert_eq!((status, p["field"].as_str()), (400, Some("grace")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_secrets_are_sealed_at_rest_and_still_sign() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    let sub = stack.subscribe(&rx.url("/sealed"), &["seal.*"], Some("acme")).await;
    let secret = sub["secret"].as_str().unwrap();
    let key_material = secret.strip_prefix("whsec_").unwrap();

    // What the bucket holds: neither the secret's text nor its key bytes.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let kv = js.get_key_value("herald-subscriptions").await.unwrap();
    let stored = kv.get(format!("acme.{}", sub["id"].as_str().unwrap())).await.unwrap().expect("stored");
    let stored_text = String::from_utf8_lossy(&stored);
    assert!(!stored_text.contains(secret) && !stored_text.contains(key_material), "the secret is stored in the clear");
    assert!(stored_text.contains("enc:v1:test:"), "sealed with the configured key");

    stack.publish(json!({"id": "seal-1", "type": "seal.x", "tenant": "acme", "data": {}})).await;
    rx.wait_for(1, SOON).await[0].verify(secret).expect("signed with the opened secret");
}
