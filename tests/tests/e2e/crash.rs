//! Crashes and shutdowns lose nothing: a dispatcher killed mid-delivery delivers after restart;
//! one stopped with SIGTERM finishes what it holds.

use std::time::Duration;

use herald_harness::{DispatcherProcess, Receiver, Reply, Stack};
use serde_json::json;

use crate::SOON;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatcher_killed_mid_delivery_delivers_after_restart() {
    let stack = Stack::gateway_only().await;
    let rx = Receiver::start().await;
    // The first request hangs long enough for the kill to land while it is in flight.
    rx.script([Reply { delay: Duration::from_secs(60), ..Reply::status(200) }]);
    let sub = stack.subscribe(&rx.url("/k"), &["crash.test"], None).await;
    let dispatcher = DispatcherProcess::start(&stack.nats.url());
    let (status, _) = stack.publish(json!({"id": "survivor", "type": "crash.test", "data": {"n": 1}})).await;
    assert_eq!(status, 202);

    rx.wait_for(1, Duration::from_secs(30)).await;
    dispatcher.kill();

    let restarted = DispatcherProcess::start(&stack.nats.url());
    let got = rx.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(got[1].header("webhook-id"), Some("survivor"));
    got[1].verify(sub["secret"].as_str().unwrap()).unwrap();
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_deliveries_finish_and_acks_them() {
    let stack = Stack::gateway_only().await;
    let rx = Receiver::start().await;
    rx.script([Reply { delay: Duration::from_millis(1500), ..Reply::status(200) }]);
    stack.subscribe(&rx.url("/t"), &["term.test"], None).await;
    let dispatcher = DispatcherProcess::start(&stack.nats.url());
    stack.publish(json!({"id": "graceful", "type": "term.test", "data": {}})).await;

    rx.wait_for(1, Duration::from_secs(30)).await;
    assert!(dispatcher.terminate(), "the dispatcher exits cleanly on SIGTERM");
    // The in-flight delivery completed and was acked before exit: nothing is left to redeliver.
    assert_eq!(stack.consumer_backlog("HERALD_DELIVERIES", "herald-deliver").await, (0, 0));
    let again = DispatcherProcess::start(&stack.nats.url());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rx.received().len(), 1, "no redelivery of a finished delivery");
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_dispatcher_whose_nats_is_gone() {
    // NATS and the dispatcher stopped together (a node going down, a developer's Ctrl-C): the
    // dispatcher must still exit, not wait for a reconnect that never comes.
    let mut stack = Stack::gateway_only().await;
    let rx = Receiver::start().await;
    stack.subscribe(&rx.url("/g"), &["gone.test"], None).await;
    let dispatcher = DispatcherProcess::start(&stack.nats.url());
    stack.publish(json!({"id": "before", "type": "gone.test", "data": {}})).await;
    rx.wait_for(1, Duration::from_secs(30)).await;

    stack.nats.stop();
    let started = std::time::Instant::now();
    assert!(dispatcher.terminate(), "the dispatcher exits cleanly on SIGTERM without NATS");
    // Not a timing assertion: the bound is the minute `terminate` waits; this says how long.
    eprintln!("exited {:?} after SIGTERM", started.elapsed());
}

/// Kills a dispatcher (`flags`) once a fast receiver has answered 2xx to part of a backlog while
/// a slow one, subscribed to the same events, still has most of them to answer (so the events
/// are not acked yet), starts another, and returns `(events, duplicates at the fast receiver,
/// duplicates whose first record was there)`: an event sent again although a record of its
/// delivery had been stored is what the check before sending must prevent; one whose record
/// was lost with the process (a request in flight at the kill) may be sent again.
async fn redeliveries_after_a_kill(flags: &[(&str, &str)]) -> (usize, usize, usize) {
    let stack = Stack::gateway_only().await;
    let rx = Receiver::start().await;
    let n = 300;
    rx.script_per_path("/once", (0..n * 2).map(|_| Reply { delay: Duration::from_millis(20), ..Reply::status(200) }));
    rx.script_per_path("/slow", (0..n * 2).map(|_| Reply { delay: Duration::from_millis(1000), ..Reply::status(200) }));
    stack.subscribe(&rx.url("/once"), &["once.test"], None).await;
    stack.subscribe(&rx.url("/slow"), &["once.test"], None).await;
    let first = DispatcherProcess::start_with(&stack.nats.url(), flags);
    first.wait_ready().await;
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let events: Vec<_> =
            chunk.iter().map(|i| json!({"id": format!("once-{i}"), "type": "once.test", "data": {}})).collect();
        let (status, _, body) =
            stack.call(reqwest::Method::POST, "/v1/events/batch", Some(json!({"events": events}))).await;
        assert_eq!(status, 202, "{body}");
    }
    rx.wait_until(Duration::from_secs(30), "a third at the fast receiver", |r| {
        r.iter().filter(|r| r.path == "/once").count() >= n / 3
    })
    .await;
    first.kill();
    let second = DispatcherProcess::start_with(&stack.nats.url(), flags);
    let distinct = |r: &[herald_harness::Received], path: &str| {
        let ids = r.iter().filter(|r| r.path == path).filter_map(|r| r.header("webhook-id"));
        ids.collect::<std::collections::HashSet<_>>().len()
    };
    rx.wait_until(Duration::from_secs(90), "every event at both", |r| {
        distinct(r, "/once") >= n && distinct(r, "/slow") >= n
    })
    .await;
    // Past the ack wait (5 s), whatever the killed one held has been handed out again.
    stack.wait_consumer_drained("HERALD_EVENTS", "herald-fanout", Duration::from_secs(30)).await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", Duration::from_secs(30)).await;
    let mut counts = std::collections::HashMap::new();
    for r in rx.received_on("/once") {
        *counts.entry(r.header("webhook-id").unwrap().to_owned()).or_insert(0usize) += 1;
    }
    let (mut duplicates, mut despite_record) = (0, 0);
    for (id, count) in counts.iter().filter(|(_, c)| **c > 1) {
        duplicates += count - 1;
        let (_, _, attempts) = stack.call(reqwest::Method::GET, &format!("/v1/events/{id}/attempts"), None).await;
        let to_fast = |x: &&serde_json::Value| x["url"].as_str().is_some_and(|u| u.ends_with("/once"));
        let records = attempts["data"].as_array().cloned().unwrap_or_default();
        let delivered = records.iter().filter(to_fast).filter(|x| x["outcome"] == "delivered").count();
        // Two records of one delivery: the first was stored, and it was sent again anyway.
        if delivered > 1 {
            despite_record += 1;
        }
    }
    drop(second);
    (n, duplicates, despite_record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_delivered_before_a_kill_is_not_sent_again() {
    // Inline first attempts (the event comes back to fan-out) and stored deliveries (the
    // delivery comes back to the delivery consumer).
    for flags in [&[][..], &[("--inline-attempts", "0")][..]] {
        let (n, duplicates, despite_record) = redeliveries_after_a_kill(flags).await;
        eprintln!("{flags:?}: {n} events, {duplicates} sent twice, {despite_record} of them despite a record");
        assert_eq!(despite_record, 0, "{flags:?}: events sent again although their delivery was recorded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_outlasts_the_ack_wait_is_kept_in_progress_and_sent_once() {
    // Ack waits are short so that what a dead node or replica held comes back in seconds; a
    // replica says it is still working on what it holds. Two replicas, a 2 s ack wait and an
    // endpoint that takes 6 s: without the word of progress every message would be handed out
    // again (to either replica) while its first attempt is still in flight, and sent twice.
    // With fan-out's inline first attempts (the event is held) and without (the delivery is).
    for inline in ["256", "0"] {
        let stack = Stack::gateway_only().await;
        let rx = Receiver::start().await;
        rx.script_per_path("/slow", (0..20).map(|_| Reply { delay: Duration::from_secs(6), ..Reply::status(200) }));
        stack.subscribe(&rx.url("/slow"), &["held.test"], None).await;
        let flags = [("--ack-wait", "2s"), ("--http-timeout", "10s"), ("--inline-attempts", inline)];
        let replicas: Vec<_> = (0..2).map(|_| DispatcherProcess::start_with(&stack.nats.url(), &flags)).collect();
        for d in &replicas {
            d.wait_ready().await;
        }
        for i in 0..4 {
            let (status, _) = stack.publish(json!({"id": format!("held-{i}"), "type": "held.test", "data": {}})).await;
            assert_eq!(status, 202);
        }
        rx.wait_until(Duration::from_secs(60), "all four answered", |r| {
            r.iter().filter(|r| r.status == 200).count() >= 4
        })
        .await;
        stack.wait_consumer_drained("HERALD_EVENTS", "herald-fanout", SOON).await;
        stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
        // Past three more ack waits: anything handed out again would have been sent by now.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let mut ids: Vec<_> = rx.received().iter().filter_map(|r| r.header("webhook-id").map(str::to_owned)).collect();
        ids.sort();
        assert_eq!(ids, ["held-0", "held-1", "held-2", "held-3"], "inline attempts {inline}: each sent once");
        let again: f64 = {
            let mut sum = 0.0;
            for d in &replicas {
                sum += herald_harness::metric_sum(
                    &d.metrics_text().await.unwrap_or_default(),
                    "herald_handed_out_again_total",
                );
            }
            sum
        };
        assert_eq!(again, 0.0, "inline attempts {inline}: nothing was handed out again");
        drop(replicas);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_whose_retry_is_stored_is_not_sent_again_beside_it() {
    use herald_core::{nats, proto};
    use prost::Message as _;

    // A failed attempt's retry is stored before its record, and the record says so. A copy of
    // that attempt handed out again (its ack lost in an election, or a schedule that fired
    // twice) is then settled; the retry itself is sent. Without the mark both went out.
    let stack = Stack::start().await;
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let rx = Receiver::start().await;
    rx.script_per_path("/r", [Reply::status(500)]);
    let sub = stack.subscribe(&rx.url("/r"), &["twin.*"], None).await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();

    // The real path: an attempt answered 500 leaves a record saying its retry was stored, and
    // the retry delivers.
    let (status, _) = stack.publish(json!({"id": "real-1", "type": "twin.x", "data": {}})).await;
    assert_eq!(status, 202);
    rx.wait_until(Duration::from_secs(30), "the retry delivered", |r| r.iter().any(|r| r.status == 200)).await;
    let stream = js.get_stream(nats::ATTEMPTS_STREAM).await.unwrap();
    let subject = nats::Partition::ZERO.attempt_subject("default", &sub_id, "real-1");
    // The delivered attempt is recorded a moment after the receiver answered.
    let (mut records, mut seq) = (Vec::new(), 0);
    let deadline = std::time::Instant::now() + SOON;
    while records.len() < 2 && std::time::Instant::now() < deadline {
        match stream.get_raw_message(seq + 1).await {
            Ok(m) => {
                seq += 1;
                if m.subject.as_str() == subject
                    && let Ok(a) = proto::Attempt::decode(m.payload.as_ref())
                    && a.event_id == "real-1"
                {
                    records.push(a);
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let seen: Vec<_> = records.iter().map(|a| (a.attempt, a.outcome.as_str(), a.retry_stored)).collect();
    assert_eq!(seen, [(1, "retry", true), (2, "delivered", false)], "{records:?}");

    // Copies as they come back: for `stored-1` attempt 2 failed and its retry (attempt 3) is
    // stored, so a second attempt-2 message is settled and only attempt 3 is sent; for
    // `unstored-1` attempt 2's retry could not be stored, so its message, back, is sent.
    for (event, stored) in [("stored-1", true), ("unstored-1", false)] {
        let record = proto::Attempt {
            event_id: event.into(),
            subscription_id: sub_id.clone(),
            tenant: "default".into(),
            attempt: 2,
            url: rx.url("/r"),
            status: 500,
            outcome: "retry".into(),
            at: herald_core::now_rfc3339(),
            retry_stored: stored,
            ..Default::default()
        };
        let subject = nats::Partition::ZERO.attempt_subject("default", &sub_id, event);
        js.publish(subject, record.encode_to_vec().into()).await.unwrap().await.unwrap();
    }
    let delivery = |event: &str, attempt| proto::Delivery {
        event: Some(proto::Event {
            id: event.into(),
            r#type: "twin.x".into(),
            tenant: "default".into(),
            data: br#"{}"#.to_vec(),
            time: herald_core::now_rfc3339(),
            ..Default::default()
        }),
        subscription_id: sub_id.clone(),
        attempt,
        ..Default::default()
    };
    for (event, attempt) in [("stored-1", 2), ("stored-1", 3), ("unstored-1", 2)] {
        let subject = nats::Partition::ZERO.delivery_subject("default", &sub_id);
        js.publish(subject, delivery(event, attempt).encode_to_vec().into()).await.unwrap().await.unwrap();
    }
    rx.wait_until(SOON, "both sent", |r| {
        ["stored-1", "unstored-1"].iter().all(|id| r.iter().any(|r| r.header("webhook-id") == Some(id)))
    })
    .await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", SOON).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = |id: &str| rx.received().iter().filter(|r| r.header("webhook-id") == Some(id)).count();
    assert_eq!((sent("stored-1"), sent("unstored-1")), (1, 1), "each sent once");
    let (_, _, attempts) = stack.call(reqwest::Method::GET, "/v1/events/stored-1/attempts", None).await;
    let numbers: Vec<u64> =
        attempts["data"].as_array().unwrap().iter().map(|a| a["attempt"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [3, 2], "the retry's attempt is the one made: {attempts}");
}
