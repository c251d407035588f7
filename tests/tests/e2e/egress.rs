//! Delivery to the real internet's shapes: HTTPS with a private CA trusted through
//! `HERALD_CA_FILE` (and refused, as `tls`, when a certificate is untrusted, expired or for
//! another name), and an egress proxy (Debian's tinyproxy) that deliveries pass through.

use std::time::{Duration, Instant};

use herald_harness::{Proxy, Receiver, Stack, TestCa, Validity};
use reqwest::Method;
use serde_json::{Value, json};

use crate::SOON;

/// Waits for the first attempt record of subscription `id` and returns it.
async fn first_attempt(stack: &Stack, id: &str) -> Value {
    let deadline = Instant::now() + SOON;
    loop {
        let (_, _, page) = stack.call(Method::GET, &format!("/v1/subscriptions/{id}/attempts"), None).await;
        if let Some(attempt) = page["data"].as_array().and_then(|a| a.last()) {
            return attempt.clone();
        }
        assert!(Instant::now() < deadline, "no attempt recorded for {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_deliveries_trust_the_ca_file_and_refuse_as_tls_what_it_does_not_vouch_for() {
    let ca = TestCa::new("Herald test CA");
    let rogue = TestCa::new("Someone else's CA");
    let good = Receiver::start_tls("127.0.0.1", ca.server_config("hooks.test", Validity::Current)).await;
    let expired = Receiver::start_tls("127.0.0.1", ca.server_config("old.test", Validity::Expired)).await;
    let misnamed = Receiver::start_tls("127.0.0.1", ca.server_config("other.test", Validity::Current)).await;
    let untrusted = Receiver::start_tls("127.0.0.1", rogue.server_config("rogue.test", Validity::Current)).await;

    let mut stack = Stack::gateway_only().await;
    let ca_file = ca.write_pem();
    let resolve = "hooks.test=127.0.0.1,old.test=127.0.0.1,wrong.test=127.0.0.1,rogue.test=127.0.0.1";
    stack.start_dispatcher_with(&[("--ca-file", ca_file.to_str().unwrap()), ("--resolve", resolve)]);

    let targets = [
        ("good", good.https_url("hooks.test", "/in")),
        ("expired", expired.https_url("old.test", "/in")),
        ("misnamed", misnamed.https_url("wrong.test", "/in")),
        ("untrusted", untrusted.https_url("rogue.test", "/in")),
    ];
    let mut ids = std::collections::HashMap::new();
    let mut secret = String::new();
    for (name, url) in &targets {
        let sub = stack.subscribe(url, &["tls.x"], None).await;
        if *name == "good" {
            secret = sub["secret"].as_str().unwrap().to_owned();
        }
        ids.insert(*name, sub["id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = stack.publish(json!({"id": "tls-1", "type": "tls.x", "data": {"secure": true}})).await;
    assert_eq!(status, 202, "{body}");

    let got = good.wait_for(1, SOON).await;
    got[0].verify(&secret).expect("signed");
    assert_eq!(first_attempt(&stack, &ids["good"]).await["outcome"], "delivered");

    for (name, says) in [
        ("expired", "has expired"),
        ("misnamed", "not valid for the URL's host name"),
        ("untrusted", "not signed by a trusted authority"),
    ] {
        let attempt = first_attempt(&stack, &ids[name]).await;
        assert_eq!(attempt["error_class"], "tls", "{name}: {attempt}");
        assert_eq!(attempt["outcome"], "retry", "{name}: a certificate can be fixed, so it is retried: {attempt}");
        let error = attempt["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{name}: {error:?} should say {says:?}");
    }
    for (name, rx) in [("expired", &expired), ("misnamed", &misnamed), ("untrusted", &untrusted)] {
        assert!(rx.received().is_empty(), "{name}: nothing may be sent over a connection Herald does not trust");
        assert!(rx.failed_handshakes() >= 1, "{name}: the handshake was attempted and refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_file_a_private_ca_is_not_trusted() {
    let ca = TestCa::new("Herald test CA");
    let rx = Receiver::start_tls("127.0.0.1", ca.server_config("hooks.test", Validity::Current)).await;
    let mut stack = Stack::gateway_only().await;
    stack.start_dispatcher_with(&[("--resolve", "hooks.test=127.0.0.1")]);
    let sub = stack.subscribe(&rx.https_url("hooks.test", "/in"), &["tls.y"], None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.publish(json!({"id": "tls-2", "type": "tls.y", "data": {}})).await;
    let attempt = first_attempt(&stack, sub["id"].as_str().unwrap()).await;
    assert_eq!(attempt["error_class"], "tls", "{attempt}");
    assert!(rx.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_go_through_the_egress_proxy_except_no_proxy_hosts() {
    let proxy = Proxy::start();
    let ca = TestCa::new("Herald test CA");
    // The proxy resolves what it connects to, so these are names it knows: localhost.
    let plain = Receiver::start().await;
    let secure = Receiver::start_tls("127.0.0.1", ca.server_config("localhost", Validity::Current)).await;
    let direct = Receiver::start_on("127.0.0.2").await;
    let mut stack = Stack::gateway_only().await;
    let ca_file = ca.write_pem();
    let proxy_url = proxy.url();
    stack.start_dispatcher_with(&[
        ("--ca-file", ca_file.to_str().unwrap()),
        ("--proxy-url", &proxy_url),
        ("--no-proxy", "127.0.0.2"),
    ]);
    let plain_url = format!("http://localhost:{}/plain", plain.url("").rsplit(':').next().unwrap());
    for url in [plain_url.clone(), secure.https_url("localhost", "/secure"), direct.url("/direct")] {
        stack.subscribe(&url, &["px.x"], None).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.publish(json!({"id": "px-1", "type": "px.x", "data": {}})).await;
    plain.wait_for(1, SOON).await;
    secure.wait_for(1, SOON).await;
    direct.wait_for(1, SOON).await;

    let relayed = proxy.requests();
    assert!(
        relayed.iter().any(|r| r.starts_with(&format!("POST {plain_url}"))),
        "plain HTTP through the proxy: {relayed:?}"
    );
    let connect = format!("CONNECT localhost:{}", secure.https_url("x", "").rsplit(':').next().unwrap());
    assert!(relayed.iter().any(|r| r.starts_with(&connect)), "HTTPS tunnelled through the proxy: {relayed:?}");
    assert!(!relayed.iter().any(|r| r.contains("127.0.0.2")), "a HERALD_NO_PROXY host goes direct: {relayed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_cannot_be_reached_fails_attempts_as_connection_errors_and_loses_nothing() {
    let rx = Receiver::start().await;
    let mut stack = Stack::gateway_only().await;
    let nowhere = format!("http://127.0.0.1:{}", herald_harness::free_port());
    stack.start_dispatcher_with(&[("--proxy-url", &nowhere), ("--retry-schedule", "1s,1s,1s,1s,1s,1s,1s,1s,1s,1s")]);
    let sub = stack.subscribe(&rx.url("/via-proxy"), &["px.y"], None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.publish(json!({"id": "px-2", "type": "px.y", "data": {}})).await;
    let attempt = first_attempt(&stack, sub["id"].as_str().unwrap()).await;
    assert_eq!(attempt["error_class"], "connection", "{attempt}");
    assert_eq!(attempt["outcome"], "retry", "{attempt}");
    assert!(rx.received().is_empty());

    // The proxy fixed (the dispatcher restarted without it): the retry delivers.
    stack.stop_dispatcher().await;
    stack.start_dispatcher();
    rx.wait_for(1, Duration::from_secs(30)).await;
}

/// The DER of the first certificate of a PEM document, as receivers fingerprint it.
fn fingerprint_of(pem: &str) -> String {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    herald_harness::fingerprint(&CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_presents_its_client_certificate_to_a_server_that_requires_one() {
    let ca = TestCa::new("Herald test CA");
    let clients = TestCa::new("Subscriber's client CA");
    let strangers = TestCa::new("Another client CA");
    let rx =
        Receiver::start_tls("127.0.0.1", ca.server_config_requiring_client_certificates("mtls.test", &clients)).await;
    let mut stack = Stack::gateway_only().await;
    let ca_file = ca.write_pem();
    stack.start_dispatcher_with(&[
        ("--ca-file", ca_file.to_str().unwrap()),
        ("--resolve", "mtls.test=127.0.0.1"),
        ("--retry-schedule", "1s,1s,1s,1s,1s,1s,1s,1s,1s,1s"),
    ]);
    let url = rx.https_url("mtls.test", "/in");
    let create = |body: Value| stack.call(Method::POST, "/v1/subscriptions", Some(body));

    let (cert, key) = clients.issue_client("orders-sender");
    let (status, _, with) = create(json!({"url": url, "event_types": ["mtls.x"],
        "client_certificate": {"certificate": cert, "private_key": key}}))
    .await;
    assert_eq!(status, 201, "{with}");
    let shown = &with["client_certificate"];
    assert_eq!(shown["subject"], "CN=orders-sender", "{with}");
    assert_eq!(shown["fingerprint_sha256"], fingerprint_of(&cert).as_str());
    assert!(shown["not_after"].is_string());
    let with_id = with["id"].as_str().unwrap().to_owned();
    let (_, _, read) = stack.call(Method::GET, &format!("/v1/subscriptions/{with_id}"), None).await;
    assert!(!read.to_string().contains("PRIVATE KEY"), "the key is never returned: {read}");
    // At rest, the key is sealed.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let kv = js.get_key_value("herald-subscriptions").await.unwrap();
    let stored = kv.get(format!("default.{with_id}")).await.unwrap().expect("stored");
    assert!(!String::from_utf8_lossy(&stored).contains("PRIVATE KEY"), "the key is stored sealed");

    let (_, _, without) = create(json!({"url": url, "event_types": ["mtls.x"]})).await;
    let without_id = without["id"].as_str().unwrap().to_owned();
    let (stranger_cert, stranger_key) = strangers.issue_client("intruder");
    let (_, _, stranger) = create(json!({"url": url, "event_types": ["mtls.x"],
        "client_certificate": {"certificate": stranger_cert, "private_key": stranger_key}}))
    .await;
    let stranger_id = stranger["id"].as_str().unwrap().to_owned();

    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.publish(json!({"id": "mtls-1", "type": "mtls.x", "data": {}})).await;
    let got = rx.wait_for(1, SOON).await;
    assert_eq!(first_attempt(&stack, &with_id).await["outcome"], "delivered");
    for (id, says) in [
        (&without_id, "requires a client certificate"),
        (&stranger_id, "does not accept the subscription's client certificate"),
    ] {
        let attempt = first_attempt(&stack, id).await;
        // Under TLS 1.3 the server judges the client's certificate after the client has finished
        // its half of the handshake: its refusal (an alert) usually reaches the client as the
        // reason, but may instead show as the connection closing before the request went out.
        match attempt["error_class"].as_str().unwrap_or_default() {
            "tls" => {
                assert!(attempt["error"].as_str().unwrap_or_default().contains(says), "{attempt} should say {says:?}")
            }
            "request" | "connection" => {}
            other => panic!("{other}: {attempt}"),
        }
        assert_eq!(attempt["outcome"], "retry", "{attempt}");
    }
    assert_eq!(got.len(), 1, "only the subscription with an accepted certificate got through");
    assert_eq!(rx.client_certificates(), vec![fingerprint_of(&cert)], "the subscription's own certificate");

    // A change that leaves the certificate alone keeps the subscription's client, and so its
    // connection: the next delivery needs no new handshake.
    let (status, _, _) = stack
        .call(Method::PATCH, &format!("/v1/subscriptions/{with_id}"), Some(json!({"description": "renamed"})))
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.publish(json!({"id": "mtls-2", "type": "mtls.x", "data": {}})).await;
    rx.wait_for(2, SOON).await;
    assert_eq!(rx.client_certificates().len(), 1, "delivered over the connection it had");

    // Replaced: the subscription without one gets a certificate, and its next retry delivers.
    let (second_cert, second_key) = clients.issue_client("billing-sender");
    let (status, _, patched) = stack
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{without_id}"),
            Some(json!({"client_certificate": {"certificate": second_cert, "private_key": second_key}})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["client_certificate"]["subject"], "CN=billing-sender");
    let got = rx.wait_for(4, Duration::from_secs(30)).await;
    assert!(rx.client_certificates().contains(&fingerprint_of(&second_cert)), "the new certificate was presented");
    let billing: Vec<_> = got.iter().filter_map(|r| r.header("webhook-id")).collect();
    assert_eq!(billing.iter().filter(|id| **id == "mtls-1").count(), 2, "mtls-1 reached both: {billing:?}");

    // Removed with null; a key that is not the certificate's is refused with the reason.
    let (status, _, removed) = stack
        .call(Method::PATCH, &format!("/v1/subscriptions/{with_id}"), Some(json!({"client_certificate": null})))
        .await;
    assert_eq!(status, 200, "{removed}");
    assert!(removed.get("client_certificate").is_none(), "{removed}");
    let (_, other_key) = clients.issue_client("someone");
    let (status, _, problem) = stack
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{with_id}"),
            Some(json!({"client_certificate": {"certificate": cert, "private_key": other_key}})),
        )
        .await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("client_certificate")), "{problem}");
    assert!(problem["detail"].as_str().unwrap_or_default().contains("does not belong"), "{problem}");
}
