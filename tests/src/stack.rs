//! Herald's gateway and dispatcher run in this process against one nats-server, with the flags
//! tests use, and a client for the gateway's API.

use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use clap::Parser as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{ADMIN_TOKEN, LOOPBACK, NatsServer, PUBLISH_TOKEN, SECRET_KEYS};

/// Dispatcher flags suitable for tests: short retries and timeouts.
pub fn dispatcher_args(nats_url: &str) -> Vec<String> {
    dispatcher_args_with(nats_url, &[])
}

/// [`dispatcher_args`] with some flags given other values (or added); an empty value removes
/// the flag, leaving the dispatcher's default.
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
        match (args.iter().position(|a| a == flag), value.is_empty()) {
            (Some(i), true) => {
                args.drain(i..i + 2);
            }
            (Some(i), false) => args[i + 1] = value.to_string(),
            (None, true) => {}
            (None, false) => args.extend([flag.to_string(), value.to_string()]),
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

/// Who a request is sent as.
#[derive(Debug, Clone)]
pub enum Who {
    /// A bearer token.
    Token(String),
    /// A console or portal session.
    Session {
        /// `name=value`, as a browser sends it back.
        cookie: String,
        /// The session's `X-Herald-Csrf` token.
        csrf: String,
    },
}

impl Who {
    /// A session from its `Set-Cookie` value and CSRF token.
    pub fn session(set_cookie: &str, csrf: &str) -> Self {
        Self::Session { cookie: set_cookie.split(';').next().unwrap_or_default().to_owned(), csrf: csrf.to_owned() }
    }
}

/// Installs TLS crypto for reqwest and, with `HERALD_TEST_LOG` set, logging.
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::var_os("HERALD_TEST_LOG").is_some() {
        std::mem::forget(herald_core::runtime::init_logging("herald-tests"));
    }
}

impl Stack {
    /// NATS, gateway and dispatcher.
    pub async fn start() -> Self {
        Self::start_with(true, &[]).await
    }

    /// Stops the gateway and starts another on a new port with the same flags (what it keeps
    /// must come back from NATS).
    pub async fn restart_gateway(&mut self, gateway_flags: &[&str]) {
        self.gateway_stop.cancel();
        let config = gateway_config(&self.nats.url(), gateway_flags);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind gateway");
        self.gateway = format!("http://{}", listener.local_addr().unwrap());
        self.gateway_stop = CancellationToken::new();
        let stop = self.gateway_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = herald_gateway::run(config, listener, stop.cancelled_owned()).await {
                eprintln!("gateway exited: {e:#}");
            }
        });
        self.wait_ready().await;
    }

    /// NATS and gateway only (for crash tests that run the dispatcher as a process).
    pub async fn gateway_only() -> Self {
        Self::start_with(false, &[]).await
    }

    /// With extra gateway flags.
    pub async fn start_with(with_dispatcher: bool, gateway_flags: &[&str]) -> Self {
        init();
        Self::start_on(NatsServer::start(), with_dispatcher, gateway_flags).await
    }

    /// On a server the test has prepared (streams of an earlier version, say).
    pub async fn start_on(nats: NatsServer, with_dispatcher: bool, gateway_flags: &[&str]) -> Self {
        init();
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
        let who = if token.is_empty() { None } else { Some(Who::Token(token.to_owned())) };
        self.send(who.as_ref(), method, path, body).await
    }

    /// Sends a request as `who`: a bearer token, or a browser session (its cookie, its CSRF
    /// token, and the `Sec-Fetch-Site` a browser sends from the gateway's own pages).
    pub async fn call_by(
        &self,
        who: &Who,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, HeaderMap, Value) {
        self.send(Some(who), method, path, body).await
    }

    async fn send(
        &self,
        who: Option<&Who>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.gateway));
        match who {
            None => {}
            Some(Who::Token(token)) => req = req.bearer_auth(token),
            Some(Who::Session { cookie, csrf }) => {
                req = req.header("cookie", cookie).header("x-herald-csrf", csrf).header("sec-fetch-site", "same-origin")
            }
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(serde_json::to_vec(&b).unwrap());
        }
        let resp = req.send().await.expect("gateway reachable");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap_or_default();
        (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Asks for a portal link for `tenant` (as the operator's backend, with the admin token)
    /// with `extra` fields, and answers its code.
    pub async fn portal_link(&self, tenant: &str, extra: Value) -> String {
        let mut body = json!({"tenant": tenant});
        body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
        let (status, _, link) = self.call(reqwest::Method::POST, "/v1/portal/sessions", Some(body)).await;
        assert_eq!(status, 201, "{link}");
        link["url"].as_str().unwrap().split("#code=").nth(1).expect("a code in the fragment").to_owned()
    }

    /// Spends a portal link the way the portal's page does: answers the status, the session's
    /// `Set-Cookie` and its body.
    pub async fn open_portal(&self, code: &str) -> (u16, Option<String>, Value) {
        let resp = self
            .http
            .post(format!("{}/portal/session", self.gateway))
            .header("content-type", "application/json")
            .header("sec-fetch-site", "same-origin")
            .body(json!({"code": code}).to_string())
            .send()
            .await
            .expect("gateway reachable");
        let status = resp.status().as_u16();
        let cookie = resp.headers().get("set-cookie").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = serde_json::from_slice(&resp.bytes().await.unwrap_or_default()).unwrap_or(Value::Null);
        (status, cookie, body)
    }

    /// A portal session of `tenant`, opened from a fresh link.
    pub async fn portal_session(&self, tenant: &str) -> Who {
        let code = self.portal_link(tenant, json!({})).await;
        let (status, cookie, body) = self.open_portal(&code).await;
        assert_eq!(status, 200, "{body}");
        Who::session(&cookie.expect("a session cookie"), body["csrf"].as_str().expect("a CSRF token"))
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

    /// Waits until the consumer has nothing pending and nothing unacked. A consumer not made
    /// yet is waited for too: an in-process dispatcher makes its consumers after the stack
    /// starts, and a test may get here first.
    pub async fn wait_consumer_drained(&self, stream: &str, consumer: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let js = async_nats::jetstream::new(self.nats.client().await);
        loop {
            let backlog = match js.get_stream(stream).await {
                Ok(s) => s
                    .consumer_info(consumer)
                    .await
                    .map(|i| (i.num_pending, i.num_ack_pending))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if backlog == Ok((0, 0)) {
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
        // An OpenMetrics exemplar (` # {trace_id="…"} value`) follows the sample's value.
        .filter_map(|l| l.split(" # ").next()?.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
