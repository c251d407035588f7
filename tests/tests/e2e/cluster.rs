//! On a three-node JetStream cluster with replicated streams (`HERALD_REPLICAS=3`).

use std::time::{Duration, Instant};

use herald_harness::{DispatcherProcess, NatsCluster, Receiver};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_and_three_dispatchers_started_at_once_against_a_new_cluster_all_become_ready() {
    herald_harness::init();
    // No waiting for the meta leader: the services' start-up must wait for it themselves.
    let cluster = NatsCluster::start();
    let url = cluster.url();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = format!("http://{}", listener.local_addr().unwrap());
    let config = herald_harness::gateway_config(&url, &["--replicas", "3"]);
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
            .bearer_auth(herald_harness::ADMIN_TOKEN)
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

/// A gateway in this process against `url`, with `--replicas 3`; its base URL once ready.
async fn cluster_gateway(url: &str, stop: &CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = format!("http://{}", listener.local_addr().unwrap());
    let config = herald_harness::gateway_config(url, &["--replicas", "3"]);
    tokio::spawn(herald_gateway::run(config, listener, stop.clone().cancelled_owned()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(format!("{gateway}/readyz")).await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "the gateway did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gateway
}

/// POSTs `body` to the gateway with the admin token: status and JSON body.
async fn call(gateway: &str, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{gateway}{path}"))
        .bearer_auth(herald_harness::ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await;
    match response {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or_default())
        }
        Err(_) => (0, serde_json::Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_nats_nodes_and_dispatchers_are_killed_in_turn() {
    herald_harness::init();
    let n: usize = std::env::var("HERALD_CLUSTER_CHAOS_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    // Every write on disk before it is acknowledged. With nats-server's default (a flush every
    // two minutes) this test saw acknowledged writes lost when a node was killed while the one
    // restarted before it was still catching up: attempt records gone (so deliveries sent
    // again) and an ordered lane's deliveries stored again after later ones. README, Durability.
    // `HERALD_CLUSTER_CHAOS_SYNC=default` runs it that way.
    let sync = std::env::var("HERALD_CLUSTER_CHAOS_SYNC").unwrap_or_else(|_| "always".into());
    let mut cluster = NatsCluster::start_with_sync(Some(sync.as_str()).filter(|s| *s != "default"));
    cluster.wait_for_meta_leader().await;
    let url = cluster.url();
    let stop = CancellationToken::new();
    let gateway = cluster_gateway(&url, &stop).await;
    let rx = Receiver::start().await;
    rx.fail_randomly(0.1);
    // The ordered one's endpoint does not fail: each of its retries waits a second in place,
    // which would only make the test long.
    rx.script_per_path("/f", (0..n * 3).map(|_| herald_harness::Reply::status(200)));
    let schedule = vec!["1s"; 15].join(",");
    let mut secrets = std::collections::HashMap::new();
    // Two unordered subscriptions and an ordered one (its lane and the ordered fan-out are
    // pinned consumers, which must move when their node or replica dies).
    for path in ["/a", "/b", "/f"] {
        let mut body = json!({"url": rx.url(path), "event_types": ["cc.*"], "retry_schedule": schedule});
        if path == "/f" {
            body["ordering"] = json!("fifo");
        }
        let (status, sub) = call(&gateway, "/v1/subscriptions", body).await;
        assert_eq!(status, 201, "{sub}");
        secrets.insert(path, sub["secret"].as_str().unwrap().to_owned());
    }
    let replicas = [("--replicas", "3")];
    let mut dispatchers: Vec<Option<DispatcherProcess>> =
        (0..2).map(|_| Some(DispatcherProcess::start_with(&url, &replicas))).collect();
    for d in dispatchers.iter().flatten() {
        d.wait_ready().await;
    }

    // Batches of 20; after every fifth batch a node is SIGKILLed (in turn: each one, stream and
    // consumer leaders among them), and after the next it comes back; one dispatcher is
    // SIGKILLed and restarted along the way. A batch answered with anything but 202 is sent
    // again with the same ids.
    let (mut node_kills, mut last_kill, mut down) = (0, Instant::now(), None::<usize>);
    let mut refused = 0;
    for (b, chunk) in (0..n).collect::<Vec<_>>().chunks(20).enumerate() {
        let events: Vec<_> =
            chunk.iter().map(|i| json!({"id": format!("cc-{i}"), "type": "cc.x", "data": {"i": i}})).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, body) = call(&gateway, "/v1/events/batch", json!({"events": events})).await;
            if status == 202 {
                break;
            }
            refused += 1;
            assert!(matches!(status, 207 | 503 | 0), "unexpected {status}: {body}");
            assert!(Instant::now() < deadline, "the gateway never accepted a batch: {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match (b % 5, down) {
            (0, None) if b > 0 => {
                let victim = node_kills % 3;
                cluster.kill(victim);
                (node_kills, last_kill, down) = (node_kills + 1, Instant::now(), Some(victim));
            }
            (1, Some(victim)) => {
                cluster.restart(victim);
                down = None;
            }
            _ => {}
        }
        if b == n / 40 {
            if let Some(d) = dispatchers[0].take() {
                d.kill();
            }
            dispatchers[0] = Some(DispatcherProcess::start_with(&url, &replicas));
        }
    }
    if let Some(victim) = down {
        cluster.restart(victim);
    }
    let whole_again = Instant::now();

    let all: std::collections::HashSet<String> = (0..n).map(|i| format!("cc-{i}")).collect();
    let delivered_to = |got: &[herald_harness::Received], path: &str| {
        got.iter()
            .filter(|r| r.path == path && r.status == 200)
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect::<std::collections::HashSet<_>>()
    };
    let got = rx
        .wait_until(Duration::from_secs(180), "every event at both subscriptions", |got| {
            ["/a", "/b", "/f"].iter().all(|path| delivered_to(got, path) == all)
        })
        .await;
    // Recovery as the unordered subscriptions see it (the ordered one delivers one at a time).
    let last = got.iter().filter(|r| r.path != "/f" && r.status == 200).map(|r| r.at).max().unwrap();
    let recovered = last.saturating_duration_since(whole_again);
    let since_last_kill = last.saturating_duration_since(last_kill);
    // The ordered one, in arrival order: each request is the same event again (retried in
    // place) or the next one in publish order.
    let mut expected = 0usize;
    for (k, r) in got.iter().filter(|r| r.path == "/f").enumerate() {
        let i = r.json()["data"]["i"].as_u64().unwrap() as usize;
        if k > 0 && i + 1 == expected {
            continue;
        }
        assert_eq!(i, expected, "ordered request {k} carried event {i}, expected {expected}");
        expected += 1;
    }
    assert_eq!(expected, n);
    let (mut duplicates, mut despite_record) = (0, 0);
    for path in ["/a", "/b", "/f"] {
        for r in got.iter().filter(|r| r.path == path && r.status == 200) {
            r.verify(&secrets[path]).unwrap();
        }
        let (d, r) = herald_harness::duplicates_at(&gateway, &got, path).await;
        (duplicates, despite_record) = (duplicates + d, despite_record + r);
    }
    eprintln!(
        "cluster chaos: {n} events × 3 subscriptions (one ordered, in order), 0 lost, {duplicates} duplicates ({despite_record} despite a record), {node_kills} node kills, {refused} batches refused and sent again, last unordered delivery {recovered:?} after the cluster was whole again ({since_last_kill:?} after the last kill), all ordered ones {:?} after",
        whole_again.elapsed()
    );
    stop.cancel();
    drop(dispatchers);
}
