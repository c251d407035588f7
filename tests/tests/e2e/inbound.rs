//! Inbound webhooks: requests signed by each provider's own library (Stripe's Node library,
//! GitHub's `@octokit/webhooks-methods`, the Standard Webhooks library, Shopify's documented
//! HMAC) become events that a subscriber receives signed by Herald; forgeries, stale
//! timestamps and oversized bodies are refused with the documented status, counted, and never
//! stored. The signers run as processes and share no code with Herald
//! (`scripts/ensure-inbound-tools.sh` installs them).

use std::path::PathBuf;
use std::process::Command;

use herald_harness::{Receiver, Stack, metric_sum, temp_dir, workspace_root};
use reqwest::Method;
use serde_json::{Value, json};

use crate::SOON;

fn tools() -> (String, String) {
    let root = workspace_root();
    let js =
        std::env::var("HERALD_INBOUND_JS").unwrap_or_else(|_| root.join(".tools/inbound-js").display().to_string());
    let py =
        std::env::var("HERALD_INBOUND_PY").unwrap_or_else(|_| root.join(".tools/inbound-py").display().to_string());
    (js, py)
}

/// The headers `provider`'s own library signs `body` with.
fn sign(provider: &str, secret: &str, body: &[u8], extra: &[&str]) -> Vec<(String, String)> {
    let file: PathBuf = temp_dir("herald-inbound").join("body");
    std::fs::write(&file, body).expect("body file");
    let (js, py) = tools();
    let scripts = workspace_root().join("tests/scripts");
    let out = match provider {
        "stripe" | "github" => Command::new("node")
            .arg(scripts.join("sign-inbound.mjs"))
            .args([js.as_str(), provider, secret])
            .arg(&file)
            .args(extra)
            .output(),
        _ => Command::new("python3")
            .arg(scripts.join("sign_inbound.py"))
            .args([provider, secret])
            .arg(&file)
            .args(extra)
            .env("PYTHONPATH", py)
            .output(),
    }
    .expect("run the signer");
    assert!(out.status.success(), "{provider} signer: {}", String::from_utf8_lossy(&out.stderr));
    let headers: serde_json::Map<String, Value> = serde_json::from_slice(&out.stdout).expect("headers JSON");
    headers.into_iter().map(|(k, v)| (k, v.as_str().unwrap().to_owned())).collect()
}

/// POSTs `body` to `/in/{source}` with `headers`; the status and the JSON answer.
async fn send(stack: &Stack, source: &str, headers: &[(String, String)], body: &[u8]) -> (u16, Value) {
    let mut request = stack.http.post(format!("{}/in/{source}", stack.gateway)).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn create_source(stack: &Stack, body: Value) -> Value {
    let (status, _, source) = stack.call(Method::POST, "/v1/sources", Some(body)).await;
    assert_eq!(status, 201, "{source}");
    source
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn with(mut headers: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    headers.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_signed_by_each_providers_library_become_events_and_forgeries_never_do() {
    let rx = Receiver::start().await;
    let stack = Stack::start_with(true, &["--max-body", "64KiB"]).await;
    let sub = stack
        .subscribe(&rx.url("/all"), &["charge.>", "github.>", "shopify.>", "invoice.>", "ping.>"], Some("acme"))
        .await;
    let herald_secret = sub["secret"].as_str().unwrap().to_owned();

    let stripe =
        create_source(&stack, json!({"provider": "stripe", "secret": "whsec_stripe_test_secret", "tenant": "acme"}))
            .await;
    let github = create_source(
        &stack,
        json!({"provider": "github", "secret": "gh-s3cret", "tenant": "acme", "event_type": "github.{type}"}),
    )
    .await;
    let shopify = create_source(
        &stack,
        json!({"provider": "shopify", "secret": "shpss_secret", "tenant": "acme", "event_type": "shopify.{type}"}),
    )
    .await;
    // No secret given: Herald makes one and shows it once.
    let standard = create_source(&stack, json!({"provider": "standard-webhooks", "tenant": "acme"})).await;
    let standard_secret = standard["secret"].as_str().expect("the made secret, shown once").to_owned();
    assert!(standard_secret.starts_with("whsec_"));
    assert!(standard["url"].as_str().unwrap().ends_with(&format!("/in/{}", standard["id"].as_str().unwrap())));
    let (_, _, shown) =
        stack.call(Method::GET, &format!("/v1/sources/{}", standard["id"].as_str().unwrap()), None).await;
    assert!(shown.get("secret").is_none() && !shown.to_string().contains(&standard_secret), "{shown}");
    let id = |s: &Value| s["id"].as_str().unwrap().to_owned();

    // Stripe, with its own library's header; then Stripe's retry of the same event.
    let body = br#"{"id":"evt_1NqX","object":"event","type":"charge.succeeded","data":{"object":{"amount":2000}}}"#;
    let headers = sign("stripe", "whsec_stripe_test_secret", body, &[]);
    let (status, first) = send(&stack, &id(&stripe), &headers, body).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["id"], format!("{}:evt_1NqX", id(&stripe)));
    assert_eq!(first["duplicate"], false);
    let (status, again) = send(&stack, &id(&stripe), &headers, body).await;
    assert_eq!((status, &again["duplicate"]), (202, &json!(true)), "a provider's retry is recognised: {again}");

    // GitHub: the type and delivery id from its headers.
    let gh_body = br#"{"action":"opened","issue":{"number":7}}"#;
    let gh_headers = with(
        sign("github", "gh-s3cret", gh_body, &[]),
        &[("x-github-event", "issues"), ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")],
    );
    let (status, answer) = send(&stack, &id(&github), &gh_headers, gh_body).await;
    assert_eq!(status, 202, "{answer}");

    // Shopify: its documented HMAC; the topic `orders/create` becomes `shopify.orders.create`.
    let shop_body = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;
    let shop_headers = with(
        sign("shopify", "shpss_secret", shop_body, &[]),
        &[("x-shopify-topic", "orders/create"), ("x-shopify-webhook-id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")],
    );
    let (status, answer) = send(&stack, &id(&shopify), &shop_headers, shop_body).await;
    assert_eq!(status, 202, "{answer}");

    // Standard Webhooks, with the reference library and the secret Herald made.
    let sw_body = br#"{"type":"invoice.paid","data":{"invoice":"in_1"}}"#;
    let sw_headers =
        sign("standard-webhooks", &standard_secret, sw_body, &["msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", &now().to_string()]);
    let (status, answer) = send(&stack, &id(&standard), &sw_headers, sw_body).await;
    assert_eq!(status, 202, "{answer}");

    // Every accepted request reaches the subscriber once, signed by Herald, its body kept.
    let got = rx.wait_for(4, SOON).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let got = if rx.received().len() > got.len() { rx.received() } else { got };
    assert_eq!(got.len(), 4, "one delivery per accepted event, none for the retry");
    let mut types: Vec<String> = got
        .iter()
        .map(|r| {
            r.verify(&herald_secret).expect("signed by Herald");
            r.json()["type"].as_str().unwrap().to_owned()
        })
        .collect();
    types.sort();
    assert_eq!(types, ["charge.succeeded", "github.issues", "invoice.paid", "shopify.orders.create"]);
    let stripe_delivery = got.iter().find(|r| r.json()["type"] == "charge.succeeded").unwrap();
    let delivered = String::from_utf8(stripe_delivery.body.to_vec()).unwrap();
    assert!(
        delivered.contains(std::str::from_utf8(body).unwrap()),
        "the provider's body is the event's data byte for byte: {delivered}"
    );
    assert_eq!(stripe_delivery.json()["tenant"], "acme");

    // Refusals: each 401 with a reason, counted, never stored.
    let forged = [
        (
            "tampered",
            id(&github),
            with(gh_headers.clone(), &[]),
            br#"{"action":"deleted","issue":{"number":7}}"#.to_vec(),
            "does not match",
        ),
        (
            "wrong secret",
            id(&shopify),
            with(sign("shopify", "someone-else", shop_body, &[]), &[("x-shopify-topic", "orders/create")]),
            shop_body.to_vec(),
            "does not match",
        ),
        (
            "stale",
            id(&stripe),
            sign("stripe", "whsec_stripe_test_secret", body, &[&(now() - 600).to_string()]),
            body.to_vec(),
            "tolerance",
        ),
        (
            "unsigned",
            id(&github),
            vec![("x-github-event".to_owned(), "issues".to_owned())],
            gh_body.to_vec(),
            "no X-Hub-Signature-256",
        ),
    ];
    for (name, source, headers, body, says) in &forged {
        let (status, problem) = send(&stack, source, headers, body).await;
        assert_eq!(status, 401, "{name}: {problem}");
        assert!(problem["detail"].as_str().unwrap_or_default().contains(says), "{name}: {problem}");
    }
    let big = vec![b'x'; 70 * 1024];
    let (status, problem) = send(&stack, &id(&github), &sign("github", "gh-s3cret", &big, &[]), &big).await;
    assert_eq!(status, 413, "{problem}");
    let (status, _) = send(&stack, "src_01JABCDEFGHJKMNPQRSTVWXYZ0", &gh_headers, gh_body).await;
    assert_eq!(status, 404, "an unknown source");

    let metrics = stack.http.get(format!("{}/metrics", stack.gateway)).send().await.unwrap().text().await.unwrap();
    let count = |labels: &str| metric_sum(&metrics, &format!("herald_inbound_requests_total{{{labels}}}"));
    assert_eq!(count(r#"provider="github",outcome="bad_signature""#), 1.0, "{metrics}");
    assert_eq!(count(r#"provider="github",outcome="missing_signature""#), 1.0);
    assert_eq!(count(r#"provider="shopify",outcome="bad_signature""#), 1.0);
    assert_eq!(count(r#"provider="stripe",outcome="stale_timestamp""#), 1.0);
    assert_eq!(count(r#"provider="stripe",outcome="duplicate""#), 1.0);
    assert_eq!(count(r#"provider="github",outcome="too_large""#), 1.0);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(rx.received().len(), 4, "nothing refused was delivered");

    // A deleted source's URL is gone.
    let (status, _, _) = stack.call(Method::DELETE, &format!("/v1/sources/{}", id(&github)), None).await;
    assert_eq!(status, 204);
    let (status, _) = send(&stack, &id(&github), &gh_headers, gh_body).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_sources_check_an_hmac_basic_credentials_or_a_key_and_sources_are_validated() {
    let stack = Stack::gateway_only().await;
    let hmac = create_source(
        &stack,
        json!({"provider": "hmac", "secret": "k", "header": "X-Signature", "algorithm": "sha256", "encoding": "hex",
               "prefix": "sha256=", "event_type": "ping.received", "id_header": "X-Delivery"}),
    )
    .await;
    let basic = create_source(
        &stack,
        json!({"provider": "basic", "secret": "pw", "username": "hooks", "event_type": "ping.basic"}),
    )
    .await;
    let key = create_source(&stack, json!({"provider": "api-key", "event_type": "ping.key"})).await;
    let made_key = key["secret"].as_str().unwrap().to_owned();
    let body = br#"{"hello":"world"}"#;
    // GitHub's library signs exactly `sha256=` + hex HMAC-SHA256: a configured source takes it.
    let signed = with(sign("github", "k", body, &[]), &[("x-delivery", "d-1")]);
    let signed: Vec<(String, String)> = signed
        .into_iter()
        .map(|(k, v)| (if k == "x-hub-signature-256" { "x-signature".into() } else { k }, v))
        .collect();
    let (status, answer) = send(&stack, hmac["id"].as_str().unwrap(), &signed, body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["id"], format!("{}:d-1", hmac["id"].as_str().unwrap()), "the id header names the delivery");

    let auth = |user_pass: &str| {
        let (user, pass) = user_pass.split_once(':').unwrap();
        let request = reqwest::Client::new().get("http://x").basic_auth(user, Some(pass)).build().unwrap();
        let value = request.headers()["authorization"].to_str().unwrap().to_owned();
        vec![("authorization".to_owned(), value)]
    };
    assert_eq!(send(&stack, basic["id"].as_str().unwrap(), &auth("hooks:pw"), body).await.0, 202);
    let (status, problem) = send(&stack, basic["id"].as_str().unwrap(), &auth("hooks:nope"), body).await;
    assert_eq!(status, 401, "{problem}");
    let key_header = |k: &str| vec![("x-api-key".to_owned(), k.to_owned())];
    assert_eq!(send(&stack, key["id"].as_str().unwrap(), &key_header(&made_key), body).await.0, 202);
    assert_eq!(send(&stack, key["id"].as_str().unwrap(), &key_header("guess"), body).await.0, 401);

    let (status, _, list) = stack.call(Method::GET, "/v1/sources", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    assert!(!list.to_string().contains(&made_key) && !list.to_string().contains("\"pw\""), "{list}");

    for (source, field) in [
        (json!({"provider": "paypal"}), "provider"),
        (json!({"provider": "basic", "secret": "x"}), "username"),
        (json!({"provider": "github", "algorithm": "sha1"}), "algorithm"),
        (json!({"provider": "standard-webhooks", "secret": "not-a-secret"}), "secret"),
        (json!({"provider": "stripe", "tenant": "herald"}), "tenant"),
    ] {
        let (status, _, problem) = stack.call(Method::POST, "/v1/sources", Some(source.clone())).await;
        assert_eq!(status, 400, "{source}: {problem}");
        assert_eq!(problem["field"], field, "{source}: {problem}");
    }
    // Sources are for admins.
    let (status, _, _) = stack.call_as("test-acme-token-0123456789", Method::GET, "/v1/sources", None).await;
    assert_eq!(status, 403);
}
