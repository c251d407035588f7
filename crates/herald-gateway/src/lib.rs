//! Herald's HTTP gateway: takes events and writes them durably to NATS JetStream (answering 202
//! only after the PubAck), and manages subscriptions in the `herald-subscriptions` KV bucket.
//! Stateless: run as many replicas as the load needs.
//!
//! # Layout
//! - [`Config`]: flags and `HERALD_*` variables; [`run`]: serve until the shutdown future.
//! - [`auth`]: bearer tokens and scopes; [`error`]: problem+json errors.
//! - `serve.rs`: the HTTP server loop, with header timeouts and a bounded shutdown.
//! - `routes/events.rs`, `routes/subscriptions.rs`, `routes/health.rs`: one file per resource.
#![forbid(unsafe_code)]

pub mod auth;
pub mod error;
mod limits;
pub mod openapi;
pub(crate) mod routes;
mod scan;
mod serve;
pub mod session;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use bytes::Bytes;
use tokio::net::TcpListener;

use herald_core::nats;
use herald_core::registry::Registry;

use crate::auth::Tokens;
use crate::error::ApiError;

/// Gateway settings. Every flag has a `HERALD_*` variable; defaults suit local use.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "herald-gateway", version, about = "Herald's HTTP gateway: event ingest and subscription management")]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(long, env = "HERALD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// API tokens, `scope=token` comma-separated (scopes: admin, publish, tenant:<id>). Prefer
    /// HERALD_TOKENS_FILE or the environment to a flag, which other users can see.
    #[arg(long, env = "HERALD_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,
    /// File of API tokens, one `scope=token` per line.
    #[arg(long, env = "HERALD_TOKENS_FILE")]
    pub tokens_file: Option<std::path::PathBuf>,
    /// Largest request body accepted, in bytes (`256KiB`, `1MiB` and plain numbers work).
    #[arg(long, env = "HERALD_MAX_BODY", default_value = "256KiB", value_parser = parse_size)]
    pub max_body: usize,
    /// Most events in one `POST /v1/events/batch`.
    #[arg(long, env = "HERALD_MAX_BATCH", default_value_t = 100)]
    pub max_batch: usize,
    /// How long a client may take to send a request's headers; a connection that sends half a
    /// request (or nothing, or sits idle between requests) is closed after it.
    #[arg(long, env = "HERALD_HEADER_TIMEOUT", default_value = "10s", value_parser = herald_core::runtime::parse_duration)]
    pub header_timeout: Duration,
    /// On SIGTERM, how long requests in progress may take to finish before the connections
    /// still open are closed.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE", default_value = "10s", value_parser = herald_core::runtime::parse_duration)]
    pub shutdown_grace: Duration,
    /// How long to wait for JetStream to acknowledge a write before answering 503.
    #[arg(long, env = "HERALD_PUBLISH_TIMEOUT", default_value = "5s", value_parser = herald_core::runtime::parse_duration)]
    pub publish_timeout: Duration,
    /// How far back delivery statistics reach (`/v1/stats`, the console): kept per minute for
    /// the last hour and per hour for this window, read back from the streams on start.
    #[arg(long, env = "HERALD_STATS_WINDOW", default_value = "24h", value_parser = herald_core::runtime::parse_duration)]
    pub stats_window: Duration,
    /// Tenants with statistics of their own, at most: beyond, new names are counted together
    /// as `(other)` (and in `herald_stats_tenants_capped_total`).
    #[arg(long, env = "HERALD_STATS_MAX_TENANTS", default_value_t = stats::DEFAULT_MAX_TENANTS)]
    pub stats_max_tenants: usize,
    /// The tenant of Herald's operational events (as the dispatchers are given it); the console
    /// learns open circuits from its `circuit.*` events. Empty: none.
    #[arg(long, env = "HERALD_OPERATOR_TENANT", default_value = "herald")]
    pub operator_tenant: String,
    /// Serve the console (`/console/`) and the portal (`/portal/`).
    #[arg(long, env = "HERALD_CONSOLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub console: bool,
    /// The gateway's address as browsers reach it (e.g. `https://webhooks.example.com`): portal
    /// links point there, and `https` makes session cookies `Secure`. Unset: the request's host.
    #[arg(long, env = "HERALD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How long a console sign-in lasts (at most 24h).
    #[arg(long, env = "HERALD_CONSOLE_SESSION_TTL", default_value = "12h", value_parser = herald_core::runtime::parse_duration)]
    pub console_session_ttl: Duration,
    /// Origins allowed to frame the portal, space- or comma-separated
    /// (`https://app.example.com`); the gateway's own origin always may.
    #[arg(long, env = "HERALD_PORTAL_FRAME_ANCESTORS", default_value = "", value_parser = routes::pages::check_frame_ancestors)]
    pub portal_frame_ancestors: String,
    /// `lax`: the portal works stand-alone and framed by a page of the same site; `none`: also
    /// framed by another site (needs HTTPS; the cookie is `Secure; Partitioned`).
    #[arg(long, env = "HERALD_PORTAL_COOKIE_SAMESITE", value_enum, default_value = "lax")]
    pub portal_cookie_samesite: session::SameSite,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: herald_core::CommonArgs,
}

/// Parses a byte size: `262144`, `256KiB`, `1MiB` (also `KB`/`MB`, read as binary).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("{text:?} is not a size (try 262144, 256KiB or 1MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        u => return Err(format!("{text:?} has an unknown unit {u:?} (use KiB or MiB)")),
    };
    n.checked_mul(mult).filter(|&n| n > 0).ok_or_else(|| format!("{text:?} is out of range"))
}

/// What every handler shares. One `Arc`: axum clones the state for every request (several
/// times), and the NATS handles inside are costly to clone.
#[derive(Clone)]
pub struct AppState(Arc<Handles>);

impl std::ops::Deref for AppState {
    type Target = Handles;
    fn deref(&self) -> &Handles {
        &self.0
    }
}

/// The handles behind [`AppState`].
pub struct Handles {
    pub(crate) js: jetstream::Context,
    pub(crate) kv: jetstream::kv::Store,
    pub(crate) client: async_nats::Client,
    pub(crate) tokens: Arc<auth::TokenStore>,
    pub(crate) registry: Arc<Registry>,
    /// The event-type catalog and its bucket.
    pub(crate) catalog: Arc<herald_core::catalog::Catalog>,
    pub(crate) catalog_kv: jetstream::kv::Store,
    /// Console and portal sessions.
    pub(crate) sessions: jetstream::kv::Store,
    /// Inbound webhook sources, followed from their bucket.
    pub(crate) sources: Arc<routes::sources::Sources>,
    pub(crate) sources_kv: jetstream::kv::Store,
    /// How far each polling subscription's consumer acknowledged.
    pub(crate) poll_cursors: jetstream::kv::Store,
    pub(crate) config: Arc<Config>,
    pub(crate) policy: Arc<herald_core::ssrf::Policy>,
    /// Seals signing secrets before they are stored.
    pub(crate) keys: Arc<herald_core::secrets::KeyRing>,
    /// Delivery statistics, kept as deliveries happen.
    pub(crate) stats: Arc<stats::Stats>,
    /// Until when attempt records of the per-event layout may be retained.
    pub(crate) legacy_records_until: Option<time::OffsetDateTime>,
    /// How many partitions new events and deliveries are spread over.
    pub(crate) partitions: nats::Partitions,
    /// Every partition with streams: [`Handles::partitions`]' and any left to drain.
    pub(crate) in_use: Vec<nats::Partition>,
    /// The pages' Content-Security-Policies.
    pub(crate) policies: routes::pages::Policies,
    /// Rate limits of sign-ins, portal links and scans.
    pub(crate) limits: limits::Limits,
}

impl Handles {
    /// The partitions holding the events of `tenants` (`*`: of every tenant), each with those
    /// tenants.
    pub(crate) fn event_partitions(&self, tenants: &[String]) -> Vec<(nats::Partition, Vec<String>)> {
        if tenants.iter().any(|t| t == "*") {
            return self.in_use.iter().map(|p| (*p, vec!["*".to_owned()])).collect();
        }
        let mut by: std::collections::BTreeMap<nats::Partition, Vec<String>> = Default::default();
        for tenant in tenants {
            by.entry(self.partitions.of_tenant(tenant)).or_default().push(tenant.clone());
        }
        by.into_iter().collect()
    }
}

/// Loads the tokens from the configuration (variable and file together).
pub fn load_tokens(config: &Config) -> anyhow::Result<Tokens> {
    let mut text = config.tokens.clone().unwrap_or_default();
    if let Some(path) = &config.tokens_file {
        let file = std::fs::read_to_string(path)
            .with_context(|| format!("HERALD_TOKENS_FILE: cannot read {}", path.display()))?;
        text.push('\n');
        text.push_str(&file);
    }
    Tokens::parse(&text).map_err(|e| anyhow::anyhow!("HERALD_TOKENS: {e}"))
}

/// Connects to NATS, creates what is missing, and serves on `listener` until `shutdown`
/// resolves; in-flight requests are then finished.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tokens = Arc::new(auth::TokenStore::new(load_tokens(&config)?));
    let policies = routes::pages::Policies::new(&config.portal_frame_ancestors)?;
    let keys = Arc::new(config.common.keys.load()?);
    if tokens.current().is_empty() {
        tracing::warn!(
            "no API tokens configured (HERALD_TOKENS / HERALD_TOKENS_FILE): every authenticated route answers 401"
        );
    }
    let client = config.common.connect("herald-gateway").await?;
    let js = jetstream::ContextBuilder::new().timeout(config.publish_timeout).build(client.clone());
    let topology = config.common.topology.topology();
    let handles =
        nats::until_ready("streams and the subscriptions bucket", || nats::ensure_streams(&js, &topology)).await?;

    let replicas = topology.replicas;
    let sessions = nats::until_ready("the sessions bucket", || async {
        session::ensure(&js, replicas)
            .await
            .map_err(|detail| nats::BootstrapError::Create { what: format!("KV bucket {}", session::BUCKET), detail })
    })
    .await?;

    let sources_kv = nats::until_ready("the sources bucket", || async {
        routes::sources::ensure(&js, replicas).await.map_err(|detail| nats::BootstrapError::Create {
            what: format!("KV bucket {}", routes::sources::BUCKET),
            detail,
        })
    })
    .await?;

    let poll_cursors = nats::until_ready("the poll cursors bucket", || async {
        js.create_or_update_key_value(herald_core::polling::cursors_config(replicas)).await.map_err(|e| {
            nats::BootstrapError::Create {
                what: format!("KV bucket {}", herald_core::polling::CURSORS_BUCKET),
                detail: e.to_string(),
            }
        })
    })
    .await?;

    let registry = Registry::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    let follow = tokio::spawn(registry.clone().follow(handles.subscriptions.clone(), cancel.clone().cancelled_owned()));
    let reload = tokio::spawn(reload_tokens(config.clone(), tokens.clone(), cancel.clone()));
    let sources = routes::sources::Sources::new(keys.clone());
    let follow_sources = tokio::spawn(herald_core::registry::follow(
        sources.clone(),
        sources_kv.clone(),
        cancel.clone().cancelled_owned(),
    ));
    let catalog = herald_core::catalog::Catalog::new();
    let follow_catalog = tokio::spawn(herald_core::registry::follow(
        catalog.clone(),
        handles.event_types.clone(),
        cancel.clone().cancelled_owned(),
    ));

    let stats = stats::Stats::new(config.stats_window.max(Duration::from_secs(3600)));
    stats.cap_tenants(config.stats_max_tenants);
    let stats_tasks = stats::spawn(
        stats.clone(),
        js.clone(),
        config.operator_tenant.clone(),
        topology.partitions,
        keys.clone(),
        registry.clone(),
        cancel.clone(),
    );

    let state = AppState(Arc::new(Handles {
        stats,
        legacy_records_until: handles.legacy_records_until,
        partitions: topology.partitions,
        in_use: handles.in_use,
        policies,
        limits: Default::default(),
        js,
        kv: handles.subscriptions,
        client,
        tokens: tokens.clone(),
        registry,
        catalog,
        catalog_kv: handles.event_types,
        sessions,
        sources,
        sources_kv,
        poll_cursors,
        keys,
        policy: Arc::new(config.common.ssrf_policy()),
        config: Arc::new(config),
    }));
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let bounds = serve::Bounds { header_timeout: state.config.header_timeout, grace: state.config.shutdown_grace };
    serve::serve(listener, router(state), bounds, shutdown).await?;
    cancel.cancel();
    let _ = follow.await;
    let _ = follow_catalog.await;
    let _ = follow_sources.await;
    let _ = reload.await;
    for task in stats_tasks {
        let _ = task.await;
    }
    Ok(())
}

/// Reloads the tokens on SIGHUP, and when the tokens file changes (checked every few seconds),
/// so tokens are added and revoked without a restart. A file that fails to parse is reported
/// and the tokens in force stay.
async fn reload_tokens(config: Config, store: Arc<auth::TokenStore>, cancel: tokio_util::sync::CancellationToken) {
    let modified = |config: &Config| {
        config.tokens_file.as_ref().and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    };
    let mut seen = modified(&config);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<()>();
        let why = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = hup => "SIGHUP",
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                let now = modified(&config);
                if now == seen {
                    continue;
                }
                seen = now;
                "the tokens file changed"
            }
        };
        match load_tokens(&config) {
            Ok(tokens) => {
                store.replace(tokens);
                tracing::info!(why, "API tokens reloaded");
            }
            Err(e) => tracing::error!(why, error = %e, "API tokens not reloaded; the previous ones stay in force"),
        }
    }
}

/// All routes.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body;
    routes::router()
        .fallback(|| async { ApiError::not_found("no such route; see the README for the API") })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(request_log))
        .with_state(state)
}

/// Gives every request an id (the caller's `X-Request-Id`, or a fresh one), runs it inside a
/// span carrying that id (so every log line of the request has it), answers it in
/// `X-Request-Id`, and logs the request's outcome.
async fn request_log(mut req: Request, next: axum::middleware::Next) -> axum::response::Response {
    use tracing::Instrument as _;
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| ulid::Ulid::new().to_string());
    let id_header = axum::http::HeaderValue::from_str(&id).ok();
    if let Some(value) = &id_header {
        req.headers_mut().insert("x-request-id", value.clone());
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let started = std::time::Instant::now();
    let incoming = herald_core::telemetry::Carrier::read(|k| req.headers().get(k).and_then(|v| v.to_str().ok()));
    let span = if herald_core::telemetry::traced(&incoming) {
        // The request's server span: named by its route (never by ids in the path), a child of
        // the caller's trace context.
        let route = req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_owned());
        let route = route.unwrap_or_else(|| "unmatched".to_owned());
        let span = tracing::info_span!("request", otel.name = %format_args!("{method} {route}"), otel.kind = "server",
            http.request.method = %method, http.route = %route, http.response.status_code = tracing::field::Empty,
            request_id = %id, trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
        herald_core::telemetry::set_parent(&span, &incoming);
        span
    } else {
        tracing::info_span!("request", request_id = %id, %method, %path)
    };
    let mut res = next.run(req).instrument(span.clone()).await;
    let status = res.status().as_u16();
    if herald_core::telemetry::sampled(&span) {
        span.record("http.response.status_code", i64::from(status));
        herald_core::telemetry::set_outcome(
            &span,
            (status >= 500).then(|| res.status().as_str().to_owned()).as_deref(),
        );
    }
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, elapsed_ms = started.elapsed().as_millis() as u64, "request failed");
        } else {
            tracing::debug!(status, elapsed_ms = started.elapsed().as_millis() as u64, "request");
        }
    });
    if let Some(value) = id_header {
        res.headers_mut().insert("x-request-id", value);
    }
    res
}

/// The raw request body, with size and read errors turned into problem+json.
pub(crate) struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(rejection) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::too_large("the body exceeds the gateway's limit (HERALD_MAX_BODY)"))
            }
            Err(rejection) => Err(ApiError::invalid(None, rejection.body_text())),
        }
    }
}

/// Query parameters, with parse errors turned into problem+json.
pub(crate) struct Query<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|rejection| ApiError::invalid(None, rejection.body_text()))
    }
}

impl Body {
    /// Parses the body as `T`, naming the JSON error.
    pub(crate) fn json<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.0).map_err(|e| ApiError::malformed_json(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256KiB").unwrap(), 262_144);
        assert_eq!(parse_size("1MiB").unwrap(), 1_048_576);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").is_err());
    }
}
