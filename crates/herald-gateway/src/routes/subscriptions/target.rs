//! Where a subscription's deliveries go, as a user gives it (`url`, or `destination`) and as it
//! is checked: a webhook URL, a broker, or nobody (polling).

use serde::Deserialize;

use herald_core::{destination, proto};

use super::{checked_url, field_error};
use crate::AppState;
use crate::error::ApiError;

/// A destination as a user gives it: `{"type": "amqp", "url": …, "exchange": …,
/// "routing_key": …}`, `{"type": "nats", "url": …, "subject": …}`, `{"type": "redis", "url":
/// …, "stream": …, "max_len": …}`, `{"type": "polling"}` (not pushed to: its consumer polls
/// `GET /v1/subscriptions/{id}/poll`), or `{"type": "webhook", "url": …}` (the same as `url`).
/// Routing keys, subjects and stream keys may hold `{event_type}`, `{tenant}` and
/// `{subscription_id}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DestinationInput {
    #[serde(rename = "type")]
    pub(super) kind: String,
    /// The broker's URL, credentials included (stored sealed, never shown again):
    /// `amqp://user:pass@host:5672/vhost`, `nats://user:pass@host:4222` (or `nats://token@…`),
    /// `redis://:pass@host:6379/0` (a server, or any node of a Redis Cluster),
    /// `redis+sentinel://:pass@sentinel:26379/master[/db]?sentinel=host:port` (through Sentinel);
    /// `amqps://`, `tls://`, `rediss://` and `rediss+sentinel://` for TLS, the broker's
    /// certificate checked against the platform's roots and `HERALD_CA_FILE`. None for
    /// `polling`.
    url: Option<String>,
    /// AMQP: the exchange (default `""`, the default exchange).
    exchange: Option<String>,
    /// AMQP: the routing key template (default `{event_type}`).
    routing_key: Option<String>,
    /// NATS: the subject template.
    subject: Option<String>,
    /// Redis: the stream key template.
    stream: Option<String>,
    /// Redis: trim the stream to about this many entries (`MAXLEN ~`).
    max_len: Option<u64>,
    /// NATS: a credentials file's contents (user JWT and NKey seed, as `nsc` writes them) or
    /// an NKey user seed (`SU…`). Stored sealed, never shown again.
    credentials: Option<String>,
}

/// Where a subscription's deliveries go, as given (`url`, or `destination`) and checked.
pub(super) enum Target {
    Webhook(String),
    Broker(destination::Checked),
    Polling,
}

impl DestinationInput {
    /// True if any field only a broker takes is given.
    fn has_broker_fields(&self) -> bool {
        self.exchange.is_some()
            || self.routing_key.is_some()
            || self.subject.is_some()
            || self.stream.is_some()
            || self.max_len.is_some()
            || self.credentials.is_some()
    }
}

impl Target {
    pub(super) fn of(state: &AppState, url: Option<&str>, given: Option<&DestinationInput>) -> Result<Self, ApiError> {
        match (url, given) {
            (Some(_), Some(_)) => {
                Err(ApiError::invalid(Some("destination"), "give either `url` (a webhook) or `destination`, not both"))
            }
            (None, None) => Err(ApiError::invalid(Some("url"), "url: a subscription needs a `url` or a `destination`")),
            (Some(url), None) => Ok(Self::Webhook(checked_url(state, url)?)),
            (None, Some(d)) if d.kind == destination::POLLING => {
                if d.url.is_some() || d.has_broker_fields() {
                    return Err(ApiError::invalid(Some("destination"), "destination: polling takes only `type`"));
                }
                Ok(Self::Polling)
            }
            (None, Some(d)) if d.kind == destination::WEBHOOK => {
                if d.has_broker_fields() {
                    return Err(ApiError::invalid(Some("destination"), "destination: a webhook takes only `url`"));
                }
                Ok(Self::Webhook(checked_url(state, d.url.as_deref().unwrap_or_default())?))
            }
            (None, Some(d)) => {
                let checked = destination::validate(&destination::Given {
                    kind: d.kind.clone(),
                    url: d.url.clone().unwrap_or_default(),
                    exchange: d.exchange.clone(),
                    routing_key: d.routing_key.clone(),
                    subject: d.subject.clone(),
                    stream: d.stream.clone(),
                    max_len: d.max_len,
                    credentials: d.credentials.clone(),
                })
                .map_err(field_error)?;
                let url = url::Url::parse(&checked.destination.url)
                    .map_err(|e| ApiError::invalid(Some("destination"), format!("destination: {e}")))?;
                destination::check_literal_host(&state.policy, &url)
                    .map_err(|r| ApiError::invalid(Some("destination"), format!("destination: url: {r}")))?;
                Ok(Self::Broker(checked))
            }
        }
    }

    /// Sets `sub`'s `url` and `destination`.
    pub(super) fn apply(self, state: &AppState, sub: &mut proto::Subscription) {
        match self {
            Self::Webhook(url) => {
                sub.url = url;
                sub.destination = None;
            }
            Self::Broker(checked) => {
                sub.url = checked.shown_url.clone();
                sub.destination = Some(checked.sealed(&sub.id, &state.keys));
            }
            Self::Polling => {
                sub.url = String::new();
                sub.destination =
                    Some(proto::Destination { r#type: destination::POLLING.into(), ..Default::default() });
            }
        }
    }
}

/// Refuses a client certificate that a broker destination could never present: one reached
/// without TLS (its URL is `amqp://`, `nats://` or `redis://`).
pub(super) fn check_client_certificate(sub: &proto::Subscription) -> Result<(), ApiError> {
    let Some(d) = &sub.destination else { return Ok(()) };
    if sub.client_certificate.is_none() || d.r#type == destination::POLLING {
        return Ok(());
    }
    let tls = url::Url::parse(&sub.url).is_ok_and(|u| destination::uses_tls(&u));
    if tls {
        return Ok(());
    }
    Err(ApiError::invalid(
        Some("client_certificate"),
        format!(
            "client_certificate: a {} broker is presented one only over TLS; use amqps://, tls:// or rediss://",
            d.r#type
        ),
    ))
}
