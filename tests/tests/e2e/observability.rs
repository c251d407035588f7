//! What operators watch: Prometheus metrics that parse and move, and one trace from the
//! publisher to the subscriber.

use std::collections::HashMap;
use std::time::Duration;

use herald_harness::{Receiver, Stack, free_port};
use serde_json::json;

use crate::SOON;

/// Where the observability tests' Python tools are (`scripts/test.sh` installs them; installed
/// here if missing): `opentelemetry-proto` and `prometheus-client`.
fn python_tools() -> std::path::PathBuf {
    let root = herald_harness::workspace_root();
    let tools = std::env::var_os("HERALD_OTEL_PY").map(std::path::PathBuf::from).unwrap_or(root.join(".tools/otel-py"));
    if !tools.join("opentelemetry/proto").exists() || !tools.join("prometheus_client").exists() {
        let ok = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-script-location"])
            .args(["--root-user-action=ignore", "--target"])
            .arg(&tools)
            .args(["opentelemetry-proto>=1.27,<2", "prometheus-client>=0.20,<1"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip could not install the observability tests' tools into {}", tools.display());
    }
    tools
}

/// One parsed `/metrics` body: the series (`name{label="value",…}` → value) and the exemplars.
struct Scraped {
    types: HashMap<String, String>,
    series: HashMap<String, f64>,
    /// Exemplar labels by series.
    exemplars: HashMap<String, serde_json::Value>,
    /// Label names by series, as the parser read them (values may hold commas).
    label_names: HashMap<String, Vec<String>>,
}

impl Scraped {
    fn get(&self, series: &str) -> f64 {
        self.series.get(series).copied().unwrap_or(0.0)
    }
}

/// Parses a `/metrics` body with the Prometheus project's parser (`tests/scripts/parse-metrics.py`),
/// which fails on anything malformed.
fn parse(text: &str) -> Scraped {
    use std::io::Write as _;
    let mut child = std::process::Command::new("python3")
        .arg(herald_harness::workspace_root().join("tests/scripts/parse-metrics.py"))
        .env("PYTHONPATH", python_tools())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut scraped = Scraped {
        types: HashMap::new(),
        series: HashMap::new(),
        exemplars: HashMap::new(),
        label_names: HashMap::new(),
    };
    for (name, kind) in parsed["types"].as_object().unwrap() {
        scraped.types.insert(name.clone(), kind.as_str().unwrap().to_owned());
    }
    for sample in parsed["samples"].as_array().unwrap() {
        let labels: Vec<String> =
            sample[1].as_object().unwrap().iter().map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap())).collect();
        let name = sample[0].as_str().unwrap();
        let series = if labels.is_empty() { name.to_owned() } else { format!("{name}{{{}}}", labels.join(",")) };
        scraped.label_names.insert(series.clone(), sample[1].as_object().unwrap().keys().cloned().collect());
        if !sample[3].is_null() {
            scraped.exemplars.insert(series.clone(), sample[3]["labels"].clone());
        }
        scraped.series.insert(series, sample[2].as_f64().unwrap());
    }
    scraped
}

async fn scrape(url: &str) -> Scraped {
    let resp = reqwest::get(url).await.unwrap();
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text; version=1.0.0"), "{content_type}");
    parse(&resp.text().await.unwrap())
}

/// Every metric family and its labels as they were before `prometheus-client` (dashboards and
/// alerts depend on them).
const FAMILIES: &[(&str, &str, &[&str])] = &[
    ("herald_events_ingested", "counter", &["outcome"]),
    ("herald_publish_duration_seconds", "histogram", &[]),
    ("herald_fanout_events", "counter", &["outcome"]),
    ("herald_fanout_deliveries", "counter", &["path"]),
    ("herald_delivery_attempts", "counter", &["outcome", "status_class"]),
    ("herald_attempt_duration_seconds", "histogram", &["status_class"]),
    ("herald_deferrals", "counter", &["reason"]),
    ("herald_retries_scheduled", "counter", &[]),
    ("herald_dead_letters", "counter", &["kind"]),
    ("herald_redeliveries_skipped", "counter", &[]),
    ("herald_record_checks", "counter", &["result"]),
    ("herald_filtered_out", "counter", &[]),
    ("herald_stats_deltas", "counter", &["result"]),
    ("herald_schema_violations", "counter", &["action"]),
    ("herald_consumer_rewinds", "counter", &[]),
    ("herald_retry_lateness_seconds", "histogram", &[]),
    ("herald_deliveries_in_flight", "gauge", &[]),
    ("herald_circuits_open", "gauge", &[]),
    ("herald_consumer_messages", "gauge", &["consumer", "state"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_as_deliveries_happen() {
    let mut stack = Stack::gateway_only().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    stack.start_dispatcher_with(&[("--listen", &listen)]);
    let dispatcher = format!("http://{listen}/metrics");
    let deadline = std::time::Instant::now() + SOON;
    while reqwest::get(format!("http://{listen}/readyz")).await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(std::time::Instant::now() < deadline, "dispatcher not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gateway = format!("{}/metrics", stack.gateway);
    let before_gw = scrape(&gateway).await;
    let before = scrape(&dispatcher).await;

    let rx = Receiver::start().await;
    // One answer fails: its retry is scheduled, and comes when due.
    rx.script_per_path("/m", [herald_harness::Reply::status(500)]);
    stack.subscribe(&rx.url("/m"), &["m.*"], None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        stack.publish(json!({"id": format!("m-{i}"), "type": "m.x", "data": {}})).await;
    }
    let (status, _) = stack.publish(json!({"type": "m..bad", "data": {}})).await;
    assert_eq!(status, 400);
    rx.wait_for(4, SOON).await;
    tokio::time::sleep(Duration::from_secs(6)).await; // the gauges refresh every 5 s

    let after_gw = scrape(&gateway).await;
    let after = scrape(&dispatcher).await;
    let delta = |a: &Scraped, b: &Scraped, k: &str| a.get(k) - b.get(k);
    assert!(
        delta(&after_gw, &before_gw, r#"herald_events_ingested_total{outcome="accepted"}"#) >= 3.0,
        "{:?}",
        after_gw.series
    );
    assert!(delta(&after_gw, &before_gw, r#"herald_events_ingested_total{outcome="invalid"}"#) >= 1.0);
    assert!(delta(&after_gw, &before_gw, "herald_publish_duration_seconds_count") >= 3.0);
    assert!(
        delta(&after, &before, r#"herald_delivery_attempts_total{outcome="delivered",status_class="2xx"}"#) >= 3.0,
        "{:?}",
        after.series
    );
    assert!(delta(&after, &before, r#"herald_attempt_duration_seconds_count{status_class="2xx"}"#) >= 3.0);
    assert_eq!(delta(&after, &before, "herald_retries_scheduled_total"), 1.0);
    assert_eq!(delta(&after, &before, "herald_retry_lateness_seconds_count"), 1.0, "the retry's lateness is measured");
    // Seconds, not milliseconds: a retry due 1 s after its failure on an idle server comes
    // within its second.
    let late = delta(&after, &before, "herald_retry_lateness_seconds_sum");
    assert!((0.0..60.0).contains(&late), "{late}");
    assert!(delta(&after, &before, r#"herald_fanout_events_total{outcome="fanned_out"}"#) >= 3.0);
    // What it counted for the statistics went out within a flush interval (5 s).
    assert!(delta(&after, &before, r#"herald_stats_deltas_total{result="stored"}"#) >= 1.0, "{:?}", after.series);
    assert_eq!(delta(&after, &before, r#"herald_stats_deltas_total{result="failed"}"#), 0.0);
    assert!(
        after.series.contains_key(r#"herald_consumer_messages{consumer="herald-deliver",state="pending"}"#),
        "lag gauge"
    );
    assert!(after.series.contains_key("herald_circuits_open"));
    // The families of before keep their types and exactly their labels; those this traffic
    // moves are all there.
    for family in ["herald_events_ingested", "herald_publish_duration_seconds"] {
        assert!(after_gw.types.contains_key(family), "{family}");
    }
    for family in [
        "herald_fanout_events",
        "herald_fanout_deliveries",
        "herald_delivery_attempts",
        "herald_attempt_duration_seconds",
        "herald_deliveries_in_flight",
        "herald_circuits_open",
        "herald_consumer_messages",
    ] {
        assert!(after.types.contains_key(family), "{family}");
    }
    for (family, kind, labels) in FAMILIES {
        for scraped in [&after, &after_gw] {
            if let Some(found) = scraped.types.get(*family) {
                assert_eq!(found, kind, "{family}");
            }
        }
        for scraped in [&after, &after_gw] {
            for (series, names) in scraped.label_names.iter().filter(|(s, _)| s.starts_with(family)) {
                let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
                let mut expected: Vec<&str> =
                    labels.iter().copied().chain(series.contains("_bucket").then_some("le")).collect();
                names.sort();
                expected.sort();
                assert_eq!(names, expected, "{series}");
            }
        }
    }
    // No unbounded labels: no URL, event id or subscription id in any series.
    for series in after.series.keys().chain(after_gw.series.keys()) {
        assert!(!series.contains("http://") && !series.contains("m-0") && !series.contains("sub_"), "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publishers_trace_reaches_the_subscriber() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    stack.subscribe(&rx.url("/t"), &["t.*"], None).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let publish = |id: &str, traceparent: Option<String>| {
        let mut req = stack
            .http
            .post(format!("{}/v1/events", stack.gateway))
            .bearer_auth(herald_harness::ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(json!({"id": id, "type": "t.x", "data": {}}).to_string());
        if let Some(traceparent) = traceparent {
            req = req.header("traceparent", traceparent);
        }
        async move { assert_eq!(req.send().await.unwrap().status(), 202) }
    };
    publish("t-1", Some(format!("00-{trace_id}-00f067aa0ba902b7-01"))).await;
    let got = rx.wait_for(1, SOON).await;
    let traceparent = got[0].header("traceparent").unwrap();
    assert!(herald_core::trace::is_valid(traceparent), "{traceparent}");
    assert_eq!(&traceparent[3..35], trace_id, "the same trace");
    assert_ne!(&traceparent[36..52], "00f067aa0ba902b7", "a span of Herald's own");

    // Without a caller's trace (and no span export) none is stored with the event; the
    // dispatcher starts one for the webhook.
    publish("t-2", None).await;
    let got = rx.wait_for(2, SOON).await;
    let second = got.iter().find(|r| r.header("webhook-id") == Some("t-2")).expect("t-2 delivered");
    let started = second.header("traceparent").unwrap();
    assert!(herald_core::trace::is_valid(started) && &started[3..35] != trace_id, "{started}");
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let events = js.get_stream("HERALD_EVENTS").await.unwrap();
    let stored_trace = |seq| {
        let events = events.clone();
        async move {
            let stored = events.get_raw_message(seq).await.unwrap();
            stored.headers.get("traceparent").map(|v| v.as_str().to_owned())
        }
    };
    assert!(stored_trace(1).await.is_some_and(|t| &t[3..35] == trace_id), "the caller's trace is stored");
    assert_eq!(stored_trace(2).await, None, "no trace to continue, none stored");
}

/// The OTLP receiver of `tests/scripts/otlp-receiver.py`: Python, decoding with the
/// OpenTelemetry project's `opentelemetry-proto` package (installed into `.tools/otel-py` by
/// `scripts/test.sh`, or here if missing), so a wrong field number in what Herald sends fails.
struct OtlpReceiver {
    child: std::process::Child,
    url: String,
    spans: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl OtlpReceiver {
    fn start() -> Self {
        use std::io::BufRead as _;
        let root = herald_harness::workspace_root();
        let tools = python_tools();
        let port = free_port();
        let mut child = std::process::Command::new("python3")
            .arg(root.join("tests/scripts/otlp-receiver.py"))
            .arg(port.to_string())
            .env("PYTHONPATH", &tools)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().unwrap();
        let spans: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
        let sink = spans.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "listening" {
                    let _ = ready_tx.send(());
                } else if let Ok(span) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(span);
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(20)).expect("the OTLP receiver started");
        Self { child, url: format!("http://127.0.0.1:{port}"), spans }
    }

    fn of_trace(&self, trace_id: &str) -> Vec<serde_json::Value> {
        self.spans.lock().unwrap().iter().filter(|s| s["trace_id"] == trace_id).cloned().collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway and a dispatcher as processes (the SDK reads its settings from the process
/// environment), with `env` added; their stderr goes to files in `dir`.
struct Services {
    gateway: std::process::Child,
    dispatcher: std::process::Child,
    url: String,
    /// The dispatcher's `/metrics`.
    metrics: String,
}

impl Services {
    async fn start(nats: &str, dir: &std::path::Path, tag: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let spawn = |bin: &str, args: Vec<String>, log: String| {
            std::process::Command::new(herald_harness::target_bin(bin))
                .args(args)
                .envs(env.iter().copied())
                .env("HERALD_LOG", "info,herald_dispatcher=debug")
                .env("HERALD_LOG_FORMAT", "json")
                .env("HERALD_TOKENS", format!("admin={}", herald_harness::ADMIN_TOKEN))
                .env("HERALD_ALLOW_NETWORKS", herald_harness::LOOPBACK)
                .stderr(std::fs::File::create(dir.join(log)).unwrap())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let gateway = spawn(
            "herald-gateway",
            vec!["--nats-url".into(), nats.into(), "--listen".into(), format!("127.0.0.1:{port}")],
            format!("gateway-{tag}.log"),
        );
        let health = format!("127.0.0.1:{}", free_port());
        let args = herald_harness::dispatcher_args_with(nats, &[("--listen", &health)]);
        let dispatcher = spawn("herald-dispatcher", args[1..].to_vec(), format!("dispatcher-{tag}.log"));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("{url}/readyz")).await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
            assert!(std::time::Instant::now() < deadline, "the gateway did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { gateway, dispatcher, url, metrics: format!("http://{health}/metrics") }
    }

    async fn call(&self, path: &str, body: serde_json::Value, traceparent: Option<&str>) -> u16 {
        let mut req = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .bearer_auth(herald_harness::ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = traceparent {
            req = req.header("traceparent", t).header("tracestate", "vendor=opaque").header("baggage", "tier=gold");
        }
        req.send().await.unwrap().status().as_u16()
    }

    /// SIGTERM, so the exporters flush.
    fn stop(mut self) {
        for child in [&mut self.gateway, &mut self.dispatcher] {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        for child in [&mut self.gateway, &mut self.dispatcher] {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let _ = self.gateway.kill();
        let _ = self.dispatcher.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_independent_otlp_receiver_through_the_sdk_and_logs_carry_their_trace() {
    herald_harness::init();
    let nats = herald_harness::NatsServer::start();
    let otlp = OtlpReceiver::start();
    let dir = herald_harness::temp_dir("otel");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url.as_str()),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=e2e,service.namespace=herald-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("K8S_POD_NAME", "herald-pod-0"),
    ];
    let services = Services::start(&nats.url(), &dir, "on", &env).await;
    let rx = Receiver::start().await;
    let status =
        services.call("/v1/subscriptions", json!({"url": rx.url("/otel"), "event_types": ["otel.*"]}), None).await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let publisher_span = "b7ad6b7169203331";
    let parent = format!("00-{trace_id}-{publisher_span}-01");
    let status =
        services.call("/v1/events", json!({"id": "otel-1", "type": "otel.x", "data": {}}), Some(&parent)).await;
    assert_eq!(status, 202);
    let webhook = rx.wait_for(1, SOON).await.remove(0);
    let seen = webhook.header("traceparent").unwrap().to_owned();
    assert!(herald_core::trace::is_valid(&seen) && seen[3..35] == *trace_id && seen.ends_with("-01"), "{seen}");
    assert_eq!(webhook.header("tracestate"), Some("vendor=opaque"), "tracestate travels with the trace");
    assert_eq!(webhook.header("baggage"), Some("tier=gold"), "and so does baggage");

    let deadline = std::time::Instant::now() + SOON;
    let ours = loop {
        let ours = otlp.of_trace(trace_id);
        let names: Vec<&str> = ours.iter().filter_map(|s| s["name"].as_str()).collect();
        if ["POST /v1/events", "jetstream publish", "fanout", "webhook attempt"].iter().all(|n| names.contains(n)) {
            break ours;
        }
        assert!(std::time::Instant::now() < deadline, "spans received: {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let find = |name: &str| ours.iter().find(|s| s["name"] == name).cloned().unwrap();
    let (ingest, publish, fanout, attempt) =
        (find("POST /v1/events"), find("jetstream publish"), find("fanout"), find("webhook attempt"));
    let kinds: Vec<&str> = [&ingest, &publish, &fanout, &attempt].iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["SPAN_KIND_SERVER", "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER", "SPAN_KIND_CLIENT"]);
    assert_eq!(ingest["parent_span_id"], publisher_span, "ingest is a child of the publisher's span");
    assert_eq!(publish["parent_span_id"], ingest["span_id"], "the publish is a child of ingest");
    assert_eq!(fanout["parent_span_id"], publish["span_id"], "fan-out continues from the publish");
    assert_eq!(attempt["parent_span_id"], fanout["span_id"], "the attempt is a child of fan-out");
    assert_eq!(attempt["span_id"], &seen[36..52], "the subscriber sees the attempt's span as its parent");
    assert_eq!(
        (ingest["service"].as_str(), attempt["service"].as_str()),
        (Some("herald-gateway"), Some("herald-dispatcher"))
    );
    for span in [&ingest, &attempt] {
        assert_eq!(span["resource"]["deployment.environment.name"], "e2e", "{span}");
        assert_eq!(span["resource"]["service.namespace"], "herald-test");
        assert_eq!(span["resource"]["k8s.pod.name"], "herald-pod-0");
        assert_eq!(span["status"], "STATUS_CODE_OK", "{span}");
    }
    assert_eq!(attempt["attributes"]["http.response.status_code"], 200, "{attempt}");
    assert_eq!(attempt["attributes"]["herald.event_id"], "otel-1");
    assert_eq!(ingest["attributes"]["http.route"], "/v1/events");
    // Every API request is a server span named by its route (never by ids in the path).
    let spans = otlp.spans.lock().unwrap().clone();
    let created =
        spans.iter().find(|s| s["name"] == "POST /v1/subscriptions").expect("a span for the subscription's creation");
    assert_eq!(
        (created["kind"].as_str(), created["attributes"]["http.response.status_code"].as_i64()),
        (Some("SPAN_KIND_SERVER"), Some(201))
    );

    // The dispatcher's log line about the delivery carries the trace the subscriber saw.
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let log = std::fs::read_to_string(dir.join("dispatcher-on.log")).unwrap();
        let line = log.lines().find(|l| l.contains("\"delivered\"") && l.contains("otel-1"));
        if let Some(line) = line {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["span"]["trace_id"], trace_id, "{line}");
            assert_eq!(v["span"]["span_id"], &seen[36..52], "{line}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no delivery log line: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The attempt's duration carries the trace as an exemplar, where a dashboard links to it.
    let scraped = scrape(&services.metrics).await;
    let traced = scraped.exemplars.iter().find(|(series, labels)| {
        series.starts_with("herald_attempt_duration_seconds_bucket") && labels["trace_id"] == trace_id
    });
    assert!(traced.is_some(), "no exemplar with the trace: {:?}", scraped.exemplars);
    services.stop();

    // Sampled at ratio 0: nothing exported, and the subscriber still gets a valid traceparent.
    let before = otlp.spans.lock().unwrap().len();
    let mut env = env.to_vec();
    env.extend([("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0")]);
    let services = Services::start(&nats.url(), &dir, "zero", &env).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = services.call("/v1/events", json!({"id": "otel-2", "type": "otel.x", "data": {}}), None).await;
    assert_eq!(status, 202);
    let got = rx.wait_for(2, SOON).await;
    let second = got.iter().find(|r| r.header("webhook-id") == Some("otel-2")).expect("otel-2 delivered");
    let unsampled = second.header("traceparent").unwrap();
    assert!(herald_core::trace::is_valid(unsampled) && unsampled.ends_with("-00"), "{unsampled}");
    services.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(otlp.spans.lock().unwrap().len(), before, "no span exported at ratio 0");
    let _ = std::fs::remove_dir_all(&dir);
}
