//! The HTTP receiver tests deliver to: a real server on loopback (or HTTPS, see `tls`) that
//! records every request and answers as a test scripts it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde_json::Value;

use crate::tls;

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request method (`POST` for every webhook, unless a transformation chose `PUT`).
    pub method: String,
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
    /// A message read from a broker (its headers and exact body), so that it verifies like a
    /// webhook.
    pub fn message(headers: impl IntoIterator<Item = (String, String)>, body: Vec<u8>) -> Self {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            if let (Ok(n), Ok(v)) =
                (axum::http::HeaderName::from_bytes(name.as_bytes()), axum::http::HeaderValue::from_str(&value))
            {
                map.insert(n, v);
            }
        }
        Self {
            method: String::new(),
            path: String::new(),
            headers: map,
            body: body.into(),
            at: Instant::now(),
            status: 0,
        }
    }

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
    /// The body of the answer.
    pub body: &'static str,
}

impl Reply {
    /// Answers `status` at once.
    pub fn status(status: u16) -> Self {
        Self { status, delay: Duration::ZERO, retry_after: None, location: None, body: "" }
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
    /// Failure shares for one path (without query), used instead of `fail_ratio`.
    fail_ratio_by_path: std::collections::HashMap<String, f64>,
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
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
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
                            let ratio = st.fail_ratio_by_path.get(uri.path()).copied().unwrap_or(st.fail_ratio);
                            Reply::status(if roll < ratio { 500 } else { 200 })
                        });
                        let at = Instant::now();
                        let method = method.to_string();
                        st.received.push(Received {
                            method,
                            path: uri.to_string(),
                            headers,
                            body,
                            at,
                            status: reply.status,
                        });
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
                    (status, headers, reply.body)
                }
            },
        );
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

    /// Answers this share of unscripted requests to `path` with 500, at random.
    pub fn fail_randomly_on(&self, path: &str, ratio: f64) {
        let mut st = self.state.lock().unwrap();
        st.fail_ratio_by_path.insert(path.to_owned(), ratio);
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
