//! Destinations other than an HTTP endpoint: deliveries written to an AMQP exchange, a NATS
//! subject or a Redis stream. An attempt succeeds only once the broker confirmed the write (a
//! publisher confirm, a PubAck or a flush, an `XADD` reply); anything else is a failed attempt,
//! retried, recorded and dead-lettered like a webhook's. The message carries the webhook's body
//! and its Standard Webhooks headers (as AMQP headers, NATS headers or stream fields), so a
//! consumer verifies it the same way.
//!
//! Connections are kept per broker URL and shared by the subscriptions that name it; one that
//! breaks (a broker restart) is opened again by the next attempt. `amqps://`, `tls://` and
//! `rediss://` URLs connect over TLS, checking the broker's certificate as a webhook's is
//! checked (the platform's roots and `HERALD_CA_FILE`'s). Each attempt is bounded by
//! the HTTP timeout, so a broker that hangs holds only its own subscriptions' attempts, which
//! its breaker then defers like an unresponsive endpoint's.

mod amqp;
mod nats;
mod redis;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use herald_core::destination as dest;
use herald_core::proto;
use herald_core::secrets::KeyRing;
use herald_core::ssrf::Policy;

use crate::http_client::Sent;
use crate::retry::{AttemptResult, ErrorClass};

/// Why a write to a broker failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub class: ErrorClass,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self { class, message: message.into() }
    }
}

/// One delivery as a broker message: the exact signed body and the headers a webhook would
/// carry (Herald's, then the subscription's own).
#[derive(Debug)]
pub(crate) struct Outgoing<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub tenant: &'a str,
    pub subscription_id: &'a str,
    pub timestamp: i64,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl Outgoing<'_> {
    /// The headers as text, in the map's order. Herald's own are ASCII; a subscription's own
    /// header whose value has bytes beyond ASCII (which a webhook carries as they are) is left
    /// out of a broker message, as it was before the map was passed through.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
    }
}

/// A subscription's broker destination, ready for attempts: the shared connection to its
/// broker and where on it messages go.
pub(crate) struct Destination {
    broker: Broker,
    spec: proto::Destination,
}

#[derive(Clone)]
enum Broker {
    Amqp(Arc<amqp::Amqp>),
    Nats(Arc<nats::Nats>),
    Redis(Arc<redis::Redis>),
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination").field("type", &self.spec.r#type).finish_non_exhaustive()
    }
}

impl Destination {
    /// Writes `message`, waiting at most `timeout` for the broker's confirmation.
    pub(crate) async fn send(&self, message: Outgoing<'_>, timeout: Duration) -> Sent {
        let started = Instant::now();
        let render =
            |template: &str| dest::render(template, message.event_type, message.tenant, message.subscription_id);
        let write = async {
            match &self.broker {
                Broker::Amqp(amqp) => {
                    amqp.publish(&self.spec.exchange, &render(&self.spec.routing_key), &message).await
                }
                Broker::Nats(nats) => nats.publish(render(&self.spec.subject), &message).await,
                Broker::Redis(redis) => redis.xadd(&render(&self.spec.stream), self.spec.max_len, &message).await,
            }
        };
        let outcome = match tokio::time::timeout(timeout, write).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::new(
                ErrorClass::Timeout,
                format!("timed out: the {} broker did not confirm the write within {timeout:?}", self.spec.r#type),
            )),
        };
        let result = match outcome {
            Ok(()) => AttemptResult { confirmed: true, ..Default::default() },
            Err(failure) => {
                AttemptResult { error: Some(failure.message), class: Some(failure.class), ..Default::default() }
            }
        };
        Sent { result, response_excerpt: String::new(), elapsed: started.elapsed() }
    }
}

/// A broker destination driven straight, without Herald around it: what the benchmark measures
/// the broker's raw publish rate with (the same client code deliveries use).
pub struct Raw {
    destination: Arc<Destination>,
    timeout: Duration,
}

impl Raw {
    /// Connects lazily to `destination` (its URL unsealed); every address is allowed.
    pub fn new(destination: proto::Destination, timeout: Duration) -> Result<Self, String> {
        let policy = Policy {
            allow: vec![herald_core::ssrf::Cidr::parse("0.0.0.0/0")?, herald_core::ssrf::Cidr::parse("::/0")?],
            https_only: false,
        };
        let tls = tls_config(Vec::new()).map_err(|e| e.to_string())?;
        let brokers = Brokers::new(Arc::new(policy), HashMap::new(), timeout, tls);
        let sub = proto::Subscription { id: "raw".into(), destination: Some(destination), ..Default::default() };
        Ok(Self { destination: brokers.prepare(&sub, &KeyRing::default())?, timeout })
    }

    /// Writes one message with `headers` and `body`; `Err` with the failure's text.
    pub async fn send(&self, id: &str, event_type: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
        let message =
            Outgoing { id, event_type, tenant: "default", subscription_id: "raw", timestamp: 0, headers, body };
        let sent = self.destination.send(message, self.timeout).await;
        match sent.result.error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// An attempt not made because the destination's URL does not open with the configured keys.
pub(crate) fn unusable(why: &str) -> Sent {
    let result = AttemptResult { error: Some(why.to_owned()), class: Some(ErrorClass::Auth), ..Default::default() };
    Sent { result, response_excerpt: String::new(), elapsed: Duration::ZERO }
}

/// Where broker connections come from: the SSRF guard that checks every address connected to,
/// fixed DNS answers (`HERALD_RESOLVE`), and the connections already open, by broker URL.
pub(crate) struct Brokers {
    resolver: Arc<Resolver>,
    tls: BrokerTls,
    open: Mutex<HashMap<(String, String), Weak<dyn std::any::Any + Send + Sync>>>,
    timeout: Duration,
}

impl Brokers {
    /// `tls` checks the certificates of brokers reached over TLS.
    pub(crate) fn new(
        policy: Arc<Policy>,
        overrides: HashMap<String, IpAddr>,
        timeout: Duration,
        tls: BrokerTls,
    ) -> Self {
        let resolver = Arc::new(Resolver { policy, overrides: Arc::new(overrides), tls: tls.config.clone() });
        Self { resolver, tls, open: Mutex::default(), timeout }
    }

    /// The destination of `sub`, with a connection to its broker shared with every other
    /// subscription naming the same URL; `Err` if its URL does not open or parse.
    pub(crate) fn prepare(&self, sub: &proto::Subscription, keys: &KeyRing) -> Result<Arc<Destination>, String> {
        let spec = sub.destination.clone().unwrap_or_default();
        let url_text = keys
            .open(&sub.id, &spec.url)
            .map_err(|e| format!("the destination's URL does not open with the configured keys: {e}"))?;
        let url = url::Url::parse(&url_text).map_err(|e| format!("the destination's URL does not parse: {e}"))?;
        // A subscription with a client certificate presents it to a broker reached over TLS, on
        // connections of its own: shared only with subscriptions presenting the same one.
        let (resolver, identity) = match herald_core::client_cert::open(sub, keys) {
            Some(pem) if dest::uses_tls(&url) => {
                let pem =
                    pem.map_err(|e| format!("TLS: the subscription's client certificate key does not open: {e}"))?;
                let fingerprint =
                    sub.client_certificate.as_ref().map(|c| c.fingerprint_sha256.clone()).unwrap_or_default();
                (
                    Arc::new(self.resolver.with_tls(self.tls.with_identity(&pem)?)),
                    format!("\ncertificate {fingerprint}"),
                )
            }
            _ => (self.resolver.clone(), String::new()),
        };
        let url_text = format!("{url_text}{identity}");
        let broker = match spec.r#type.as_str() {
            // One connection per exchange too: a channel error (an exchange that does not exist)
            // closes the channel, failing only what was in flight to that exchange.
            dest::AMQP => Broker::Amqp(self.shared(dest::AMQP, &format!("{url_text} {}", spec.exchange), || {
                amqp::Amqp::new(url.clone(), resolver.clone(), self.timeout)
            })?),
            dest::NATS => {
                let credentials = match spec.credentials.as_str() {
                    "" => None,
                    sealed => Some(keys.open(&sub.id, sealed).map_err(|e| {
                        format!("the destination's credentials do not open with the configured keys: {e}")
                    })?),
                };
                // A connection is shared only by subscriptions with the same URL and credentials.
                let key = match &credentials {
                    None => url_text.clone(),
                    Some(c) => format!("{url_text}\n{c}"),
                };
                Broker::Nats(self.shared(dest::NATS, &key, || {
                    nats::Nats::new(url.clone(), credentials.clone(), resolver.clone(), self.timeout)
                })?)
            }
            dest::REDIS => {
                Broker::Redis(self.shared(dest::REDIS, &url_text, || {
                    redis::Redis::new(url.clone(), resolver.clone(), self.timeout)
                })?)
            }
            other => return Err(format!("destination type {other:?} is not known to this dispatcher (upgrade it)")),
        };
        Ok(Arc::new(Destination { broker, spec }))
    }

    /// The connection (pool) to one broker, made if none is open: one per URL (credentials
    /// included), kept while a prepared subscription holds it.
    fn shared<T: Send + Sync + 'static>(
        &self,
        kind: &str,
        url: &str,
        make: impl FnOnce() -> Result<T, String>,
    ) -> Result<Arc<T>, String> {
        let key = (kind.to_owned(), url.to_owned());
        let mut open = self.open.lock().expect("brokers lock");
        if let Some(found) = open.get(&key).and_then(Weak::upgrade).and_then(|any| any.downcast::<T>().ok()) {
            return Ok(found);
        }
        let made = Arc::new(make()?);
        let erased: Arc<dyn std::any::Any + Send + Sync> = made.clone();
        open.retain(|_, held| held.strong_count() > 0);
        open.insert(key, Arc::downgrade(&erased));
        Ok(made)
    }
}

/// The TLS settings broker connections use: TLS 1.2 or 1.3, the broker's certificate checked
/// by the platform's verifier (the system's roots) and against `extra_roots` (`HERALD_CA_FILE`).
pub fn tls_config(extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>) -> anyhow::Result<BrokerTls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> =
        Arc::new(rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())?);
    let config = BrokerTls::builder(&provider, &verifier)?.with_no_client_auth();
    Ok(BrokerTls { provider, verifier, config: Arc::new(config) })
}

/// How broker certificates are checked, and the settings of connections that present no
/// certificate of their own; [`BrokerTls::with_identity`] makes those of a subscription that
/// presents one (mutual TLS).
#[derive(Clone)]
pub struct BrokerTls {
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    config: Arc<rustls::ClientConfig>,
}

impl BrokerTls {
    /// The settings of connections that present no certificate.
    pub(crate) fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    fn builder(
        provider: &Arc<rustls::crypto::CryptoProvider>,
        verifier: &Arc<dyn rustls::client::danger::ServerCertVerifier>,
    ) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, rustls::Error> {
        Ok(rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous() // not dangerous: the platform's verifier, which checks everything
            .with_custom_certificate_verifier(verifier.clone()))
    }

    /// The same checks, presenting the certificate chain and key of `pem` (the subscription's
    /// `client_certificate`, opened).
    pub(crate) fn with_identity(&self, pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("TLS: the subscription's client certificate does not parse: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("TLS: the subscription's client key does not parse: {e}"))?;
        let config = Self::builder(&self.provider, &self.verifier)
            .and_then(|b| b.with_client_auth_cert(chain, key))
            .map_err(|e| format!("TLS: the subscription's client certificate cannot be used: {e}"))?;
        Ok(Arc::new(config))
    }
}

/// A connection to a broker: TCP, or TLS over it.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Resolves broker hosts and keeps only the addresses the SSRF policy allows.
pub(crate) struct Resolver {
    policy: Arc<Policy>,
    overrides: Arc<HashMap<String, IpAddr>>,
    tls: Arc<rustls::ClientConfig>,
}

impl Resolver {
    /// The same guard and answers, connecting with `tls`.
    fn with_tls(&self, tls: Arc<rustls::ClientConfig>) -> Self {
        Self { policy: self.policy.clone(), overrides: self.overrides.clone(), tls }
    }

    /// The addresses `url`'s host may be reached at, checked.
    pub(crate) async fn addresses(&self, url: &url::Url) -> Result<Vec<SocketAddr>, Failure> {
        let port = dest::port(url);
        if let Some(ip) = dest::ip_literal(url) {
            return self.checked(vec![SocketAddr::new(ip, port)]);
        }
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.trim_end_matches('.').to_ascii_lowercase(),
            _ => return Err(Failure::new(ErrorClass::Refused, "the destination's URL has no host")),
        };
        if let Some(ip) = self.overrides.get(&host) {
            return self.checked(vec![SocketAddr::new(*ip, port)]);
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| {
                Failure::new(ErrorClass::Connection, format!("connection failed: cannot resolve {host}: {e}"))
            })?
            .collect();
        self.checked(found).map_err(|f| Failure { message: format!("{host}: {}", f.message), ..f })
    }

    fn checked(&self, addresses: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Failure> {
        self.policy.allowed(addresses).map_err(|r| Failure::new(ErrorClass::Refused, r.to_string()))
    }

    /// A connection to the first of `url`'s checked addresses that answers, over TLS if the
    /// URL's scheme asks for it (the certificate checked for the URL's host, whichever address
    /// answered).
    pub(crate) async fn connect(&self, url: &url::Url) -> Result<Stream, Failure> {
        let mut last = None;
        let mut connected = None;
        for address in self.addresses(url).await? {
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    connected = Some(stream);
                    break;
                }
                Err(e) => last = Some(format!("{address}: {e}")),
            }
        }
        let Some(tcp) = connected else {
            return Err(Failure::new(
                ErrorClass::Connection,
                format!("connection failed: {}", last.unwrap_or_default()),
            ));
        };
        if !dest::uses_tls(url) {
            return Ok(Stream::Plain(tcp));
        }
        let name = match dest::ip_literal(url) {
            Some(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
            None => {
                let host = url.host_str().unwrap_or_default().trim_end_matches('.').to_owned();
                rustls::pki_types::ServerName::try_from(host)
                    .map_err(|e| Failure::new(ErrorClass::Tls, format!("the broker's host is not a TLS name: {e}")))?
            }
        };
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| Failure::new(ErrorClass::Tls, format!("TLS handshake with the broker failed: {e}")))?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}
