//! The benchmark's receiver: as lean as a webhook endpoint can be while still checking every
//! signature. It counts verified deliveries per subscription path (`/s/{index}`), answers the raw
//! POST loop on `/raw`, can hold each request for a while (a slow endpoint), and can note the
//! arrival time of each `webhook-id` (for latency).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use herald_signature::{Secret, Verifier};

/// Subscription paths the sink counts separately.
pub const PATHS: usize = 1024;

/// A running sink.
#[derive(Clone)]
pub struct Sink {
    addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    verifier: Verifier,
    counts: Vec<AtomicU64>,
    raw: AtomicU64,
    bad_signatures: AtomicU64,
    delay_ms: AtomicU64,
    in_flight: AtomicI64,
    max_in_flight: AtomicI64,
    arrivals: Mutex<Option<HashMap<String, Instant>>>,
}

impl Sink {
    /// Starts on a random port of 127.0.0.1, verifying signatures made with `secret`.
    pub async fn start(secret: &Secret) -> anyhow::Result<Self> {
        let state = Arc::new(State {
            verifier: Verifier::new(secret.clone()).tolerance(Duration::from_secs(3600)),
            counts: (0..PATHS).map(|_| AtomicU64::new(0)).collect(),
            raw: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            max_in_flight: AtomicI64::new(0),
            arrivals: Mutex::new(None),
        });
        let s = state.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = s.clone();
            async move { state.handle(&uri, &headers, &body).await }
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { addr, state })
    }

    /// The URL of subscription path `index`.
    pub fn sub_url(&self, index: usize) -> String {
        format!("http://{}/s/{index}", self.addr)
    }

    /// The URL the raw POST loop uses.
    pub fn raw_url(&self) -> String {
        format!("http://{}/raw", self.addr)
    }

    /// Verified deliveries on the paths `range`.
    pub fn delivered(&self, range: std::ops::Range<usize>) -> u64 {
        self.state.counts[range].iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Requests whose signature did not verify, so far.
    pub fn bad_signatures(&self) -> u64 {
        self.state.bad_signatures.load(Ordering::Relaxed)
    }

    /// Waits until the paths `range` have `target` verified deliveries; returns when that
    /// happened, or an error after `timeout` of no progress.
    pub async fn wait_delivered(
        &self,
        range: std::ops::Range<usize>,
        target: u64,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let mut last = (self.delivered(range.clone()), Instant::now());
        loop {
            let now = self.delivered(range.clone());
            if now >= target {
                return Ok(Instant::now());
            }
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > timeout {
                anyhow::bail!("stalled at {now} of {target} deliveries (bad signatures: {})", self.bad_signatures());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Holds every request this long before answering (a slow endpoint).
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// The most requests held at once since the last call (which resets it).
    pub fn take_max_in_flight(&self) -> i64 {
        self.state.max_in_flight.swap(0, Ordering::Relaxed)
    }

    /// How many distinct `webhook-id`s have arrived since `record_arrivals(true)`.
    pub fn arrived(&self) -> usize {
        self.state.arrivals.lock().unwrap().as_ref().map_or(0, HashMap::len)
    }

    /// Starts (or stops, returning them) noting the first arrival of each `webhook-id`.
    pub fn record_arrivals(&self, on: bool) -> HashMap<String, Instant> {
        let mut arrivals = self.state.arrivals.lock().unwrap();
        let taken = arrivals.take().unwrap_or_default();
        if on {
            *arrivals = Some(HashMap::new());
        }
        taken
    }
}

impl State {
    async fn handle(&self, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> StatusCode {
        let arrived = Instant::now();
        let path = uri.path();
        if path == "/raw" {
            self.raw.fetch_add(1, Ordering::Relaxed);
            return StatusCode::OK;
        }
        let Some(index) = path.strip_prefix("/s/").and_then(|i| i.parse::<usize>().ok()).filter(|i| *i < PATHS) else {
            return StatusCode::NOT_FOUND;
        };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let id = header("webhook-id");
        if self.verifier.verify(id, header("webhook-timestamp"), header("webhook-signature"), body).is_err() {
            self.bad_signatures.fetch_add(1, Ordering::Relaxed);
            return StatusCode::UNAUTHORIZED;
        }
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            self.max_in_flight.fetch_max(now, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(arrivals) = self.arrivals.lock().unwrap().as_mut() {
            if let Some(id) = id {
                arrivals.entry(id.to_owned()).or_insert(arrived);
            }
        }
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        StatusCode::OK
    }
}
