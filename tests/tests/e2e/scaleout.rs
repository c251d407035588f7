//! Scale-out: every dispatcher replica fans out and delivers a share of the events; one that dies
//! hands its share over without loss, and one that joins takes a share; ordered subscriptions
//! keep their order beside unordered ones delivered by all replicas.

use std::collections::HashSet;
use std::future::IntoFuture as _;
use std::time::Duration;

use herald_harness::{DispatcherProcess, Receiver, Reply, Stack};
use reqwest::Method;
use serde_json::json;

use crate::SOON;

/// Publishes `n` JSON events of `event_type` straight to NATS, up to 1,000 PubAcks in flight
/// (the client allows 5,000): a backlog that lands at once.
async fn publish_backlog(stack: &Stack, tag: &str, event_type: &str, n: usize) {
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let subject = herald_core::nats::event_subject("default", event_type);
    let mut acks = std::collections::VecDeque::new();
    for i in 0..n {
        if acks.len() == 1000 {
            let ack: async_nats::jetstream::context::PublishAckFuture = acks.pop_front().unwrap();
            ack.into_future().await.expect("PubAck");
        }
        let id = format!("{tag}-{i}");
        let body = json!({"id": id, "type": event_type, "data": {"i": i}}).to_string();
        let publish = async_nats::jetstream::message::PublishMessage::build().payload(body.into()).message_id(id);
        acks.push_back(js.send_publish(subject.clone(), publish).await.expect("publish"));
    }
    for ack in acks {
        ack.into_future().await.expect("PubAck");
    }
}

/// Distinct webhook ids the receiver got on `path`.
fn distinct_on(rx: &Receiver, path: &str) -> HashSet<String> {
    rx.received_on(path).iter().filter_map(|r| r.header("webhook-id").map(str::to_owned)).collect()
}

async fn start_replicas(stack: &Stack, n: usize) -> Vec<DispatcherProcess> {
    let replicas: Vec<_> = (0..n).map(|_| DispatcherProcess::start(&stack.nats.url())).collect();
    for r in &replicas {
        r.wait_ready().await;
    }
    replicas
}

/// Each replica's share of the attempts all of them made.
async fn shares(replicas: &[&DispatcherProcess]) -> Vec<f64> {
    let mut attempts = Vec::new();
    for r in replicas {
        attempts.push(r.attempts().await);
    }
    let total: f64 = attempts.iter().sum();
    attempts.iter().map(|a| a / total).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_a_backlog_evenly() {
    let stack = Stack::gateway_only().await;
    let rx = Receiver::start().await;
    stack.subscribe(&rx.url("/fast"), &["scale.even"], None).await;
    let replicas = start_replicas(&stack, 3).await;

    let n = 6000;
    publish_backlog(&stack, "even", "scale.even", n).await;
    rx.wait_until(Duration::from_secs(120), "the whole backlog", |_| distinct_on(&rx, "/fast").len() >= n).await;
    stack.wait_consumer_drained("HERALD_EVENTS", "herald-fanout", SOON).await;

    let all: Vec<_> = replicas.iter().collect();
    let shares = shares(&all).await;
    eprintln!("shares of the attempts: {shares:.3?}");
    for (i, share) in shares.iter().enumerate() {
        assert!(*share >= 0.20, "replica {i} made {:.1} % of the attempts: {shares:.3?}", share * 100.0);
    }
    // Every attempt was counted by the replica that made it, and no event was lost.
    let mut attempts = 0.0;
    for r in &replicas {
        attempts += r.attempts().await;
    }
    assert!(attempts >= n as f64, "{attempts} attempts for {n} events");
    assert_eq!(distinct_on(&rx, "/fast").len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_drain_loses_nothing_and_a_newcomer_takes_a_share() {
    let stack = Stack::gateway_only().await;
    let rx = Receiver::start().await;
    let n = 4000;
    // Slow enough that the drain lasts seconds: each replica has 32 requests open to it at most.
    rx.script_per_path("/slow", (0..n * 2).map(|_| Reply { delay: Duration::from_millis(60), ..Reply::status(200) }));
    let sub = stack.subscribe(&rx.url("/slow"), &["scale.kill"], None).await;
    let mut replicas = start_replicas(&stack, 2).await;

    publish_backlog(&stack, "kill", "scale.kill", n).await;
    rx.wait_until(Duration::from_secs(60), "a quarter of the backlog", |r| r.len() >= n / 4).await;
    replicas.remove(0).kill();
    let newcomer = DispatcherProcess::start(&stack.nats.url());
    newcomer.wait_ready().await;

    rx.wait_until(Duration::from_secs(120), "the whole backlog", |_| distinct_on(&rx, "/slow").len() >= n).await;
    stack.wait_consumer_drained("HERALD_EVENTS", "herald-fanout", Duration::from_secs(30)).await;
    stack.wait_consumer_drained("HERALD_DELIVERIES", "herald-deliver", Duration::from_secs(30)).await;
    let shares = shares(&[&replicas[0], &newcomer]).await;
    eprintln!("survivor and newcomer shares of their attempts: {shares:.3?}");
    assert!(shares[1] >= 0.25, "the newcomer made {:.1} % of the attempts after it joined", shares[1] * 100.0);
    assert_eq!(distinct_on(&rx, "/slow").len(), n, "every event delivered");
    let secret = sub["secret"].as_str().unwrap();
    for r in rx.received_on("/slow").iter().step_by(97) {
        r.verify(secret).unwrap();
    }
    assert_eq!(stack.stream_messages("HERALD_DLQ").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_subscription_keeps_its_order_beside_one_every_replica_delivers() {
    let stack = Stack::gateway_only().await;
    let rx = Receiver::start().await;
    let body = json!({"url": rx.url("/fifo"), "event_types": ["scale.mixed"], "ordering": "fifo"});
    let (status, _, sub) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{sub}");
    stack.subscribe(&rx.url("/free"), &["scale.mixed"], None).await;
    let replicas = start_replicas(&stack, 3).await;
    // The ordered fan-out reads the ordered subscription's events once a replica has set its
    // filter (within a second or two).
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let events = js.get_stream("HERALD_EVENTS").await.unwrap();
        let info = events.consumer_info("herald-fanout-ordered").await.unwrap();
        if info.config.filter_subjects == ["herald.events.default.scale.mixed"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "ordered filter still {:?}", info.config.filter_subjects);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let n = 1500;
    publish_backlog(&stack, "mixed", "scale.mixed", n).await;
    rx.wait_until(Duration::from_secs(120), "both subscriptions' deliveries", |_| {
        distinct_on(&rx, "/fifo").len() >= n && distinct_on(&rx, "/free").len() >= n
    })
    .await;

    // The ordered one: each request is the next event in publish order, or the same one again.
    let mut expected = 0usize;
    for (k, r) in rx.received_on("/fifo").iter().enumerate() {
        let i = r.json()["data"]["i"].as_u64().unwrap() as usize;
        if k > 0 && i + 1 == expected {
            continue;
        }
        assert_eq!(i, expected, "request {k} carried event {i}, expected {expected}");
        expected += 1;
    }
    assert_eq!(expected, n);
    // The unordered one was delivered by every replica (the ordered one's lane adds its share to
    // whichever replica pulled it).
    let all: Vec<_> = replicas.iter().collect();
    let shares = shares(&all).await;
    eprintln!("shares of the attempts: {shares:.3?}");
    for (i, share) in shares.iter().enumerate() {
        assert!(*share >= 0.15, "replica {i} made {:.1} % of the attempts: {shares:.3?}", share * 100.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_ordered_while_events_flow_misses_none() {
    let stack = Stack::gateway_only().await;
    let rx = Receiver::start().await;
    let sub = stack.subscribe(&rx.url("/switch"), &["scale.switch"], None).await;
    let id = sub["id"].as_str().unwrap().to_owned();
    let _replicas = start_replicas(&stack, 2).await;

    // Events keep coming while the subscription turns ordered, and back.
    let n = 300;
    let publisher = async {
        for i in 0..n {
            let (status, _) =
                stack.publish(json!({"id": format!("switch-{i}"), "type": "scale.switch", "data": {"i": i}})).await;
            assert_eq!(status, 202);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let switcher = async {
        for ordering in ["fifo", "unordered", "fifo"] {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let (status, _, body) = stack
                .call(Method::PATCH, &format!("/v1/subscriptions/{id}"), Some(json!({"ordering": ordering})))
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    futures::future::join(publisher, switcher).await;
    rx.wait_until(Duration::from_secs(60), "every event", |_| distinct_on(&rx, "/switch").len() >= n).await;
    assert_eq!(distinct_on(&rx, "/switch").len(), n);
}
