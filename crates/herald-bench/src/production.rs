//! Production shape: what a dispatcher does for subscribers that look like the internet's rather
//! than like loopback. 1,000 subscriptions spread over 100 hosts (distinct loopback addresses
//! `127.0.1.x`, named `h{i}.bench.test` through `HERALD_RESOLVE`), each host an HTTPS server
//! with a private CA (trusted through `HERALD_CA_FILE`) that answers after a delay drawn
//! uniformly between half and one and a half times `--production-latency-ms`. Subscription `i`
//! is on host `i mod 100` and wants type `i div 10`: each of the 100 event types is wanted by 10
//! subscriptions on 10 different hosts, and consecutive types by different hosts.
//!
//! For each payload and each dispatcher concurrency: deliveries/s against the latency bound
//! (requests in flight ÷ mean latency) and against a bare reqwest client sending the same
//! signed requests at the same concurrency; the dispatcher's CPU per delivery and peak RSS; the
//! connections open at the receivers at most, and TLS handshakes per 1,000 deliveries.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::message::PublishMessage;
use herald_signature::{Secret, Verifier};
use serde_json::json;

use crate::procs::Proc;
use crate::{Bench, json_event, median, per_sec, pipelined};

/// Hosts, subscriptions per host, event types.
const TYPES: usize = 100;

/// What the receivers saw, across every host.
#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    bad_signatures: AtomicU64,
    handshakes: AtomicU64,
    /// Connections that chose HTTP/2 through ALPN.
    http2: AtomicU64,
    open: AtomicI64,
    peak_open: AtomicI64,
}

/// The 100 HTTPS hosts.
struct Hosts {
    counters: Arc<Counters>,
    /// `(name, address)` of each host.
    hosts: Vec<(String, std::net::SocketAddr)>,
    ca_file: std::path::PathBuf,
    ca_pem: String,
}

impl Hosts {
    async fn start(count: usize, latency: Duration, alpn: &[&str], secret: &Secret) -> anyhow::Result<Self> {
        let ca = herald_harness::TestCa::new("herald-bench CA");
        let (cert, key) = ca.issue("*.bench.test", herald_harness::Validity::Current);
        let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![cert], key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let counters = Arc::new(Counters::default());
        let verifier = Arc::new(Verifier::new(secret.clone()).tolerance(Duration::from_secs(3600)));
        let mut hosts = Vec::new();
        for i in 0..count {
            let ip = format!("127.0.1.{}", 10 + i);
            let listener = tokio::net::TcpListener::bind((ip.as_str(), 0))
                .await
                .with_context(|| format!("binding a receiver on {ip}"))?;
            hosts.push((format!("h{i}.bench.test"), listener.local_addr()?));
            let (acceptor, counters, verifier) = (acceptor.clone(), counters.clone(), verifier.clone());
            tokio::spawn(async move {
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
                loop {
                    let Ok((tcp, _)) = listener.accept().await else { continue };
                    let _ = tcp.set_nodelay(true);
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let conn = Connection {
                        counters: counters.clone(),
                        verifier: verifier.clone(),
                        latency,
                        rng: std::sync::Mutex::new(seed | 1),
                    };
                    tokio::spawn(conn.serve(acceptor.clone(), tcp));
                }
            });
        }
        let ca_file = herald_harness::temp_dir("herald-bench-ca").join("ca.pem");
        std::fs::write(&ca_file, ca.pem())?;
        Ok(Self { counters, hosts, ca_file, ca_pem: ca.pem().to_owned() })
    }

    /// `HERALD_RESOLVE` for the hosts.
    fn resolve(&self) -> String {
        self.hosts.iter().map(|(name, addr)| format!("{name}={}", addr.ip())).collect::<Vec<_>>().join(",")
    }

    /// The URL of subscription `index`: host `index` modulo the hosts.
    fn url(&self, index: usize) -> String {
        let (name, addr) = &self.hosts[index % self.hosts.len()];
        format!("https://{name}:{}/s/{index}", addr.port())
    }
}

/// One accepted connection of a host.
struct Connection {
    counters: Arc<Counters>,
    verifier: Arc<Verifier>,
    latency: Duration,
    rng: std::sync::Mutex<u64>,
}

impl Connection {
    async fn serve(self, acceptor: tokio_rustls::TlsAcceptor, tcp: tokio::net::TcpStream) {
        let Ok(tls) = acceptor.accept(tcp).await else { return };
        let c = &self.counters;
        c.handshakes.fetch_add(1, Ordering::Relaxed);
        let open = c.open.fetch_add(1, Ordering::Relaxed) + 1;
        c.peak_open.fetch_max(open, Ordering::Relaxed);
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let me = Arc::new(self);
        let service = {
            let me = me.clone();
            hyper::service::service_fn(move |req| {
                let me = me.clone();
                async move { Ok::<_, std::convert::Infallible>(me.answer(req).await) }
            })
        };
        let io = hyper_util::rt::TokioIo::new(tls);
        if h2 {
            me.counters.http2.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "http2")]
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .max_concurrent_streams(1024)
                .serve_connection(io, service)
                .await;
        } else {
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        }
        me.counters.open.fetch_sub(1, Ordering::Relaxed);
    }

    async fn answer(&self, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<String> {
        use http_body_util::BodyExt as _;
        let (parts, body) = req.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return status(400);
        };
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        if self
            .verifier
            .verify(header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"), &body)
            .is_err()
        {
            self.counters.bad_signatures.fetch_add(1, Ordering::Relaxed);
            return status(401);
        }
        // Uniform between 0.5 and 1.5 times the latency (xorshift64).
        let roll = {
            let mut x = self.rng.lock().unwrap();
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            (*x >> 11) as f64 / (1u64 << 53) as f64
        };
        tokio::time::sleep(self.latency.mul_f64(0.5 + roll)).await;
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        status(200)
    }
}

fn status(code: u16) -> hyper::Response<String> {
    let mut resp = hyper::Response::new(String::new());
    *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::OK);
    resp
}

/// What one run measured.
struct Run {
    rate: f64,
    cpu_per_delivery_us: f64,
    handshakes_per_1000: f64,
    peak_open: i64,
}

impl Bench {
    /// The production-shape measurement (see the module's documentation).
    pub(crate) async fn production(&mut self) -> anyhow::Result<()> {
        let (hosts_n, subs_n) = (self.args.production_hosts, self.args.production_subscriptions);
        anyhow::ensure!(
            hosts_n <= 200 && subs_n % hosts_n == 0 && subs_n % TYPES == 0,
            "subscriptions must spread evenly over ≤ 200 hosts and over {TYPES} event types"
        );
        let per_type = subs_n / TYPES;
        let latency = Duration::from_millis(self.args.production_latency_ms);
        let secret = Secret::parse(&self.secret)?;
        let alpn: Vec<&str> = self.args.production_alpn.iter().map(String::as_str).collect();
        anyhow::ensure!(
            cfg!(feature = "http2") || !alpn.contains(&"h2"),
            "--production-alpn h2 needs a build with --features herald-bench/http2,herald-dispatcher/http2"
        );
        let hosts = Hosts::start(hosts_n, latency, &alpn, &secret).await?;
        for index in 0..subs_n {
            let body = json!({"url": hosts.url(index), "event_types": [format!("prod.t{}", index / per_type)],
                "secret": self.secret});
            let resp = self.post_admin("/v1/subscriptions", &body).await?;
            anyhow::ensure!(resp.status() == 201, "creating a subscription: {}", resp.text().await?);
        }
        let events = (self.args.production_deliveries / per_type).max(TYPES);
        let deliveries = events * per_type;
        let how = format!(
            "{subs_n} subscriptions on {hosts_n} HTTPS hosts, {} ms ± 50 %, ALPN {}",
            latency.as_millis(),
            alpn.join("+")
        );
        println!("production shape: {how}; {deliveries} deliveries a run");

        for &payload in &self.args.production_payloads.clone() {
            // What signing one webhook costs with each scheme (one core, this process).
            let body = json!({"id": "evt_1", "type": "prod.t0", "data": Self::data(payload)}).to_string();
            for (scheme, signer) in [
                ("HMAC-SHA256 v1", herald_signature::Signer::Hmac(Secret::generate())),
                ("Ed25519 v1a", herald_signature::Signer::Ed25519(herald_signature::SigningKey::generate())),
            ] {
                const N: u32 = 20_000;
                let started = Instant::now();
                for i in 0..N {
                    std::hint::black_box(signer.sign("evt_1", i64::from(i), body.as_bytes()));
                }
                let each = started.elapsed().as_secs_f64() * 1e6 / f64::from(N);
                self.push(payload, format!("signing one webhook, {scheme}"), each, "µs");
            }
            let mut peaks = Vec::new();
            for &concurrency in &self.args.production_concurrency.clone() {
                let bound = concurrency as f64 / latency.as_secs_f64();
                let flags = ["--concurrency".to_owned(), concurrency.to_string()];
                let ca = hosts.ca_file.to_string_lossy().into_owned();
                let resolve = hosts.resolve();
                let args = [&flags[..], &["--ca-file".into(), ca, "--resolve".into(), resolve]].concat();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let dispatcher =
                    Proc::dispatcher_from(&self.nats.url(), &args, self.args.dispatcher_binary.as_deref())?;
                dispatcher.wait_ready().await?;
                // A warm-up: every subscription once, which opens the first connections.
                self.production_run(&hosts, &dispatcher, TYPES, payload).await?;
                let mut runs = Vec::new();
                let mut bare = Vec::new();
                for run in 0..self.args.runs {
                    // Herald and the bare client alternate which goes first.
                    if run % 2 == 1 {
                        bare.push(bare_client(&hosts, subs_n, concurrency, deliveries, payload, &secret).await?);
                    }
                    runs.push(self.production_run(&hosts, &dispatcher, events, payload).await?);
                    if run % 2 == 0 {
                        bare.push(bare_client(&hosts, subs_n, concurrency, deliveries, payload, &secret).await?);
                    }
                }
                let peak = dispatcher.memory().peak_kib;
                dispatcher.stop().await;
                peaks.push((concurrency, peak));
                let rate = median(runs.iter().map(|r| r.rate).collect());
                let ratios = runs.iter().zip(&bare).map(|(r, b)| r.rate / b).collect();
                let at = format!("HERALD_CONCURRENCY={concurrency}");
                self.rows.push(crate::Row {
                    payload,
                    name: format!("production shape, {at}: deliveries/s, of the latency bound {bound:.0}/s"),
                    value: rate,
                    unit: "deliveries/s",
                    ratio: Some((rate / bound, "latency bound")),
                    of_relay: None,
                });
                let bare_rate = median(bare.clone());
                self.rows.push(crate::Row {
                    payload,
                    name: format!("  the same by a bare reqwest client, {concurrency} at once"),
                    value: bare_rate,
                    unit: "requests/s",
                    ratio: Some((bare_rate / bound, "latency bound")),
                    of_relay: None,
                });
                self.rows.push(crate::Row {
                    payload,
                    name: format!("  Herald as a share of the bare client, {at}"),
                    value: 100.0 * median(ratios),
                    unit: "%",
                    ratio: None,
                    of_relay: None,
                });
                let cpu = median(runs.iter().map(|r| r.cpu_per_delivery_us).collect());
                self.push(payload, format!("  dispatcher CPU, {at}"), cpu, "µs/delivery");
                self.push(payload, format!("  dispatcher peak RSS, {at}"), peak as f64 / 1024.0, "MiB");
                let open = median(runs.iter().map(|r| r.peak_open as f64).collect());
                self.push(
                    payload,
                    format!("  connections open at most (kept between runs), {at}"),
                    open,
                    "connections",
                );
                let handshakes = median(runs.iter().map(|r| r.handshakes_per_1000).collect());
                self.push(payload, format!("  TLS handshakes per 1,000 deliveries, {at}"), handshakes, "handshakes");
            }
            if let [(low, low_peak), .., (high, high_peak)] = peaks[..]
                && high > low
            {
                let per_request = (high_peak as f64 - low_peak as f64) / (high - low) as f64;
                self.push(payload, format!("  RSS per extra request in flight ({low} → {high})"), per_request, "KiB");
            }
        }
        let c = &hosts.counters;
        println!(
            "production shape: bad signatures {}, HTTP/2 connections {} of {} handshakes",
            c.bad_signatures.load(Ordering::Relaxed),
            c.http2.load(Ordering::Relaxed),
            c.handshakes.load(Ordering::Relaxed)
        );
        Ok(())
    }

    /// `events` events spread over the types, published straight to NATS; measured from the
    /// first publish to the last receipt.
    async fn production_run(
        &mut self,
        hosts: &Hosts,
        dispatcher: &Proc,
        events: usize,
        payload: usize,
    ) -> anyhow::Result<Run> {
        let per_event = self.args.production_subscriptions / TYPES;
        let data = Self::data(payload);
        let messages: Vec<(String, PublishMessage)> = (0..events)
            .map(|i| {
                let event_type = format!("prod.t{}", i % TYPES);
                let id = self.next_id("p");
                let event = json!({"id": id, "type": event_type, "data": data});
                (herald_core::nats::event_subject(crate::TENANT, &event_type), json_event(&id, &event))
            })
            .collect();
        let c = &hosts.counters;
        let target = c.delivered.load(Ordering::Relaxed) + (events * per_event) as u64;
        let handshakes = c.handshakes.load(Ordering::Relaxed);
        c.peak_open.store(c.open.load(Ordering::Relaxed), Ordering::Relaxed);
        let cpu = dispatcher.cpu_seconds();
        let started = Instant::now();
        pipelined(&self.js, messages).await?;
        let done = wait_for(c, target).await?;
        let deliveries = events * per_event;
        let run = Run {
            rate: per_sec(deliveries, done - started),
            cpu_per_delivery_us: (dispatcher.cpu_seconds() - cpu) * 1e6 / deliveries as f64,
            handshakes_per_1000: (c.handshakes.load(Ordering::Relaxed) - handshakes) as f64 * 1000.0
                / deliveries as f64,
            peak_open: c.peak_open.load(Ordering::Relaxed),
        };
        use herald_core::nats::{ATTEMPTS_STREAM, DELIVERIES_STREAM, EVENTS_STREAM};
        self.settle(&[EVENTS_STREAM, DELIVERIES_STREAM, ATTEMPTS_STREAM]).await?;
        Ok(run)
    }
}

/// Waits until `target` deliveries were received; fails after 60 s without progress.
async fn wait_for(c: &Counters, target: u64) -> anyhow::Result<Instant> {
    let mut last = (c.delivered.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = c.delivered.load(Ordering::Relaxed);
        if now >= target {
            return Ok(Instant::now());
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            anyhow::bail!(
                "production shape: stalled at {now} of {target} (bad signatures {})",
                c.bad_signatures.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The limit: `deliveries` signed POSTs of the same bodies to the same URLs by one reqwest
/// client, `concurrency` at once, over connections it keeps (as Herald's do).
async fn bare_client(
    hosts: &Hosts,
    subs: usize,
    concurrency: usize,
    deliveries: usize,
    payload: usize,
    secret: &Secret,
) -> anyhow::Result<f64> {
    let mut builder = reqwest::Client::builder()
        .tls_certs_merge([reqwest::Certificate::from_pem(hosts.ca_pem.as_bytes())?])
        .pool_max_idle_per_host(concurrency)
        .no_proxy();
    for (name, addr) in &hosts.hosts {
        builder = builder.resolve(name, *addr);
    }
    let http = builder.build()?;
    let urls: Vec<String> = (0..subs).map(|i| hosts.url(i)).collect();
    let body = json!({"id": "x", "type": "prod.t0", "timestamp": "2026-01-01T00:00:00Z", "tenant": "default",
        "data": Bench::data(payload)})
    .to_string();
    let signer = herald_signature::Signer::Hmac(secret.clone());
    let c = &hosts.counters;
    let target = c.delivered.load(Ordering::Relaxed) + deliveries as u64;
    let open_before = c.open.load(Ordering::Relaxed);
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let worker = || async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
            if i >= deliveries {
                return;
            }
            let id = format!("bare-{i}");
            let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
            let Ok(signature) = herald_signature::sign(&[&signer], &id, ts as i64, body.as_bytes()) else { return };
            let _ = http
                .post(&urls[i % subs])
                .header("content-type", "application/json")
                .header("webhook-id", id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", signature)
                .body(body.clone())
                .send()
                .await;
        }
    };
    futures::future::join_all((0..concurrency).map(|_| worker())).await;
    let done = wait_for(c, target).await?;
    // Its connections closed before Herald's next run, so that they are not counted as Herald's.
    drop(http);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.open.load(Ordering::Relaxed) > open_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(per_sec(deliveries, done - started))
}
