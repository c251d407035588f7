//! Subscriptions: validation of what users set, matching events against them, and the secrets
//! that sign their webhooks.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::pattern::{self, TypePattern};
use crate::proto;

/// Headers Herald sets itself, which a subscription's own headers may not override.
pub const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "traceparent",
    "tracestate",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "connection",
    "transfer-encoding",
];

/// A field of a subscription that was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    /// The JSON field at fault.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidField {
    InvalidField { field, message: message.into() }
}

/// Validates a subscriber URL: absolute `http` or `https`, with a host, no credentials.
pub fn validate_url(text: &str) -> Result<String, InvalidField> {
    if text.len() > 2048 {
        return Err(invalid("url", "must be at most 2048 characters"));
    }
    let url = url::Url::parse(text).map_err(|e| invalid("url", format!("{text:?} is not an absolute URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("url", format!("scheme {:?} is not supported; use https (or http)", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("url", "has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("url", "must not carry credentials; use the subscription's headers instead"));
    }
    Ok(url.to_string())
}

/// Validates the type patterns: 1 to 100 of them, each a valid [`TypePattern`].
pub fn validate_event_types(patterns: &[String]) -> Result<(), InvalidField> {
    if patterns.is_empty() {
        return Err(invalid(
            "event_types",
            "must list at least one type pattern (e.g. [\"order.*\"] or [\">\"] for all)",
        ));
    }
    if patterns.len() > 100 {
        return Err(invalid("event_types", "may list at most 100 patterns"));
    }
    for p in patterns {
        TypePattern::parse(p).map_err(|e| invalid("event_types", e.0))?;
    }
    Ok(())
}

/// Validates custom headers: at most 20, RFC 9110 token names, not one of [`RESERVED_HEADERS`],
/// values without control characters. Names are lower-cased.
pub fn validate_headers(headers: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, InvalidField> {
    if headers.len() > 20 {
        return Err(invalid("headers", "may hold at most 20 headers"));
    }
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        let token =
            !lower.is_empty() && lower.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(invalid("headers", format!("{name:?} is not a valid header name")));
        }
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(invalid("headers", format!("{name:?} is set by Herald and cannot be overridden")));
        }
        if value.len() > 4096 || value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(invalid(
                "headers",
                format!("the value of {name:?} has control characters or is over 4096 bytes"),
            ));
        }
        out.insert(lower, value);
    }
    Ok(out)
}

/// Validates metadata: at most 50 entries, keys up to 64 chars, values up to 1024.
pub fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<(), InvalidField> {
    if metadata.len() > 50 {
        return Err(invalid("metadata", "may hold at most 50 entries"));
    }
    if let Some((k, _)) = metadata.iter().find(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 1024) {
        return Err(invalid("metadata", format!("entry {k:?}: keys are 1 to 64 characters, values at most 1024")));
    }
    Ok(())
}

/// Validates a description (at most 1024 characters).
pub fn validate_description(text: &str) -> Result<(), InvalidField> {
    if text.len() > 1024 {
        return Err(invalid("description", "must be at most 1024 characters"));
    }
    Ok(())
}

/// `ordering` value of strictly ordered subscriptions.
pub const FIFO: &str = "fifo";

/// True if the subscription is delivered strictly in order.
pub fn is_fifo(sub: &proto::Subscription) -> bool {
    sub.ordering == FIFO
}

/// True if the subscription's deliveries go through a lane of their own: ordered, or limited
/// (`max_in_flight`, `rate_limit`) across every dispatcher replica.
pub fn needs_lane(sub: &proto::Subscription) -> bool {
    is_fifo(sub) || sub.max_in_flight > 0 || sub.rate_limit > 0
}

/// Validates `ordering`: `fifo`, or `unordered` (stored empty).
pub fn validate_ordering(text: &str) -> Result<String, InvalidField> {
    match text {
        FIFO => Ok(FIFO.to_owned()),
        "" | "unordered" => Ok(String::new()),
        other => Err(invalid("ordering", format!("{other:?} is not an ordering; use \"fifo\" or \"unordered\""))),
    }
}

/// Validates the limits: `max_in_flight` 0..=1000, `rate_limit` 0..=10000 per second (0: none).
pub fn validate_limits(max_in_flight: u32, rate_limit: u32) -> Result<(), InvalidField> {
    if max_in_flight > 1000 {
        return Err(invalid("max_in_flight", "must be at most 1000"));
    }
    if rate_limit > 10_000 {
        return Err(invalid("rate_limit", "must be at most 10000 requests per second"));
    }
    Ok(())
}

/// True if the subscription is enabled and one of its patterns selects `event_type`.
pub fn wants(sub: &proto::Subscription, event_type: &str) -> bool {
    sub.enabled && sub.event_types.iter().any(|p| pattern::matches(p, event_type))
}

/// A subscription's signing secret, opened, with the end of its grace period if rotated out.
/// The secrets that sign a webhook now are those that [`OpenedSecret::signs_at`] it: the
/// current one and any rotated-out one whose grace period has not ended.
#[derive(Debug)]
pub struct OpenedSecret {
    /// An HMAC secret or an Ed25519 signing key.
    pub secret: herald_signature::Signer,
    pub expires_at: Option<OffsetDateTime>,
}

impl OpenedSecret {
    /// True if it signs webhooks sent at `now`.
    pub fn signs_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

/// The HMAC-SHA256 scheme (`v1`, `whsec_` secrets shared with the subscriber): the default.
pub const HMAC_SHA256: &str = "hmac-sha256";
/// The Ed25519 scheme (`v1a`, a `whsk_` signing key Herald keeps; the subscriber gets the `whpk_`
/// public key).
pub const ED25519: &str = "ed25519";

/// The scheme a stored secret signs with.
pub fn scheme_of(secret: &proto::SigningSecret) -> &'static str {
    if secret.public_key.is_empty() { HMAC_SHA256 } else { ED25519 }
}

/// New signing material for a subscription: `given` (a `whsec_` secret or `whsk_` key a user
/// brings, e.g. when migrating) or a fresh one of `scheme` (default [`HMAC_SHA256`]). The two
/// must agree when both are set.
pub fn new_signer(scheme: Option<&str>, given: Option<&str>) -> Result<herald_signature::Signer, InvalidField> {
    use herald_signature::{Secret, Signer, SigningKey};
    let scheme = match scheme {
        None => None,
        Some(s @ (HMAC_SHA256 | ED25519)) => Some(s),
        Some(other) => {
            return Err(invalid(
                "signature_scheme",
                format!("{other:?} is not a scheme; use \"{HMAC_SHA256}\" (v1) or \"{ED25519}\" (v1a)"),
            ));
        }
    };
    let signer = match given {
        Some(text) => Signer::parse_strict(text).map_err(|e| invalid("secret", e.to_string()))?,
        None if scheme == Some(ED25519) => Signer::Ed25519(SigningKey::generate()),
        None => Signer::Hmac(Secret::generate()),
    };
    let given_scheme = if signer.public_key().is_some() { ED25519 } else { HMAC_SHA256 };
    if scheme.is_some_and(|s| s != given_scheme) {
        return Err(invalid("secret", format!("is a {given_scheme} key, but signature_scheme asks for {scheme:?}")));
    }
    Ok(signer)
}

/// How `signer` is stored on the subscription `owner`: sealed, with its public key beside it.
pub fn stored_secret(
    signer: &herald_signature::Signer,
    owner: &str,
    keys: &crate::secrets::KeyRing,
    expires_at: String,
) -> proto::SigningSecret {
    proto::SigningSecret {
        secret: keys.seal(owner, &signer.to_text()),
        expires_at,
        public_key: signer.public_key().map(|k| k.to_text()).unwrap_or_default(),
    }
}

/// Every signing secret of `sub` opened with `keys`, expired or not (see [`OpenedSecret::signs_at`]).
/// Entries that do not open or parse, or whose expiry is not a time, are skipped (and logged,
/// without their content).
pub fn open_secrets(sub: &proto::Subscription, keys: &crate::secrets::KeyRing) -> Vec<OpenedSecret> {
    sub.secrets
        .iter()
        .filter_map(|s| {
            let expires_at = match s.expires_at.as_str() {
                "" => None,
                text => Some(OffsetDateTime::parse(text, &Rfc3339).ok()?),
            };
            match keys.open(&sub.id, &s.secret) {
                Ok(text) => Some(OpenedSecret { secret: herald_signature::Signer::parse(&text).ok()?, expires_at }),
                Err(e) => {
                    tracing::warn!(subscription = %sub.id, error = %e, "a signing secret does not open");
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(validate_url("https://example.com/hook").unwrap(), "https://example.com/hook");
        validate_url("http://127.0.0.1:9000/x?y=1").unwrap();
        for bad in ["", "example.com", "ftp://example.com/", "https://user:pw@example.com/", "http://"] {
            assert!(validate_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers() {
        let ok = validate_headers(BTreeMap::from([("X-Api-Key".into(), "abc".into())])).unwrap();
        assert_eq!(ok.get("x-api-key").unwrap(), "abc");
        for (k, v) in [("webhook-signature", "x"), ("User-Agent", "x"), ("bad name", "x"), ("x-a", "line\r\nbreak")] {
            assert!(validate_headers(BTreeMap::from([(k.to_string(), v.to_string())])).is_err(), "{k}");
        }
    }

    #[test]
    fn event_types_and_matching() {
        assert!(validate_event_types(&[]).is_err());
        assert!(validate_event_types(&["a..b".into()]).is_err());
        validate_event_types(&["order.*".into(), ">".into()]).unwrap();
        let mut sub = proto::Subscription { enabled: true, event_types: vec!["order.*".into()], ..Default::default() };
        assert!(wants(&sub, "order.paid"));
        assert!(!wants(&sub, "user.created"));
        sub.enabled = false;
        assert!(!wants(&sub, "order.paid"));
    }

    #[test]
    fn expired_secrets_stop_signing() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let s = |expires: &str| proto::SigningSecret {
            secret: herald_signature::Secret::generate().to_text(),
            expires_at: expires.into(),
            public_key: String::new(),
        };
        let sub = proto::Subscription {
            secrets: vec![s(""), s("2030-01-01T00:00:00Z"), s("2020-01-01T00:00:00Z")],
            ..Default::default()
        };
        let opened = open_secrets(&sub, &crate::secrets::KeyRing::default());
        assert_eq!(opened.len(), 3);
        assert_eq!(opened.iter().filter(|s| s.signs_at(now)).count(), 2);
    }
}

/// Validates a per-subscription retry schedule (`10s,1m,1h`): 1 to 20 delays of 1 s to 1 day
/// each. Returns it in canonical form.
pub fn validate_retry_schedule(text: &str) -> Result<String, InvalidField> {
    let policy = crate::retry::RetryPolicy::parse(text).map_err(|e| invalid("retry_schedule", e))?;
    let delays = crate::runtime::parse_duration_list(text).map_err(|e| invalid("retry_schedule", e))?;
    if delays.is_empty() || delays.len() > 20 {
        return Err(invalid("retry_schedule", "must list 1 to 20 delays, e.g. \"10s,1m,10m,1h\""));
    }
    if delays.iter().any(|d| d.as_secs() < 1 || d.as_secs() > 86_400) {
        return Err(invalid("retry_schedule", "each delay must be between 1s and 1d"));
    }
    Ok(policy.describe())
}

#[cfg(test)]
mod scheme_tests {
    use super::*;

    #[test]
    fn schemes_are_chosen_given_and_checked() {
        let ed = new_signer(Some(ED25519), None).unwrap();
        let stored = stored_secret(&ed, "sub_1", &crate::secrets::KeyRing::default(), String::new());
        assert_eq!(scheme_of(&stored), ED25519);
        assert!(stored.public_key.starts_with("whpk_"));
        let hmac = new_signer(None, None).unwrap();
        assert!(hmac.to_text().starts_with("whsec_"));
        assert_eq!(scheme_of(&stored_secret(&hmac, "s", &Default::default(), String::new())), HMAC_SHA256);
        assert!(new_signer(Some(ED25519), Some(&ed.to_text())).is_ok());
        let clash = new_signer(Some(HMAC_SHA256), Some(&ed.to_text())).unwrap_err();
        assert_eq!(clash.field, "secret");
        assert_eq!(new_signer(Some("rsa"), None).unwrap_err().field, "signature_scheme");
        assert!(new_signer(None, Some("whsec_short")).is_err());
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn retry_schedules() {
        assert_eq!(validate_retry_schedule("10s, 60s,1h").unwrap(), "10s,1m,1h");
        for bad in ["", "0s", "2d", "soon", &vec!["1s"; 21].join(",")] {
            assert!(validate_retry_schedule(bad).is_err(), "{bad:?}");
        }
    }
}
