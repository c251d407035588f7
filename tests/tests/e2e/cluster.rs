//! On a three-node JetStream cluster with replicated streams (`HERALD_REPLICAS=3`).

use std::time::{Duration, Instant};

use herald_tests::{DispatcherProcess, NatsCluster, Receiver};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_and_three_dispatchers_started_at_once_against_a_new_cluster_all_become_ready() {
    herald_tests::init();
    // No waiting for the meta leader: the services' start-up must wait for it themselves.
    let cluster = NatsCluster::start();
    let url = cluster.url();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = format!("http://{}", listener.local_addr().unwrap());
    let config = herald_tests::gateway_config(&url, &["--replicas", "3"]);
    let stop = CancellationToken::new();
    let gateway_task = tokio::spawn(herald_gateway::run(config, listener, stop.clone().cancelled_owned()));
    let dispatchers: Vec<_> = (0..3).map(|_| DispatcherProcess::start_with(&url, &[("--replicas", "3")])).collect();

    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http.get(format!("{gateway}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(!gateway_task.is_finished(), "the gateway exited: {:?}", gateway_task.await);
        assert!(Instant::now() < deadline, "the gateway did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for d in &dispatchers {
        d.wait_ready().await;
    }

    // Herald's streams are replicated on all three nodes.
    let first = url.split(',').next().unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(first).await.unwrap());
    for stream in ["HERALD_EVENTS", "HERALD_DELIVERIES", "HERALD_DLQ", "HERALD_ATTEMPTS"] {
        let info = js.get_stream(stream).await.unwrap().info().await.unwrap().clone();
        assert_eq!(info.config.num_replicas, 3, "{stream}");
    }

    // And the whole path works.
    let rx = Receiver::start().await;
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{gateway}{path}"))
            .bearer_auth(herald_tests::ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let created = post("/v1/subscriptions", json!({"url": rx.url("/c"), "event_types": ["cluster.up"]})).await.unwrap();
    assert_eq!(created.status(), 201);
    let sub: serde_json::Value = serde_json::from_slice(&created.bytes().await.unwrap()).unwrap();
    let secret = sub["secret"].as_str().expect("created with a secret").to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await; // every dispatcher sees it
    let accepted = post("/v1/events", json!({"id": "up-1", "type": "cluster.up", "data": {"ok": true}})).await.unwrap();
    assert_eq!(accepted.status(), 202);
    let got = rx.wait_for(1, Duration::from_secs(30)).await;
    got[0].verify(&secret).unwrap();
    stop.cancel();
    drop(dispatchers);
}
