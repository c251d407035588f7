//! Partitioned streams (`HERALD_PARTITIONS`): events spread by tenant, deliveries, lanes,
//! retries and records by subscription, every replica pulling every partition; and changing the
//! number of partitions, which leaves nothing behind in the partitions no longer written.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use herald_harness::{DispatcherProcess, Receiver, Reply, Stack};
use reqwest::Method;
use serde_json::json;

const TENANTS: [&str; 8] = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"];

async fn publish(stack: &Stack, tenant: &str, tag: &str, n: usize) {
    let events: Vec<_> = (0..n)
        .map(|i| json!({"id": format!("{tag}-{tenant}-{i}"), "type": "p.x", "tenant": tenant, "data": {"i": i}}))
        .collect();
    let (status, _, body) = stack.call(Method::POST, "/v1/events/batch", Some(json!({"events": events}))).await;
    assert_eq!(status, 202, "{body}");
}

/// Distinct webhook ids received on each path.
fn distinct_by_path(rx: &Receiver) -> HashMap<String, HashSet<String>> {
    let mut by: HashMap<String, HashSet<String>> = HashMap::new();
    for r in rx.received() {
        by.entry(r.path.clone()).or_default().insert(r.header("webhook-id").unwrap_or_default().to_owned());
    }
    by
}

/// Polls what `rx` received until `done` holds, failing after a minute with `what` and the
/// distinct ids received on each path.
async fn wait_for(rx: &Receiver, what: &str, done: impl Fn(&HashMap<String, HashSet<String>>) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let by = distinct_by_path(rx);
        if done(&by) {
            return;
        }
        let counts: Vec<_> = by.iter().map(|(p, ids)| (p.clone(), ids.len())).collect();
        assert!(tokio::time::Instant::now() < deadline, "{what}: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn messages(stack: &Stack, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(stack.nats.client().await);
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_partitions_deliver_everything_keep_order_and_retry_within_a_subscriptions_partition() {
    let four = [("--partitions", "4")];
    let mut stack = Stack::start_with(false, &["--partitions", "4"]).await;
    stack.start_dispatcher_with(&four);
    let other = DispatcherProcess::start_with(&stack.nats.url(), &four);
    let rx = Receiver::start().await;
    // The first attempt of every tenth request to /flaky fails: those come back as retries.
    rx.script_per_path("/flaky", (0..400).map(|k| Reply::status(if k % 10 == 3 { 503 } else { 200 })));
    for tenant in TENANTS {
        stack.subscribe(&rx.url(&format!("/{tenant}")), &["p.*"], Some(tenant)).await;
    }
    let body = json!({"url": rx.url("/fifo"), "event_types": ["p.*"], "ordering": "fifo", "tenant": "t3"});
    let (status, _, fifo) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{fifo}");
    let flaky = stack.subscribe(&rx.url("/flaky"), &["p.*"], Some("t5")).await;
    other.wait_ready().await;

    let n = 60;
    for tenant in TENANTS {
        publish(&stack, tenant, "a", n).await;
    }
    let everything = |by: &HashMap<String, HashSet<String>>| {
        TENANTS.iter().all(|t| by.get(&format!("/{t}")).is_some_and(|ids| ids.len() >= n))
            && by.get("/fifo").is_some_and(|ids| ids.len() >= n)
            && by.get("/flaky").is_some_and(|ids| ids.len() >= n)
    };
    wait_for(&rx, "not everything delivered", everything).await;
    let by = distinct_by_path(&rx);
    for tenant in TENANTS {
        let ids = &by[&format!("/{tenant}")];
        assert_eq!(ids.len(), n, "{tenant} received its own events, each once by id");
        assert!(ids.iter().all(|id| id.contains(&format!("-{tenant}-"))), "isolation: {tenant} got {ids:?}");
    }
    // The ordered subscription received t3's events in publish order (a retry in place aside).
    let order: Vec<u64> = rx.received_on("/fifo").iter().map(|r| r.json()["data"]["i"].as_u64().unwrap()).collect();
    let mut expected = 0;
    for i in order {
        if i + 1 == expected {
            continue;
        }
        assert_eq!(i, expected, "ordered delivery out of order");
        expected += 1;
    }

    // The streams of more than one partition carried events, deliveries and records.
    let mut events = Vec::new();
    let mut attempts = Vec::new();
    for p in 0..4 {
        let suffix = if p == 0 { String::new() } else { format!("_{p}") };
        events.push(messages(&stack, &format!("HERALD_EVENTS{suffix}")).await);
        attempts.push(messages(&stack, &format!("HERALD_ATTEMPTS{suffix}")).await);
    }
    assert_eq!(events.iter().sum::<u64>(), (n * TENANTS.len()) as u64, "{events:?}");
    assert!(events.iter().filter(|m| **m > 0).count() >= 2, "events spread over partitions: {events:?}");
    assert!(attempts.iter().filter(|m| **m > 0).count() >= 2, "records spread over partitions: {attempts:?}");

    // The retried subscription's records are read back from its partition: a 503 and then a
    // 2xx for the events that failed first.
    let flaky_id = flaky["id"].as_str().unwrap();
    // (A record is stored moments after the request it records was answered.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, page) =
            stack.call(Method::GET, &format!("/v1/subscriptions/{flaky_id}/attempts?limit=500"), None).await;
        assert_eq!(status, 200, "{page}");
        let records = page["data"].as_array().unwrap();
        let failed = records.iter().filter(|a| a["status"] == 503).count();
        if failed > 0 && records.len() >= n + failed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "first attempts and retries: {} ({failed} failed)",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An event's records, found across the partitions of its subscriptions.
    let (status, _, page) = stack.call(Method::GET, "/v1/events/a-t5-7/attempts?tenant=t5", None).await;
    assert_eq!(status, 200, "{page}");
    assert!(!page["data"].as_array().unwrap().is_empty(), "{page}");
    // Statistics count every partition's backlog (none left).
    let (status, _, stats) = stack.call(Method::GET, "/v1/overview", None).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["lag"]["events_pending"], 0, "{stats}");
    other.kill();
    stack.stop_dispatcher().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_partitions_drain_those_left_and_more_take_over_the_backlog() {
    // Four partitions hold a backlog nobody has delivered yet (no dispatcher ran).
    let mut stack = Stack::start_with(false, &["--partitions", "4"]).await;
    let rx = Receiver::start().await;
    for tenant in TENANTS {
        stack.subscribe(&rx.url(&format!("/{tenant}")), &["p.*"], Some(tenant)).await;
    }
    let n = 40;
    for tenant in TENANTS {
        publish(&stack, tenant, "b", n).await;
    }
    assert!(messages(&stack, "HERALD_EVENTS_1").await + messages(&stack, "HERALD_EVENTS_2").await > 0);

    // Dispatchers on one partition: they still read the other three to the end.
    stack.start_dispatcher_with(&[("--partitions", "1")]);
    let delivered = |by: &HashMap<String, HashSet<String>>, n: usize| {
        TENANTS.iter().all(|t| by.get(&format!("/{t}")).is_some_and(|ids| ids.len() >= n))
    };
    wait_for(&rx, "the partitions left were not drained", |by| delivered(by, n)).await;
    stack.stop_dispatcher().await;

    // And from there to three: a backlog in partition 0 (events published there meanwhile are
    // read wherever they are) is taken over by dispatchers on three partitions.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    for i in 0..n {
        let subject = "herald.events.t1.p.x";
        let body = json!({"id": format!("c-t1-{i}"), "data": {"i": i}}).to_string();
        js.publish(subject, body.into()).await.unwrap().await.unwrap();
    }
    stack.start_dispatcher_with(&[("--partitions", "3")]);
    wait_for(&rx, "partition 0's backlog was not taken over", |by| by.get("/t1").map_or(0, |ids| ids.len()) >= 2 * n)
        .await;
    // Each event once by id, whichever partitions it went through.
    let t1: Vec<String> =
        rx.received_on("/t1").iter().map(|r| r.header("webhook-id").unwrap_or_default().to_owned()).collect();
    let distinct: HashSet<&String> = t1.iter().collect();
    assert_eq!(distinct.len(), 2 * n);
    stack.stop_dispatcher().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_given_partitions_pull_only_those_and_a_partition_nobody_pulls_waits() {
    let two = herald_core::nats::Partitions::new(2).unwrap();
    let in_partition = |p: u16| TENANTS.iter().copied().filter(move |t| two.of_tenant(t).0 == p).collect::<Vec<_>>();
    let (first, second) = (in_partition(0), in_partition(1));
    assert!(!first.is_empty() && !second.is_empty(), "the tenants spread over both partitions");

    let mut stack = Stack::start_with(false, &["--partitions", "2"]).await;
    // A partition that does not exist is refused at start, with what is wrong.
    let args =
        herald_harness::dispatcher_args_with(&stack.nats.url(), &[("--partitions", "2"), ("--pull-partitions", "0,2")]);
    let config = <herald_dispatcher::Config as clap::Parser>::try_parse_from(args).unwrap();
    let refused = herald_dispatcher::run(config, tokio_util::sync::CancellationToken::new()).await;
    let message = format!("{:#}", refused.expect_err("partition 2 of 2 is refused"));
    assert!(message.contains("HERALD_PULL_PARTITIONS lists partition 2"), "{message}");

    let rx = Receiver::start().await;
    for tenant in TENANTS {
        stack.subscribe(&rx.url(&format!("/{tenant}")), &["p.*"], Some(tenant)).await;
    }
    let n = 30;
    for tenant in TENANTS {
        publish(&stack, tenant, "d", n).await;
    }
    let all_of = |tenants: &[&str], by: &HashMap<String, HashSet<String>>| {
        tenants.iter().all(|t| by.get(&format!("/{t}")).is_some_and(|ids| ids.len() >= n))
    };
    // A replica given partition 0 delivers its tenants' events, and nothing of partition 1's.
    stack.start_dispatcher_with(&[("--partitions", "2"), ("--pull-partitions", "0")]);
    wait_for(&rx, "partition 0 was not delivered", |by| all_of(&first, by)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by = distinct_by_path(&rx);
    for tenant in &second {
        assert!(!by.contains_key(&format!("/{tenant}")), "{tenant} is in partition 1, which nobody pulls");
    }
    // A replica given partition 1 takes its backlog.
    let other = DispatcherProcess::start_with(&stack.nats.url(), &[("--partitions", "2"), ("--pull-partitions", "1")]);
    other.wait_ready().await;
    wait_for(&rx, "partition 1 was not delivered", |by| all_of(&second, by)).await;
    let by = distinct_by_path(&rx);
    for tenant in TENANTS {
        assert_eq!(by[&format!("/{tenant}")].len(), n, "{tenant}: each event once by id");
    }
    other.kill();
    stack.stop_dispatcher().await;
}
