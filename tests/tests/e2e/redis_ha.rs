//! Redis destinations beyond one server: a Redis Cluster, where the stream's node is found
//! through the cluster's redirections (and found again when its slot moves), and Sentinel, which
//! names the master (and the new one after a failover). Real `redis-server` processes, read back
//! with `redis-cli`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use herald_harness::{Received, Redis, RedisCluster, Sentinel, Stack};
use serde_json::json;

use crate::destinations::{attempts, collect, subscribe};

/// Retries a second apart, so a failover is not waited out on the default schedule.
fn fast() -> serde_json::Value {
    json!({"retry_schedule": "1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s"})
}

async fn publish(stack: &Stack, prefix: &str, range: std::ops::Range<usize>, event_type: &str) {
    for i in range {
        let (status, body) =
            stack.publish(json!({"id": format!("{prefix}-{i:03}"), "type": event_type, "data": {"i": i}})).await;
        assert_eq!(status, 202, "{body}");
    }
}

/// The webhook ids of `entries`, asserting that none came twice.
fn ids_once(what: &str, entries: &[Received]) -> HashSet<String> {
    let ids: HashSet<String> = entries.iter().filter_map(|m| m.header("webhook-id").map(str::to_owned)).collect();
    assert_eq!(ids.len(), entries.len(), "{what}: an entry written twice");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_gets_each_entry_on_the_node_holding_its_stream_before_and_after_the_slot_moves() {
    let cluster = tokio::task::block_in_place(|| RedisCluster::start(3));
    let stream = "herald-cluster";
    let owner = cluster.owner(stream);
    // The subscription names a node that does not hold the stream: it answers MOVED.
    let (seed, third) = ((owner + 1) % 3, (owner + 2) % 3);
    let stack = Stack::start().await;
    let sub = subscribe(
        &stack,
        json!({"type": "redis", "url": cluster.node(seed).url(), "stream": stream}),
        &["cluster.*"],
        fast(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&stack, "cl", 0..40, "cluster.x").await;
    let within = Duration::from_secs(60);
    collect("the stream's node", 40, within, || cluster.node(owner).entries(stream)).await;
    ids_once("before the move", &cluster.node(owner).entries(stream));
    let first = attempts(&stack, sub["id"].as_str().unwrap()).await;
    assert!(
        first.iter().all(|a| a["outcome"] == "delivered"),
        "the redirection is followed within an attempt: {:?}",
        first.iter().find(|a| a["outcome"] != "delivered")
    );

    // The slot moves to the third node, with the stream, while events keep coming.
    publish(&stack, "cl", 40..60, "cluster.x").await;
    tokio::task::block_in_place(|| cluster.move_slot(stream, third));
    publish(&stack, "cl", 60..80, "cluster.x").await;
    collect("the stream's new node", 80, within, || cluster.node(third).entries(stream)).await;
    let ids = ids_once("after the move", &cluster.node(third).entries(stream));
    assert_eq!(ids.len(), 80, "every event once on the node now holding the stream");
    assert!(cluster.node(owner).cli(&["DBSIZE"]).trim() == "0", "nothing stayed on the node that held it");
    assert!(cluster.node(seed).cli(&["DBSIZE"]).trim() == "0", "nothing was written on the node the URL names");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_names_the_master_and_after_a_failover_the_new_one_and_nothing_confirmed_is_lost() {
    let (mut master, replica, sentinel) = tokio::task::block_in_place(|| {
        let master = Redis::start();
        let replica = Redis::start_with_args(&["--replicaof", "127.0.0.1", &master.port().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !replica.cli(&["INFO", "replication"]).contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "the replica did not sync");
            std::thread::sleep(Duration::from_millis(100));
        }
        let sentinel = Sentinel::start("herald", master.port());
        while sentinel.replicas("herald") == 0 {
            assert!(Instant::now() < deadline, "the Sentinel did not find the replica");
            std::thread::sleep(Duration::from_millis(100));
        }
        (master, replica, sentinel)
    });
    let stack = Stack::start().await;
    // The URL's own Sentinel is not running: the next one is asked.
    let gone = herald_harness::free_port();
    let url = format!("redis+sentinel://127.0.0.1:{gone}/herald?sentinel=127.0.0.1:{}", sentinel.port());
    let sub = subscribe(&stack, json!({"type": "redis", "url": url, "stream": "herald-ha"}), &["ha.*"], fast()).await;
    assert_eq!(sub["destination"]["url"], url);
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&stack, "ha", 0..30, "ha.x").await;
    let within = Duration::from_secs(60);
    collect("the master", 30, within, || master.entries("herald-ha")).await;
    ids_once("on the master", &master.entries("herald-ha"));
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while replica.cli(&["XLEN", "herald-ha"]).trim() != "30" {
            assert!(Instant::now() < deadline, "the replica did not receive the 30 entries");
            std::thread::sleep(Duration::from_millis(50));
        }
        master.kill();
    });

    // The master is gone; the Sentinel promotes the replica, and deliveries follow it.
    publish(&stack, "ha", 30..60, "ha.x").await;
    collect("the new master", 60, within, || replica.entries("herald-ha")).await;
    let ids = ids_once("on the new master", &replica.entries("herald-ha"));
    assert_eq!(ids.len(), 60, "every event once: the first 30 replicated, the rest written after the failover");
    assert_eq!(sentinel.master_port("herald"), Some(replica.port()), "the Sentinel names the promoted replica");
    let tried = attempts(&stack, sub["id"].as_str().unwrap()).await;
    let failed: Vec<&serde_json::Value> = tried.iter().filter(|a| a["outcome"] == "retry").collect();
    assert!(!failed.is_empty(), "writes failed while the master was down and were retried");
    assert!(
        failed.iter().all(|a| matches!(a["error_class"].as_str(), Some("connection" | "broker" | "timeout"))),
        "{failed:?}"
    );
}
