//! Inbound webhooks: a source is a URL (`POST /in/{source_id}`) that a provider (Stripe,
//! GitHub, Shopify, any Standard Webhooks sender, or one configured by hand) is set up to call.
//! This module validates sources as users give them and checks a request the way its provider
//! signs it; the gateway stores what passes as a Herald event of the source's tenant.
//!
//! Each provider says where the event's type and id come from, so that a provider's retry of
//! the same delivery carries the same id and JetStream's duplicate window drops it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::hmac;

use crate::ids::{EventId, EventType, TenantId};
use crate::proto;
use crate::subscription::InvalidField;

/// Stripe: `Stripe-Signature: t=…,v1=…`, HMAC-SHA256 of `{t}.{body}` with the endpoint secret.
pub const STRIPE: &str = "stripe";
/// GitHub: `X-Hub-Signature-256: sha256=…`, HMAC-SHA256 of the body.
pub const GITHUB: &str = "github";
/// Shopify: `X-Shopify-Hmac-Sha256`, base64 HMAC-SHA256 of the body.
pub const SHOPIFY: &str = "shopify";
/// Standard Webhooks (Svix and Herald itself): `webhook-id`, `webhook-timestamp` and
/// `webhook-signature`, with a `whsec_` secret (`v1`) or an Ed25519 public key (`v1a`).
pub const STANDARD_WEBHOOKS: &str = "standard-webhooks";
/// An HMAC of the body in a header, configured: header, algorithm, encoding, prefix.
pub const HMAC: &str = "hmac";
/// HTTP Basic authentication.
pub const BASIC: &str = "basic";
/// A shared key in a header.
pub const API_KEY: &str = "api-key";

/// The providers a source may have.
pub const PROVIDERS: &[&str] = &[STRIPE, GITHUB, SHOPIFY, STANDARD_WEBHOOKS, HMAC, BASIC, API_KEY];

/// How far a signed timestamp may be from now when the source does not say (Stripe's and the
/// Standard Webhooks' default).
pub const DEFAULT_TOLERANCE_SECS: u32 = 300;

/// A source as a user gives it, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given {
    pub provider: String,
    pub secret: Option<String>,
    pub tenant: Option<String>,
    pub event_type: Option<String>,
    pub description: Option<String>,
    pub tolerance_seconds: Option<u32>,
    pub header: Option<String>,
    pub algorithm: Option<String>,
    pub encoding: Option<String>,
    pub prefix: Option<String>,
    pub username: Option<String>,
    pub id_header: Option<String>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidField {
    InvalidField { field, message: format!("{field}: {}", message.into()) }
}

/// Validates a new source; its id, creation time and sealing are the caller's. A source
/// without a secret gets one where Herald can make it (a `whsec_` secret for the HMAC
/// providers, a random key for `api-key` and `basic`).
pub fn validate(given: &Given) -> Result<proto::Source, InvalidField> {
    let provider = given.provider.as_str();
    if !PROVIDERS.contains(&provider) {
        return Err(invalid(
            "provider",
            format!("{provider:?} is not a provider; use one of {}", PROVIDERS.join(", ")),
        ));
    }
    let tenant = match &given.tenant {
        Some(t) => TenantId::parse(t).map_err(|e| invalid("tenant", e.0))?.into_string(),
        None => TenantId::default_tenant().into_string(),
    };
    let secret = match given.secret.as_deref() {
        Some(s) if s.is_empty() || s.len() > 4096 => return Err(invalid("secret", "must be 1 to 4096 characters")),
        Some(s) => s.to_owned(),
        None => herald_signature::Secret::generate().to_text(),
    };
    if provider == STANDARD_WEBHOOKS && standard_verifier(&secret).is_err() {
        return Err(invalid("secret", "a standard-webhooks source takes a whsec_… secret or a whpk_… public key"));
    }
    let event_type = given.event_type.clone().unwrap_or_default();
    if !event_type.is_empty() {
        let sample = event_type.replace("{type}", "t");
        EventType::parse(&sample)
            .map_err(|e| invalid("event_type", format!("{e} (`{{type}}` stands for the provider's)")))?;
    } else if matches!(provider, HMAC | BASIC | API_KEY) {
        // Taken from the body's `type` then; said here so that it is no surprise.
    }
    let description = given.description.clone().unwrap_or_default();
    if description.len() > 1024 {
        return Err(invalid("description", "must be at most 1024 characters"));
    }
    let only = |field: &'static str, value: &Option<String>, applies: bool| match (value, applies) {
        (Some(_), false) => Err(invalid(field, format!("does not apply to a {provider} source"))),
        _ => Ok(()),
    };
    only("header", &given.header, matches!(provider, HMAC | API_KEY))?;
    only("algorithm", &given.algorithm, provider == HMAC)?;
    only("encoding", &given.encoding, provider == HMAC)?;
    only("prefix", &given.prefix, provider == HMAC)?;
    only("username", &given.username, provider == BASIC)?;
    only("id_header", &given.id_header, matches!(provider, HMAC | BASIC | API_KEY))?;
    if given.tolerance_seconds.is_some() && !matches!(provider, STRIPE | STANDARD_WEBHOOKS) {
        return Err(invalid(
            "tolerance_seconds",
            format!("does not apply to a {provider} source (it signs no timestamp)"),
        ));
    }
    let header_name = |field: &'static str, value: &Option<String>, default: &str| -> Result<String, InvalidField> {
        let name = value.clone().unwrap_or_else(|| default.to_owned()).to_ascii_lowercase();
        if name.is_empty()
            || name.len() > 128
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(field, "must be an HTTP header name (letters, digits, '-', '_')"));
        }
        Ok(name)
    };
    let mut source = proto::Source {
        tenant,
        provider: provider.to_owned(),
        secret,
        event_type,
        description,
        tolerance_seconds: given.tolerance_seconds.unwrap_or(0),
        ..Default::default()
    };
    match provider {
        HMAC => {
            source.header = header_name("header", &given.header, "x-signature")?;
            source.algorithm = given.algorithm.clone().unwrap_or_else(|| "sha256".into());
            if !matches!(source.algorithm.as_str(), "sha1" | "sha256" | "sha512") {
                return Err(invalid("algorithm", "one of sha256 (the default), sha512, sha1"));
            }
            source.encoding = given.encoding.clone().unwrap_or_else(|| "hex".into());
            if !matches!(source.encoding.as_str(), "hex" | "base64") {
                return Err(invalid("encoding", "hex (the default) or base64"));
            }
            source.prefix = given.prefix.clone().unwrap_or_default();
            if source.prefix.len() > 64 {
                return Err(invalid("prefix", "must be at most 64 characters"));
            }
        }
        API_KEY => source.header = header_name("header", &given.header, "x-api-key")?,
        BASIC => {
            source.username = given.username.clone().unwrap_or_default();
            if source.username.is_empty() || source.username.contains(':') || source.username.len() > 256 {
                return Err(invalid("username", "a basic source needs one, without ':'"));
            }
        }
        _ => {}
    }
    if given.id_header.is_some() {
        source.id_header = header_name("id_header", &given.id_header, "")?;
    }
    if source.tolerance_seconds > 86_400 {
        return Err(invalid("tolerance_seconds", "must be at most 86400"));
    }
    Ok(source)
}

/// Why a request was not taken as its source's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A stable name for the metrics' `reason`: `missing_signature`, `bad_signature`,
    /// `stale_timestamp`, `bad_credentials`.
    pub reason: &'static str,
    pub message: String,
}

fn refuse(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { reason, message: message.into() }
}

/// What a request that passed says about its event: the provider's delivery id and event
/// type, where it has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    pub delivery_id: Option<String>,
    pub event_type: Option<String>,
}

/// Checks a request to `source` (its secret open) given a way to read its headers (by
/// lower-case name), its exact body and the time now (seconds since the epoch).
pub fn verify<'a>(
    source: &proto::Source,
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
    now: i64,
) -> Result<Verified, Refusal> {
    let tolerance =
        i64::from(if source.tolerance_seconds == 0 { DEFAULT_TOLERANCE_SECS } else { source.tolerance_seconds });
    let secret = source.secret.as_bytes();
    let json_field = |name: &str| {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
            .ok()
            .and_then(|m| m.get(name).and_then(|v| v.as_str()).map(str::to_owned))
    };
    match source.provider.as_str() {
        STRIPE => {
            let value =
                header("stripe-signature").ok_or_else(|| refuse("missing_signature", "no Stripe-Signature header"))?;
            let mut timestamp = None;
            let mut signatures = Vec::new();
            for part in value.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
                    Some(("v1", sig)) => signatures.push(sig),
                    _ => {}
                }
            }
            let t = timestamp.ok_or_else(|| refuse("bad_signature", "Stripe-Signature has no timestamp (t=)"))?;
            fresh(t, now, tolerance)?;
            let mut signed = format!("{t}.").into_bytes();
            signed.extend_from_slice(body);
            let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
            if !signatures.iter().any(|sig| signs(&key, &signed, hex_decode(sig))) {
                return Err(refuse(
                    "bad_signature",
                    "no v1 signature in Stripe-Signature matches the body and the secret",
                ));
            }
            Ok(Verified { delivery_id: json_field("id"), event_type: json_field("type") })
        }
        GITHUB => {
            let value = header("x-hub-signature-256")
                .ok_or_else(|| refuse("missing_signature", "no X-Hub-Signature-256 header"))?;
            let sig = value.strip_prefix("sha256=").and_then(hex_decode);
            let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
            if !signs(&key, body, sig) {
                return Err(refuse("bad_signature", "X-Hub-Signature-256 does not match the body and the secret"));
            }
            Ok(Verified {
                delivery_id: header("x-github-delivery").map(str::to_owned),
                event_type: header("x-github-event").map(str::to_owned),
            })
        }
        SHOPIFY => {
            let value = header("x-shopify-hmac-sha256")
                .ok_or_else(|| refuse("missing_signature", "no X-Shopify-Hmac-Sha256 header"))?;
            let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
            if !signs(&key, body, B64.decode(value.trim()).ok()) {
                return Err(refuse("bad_signature", "X-Shopify-Hmac-Sha256 does not match the body and the secret"));
            }
            Ok(Verified {
                delivery_id: header("x-shopify-webhook-id").or_else(|| header("x-shopify-event-id")).map(str::to_owned),
                event_type: header("x-shopify-topic").map(str::to_owned),
            })
        }
        STANDARD_WEBHOOKS => {
            let signature = header("webhook-signature");
            if signature.is_none() {
                return Err(refuse("missing_signature", "no webhook-signature header"));
            }
            let verifier = standard_verifier(&source.secret)
                .map_err(|_| refuse("bad_signature", "the source's secret does not parse"))?
                .tolerance(std::time::Duration::from_secs(tolerance as u64));
            verifier.verify_at(header("webhook-id"), header("webhook-timestamp"), signature, body, now).map_err(
                |e| {
                    let reason = match e {
                        herald_signature::Error::TimestampTooOld { .. }
                        | herald_signature::Error::TimestampTooNew { .. } => "stale_timestamp",
                        herald_signature::Error::MissingHeader(_) => "missing_signature",
                        _ => "bad_signature",
                    };
                    refuse(reason, e.to_string())
                },
            )?;
            Ok(Verified { delivery_id: header("webhook-id").map(str::to_owned), event_type: json_field("type") })
        }
        HMAC => {
            let value = header(&source.header)
                .ok_or_else(|| refuse("missing_signature", format!("no {} header", source.header)))?;
            let algorithm = match source.algorithm.as_str() {
                "sha1" => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                "sha512" => hmac::HMAC_SHA512,
                _ => hmac::HMAC_SHA256,
            };
            let encoded = value.trim().strip_prefix(source.prefix.as_str()).unwrap_or("");
            let sig = if source.encoding == "base64" { B64.decode(encoded).ok() } else { hex_decode(encoded) };
            let key = hmac::Key::new(algorithm, secret);
            if !signs(&key, body, sig) {
                return Err(refuse(
                    "bad_signature",
                    format!("{} does not match the body and the secret", source.header),
                ));
            }
            Ok(generic(source, &header, json_field("id"), json_field("type")))
        }
        BASIC => {
            let given = header("authorization")
                .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
                .ok_or_else(|| refuse("missing_signature", "no Authorization: Basic header"))?;
            let expected = B64.encode(format!("{}:{}", source.username, source.secret));
            if !same(given.trim().as_bytes(), expected.as_bytes()) {
                return Err(refuse("bad_credentials", "the user name or password is wrong"));
            }
            Ok(generic(source, &header, json_field("id"), json_field("type")))
        }
        API_KEY => {
            let given = header(&source.header)
                .ok_or_else(|| refuse("missing_signature", format!("no {} header", source.header)))?;
            if !same(given.trim().as_bytes(), secret) {
                return Err(refuse("bad_credentials", format!("the key in {} is wrong", source.header)));
            }
            Ok(generic(source, &header, json_field("id"), json_field("type")))
        }
        other => Err(refuse("bad_signature", format!("provider {other:?} is not known to this gateway"))),
    }
}

/// The delivery id of a configured source: its `id_header`, else the body's `id`.
fn generic<'a>(
    source: &proto::Source,
    header: &impl Fn(&str) -> Option<&'a str>,
    body_id: Option<String>,
    body_type: Option<String>,
) -> Verified {
    let from_header = (!source.id_header.is_empty()).then(|| header(&source.id_header)).flatten().map(str::to_owned);
    Verified { delivery_id: from_header.or(body_id), event_type: body_type }
}

fn fresh(timestamp: i64, now: i64, tolerance: i64) -> Result<(), Refusal> {
    if (now - timestamp).abs() > tolerance {
        return Err(refuse(
            "stale_timestamp",
            format!(
                "the signed timestamp is {}s from now (tolerance {tolerance}s): a replay, or a clock off",
                now - timestamp
            ),
        ));
    }
    Ok(())
}

fn standard_verifier(secret: &str) -> Result<herald_signature::Verifier, herald_signature::Error> {
    match herald_signature::PublicKey::parse(secret) {
        Ok(key) => Ok(herald_signature::Verifier::for_public_key(key)),
        Err(_) => herald_signature::Secret::parse_strict(secret).map(herald_signature::Verifier::new),
    }
}

/// True if `signature` is `key`'s HMAC of `message` (compared in constant time).
fn signs(key: &hmac::Key, message: &[u8], signature: Option<Vec<u8>>) -> bool {
    signature.is_some_and(|s| hmac::verify(key, message, &s).is_ok())
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The event a verified request becomes: its id (`{source id}:{delivery id}`, so that a
/// provider's retry is a duplicate and two sources' ids never meet; a fresh one when the
/// provider gives none), its type (the source's `event_type`, `{type}` replaced by the
/// provider's) and its data (the body, byte for byte, when it is JSON; else the body as a
/// JSON string).
pub fn event(source: &proto::Source, verified: &Verified, body: &[u8]) -> Result<proto::Event, InvalidField> {
    let provider_type = verified.event_type.as_deref().map(sanitize_type);
    let event_type = match (source.event_type.as_str(), &provider_type) {
        ("", Some(t)) => t.clone(),
        ("", None) => {
            return Err(invalid(
                "type",
                "the request names no event type and the source has no event_type: give the source one",
            ));
        }
        (template, t) => template.replace("{type}", t.as_deref().unwrap_or("unknown")),
    };
    let event_type = EventType::parse(&event_type).map_err(|e| invalid("type", e.0))?.into_string();
    let id = match &verified.delivery_id {
        Some(d) if !d.is_empty() => {
            let clean: String = d
                .chars()
                .take(80)
                .map(|c| if c.is_ascii_alphanumeric() || "_-:".contains(c) { c } else { '_' })
                .collect();
            EventId::parse(&format!("{}:{clean}", source.id)).map_err(|e| invalid("id", e.0))?.into_string()
        }
        _ => EventId::generate().into_string(),
    };
    let data = if serde_json::from_slice::<&serde_json::value::RawValue>(body).is_ok() {
        body.to_vec()
    } else {
        serde_json::to_vec(&String::from_utf8_lossy(body)).unwrap_or_default()
    };
    Ok(proto::Event {
        id,
        r#type: event_type,
        tenant: source.tenant.clone(),
        source: format!("herald:source:{}", source.id),
        time: crate::now_rfc3339(),
        data,
    })
}

/// A provider's event type as a Herald type: `orders/create` → `orders.create`, anything
/// else not a letter, digit, `_`, `-` or `.` → `_`.
fn sanitize_type(t: &str) -> String {
    t.chars()
        .map(|c| match c {
            '/' => '.',
            c if c.is_ascii_alphanumeric() || "_-.".contains(c) => c,
            _ => '_',
        })
        .collect()
}

/// A fresh source id: `src_` + ULID.
pub fn new_id() -> String {
    format!("src_{}", ulid::Ulid::new())
}

/// True if `id` has the shape of a source id.
pub fn is_id(id: &str) -> bool {
    id.strip_prefix("src_").is_some_and(|rest| ulid::Ulid::from_string(rest).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(provider: &str, secret: &str) -> proto::Source {
        let mut s =
            validate(&Given { provider: provider.into(), secret: Some(secret.into()), ..Default::default() }).unwrap();
        s.id = "src_01JABCDEFGHJKMNPQRSTVWXYZ0".into();
        s
    }

    fn mac(alg: hmac::Algorithm, key: &str, msg: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(alg, key.as_bytes()), msg).as_ref().to_vec()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn stripe_signatures_are_checked_with_their_timestamp() {
        let s = source(STRIPE, "whsec_test");
        let body = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
        let now = 1_700_000_000;
        let sig = |t: i64, body: &[u8]| {
            let mut signed = format!("{t}.").into_bytes();
            signed.extend_from_slice(body);
            format!("t={t},v1={},v0=ignored", hex(&mac(hmac::HMAC_SHA256, "whsec_test", &signed)))
        };
        let good = sig(now - 10, body);
        let v = verify(&s, |h| (h == "stripe-signature").then_some(good.as_str()), body, now).unwrap();
        assert_eq!(v.delivery_id.as_deref(), Some("evt_1"));
        assert_eq!(v.event_type.as_deref(), Some("payment_intent.succeeded"));
        let old = sig(now - 301, body);
        assert_eq!(verify(&s, |_| Some(old.as_str()), body, now).unwrap_err().reason, "stale_timestamp");
        assert_eq!(verify(&s, |_| Some(good.as_str()), b"{}", now).unwrap_err().reason, "bad_signature");
        assert_eq!(verify(&s, |_| None, body, now).unwrap_err().reason, "missing_signature");
    }

    #[test]
    fn github_shopify_and_configured_hmacs_sign_the_body() {
        let body = br#"{"id":"42","type":"thing.done"}"#;
        let gh = source(GITHUB, "s3");
        let header = format!("sha256={}", hex(&mac(hmac::HMAC_SHA256, "s3", body)));
        let v = verify(
            &gh,
            |h| match h {
                "x-hub-signature-256" => Some(header.as_str()),
                "x-github-event" => Some("push"),
                "x-github-delivery" => Some("d-1"),
                _ => None,
            },
            body,
            0,
        )
        .unwrap();
        assert_eq!((v.delivery_id.as_deref(), v.event_type.as_deref()), (Some("d-1"), Some("push")));
        assert!(verify(&gh, |_| Some("sha256=00"), body, 0).is_err());

        let shop = source(SHOPIFY, "shh");
        let sig = B64.encode(mac(hmac::HMAC_SHA256, "shh", body));
        let v = verify(
            &shop,
            |h| match h {
                "x-shopify-hmac-sha256" => Some(sig.as_str()),
                "x-shopify-topic" => Some("orders/create"),
                _ => None,
            },
            body,
            0,
        )
        .unwrap();
        assert_eq!(event(&shop, &v, body).unwrap().r#type, "orders.create");

        let mut configured = validate(&Given {
            provider: HMAC.into(),
            secret: Some("k".into()),
            header: Some("X-Sig".into()),
            algorithm: Some("sha512".into()),
            encoding: Some("base64".into()),
            prefix: Some("v1=".into()),
            ..Default::default()
        })
        .unwrap();
        configured.id = "src_01JABCDEFGHJKMNPQRSTVWXYZ0".into();
        let sig = format!("v1={}", B64.encode(mac(hmac::HMAC_SHA512, "k", body)));
        let v = verify(&configured, |h| (h == "x-sig").then_some(sig.as_str()), body, 0).unwrap();
        let e = event(&configured, &v, body).unwrap();
        assert_eq!((e.id.as_str(), e.r#type.as_str()), ("src_01JABCDEFGHJKMNPQRSTVWXYZ0:42", "thing.done"));
        assert_eq!(e.data, body.to_vec(), "the body is kept byte for byte");
        assert!(verify(&configured, |h| (h == "x-sig").then_some("v1=AAAA"), body, 0).is_err());
    }

    #[test]
    fn basic_and_api_key_sources_compare_their_secret() {
        let mut basic = validate(&Given {
            provider: BASIC.into(),
            secret: Some("pw".into()),
            username: Some("hooks".into()),
            ..Default::default()
        })
        .unwrap();
        basic.id = "src_01JABCDEFGHJKMNPQRSTVWXYZ0".into();
        let good = format!("Basic {}", B64.encode("hooks:pw"));
        let bad = format!("Basic {}", B64.encode("hooks:nope"));
        assert!(verify(&basic, |_| Some(good.as_str()), b"{}", 0).is_ok());
        assert_eq!(verify(&basic, |_| Some(bad.as_str()), b"{}", 0).unwrap_err().reason, "bad_credentials");
        let key = source(API_KEY, "k-123");
        assert!(verify(&key, |h| (h == "x-api-key").then_some("k-123"), b"{}", 0).is_ok());
        assert!(verify(&key, |h| (h == "x-api-key").then_some("k-124"), b"{}", 0).is_err());
        let v = verify(&key, |h| (h == "x-api-key").then_some("k-123"), b"not json", 0).unwrap();
        assert!(event(&key, &v, b"not json").unwrap_err().message.contains("no event type"));
    }

    #[test]
    fn sources_are_validated() {
        let e = |g: Given| validate(&g).unwrap_err().message;
        assert!(e(Given { provider: "paypal".into(), ..Default::default() }).contains("not a provider"));
        assert!(
            e(Given { provider: GITHUB.into(), username: Some("u".into()), ..Default::default() })
                .contains("does not apply")
        );
        assert!(e(Given { provider: BASIC.into(), ..Default::default() }).contains("username"));
        assert!(
            e(Given { provider: STANDARD_WEBHOOKS.into(), secret: Some("x".into()), ..Default::default() })
                .contains("whsec_")
        );
        assert!(
            e(Given { provider: HMAC.into(), algorithm: Some("md5".into()), ..Default::default() }).contains("sha256")
        );
        assert!(
            e(Given { provider: STRIPE.into(), event_type: Some("a..b".into()), ..Default::default() })
                .contains("event_type")
        );
        let made = validate(&Given {
            provider: STRIPE.into(),
            event_type: Some("stripe.{type}".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(made.secret.starts_with("whsec_"), "a secret is made when none is given");
        assert!(is_id(&new_id()) && !is_id("sub_1"));
    }
}
