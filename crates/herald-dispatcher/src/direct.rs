//! Webhooks straight to subscribers on hyper's pooled HTTP/1.1 client, over the SSRF guard's
//! resolver and rustls: the same connection pool, TLS and HTTP code reqwest is built on,
//! without reqwest's layers, which cost a tenth of a delivery's CPU (a redirect policy that
//! parses the URL whether or not it follows anything, the URL parsed again from the response,
//! a retry layer, boxed futures). Behaves as the reqwest client did: no redirects followed, a
//! timeout over the whole exchange, connections kept per host, TCP_NODELAY and keep-alive.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::http_client::{self, BoxError, GuardedResolver, Sent, WebhookRequest};
use crate::retry::{AttemptResult, ErrorClass};

/// The SSRF guard as hyper's resolver.
#[derive(Clone)]
pub(crate) struct Dns(pub(crate) Arc<GuardedResolver>);

type Lookup = Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<std::net::SocketAddr>, BoxError>> + Send>>;

impl tower_service::Service<Name> for Dns {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = BoxError;
    type Future = Lookup;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(self.0.lookup(name.as_str()))
    }
}

/// A pool of connections to subscribers, cheap to clone (clones share it).
#[derive(Clone)]
pub struct Direct {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector<Dns>>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").field("timeout", &self.timeout).finish()
    }
}

/// Why an exchange got no answer.
enum Failed {
    Client(hyper_util::client::legacy::Error),
    Uri(hyper::http::uri::InvalidUri),
}

impl Direct {
    /// `tls` checks subscribers' certificates (and may present one); at most `concurrency`
    /// idle connections are kept per host, 90 s each.
    pub(crate) fn new(dns: Dns, tls: rustls::ClientConfig, timeout: Duration, concurrency: usize) -> Self {
        let mut http = HttpConnector::new_with_resolver(dns);
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        http.set_keepalive(Some(Duration::from_secs(15)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(concurrency.max(1))
            .pool_timer(TokioTimer::new())
            .build(https);
        Self { client, timeout }
    }

    /// Sends the webhook and reads at most `excerpt_limit` bytes of the answer, all within the
    /// timeout.
    pub(crate) async fn send(&self, req: WebhookRequest<'_>, excerpt_limit: usize) -> Sent {
        let started = Instant::now();
        let (result, response_excerpt) =
            match tokio::time::timeout(self.timeout, self.exchange(req, excerpt_limit)).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(Failed::Client(e))) => (http_client::classify(&e, timed_out(&e), e.is_connect()), String::new()),
                Ok(Err(Failed::Uri(e))) => {
                    let why = format!("request failed: the URL is not a request URI: {e}");
                    (
                        AttemptResult { error: Some(why), class: Some(ErrorClass::Request), ..Default::default() },
                        String::new(),
                    )
                }
                Err(_) => {
                    let why = format!("timed out: no complete answer within {} ms", self.timeout.as_millis());
                    (
                        AttemptResult { error: Some(why), class: Some(ErrorClass::Timeout), ..Default::default() },
                        String::new(),
                    )
                }
            };
        Sent { result, response_excerpt, elapsed: started.elapsed() }
    }

    async fn exchange(&self, req: WebhookRequest<'_>, excerpt_limit: usize) -> Result<(AttemptResult, String), Failed> {
        let uri = hyper::Uri::try_from(req.url.as_str()).map_err(Failed::Uri)?;
        let mut request = hyper::Request::new(Full::new(Bytes::from(req.body)));
        *request.method_mut() = req.method;
        *request.uri_mut() = uri;
        *request.headers_mut() = req.headers;
        let response = self.client.request(request).await.map_err(Failed::Client)?;
        let status = response.status().as_u16();
        let retry_after = http_client::retry_after(status, response.headers());
        let excerpt = http_client::excerpt(response.into_body(), excerpt_limit).await;
        Ok(http_client::answered(status, retry_after, &excerpt))
    }
}

/// Whether the connection timed out (hyper's connect timeout is an `io::Error` of that kind
/// somewhere down the chain).
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        source = s.source();
    }
    false
}
