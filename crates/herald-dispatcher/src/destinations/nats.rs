//! A subject on another NATS server (or the same one): each delivery is a JetStream publish,
//! confirmed by the stream's PubAck, when a stream captures the subject; when none does (the
//! server names no stream for it, or has no JetStream), a core publish flushed to the server.
//! Which it is, is asked of the server (`$JS.API.STREAM.NAMES` by subject) and remembered for
//! [`STREAM_CHECK_TTL`]: a JetStream publish to a subject that core subscribers listen on would
//! reach them and then wait for a PubAck that never comes. The webhook's headers
//! travel as NATS headers, with `Nats-Msg-Id` = `{event id}:{subscription id}` so a stream drops
//! a retry of a write whose PubAck was lost.
//!
//! The client connects to the addresses the SSRF guard allowed, ignores the servers a cluster
//! advertises (which the guard has not seen), and reconnects by itself after a restart. Over
//! TLS (`tls://`), it connects to the URL's host by name, so that the certificate is checked
//! for that name: the guard checks every address the name resolves to first, and the client
//! resolves it again (a name that then moved to a forbidden address would also need that
//! address to hold a certificate for the name). Credentials beyond the URL's user and password
//! or token are a credentials file or an NKey seed, given with the destination.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;

use herald_core::destination as dest;

use super::{Failure, Outgoing, Resolver};
use crate::retry::ErrorClass;

pub(crate) struct Nats {
    url: url::Url,
    /// A credentials file's contents or an NKey user seed, opened.
    credentials: Option<String>,
    resolver: Arc<Resolver>,
    timeout: Duration,
    client: tokio::sync::Mutex<Option<jetstream::Context>>,
    /// Whether a stream captures a subject, and since when that is known.
    streams: Mutex<HashMap<String, (bool, Instant)>>,
}

/// How long whether a subject is captured by a stream is taken as known.
const STREAM_CHECK_TTL: Duration = Duration::from_secs(30);
/// Subjects remembered at most (the map starts over beyond).
const STREAM_CHECKS_KEPT: usize = 10_000;

impl Nats {
    pub(crate) fn new(
        url: url::Url,
        credentials: Option<String>,
        resolver: Arc<Resolver>,
        timeout: Duration,
    ) -> Result<Self, String> {
        Ok(Self {
            url,
            credentials,
            resolver,
            timeout,
            client: tokio::sync::Mutex::default(),
            streams: Mutex::default(),
        })
    }

    /// Publishes to `subject`; `Ok` once the stream's PubAck (or, without a stream, the
    /// server's answer to a flush) came back.
    pub(crate) async fn publish(&self, subject: String, message: &Outgoing<'_>) -> Result<(), Failure> {
        let js = self.context().await?;
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in message.headers() {
            headers.insert(name, value);
        }
        headers.insert("Nats-Msg-Id", format!("{}:{}", message.id, message.subscription_id).as_str());
        let body = bytes::Bytes::copy_from_slice(message.body);
        if !self.captured(&js, &subject).await? {
            // No stream captures the subject: a core publish, confirmed by a flush (the
            // server has it; whoever subscribes now gets it).
            let client = js.client();
            client
                .publish_with_headers(subject, headers, body)
                .await
                .map_err(|e| Failure::new(ErrorClass::Connection, format!("connection to NATS failed: {e}")))?;
            return client
                .flush()
                .await
                .map_err(|e| Failure::new(ErrorClass::Connection, format!("NATS flush failed: {e}")));
        }
        let publish = jetstream::message::PublishMessage::build().payload(body).headers(headers);
        let acked = match js.send_publish(subject.clone(), publish).await {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        acked.map_err(|e| {
            let class = match e.kind() {
                PublishErrorKind::TimedOut => ErrorClass::Timeout,
                PublishErrorKind::BrokenPipe => ErrorClass::Connection,
                PublishErrorKind::StreamNotFound => {
                    // The stream went away: ask again next time.
                    self.streams.lock().expect("streams").remove(&subject);
                    ErrorClass::Broker
                }
                _ => ErrorClass::Broker,
            };
            Failure::new(class, format!("NATS refused the write: {e}"))
        })
    }

    /// True if a stream captures `subject` (asked of the server, remembered a while).
    async fn captured(&self, js: &jetstream::Context, subject: &str) -> Result<bool, Failure> {
        if let Some((captured, at)) = self.streams.lock().expect("streams").get(subject)
            && at.elapsed() < STREAM_CHECK_TTL
        {
            return Ok(*captured);
        }
        let captured = match js.stream_by_subject(subject).await {
            Ok(_) => true,
            Err(e) if e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound => false,
            // No JetStream on that server: nothing can capture it.
            Err(e) if ["no responders", "does not exist"].iter().any(|m| e.to_string().contains(m)) => false,
            Err(e) => {
                return Err(Failure::new(
                    ErrorClass::Connection,
                    format!("NATS did not say which stream takes {subject}: {e}"),
                ));
            }
        };
        let mut streams = self.streams.lock().expect("streams");
        if streams.len() >= STREAM_CHECKS_KEPT {
            streams.clear();
        }
        streams.insert(subject.to_owned(), (captured, Instant::now()));
        Ok(captured)
    }

    /// The connection, made on first use; later it reconnects by itself.
    async fn context(&self) -> Result<jetstream::Context, Failure> {
        let mut held = self.client.lock().await;
        if let Some(js) = &*held {
            return Ok(js.clone());
        }
        let addresses = self.resolver.addresses(&self.url).await?;
        let tls = dest::uses_tls(&self.url);
        let servers: Vec<async_nats::ServerAddr> = if tls {
            let host = match dest::ip_literal(&self.url) {
                Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
                Some(ip) => ip.to_string(),
                None => self.url.host_str().unwrap_or_default().to_owned(),
            };
            format!("tls://{host}:{}", dest::port(&self.url)).parse().into_iter().collect()
        } else {
            addresses.iter().filter_map(|a| format!("nats://{a}").parse().ok()).collect()
        };
        let mut options = async_nats::ConnectOptions::new()
            .name("herald-dispatcher")
            .connection_timeout(self.timeout)
            .ignore_discovered_servers();
        if tls {
            options = options.require_tls(true).tls_client_config(self.resolver.tls.as_ref().clone());
        }
        match dest::credentials(&self.url) {
            (Some(user), Some(password)) => options = options.user_and_password(user, password),
            (Some(token), None) => options = options.token(token),
            _ => {}
        }
        match self.credentials.as_deref().map(dest::nats_credentials) {
            None => {}
            Some(Ok(dest::NatsCredentials::Seed(seed))) => options = options.nkey(seed),
            Some(Ok(dest::NatsCredentials::File(file))) => {
                options = options.credentials(&file).map_err(|e| {
                    Failure::new(ErrorClass::Auth, format!("the destination's NATS credentials do not parse: {e}"))
                })?;
            }
            Some(Err(e)) => return Err(Failure::new(ErrorClass::Auth, e.message)),
        }
        let client = options.connect(servers).await.map_err(|e| {
            let class = match e.kind() {
                async_nats::ConnectErrorKind::AuthorizationViolation | async_nats::ConnectErrorKind::Authentication => {
                    ErrorClass::Auth
                }
                async_nats::ConnectErrorKind::TimedOut => ErrorClass::Timeout,
                async_nats::ConnectErrorKind::Tls => ErrorClass::Tls,
                // A certificate refused in the handshake comes back as an I/O error.
                _ if e.to_string().contains("certificate") => ErrorClass::Tls,
                _ => ErrorClass::Connection,
            };
            Failure::new(class, format!("connection to NATS failed: {e}"))
        })?;
        let mut js = jetstream::new(client);
        js.set_timeout(self.timeout);
        *held = Some(js.clone());
        Ok(js)
    }
}
