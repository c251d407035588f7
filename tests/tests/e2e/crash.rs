//! Crashes and shutdowns lose nothing: a dispatcher killed mid-delivery delivers after restart;
//! one stopped with SIGTERM finishes what it holds.

use std::time::Duration;

use herald_tests::{DispatcherProcess, Receiver, Reply, Stack};
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
