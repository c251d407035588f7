//! What an operator reads and acts on: attempt records, dead letters and their redrive, replay.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use herald_harness::{Receiver, Stack};
use reqwest::Method;
use serde_json::{Value, json};

use crate::SOON;

async fn wait_for_dead_letters(stack: &Stack, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.stream_messages("HERALD_DLQ").await < n {
        assert!(Instant::now() < deadline, "expected {n} dead letter(s)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now() -> String {
    herald_core::rfc3339(time::OffsetDateTime::now_utc())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_served_newest_first_and_paged() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    rx.respond_with(&[500]);
    let sub = stack.subscribe(&rx.url("/att"), &["att.*"], Some("acme")).await;
    let id = sub["id"].as_str().unwrap();
    stack.publish(json!({"id": "att-1", "type": "att.x", "tenant": "acme", "data": {}})).await;
    rx.wait_for(2, Duration::from_secs(30)).await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;

    let (status, _, page) = stack.call(Method::GET, "/v1/events/att-1/attempts", None).await;
    assert_eq!(status, 200, "{page}");
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(
        (data[0]["attempt"].as_u64(), data[0]["status"].as_u64(), data[0]["outcome"].as_str()),
        (Some(2), Some(200), Some("delivered"))
    );
    assert_eq!(
        (data[1]["attempt"].as_u64(), data[1]["status"].as_u64(), data[1]["outcome"].as_str()),
        (Some(1), Some(500), Some("retry"))
    );
    assert_eq!(data[1]["error_class"], "http_status");
    assert_eq!(data[0]["subscription_id"], id);

    let (_, _, p1) = stack.call(Method::GET, &format!("/v1/subscriptions/{id}/attempts?limit=1"), None).await;
    assert_eq!(p1["data"][0]["attempt"], 2);
    let before = p1["next"].as_u64().expect("a second page");
    let (_, _, p2) =
        stack.call(Method::GET, &format!("/v1/subscriptions/{id}/attempts?limit=1&before={before}"), None).await;
    assert_eq!(p2["data"][0]["attempt"], 1);
    assert!(p2.get("next").is_none());

    // Another tenant's token sees nothing of it.
    let (status, _, _) = stack
        .call_as(herald_harness::PUBLISH_TOKEN, Method::GET, &format!("/v1/subscriptions/{id}/attempts"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _, page) =
        stack.call_as("test-acme-token-0123456789", Method::GET, "/v1/events/att-1/attempts", None).await;
    assert_eq!((status, page["data"].as_array().map(Vec::len)), (200, Some(2)), "its own tenant sees them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_redriven_with_a_fresh_schedule() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    rx.respond_with(&[500; 8]);
    let sub = stack.subscribe(&rx.url("/dl"), &["dl.*"], None).await;
    let id = sub["id"].as_str().unwrap();
    stack.publish(json!({"id": "dl-1", "type": "dl.x", "data": {"n": 1}})).await;
    stack.publish(json!({"id": "dl-2", "type": "dl.x", "data": {"n": 2}})).await;
    wait_for_dead_letters(&stack, 2).await;

    let (status, _, page) = stack.call(Method::GET, &format!("/v1/dead-letters?subscription={id}"), None).await;
    assert_eq!(status, 200, "{page}");
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for d in data {
        assert_eq!((d["attempts"].as_u64(), d["last_status"].as_u64()), (Some(4), Some(500)));
        assert!(d["reason"].as_str().unwrap().contains("gave up after 4 attempts"));
        assert_eq!(d["subscription_id"], id);
    }
    let (_, _, filtered) = stack.call(Method::GET, "/v1/dead-letters?tenant=default&limit=1", None).await;
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1);
    assert!(filtered["next"].is_u64());
    let (_, _, future) =
        stack.call(Method::GET, &format!("/v1/dead-letters?since={}", "2999-01-01T00:00:00Z"), None).await;
    assert_eq!(future["data"].as_array().unwrap().len(), 0);

    // Redrive one by id: the receiver now answers 200 (its script of 500s is used up after 8).
    let first: Value = data.iter().find(|d| d["event_id"] == "dl-1").unwrap().clone();
    let (status, _, result) =
        stack.call(Method::POST, "/v1/dead-letters/redrive", Some(json!({"ids": [first["id"]]}))).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["redriven"], 1);
    rx.wait_until(SOON, "dl-1 delivered", |r| r.iter().filter(|r| r.header("webhook-id") == Some("dl-1")).count() == 5)
        .await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    let (_, _, left) = stack.call(Method::GET, &format!("/v1/dead-letters?subscription={id}"), None).await;
    let left = left["data"].as_array().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["event_id"], "dl-2");

    // Redrive the rest by subscription.
    let (_, _, result) = stack.call(Method::POST, "/v1/dead-letters/redrive", Some(json!({"subscription": id}))).await;
    assert_eq!(result["redriven"], 1);
    rx.wait_until(SOON, "dl-2 delivered", |r| r.iter().filter(|r| r.header("webhook-id") == Some("dl-2")).count() == 5)
        .await;
    let (status, _, p) = stack.call(Method::POST, "/v1/dead-letters/redrive", Some(json!({}))).await;
    assert_eq!(status, 400, "a redrive of everything must be asked for explicitly: {p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_delivery_that_comes_back_is_not_attempted_again() {
    use herald_core::{nats, proto};
    use prost::Message as _;

    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    rx.respond_with(&[500; 20]);
    let body = json!({"url": rx.url("/gone"), "event_types": ["dd.*"], "retry_schedule": "1s"});
    let (status, _, sub) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{sub}");
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    stack.publish(json!({"id": "dd-1", "type": "dd.x", "data": {}})).await;
    wait_for_dead_letters(&stack, 1).await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    assert_eq!(rx.count_on("/gone"), 2, "two attempts, then dead-lettered");

    // Its last retry stored again, as a schedule firing twice after a leader change does: the
    // record says dead-lettered, so it is neither sent nor dead-lettered a second time.
    let (_, _, page) = stack.call(Method::GET, &format!("/v1/dead-letters?subscription={sub_id}"), None).await;
    assert_eq!(page["data"][0]["event_id"], "dd-1", "{page}");
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let events = js.get_stream("HERALD_EVENTS").await.unwrap();
    let stored = events.get_last_raw_message_by_subject("herald.events.default.dd.x").await.unwrap();
    let at = herald_core::event::StoredAt { sequence: stored.sequence, time: stored.time };
    let event = herald_core::event::decode_stored(&stored.subject, None, Some("dd-1"), &stored.payload, at).unwrap();
    let again = proto::Delivery {
        event: Some(event),
        subscription_id: sub_id.clone(),
        attempt: 2,
        event_sequence: stored.sequence,
        ..Default::default()
    };
    let subject = nats::Partition::ZERO.delivery_subject("default", &sub_id);
    js.publish(subject, again.encode_to_vec().into()).await.unwrap().await.unwrap();
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    assert_eq!(rx.count_on("/gone"), 2, "not attempted again");
    assert_eq!(stack.stream_messages("HERALD_DLQ").await, 1, "not dead-lettered again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_could_not_be_stored_is_stored_when_its_delivery_comes_back() {
    // The record of an exhausted attempt is written once its dead letter is stored: when the
    // dead letter cannot be (its stream gone), the record says so and the delivery that comes
    // back is tried again, and dead-lettered then, rather than settled by a record of a dead
    // letter that does not exist.
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    rx.respond_with(&[500; 20]);
    let body = json!({"url": rx.url("/lost"), "event_types": ["dl.*"], "retry_schedule": "1s"});
    let (status, _, sub) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{sub}");
    let js = async_nats::jetstream::new(stack.nats.client().await);
    js.delete_stream("HERALD_DLQ").await.unwrap();
    stack.publish(json!({"id": "dl-1", "type": "dl.x", "data": {}})).await;
    // The last attempt made, and its dead letter refused.
    rx.wait_count("/lost", 2, SOON).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    herald_core::nats::ensure_streams(&js, &herald_core::nats::Topology::default()).await.unwrap();
    wait_for_dead_letters(&stack, 1).await;
    let (_, _, page) = stack.call(Method::GET, "/v1/dead-letters", None).await;
    assert_eq!(page["data"][0]["event_id"], "dl-1", "{page}");
    let (_, _, attempts) = stack.call(Method::GET, "/v1/events/dl-1/attempts", None).await;
    let outcomes: Vec<&str> =
        attempts["data"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes.first(), Some(&"dead_letter"), "{attempts}");
    assert!(outcomes[1..].iter().all(|o| *o == "retry"), "{attempts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_exactly_the_events_of_the_range_and_never_doubles() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    let publish = |id: &'static str| stack.publish(json!({"id": id, "type": "rp.x", "data": {"id": id}}));
    publish("rp-1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish("rp-2").await;
    publish("rp-3").await;
    stack.publish(json!({"id": "other-type", "type": "zz.x", "data": {}})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let until = now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish("rp-4").await;

    // A subscriber that arrives later backfills the range.
    let sub = stack.subscribe(&rx.url("/late"), &["rp.*"], None).await;
    let id = sub["id"].as_str().unwrap();
    let (status, _, result) = stack
        .call(Method::POST, &format!("/v1/subscriptions/{id}/replay"), Some(json!({"since": since, "until": until})))
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!((result["replayed"].as_u64(), result["scanned"].as_u64()), (Some(2), Some(3)));

    rx.wait_for(2, SOON).await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    let mut ids: Vec<String> = rx.received().iter().map(|r| r.header("webhook-id").unwrap().to_owned()).collect();
    ids.sort();
    assert_eq!(ids, ["rp-2", "rp-3"]);

    // The same replay again is recognised as already under way: nothing doubles.
    let (_, _, again) = stack
        .call(Method::POST, &format!("/v1/subscriptions/{id}/replay"), Some(json!({"since": since, "until": until})))
        .await;
    assert_eq!((again["replayed"].as_u64(), again["in_flight"].as_u64()), (Some(0), Some(2)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rx.received().len(), 2);

    let (status, _, p) =
        stack.call(Method::POST, &format!("/v1/subscriptions/{id}/replay"), Some(json!({"since": "yesterday"}))).await;
    assert_eq!((status, p["field"].as_str()), (400, Some("since")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_events_are_listed_by_tenant_type_and_time_in_pages() {
    let stack = Stack::gateway_only().await;
    for (id, tenant, event_type) in [
        ("l-1", "acme", "order.paid"),
        ("l-2", "acme", "order.shipped"),
        ("l-3", "other", "order.paid"),
        ("l-4", "acme", "user.created"),
        ("l-5", "acme", "order.paid"),
    ] {
        let (status, body) =
            stack.publish(json!({"id": id, "type": event_type, "tenant": tenant, "data": {"n": id}})).await;
        assert_eq!(status, 202, "{body}");
    }
    let ids = |page: &Value| -> Vec<String> {
        page["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
    };
    let (status, _, all) = stack.call(Method::GET, "/v1/events", None).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(ids(&all), ["l-1", "l-2", "l-3", "l-4", "l-5"]);
    assert_eq!(all["data"][0]["data"], json!({"n": "l-1"}), "the data as published");
    let (_, _, orders) = stack.call(Method::GET, "/v1/events?tenant=acme&type=order.*", None).await;
    assert_eq!(ids(&orders), ["l-1", "l-2", "l-5"]);
    // Paged: two at a time, following `next`.
    let (_, _, first) = stack.call(Method::GET, "/v1/events?tenant=acme&limit=2", None).await;
    assert_eq!(ids(&first), ["l-1", "l-2"]);
    let next = first["next"].as_u64().expect("a next page");
    let (_, _, second) = stack.call(Method::GET, &format!("/v1/events?tenant=acme&limit=2&after={next}"), None).await;
    assert_eq!(ids(&second), ["l-4", "l-5"]);
    assert!(second.get("next").is_none(), "{second}");
    // A tenant token sees its own tenant's events only, and nothing of another's.
    let acme = "test-acme-token-0123456789";
    let (_, _, own) = stack.call_as(acme, Method::GET, "/v1/events", None).await;
    assert_eq!(ids(&own), ["l-1", "l-2", "l-4", "l-5"]);
    let (status, _, _) = stack.call_as(acme, Method::GET, "/v1/events?tenant=other", None).await;
    assert_eq!(status, 403);
    let future = "2999-01-01T00:00:00Z";
    let (_, _, none) = stack.call(Method::GET, &format!("/v1/events?since={future}"), None).await;
    assert!(ids(&none).is_empty());
    let (status, _, problem) = stack.call(Method::GET, "/v1/events?type=order..paid", None).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("type")), "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stored_event_is_resent_to_one_subscription() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    let sub = stack.subscribe(&rx.url("/again"), &["order.*"], Some("acme")).await;
    let id = sub["id"].as_str().unwrap().to_owned();
    let other = stack.subscribe(&rx.url("/other"), &["order.*"], Some("other")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.publish(json!({"id": "rs-1", "type": "order.paid", "tenant": "acme", "data": {}})).await;
    stack.publish(json!({"id": "rs-2", "type": "order.paid", "tenant": "other", "data": {}})).await;
    rx.wait_for(2, SOON).await;

    let (_, _, page) = stack.call(Method::GET, "/v1/events?tenant=acme", None).await;
    let seq = page["data"][0]["seq"].as_u64().unwrap();
    let (status, _, resent) =
        stack.call(Method::POST, &format!("/v1/subscriptions/{id}/resend"), Some(json!({"seq": seq}))).await;
    assert_eq!(status, 202, "{resent}");
    assert_eq!(resent["event_id"], "rs-1");
    let again = rx.wait_until(SOON, "the resend", |r| r.iter().filter(|r| r.path == "/again").count() == 2).await;
    let to_again: Vec<_> = again.iter().filter(|r| r.path == "/again").collect();
    assert!(to_again.iter().all(|r| r.header("webhook-id") == Some("rs-1")), "the same event, the same webhook-id");
    assert_eq!(rx.received_on("/other").len(), 1, "no other subscription gets it");

    // Another tenant's event, or none at all, is not found for this subscription.
    let (_, _, theirs) = stack.call(Method::GET, "/v1/events?tenant=other", None).await;
    let their_seq = theirs["data"][0]["seq"].as_u64().unwrap();
    for seq in [their_seq, 999_999] {
        let (status, _, problem) =
            stack.call(Method::POST, &format!("/v1/subscriptions/{id}/resend"), Some(json!({"seq": seq}))).await;
        assert_eq!(status, 404, "{problem}");
    }
    assert!(other["id"].is_string());
}

/// The stream's number of distinct subjects under `filter`.
async fn subjects(stack: &Stack, filter: &str) -> usize {
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let stream = js.get_stream("HERALD_ATTEMPTS").await.unwrap();
    let subjects = stream.info_with_subjects(filter).await.unwrap();
    subjects.map(|s| s.unwrap()).collect::<Vec<_>>().await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_records_of_many_events_share_a_few_subjects_and_are_still_found_by_event() {
    // nats-server keeps state in memory for every subject a stream holds: records of every
    // event to a subscription must not each have one.
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    let sub = stack.subscribe(&rx.url("/many"), &["many.*"], Some("acme")).await;
    let id = sub["id"].as_str().unwrap().to_owned();
    for chunk in 0..2 {
        let events: Vec<Value> = (chunk * 100..(chunk + 1) * 100)
            .map(|i| json!({"id": format!("many-{i}"), "type": "many.x", "tenant": "acme", "data": {"i": i}}))
            .collect();
        let (status, _, batch) = stack.call(Method::POST, "/v1/events/batch", Some(json!({"events": events}))).await;
        assert_eq!((status, batch["accepted"].as_u64()), (202, Some(100)), "{}", batch["failed"]);
    }
    // One more without an id: Herald's own `evt_` id, which carries its time.
    let (_, generated) = stack.publish(json!({"type": "many.x", "tenant": "acme", "data": {}})).await;
    let generated = generated["id"].as_str().unwrap().to_owned();
    rx.wait_for(201, SOON).await;
    let deadline = Instant::now() + SOON;
    while stack.stream_messages("HERALD_ATTEMPTS").await < 201 {
        assert!(Instant::now() < deadline, "201 records expected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let per_subscription = subjects(&stack, &format!("herald.attempts.acme.{id}.*")).await;
    assert!(per_subscription <= 16, "201 events' records are under {per_subscription} subjects, at most 16 expected");
    assert_eq!(subjects(&stack, "herald.attempts.>").await, per_subscription);

    for event in ["many-0", "many-77", "many-199", generated.as_str()] {
        let (status, _, page) = stack.call(Method::GET, &format!("/v1/events/{event}/attempts"), None).await;
        assert_eq!(status, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert_eq!(data.len(), 1, "{event}: {page}");
        assert_eq!((data[0]["event_id"].as_str(), data[0]["outcome"].as_str()), (Some(event), Some("delivered")));
        assert_eq!(data[0]["subscription_id"], id.as_str());
    }
    // `since` bounds the read: after the event, nothing is found; before it, everything.
    let (_, _, later) = stack.call(Method::GET, "/v1/events/many-5/attempts?since=2999-01-01T00:00:00Z", None).await;
    assert_eq!(later["data"].as_array().unwrap().len(), 0, "{later}");
    let (_, _, earlier) = stack.call(Method::GET, "/v1/events/many-5/attempts?since=2020-01-01T00:00:00Z", None).await;
    assert_eq!(earlier["data"].as_array().unwrap().len(), 1, "{earlier}");
    let (status, _, problem) = stack.call(Method::GET, "/v1/events/many-5/attempts?since=soon", None).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("since")), "{problem}");
    let (_, _, page) = stack.call(Method::GET, &format!("/v1/subscriptions/{id}/attempts?limit=500"), None).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_with_a_subject_per_record_upgrades_in_place() {
    use herald_core::{nats, proto};
    use prost::Message as _;

    // The attempts stream as the version before made it: no metadata, records under
    // `herald.attempts.{tenant}.{subscription}.{event}`.
    let server = herald_harness::NatsServer::start();
    let js = async_nats::jetstream::new(server.client().await);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "HERALD_ATTEMPTS".into(),
        subjects: vec!["herald.attempts.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let stack = Stack::start_on(server, true, &[]).await;
    let info = js.get_stream("HERALD_ATTEMPTS").await.unwrap().cached_info().clone();
    let since = info.config.metadata.get(nats::ATTEMPTS_PARTITIONED_SINCE).cloned().unwrap_or_default();
    assert!(!since.is_empty(), "the upgrade is recorded in the stream's metadata: {:?}", info.config.metadata);

    let rx = Receiver::start().await;
    let sub = stack.subscribe(&rx.url("/up"), &["up.*"], None).await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    // Records an old dispatcher wrote (one still running during a rolling upgrade, say):
    // `old-1` delivered, `old-2` failed and due for a retry.
    for (event, outcome) in [("old-1", "delivered"), ("old-2", "retry")] {
        let record = proto::Attempt {
            event_id: event.into(),
            subscription_id: sub_id.clone(),
            tenant: "default".into(),
            attempt: 1,
            url: rx.url("/up"),
            status: if outcome == "delivered" { 200 } else { 500 },
            outcome: outcome.into(),
            at: herald_core::now_rfc3339(),
            ..Default::default()
        };
        let subject = nats::legacy_attempt_subject("default", &sub_id, event);
        js.publish(subject, record.encode_to_vec().into()).await.unwrap().await.unwrap();
    }
    // Their retries, as their schedules fire them: the one delivered before the switch is not
    // sent again; the other is.
    for event in ["old-1", "old-2"] {
        let retry = proto::Delivery {
            event: Some(proto::Event {
                id: event.into(),
                r#type: "up.x".into(),
                tenant: "default".into(),
                data: br#"{}"#.to_vec(),
                time: herald_core::now_rfc3339(),
                ..Default::default()
            }),
            subscription_id: sub_id.clone(),
            attempt: 2,
            ..Default::default()
        };
        let subject = nats::Partition::ZERO.delivery_subject("default", &sub_id);
        js.publish(subject, retry.encode_to_vec().into()).await.unwrap().await.unwrap();
    }
    stack.publish(json!({"id": "new-1", "type": "up.x", "data": {}})).await;
    rx.wait_for(2, SOON).await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut ids: Vec<String> = rx.received().iter().map(|r| r.header("webhook-id").unwrap().to_owned()).collect();
    ids.sort();
    assert_eq!(ids, ["new-1", "old-2"], "old-1 was recorded delivered before the upgrade");

    // Old and new records are read alike.
    let (_, _, old) = stack.call(Method::GET, "/v1/events/old-1/attempts", None).await;
    assert_eq!(old["data"].as_array().unwrap().len(), 1, "{old}");
    assert_eq!(old["data"][0]["outcome"], "delivered");
    let (_, _, retried) = stack.call(Method::GET, "/v1/events/old-2/attempts", None).await;
    let outcomes: Vec<&str> =
        retried["data"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["delivered", "retry"], "{retried}");
    let (_, _, all) = stack.call(Method::GET, &format!("/v1/subscriptions/{sub_id}/attempts"), None).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 4, "{all}");
    // New records go under the partitioned subjects.
    let stream = js.get_stream("HERALD_ATTEMPTS").await.unwrap();
    let newest = stream
        .get_last_raw_message_by_subject(&nats::Partition::ZERO.attempt_subject("default", &sub_id, "new-1"))
        .await;
    let newest = proto::Attempt::decode(newest.expect("new-1's record in its partition").payload.as_ref()).unwrap();
    assert_eq!((newest.event_id.as_str(), newest.outcome.as_str()), ("new-1", "delivered"));
    assert!(newest.event_sequence > 0, "the record says where the event was stored");
    // Every later start keeps the time of the switch: it is not moved on at each start.
    let topology = herald_core::nats::Topology::default();
    herald_core::nats::ensure_streams(&js, &topology).await.unwrap();
    let info = js.get_stream("HERALD_ATTEMPTS").await.unwrap().cached_info().clone();
    assert_eq!(info.config.metadata.get(nats::ATTEMPTS_PARTITIONED_SINCE), Some(&since));
}
