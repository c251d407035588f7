//! Ed25519 (`v1a`) as a subscription's choice: the subscription shows its public key, webhooks
//! verify with it — through `herald-signature` and through an independent implementation
//! (Python's `cryptography`, i.e. OpenSSL) — a tampered body does not, and a rotation moves a
//! subscription between schemes with both signing during the grace period.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use herald_harness::{Received, Receiver, Stack};
use reqwest::Method;
use serde_json::json;

use crate::SOON;

/// What `tests/scripts/verify-ed25519.py` says of `webhook` and `body` with `public_key`.
fn python_verifies(public_key: &str, webhook: &Received, body: &[u8]) -> bool {
    let script = herald_harness::workspace_root().join("tests/scripts/verify-ed25519.py");
    let mut cmd = Command::new("python3");
    if let Some(path) = std::env::var_os("HERALD_CRYPTO_PY") {
        cmd.env("PYTHONPATH", path);
    }
    let mut child = cmd
        .arg(script)
        .args([public_key, webhook.header("webhook-id").unwrap(), webhook.header("webhook-timestamp").unwrap()])
        .arg(webhook.header("webhook-signature").unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.status.code() {
        Some(0) if said == "valid" => true,
        Some(1) if said == "invalid" => false,
        _ => panic!(
            "the independent verifier did not run (python3 with `cryptography`; scripts/test.sh installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_subscriptions_sign_v1a_that_independent_verifiers_accept_and_rotate_across_schemes() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    let (status, _, sub) = stack
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": rx.url("/ed"), "event_types": ["sig.*"], "signature_scheme": "ed25519"})),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["signature_scheme"], "ed25519");
    assert!(sub.get("secret").is_none(), "an Ed25519 subscription has no shared secret to show: {sub}");
    let public_key = sub["public_key"].as_str().expect("the public key is shown").to_owned();
    assert!(public_key.starts_with("whpk_"));
    let id = sub["id"].as_str().unwrap().to_owned();
    // Readable at any time (it is public), unlike a secret; the signing key never is.
    let (_, _, read) = stack.call(Method::GET, &format!("/v1/subscriptions/{id}"), None).await;
    assert_eq!(read["public_key"], public_key.as_str());
    assert!(!read.to_string().contains("whsk_"), "{read}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.publish(json!({"id": "sig-1", "type": "sig.x", "data": {"amount": 42}})).await;
    let webhook = rx.wait_for(1, SOON).await.remove(0);
    let header = webhook.header("webhook-signature").unwrap().to_owned();
    assert!(header.starts_with("v1a,") && !header.contains("v1,"), "only v1a: {header}");
    webhook.verify_public_key(&public_key).expect("herald-signature verifies it");
    assert!(python_verifies(&public_key, &webhook, &webhook.body), "OpenSSL's Ed25519 verifies it");
    let mut tampered = webhook.body.to_vec();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    assert!(!python_verifies(&public_key, &webhook, &tampered), "a tampered body fails with OpenSSL");
    let mut forged = webhook.clone();
    forged.body = tampered.into();
    assert!(forged.verify_public_key(&public_key).is_err(), "a tampered body fails with herald-signature");
    let other = herald_signature::SigningKey::generate().public_key().to_text();
    assert!(!python_verifies(&other, &webhook, &webhook.body), "another key does not verify it");

    // Move to HMAC with a grace period: both schemes sign meanwhile.
    let (status, _, rotated) = stack
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            Some(json!({"grace": "1h", "signature_scheme": "hmac-sha256"})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["signature_scheme"], "hmac-sha256");
    let secret = rotated["secret"].as_str().expect("the new HMAC secret, shown once").to_owned();
    let (_, _, read) = stack.call(Method::GET, &format!("/v1/subscriptions/{id}"), None).await;
    assert_eq!(read["signature_scheme"], "hmac-sha256");
    assert_eq!(read["public_keys"][0]["public_key"], public_key.as_str(), "the old key still signs: {read}");
    assert!(read["public_keys"][0]["expires_at"].is_string(), "{read}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.publish(json!({"id": "sig-2", "type": "sig.x", "data": {}})).await;
    let both = rx.wait_for(2, SOON).await.remove(1);
    both.verify(&secret).expect("the new HMAC secret verifies");
    both.verify_public_key(&public_key).expect("the old Ed25519 key verifies during the grace");
    assert!(python_verifies(&public_key, &both, &both.body));

    // And back to Ed25519 at once: a new key pair, the HMAC secret retired now.
    let (status, _, back) = stack
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            Some(json!({"grace": "0s", "signature_scheme": "ed25519"})),
        )
        .await;
    assert_eq!(status, 200, "{back}");
    let new_key = back["public_key"].as_str().unwrap().to_owned();
    assert!(back.get("secret").is_none() && new_key != public_key, "{back}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.publish(json!({"id": "sig-3", "type": "sig.x", "data": {}})).await;
    let last = rx.wait_for(3, SOON).await.remove(2);
    last.verify_public_key(&new_key).expect("the new key verifies");
    assert!(last.verify(&secret).is_err(), "the HMAC secret retired with no grace");
    assert!(!python_verifies(&public_key, &last, &last.body), "the first key retired too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_users_bring_are_checked_against_the_scheme() {
    let stack = Stack::gateway_only().await;
    let key = herald_signature::SigningKey::generate();
    let create = |body: serde_json::Value| stack.call(Method::POST, "/v1/subscriptions", Some(body));
    let (status, _, sub) =
        create(json!({"url": "https://example.com/", "event_types": ["a"], "secret": key.to_text()})).await;
    assert_eq!(status, 201, "a whsk_ key makes an Ed25519 subscription: {sub}");
    assert_eq!(sub["public_key"], key.public_key().to_text().as_str());
    for (body, field) in [
        (json!({"url": "https://example.com/", "event_types": ["a"], "signature_scheme": "rsa"}), "signature_scheme"),
        (
            json!({"url": "https://example.com/", "event_types": ["a"], "signature_scheme": "hmac-sha256", "secret": key.to_text()}),
            "secret",
        ),
        (json!({"url": "https://example.com/", "event_types": ["a"], "secret": "whsk_AAAA"}), "secret"),
    ] {
        let (status, _, problem) = create(body).await;
        assert_eq!((status, problem["field"].as_str()), (400, Some(field)), "{problem}");
    }
}
