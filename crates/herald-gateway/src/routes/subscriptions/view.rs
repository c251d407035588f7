//! A subscription as the API shows it: never a secret, a signing key, a broker's password or a
//! client key.

use std::collections::BTreeMap;

use serde::Serialize;

use herald_core::subscription as validate;
use herald_core::{destination, proto};

use super::super::endpoint_auth::AuthView;

/// A subscription as the API shows it. The secret appears only in the answer to its creation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct View {
    id: String,
    tenant: String,
    /// The webhook URL; for a broker destination, the broker's URL without its password.
    url: String,
    /// Where deliveries go when not POSTed to `url`: a broker (absent for a webhook).
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<DestinationView>,
    event_types: Vec<String>,
    enabled: bool,
    description: String,
    headers: BTreeMap<String, String>,
    metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_in_flight: Option<u32>,
    /// Absent when the deployment's schedule applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_schedule: Option<String>,
    /// `fifo` when delivered strictly in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    ordering: Option<String>,
    /// The payload filter: only events it matches are delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    filter: Option<serde_json::Value>,
    /// The JavaScript transformation run on each delivery (`handler(webhook)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    transformation: Option<String>,
    /// How webhooks authenticate to the endpoint besides the signature (its secret is never
    /// shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<AuthView>,
    /// Why Herald disabled it, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<String>,
    /// `hmac-sha256` (`v1`) or `ed25519` (`v1a`): how webhooks are signed now.
    signature_scheme: &'static str,
    /// The `whpk_` public key subscribers verify with, when the scheme is `ed25519`.
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    /// Every Ed25519 public key that still signs, newest first: during a rotation's grace
    /// period the previous one signs beside the current one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    public_keys: Vec<PublicKeyView>,
    /// The client certificate presented to the subscriber (mutual TLS); its key is never shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_certificate: Option<CertificateView>,
    created_at: String,
    updated_at: String,
    /// The `whsec_` secret: only in the answer to the creation of an `hmac-sha256` subscription.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) secret: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PublicKeyView {
    public_key: String,
    /// Absent for the current key.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CertificateView {
    /// The certificate's subject (RFC 4514).
    subject: String,
    /// When it expires (RFC 3339); replace it before then.
    not_after: String,
    /// SHA-256 of the certificate (DER), hex.
    fingerprint_sha256: String,
}

/// A broker destination as the API shows it: its URL without the password.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DestinationView {
    /// `amqp`, `nats` or `redis`.
    #[serde(rename = "type")]
    kind: String,
    /// The broker's URL without its password.
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    exchange: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routing_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_len: Option<u64>,
    /// NATS: `true` when the destination has credentials (a credentials file or an NKey
    /// seed), which are never shown.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    credentials: bool,
}

impl DestinationView {
    fn of(sub: &proto::Subscription) -> Option<Self> {
        let d = sub.destination.as_ref()?;
        let amqp = d.r#type == destination::AMQP;
        let text = |v: &String, applies: bool| applies.then(|| v.clone());
        Some(Self {
            kind: d.r#type.clone(),
            url: shown_url(sub),
            exchange: text(&d.exchange, amqp),
            routing_key: text(&d.routing_key, amqp),
            subject: text(&d.subject, d.r#type == destination::NATS),
            stream: text(&d.stream, d.r#type == destination::REDIS),
            max_len: (d.max_len > 0).then_some(d.max_len),
            credentials: !d.credentials.is_empty(),
        })
    }
}

impl View {
    pub(super) fn of(sub: &proto::Subscription) -> Self {
        Self {
            id: sub.id.clone(),
            tenant: sub.tenant.clone(),
            url: shown_url(sub),
            destination: DestinationView::of(sub),
            event_types: sub.event_types.clone(),
            enabled: sub.enabled,
            description: sub.description.clone(),
            headers: sub.headers.clone(),
            metadata: sub.metadata.clone(),
            rate_limit: (sub.rate_limit > 0).then_some(sub.rate_limit),
            max_in_flight: (sub.max_in_flight > 0).then_some(sub.max_in_flight),
            retry_schedule: (!sub.retry_schedule.is_empty()).then(|| sub.retry_schedule.clone()),
            disabled_reason: (!sub.disabled_reason.is_empty()).then(|| sub.disabled_reason.clone()),
            ordering: (!sub.ordering.is_empty()).then(|| sub.ordering.clone()),
            filter: serde_json::from_str(&sub.filter).ok(),
            transformation: (!sub.transformation.is_empty()).then(|| sub.transformation.clone()),
            auth: AuthView::of(sub),
            signature_scheme: sub.secrets.first().map_or(validate::HMAC_SHA256, validate::scheme_of),
            public_key: sub.secrets.first().filter(|s| !s.public_key.is_empty()).map(|s| s.public_key.clone()),
            public_keys: sub
                .secrets
                .iter()
                .filter(|s| !s.public_key.is_empty() && still_signs(s, time::OffsetDateTime::now_utc()))
                .map(|s| PublicKeyView {
                    public_key: s.public_key.clone(),
                    expires_at: (!s.expires_at.is_empty()).then(|| s.expires_at.clone()),
                })
                .collect(),
            client_certificate: sub.client_certificate.as_ref().map(|c| CertificateView {
                subject: c.subject.clone(),
                not_after: c.not_after.clone(),
                fingerprint_sha256: c.fingerprint_sha256.clone(),
            }),
            created_at: sub.created_at.clone(),
            updated_at: sub.updated_at.clone(),
            secret: None,
        }
    }
}

/// The URL the API shows: a polling subscription's is where it is polled.
fn shown_url(sub: &proto::Subscription) -> String {
    if herald_core::polling::is_polling(sub) { format!("/v1/subscriptions/{}/poll", sub.id) } else { sub.url.clone() }
}

/// True if a stored secret still signs at `now` (current, or rotated out and in its grace).
pub(super) fn still_signs(s: &proto::SigningSecret, now: time::OffsetDateTime) -> bool {
    s.expires_at.is_empty()
        || time::OffsetDateTime::parse(&s.expires_at, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|t| t > now)
}
