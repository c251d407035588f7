//! The end-to-end harness: a real `nats-server -js` on a random port with a temporary store
//! (removed on drop), a real HTTP receiver whose answers a test scripts, and Herald's gateway and
//! dispatcher run in-process (or, for crash tests, as real processes).
#![forbid(unsafe_code)]

mod cluster;
mod proxy;
mod tls;

pub use cluster::NatsCluster;
pub use proxy::Proxy;
pub use tls::{TestCa, Validity, fingerprint};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use clap::Parser as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// What the test stacks allow despite the SSRF guard: the receivers live on loopback.
pub const LOOPBACK: &str = "127.0.0.0/8,::1/128";

/// The key that seals signing secrets in every test stack.
pub const SECRET_KEYS: &str = "test:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The admin token every test stack accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// A token with only the `publish` scope.
pub const PUBLISH_TOKEN: &str = "test-publish-token-0123456789";

/// The repository root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Where the `nats-server` binary is: `$NATS_SERVER_BIN`, the project's `.tools/`, or `PATH`.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return p.into();
    }
    let local = workspace_root().join(".tools/py/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// Where `cargo build` put the workspace's binaries (next to this test executable).
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/e2e-<hash> → target/debug/<name>
    let dir = exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A new empty directory under the system temp dir, named after `prefix`.
pub fn temp_dir(prefix: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A `nats-server` with JetStream, on its own port and store.
pub struct NatsServer {
    port: u16,
    store: PathBuf,
    jetstream: bool,
    /// `--user` and `--pass`, for a secured server.
    auth: Option<(String, String)>,
    /// JetStream flushes every write to disk before acknowledging it (`sync_interval: always`).
    sync_always: bool,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// Starts a server without JetStream: Herald must refuse it.
    pub fn start_without_jetstream() -> Self {
        Self::start_with(false)
    }

    /// Starts a server with JetStream that demands a user and password.
    pub fn start_with_password(user: &str, pass: &str) -> Self {
        let mut server = Self {
            port: free_port(),
            store: temp_dir("herald-nats"),
            jetstream: true,
            auth: Some((user.into(), pass.into())),
            sync_always: false,
            child: None,
        };
        server.restart();
        server
    }

    /// Starts a server whose JetStream flushes every write to disk before acknowledging it.
    pub fn start_synced() -> Self {
        let mut server = Self::new(true);
        server.sync_always = true;
        server.restart();
        server
    }

    fn new(jetstream: bool) -> Self {
        let (port, store) = (free_port(), temp_dir("herald-nats"));
        Self { port, store, jetstream, auth: None, sync_always: false, child: None }
    }

    fn start_with(jetstream: bool) -> Self {
        let mut server = Self::new(jetstream);
        server.restart();
        server
    }

    /// `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (its store stays, so [`NatsServer::restart`] brings the data back).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.store.join("server.log")).expect("log file");
        let mut cmd = Command::new(nats_server_bin());
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.sync_always {
            let config = self.store.join("nats.conf");
            let text = format!("jetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n", self.store.join("js"));
            std::fs::write(&config, text).expect("nats config");
            cmd.arg("-c").arg(config);
        } else if self.jetstream {
            cmd.arg("-js").arg("-sd").arg(self.store.join("js"));
        }
        if let Some((user, pass)) = &self.auth {
            cmd.args(["--user", user, "--pass", pass]);
        }
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap_or_else(|e| {
            panic!("cannot start {}: {e} (scripts/ensure-nats.sh installs it)", nats_server_bin().display())
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start; see {}",
                self.store.join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A plain client of this server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.expect("connect to test nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    /// Path and query.
    pub path: String,
    /// All headers.
    pub headers: HeaderMap,
    /// The exact body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// The status the receiver answered with.
    pub status: u16,
}

impl Received {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }

    /// Verifies the Standard Webhooks signature with `secret`.
    pub fn verify(&self, secret: &str) -> Result<(), herald_signature::Error> {
        let secret = herald_signature::Secret::parse(secret)?;
        herald_signature::Verifier::new(secret).verify(
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            self.header("webhook-signature"),
            &self.body,
        )
    }

    /// Verifies its `v1a` signature with an Ed25519 public key (`whpk_…`).
    pub fn verify_public_key(&self, key: &str) -> Result<(), herald_signature::Error> {
        let key = herald_signature::PublicKey::parse(key)?;
        herald_signature::Verifier::for_public_key(key).verify(
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            self.header("webhook-signature"),
            &self.body,
        )
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    /// The status.
    pub status: u16,
    /// How long to wait before answering.
    pub delay: Duration,
    /// A `Retry-After` header value in seconds, if any.
    pub retry_after: Option<u64>,
    /// A `Location` header, if any (to answer with a redirect).
    pub location: Option<&'static str>,
}

impl Reply {
    /// Answers `status` at once.
    pub fn status(status: u16) -> Self {
        Self { status, delay: Duration::ZERO, retry_after: None, location: None }
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Vec<Received>,
    script: VecDeque<Reply>,
    /// Requests being answered now, and the most seen at once.
    in_flight: usize,
    max_in_flight: usize,
    /// Share of unscripted requests answered 500 at random (chaos tests), and the generator.
    fail_ratio: f64,
    rng: u64,
    /// Scripts for one path (without query), used before the common one.
    by_path: std::collections::HashMap<String, VecDeque<Reply>>,
}

/// A real HTTP server on loopback that records every request and answers as scripted
/// (200 once the script is used up).
#[derive(Clone)]
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    arrived: Arc<tokio::sync::Notify>,
    /// TLS handshakes that failed (an HTTPS receiver only).
    failed_handshakes: Arc<std::sync::atomic::AtomicUsize>,
    /// Fingerprints of the client certificates presented to it (an HTTPS receiver only).
    client_certificates: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    /// Starts on a random port of 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1").await
    }

    /// Starts on a random port of `ip` (e.g. `127.0.0.2`, to be a different host).
    pub async fn start_on(ip: &str) -> Self {
        Self::serve(ip, None).await
    }

    /// Starts an HTTPS receiver on a random port of `ip` with `tls` (see [`TestCa`]); reach it
    /// with [`Receiver::https_url`].
    pub async fn start_tls(ip: &str, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::serve(ip, Some(tls)).await
    }

    async fn serve(ip: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let arrived = Arc::new(tokio::sync::Notify::new());
        let (s, a) = (state.clone(), arrived.clone());
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let (state, arrived) = (s.clone(), a.clone());
            async move {
                let reply = {
                    let mut st = state.lock().unwrap();
                    let scripted = match st.by_path.get_mut(uri.path()).and_then(VecDeque::pop_front) {
                        Some(reply) => Some(reply),
                        None => st.script.pop_front(),
                    };
                    let reply = scripted.unwrap_or_else(|| {
                        // xorshift64: enough randomness for failure injection.
                        st.rng ^= st.rng << 13;
                        st.rng ^= st.rng >> 7;
                        st.rng ^= st.rng << 17;
                        let roll = (st.rng >> 11) as f64 / (1u64 << 53) as f64;
                        Reply::status(if roll < st.fail_ratio { 500 } else { 200 })
                    });
                    let at = Instant::now();
                    st.received.push(Received { path: uri.to_string(), headers, body, at, status: reply.status });
                    st.in_flight += 1;
                    st.max_in_flight = st.max_in_flight.max(st.in_flight);
                    reply
                };
                arrived.notify_waiters();
                tokio::time::sleep(reply.delay).await;
                state.lock().unwrap().in_flight -= 1;
                let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
                let mut headers = HeaderMap::new();
                if let Some(secs) = reply.retry_after {
                    headers.insert("retry-after", secs.into());
                }
                if let Some(location) = reply.location {
                    headers.insert("location", axum::http::HeaderValue::from_static(location));
                }
                (status, headers)
            }
        });
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let failed_handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let client_certificates = Arc::new(Mutex::new(Vec::new()));
        match tls {
            None => drop(tokio::spawn(async move { axum::serve(listener, app).await })),
            Some(config) => {
                let listener = tls::TlsListener {
                    tcp: listener,
                    acceptor: tokio_rustls::TlsAcceptor::from(config),
                    failed_handshakes: failed_handshakes.clone(),
                    client_certificates: client_certificates.clone(),
                };
                drop(tokio::spawn(async move { axum::serve(listener, app).await }));
            }
        }
        Self { addr, state, arrived, failed_handshakes, client_certificates }
    }

    /// `https://{host}:{port}{path}`: the name the certificate is for (resolved to the
    /// receiver's address through the dispatcher's `--resolve`).
    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.addr.port())
    }

    /// The receiver's IP address.
    pub fn ip(&self) -> std::net::IpAddr {
        self.addr.ip()
    }

    /// TLS handshakes that failed so far.
    pub fn failed_handshakes(&self) -> usize {
        self.failed_handshakes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// SHA-256 fingerprints (hex) of the client certificates presented in its handshakes.
    pub fn client_certificates(&self) -> Vec<String> {
        self.client_certificates.lock().unwrap().clone()
    }

    /// `http://127.0.0.1:{port}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Queues answers for the next requests, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Queues answers for the next requests to `path`.
    pub fn script_per_path(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().by_path.entry(path.to_owned()).or_default().extend(replies);
    }

    /// Answers this share of unscripted requests with 500, at random.
    pub fn fail_randomly(&self, ratio: f64) {
        let mut st = self.state.lock().unwrap();
        st.fail_ratio = ratio;
        st.rng = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    }

    /// Forgets every queued answer: from now on, 200.
    pub fn clear_script(&self) {
        let mut st = self.state.lock().unwrap();
        st.script.clear();
        st.by_path.clear();
    }

    /// Queues plain statuses for the next requests.
    pub fn respond_with(&self, statuses: &[u16]) {
        self.script(statuses.iter().map(|&status| Reply::status(status)));
    }

    /// The most requests it was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// What arrived on `path`.
    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.path == path).collect()
    }

    /// Waits until `pred` holds for the received requests, or panics after `timeout`.
    pub async fn wait_until(&self, timeout: Duration, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            let got = self.received();
            if pred(&got) {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let got = self.received();
                if pred(&got) {
                    return got;
                }
                panic!(
                    "timed out after {timeout:?} waiting for {what}; received {} request(s): {:?}",
                    got.len(),
                    got.iter().map(|r| &r.path).collect::<Vec<_>>()
                );
            }
        }
    }

    /// How many requests arrived on `path`, without copying them.
    pub fn count_on(&self, path: &str) -> usize {
        self.state.lock().unwrap().received.iter().filter(|r| r.path == path).count()
    }

    /// Waits until at least `n` requests arrived on `path` (cheap for large counts).
    pub async fn wait_count(&self, path: &str, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.count_on(path) < n {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {n} requests on {path}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for at least `n` requests in all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_until(timeout, &format!("{n} request(s)"), |r| r.len() >= n).await
    }
}

/// Dispatcher flags suitable for tests: short retries and timeouts.
pub fn dispatcher_args(nats_url: &str) -> Vec<String> {
    dispatcher_args_with(nats_url, &[])
}

/// [`dispatcher_args`] with some flags given other values (or added).
pub fn dispatcher_args_with(nats_url: &str, overrides: &[(&str, &str)]) -> Vec<String> {
    let mut args: Vec<String> = [
        "herald-dispatcher",
        "--nats-url",
        nats_url,
        "--listen",
        "127.0.0.1:0",
        "--retry-schedule",
        "1s,1s,1s",
        "--http-timeout",
        "3s",
        "--ack-wait",
        "5s",
        "--shutdown-grace",
        "5s",
        "--breaker-cooldown",
        "2s",
        "--allow-networks",
        LOOPBACK,
        "--secret-keys",
        SECRET_KEYS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, value) in overrides {
        match args.iter().position(|a| a == flag) {
            Some(i) => args[i + 1] = value.to_string(),
            None => args.extend([flag.to_string(), value.to_string()]),
        }
    }
    args
}

/// Gateway settings for tests against `nats_url`: the test tokens and key ring, a short publish
/// timeout, loopback receivers allowed (unless `extra` sets `--allow-networks`), then `extra`.
pub fn gateway_config(nats_url: &str, extra: &[&str]) -> herald_gateway::Config {
    let tokens = format!("admin={ADMIN_TOKEN},publish={PUBLISH_TOKEN},tenant:acme=test-acme-token-0123456789");
    let mut args: Vec<String> = ["herald-gateway", "--nats-url", nats_url, "--tokens", &tokens]
        .into_iter()
        .chain(["--publish-timeout", "2s", "--secret-keys", SECRET_KEYS])
        .map(str::to_owned)
        .collect();
    if !extra.contains(&"--allow-networks") {
        args.extend(["--allow-networks".into(), LOOPBACK.into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    herald_gateway::Config::try_parse_from(args).expect("gateway flags")
}

/// A gateway and (optionally) a dispatcher running in this process against one nats-server.
pub struct Stack {
    /// The server.
    pub nats: NatsServer,
    /// The gateway's base URL.
    pub gateway: String,
    /// A client for the gateway.
    pub http: reqwest::Client,
    gateway_stop: CancellationToken,
    dispatcher_stop: Option<CancellationToken>,
    dispatcher_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Installs TLS crypto for reqwest and, with `HERALD_TEST_LOG` set, logging.
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::var_os("HERALD_TEST_LOG").is_some() {
        herald_core::runtime::init_logging();
    }
}

impl Stack {
    /// NATS, gateway and dispatcher.
    pub async fn start() -> Self {
        Self::start_with(true, &[]).await
    }

    /// NATS and gateway only (for crash tests that run the dispatcher as a process).
    pub async fn gateway_only() -> Self {
        Self::start_with(false, &[]).await
    }

    /// With extra gateway flags.
    pub async fn start_with(with_dispatcher: bool, gateway_flags: &[&str]) -> Self {
        init();
        let nats = NatsServer::start();
        let config = gateway_config(&nats.url(), gateway_flags);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind gateway");
        let gateway = format!("http://{}", listener.local_addr().unwrap());
        let gateway_stop = CancellationToken::new();
        let stop = gateway_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = herald_gateway::run(config, listener, stop.cancelled_owned()).await {
                eprintln!("gateway exited: {e:#}");
            }
        });
        let mut stack = Self {
            nats,
            gateway,
            http: reqwest::Client::new(),
            gateway_stop,
            dispatcher_stop: None,
            dispatcher_task: None,
        };
        stack.wait_ready().await;
        if with_dispatcher {
            stack.start_dispatcher();
        }
        stack
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.gateway)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "gateway did not become ready");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts an in-process dispatcher with [`dispatcher_args`].
    pub fn start_dispatcher(&mut self) {
        self.start_dispatcher_with(&[]);
    }

    /// Starts an in-process dispatcher with [`dispatcher_args_with`].
    pub fn start_dispatcher_with(&mut self, overrides: &[(&str, &str)]) {
        let args = dispatcher_args_with(&self.nats.url(), overrides);
        let config = herald_dispatcher::Config::try_parse_from(args).expect("dispatcher flags");
        let stop = CancellationToken::new();
        self.dispatcher_task = Some(tokio::spawn(herald_dispatcher::run(config, stop.clone())));
        self.dispatcher_stop = Some(stop);
    }

    /// Stops the in-process dispatcher gracefully and waits for it.
    pub async fn stop_dispatcher(&mut self) {
        if let Some(stop) = self.dispatcher_stop.take() {
            stop.cancel();
        }
        if let Some(task) = self.dispatcher_task.take() {
            task.await.expect("dispatcher task").expect("dispatcher run");
        }
    }

    /// Sends a request with the admin token.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, HeaderMap, Value) {
        self.call_as(ADMIN_TOKEN, method, path, body).await
    }

    /// Sends a request with `token` (empty: none).
    pub async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.gateway));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(serde_json::to_vec(&b).unwrap());
        }
        let resp = req.send().await.expect("gateway reachable");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap_or_default();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, value)
    }

    /// Publishes one event; returns status and body.
    pub async fn publish(&self, event: Value) -> (u16, Value) {
        let (status, _, body) = self.call(reqwest::Method::POST, "/v1/events", Some(event)).await;
        (status, body)
    }

    /// Creates a subscription and returns it (with its secret).
    pub async fn subscribe(&self, url: &str, types: &[&str], tenant: Option<&str>) -> Value {
        let mut body = json!({"url": url, "event_types": types});
        if let Some(t) = tenant {
            body["tenant"] = json!(t);
        }
        let (status, _, sub) = self.call(reqwest::Method::POST, "/v1/subscriptions", Some(body)).await;
        assert_eq!(status, 201, "create subscription: {sub}");
        sub
    }

    /// JetStream state of a stream: how many messages it holds.
    pub async fn stream_messages(&self, stream: &str) -> u64 {
        let js = async_nats::jetstream::new(self.nats.client().await);
        js.get_stream(stream).await.expect("stream exists").info().await.expect("stream info").state.messages
    }

    /// `(num_pending, num_ack_pending)` of a consumer.
    pub async fn consumer_backlog(&self, stream: &str, consumer: &str) -> (u64, usize) {
        let js = async_nats::jetstream::new(self.nats.client().await);
        let stream = js.get_stream(stream).await.expect("stream exists");
        let info = stream.consumer_info(consumer).await.expect("consumer info");
        (info.num_pending, info.num_ack_pending)
    }

    /// Waits until the consumer has nothing pending and nothing unacked.
    pub async fn wait_consumer_drained(&self, stream: &str, consumer: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let backlog = self.consumer_backlog(stream, consumer).await;
            if backlog == (0, 0) {
                return;
            }
            assert!(Instant::now() < deadline, "{consumer} still has (pending, ack pending) = {backlog:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.gateway_stop.cancel();
        if let Some(stop) = &self.dispatcher_stop {
            stop.cancel();
        }
        if let Some(task) = &self.dispatcher_task {
            task.abort();
        }
    }
}

/// The sum of a metric's series in Prometheus text: all of them for a bare name, one for a name
/// with its labels (`name{label="value"}`).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    let after_name: &[char] = if name.ends_with('}') { &[' '] } else { &['{', ' '] };
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(after_name)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A dispatcher running as a real process, so a test can SIGKILL it.
pub struct DispatcherProcess {
    child: Child,
    /// Its health and metrics address.
    listen: String,
}

impl DispatcherProcess {
    /// Starts `target/<profile>/herald-dispatcher` with [`dispatcher_args`].
    pub fn start(nats_url: &str) -> Self {
        Self::start_with(nats_url, &[])
    }

    /// Starts it with [`dispatcher_args_with`].
    pub fn start_with(nats_url: &str, overrides: &[(&str, &str)]) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut overrides = overrides.to_vec();
        overrides.push(("--listen", &listen));
        let args = dispatcher_args_with(nats_url, &overrides);
        let child = Command::new(target_bin("herald-dispatcher"))
            .args(&args[1..])
            .env("HERALD_LOG", std::env::var("HERALD_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("HERALD_TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("spawn herald-dispatcher");
        Self { child, listen }
    }

    /// Waits until it reports ready (`/readyz`: connected, subscriptions loaded, consuming).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://{}/readyz", self.listen);
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "dispatcher {} did not become ready", self.pid());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The sum of a metric's series in its `/metrics` (all labels), or `None` while unreachable.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.listen)).await.ok()?.text().await.ok()?;
        Some(metric_sum(&text, name))
    }

    /// Webhook attempts this replica has made (`herald_delivery_attempts_total`).
    pub async fn attempts(&self) -> f64 {
        self.metric("herald_delivery_attempts_total").await.unwrap_or(0.0)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to ack, nack or flush anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to a minute for the exit; returns whether it exited, successfully,
    /// in that time (a process still running then is killed).
    pub fn terminate(mut self) -> bool {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => return false,
            }
        }
        false
    }
}

impl Drop for DispatcherProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Repeated 2xx answers at `path` of a [`Receiver`]: `(duplicates, despite_record)`, where
/// `duplicates` counts every 2xx answer to a webhook id beyond its first, and `despite_record`
/// those of them sent although the send before had been recorded as delivered on
/// `HERALD_ATTEMPTS` (read through the gateway at `gateway`): the repeats the check before
/// sending exists to prevent. The others were in flight when a process died, their record lost
/// with it: at least once allows them.
pub async fn duplicates_at(gateway: &str, received: &[Received], path: &str) -> (usize, usize) {
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for r in received.iter().filter(|r| r.path == path && (200..300).contains(&r.status)) {
        *counts.entry(r.header("webhook-id").unwrap_or_default()).or_default() += 1;
    }
    let http = reqwest::Client::new();
    let (mut duplicates, mut despite_record) = (0, 0);
    for (id, count) in counts.into_iter().filter(|(_, c)| *c > 1) {
        duplicates += count - 1;
        let response = http
            .get(format!("{gateway}/v1/events/{id}/attempts?limit=100"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("gateway reachable");
        let attempts: Value = serde_json::from_slice(&response.bytes().await.unwrap_or_default()).unwrap_or_default();
        let records = attempts["data"].as_array().cloned().unwrap_or_default();
        let delivered = records
            .iter()
            .filter(|a| a["url"].as_str().is_some_and(|u| u.ends_with(path)) && a["outcome"] == "delivered")
            .count();
        despite_record += delivered.min(count).saturating_sub(1);
    }
    (duplicates, despite_record)
}
