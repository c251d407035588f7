//! The load the benchmark makes: pipelined JetStream publishing, the raw relay, HTTP posting.

use std::collections::VecDeque;
use std::future::IntoFuture as _;
use std::time::Instant;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use futures::StreamExt as _;
use serde_json::Value;

use crate::per_sec;

/// Publishes `messages` (built beforehand, so only publishing is timed) with up to 4,096
/// PubAcks outstanding; returns messages/s.
pub(crate) async fn pipelined(js: &jetstream::Context, messages: Vec<(String, PublishMessage)>) -> anyhow::Result<f64> {
    const WINDOW: usize = 4096;
    let n = messages.len();
    let started = Instant::now();
    let mut acks: VecDeque<PublishAckFuture> = VecDeque::with_capacity(WINDOW);
    for (subject, publish) in messages {
        if acks.len() == WINDOW {
            acks.pop_front().expect("full").into_future().await?;
        }
        acks.push_back(js.send_publish(subject, publish).await?);
    }
    for ack in acks {
        ack.into_future().await?;
    }
    Ok(per_sec(n, started.elapsed()))
}

/// The least a durable relay from JetStream to HTTP can do: publish `messages`, pull them with
/// a durable consumer, POST each to the receiver (`clients` at once) and ack it after the 2xx.
/// Returns messages/s from the first publish to the last ack sent.
pub(crate) async fn relay(
    js: &jetstream::Context,
    http: &reqwest::Client,
    url: &str,
    clients: usize,
    messages: Vec<(String, PublishMessage)>,
) -> anyhow::Result<f64> {
    let n = messages.len();
    let stream = js.get_stream("BENCH_RELAY").await?;
    let _ = stream.delete_consumer("relay").await;
    stream.purge().await?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("relay".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let consume = async {
        let pulled = consumer.stream().max_messages_per_batch(256).messages().await?;
        pulled
            .take(n)
            .for_each_concurrent(clients, |msg| async move {
                let Ok(msg) = msg else { return };
                let sent = http.post(url).body(msg.payload.clone()).send().await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    let _ = msg.ack().await;
                }
            })
            .await;
        anyhow::Ok(())
    };
    let (published, consumed) = tokio::join!(pipelined(js, messages), consume);
    published?;
    consumed?;
    Ok(per_sec(n, started.elapsed()))
}

/// An event as a service publishes it straight to NATS: JSON (recognised by its opening brace,
/// so no Content-Type header), its id as the dedup id.
pub(crate) fn json_event(id: &str, event: &Value) -> PublishMessage {
    PublishMessage::build().payload(serde_json::to_vec(event).expect("JSON").into()).message_id(id)
}

/// POSTs `bodies` (carrying `events` events in all) to `url` with the publish token, `clients`
/// requests at once; every one must be answered 202. Returns events/s.
pub(crate) async fn post_all(url: &str, clients: usize, bodies: Vec<String>, events: usize) -> anyhow::Result<f64> {
    let auth = format!("Bearer {}", herald_harness::PUBLISH_TOKEN);
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let target = Target::parse(url)?;
    let requests = bodies.iter().map(|body| target.request(&headers, body)).collect();
    post_raw(&target, clients, requests, events).await
}

/// Where raw requests go: an `http://host:port/path` URL, taken apart.
pub(crate) struct Target {
    addr: std::net::SocketAddr,
    host: String,
    path: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> anyhow::Result<Self> {
        let url = url::Url::parse(url)?;
        anyhow::ensure!(url.scheme() == "http", "raw requests go over plain HTTP: {url}");
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let addr = format!("{host}:{port}").parse().or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?
                .next()
                .ok_or_else(|| anyhow::anyhow!("{host} resolves to nothing"))
        })?;
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        Ok(Self { addr, host: format!("{host}:{port}"), path })
    }

    /// A whole `POST` request with `headers` and `body`, as bytes on the wire.
    pub(crate) fn request(&self, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 256);
        out.extend_from_slice(format!("POST {} HTTP/1.1\r\nhost: {}\r\n", self.path, self.host).as_bytes());
        for (name, value) in headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body.as_bytes());
        out
    }
}

/// Sends `requests` (built beforehand, so only sending is timed) over `clients` keep-alive
/// HTTP/1.1 connections, one request at a time on each, as `wrk` does: a load generator that
/// costs the machine a few µs per request, where a general-purpose client (`reqwest`) cost about
/// as much CPU per request as the gateway answering it, on the same two cores. Every answer must
/// be 202. Returns events/s for `events` events in all.
pub(crate) async fn post_raw(
    target: &Target,
    clients: usize,
    requests: Vec<Vec<u8>>,
    events: usize,
) -> anyhow::Result<f64> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (requests, next, addr) = (requests.clone(), next.clone(), target.addr);
        tasks.push(tokio::spawn(async move {
            let mut refused = Vec::new();
            let mut conn: Option<tokio::io::BufReader<tokio::net::TcpStream>> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = requests.get(i) else { break };
                if conn.is_none() {
                    let stream = tokio::net::TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    conn = Some(tokio::io::BufReader::new(stream));
                }
                let answered = match conn.as_mut() {
                    Some(c) => exchange(c, request).await,
                    None => unreachable!("connected above"),
                };
                match answered {
                    Ok((202, _)) => {}
                    Ok((status, keep)) => {
                        refused.push(status);
                        if !keep {
                            conn = None;
                        }
                    }
                    Err(_) => {
                        refused.push(0);
                        conn = None;
                    }
                }
            }
            anyhow::Ok(refused)
        }));
    }
    let mut refused = Vec::new();
    for task in tasks {
        refused.extend(task.await??);
    }
    anyhow::ensure!(
        refused.is_empty(),
        "{} requests were not accepted (statuses {:?})",
        refused.len(),
        &refused[..refused.len().min(10)]
    );
    Ok(per_sec(events, started.elapsed()))
}

/// Writes one request and reads its answer: the status, and whether the connection stays open.
async fn exchange(
    conn: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    request: &[u8],
) -> std::io::Result<(u16, bool)> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    conn.get_mut().write_all(request).await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut length, mut keep) = (0usize, true);
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                keep = false;
            }
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    Ok((status, keep))
}

/// POSTs a JSON body with the publish token; the status (0 when no answer came).
pub(crate) async fn post_json(http: &reqwest::Client, url: &str, body: String) -> u16 {
    let resp = http
        .post(url)
        .bearer_auth(herald_harness::PUBLISH_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    resp.map(|r| r.status().as_u16()).unwrap_or(0)
}
