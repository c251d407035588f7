//! Inbound webhooks. `/v1/sources` (admin) manages sources: URLs that providers (Stripe,
//! GitHub, Shopify, Standard Webhooks senders, or one configured by hand) are set up to call.
//! `POST /in/{source_id}` is that URL: a request whose signature (or credentials) checks out is
//! stored as an event of the source's tenant, answered `202` only after the PubAck, and fanned
//! out like any event; one that does not is refused `401` with the reason, counted, and never
//! stored. Sources are kept as protobuf in the `herald-sources` bucket, their secrets sealed;
//! each gateway follows the bucket into memory, so a request costs no lookup.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, kv, stream};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use herald_core::inbound;
use herald_core::metrics::INBOUND_REQUESTS;
use herald_core::proto::Source;
use herald_core::registry::KvView;
use herald_core::secrets::KeyRing;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::events::{self, Accepted};
use crate::{AppState, Body, Query};

/// The bucket sources are kept in, keyed by id.
pub const BUCKET: &str = "herald-sources";

/// Creates (or updates) the sources bucket.
pub async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, String> {
    let config = kv::Config {
        bucket: BUCKET.into(),
        description: "Herald: inbound webhook sources, keyed by id".into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    js.create_or_update_key_value(config).await.map_err(|e| e.to_string())
}

/// The sources, their secrets open, as the bucket holds them now.
pub struct Sources {
    keys: Arc<KeyRing>,
    by_id: RwLock<HashMap<String, (u64, Arc<Source>)>>,
}

impl Sources {
    pub fn new(keys: Arc<KeyRing>) -> Arc<Self> {
        Arc::new(Self { keys, by_id: RwLock::default() })
    }

    /// `stored` with its secret open; `None` (and a warning) if the keys cannot open it.
    fn opened(&self, mut stored: Source) -> Option<Source> {
        match self.keys.open(&stored.id, &stored.secret) {
            Ok(secret) => {
                stored.secret = secret;
                Some(stored)
            }
            Err(e) => {
                tracing::warn!(source = %stored.id, error = %e, "a source's secret does not open with the configured keys; its requests are refused");
                None
            }
        }
    }

    fn upsert(&self, revision: u64, source: Source) {
        let mut by_id = self.by_id.write().expect("sources lock");
        if by_id.get(&source.id).is_none_or(|(r, _)| *r <= revision) {
            by_id.insert(source.id.clone(), (revision, Arc::new(source)));
        }
    }

    fn get(&self, id: &str) -> Option<Arc<Source>> {
        self.by_id.read().expect("sources lock").get(id).map(|(_, s)| s.clone())
    }

    fn list(&self, tenant: Option<&str>) -> Vec<Arc<Source>> {
        let mut all: Vec<_> = self
            .by_id
            .read()
            .expect("sources lock")
            .values()
            .map(|(_, s)| s.clone())
            .filter(|s| tenant.is_none_or(|t| s.tenant == t))
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}

impl KvView for Sources {
    fn apply(&self, entry: &kv::Entry) -> bool {
        match entry.operation {
            kv::Operation::Put => match Source::decode(entry.value.as_ref()) {
                Ok(s) if s.id == entry.key => {
                    if let Some(open) = self.opened(s) {
                        self.upsert(entry.revision, open);
                    }
                }
                Ok(_) => tracing::warn!(key = %entry.key, "a source's key disagrees with its id; ignored"),
                Err(e) => tracing::warn!(key = %entry.key, error = %e, "undecodable source; ignored"),
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                self.by_id.write().expect("sources lock").remove(&entry.key);
            }
        }
        true
    }

    fn retain_only(&self, seen: &HashSet<String>, snapshot_revision: u64) {
        self.by_id.write().expect("sources lock").retain(|id, (r, _)| *r > snapshot_revision || seen.contains(id));
    }

    fn is_empty(&self) -> bool {
        self.by_id.read().expect("sources lock").is_empty()
    }

    fn loaded(&self) {
        tracing::info!(sources = self.by_id.read().expect("sources lock").len(), "inbound sources loaded");
    }
}

/// A source as the API shows it: never its secret, but on creation the one Herald made.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SourceView {
    id: String,
    tenant: String,
    provider: String,
    /// Where the provider sends its webhooks.
    url: String,
    /// The events' type; `""`: the provider's (`{type}` stands for it in a template).
    event_type: String,
    description: String,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tolerance_seconds: Option<u32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    header: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    algorithm: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    encoding: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    prefix: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    id_header: String,
    /// Only in the answer to a creation without a `secret`: the one Herald made (configure the
    /// provider with it). Never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl SourceView {
    fn of(s: &Source, base: &str) -> Self {
        Self {
            id: s.id.clone(),
            tenant: s.tenant.clone(),
            provider: s.provider.clone(),
            url: format!("{base}/in/{}", s.id),
            event_type: s.event_type.clone(),
            description: s.description.clone(),
            created_at: s.created_at.clone(),
            tolerance_seconds: (s.tolerance_seconds > 0).then_some(s.tolerance_seconds),
            header: s.header.clone(),
            algorithm: s.algorithm.clone(),
            encoding: s.encoding.clone(),
            prefix: s.prefix.clone(),
            username: s.username.clone(),
            id_header: s.id_header.clone(),
            secret: None,
        }
    }
}

/// A new source.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceInput {
    /// `stripe`, `github`, `shopify`, `standard-webhooks`, `hmac`, `basic` or `api-key`.
    provider: String,
    /// The provider's signing secret (Stripe's `whsec_…`, GitHub's and Shopify's secret, a
    /// Standard Webhooks `whsec_…` secret or `whpk_…` public key), the `basic` password or the
    /// `api-key` key. Omitted: Herald makes one and shows it once. Stored sealed.
    secret: Option<String>,
    /// Whose events these are (default `default`).
    tenant: Option<String>,
    /// The events' type: omitted takes the provider's (`type` in the body, `X-GitHub-Event`,
    /// `X-Shopify-Topic` with `/` as `.`); may hold `{type}` for it (`stripe.{type}`).
    event_type: Option<String>,
    description: Option<String>,
    /// Stripe and Standard Webhooks: how far the signed timestamp may be from now (default 300).
    tolerance_seconds: Option<u32>,
    /// `hmac`: the signature's header (default `x-signature`); `api-key`: the key's (default
    /// `x-api-key`).
    header: Option<String>,
    /// `hmac`: `sha256` (default), `sha512` or `sha1`.
    algorithm: Option<String>,
    /// `hmac`: `hex` (default) or `base64`.
    encoding: Option<String>,
    /// `hmac`: what precedes the signature in its header (`sha256=`).
    prefix: Option<String>,
    /// `basic`: the user name.
    username: Option<String>,
    /// `hmac`, `basic`, `api-key`: the header carrying the provider's delivery id (else the
    /// body's `id`), so that a retry is recognised.
    id_header: Option<String>,
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_admin() { Ok(()) } else { Err(ApiError::forbidden("managing inbound sources needs `admin`")) }
}

fn kv_error(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "source {what} failed");
    ApiError::unavailable(format!("could not {what} the source in NATS ({e}); retry later"))
}

/// `POST /v1/sources`.
#[utoipa::path(post, path = "/v1/sources", tag = "sources", request_body = SourceInput,
    responses((status = 201, description = "Created; `url` is what the provider calls", body = SourceView), crate::error::Problems),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<SourceView>), ApiError> {
    require_admin(&caller)?;
    let input: SourceInput = body.json()?;
    let made_secret = input.secret.is_none();
    let mut source = inbound::validate(&inbound::Given {
        provider: input.provider,
        secret: input.secret,
        tenant: input.tenant,
        event_type: input.event_type,
        description: input.description,
        tolerance_seconds: input.tolerance_seconds,
        header: input.header,
        algorithm: input.algorithm,
        encoding: input.encoding,
        prefix: input.prefix,
        username: input.username,
        id_header: input.id_header,
    })
    .map_err(|e| ApiError::invalid(Some(e.field), e.message))?;
    let operator = &state.config.operator_tenant;
    if !operator.is_empty() && source.tenant == *operator {
        return Err(ApiError::invalid(
            Some("tenant"),
            format!("tenant: {operator:?} is the operator tenant: only Herald's dispatchers publish its events"),
        ));
    }
    source.id = inbound::new_id();
    source.created_at = herald_core::now_rfc3339();
    let secret = std::mem::take(&mut source.secret);
    let mut stored = source.clone();
    stored.secret = state.keys.seal(&source.id, &secret);
    let revision =
        state.sources_kv.create(&source.id, stored.encode_to_vec().into()).await.map_err(|e| kv_error("store", e))?;
    source.secret = secret;
    let mut view = SourceView::of(&source, &crate::routes::sessions::base_url(&state, &headers));
    if made_secret {
        view.secret = Some(source.secret.clone());
    }
    state.sources.upsert(revision, source);
    tracing::info!(source = %view.id, provider = %view.provider, tenant = %view.tenant, "source created");
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only this tenant's sources.
    tenant: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SourcePage {
    data: Vec<SourceView>,
}

/// `GET /v1/sources?tenant=`: every source (of a tenant), by id.
#[utoipa::path(get, path = "/v1/sources", tag = "sources", params(ListQuery),
    responses((status = 200, description = "The sources, by id", body = SourcePage), crate::error::Problems), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<SourcePage>, ApiError> {
    require_admin(&caller)?;
    let base = crate::routes::sessions::base_url(&state, &headers);
    let data = state.sources.list(q.tenant.as_deref()).iter().map(|s| SourceView::of(s, &base)).collect();
    Ok(Json(SourcePage { data }))
}

async fn locate(state: &AppState, id: &str) -> Result<Arc<Source>, ApiError> {
    let missing = || ApiError::not_found(format!("there is no source {id:?}"));
    if !inbound::is_id(id) {
        return Err(missing());
    }
    if let Some(found) = state.sources.get(id) {
        return Ok(found);
    }
    // Made by another gateway a moment ago, and not yet seen here.
    let entry = state.sources_kv.entry(id).await.map_err(|e| kv_error("read", e))?.ok_or_else(missing)?;
    if entry.operation != kv::Operation::Put {
        return Err(missing());
    }
    let stored = Source::decode(entry.value.as_ref()).map_err(ApiError::internal)?;
    let open = state.sources.opened(stored).ok_or_else(|| {
        ApiError::unavailable("the source's secret does not open with this gateway's keys (HERALD_SECRET_KEYS)")
    })?;
    state.sources.upsert(entry.revision, open);
    state.sources.get(id).ok_or_else(missing)
}

/// `GET /v1/sources/{id}`.
#[utoipa::path(get, path = "/v1/sources/{id}", tag = "sources", params(("id" = String, Path, description = "Source id")),
    responses((status = 200, description = "The source", body = SourceView), crate::error::Problems), security(("bearer" = [])))]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<SourceView>, ApiError> {
    require_admin(&caller)?;
    let source = locate(&state, &id).await?;
    Ok(Json(SourceView::of(&source, &crate::routes::sessions::base_url(&state, &headers))))
}

/// `DELETE /v1/sources/{id}`: its URL refuses requests from then on (`404`).
#[utoipa::path(delete, path = "/v1/sources/{id}", tag = "sources", params(("id" = String, Path, description = "Source id")),
    responses((status = 204, description = "Deleted"), crate::error::Problems), security(("bearer" = [])))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&caller)?;
    locate(&state, &id).await?;
    state.sources_kv.delete(&id).await.map_err(|e| kv_error("delete", e))?;
    state.sources.by_id.write().expect("sources lock").remove(&id);
    tracing::info!(source = %id, "source deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The provider's name as a metric label.
fn provider_label(source: Option<&Source>) -> &'static str {
    source.and_then(|s| inbound::PROVIDERS.iter().find(|p| **p == s.provider)).copied().unwrap_or("unknown")
}

/// `POST /in/{id}`: a provider's webhook. No token: the provider's signature (or credentials)
/// is the authentication.
#[utoipa::path(post, path = "/in/{id}", tag = "sources", params(("id" = String, Path, description = "Source id")),
    request_body(content = String, description = "The provider's body, as it sends it, with its own headers"),
    responses((status = 202, description = "Stored durably; fanned out like any event", body = Accepted),
        (status = 401, description = "The signature or credentials do not check out; not stored", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        crate::error::Problems))]
pub(crate) async fn receive(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Body, ApiError>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let source = match locate(&state, &id).await {
        Ok(s) => s,
        Err(e) => {
            INBOUND_REQUESTS.inc(&["unknown", "unknown_source"]);
            return Err(e);
        }
    };
    let provider = provider_label(Some(&source));
    let result = take(&state, &source, &headers, body).await;
    let outcome = match &result {
        Ok(a) if a.duplicate => "duplicate",
        Ok(_) => "accepted",
        Err((_, Some(reason))) => reason,
        Err((e, None)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        Err((e, None)) if e.status() == StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        Err(_) => "invalid",
    };
    INBOUND_REQUESTS.inc(&[provider, outcome]);
    let accepted = result.map_err(|(e, _)| e)?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Checks and stores one request; an error carries the refusal's reason when it is one.
async fn take(
    state: &AppState,
    source: &Source,
    headers: &HeaderMap,
    body: Result<Body, ApiError>,
) -> Result<Accepted, (ApiError, Option<&'static str>)> {
    let body = body.map_err(|e| (e, None))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let verified = inbound::verify(source, header, &body.0, now).map_err(|refusal| {
        tracing::debug!(source = %source.id, reason = refusal.reason, "inbound request refused");
        (ApiError::unauthorized(refusal.message), Some(refusal.reason))
    })?;
    let event =
        inbound::event(source, &verified, &body.0).map_err(|e| (ApiError::invalid(Some(e.field), e.message), None))?;
    let store = async {
        events::check_schema(state, &event)?;
        events::ensure_connected(state)?;
        let sent_at = std::time::Instant::now();
        let ack = events::send(state, &event, None).await?;
        events::confirm(&event, ack, sent_at).await
    };
    let accepted = store.await.map_err(|e| (e, None))?;
    tracing::debug!(source = %source.id, id = %accepted.id, duplicate = accepted.duplicate, "inbound event stored");
    Ok(accepted)
}
