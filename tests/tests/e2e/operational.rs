//! Operational events: Herald tells the operator tenant's subscriptions, with ordinary signed
//! webhooks, that a subscription was disabled, a delivery was dead-lettered and a circuit opened
//! — and never about the operator tenant's own subscriptions (no loops).

use std::time::Duration;

use herald_harness::{Receiver, Stack};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_hears_of_disabled_subscriptions_dead_letters_and_open_circuits_but_never_of_its_own() {
    let mut stack = Stack::gateway_only().await;
    stack.start_dispatcher_with(&[("--breaker-threshold", "2")]);
    let ops = Receiver::start().await;
    let operator = stack.subscribe(&ops.url("/ops"), &[">"], Some("herald")).await;
    let secret = operator["secret"].as_str().unwrap().to_owned();
    // An operator endpoint that is gone: disabling it must not produce an event about it.
    let broken = Receiver::start().await;
    broken.respond_with(&[410; 20]);
    let broken_id = stack.subscribe(&broken.url("/broken"), &["subscription.*"], Some("herald")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let gone = Receiver::start().await;
    gone.respond_with(&[410; 20]);
    let gone_id =
        stack.subscribe(&gone.url("/gone"), &["order.*"], Some("acme")).await["id"].as_str().unwrap().to_owned();
    let failing = Receiver::start().await;
    failing.respond_with(&[500; 50]);
    let failing_id =
        stack.subscribe(&failing.url("/failing"), &["order.*"], Some("acme")).await["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = stack.publish(json!({"id": "op-1", "type": "order.paid", "tenant": "acme", "data": {}})).await;
    assert_eq!(status, 202, "{body}");

    let heard = |rx: &[herald_harness::Received], kind: &str, sub: &str| {
        rx.iter().any(|r| r.json()["type"] == kind && r.json()["data"]["subscription_id"] == sub)
    };
    let got = ops
        .wait_until(Duration::from_secs(40), "the operational events", |rx| {
            heard(rx, "subscription.disabled", &gone_id)
                && heard(rx, "delivery.dead_lettered", &gone_id)
                && heard(rx, "circuit.opened", &failing_id)
                && heard(rx, "delivery.dead_lettered", &failing_id)
        })
        .await;
    for webhook in &got {
        webhook.verify(&secret).expect("operational events are signed like any webhook");
        assert_eq!(webhook.json()["tenant"], "herald");
    }
    let disabled = got.iter().find(|r| r.json()["type"] == "subscription.disabled").unwrap().json();
    assert_eq!(disabled["data"]["tenant"], "acme");
    assert!(disabled["data"]["reason"].as_str().unwrap().contains("410"), "{disabled}");
    let dead =
        got.iter().find(|r| heard(std::slice::from_ref(r), "delivery.dead_lettered", &failing_id)).unwrap().json();
    assert_eq!(dead["data"]["event_id"], "op-1");
    assert_eq!(dead["data"]["event_type"], "order.paid");

    // The broken operator endpoint was disabled (it answered 410 to the operational events)…
    broken.wait_for(1, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // …and nothing was said about it.
    let all = ops.received();
    assert!(
        !all.iter().any(|r| r.json()["data"]["subscription_id"] == broken_id.as_str()),
        "no operational event about the operator's own subscriptions: {:?}",
        all.iter().map(|r| r.json()).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_backlog_over_the_threshold_is_reported_and_so_is_its_clearing() {
    let mut stack = Stack::gateway_only().await;
    // Every delivery through the stream (none inline) and two requests at a time in all: a
    // slow endpoint's deliveries wait in HERALD_DELIVERIES for the dispatcher to catch up.
    stack.start_dispatcher_with(&[
        ("--inline-attempts", "0"),
        ("--concurrency", "2"),
        ("--backlog-alert", "6"),
        ("--backlog-check-interval", "1s"),
    ]);
    let ops = Receiver::start().await;
    stack.subscribe(&ops.url("/ops"), &["tenant.*"], Some("herald")).await;
    let slow = Receiver::start().await;
    slow.script(
        (0..20)
            .map(|_| herald_harness::Reply { delay: Duration::from_millis(500), ..herald_harness::Reply::status(200) }),
    );
    stack.subscribe(&slow.url("/slow"), &["order.*"], Some("acme")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        stack.publish(json!({"id": format!("b-{i}"), "type": "order.paid", "tenant": "acme", "data": {}})).await;
    }
    let got = ops
        .wait_until(Duration::from_secs(40), "backlog exceeded then cleared", |rx| {
            let types: Vec<_> = rx.iter().map(|r| r.json()["type"].clone()).collect();
            types.contains(&json!("tenant.backlog_exceeded")) && types.contains(&json!("tenant.backlog_cleared"))
        })
        .await;
    let exceeded = got.iter().find(|r| r.json()["type"] == "tenant.backlog_exceeded").unwrap().json();
    assert_eq!(exceeded["data"]["tenant"], "acme");
    assert!(exceeded["data"]["deliveries_waiting"].as_u64().unwrap() >= 6, "{exceeded}");
    let cleared = got.iter().find(|r| r.json()["type"] == "tenant.backlog_cleared").unwrap();
    // Cleared means the backlog really went down: by then most deliveries had succeeded.
    let delivered = slow.received().len();
    assert!(delivered >= 17, "cleared with {delivered} of 20 delivered");
    // Delivered in any order (an unordered subscription), but cleared after it was exceeded.
    assert!(cleared.json()["data"]["at"].as_str() >= exceeded["data"]["at"].as_str(), "{exceeded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_events_from_anyone_but_a_dispatcher_are_refused_delivered_to_no_one_and_not_believed() {
    let stack = Stack::start().await;
    let ops = Receiver::start().await;
    stack.subscribe(&ops.url("/ops"), &[">"], Some("herald")).await;
    let victim = Receiver::start().await;
    let victim_id =
        stack.subscribe(&victim.url("/v"), &["order.*"], Some("acme")).await["id"].as_str().unwrap().to_owned();
    let circuit = |id: &str| {
        json!({"id": id, "type": "circuit.opened", "tenant": "herald", "data": {
            "subscription_id": victim_id, "tenant": "acme", "url": victim.url("/v"),
            "replica": "x".repeat(10_000), "consecutive_failures": 9, "at": herald_core::now_rfc3339()}})
    };

    // Over HTTP: refused whatever the token, single or in a batch, with what is wrong.
    for token in [herald_harness::ADMIN_TOKEN, herald_harness::PUBLISH_TOKEN] {
        let (status, _, body) = stack.call_as(token, reqwest::Method::POST, "/v1/events", Some(circuit("f-1"))).await;
        assert_eq!(status, 403, "{body}");
        assert!(body["detail"].as_str().unwrap().contains("operator tenant"), "{body}");
        let batch = json!({"events": [{"type": "order.paid", "tenant": "acme", "data": {}}, circuit("f-2")]});
        let (status, _, body) = stack.call_as(token, reqwest::Method::POST, "/v1/events/batch", Some(batch)).await;
        assert_eq!(status, 207, "{body}");
        assert_eq!(
            (body["results"][0]["status"].as_u64(), body["results"][1]["status"].as_u64()),
            (Some(202), Some(403))
        );
        assert!(body["results"][1]["error"]["detail"].as_str().unwrap().contains("operator tenant"), "{body}");
    }

    // Straight onto NATS, where any service may publish: dead-lettered as invalid, never
    // delivered, and not believed by the gateway's open circuits.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    headers.insert(herald_core::nats::OPERATOR_MAC_HEADER, "test:AAAA");
    for (i, with) in [None, Some(headers.clone())].into_iter().enumerate() {
        let body = circuit(&format!("f-nats-{i}")).to_string();
        let subject = "herald.events.herald.circuit.opened";
        let ack = match with {
            Some(h) => js.publish_with_headers(subject, h, body.into()).await,
            None => js.publish(subject, body.into()).await,
        };
        ack.unwrap().await.unwrap();
    }
    stack.wait_consumer_drained("HERALD_EVENTS", "herald-fanout", Duration::from_secs(20)).await;
    let dlq = js.get_stream("HERALD_DLQ").await.unwrap();
    let letter = dlq.get_last_raw_message_by_subject("herald.dlq.herald._invalid").await.expect("dead-lettered");
    let letter = <herald_core::proto::DeadLetter as prost::Message>::decode(letter.payload.as_ref()).unwrap();
    assert!(letter.reason.contains("not written by a Herald dispatcher"), "{}", letter.reason);
    assert_eq!(stack.stream_messages("HERALD_DLQ").await, 2, "both forgeries dead-lettered");
    // Both refused, by fan-out and by the gateway (metrics are the process's: the dispatcher
    // runs in it too).
    let forged = |metrics: &str, by: &str| {
        herald_harness::metric_sum(metrics, &format!("herald_operational_events_forged_total{{refused_by=\"{by}\"}}"))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = reqwest::get(format!("{}/metrics", stack.gateway)).await.unwrap().text().await.unwrap();
        if forged(&metrics, "fanout") >= 2.0 && forged(&metrics, "gateway") >= 2.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, overview) = stack.call(reqwest::Method::GET, "/v1/overview", None).await;
    assert_eq!(status, 200, "{overview}");
    assert_eq!(overview["open_circuits"], json!([]), "{overview}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(ops.received().is_empty(), "a forged operational event was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_books_nats_permissions_keep_services_from_writing_the_operator_tenants_events() {
    // The services user of the book's Security chapter ("Secured NATS"), word for word.
    let permissions = r#"{publish: {allow: ["herald.events.>", "herald.*.events.>"], deny: ["herald.events.herald.>", "herald.*.events.herald.>"]}, subscribe: {allow: ["_INBOX.>"]}}"#;
    let chapter = std::fs::read_to_string(herald_harness::workspace_root().join("docs/src/security.md")).unwrap();
    assert!(chapter.contains(&format!("permissions: {permissions}")), "the book shows these permissions");
    let nats = herald_harness::NatsServer::start_with_config(&format!(
        "authorization {{ users = [\n  {{user: herald, password: herald-pass}}\n  {{user: services, password: services-pass, permissions: {permissions}}}\n] }}\n"
    ));
    let connect = |user: &str, pass: &str| {
        async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into()).connect(nats.url())
    };
    let js = async_nats::jetstream::new(connect("herald", "herald-pass").await.unwrap());
    let mut streams = Vec::new();
    for (name, subjects) in [("HERALD_EVENTS", "herald.events.>"), ("HERALD_EVENTS_1", "herald.p1.events.>")] {
        let config = async_nats::jetstream::stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            ..Default::default()
        };
        streams.push(js.create_stream(config).await.unwrap());
    }
    let services = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(connect("services", "services-pass").await.unwrap());
    for subject in ["herald.events.acme.order.paid", "herald.p1.events.acme.order.paid"] {
        let ack = services.publish(subject, "{}".into()).await.unwrap().await;
        ack.unwrap_or_else(|e| panic!("a service may publish {subject}: {e}"));
    }
    for subject in ["herald.events.herald.circuit.opened", "herald.p1.events.herald.circuit.closed"] {
        let stored = match services.publish(subject, "{}".into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        assert!(!stored, "{subject} was stored");
    }
    for mut stream in streams {
        assert_eq!(stream.info().await.unwrap().state.messages, 1, "only the event of tenant acme");
    }
}
