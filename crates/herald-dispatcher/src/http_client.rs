//! The HTTP client that POSTs webhooks: no redirects followed, a timeout per attempt, TLS 1.2+
//! with the platform's roots (and `HERALD_CA_FILE`'s), an optional egress proxy, and the exact
//! request of DESIGN.md.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use herald_core::ssrf::{Policy, Refused};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::destinations::BrokerTls;
pub use crate::direct::Direct;
use crate::direct::Dns;
use crate::retry::{AttemptResult, ErrorClass, parse_retry_after};

/// Resolves subscriber hosts and keeps only the addresses the SSRF policy allows: the check
/// happens on the very addresses the connection will use.
pub(crate) struct GuardedResolver {
    policy: Arc<Policy>,
    /// Fixed answers for some names (`HERALD_RESOLVE`), checked like any other.
    overrides: Arc<HashMap<String, IpAddr>>,
    /// The egress proxy's host, which the operator chose: resolved without the guard (it is
    /// usually on a private network). Destinations behind the proxy are not resolved here.
    proxy_host: Option<String>,
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl GuardedResolver {
    /// The addresses of `name` the policy allows (all of them for the proxy's own host).
    pub(crate) fn lookup(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<std::vec::IntoIter<SocketAddr>, BoxError>> + Send + 'static {
        let policy = self.policy.clone();
        // `name.` and `name` are the same host: resolve (and judge) the plain form.
        let host = name.trim_end_matches('.').to_ascii_lowercase();
        let fixed = self.overrides.get(&host).copied();
        let trusted = self.proxy_host.as_deref() == Some(host.as_str());
        async move {
            let resolved: Vec<SocketAddr> = match fixed {
                Some(ip) => vec![SocketAddr::new(ip, 0)],
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let allowed = if trusted { Ok(resolved) } else { policy.allowed(resolved) };
            let allowed = allowed.map_err(|refusal| Box::new(Refused(format!("{host}: {}", refusal.0))) as BoxError)?;
            Ok(allowed.into_iter())
        }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let lookup = self.lookup(name.as_str());
        Box::pin(async move { Ok(Box::new(lookup.await?) as reqwest::dns::Addrs) })
    }
}

/// Where deliveries go out: extra TLS roots and the egress proxy.
#[derive(Default, Clone)]
pub struct Egress {
    /// Roots trusted beside the platform's (`HERALD_CA_FILE`).
    pub extra_roots: Vec<reqwest::Certificate>,
    /// The same roots, for the TLS connections to brokers.
    pub extra_roots_der: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// `HERALD_PROXY_URL`, with `HERALD_NO_PROXY`.
    pub proxy: Option<(url::Url, String)>,
}

impl Egress {
    /// Reads `HERALD_CA_FILE` and checks `HERALD_PROXY_URL`.
    pub fn from_config(config: &crate::Config) -> anyhow::Result<Self> {
        let (extra_roots, extra_roots_der) = match &config.ca_file {
            None => (Vec::new(), Vec::new()),
            Some(path) => {
                let pem =
                    std::fs::read(path).with_context(|| format!("HERALD_CA_FILE: cannot read {}", path.display()))?;
                let roots = reqwest::Certificate::from_pem_bundle(&pem)
                    .with_context(|| format!("HERALD_CA_FILE: {} is not PEM certificates", path.display()))?;
                anyhow::ensure!(!roots.is_empty(), "HERALD_CA_FILE: {} holds no certificate", path.display());
                let der =
                    <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(&pem)
                        .collect::<Result<Vec<_>, _>>()
                        .with_context(|| format!("HERALD_CA_FILE: {} is not PEM certificates", path.display()))?;
                (roots, der)
            }
        };
        let proxy = match config.proxy_url.as_deref().filter(|u| !u.is_empty()) {
            None => None,
            Some(text) => {
                let url = url::Url::parse(text).map_err(|e| anyhow::anyhow!("HERALD_PROXY_URL: {e}"))?;
                anyhow::ensure!(
                    matches!(url.scheme(), "http" | "https") && url.host_str().is_some(),
                    "HERALD_PROXY_URL: {} is not an http:// or https:// proxy URL",
                    redacted(&url)
                );
                Some((url, config.no_proxy.clone()))
            }
        };
        Ok(Self { extra_roots, extra_roots_der, proxy })
    }
}

/// A proxy URL without its password, for messages.
pub fn redacted(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// How webhook clients are made: the one most subscriptions share, and one of its own for each
/// subscription that presents a client certificate (a TLS identity belongs to a client, and
/// its connections must not serve another subscription).
#[derive(Clone)]
pub struct ClientSettings {
    timeout: Duration,
    concurrency: usize,
    resolver: Arc<GuardedResolver>,
    egress: Egress,
    tls: BrokerTls,
}

/// A webhook client: hyper's pooled HTTP/1.1 client straight over the guarded resolver and
/// rustls, or reqwest where a proxy is configured or HTTP/2 is built in (it speaks both).
#[derive(Clone, Debug)]
pub enum WebhookClient {
    /// Straight to subscribers.
    Direct(Direct),
    /// Through `HERALD_PROXY_URL`, or offering HTTP/2.
    Reqwest(reqwest::Client),
}

impl ClientSettings {
    /// Every host is resolved through the SSRF guard (`policy`, with `overrides`' fixed answers);
    /// certificates are checked as `tls` says (the platform's verifier and `HERALD_CA_FILE`).
    pub fn new(
        timeout: Duration,
        concurrency: usize,
        policy: Arc<Policy>,
        overrides: HashMap<String, IpAddr>,
        egress: Egress,
        tls: BrokerTls,
    ) -> Self {
        let proxy_host = egress.proxy.as_ref().and_then(|(url, _)| url.host_str()).map(|h| h.to_ascii_lowercase());
        let resolver = Arc::new(GuardedResolver { policy, overrides: Arc::new(overrides), proxy_host });
        Self { timeout, concurrency, resolver, egress, tls }
    }

    /// The client webhooks go out on, presenting `identity` (a certificate chain and its key,
    /// PEM) to servers that ask for one.
    pub fn webhooks(&self, identity: Option<&str>) -> anyhow::Result<WebhookClient> {
        if self.egress.proxy.is_some() || cfg!(feature = "http2") {
            let identity = identity.map(|pem| reqwest::Identity::from_pem(pem.as_bytes())).transpose()?;
            return Ok(WebhookClient::Reqwest(self.build(identity)?));
        }
        let tls = match identity {
            None => self.tls.config(),
            Some(pem) => self.tls.with_identity(pem).map_err(anyhow::Error::msg)?,
        };
        Ok(WebhookClient::Direct(Direct::new(
            Dns(self.resolver.clone()),
            rustls::ClientConfig::clone(&tls),
            self.timeout,
            self.concurrency,
        )))
    }

    /// A reqwest client with the same guard, roots, proxy and timeouts (token requests, and
    /// webhooks through a proxy), presenting `identity` to servers that ask for a certificate.
    /// Installs the ring TLS provider for the process if none is yet. Redirects are never
    /// followed; the proxy, if any, is the only one used (the environment's `HTTP_PROXY` and the
    /// like are ignored).
    pub fn build(&self, identity: Option<reqwest::Identity>) -> anyhow::Result<reqwest::Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .dns_resolver(self.resolver.clone())
            .tls_version_min(reqwest::tls::Version::TLS_1_2)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            // As many as may be open at once: a busy endpoint keeps its connections between
            // requests instead of opening and closing most of them each time.
            .pool_max_idle_per_host(self.concurrency.max(1))
            // Herald retries on its own schedule; reqwest's retry layer would copy every request
            // (headers, extensions) just in case.
            .retry(reqwest::retry::never().max_retries_per_request(0));
        if !self.egress.extra_roots.is_empty() {
            builder = builder.tls_certs_merge(self.egress.extra_roots.iter().cloned());
        }
        if let Some(identity) = identity {
            builder = builder.identity(identity);
        }
        builder = match &self.egress.proxy {
            None => builder.no_proxy(),
            Some((url, no_proxy)) => {
                let proxy = reqwest::Proxy::all(url.as_str())
                    .map_err(|e| anyhow::anyhow!("HERALD_PROXY_URL {}: {e}", redacted(url)))?
                    .no_proxy(reqwest::NoProxy::from_string(no_proxy));
                builder.proxy(proxy)
            }
        };
        Ok(builder.build()?)
    }
}

/// One webhook request, ready to send.
#[derive(Debug)]
pub struct WebhookRequest<'a> {
    /// POST, or PUT if a transformation asked for it.
    pub method: reqwest::Method,
    /// The subscriber URL, parsed once (and checked by the SSRF guard) by the caller.
    pub url: &'a url::Url,
    /// Herald's own headers followed by the subscription's.
    pub headers: HeaderMap,
    /// The exact signed body.
    pub body: Vec<u8>,
}

/// Herald's headers, then the subscription's own (which cannot replace Herald's).
pub fn headers(
    msg_id: &str,
    timestamp: i64,
    signature: &str,
    trace: &herald_core::telemetry::Carrier,
    extra: &std::collections::BTreeMap<String, String>,
) -> HeaderMap {
    static USER_AGENT: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        HeaderValue::from_str(&format!("Herald/{}", herald_core::VERSION)).expect("a valid header value")
    });
    let mut h = HeaderMap::with_capacity(8 + extra.len());
    h.insert(reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(reqwest::header::USER_AGENT, USER_AGENT.clone());
    h.insert(HeaderName::from_static("webhook-timestamp"), HeaderValue::from(timestamp));
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set("webhook-id", msg_id);
    set("webhook-signature", signature);
    for (name, value) in
        [("traceparent", &trace.traceparent), ("tracestate", &trace.tracestate), ("baggage", &trace.baggage)]
    {
        if let Some(v) = value {
            set(name, v);
        }
    }
    for (name, value) in extra {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) else {
            continue;
        };
        if !h.contains_key(&name) {
            h.insert(name, value);
        }
    }
    h
}

/// What an attempt produced, for the decision and the attempt record.
#[derive(Debug)]
pub struct Sent {
    /// Status and error.
    pub result: AttemptResult,
    /// The first bytes of the response body.
    pub response_excerpt: String,
    /// How long it took.
    pub elapsed: Duration,
}

/// POSTs the webhook and reads at most `excerpt_limit` bytes of the answer.
pub async fn send(client: &WebhookClient, req: WebhookRequest<'_>, excerpt_limit: usize) -> Sent {
    match client {
        WebhookClient::Direct(direct) => direct.send(req, excerpt_limit).await,
        WebhookClient::Reqwest(client) => send_reqwest(client, req, excerpt_limit).await,
    }
}

async fn send_reqwest(client: &reqwest::Client, req: WebhookRequest<'_>, excerpt_limit: usize) -> Sent {
    let started = Instant::now();
    let mut request = reqwest::Request::new(req.method, req.url.clone());
    *request.headers_mut() = req.headers;
    *request.body_mut() = Some(req.body.into());
    let outcome = client.execute(request).await;
    let (result, response_excerpt) = match outcome {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = retry_after(status, resp.headers());
            let excerpt = excerpt(hyper::Response::from(resp).into_body(), excerpt_limit).await;
            answered(status, retry_after, &excerpt)
        }
        Err(e) => (failure(&e), String::new()),
    };
    Sent { result, response_excerpt, elapsed: started.elapsed() }
}

/// When a 429 or 503 says to come back.
pub(crate) fn retry_after(status: u16, headers: &HeaderMap) -> Option<Duration> {
    match status {
        429 | 503 => headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now())),
        _ => None,
    }
}

/// The first `limit` bytes of an answer's body, or fewer if it ends or fails first: the
/// answer's status is what counts, and a body cut short still answered.
pub(crate) async fn excerpt<B: hyper::body::Body<Data = hyper::body::Bytes> + Unpin>(
    mut body: B,
    limit: usize,
) -> Vec<u8> {
    use http_body_util::BodyExt as _;
    let mut excerpt = Vec::new();
    while excerpt.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(chunk) = frame.data_ref() {
                    excerpt.extend_from_slice(&chunk[..chunk.len().min(limit - excerpt.len())]);
                }
            }
            _ => break,
        }
    }
    excerpt
}

/// The result of an answered request: delivered on a 2xx, an `http_status` failure otherwise.
pub(crate) fn answered(status: u16, retry_after: Option<Duration>, excerpt: &[u8]) -> (AttemptResult, String) {
    let failed = !(200..300).contains(&status);
    let result = AttemptResult {
        status: Some(status),
        error: failed.then(|| format!("HTTP {status}")),
        class: failed.then_some(ErrorClass::HttpStatus),
        retry_after,
        confirmed: false,
    };
    (result, String::from_utf8_lossy(excerpt).into_owned())
}

/// A request that got no answer, classified: refused by the SSRF guard, a TLS failure, a
/// timeout, a connection failure, or anything else.
pub fn failure(e: &reqwest::Error) -> AttemptResult {
    classify(e, e.is_timeout(), e.is_connect())
}

/// [`failure`] for any client's error: `timeout` and `connect` say what the client knows of it.
pub(crate) fn classify(e: &(dyn std::error::Error + 'static), timeout: bool, connect: bool) -> AttemptResult {
    let (class, error) = if let Some(why) = refused(e) {
        (ErrorClass::Refused, why)
    } else if let Some(why) = tls_failure(e) {
        (ErrorClass::Tls, why)
    } else if timeout {
        (ErrorClass::Timeout, describe("timed out", e))
    } else if connect {
        (ErrorClass::Connection, describe("connection failed", e))
    } else {
        (ErrorClass::Request, describe("request failed", e))
    };
    AttemptResult { error: Some(error), class: Some(class), ..Default::default() }
}

/// Parses `HERALD_RESOLVE`: `name=ip` pairs, comma-separated.
pub fn parse_overrides(text: &str) -> Result<HashMap<String, IpAddr>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (name, ip) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not name=ip"))?;
            let ip: IpAddr = ip.trim().parse().map_err(|_| format!("{pair:?}: {ip:?} is not an IP address"))?;
            Ok((name.trim().trim_end_matches('.').to_ascii_lowercase(), ip))
        })
        .collect()
}

/// The SSRF guard's refusal, if that is what stopped the request.
fn refused(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return Some(r.to_string());
        }
        source = s.source();
    }
    None
}

/// The TLS failure behind `e`, if that is what stopped the request, in words a person can act
/// on. rustls' error sits in an `io::Error` somewhere down the chain, whose `source()` skips it.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = vec![e];
    while let Some(error) = pending.pop() {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(explain_tls(tls));
        }
        if let Some(inner) = error.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            pending.push(inner);
        }
        if let Some(next) = error.source() {
            pending.push(next);
        }
    }
    None
}

fn explain_tls(e: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    let what = match e {
        E::InvalidCertificate(C::UnknownIssuer) => {
            "the subscriber's certificate is not signed by a trusted authority (neither the platform's roots nor HERALD_CA_FILE)"
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "the subscriber's certificate has expired",
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the subscriber's certificate is not valid yet (or a clock is wrong)"
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the subscriber's certificate is not valid for the URL's host name"
        }
        E::InvalidCertificate(C::Revoked) => "the subscriber's certificate has been revoked",
        E::InvalidCertificate(_) => "the subscriber's certificate was refused",
        E::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            "the subscriber requires a client certificate: give the subscription one (`client_certificate`)"
        }
        E::AlertReceived(
            rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::CertificateUnknown
            | rustls::AlertDescription::CertificateExpired
            | rustls::AlertDescription::CertificateRevoked
            | rustls::AlertDescription::UnsupportedCertificate
            | rustls::AlertDescription::AccessDenied,
        ) => "the subscriber does not accept the subscription's client certificate",
        E::AlertReceived(_) => "the subscriber refused the TLS handshake",
        E::PeerIncompatible(_) => "the subscriber offers no TLS version or cipher Herald accepts (TLS 1.2 or 1.3)",
        _ => "the TLS handshake failed",
    };
    format!("TLS: {what}: {e}")
}

impl Sent {
    /// Nothing sent: a transformation cancelled the delivery.
    pub fn cancelled() -> Self {
        Self { result: AttemptResult::default(), response_excerpt: String::new(), elapsed: Duration::ZERO }
    }
}

/// An attempt that failed before anything was sent (`class` says why: a transformation).
pub fn failed_before_sending(class: ErrorClass, why: &str) -> Sent {
    let result = AttemptResult { error: Some(why.to_owned()), class: Some(class), ..Default::default() };
    Sent { result, response_excerpt: String::new(), elapsed: Duration::ZERO }
}

/// An attempt refused before any connection: the URL's own host is forbidden.
pub fn refused_result(refusal: &Refused) -> Sent {
    let result =
        AttemptResult { error: Some(refusal.to_string()), class: Some(ErrorClass::Refused), ..Default::default() };
    Sent { result, response_excerpt: String::new(), elapsed: Duration::ZERO }
}

/// An attempt not made because the subscription's client certificate cannot be used (its key
/// does not open with the configured keys, or it does not load): a `tls` failure, retried, so
/// that fixing the keys or replacing the certificate lets the delivery through.
pub fn unusable_certificate(why: &str) -> Sent {
    let result =
        AttemptResult { error: Some(format!("TLS: {why}")), class: Some(ErrorClass::Tls), ..Default::default() };
    Sent { result, response_excerpt: String::new(), elapsed: Duration::ZERO }
}

fn describe(kind: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{kind}: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
