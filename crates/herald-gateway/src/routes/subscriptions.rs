//! `/v1/subscriptions`: create (the secret is shown once), list (paged, by tenant), read, patch
//! and delete. Stored as protobuf in the `herald-subscriptions` bucket under `{tenant}.{id}`.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use prost::Message as _;
use serde::{Deserialize, Serialize};

use herald_core::ids::{SubscriptionId, TenantId};
use herald_core::subscription::{self as validate, InvalidField};
use herald_core::{client_cert, nats, proto};

use super::endpoint_auth::{self, AuthInput};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::{AppState, Body, Query};

mod target;
mod view;

use target::{DestinationInput, Target};
pub(crate) use view::View;
use view::still_signs;

/// A filter given through the API, checked, as it is stored: canonical JSON, or empty for none
/// (`null` or `{}`).
fn stored_filter(given: Option<&serde_json::Value>) -> Result<String, ApiError> {
    match given {
        None | Some(serde_json::Value::Null) => Ok(String::new()),
        Some(value) => {
            let filter = super::filters::parse_filter(value)?;
            Ok(if filter.is_empty() { String::new() } else { value.to_string() })
        }
    }
}

/// A transformation given through the API, checked (it compiles and defines `handler`), as it
/// is stored: empty for none.
fn stored_transformation(given: Option<&str>) -> Result<String, ApiError> {
    match given {
        None | Some("") => Ok(String::new()),
        Some(source) => {
            super::transformations::checked(source)?;
            Ok(source.to_owned())
        }
    }
}

/// A client certificate as a user gives it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateInput {
    /// PEM: the subscription's certificate first, then any intermediates.
    certificate: String,
    /// PEM, unencrypted (PKCS#8, PKCS#1 or SEC1). Stored sealed; never returned.
    private_key: String,
}

impl CertificateInput {
    fn seal(&self, state: &AppState, subscription_id: &str) -> Result<proto::ClientCertificate, ApiError> {
        let checked = client_cert::check(&self.certificate, &self.private_key, time::OffsetDateTime::now_utc())
            .map_err(field_error)?;
        Ok(checked.seal(subscription_id, &state.keys))
    }
}

/// `Some(value)` for a field that is present, `null` included (`Some(None)`); with
/// `#[serde(default)]`, `None` for an absent field.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Validates a subscriber URL and, where its host is an IP literal, checks it against the SSRF
/// policy now rather than at the first delivery.
fn checked_url(state: &AppState, text: &str) -> Result<String, ApiError> {
    let url = validate::validate_url(text).map_err(field_error)?;
    let parsed = url::Url::parse(&url).map_err(|e| ApiError::invalid(Some("url"), format!("url: {e}")))?;
    state.policy.check_url(&parsed).map_err(|r| ApiError::invalid(Some("url"), format!("url: {r}")))?;
    Ok(url)
}

fn field_error(e: InvalidField) -> ApiError {
    ApiError::invalid(Some(e.field), e.to_string())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateInput {
    /// The webhook URL (or give `destination`).
    url: Option<String>,
    /// A broker to write deliveries to instead of POSTing them.
    destination: Option<DestinationInput>,
    event_types: Vec<String>,
    tenant: Option<String>,
    description: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    rate_limit: Option<u32>,
    max_in_flight: Option<u32>,
    enabled: Option<bool>,
    retry_schedule: Option<String>,
    /// `fifo` or `unordered` (the default).
    ordering: Option<String>,
    /// A payload filter: only events it matches are delivered (see `POST /v1/filters/test`).
    #[schema(value_type = Option<Object>)]
    filter: Option<serde_json::Value>,
    /// `hmac-sha256` (the default) or `ed25519`.
    signature_scheme: Option<String>,
    /// A `whsec_` secret or `whsk_` signing key to use instead of a generated one (e.g. when
    /// migrating).
    secret: Option<String>,
    /// A client certificate for subscribers that require one (mutual TLS).
    client_certificate: Option<CertificateInput>,
    /// A JavaScript function `handler(webhook)` run on each delivery before it is signed
    /// (Svix's signature; see `POST /v1/transformations/test`).
    transformation: Option<String>,
    /// How webhooks authenticate to the endpoint besides the signature: an OAuth2 client
    /// credentials token, HTTP Basic or a static bearer token.
    auth: Option<AuthInput>,
}

/// `POST /v1/subscriptions`.
#[utoipa::path(post, path = "/v1/subscriptions", tag = "subscriptions", request_body = CreateInput,
    responses((status = 201, description = "Created; the secret is shown only here", body = View), crate::error::Problems), security(("bearer" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<(StatusCode, Json<View>), ApiError> {
    caller.limit_fields(&body.0, &caller.endpoint_fields())?;
    let input: CreateInput = body.json()?;
    if let Some(d) = &input.destination {
        caller.require_destination(&d.kind)?;
    }
    let tenant = match (&input.tenant, caller.own_tenant()) {
        (Some(t), _) => {
            TenantId::parse(t).map_err(|e| ApiError::invalid(Some("tenant"), format!("tenant: {}", e.0)))?
        }
        (None, Some(own)) => TenantId::parse(own).map_err(|e| ApiError::invalid(Some("tenant"), e.0))?,
        (None, None) => TenantId::default_tenant(),
    };
    caller.require_tenant(tenant.as_str())?;
    let target = Target::of(&state, input.url.as_deref(), input.destination.as_ref())?;
    validate::validate_event_types(&input.event_types).map_err(field_error)?;
    let headers = validate::validate_headers(input.headers).map_err(field_error)?;
    validate::validate_metadata(&input.metadata).map_err(field_error)?;
    let description = input.description.unwrap_or_default();
    validate::validate_description(&description).map_err(field_error)?;
    let ordering = validate::validate_ordering(input.ordering.as_deref().unwrap_or("")).map_err(field_error)?;
    validate::validate_limits(input.max_in_flight.unwrap_or(0), input.rate_limit.unwrap_or(0)).map_err(field_error)?;
    let retry_schedule = match &input.retry_schedule {
        Some(s) => validate::validate_retry_schedule(s).map_err(field_error)?,
        None => String::new(),
    };
    let signer =
        validate::new_signer(input.signature_scheme.as_deref(), input.secret.as_deref()).map_err(field_error)?;
    let filter = stored_filter(input.filter.as_ref())?;
    let transformation = stored_transformation(input.transformation.as_deref())?;

    let now = herald_core::now_rfc3339();
    let id = SubscriptionId::generate().into_string();
    let client_certificate = input.client_certificate.as_ref().map(|c| c.seal(&state, &id)).transpose()?;
    let mut sub = proto::Subscription {
        tenant: tenant.into_string(),
        event_types: input.event_types,
        enabled: input.enabled.unwrap_or(true),
        description,
        headers,
        metadata: input.metadata,
        secrets: vec![validate::stored_secret(&signer, &id, &state.keys, String::new())],
        client_certificate,
        id,
        created_at: now.clone(),
        updated_at: now,
        rate_limit: input.rate_limit.unwrap_or(0),
        max_in_flight: input.max_in_flight.unwrap_or(0),
        retry_schedule,
        ordering,
        filter,
        transformation,
        ..Default::default()
    };
    target.apply(&state, &mut sub);
    sub.auth = input.auth.as_ref().map(|a| a.stored(&state, &sub)).transpose()?;
    endpoint_auth::check_combination(&sub)?;
    super::polling::check_subscription(&sub)?;
    target::check_client_certificate(&sub)?;
    let key = nats::subscription_key(&sub.tenant, &sub.id);
    let revision = state.kv.create(&key, sub.encode_to_vec().into()).await.map_err(|e| kv_error("store", e))?;
    state.registry.upsert(revision, sub.clone());
    tracing::info!(id = %sub.id, tenant = %sub.tenant, url = %sub.url, "subscription created");
    let mut view = View::of(&sub);
    if let herald_signature::Signer::Hmac(secret) = &signer {
        view.secret = Some(secret.to_text());
    }
    Ok((StatusCode::CREATED, Json(view)))
}

fn kv_error(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "subscription {what} failed");
    ApiError::unavailable(format!("could not {what} the subscription in NATS ({e}); retry later"))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    tenant: Option<String>,
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Page {
    data: Vec<View>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// `GET /v1/subscriptions?tenant=&limit=&after=`: ordered by creation, 50 a page by default.
#[utoipa::path(get, path = "/v1/subscriptions", tag = "subscriptions", params(ListQuery),
    responses((status = 200, description = "A page, oldest first", body = Page), crate::error::Problems), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let subs = match (&q.tenant, caller.tenant_limit()) {
        (Some(t), _) => {
            TenantId::parse(t).map_err(|e| ApiError::invalid(Some("tenant"), format!("tenant: {}", e.0)))?;
            caller.require_tenant(t)?;
            state.registry.list(Some(t), q.after.as_deref(), limit + 1)
        }
        (None, None) => state.registry.list(None, q.after.as_deref(), limit + 1),
        (None, Some(tenants)) => match tenants.as_slice() {
            [one] => state.registry.list(Some(one), q.after.as_deref(), limit + 1),
            [] => return Err(ApiError::forbidden("listing subscriptions needs `admin` or a `tenant:<id>` scope")),
            _ => return Err(ApiError::invalid(Some("tenant"), "this token covers several tenants: pass ?tenant=")),
        },
    };
    let next = (subs.len() > limit).then(|| subs[limit - 1].id.clone());
    Ok(Json(Page { data: subs.iter().take(limit).map(|s| View::of(s)).collect(), next }))
}

/// Finds a subscription's key and current entry, checking the caller may see it.
pub(crate) async fn locate(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(String, kv::Entry, proto::Subscription), ApiError> {
    locate_where(state, caller.own_tenant(), id, |sub| caller.may_manage(&sub.tenant)).await
}

/// Finds a subscription's key and current entry (in `tenant` if given, else in any), if
/// `visible` lets the caller see it; 404 otherwise, as for one that does not exist.
pub(crate) async fn locate_where(
    state: &AppState,
    tenant: Option<&str>,
    id: &str,
    visible: impl Fn(&proto::Subscription) -> bool,
) -> Result<(String, kv::Entry, proto::Subscription), ApiError> {
    let missing = || ApiError::not_found(format!("there is no subscription {id:?}"));
    SubscriptionId::parse(id).map_err(|_| missing())?;
    // A tenant's caller looks in its tenant alone; an admin in every tenant.
    let known = match tenant {
        Some(tenant) => state.registry.get(tenant, id),
        None => state.registry.find(id),
    };
    let key = match known {
        Some(sub) => nats::subscription_key(&sub.tenant, &sub.id),
        // Not seen by this replica yet (created moments ago elsewhere, or another tenant's):
        // ask the bucket's stream which key ends in this id.
        None => {
            let prefix = format!("$KV.{}.", nats::SUBSCRIPTIONS_BUCKET);
            let stream = state
                .js
                .get_stream(format!("KV_{}", nats::SUBSCRIPTIONS_BUCKET))
                .await
                .map_err(|e| kv_error("read", e))?;
            let mut subjects =
                stream.info_with_subjects(format!("{prefix}*.{id}")).await.map_err(|e| kv_error("read", e))?;
            let found = futures::StreamExt::next(&mut subjects).await.transpose().map_err(|e| kv_error("read", e))?;
            let subject = found.map(|(subject, _)| subject).ok_or_else(missing)?;
            subject.strip_prefix(&prefix).ok_or_else(missing)?.to_owned()
        }
    };
    let entry = state.kv.entry(&key).await.map_err(|e| kv_error("read", e))?.ok_or_else(missing)?;
    if entry.operation != kv::Operation::Put {
        return Err(missing());
    }
    let sub = proto::Subscription::decode(entry.value.as_ref()).map_err(ApiError::internal)?;
    if !visible(&sub) {
        // Do not reveal that another tenant's subscription exists.
        return Err(missing());
    }
    Ok((key, entry, sub))
}

/// `GET /v1/subscriptions/{id}`.
#[utoipa::path(get, path = "/v1/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path, description = "Subscription id (sub_…)")), 
    responses((status = 200, description = "The subscription", body = View), crate::error::Problems), security(("bearer" = [])))]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<View>, ApiError> {
    let (_, _, sub) = locate(&state, &caller, &id).await?;
    Ok(Json(View::of(&sub)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchInput {
    /// A webhook URL: the subscription becomes (or stays) a webhook.
    url: Option<String>,
    /// A new destination, replacing the current one.
    destination: Option<DestinationInput>,
    event_types: Option<Vec<String>>,
    enabled: Option<bool>,
    description: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    metadata: Option<BTreeMap<String, String>>,
    rate_limit: Option<u32>,
    max_in_flight: Option<u32>,
    /// An empty string returns to the deployment's schedule.
    retry_schedule: Option<String>,
    ordering: Option<String>,
    /// A new payload filter; `{}` or `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>, nullable)]
    filter: Option<Option<serde_json::Value>>,
    /// A new client certificate and key, replacing the current one; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CertificateInput>, nullable)]
    client_certificate: Option<Option<CertificateInput>>,
    /// A new transformation; `null` (or `""`) removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable)]
    transformation: Option<Option<String>>,
    /// New endpoint authentication, replacing the current one (leave its secret out to keep the
    /// stored one); `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<AuthInput>, nullable)]
    auth: Option<Option<AuthInput>>,
}

impl PatchInput {
    fn apply(&self, state: &AppState, sub: &mut proto::Subscription) -> Result<(), ApiError> {
        if self.url.is_some() || self.destination.is_some() {
            Target::of(state, self.url.as_deref(), self.destination.as_ref())?.apply(state, sub);
        }
        if let Some(types) = &self.event_types {
            validate::validate_event_types(types).map_err(field_error)?;
            sub.event_types = types.clone();
        }
        if let Some(enabled) = self.enabled {
            sub.enabled = enabled;
            if enabled {
                // A person re-enabled it: forget why Herald had disabled it.
                sub.disabled_reason.clear();
                sub.failing_since.clear();
            }
        }
        if let Some(r) = &self.retry_schedule {
            sub.retry_schedule =
                if r.is_empty() { String::new() } else { validate::validate_retry_schedule(r).map_err(field_error)? };
        }
        if let Some(d) = &self.description {
            validate::validate_description(d).map_err(field_error)?;
            sub.description = d.clone();
        }
        if let Some(h) = &self.headers {
            sub.headers = validate::validate_headers(h.clone()).map_err(field_error)?;
        }
        if let Some(m) = &self.metadata {
            validate::validate_metadata(m).map_err(field_error)?;
            sub.metadata = m.clone();
        }
        if let Some(r) = self.rate_limit {
            sub.rate_limit = r;
        }
        if let Some(m) = self.max_in_flight {
            sub.max_in_flight = m;
        }
        validate::validate_limits(sub.max_in_flight, sub.rate_limit).map_err(field_error)?;
        if let Some(o) = &self.ordering {
            sub.ordering = validate::validate_ordering(o).map_err(field_error)?;
        }
        if let Some(filter) = &self.filter {
            sub.filter = stored_filter(filter.as_ref())?;
        }
        if let Some(transformation) = &self.transformation {
            sub.transformation = stored_transformation(transformation.as_deref())?;
        }
        if let Some(certificate) = &self.client_certificate {
            sub.client_certificate = certificate.as_ref().map(|c| c.seal(state, &sub.id)).transpose()?;
        }
        if let Some(auth) = &self.auth {
            sub.auth = auth.as_ref().map(|a| a.stored(state, sub)).transpose()?;
        }
        endpoint_auth::check_combination(sub)?;
        super::polling::check_subscription(sub)?;
        target::check_client_certificate(sub)?;
        sub.updated_at = herald_core::now_rfc3339();
        Ok(())
    }
}

/// `PATCH /v1/subscriptions/{id}`: changes the given fields; a concurrent change is retried on
/// top of the newer version.
#[utoipa::path(patch, path = "/v1/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path, description = "Subscription id (sub_…)")), request_body = PatchInput,
    responses((status = 200, description = "Changed", body = View),
        (status = 409, description = "Concurrent changes", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::Problems), security(("bearer" = [])))]
pub(crate) async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<View>, ApiError> {
    caller.limit_fields(&body.0, &caller.endpoint_fields())?;
    let input: PatchInput = body.json()?;
    if let Some(d) = &input.destination {
        caller.require_destination(&d.kind)?;
    }
    let sub = modify(&state, &caller, &id, |sub| input.apply(&state, sub)).await?;
    tracing::info!(id = %sub.id, enabled = sub.enabled, "subscription updated");
    Ok(Json(View::of(&sub)))
}

/// Reads the subscription, applies `change` and writes it back only if nobody wrote in between
/// (compare-and-set on the KV revision), starting over from a fresh read up to five times.
async fn modify(
    state: &AppState,
    caller: &Caller,
    id: &str,
    mut change: impl FnMut(&mut proto::Subscription) -> Result<(), ApiError>,
) -> Result<proto::Subscription, ApiError> {
    for _ in 0..5 {
        let (key, entry, mut sub) = locate(state, caller, id).await?;
        change(&mut sub)?;
        match state.kv.update(&key, sub.encode_to_vec().into(), entry.revision).await {
            Ok(revision) => {
                state.registry.upsert(revision, sub.clone());
                return Ok(sub);
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(kv_error("update", e)),
        }
    }
    Err(ApiError::conflict("the subscription kept changing concurrently; retry"))
}

/// `DELETE /v1/subscriptions/{id}`: no further deliveries are made to it.
#[utoipa::path(delete, path = "/v1/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path, description = "Subscription id (sub_…)")), 
    responses((status = 204, description = "Deleted"), crate::error::Problems), security(("bearer" = [])))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (key, _, sub) = locate(&state, &caller, &id).await?;
    state.kv.delete(&key).await.map_err(|e| kv_error("delete", e))?;
    state.registry.remove(&sub.tenant, &sub.id);
    super::polling::forget(&state, &sub).await;
    tracing::info!(id = %sub.id, tenant = %sub.tenant, "subscription deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateInput {
    /// How long the old secret keeps signing alongside the new one (default `24h`; `0s` ends it
    /// at once).
    grace: Option<String>,
    /// The new key's scheme, `hmac-sha256` or `ed25519`; by default the current one's. Changing
    /// it is how a subscription moves to the other scheme: during the grace period each webhook
    /// carries both a `v1` and a `v1a` signature.
    signature_scheme: Option<String>,
    /// A `whsec_` secret or `whsk_` key to use instead of a generated one.
    secret: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Rotated {
    id: String,
    signature_scheme: &'static str,
    /// The new `whsec_` secret (`hmac-sha256`), shown only here.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// The new `whpk_` public key (`ed25519`); also on the subscription.
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    /// Until when the previous secret also signs.
    previous_expires_at: String,
}

/// `POST /v1/subscriptions/{id}/rotate-secret`: a new secret signs from now on; the previous
/// one signs alongside it for the grace period, so receivers can switch without losing a
/// webhook. Older secrets whose grace ended are dropped.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/rotate-secret", tag = "subscriptions", params(("id" = String, Path, description = "Subscription id (sub_…)")), request_body(content = RotateInput, content_type = "application/json"),
    responses((status = 200, description = "The new secret, shown only here", body = Rotated),
        (status = 409, description = "Concurrent changes", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::Problems), security(("bearer" = [])))]
pub(crate) async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Rotated>, ApiError> {
    caller.limit_fields(&body.0, &[])?;
    let input: RotateInput = if body.0.is_empty() { RotateInput::default() } else { body.json()? };
    let grace = herald_core::runtime::parse_duration(input.grace.as_deref().unwrap_or("24h"))
        .map_err(|e| ApiError::invalid(Some("grace"), format!("grace: {e}")))?;
    if grace > std::time::Duration::from_secs(30 * 86_400) {
        return Err(ApiError::invalid(Some("grace"), "grace: at most 30d"));
    }
    let now = time::OffsetDateTime::now_utc();
    let expires_at = herald_core::rfc3339(now + grace);
    let mut new_signer = None;
    let sub = modify(&state, &caller, &id, |sub| {
        // The current scheme unless told otherwise (known only once the subscription is read).
        let scheme = input.signature_scheme.as_deref().or_else(|| {
            input.secret.is_none().then(|| sub.secrets.first().map_or(validate::HMAC_SHA256, validate::scheme_of))
        });
        let signer = validate::new_signer(scheme, input.secret.as_deref()).map_err(field_error)?;
        let mut secrets: Vec<proto::SigningSecret> = Vec::with_capacity(sub.secrets.len() + 1);
        secrets.push(validate::stored_secret(&signer, &sub.id, &state.keys, String::new()));
        new_signer = Some(signer);
        for mut old in sub.secrets.drain(..).filter(|s| still_signs(s, now)) {
            if old.expires_at.is_empty() {
                old.expires_at = expires_at.clone();
            }
            if !grace.is_zero() {
                secrets.push(old);
            }
        }
        sub.secrets = secrets;
        sub.updated_at = herald_core::rfc3339(now);
        Ok(())
    })
    .await?;
    tracing::info!(id = %sub.id, grace = ?grace, "subscription secret rotated");
    let signer = new_signer.expect("set by the change that was written");
    Ok(Json(Rotated {
        id: sub.id,
        signature_scheme: sub.secrets.first().map_or(validate::HMAC_SHA256, validate::scheme_of),
        secret: match &signer {
            herald_signature::Signer::Hmac(secret) => Some(secret.to_text()),
            herald_signature::Signer::Ed25519(_) => None,
        },
        public_key: signer.public_key().map(|k| k.to_text()),
        previous_expires_at: expires_at,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TestSent {
    /// The `herald.ping` event's id (its `webhook-id`); follow it in the attempts.
    event_id: String,
}

/// `POST /v1/subscriptions/{id}/test`: sends a `herald.ping` event to this subscription alone
/// (it is not stored as an event, so no other subscription sees it), signed and retried like
/// any delivery.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/test", tag = "subscriptions", params(("id" = String, Path, description = "Subscription id")),
    responses((status = 202, description = "Queued for delivery", body = TestSent),
        (status = 401, description = "No or unknown token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "NATS unavailable; retry", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn test(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TestSent>), ApiError> {
    let (_, _, sub) = locate(&state, &caller, &id).await?;
    let event = proto::Event {
        id: herald_core::ids::EventId::generate().into_string(),
        r#type: "herald.ping".into(),
        tenant: sub.tenant.clone(),
        source: "herald".into(),
        time: herald_core::now_rfc3339(),
        data: serde_json::to_vec(
            &serde_json::json!({"subscription_id": sub.id, "message": "test webhook from Herald"}),
        )
        .unwrap_or_default(),
    };
    let (subject, publish) = nats::first_delivery(
        state.partitions,
        &event,
        0,
        &sub,
        &herald_core::telemetry::Carrier::of(Some(&herald_core::trace::new_traceparent())),
    );
    let ack = state.js.send_publish(subject, publish).await.map_err(|e| kv_error("queue a test for", e))?;
    ack.await.map_err(|e| kv_error("queue a test for", e))?;
    Ok((StatusCode::ACCEPTED, Json(TestSent { event_id: event.id })))
}
