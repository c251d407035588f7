//! Endpoints that want credentials besides Herald's signature: OAuth2 access tokens from a real
//! authorization server on loopback (client credentials grant), HTTP Basic and static bearer
//! tokens.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser as _;
use herald_harness::{Receiver, Stack, TokenServer, dispatcher_args, token_server};
use reqwest::Method;
use serde_json::{Value, json};

use crate::SOON;

/// How long the server's tokens live.
const LIFETIME: Duration = Duration::from_secs(4);

async fn create(stack: &Stack, body: Value) -> Value {
    let (status, _, sub) = stack.call(Method::POST, "/v1/subscriptions", Some(body.clone())).await;
    assert_eq!(status, 201, "create {body}: {sub}");
    sub
}

async fn publish(stack: &Stack, kind: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let (status, body) = stack.publish(json!({"type": kind, "data": {"n": i}})).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Waits until every event in `ids` reached the protected endpoint with a live token.
async fn wait_accepted(server: &TokenServer, ids: &[String]) {
    let deadline = Instant::now() + SOON;
    loop {
        let accepted: HashSet<String> =
            server.webhooks().into_iter().filter(|w| w.status == 200).map(|w| w.webhook_id).collect();
        let missing = ids.iter().filter(|id| !accepted.contains(*id)).count();
        if missing == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{missing} of {} events not accepted", ids.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn attempts(stack: &Stack, id: &str) -> Vec<Value> {
    let (status, _, page) = stack.call(Method::GET, &format!("/v1/subscriptions/{id}/attempts?limit=500"), None).await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().cloned().unwrap_or_default()
}

fn issued(server: &TokenServer) -> usize {
    server.token_requests().iter().filter(|r| r.status == 200).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_asked_once_per_expiry_per_replica_renewed_once_after_a_401_and_a_failing_token_endpoint_fails_attempts_as_auth()
 {
    let server = TokenServer::start(LIFETIME).await;
    let stack = Stack::start().await;
    // A second replica, with its own tokens.
    let config = herald_dispatcher::Config::try_parse_from(dispatcher_args(&stack.nats.url())).unwrap();
    let second = tokio_util::sync::CancellationToken::new();
    let replica = tokio::spawn(herald_dispatcher::run(config, second.clone()));
    const REPLICAS: usize = 2;

    let sub = create(
        &stack,
        json!({"url": server.url("/hooks"), "event_types": ["order.*"], "auth": {
            "type": "oauth2_client_credentials", "token_url": server.token_url(),
            "client_id": token_server::CLIENT_ID, "client_secret": token_server::CLIENT_SECRET,
            "scope": "webhooks:write", "audience": "https://hooks.example"}}),
    )
    .await;
    let id = sub["id"].as_str().unwrap();
    assert!(!sub.to_string().contains(token_server::CLIENT_SECRET), "the client secret is never shown: {sub}");
    assert_eq!(sub["auth"]["client_auth"], "basic", "{sub}");
    assert_eq!(sub["auth"]["scope"], "webhooks:write", "{sub}");

    // Many deliveries, one token per replica at most: deliveries that need one while it is
    // being fetched wait for that fetch.
    let first = publish(&stack, "order.paid", 100).await;
    wait_accepted(&server, &first).await;
    let asked = issued(&server);
    assert!((1..=REPLICAS).contains(&asked), "{asked} tokens for 100 deliveries by {REPLICAS} replicas");
    let request = &server.token_requests()[0];
    assert_eq!(request.client_auth, "basic");
    assert_eq!(request.form.get("scope").map(String::as_str), Some("webhooks:write"));
    assert_eq!(request.form.get("audience").map(String::as_str), Some("https://hooks.example"));
    assert!(!request.form.contains_key("client_secret"), "HTTP Basic keeps the secret out of the form");

    // Past the tokens' lifetime: new ones, asked before the old ones expired, so that no
    // delivery is refused.
    tokio::time::sleep(LIFETIME + Duration::from_millis(500)).await;
    let later = publish(&stack, "order.paid", 50).await;
    wait_accepted(&server, &later).await;
    let renewed = issued(&server) - asked;
    assert!((1..=REPLICAS).contains(&renewed), "{renewed} tokens asked after expiry");
    let refused: Vec<_> = server.webhooks().into_iter().filter(|w| w.status == 401).collect();
    assert!(refused.is_empty(), "no delivery carries an expired token: {refused:?}");

    // Revoked before its time: the 401 drops the token, a new one is fetched and the delivery
    // is sent again in the same attempt.
    server.revoke_all();
    let before = issued(&server);
    let revoked = publish(&stack, "order.paid", 1).await;
    wait_accepted(&server, &revoked).await;
    let tries: Vec<u16> =
        server.webhooks().into_iter().filter(|w| w.webhook_id == revoked[0]).map(|w| w.status).collect();
    assert_eq!(tries, vec![401, 200], "one refusal, one renewal");
    assert_eq!(issued(&server) - before, 1, "one new token");
    let records: Vec<Value> =
        attempts(&stack, id).await.into_iter().filter(|a| a["event_id"] == revoked[0].as_str()).collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!((records[0]["outcome"].as_str(), records[0]["status"].as_u64()), (Some("delivered"), Some(200)));

    // A token endpoint that fails: nothing is sent, the attempts fail as `auth` and the
    // delivery is dead-lettered when the schedule (1s, 1s, 1s) is spent.
    server.fail_with(Some(503));
    let failing = create(
        &stack,
        json!({"url": server.url("/other"), "event_types": ["invoice.*"], "retry_schedule": "1s,1s", "auth": {
            "type": "oauth2_client_credentials", "token_url": server.token_url(), "client_auth": "post",
            "client_id": token_server::CLIENT_ID, "client_secret": token_server::CLIENT_SECRET}}),
    )
    .await;
    let failing_id = failing["id"].as_str().unwrap();
    let lost = publish(&stack, "invoice.sent", 1).await;
    let deadline = Instant::now() + SOON;
    let records = loop {
        let records = attempts(&stack, failing_id).await;
        if records.iter().any(|a| a["outcome"] == "dead_letter") {
            break records;
        }
        assert!(Instant::now() < deadline, "not dead-lettered: {records:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(records.len(), 3, "{records:?}");
    for record in &records {
        assert_eq!(record["error_class"], "auth", "{record}");
        let error = record["error"].as_str().unwrap_or_default();
        assert!(error.contains("token endpoint") && error.contains("HTTP 503: temporarily_unavailable"), "{error}");
    }
    assert!(server.webhooks().iter().all(|w| w.webhook_id != lost[0]), "nothing is sent without a token");
    let (status, _, dead) = stack.call(Method::GET, &format!("/v1/dead-letters?subscription={failing_id}"), None).await;
    assert_eq!(status, 200, "{dead}");
    assert_eq!(dead["data"].as_array().map(Vec::len), Some(1), "{dead}");

    // The endpoint back: the same subscription's next event gets a token, asked in the form.
    server.fail_with(None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let back = publish(&stack, "invoice.sent", 1).await;
    wait_accepted(&server, &back).await;
    let last = server.token_requests().into_iter().rev().find(|r| r.status == 200).unwrap();
    assert_eq!(last.client_auth, "post");
    assert_eq!(last.form.get("client_id").map(String::as_str), Some(token_server::CLIENT_ID));

    second.cancel();
    replica.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_and_bearer_auth_are_sent_kept_without_their_secret_and_refused_where_they_cannot_apply() {
    let receiver = Receiver::start().await;
    let stack = Stack::start().await;
    let basic = create(
        &stack,
        json!({"url": receiver.url("/basic"), "event_types": ["user.*"],
            "auth": {"type": "basic", "username": "herald", "password": "pa ss:word"}}),
    )
    .await;
    let bearer = create(
        &stack,
        json!({"url": receiver.url("/bearer"), "event_types": ["user.*"], "auth": {"type": "bearer", "token": "static-t0ken"}}),
    )
    .await;
    for sub in [&basic, &bearer] {
        let shown = sub.to_string();
        assert!(!shown.contains("pa ss:word") && !shown.contains("static-t0ken"), "secrets are never shown: {shown}");
    }
    assert_eq!(basic["auth"], json!({"type": "basic", "username": "herald"}));
    assert_eq!(bearer["auth"], json!({"type": "bearer"}));

    publish(&stack, "user.created", 1).await;
    receiver.wait_count("/basic", 1, SOON).await;
    receiver.wait_count("/bearer", 1, SOON).await;
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("herald:pa ss:word"));
    assert_eq!(receiver.received_on("/basic")[0].header("authorization"), Some(expected.as_str()));
    assert_eq!(receiver.received_on("/bearer")[0].header("authorization"), Some("Bearer static-t0ken"));
    // Signed as ever besides.
    assert!(receiver.received_on("/bearer")[0].verify(bearer["secret"].as_str().unwrap()).is_ok());

    // A change that leaves the secret out keeps it; `null` removes the auth.
    let basic_id = basic["id"].as_str().unwrap();
    let (status, _, changed) = stack
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{basic_id}"),
            Some(json!({"auth": {"type": "basic", "username": "herald"}})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    let bearer_id = bearer["id"].as_str().unwrap();
    let (status, _, removed) =
        stack.call(Method::PATCH, &format!("/v1/subscriptions/{bearer_id}"), Some(json!({"auth": null}))).await;
    assert_eq!(status, 200, "{removed}");
    assert!(removed.get("auth").is_none(), "{removed}");
    // Each dispatcher's watch applies a change within moments, in the bucket's order: publish
    // until the bearer change (the later write) shows, so the basic change has applied too.
    let deadline = Instant::now() + SOON;
    loop {
        let (basic_seen, bearer_seen) = (receiver.count_on("/basic"), receiver.count_on("/bearer"));
        publish(&stack, "user.created", 1).await;
        receiver.wait_count("/basic", basic_seen + 1, SOON).await;
        receiver.wait_count("/bearer", bearer_seen + 1, SOON).await;
        let sent = receiver.received_on("/bearer").last().and_then(|r| r.header("authorization").map(str::to_owned));
        if sent.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the removed auth is still sent: {sent:?}");
    }
    assert_eq!(receiver.received_on("/basic").last().unwrap().header("authorization"), Some(expected.as_str()));

    // What cannot go together is refused with the field at fault.
    let refusals = [
        (json!({"url": receiver.url("/x"), "event_types": [">"], "auth": {"type": "bearer"}}), "token: required"),
        (
            json!({"url": receiver.url("/x"), "event_types": [">"], "auth": {"type": "bearer", "token": "t", "password": "p"}}),
            "password does not apply",
        ),
        (
            json!({"url": receiver.url("/x"), "event_types": [">"], "headers": {"Authorization": "Bearer x"},
                "auth": {"type": "bearer", "token": "t"}}),
            "remove the subscription's own `authorization` header",
        ),
        (
            json!({"destination": {"type": "redis", "url": "redis://127.0.0.1:6379", "stream": "s"}, "event_types": [">"],
                "auth": {"type": "bearer", "token": "t"}}),
            "applies to webhooks only",
        ),
        (
            json!({"url": receiver.url("/x"), "event_types": [">"], "auth": {"type": "oauth2_client_credentials",
                "token_url": "http://169.254.169.254/token", "client_id": "c", "client_secret": "s"}}),
            "token_url",
        ),
        (json!({"url": receiver.url("/x"), "event_types": [">"], "auth": {"type": "digest"}}), "not one of"),
    ];
    for (body, says) in refusals {
        let (status, _, problem) = stack.call(Method::POST, "/v1/subscriptions", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{body}: {detail:?} should say {says:?}");
    }
}
