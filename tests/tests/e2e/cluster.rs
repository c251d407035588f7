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
    // Each dispatcher learns of the subscription through its KV watch, within moments: events
    // are published until one arrives (a fixed wait raced the watch), each once.
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 1.. {
        let event = json!({"id": format!("up-{n}"), "type": "cluster.up", "data": {"ok": true}});
        let accepted = post("/v1/events", event).await.unwrap();
        assert_eq!(accepted.status(), 202);
        if !rx.received().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no event reached the subscription in 30 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let got = rx.wait_for(1, Duration::from_secs(30)).await;
    got[0].verify(&secret).unwrap();
    stop.cancel();
    drop(dispatchers);
}

/// A gateway in this process against `url`, with `--replicas 3` and `--partitions partitions`;
/// its base URL once ready.
async fn cluster_gateway(url: &str, partitions: u16, stop: &CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = format!("http://{}", listener.local_addr().unwrap());
    let partitions = partitions.to_string();
    let config = herald_harness::gateway_config(url, &["--replicas", "3", "--partitions", &partitions]);
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

/// How often a node is killed in [`node_chaos`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cadence {
    /// A node every 6 s, back 2 s later (one down at a time; the one before may still be
    /// catching up).
    Every6s,
    /// A node every 30 s, back 2 s later, and the next only once every stream caught up.
    Every30sCaughtUp,
}

/// One node kill: when, and when the node listened again.
#[derive(Debug, Clone, Copy)]
struct Kill {
    at: Instant,
    back: Instant,
}

/// The node chaos runs one at a time: each is three nodes, two dispatchers and a gateway, and
/// two of them at once on two cores measure the machine rather than Herald.
static NODE_CHAOS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Recovery allowed after the cluster is whole again: twice the 15 s target, a margin for a
/// busy two-core machine (README, "Node failures").
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

/// Events published at a steady pace while nodes are SIGKILLed at `cadence` (nodes at
/// `sync_interval: sync`, nats-server's default when `None`), to a clean subscription (`/a`), one
/// whose endpoint fails 10 % of requests (`/b`, retried every second) and an ordered one (`/f`).
/// Asserts: nothing lost; the ordered one in order; every signature valid; the last delivery at
/// most [`RECOVERY_LIMIT`] after the cluster is whole again (and publishing ended); at most
/// 0.5 % sent twice (the target). The dispatchers run their default ack wait and HTTP timeout.
/// Herald runs on `partitions` (the three subscriptions' deliveries then in partitions of their
/// own, as far as the hash spreads them).
async fn node_chaos(sync: Option<&str>, cadence: Cadence, partitions: u16) {
    herald_harness::init();
    let _one_at_a_time = NODE_CHAOS.lock().await;
    let label = format!("{cadence:?}, sync_interval {}, {partitions} partition(s)", sync.unwrap_or("default"));
    let cluster = NatsCluster::start_with_sync(sync);
    cluster.wait_for_meta_leader().await;
    let url = cluster.url();
    let stop = CancellationToken::new();
    let gateway = cluster_gateway(&url, partitions, &stop).await;
    let rx = Receiver::start().await;
    rx.fail_randomly_on("/b", 0.1);
    let schedule = vec!["1s"; 15].join(",");
    let mut secrets = std::collections::HashMap::new();
    // The ordered one's lane and the ordered fan-out are pinned consumers, which must move when
    // their node dies.
    for path in ["/a", "/b", "/f"] {
        let mut body = json!({"url": rx.url(path), "event_types": ["cc.*"], "retry_schedule": schedule});
        if path == "/f" {
            body["ordering"] = json!("fifo");
        }
        let (status, sub) = call(&gateway, "/v1/subscriptions", body).await;
        assert_eq!(status, 201, "{sub}");
        secrets.insert(path, sub["secret"].as_str().unwrap().to_owned());
    }
    // The ack wait and HTTP timeout users run (the tests' defaults are shorter).
    let count = partitions.to_string();
    let replicas = [("--replicas", "3"), ("--ack-wait", ""), ("--http-timeout", ""), ("--partitions", &count)];
    let dispatchers: Vec<DispatcherProcess> = (0..2).map(|_| DispatcherProcess::start_with(&url, &replicas)).collect();
    for d in &dispatchers {
        d.wait_ready().await;
    }

    // The killer: in turn each node (stream and consumer leaders among them), one at a time.
    let publishing = CancellationToken::new();
    let cluster = std::sync::Arc::new(std::sync::Mutex::new(cluster));
    let killer = {
        let (cluster, publishing) = (cluster.clone(), publishing.clone());
        tokio::spawn(async move {
            let mut kills = Vec::<Kill>::new();
            let (period, first) = match cadence {
                Cadence::Every6s => (Duration::from_secs(6), Duration::from_secs(3)),
                Cadence::Every30sCaughtUp => (Duration::from_secs(30), Duration::from_secs(5)),
            };
            let mut next = tokio::time::Instant::now() + first;
            loop {
                tokio::select! {
                    _ = publishing.cancelled() => break,
                    _ = tokio::time::sleep_until(next) => {}
                }
                let victim = kills.len() % 3;
                let at = Instant::now();
                tokio::task::block_in_place(|| cluster.lock().unwrap().kill(victim));
                tokio::time::sleep(Duration::from_secs(2)).await;
                tokio::task::block_in_place(|| cluster.lock().unwrap().restart(victim));
                kills.push(Kill { at, back: Instant::now() });
                if cadence == Cadence::Every30sCaughtUp {
                    let probe = { cluster.lock().unwrap().url() };
                    herald_harness::NatsCluster::wait_caught_up_at(&probe, Duration::from_secs(120)).await;
                }
                next += period;
            }
            kills
        })
    };

    // The publisher: a batch of 10 events every 500 ms; a batch answered with anything but 202
    // is sent again with the same ids.
    let duration = match cadence {
        Cadence::Every6s => Duration::from_secs(30),
        Cadence::Every30sCaughtUp => Duration::from_secs(65),
    };
    let started = Instant::now();
    let (mut accepted_at, mut refused, mut next_id) = (Vec::<Instant>::new(), 0, 0usize);
    let mut pace = tokio::time::interval(Duration::from_millis(500));
    while started.elapsed() < duration {
        pace.tick().await;
        let ids = next_id..next_id + 10;
        next_id = ids.end;
        let events: Vec<_> = ids.map(|i| json!({"id": format!("cc-{i}"), "type": "cc.x", "data": {"i": i}})).collect();
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
        accepted_at.extend(std::iter::repeat_n(Instant::now(), events.len()));
    }
    let published = Instant::now();
    publishing.cancel();
    let kills = killer.await.expect("the killer");
    let whole_again = kills.last().map_or(published, |k| k.back).max(published);
    let n = next_id;

    let all: std::collections::HashSet<String> = (0..n).map(|i| format!("cc-{i}")).collect();
    let delivered_to = |got: &[herald_harness::Received], path: &str| {
        got.iter()
            .filter(|r| r.path == path && r.status == 200)
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect::<std::collections::HashSet<_>>()
    };
    let complete =
        |got: &[herald_harness::Received]| ["/a", "/b", "/f"].iter().all(|path| delivered_to(got, path) == all);
    let deadline = Instant::now() + Duration::from_secs(180);
    while !complete(&rx.received()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = rx.received();
    if !complete(&got) {
        // What is missing where, and what the dispatchers say, for the failure's message.
        let mut missing = Vec::new();
        for path in ["/a", "/b", "/f"] {
            let delivered = delivered_to(&got, path);
            let mut lacking: Vec<usize> = (0..n).filter(|i| !delivered.contains(&format!("cc-{i}"))).collect();
            lacking.sort_unstable();
            let last = got.iter().filter(|r| r.path == path).map(|r| r.at).max();
            missing.push(format!(
                "{path}: {} missing (first {:?}), last request {:?} ago",
                lacking.len(),
                &lacking[..lacking.len().min(8)],
                last.map(|t| t.elapsed())
            ));
        }
        let mut said = Vec::new();
        for d in &dispatchers {
            let text = d.metrics_text().await.unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| {
                    [
                        "herald_record_checks_total",
                        "herald_consumer_lag",
                        "herald_leader_changes_total",
                        "herald_deliveries_in_flight",
                    ]
                    .iter()
                    .any(|m| l.starts_with(m))
                })
                .collect();
            said.push(lines.join("; "));
        }
        let probe = { cluster.lock().unwrap().url() };
        let consumers = consumers_state(&probe).await;
        panic!(
            "{label}: not everything arrived within 180 s of the end of publishing: {missing:?}\ndispatchers: {said:#?}\nconsumers: {consumers:#?}"
        );
    }
    let last = got.iter().filter(|r| r.status == 200).map(|r| r.at).max().unwrap();
    let recovered = last.saturating_duration_since(whole_again);
    // How long each event waited, from its acceptance to its first 2xx, at each subscription.
    let mut waits = Vec::new();
    for path in ["/a", "/b", "/f"] {
        let mut first = std::collections::HashMap::new();
        for r in got.iter().filter(|r| r.path == path && r.status == 200) {
            first.entry(r.header("webhook-id").unwrap().to_owned()).or_insert(r.at);
        }
        let mut worst = (Duration::ZERO, String::new());
        for (id, at) in first {
            let i: usize = id.trim_start_matches("cc-").parse().unwrap();
            let wait = at.saturating_duration_since(accepted_at[i]);
            if wait > worst.0 {
                worst = (wait, id);
            }
        }
        waits.push(format!("{path} {:?} ({})", worst.0, worst.1));
    }

    // The ordered one, in arrival order: each request is the same event again (retried in
    // place) or the next one in publish order.
    let mut expected = 0usize;
    for (k, r) in got.iter().filter(|r| r.path == "/f").enumerate() {
        let i = r.json()["data"]["i"].as_u64().unwrap() as usize;
        if k > 0 && i + 1 == expected {
            continue;
        }
        assert_eq!(i, expected, "{label}: ordered request {k} carried event {i}, expected {expected}");
        expected += 1;
    }
    assert_eq!(expected, n);

    // Sent twice: a 2xx answer to a webhook id already answered 2xx at that path. Caught in a
    // kill if the earlier answer came from a second before a node was killed until it was back
    // (its ack or record may have been in flight to the node, or waiting out the election).
    let (mut duplicates, mut unexcused, mut despite_record) = (0, Vec::new(), 0);
    for path in ["/a", "/b", "/f"] {
        let mut answered = std::collections::HashMap::<&str, Instant>::new();
        for r in got.iter().filter(|r| r.path == path && r.status == 200) {
            r.verify(&secrets[path]).unwrap();
            let id = r.header("webhook-id").unwrap();
            match answered.get(id) {
                None => drop(answered.insert(id, r.at)),
                Some(&first) => {
                    duplicates += 1;
                    let excused = kills.iter().any(|k| first + Duration::from_secs(1) > k.at && first <= k.back);
                    if !excused {
                        let offset = |t: Instant| t.saturating_duration_since(started).as_secs_f64();
                        unexcused.push(format!("{path} {id} at {:.1}s and {:.1}s", offset(first), offset(r.at)));
                    }
                }
            }
        }
        despite_record += herald_harness::duplicates_at(&gateway, &got, path).await.1;
    }
    // Retries that came more than 10 s after they were due (a schedule firing late after an
    // election, or a backlog ahead of it).
    let (mut retries, mut late_retries) = (0.0, 0.0);
    for d in &dispatchers {
        let text = d.metrics_text().await.unwrap_or_default();
        let count = herald_harness::metric_sum(&text, "herald_retry_lateness_seconds_count");
        retries += count;
        late_retries += count - herald_harness::metric_sum(&text, r#"herald_retry_lateness_seconds_bucket{le="10.0"}"#);
    }
    let deliveries = 3 * n;
    let kill_times: Vec<String> =
        kills.iter().map(|k| format!("{:.1}s", k.at.saturating_duration_since(started).as_secs_f64())).collect();
    let summary = format!(
        "node chaos ({label}): {n} events × 3 subscriptions (one retrying, one ordered), 0 lost, {duplicates} sent twice ({despite_record} despite a record, {} not caught in a kill), {} node kills at {kill_times:?}, {refused} batches refused and sent again, last delivery {recovered:?} after the cluster was whole again and publishing ended; longest wait accepted → first 2xx: {}; {retries} retries, {late_retries} of them more than 10 s late",
        unexcused.len(),
        kills.len(),
        waits.join(", ")
    );
    eprintln!("{summary}");
    assert!(recovered <= RECOVERY_LIMIT, "{summary}");
    // Those not caught in a kill are printed (and, with every write synced, bounded below): a
    // few remain (two copies of a delivery in flight at once; README, Node failures).
    if !unexcused.is_empty() {
        eprintln!("{label}: sent twice although answered 2xx outside any kill: {unexcused:?}");
    }
    // The target, 0.5 % in all, at both sync settings and both cadences. Before messages were
    // told in progress, a record or a check that outlasted the tests' 5 s ack wait sent bursts
    // twice (79 of 1,830 and 34 of 3,930 in two runs under the whole suite); since, 0-2 per run,
    // and 0 in every run since a stored retry settles the attempt it follows.
    let total = 5;
    assert!(
        duplicates * 1000 <= deliveries * total,
        "{summary}\nmore than {} % sent twice: {unexcused:?}",
        total as f64 / 10.0
    );
    // The target outside kills is none; a twin pair (a schedule that fired twice, both copies
    // in flight before either record) stays possible, so 0.2 % (3 of 1,830) is asserted.
    let outside = 2;
    assert!(
        unexcused.len() * 1000 <= deliveries * outside,
        "{summary}\nmore than {} % sent twice outside any kill: {unexcused:?}",
        outside as f64 / 10.0
    );
    stop.cancel();
    drop(dispatchers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_every_6s_at_the_default_sync_interval_loses_nothing_delays_little_and_sends_once() {
    node_chaos(None, Cadence::Every6s, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_every_6s_with_every_write_synced_loses_nothing_delays_little_and_sends_once() {
    node_chaos(Some("always"), Cadence::Every6s, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_every_30s_at_the_default_sync_interval_loses_nothing_delays_little_and_sends_once() {
    node_chaos(None, Cadence::Every30sCaughtUp, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_every_30s_with_every_write_synced_loses_nothing_delays_little_and_sends_once() {
    node_chaos(Some("always"), Cadence::Every30sCaughtUp, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_every_6s_with_herald_on_three_partitions_loses_nothing_delays_little_and_sends_once() {
    node_chaos(None, Cadence::Every6s, 3).await;
}

/// What nats-server says of Herald's consumers (hand-outs, acks, waiting pulls, pins), for a
/// failure's message.
async fn consumers_state(url: &str) -> Vec<String> {
    let nodes: Vec<async_nats::ServerAddr> = url.split(',').filter_map(|u| u.parse().ok()).collect();
    let client = match async_nats::connect(nodes).await {
        Ok(c) => c,
        Err(e) => return vec![format!("cannot connect to {url}: {e}")],
    };
    let js = async_nats::jetstream::new(client);
    let mut said = Vec::new();
    for name in ["HERALD_EVENTS", "HERALD_DELIVERIES"] {
        let Ok(stream) = js.get_stream(name).await else {
            said.push(format!("{name}: cannot read"));
            continue;
        };
        let mut infos = stream.consumers();
        while let Some(info) = futures::StreamExt::next(&mut infos).await {
            match info {
                Ok(i) => said.push(format!(
                    "{name}/{}: delivered {} acked {} ack_pending {} redelivered {} waiting {} pending {} leader {:?} groups {:?}",
                    i.name,
                    i.delivered.stream_sequence,
                    i.ack_floor.stream_sequence,
                    i.num_ack_pending,
                    i.num_redelivered,
                    i.num_waiting,
                    i.num_pending,
                    i.cluster.as_ref().and_then(|c| c.leader.clone()),
                    i.priority_groups,
                )),
                Err(e) => said.push(format!("{name}: {e}")),
            }
        }
    }
    said
}
