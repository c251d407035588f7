//! Destinations beyond HTTP, against real brokers: RabbitMQ (AMQP 0-9-1), a second nats-server
//! and Redis, from Debian's packages; messages read back with clients that share no code with
//! Herald (pika, redis-cli, async-nats).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use herald_harness::{NatsServer, Rabbit, Received, Receiver, Redis, Silent, Stack, TestCa, temp_dir};
use reqwest::Method;
use serde_json::{Value, json};

use crate::SOON;

/// Creates a subscription with `destination` and returns it (with its secret).
pub(crate) async fn subscribe(stack: &Stack, destination: Value, types: &[&str], extra: Value) -> Value {
    let mut body = json!({"destination": destination, "event_types": types});
    if let Some(extra) = extra.as_object() {
        for (k, v) in extra {
            body[k] = v.clone();
        }
    }
    let (status, _, sub) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "create subscription: {sub}");
    sub
}

/// The attempt records of subscription `id`, oldest first.
pub(crate) async fn attempts(stack: &Stack, id: &str) -> Vec<Value> {
    let (status, _, page) = stack.call(Method::GET, &format!("/v1/subscriptions/{id}/attempts?limit=500"), None).await;
    assert_eq!(status, 200, "{page}");
    let mut list = page["data"].as_array().cloned().unwrap_or_default();
    list.reverse();
    list
}

/// Waits until subscription `id` has an attempt record and returns the first.
async fn first_attempt(stack: &Stack, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(first) = attempts(stack, id).await.into_iter().next() {
            return first;
        }
        assert!(Instant::now() < deadline, "no attempt recorded for {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that subscription `id`'s first attempt failed as `class`, saying `says`, and is
/// to be retried.
async fn assert_failed_first(stack: &Stack, name: &str, id: &str, class: &str, says: &str) {
    let attempt = first_attempt(stack, id, SOON).await;
    assert_eq!(attempt["error_class"], class, "{name}: {attempt}");
    assert_eq!(attempt["outcome"], "retry", "{name}: {attempt}");
    let error = attempt["error"].as_str().unwrap_or_default();
    assert!(error.contains(says), "{name}: {error:?} should say {says:?}");
}

/// Polls `read` until it returns at least `n` messages with distinct webhook ids.
pub(crate) async fn collect(
    what: &str,
    n: usize,
    within: Duration,
    mut read: impl FnMut() -> Vec<Received>,
) -> Vec<Received> {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    loop {
        all.extend(read());
        let ids: HashSet<_> = all.iter().filter_map(|r| r.header("webhook-id").map(str::to_owned)).collect();
        if ids.len() >= n {
            return all;
        }
        assert!(Instant::now() < deadline, "{what}: {} of {n} arrived", ids.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_nats_and_redis_destinations_get_signed_messages_and_refusals_are_failed_attempts() {
    let (rabbit, redis) =
        tokio::task::block_in_place(|| (Rabbit::start(), Redis::start_with_password(Some("redis-pw"))));
    let broker = NatsServer::start_with_password("hooks", "nats-pw");
    let stack = Stack::start().await;

    rabbit.declare("herald-test", "orders", "order.#");
    let amqp = subscribe(
        &stack,
        json!({"type": "amqp", "url": rabbit.url(), "exchange": "herald-test", "routing_key": "{event_type}"}),
        &["order.*"],
        json!({"headers": {"x-team": "billing"}}),
    )
    .await;
    let redis_sub = subscribe(
        &stack,
        json!({"type": "redis", "url": redis.url(), "stream": "hooks:{tenant}", "max_len": 1000}),
        &["order.*"],
        json!({}),
    )
    .await;
    // A JetStream stream captures `hooks.>` on the second server; `core.>` is plain NATS.
    let broker_url = format!("nats://hooks:nats-pw@127.0.0.1:{}", broker.url().rsplit(':').next().unwrap());
    let broker_client = async_nats::ConnectOptions::new()
        .user_and_password("hooks".into(), "nats-pw".into())
        .connect(broker.url())
        .await
        .expect("connect to the second nats-server");
    let broker_js = async_nats::jetstream::new(broker_client.clone());
    broker_js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "HOOKS".into(),
            subjects: vec!["hooks.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    let mut core = broker_client.subscribe("core.>").await.expect("subscribe");
    broker_client.flush().await.unwrap();
    let nats_js = subscribe(
        &stack,
        json!({"type": "nats", "url": broker_url, "subject": "hooks.{event_type}"}),
        &["order.*"],
        json!({}),
    )
    .await;
    let nats_core = subscribe(
        &stack,
        json!({"type": "nats", "url": broker_url, "subject": "core.{tenant}"}),
        &["order.*"],
        json!({}),
    )
    .await;

    // Refusals, each a failed attempt with its class: wrong credentials (`auth`) on each broker,
    // a message no queue takes and an exchange that does not exist (`broker`).
    let wrong_amqp = rabbit.url().replace("guest:guest", "guest:wrong");
    let refused = [
        ("amqp-auth", json!({"type": "amqp", "url": wrong_amqp, "exchange": "herald-test"}), "auth", "ACCESS_REFUSED"),
        (
            "redis-auth",
            json!({"type": "redis", "url": redis.url().replace("redis-pw", "nope"), "stream": "s"}),
            "auth",
            "WRONGPASS",
        ),
        (
            "nats-auth",
            json!({"type": "nats", "url": broker_url.replace("nats-pw", "nope"), "subject": "hooks.x"}),
            "auth",
            "authorization",
        ),
        (
            "unroutable",
            json!({"type": "amqp", "url": rabbit.url(), "exchange": "herald-test", "routing_key": "nowhere.{event_type}"}),
            "broker",
            "no queue",
        ),
        ("no-exchange", json!({"type": "amqp", "url": rabbit.url(), "exchange": "missing"}), "broker", "NOT_FOUND"),
    ];
    let mut refused_ids = Vec::new();
    for (name, destination, _, _) in &refused {
        let sub = subscribe(&stack, destination.clone(), &["order.*"], json!({"description": name})).await;
        refused_ids.push(sub["id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let n = 5;
    for i in 0..n {
        let (status, body) = stack
            .publish(json!({"id": format!("dest-{i}"), "type": "order.paid", "data": {"i": i, "total": 42}}))
            .await;
        assert_eq!(status, 202, "{body}");
    }

    // AMQP: persistent, signed, its properties set from the event.
    let secret = amqp["secret"].as_str().unwrap();
    let got = collect("amqp", n, SOON, || rabbit.drain("orders")).await;
    for m in &got {
        m.verify(secret).expect("an AMQP message verifies like a webhook");
        assert_eq!(m.header("amqp-message-id"), m.header("webhook-id"));
        assert_eq!(m.header("amqp-type"), Some("order.paid"));
        assert_eq!(m.header("amqp-delivery-mode"), Some("2"), "persistent");
        assert_eq!(m.header("amqp-content-type"), Some("application/json"));
        assert_eq!(m.header("amqp-routing-key"), Some("order.paid"));
        assert_eq!(m.header("x-team"), Some("billing"), "the subscription's own headers travel too");
        assert_eq!(m.json()["data"]["total"], 42);
    }

    // Redis: one entry per delivery, fields = headers + body.
    let secret = redis_sub["secret"].as_str().unwrap();
    let got = collect("redis", n, SOON, || redis.entries("hooks:default")).await;
    for m in &got {
        m.verify(secret).expect("a stream entry verifies like a webhook");
    }

    // NATS with a stream: stored, deduplicated by id.
    let secret = nats_js["secret"].as_str().unwrap();
    let deadline = Instant::now() + SOON;
    let stream = loop {
        let mut stream = broker_js.get_stream("HOOKS").await.unwrap();
        if stream.info().await.unwrap().state.messages >= n as u64 || Instant::now() > deadline {
            break stream;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for seq in 1..=n as u64 {
        let raw = stream.get_raw_message(seq).await.expect("stored");
        let headers = raw
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().next().map(|v| v.to_string()).unwrap_or_default()));
        let m = Received::message(headers, raw.payload.to_vec());
        m.verify(secret).expect("a JetStream message verifies like a webhook");
        assert_eq!(raw.subject.as_str(), "hooks.order.paid");
    }

    // Core NATS: whoever listens gets them.
    let secret = nats_core["secret"].as_str().unwrap();
    for _ in 0..n {
        let msg =
            tokio::time::timeout(SOON, futures::StreamExt::next(&mut core)).await.expect("a core message").unwrap();
        assert_eq!(msg.subject.as_str(), "core.default");
        let headers = msg.headers.as_ref().unwrap().iter().map(|(k, v)| (k.to_string(), v[0].to_string()));
        Received::message(headers, msg.payload.to_vec()).verify(secret).expect("a core NATS message verifies");
    }

    // Every confirmed write is a delivered attempt.
    for sub in [&amqp, &redis_sub, &nats_js, &nats_core] {
        let id = sub["id"].as_str().unwrap();
        let first = first_attempt(&stack, id, SOON).await;
        assert_eq!(first["outcome"], "delivered", "{first}");
    }
    for ((name, _, class, says), id) in refused.iter().zip(&refused_ids) {
        assert_failed_first(&stack, name, id, class, says).await;
    }

    // Credentials are sealed and never shown: not in the API, not in attempt records.
    let (_, _, shown) =
        stack.call(Method::GET, &format!("/v1/subscriptions/{}", redis_sub["id"].as_str().unwrap()), None).await;
    assert_eq!(shown["destination"]["type"], "redis");
    assert_eq!(shown["destination"]["stream"], "hooks:{tenant}");
    assert_eq!(shown["destination"]["max_len"], 1000);
    let (_, _, list) = stack.call(Method::GET, "/v1/subscriptions?limit=100", None).await;
    let text = list.to_string();
    for secret in ["redis-pw", "nats-pw", "guest:guest"] {
        assert!(!text.contains(secret), "{secret} must not be shown: {text}");
    }
    let attempt_text = serde_json::to_string(&attempts(&stack, redis_sub["id"].as_str().unwrap()).await).unwrap();
    assert!(!attempt_text.contains("redis-pw"), "{attempt_text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_over_tls_are_trusted_through_the_ca_file_and_nats_takes_an_nkey() {
    let ca = TestCa::new("Herald broker CA");
    let rogue = TestCa::new("Someone else's CA");
    let (rabbit, redis, untrusted) =
        tokio::task::block_in_place(|| (Rabbit::start_tls(&ca), Redis::start_tls(&ca), Redis::start_tls(&rogue)));
    // A NATS server that speaks only TLS and knows one NKey user.
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let certs = temp_dir("herald-nats-tls");
    let (cert, key) = ca.write_server_files("127.0.0.1", &certs);
    let broker = NatsServer::start_with_config(&format!(
        "tls {{\n  cert_file: {cert:?}\n  key_file: {key:?}\n}}\nauthorization {{\n  users = [ {{ nkey: {:?} }} ]\n}}\n",
        user.public_key()
    ));
    let nats_port = broker.url().rsplit(':').next().unwrap().to_owned();
    let ca_file = ca.write_pem();
    let reader = async_nats::ConnectOptions::with_nkey(user.seed().unwrap())
        .add_root_certificates(ca_file.clone())
        .require_tls(true)
        .connect(format!("tls://127.0.0.1:{nats_port}"))
        .await
        .expect("a TLS client with the NKey connects");
    let mut hooks = reader.subscribe("secure.>").await.unwrap();
    reader.flush().await.unwrap();

    let mut stack = Stack::gateway_only().await;
    stack.start_dispatcher_with(&[("--ca-file", ca_file.to_str().unwrap())]);
    rabbit.declare("herald-tls", "secure", "#");
    let nats_tls = format!("tls://127.0.0.1:{nats_port}");
    let good = [
        ("amqps", json!({"type": "amqp", "url": rabbit.tls_url(), "exchange": "herald-tls"})),
        ("rediss", json!({"type": "redis", "url": redis.url(), "stream": "secure"})),
        (
            "nats-tls",
            json!({"type": "nats", "url": nats_tls, "subject": "secure.{event_type}", "credentials": user.seed().unwrap()}),
        ),
    ];
    let mut subs = std::collections::HashMap::new();
    for (name, destination) in good {
        subs.insert(name, subscribe(&stack, destination, &["tls.*"], json!({})).await);
    }
    let refused = [
        ("untrusted", json!({"type": "redis", "url": untrusted.url(), "stream": "secure"}), "tls", "UnknownIssuer"),
        (
            "stranger",
            json!({"type": "nats", "url": nats_tls, "subject": "secure.x", "credentials": stranger.seed().unwrap()}),
            "auth",
            "",
        ),
        ("no-credentials", json!({"type": "nats", "url": nats_tls, "subject": "secure.x"}), "auth", ""),
    ];
    let mut refused_ids = Vec::new();
    for (_, destination, _, _) in &refused {
        let sub = subscribe(&stack, destination.clone(), &["tls.*"], json!({})).await;
        refused_ids.push(sub["id"].as_str().unwrap().to_owned());
    }
    // The NKey seed is sealed: never shown, only that there are credentials.
    let (_, _, shown) =
        stack.call(Method::GET, &format!("/v1/subscriptions/{}", subs["nats-tls"]["id"].as_str().unwrap()), None).await;
    assert_eq!(shown["destination"]["credentials"], true, "{shown}");
    assert!(!shown.to_string().contains(&user.seed().unwrap()), "{shown}");
    assert!(!subs["nats-tls"].to_string().contains(&user.seed().unwrap()), "not even in the create response");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = 3;
    for i in 0..n {
        let (status, body) =
            stack.publish(json!({"id": format!("tls-{i}"), "type": "tls.sent", "data": {"i": i}})).await;
        assert_eq!(status, 202, "{body}");
    }
    let secret = |name: &str| subs[name]["secret"].as_str().unwrap().to_owned();
    for m in collect("amqps", n, SOON, || rabbit.drain("secure")).await {
        m.verify(&secret("amqps")).expect("an AMQP message over TLS verifies");
    }
    for m in collect("rediss", n, SOON, || redis.entries("secure")).await {
        m.verify(&secret("rediss")).expect("a Redis entry over TLS verifies");
    }
    for _ in 0..n {
        let msg =
            tokio::time::timeout(SOON, futures::StreamExt::next(&mut hooks)).await.expect("a NATS message").unwrap();
        assert_eq!(msg.subject.as_str(), "secure.tls.sent");
        let headers = msg.headers.as_ref().unwrap().iter().map(|(k, v)| (k.to_string(), v[0].to_string()));
        Received::message(headers, msg.payload.to_vec()).verify(&secret("nats-tls")).expect("verifies");
    }
    for name in ["amqps", "rediss", "nats-tls"] {
        let first = first_attempt(&stack, subs[name]["id"].as_str().unwrap(), SOON).await;
        assert_eq!(first["outcome"], "delivered", "{name}: {first}");
    }
    for ((name, _, class, says), id) in refused.iter().zip(&refused_ids) {
        assert_failed_first(&stack, name, id, class, says).await;
    }
    assert!(untrusted.entries("secure").is_empty(), "nothing is written over a connection Herald does not trust");

    // Credentials are for NATS alone, and must look like a seed or a credentials file.
    for (destination, says) in [
        (
            json!({"type": "redis", "url": redis.url(), "stream": "s", "credentials": user.seed().unwrap()}),
            "does not apply",
        ),
        (json!({"type": "nats", "url": nats_tls, "subject": "s", "credentials": "hunter2"}), "credentials file"),
    ] {
        let (status, _, problem) = stack
            .call(Method::POST, "/v1/subscriptions", Some(json!({"destination": destination, "event_types": ["x"]})))
            .await;
        assert_eq!(status, 400, "{problem}");
        assert!(problem["detail"].as_str().unwrap_or_default().contains(says), "{problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_requires_client_certificates_is_presented_the_subscriptions_own() {
    let ca = TestCa::new("Herald mutual TLS CA");
    let redis = tokio::task::block_in_place(|| Redis::start_tls_requiring_client_certificates(&ca));
    let ca_file = ca.write_pem();
    let mut stack = Stack::gateway_only().await;
    stack.start_dispatcher_with(&[("--ca-file", ca_file.to_str().unwrap())]);
    let (certificate, private_key) = ca.issue_client("herald subscription");
    let identity = json!({"certificate": certificate, "private_key": private_key});
    let with = subscribe(
        &stack,
        json!({"type": "redis", "url": redis.url(), "stream": "mutual"}),
        &["mtls.*"],
        json!({"client_certificate": identity}),
    )
    .await;
    assert!(!with.to_string().contains("PRIVATE KEY"), "the key is never shown: {with}");
    // The same broker without a certificate: its own connection, refused by the broker.
    let without =
        subscribe(&stack, json!({"type": "redis", "url": redis.url(), "stream": "anonymous"}), &["mtls.*"], json!({}))
            .await;
    // Over plain TCP a certificate could never be presented: refused at once.
    let plain = json!({"destination": {"type": "redis", "url": "redis://127.0.0.1:6379", "stream": "s"},
        "event_types": ["x"], "client_certificate": identity});
    let (status, _, problem) = stack.call(Method::POST, "/v1/subscriptions", Some(plain)).await;
    assert_eq!(status, 400, "{problem}");
    assert!(problem["detail"].as_str().unwrap_or_default().contains("only over TLS"), "{problem}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        let (status, body) =
            stack.publish(json!({"id": format!("mtls-{i}"), "type": "mtls.sent", "data": {"i": i}})).await;
        assert_eq!(status, 202, "{body}");
    }
    let secret = with["secret"].as_str().unwrap().to_owned();
    let first = first_attempt(&stack, with["id"].as_str().unwrap(), SOON).await;
    assert_eq!(first["outcome"], "delivered", "{first}");
    for m in collect("mutual TLS", 3, SOON, || redis.entries("mutual")).await {
        m.verify(&secret).expect("an entry written over mutual TLS verifies");
    }
    // Refused by the broker: in TLS 1.3 the server judges the certificate after the client's
    // half of the handshake, so the refusal arrives as the handshake failing or the connection
    // closing before the command is answered.
    let refused = first_attempt(&stack, without["id"].as_str().unwrap(), SOON).await;
    assert_eq!(refused["outcome"], "retry", "{refused}");
    assert!(matches!(refused["error_class"].as_str(), Some("tls" | "connection")), "{refused}");
    assert!(redis.entries("anonymous").is_empty(), "nothing is written without a certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_killed_mid_stream_and_restarted_lose_nothing_and_ordered_amqp_keeps_its_order() {
    let (mut rabbit, mut redis) = tokio::task::block_in_place(|| (Rabbit::start(), Redis::start()));
    let stack = Stack::start().await;
    rabbit.declare("", "free", "");
    rabbit.declare("", "ordered", "");
    // Retries a second or two apart, so the test does not wait out the default schedule's.
    let fast = json!({"retry_schedule": "1s,2s,2s,2s,2s,2s,2s,2s,2s,2s,2s,2s,2s,2s,2s"});
    let free = subscribe(
        &stack,
        json!({"type": "amqp", "url": rabbit.url(), "routing_key": "free"}),
        &["kill.*"],
        fast.clone(),
    )
    .await;
    let mut ordered_extra = fast.clone();
    ordered_extra["ordering"] = json!("fifo");
    let ordered = subscribe(
        &stack,
        json!({"type": "amqp", "url": rabbit.url(), "routing_key": "ordered"}),
        &["kill.*"],
        ordered_extra,
    )
    .await;
    subscribe(&stack, json!({"type": "redis", "url": redis.url(), "stream": "kill"}), &["kill.*"], fast).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let n = 60;
    for i in 0..n {
        if i == 20 {
            // Mid-stream, both brokers die. (What they hold is read only after the restart: a
            // consumer's acks before a SIGKILL may not have reached the disk, and the broker
            // would hand those messages out again.)
            tokio::task::block_in_place(|| {
                rabbit.kill();
                redis.kill();
            });
        }
        if i == 40 {
            tokio::task::block_in_place(|| {
                rabbit.restart();
                redis.restart();
            });
        }
        let (status, body) =
            stack.publish(json!({"id": format!("kill-{i:03}"), "type": "kill.x", "data": {"i": i}})).await;
        assert_eq!(status, 202, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let within = Duration::from_secs(60);
    let mut drained_free = Vec::new();
    let got_free = collect("amqp", n, within, || {
        drained_free.extend(rabbit.drain("free"));
        drained_free.clone()
    })
    .await;
    let mut drained_ordered = Vec::new();
    let got_ordered = collect("ordered amqp", n, within, || {
        drained_ordered.extend(rabbit.drain("ordered"));
        drained_ordered.clone()
    })
    .await;
    let got_redis = collect("redis", n, within, || redis.entries("kill")).await;
    for (name, got) in [("amqp", &got_free), ("ordered amqp", &got_ordered), ("redis", &got_redis)] {
        let ids: HashSet<_> = got.iter().filter_map(|m| m.header("webhook-id")).collect();
        assert_eq!(ids.len(), n, "{name}: every event arrived");
    }
    // In order: each message is the one before again (a retry whose confirm was lost) or the
    // next event, never one from further on.
    let order: Vec<u64> = got_ordered.iter().map(|m| m.json()["data"]["i"].as_u64().unwrap()).collect();
    let mut expected = 0;
    for (k, i) in order.iter().enumerate() {
        if *i + 1 == expected {
            continue;
        }
        assert_eq!(*i, expected, "ordered message {k} carried event {i}, expected {expected}: {order:?}");
        expected += 1;
    }
    let attempts = attempts(&stack, ordered["id"].as_str().unwrap()).await;
    assert!(
        attempts.iter().any(|a| a["outcome"] == "retry"),
        "the brokers were down for a while: some attempts failed and were retried"
    );
    let _ = free;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_answers_holds_only_its_own_subscriptions() {
    let silent = Silent::start().await;
    let rx = Receiver::start().await;
    let stack = Stack::start().await;
    let port = silent.port();
    let mut hung = Vec::new();
    for destination in [
        json!({"type": "amqp", "url": format!("amqp://guest:guest@127.0.0.1:{port}/%2f")}),
        json!({"type": "redis", "url": format!("redis://127.0.0.1:{port}"), "stream": "s"}),
        json!({"type": "nats", "url": format!("nats://127.0.0.1:{port}"), "subject": "s"}),
    ] {
        hung.push(subscribe(&stack, destination, &["iso.*"], json!({})).await["id"].as_str().unwrap().to_owned());
    }
    stack.subscribe(&rx.url("/fine"), &["iso.*"], None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let n = 200;
    let started = Instant::now();
    for batch in 0..n / 100 {
        let events: Vec<_> = (batch * 100..(batch + 1) * 100)
            .map(|i| json!({"id": format!("iso-{i}"), "type": "iso.x", "data": {"i": i}}))
            .collect();
        let (status, _, body) = stack.call(Method::POST, "/v1/events/batch", Some(json!({"events": events}))).await;
        assert_eq!(status, 202, "{body}");
    }
    rx.wait_count("/fine", n, SOON).await;
    let took = started.elapsed();
    // The hung brokers' attempts end at the HTTP timeout (15 s by default), as a timeout.
    for id in &hung {
        let attempt = first_attempt(&stack, id, Duration::from_secs(40)).await;
        assert_eq!(attempt["error_class"], "timeout", "{attempt}");
        assert_eq!(attempt["outcome"], "retry", "{attempt}");
    }
    assert!(
        took < Duration::from_secs(15),
        "the webhook's {n} deliveries waited for the hung brokers ({took:?}, the timeout is 15 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_are_validated_and_a_patch_moves_a_subscription_between_kinds() {
    let stack = Stack::gateway_only().await;
    for (destination, says) in [
        (json!({"type": "kafka", "url": "kafka://h"}), "not a destination type"),
        (json!({"type": "amqp", "url": "http://h"}), "amqp://"),
        (json!({"type": "nats", "url": "nats://h:4222"}), "subject"),
        (json!({"type": "nats", "url": "nats://h:4222", "subject": "a.*"}), "wildcards"),
        (json!({"type": "redis", "url": "redis://h"}), "stream"),
        (json!({"type": "amqp", "url": "amqp://h", "routing_key": "{nope}"}), "not a placeholder"),
        (json!({"type": "amqp", "url": "amqp://169.254.169.254"}), "SSRF"),
    ] {
        let body = json!({"destination": destination, "event_types": ["a.b"]});
        let (status, headers, problem) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
        assert_eq!(status, 400, "{destination}: {problem}");
        assert_eq!(headers["content-type"], "application/problem+json");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{destination}: {detail:?} should say {says:?}");
    }
    let (status, _, problem) = stack
        .call(Method::POST, "/v1/subscriptions", Some(json!({"url": "http://127.0.0.1:1/x", "destination": {"type": "redis", "url": "redis://h", "stream": "s"}, "event_types": ["a.b"]})))
        .await;
    assert_eq!(status, 400, "{problem}");

    let sub = stack.subscribe("http://127.0.0.1:9/hook", &["a.b"], None).await;
    let id = sub["id"].as_str().unwrap();
    let path = format!("/v1/subscriptions/{id}");
    let (status, _, changed) = stack
        .call(Method::PATCH, &path, Some(json!({"destination": {"type": "nats", "url": "nats://u:secret@127.0.0.1:4222", "subject": "x.{event_type}"}})))
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["destination"]["type"], "nats");
    assert_eq!(changed["url"], "nats://u@127.0.0.1:4222");
    assert!(!changed.to_string().contains("secret"));
    let (status, _, back) = stack.call(Method::PATCH, &path, Some(json!({"url": "http://127.0.0.1:9/again"}))).await;
    assert_eq!(status, 200, "{back}");
    assert!(back.get("destination").is_none(), "a url makes it a webhook again: {back}");
    assert_eq!(back["url"], "http://127.0.0.1:9/again");
}

/// The book's Slack transformation (docs/src/transformations.md), between its markers.
fn book_slack_transformation() -> String {
    let chapter =
        std::fs::read_to_string(herald_harness::workspace_root().join("docs/src/transformations.md")).unwrap();
    let block = chapter
        .split("<!-- slack-transformation -->")
        .nth(1)
        .unwrap()
        .split("<!-- /slack-transformation -->")
        .next()
        .unwrap();
    block.trim().trim_start_matches("```js").trim_end_matches("```").trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transformations_reshape_redirect_and_cancel_deliveries_and_a_runaway_script_fails_only_its_own() {
    let rx = Receiver::start().await;
    let stack = Stack::start().await;
    let create = |url: String, transformation: &str| json!({"url": url, "event_types": ["shop.*"], "transformation": transformation});
    let mut ids = std::collections::HashMap::new();
    let mut secrets = std::collections::HashMap::new();
    let subs = [
        (
            "slack",
            create(
                rx.url("/slack"),
                "function handler(w) { w.payload = {text: `${w.eventType}: ${w.payload.data.total}`}; w.headers = {'x-shape': 'slack'}; w.method = 'PUT'; return w; }",
            ),
        ),
        (
            "redirect",
            create(
                rx.url("/redirect"),
                "function handler(webhook) {\n  if (webhook.payload.data.customUrl) {\n    webhook.url = webhook.payload.data.customUrl;\n  }\n  return webhook;\n}",
            ),
        ),
        (
            "cancel",
            create(rx.url("/cancel"), "function handler(w) { w.cancel = w.payload.data.skip === true; return w; }"),
        ),
        ("loop", create(rx.url("/loop"), "function handler(w) { for (;;) {} }")),
        (
            "alloc",
            create(
                rx.url("/alloc"),
                "function handler(w) { const a = []; for (;;) { a.push(new Array(1000000).fill(0)); } }",
            ),
        ),
        ("throw", create(rx.url("/throw"), "function handler(w) { throw new TypeError('not today'); }")),
        ("plain", json!({"url": rx.url("/plain"), "event_types": ["shop.*"]})),
        // Looks at the event type only: the webhook goes as it came, the subscription's own
        // header with it.
        (
            "untouched",
            json!({"url": rx.url("/untouched"), "event_types": ["shop.*"], "headers": {"x-team": "payments"},
                "transformation": "function handler(w) { if (w.eventType === 'shop.refunded') { w.cancel = true; } return w; }"}),
        ),
    ];
    for (name, body) in subs {
        let (status, _, sub) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
        assert_eq!(status, 201, "{name}: {sub}");
        ids.insert(name, sub["id"].as_str().unwrap().to_owned());
        secrets.insert(name, sub["secret"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = [
        json!({"id": "t-1", "type": "shop.paid", "data": {"total": 42, "customUrl": rx.url("/elsewhere")}}),
        json!({"id": "t-2", "type": "shop.paid", "data": {"total": 7, "skip": true}}),
    ];
    for event in events {
        let (status, body) = stack.publish(event).await;
        assert_eq!(status, 202, "{body}");
    }
    rx.wait_count("/plain", 2, SOON).await;
    rx.wait_count("/slack", 2, SOON).await;
    rx.wait_count("/elsewhere", 1, SOON).await;
    rx.wait_count("/redirect", 1, SOON).await;
    rx.wait_count("/cancel", 1, SOON).await;
    rx.wait_count("/untouched", 2, SOON).await;

    // Reshaped, PUT, with the extra header, and signed over the body sent.
    for got in rx.received_on("/slack") {
        assert_eq!(got.method, "PUT", "the transformation chose PUT");
        got.verify(&secrets["slack"]).expect("the transformed body is what is signed");
        let text = got.json()["text"].as_str().unwrap().to_owned();
        assert!(text == "shop.paid: 42" || text == "shop.paid: 7", "{text}");
        assert_eq!(got.header("x-shape"), Some("slack"));
    }
    assert!(
        rx.received()
            .iter()
            .filter(|r| r.path == "/slack")
            .all(|r| r.header("content-type") == Some("application/json"))
    );
    // Returned as it came: the body byte for byte what a subscription without a script got,
    // signed, with the subscription's own header.
    for got in rx.received_on("/untouched") {
        got.verify(&secrets["untouched"]).expect("signed over the body sent");
        assert_eq!(got.header("x-team"), Some("payments"));
        let id = got.header("webhook-id");
        let plain = rx.received_on("/plain").into_iter().find(|p| p.header("webhook-id") == id).unwrap();
        assert_eq!(got.body, plain.body, "{id:?}: the body as rendered");
    }
    // Svix's redirect example: the event naming a URL went there, the other to the endpoint.
    assert_eq!(rx.received_on("/elsewhere")[0].header("webhook-id"), Some("t-1"));
    assert!(rx.received().iter().filter(|r| r.path != "/slack").all(|r| r.method == "POST"), "the rest are POSTed");
    assert_eq!(rx.received_on("/redirect").len(), 1);
    // Cancelled: nothing sent, a record says so.
    assert_eq!(rx.received_on("/cancel")[0].header("webhook-id"), Some("t-1"));
    let deadline = Instant::now() + SOON;
    loop {
        let records = attempts(&stack, &ids["cancel"]).await;
        if records.iter().any(|a| a["event_id"] == "t-2") {
            let cancelled = records.iter().find(|a| a["event_id"] == "t-2").unwrap();
            assert_eq!(cancelled["outcome"], "cancelled", "{cancelled}");
            break;
        }
        assert!(Instant::now() < deadline, "no record of the cancelled delivery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The runaway scripts failed their own deliveries, with the reason, and nothing was sent.
    for (name, says) in [("loop", "time limit"), ("alloc", "out of memory"), ("throw", "not today")] {
        let attempt = first_attempt(&stack, &ids[name], SOON).await;
        assert_eq!(attempt["error_class"], "transformation", "{name}: {attempt}");
        assert_eq!(attempt["outcome"], "retry", "{name}: {attempt}");
        let error = attempt["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{name}: {error:?} should say {says:?}");
        assert!(rx.received_on(&format!("/{name}")).is_empty(), "{name}: nothing is sent");
    }

    // The test endpoint runs the book's Slack example on a dead letter's data.
    let code = book_slack_transformation();
    let payload = json!({"id": "op_1", "type": "delivery.dead_lettered", "tenant": "herald", "timestamp": "2026-01-01T00:00:00Z",
        "data": {"subscription_id": "sub_9", "tenant": "acme", "event_id": "evt_1", "event_type": "order.paid", "attempts": 8, "reason": "HTTP 500"}});
    let (status, _, out) = stack
        .call(
            Method::POST,
            "/v1/transformations/test",
            Some(json!({"code": code, "payload": payload, "event_type": "delivery.dead_lettered"})),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let text = out["payload"]["text"].as_str().unwrap();
    assert!(text.contains("sub_9") && text.contains("HTTP 500") && text.contains("8 attempts"), "{text}");
    assert_eq!(out["payload"]["blocks"][0]["type"], "section");
    assert_eq!(out["payload"]["blocks"][0]["text"]["type"], "mrkdwn");
    assert_eq!(out["method"], "POST");
    let (status, _, out) = stack
        .call(
            Method::POST,
            "/v1/transformations/test",
            Some(json!({"code": "function handler(w) { while (true) {} }"})),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["error"]["kind"], "timed_out", "{out}");
    // A script that does not compile is refused when set.
    let (status, _, problem) =
        stack.call(Method::POST, "/v1/subscriptions", Some(create(rx.url("/x"), "function handler(w) {"))).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["field"], "transformation");
    let (status, _, removed) = stack
        .call(Method::PATCH, &format!("/v1/subscriptions/{}", ids["throw"]), Some(json!({"transformation": null})))
        .await;
    assert_eq!(status, 200, "{removed}");
    assert!(removed.get("transformation").is_none(), "{removed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_offers_only_the_destinations_and_transformations_its_link_grants() {
    let stack = Stack::gateway_only().await;
    let nats = json!({"type": "nats", "url": "nats://127.0.0.1:4222", "subject": "hooks.x"});
    let script = "function handler(w) { return w; }";

    // A link without grants: webhooks only, no transformations.
    let plain = stack.portal_session("acme").await;
    let (status, _, session) = stack.call_by(&plain, Method::GET, "/v1/session?kind=portal", None).await;
    assert_eq!(status, 200, "{session}");
    assert!(session["grants"].as_object().is_some_and(|g| g.is_empty()), "{session}");
    for body in [
        json!({"destination": nats, "event_types": ["a.b"]}),
        json!({"url": "http://127.0.0.1:9/h", "event_types": ["a.b"], "transformation": script}),
    ] {
        let (status, _, problem) = stack.call_by(&plain, Method::POST, "/v1/subscriptions", Some(body)).await;
        assert_eq!(status, 403, "{problem}");
    }
    let (status, _, problem) =
        stack.call_by(&plain, Method::POST, "/v1/transformations/test", Some(json!({"code": script}))).await;
    assert_eq!(status, 403, "{problem}");

    // A link granting NATS and transformations.
    let code = stack.portal_link("acme", json!({"destinations": ["nats"], "transformations": true})).await;
    let (status, cookie, opened) = stack.open_portal(&code).await;
    assert_eq!(status, 200, "{opened}");
    assert_eq!(opened["grants"], json!({"destinations": ["nats"], "transformations": true}));
    let granted = herald_harness::Who::session(&cookie.unwrap(), opened["csrf"].as_str().unwrap());
    let (status, _, sub) = stack
        .call_by(
            &granted,
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"destination": nats, "event_types": ["a.b"], "transformation": script})),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!((sub["tenant"].as_str(), sub["destination"]["type"].as_str()), (Some("acme"), Some("nats")));
    let redis = json!({"destination": {"type": "redis", "url": "redis://127.0.0.1:6379", "stream": "s"}, "event_types": ["a.b"]});
    let (status, _, problem) = stack.call_by(&granted, Method::POST, "/v1/subscriptions", Some(redis)).await;
    assert_eq!((status, problem["field"].as_str()), (403, Some("destination")), "{problem}");
    let (status, _, out) = stack
        .call_by(&granted, Method::POST, "/v1/transformations/test", Some(json!({"code": script, "payload": {"a": 1}})))
        .await;
    assert_eq!((status, &out["payload"]["a"]), (200, &json!(1)), "{out}");
    // The operator names only broker types.
    let (status, _, problem) =
        stack.call(Method::POST, "/v1/portal/sessions", Some(json!({"tenant": "acme", "destinations": ["ftp"]}))).await;
    assert_eq!(status, 400, "{problem}");
}
