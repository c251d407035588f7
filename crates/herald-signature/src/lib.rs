//! Standard Webhooks signing and verification: HMAC-SHA256 (`v1`) and Ed25519 (`v1a`).
//!
//! This crate is what a webhook *receiver* needs, and it is also what Herald's dispatcher signs
//! with, so the scheme exists exactly once. It has no async runtime and no NATS dependency.
//!
//! The scheme (<https://www.standardwebhooks.com/>): the signed content is
//! `{webhook-id}.{webhook-timestamp}.{body}`, the MAC is HMAC-SHA256 keyed with the base64 bytes
//! of a `whsec_` secret, and the `webhook-signature` header carries one or more space-separated
//! `v1,<base64 MAC>` entries (several while a rotated secret is still in its grace period).
//!
//! # Layout
//! - [`Secret`]: parsing, generating and formatting `whsec_` secrets.
//! - [`SigningKey`] / [`PublicKey`]: `whsk_` / `whpk_` keys of the asymmetric `v1a` scheme.
//! - [`Signer`]: either kind, as a sender holds them; [`sign`] makes the header's value.
//! - [`Verifier`]: checks the three headers of a request, with timestamp tolerance, against
//!   secrets, public keys or both.
#![forbid(unsafe_code)]

mod ed25519;

pub use ed25519::{PUBLIC_KEY_PREFIX, PublicKey, SIGNING_KEY_PREFIX, SigningKey};

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of every secret in its textual form.
pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest secret (in raw bytes) this crate generates or accepts for signing.
pub const MIN_SECRET_BYTES: usize = 24;
/// Longest secret (in raw bytes) this crate generates or accepts.
pub const MAX_SECRET_BYTES: usize = 64;
/// How far a `webhook-timestamp` may be from now, in either direction, by default.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Header names of the scheme, lower-case as HTTP/2 requires.
pub mod headers {
    /// The message id, identical across retries: receivers use it to deduplicate.
    pub const WEBHOOK_ID: &str = "webhook-id";
    /// Seconds since the Unix epoch at signing time.
    pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
    /// Space-separated `v1,<base64>` signatures.
    pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";
}

/// Why a secret, a signature or a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The secret is empty (after removing the `whsec_` prefix).
    #[error("the secret is empty")]
    EmptySecret,
    /// The secret is not valid base64.
    #[error("the secret is not valid base64 (expected `whsec_` followed by base64)")]
    InvalidSecretEncoding,
    /// The secret decodes to a length outside the allowed range.
    #[error("the secret is {0} bytes long; it must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES}")]
    InvalidSecretLength(usize),
    /// A required header is missing.
    #[error("the `{0}` header is missing")]
    MissingHeader(&'static str),
    /// The `webhook-timestamp` header is not an integer number of seconds.
    #[error("the `webhook-timestamp` header is not a Unix timestamp in seconds")]
    InvalidTimestamp,
    /// The timestamp is older than the tolerance allows (replay protection).
    #[error("the message timestamp is too old ({age_secs} s ago)")]
    TimestampTooOld {
        /// How many seconds in the past the timestamp is.
        age_secs: u64,
    },
    /// The timestamp is further in the future than the tolerance allows.
    #[error("the message timestamp is too far in the future ({ahead_secs} s ahead)")]
    TimestampTooNew {
        /// How many seconds in the future the timestamp is.
        ahead_secs: u64,
    },
    /// The `webhook-signature` header holds no entry of a scheme the verifier has keys for
    /// (`v1` for secrets, `v1a` for public keys).
    #[error("the `webhook-signature` header holds no signature of a scheme this verifier checks")]
    NoSignatures,
    /// No signature in the header matches the message.
    #[error("no signature matches the message")]
    SignatureMismatch,
    /// The message id contains a character that would make the signed content ambiguous.
    #[error("the message id is empty or contains `.`")]
    InvalidMessageId,
    /// A `whsk_` or `whpk_` key is malformed.
    #[error("the key is not valid: {0}")]
    InvalidKey(&'static str),
}

/// `{id}.{timestamp}.{body}`: what both schemes sign.
fn signed_content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let ts = timestamp.to_string();
    let mut content = Vec::with_capacity(msg_id.len() + ts.len() + body.len() + 2);
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(ts.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// A signing key: the raw bytes behind a `whsec_…` string.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl Secret {
    /// Parses `whsec_<base64>` (the prefix is optional, as the specification allows).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let encoded = text.trim().strip_prefix(SECRET_PREFIX).unwrap_or(text.trim());
        if encoded.is_empty() {
            return Err(Error::EmptySecret);
        }
        let key = B64.decode(encoded).map_err(|_| Error::InvalidSecretEncoding)?;
        if key.is_empty() {
            return Err(Error::EmptySecret);
        }
        if key.len() > MAX_SECRET_BYTES {
            return Err(Error::InvalidSecretLength(key.len()));
        }
        Ok(Self { key })
    }

    /// Like [`Secret::parse`], and also refuses keys shorter than [`MIN_SECRET_BYTES`]: what a
    /// server should demand of a secret a user brings.
    pub fn parse_strict(text: &str) -> Result<Self, Error> {
        let secret = Self::parse(text)?;
        if secret.key.len() < MIN_SECRET_BYTES {
            return Err(Error::InvalidSecretLength(secret.key.len()));
        }
        Ok(secret)
    }

    /// Generates a fresh random 32-byte secret from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source failed");
        Self { key }
    }

    /// The `whsec_…` text form.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", B64.encode(&self.key))
    }

    /// Signs one message: returns `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(msg_id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", B64.encode(tag))
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any size");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// True if `signature` (the base64 part of one `v1,` entry) is this key's MAC of the message.
    /// The comparison is constant-time.
    fn matches(&self, msg_id: &str, timestamp: i64, body: &[u8], signature: &str) -> bool {
        let Ok(candidate) = B64.decode(signature) else {
            return false;
        };
        self.mac(msg_id, timestamp, body).verify_slice(&candidate).is_ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material, not even in debug logs.
        f.write_str("Secret(***)")
    }
}

/// What a sender signs with: an HMAC secret (`v1`) or an Ed25519 signing key (`v1a`). Both
/// may sign one message (while a subscription moves from one scheme to the other), each adding
/// its own entry to the `webhook-signature` header.
#[derive(Debug)]
pub enum Signer {
    /// `whsec_…`: HMAC-SHA256, `v1`.
    Hmac(Secret),
    /// `whsk_…`: Ed25519, `v1a`.
    Ed25519(SigningKey),
}

impl Signer {
    /// Parses either textual form, told apart by its prefix (`whsk_` is Ed25519; anything else
    /// is read as an HMAC secret, as [`Secret::parse`] does).
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.trim().starts_with(SIGNING_KEY_PREFIX) {
            SigningKey::parse(text).map(Self::Ed25519)
        } else {
            Secret::parse(text).map(Self::Hmac)
        }
    }

    /// Like [`Signer::parse`], with [`Secret::parse_strict`]'s demands on HMAC secrets and the
    /// `whsec_` prefix required: what a server should accept from a user.
    pub fn parse_strict(text: &str) -> Result<Self, Error> {
        if text.trim().starts_with(SIGNING_KEY_PREFIX) {
            SigningKey::parse(text).map(Self::Ed25519)
        } else if text.trim().starts_with(SECRET_PREFIX) {
            Secret::parse_strict(text).map(Self::Hmac)
        } else {
            Err(Error::InvalidKey("expected a `whsec_` secret or a `whsk_` signing key"))
        }
    }

    /// The textual form (`whsec_…` or `whsk_…`).
    pub fn to_text(&self) -> String {
        match self {
            Self::Hmac(secret) => secret.to_text(),
            Self::Ed25519(key) => key.to_text(),
        }
    }

    /// The public key receivers verify with, for an Ed25519 key; `None` for HMAC, whose secret
    /// is shared.
    pub fn public_key(&self) -> Option<PublicKey> {
        match self {
            Self::Hmac(_) => None,
            Self::Ed25519(key) => Some(key.public_key()),
        }
    }

    /// One `v1,…` or `v1a,…` entry.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        match self {
            Self::Hmac(secret) => secret.sign(msg_id, timestamp, body),
            Self::Ed25519(key) => key.sign(msg_id, timestamp, body),
        }
    }
}

/// Signs one message with several signers and joins the signatures with spaces, as the
/// `webhook-signature` header carries them. Refuses ids that would make the content ambiguous.
pub fn sign(signers: &[&Signer], msg_id: &str, timestamp: i64, body: &[u8]) -> Result<String, Error> {
    if msg_id.is_empty() || msg_id.contains('.') {
        return Err(Error::InvalidMessageId);
    }
    let sigs: Vec<String> = signers.iter().map(|s| s.sign(msg_id, timestamp, body)).collect();
    Ok(sigs.join(" "))
}

/// Verifies incoming webhooks against one or more secrets (`v1`) and public keys (`v1a`).
#[derive(Debug, Clone)]
pub struct Verifier {
    secrets: Vec<Secret>,
    public_keys: Vec<PublicKey>,
    tolerance: Duration,
}

impl Verifier {
    /// A verifier for one secret with the default 5-minute tolerance.
    pub fn new(secret: Secret) -> Self {
        Self { secrets: vec![secret], public_keys: Vec::new(), tolerance: DEFAULT_TOLERANCE }
    }

    /// A verifier for one Ed25519 public key (`v1a`) with the default 5-minute tolerance.
    pub fn for_public_key(key: PublicKey) -> Self {
        Self { secrets: Vec::new(), public_keys: vec![key], tolerance: DEFAULT_TOLERANCE }
    }

    /// Also accepts `v1a` signatures made with `key`'s signing key.
    pub fn with_public_key(mut self, key: PublicKey) -> Self {
        self.public_keys.push(key);
        self
    }

    /// Also accepts signatures made with `secret` (e.g. the previous one during a rotation).
    pub fn with_secret(mut self, secret: Secret) -> Self {
        self.secrets.push(secret);
        self
    }

    /// Changes how far the timestamp may be from now.
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Verifies a request given its three header values and exact body, against the current time.
    pub fn verify(
        &self,
        msg_id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), Error> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default();
        self.verify_at(msg_id, timestamp, signature, body, now)
    }

    /// Like [`Verifier::verify`], with "now" given in seconds since the Unix epoch.
    pub fn verify_at(
        &self,
        msg_id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), Error> {
        let msg_id = msg_id.ok_or(Error::MissingHeader(headers::WEBHOOK_ID))?;
        let timestamp = timestamp.ok_or(Error::MissingHeader(headers::WEBHOOK_TIMESTAMP))?;
        let signature = signature.ok_or(Error::MissingHeader(headers::WEBHOOK_SIGNATURE))?;
        if msg_id.is_empty() || msg_id.contains('.') {
            return Err(Error::InvalidMessageId);
        }
        let ts = parse_timestamp(timestamp)?;
        let tolerance = self.tolerance.as_secs() as i64;
        if ts < now - tolerance {
            return Err(Error::TimestampTooOld { age_secs: (now - ts) as u64 });
        }
        if ts > now + tolerance {
            return Err(Error::TimestampTooNew { ahead_secs: (ts - now) as u64 });
        }
        let mut saw_checkable = false;
        for entry in signature.split(' ').filter(|e| !e.is_empty()) {
            let matched = match entry.split_once(',') {
                Some(("v1", sig)) if !self.secrets.is_empty() => {
                    saw_checkable = true;
                    self.secrets.iter().any(|s| s.matches(msg_id, ts, body, sig))
                }
                Some(("v1a", sig)) if !self.public_keys.is_empty() => {
                    saw_checkable = true;
                    self.public_keys.iter().any(|k| k.matches(msg_id, ts, body, sig))
                }
                _ => continue, // a scheme this verifier holds no key for
            };
            if matched {
                return Ok(());
            }
        }
        Err(if saw_checkable { Error::SignatureMismatch } else { Error::NoSignatures })
    }
}

/// Parses a `webhook-timestamp` value: ASCII digits only, seconds since the Unix epoch.
fn parse_timestamp(text: &str) -> Result<i64, Error> {
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidTimestamp);
    }
    text.parse().map_err(|_| Error::InvalidTimestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published vectors.
    const VECTORS: &[(&str, &str, i64, &str, &str)] = &[
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            r#"{"email":"test@example.com","username":"test_user"}"#,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
    ];

    fn verify(secret: &str, id: &str, ts: &str, sig: &str, body: &str, now: i64) -> Result<(), Error> {
        Verifier::new(Secret::parse(secret).unwrap()).verify_at(Some(id), Some(ts), Some(sig), body.as_bytes(), now)
    }

    #[test]
    fn published_vectors_sign() {
        for (key, id, ts, body, expected) in VECTORS {
            let secret = Secret::parse(key).unwrap();
            assert_eq!(secret.sign(id, *ts, body.as_bytes()), *expected);
            let signer = Signer::parse(key).unwrap();
            assert_eq!(sign(&[&signer], id, *ts, body.as_bytes()).unwrap(), *expected);
        }
    }

    #[test]
    fn published_vectors_verify() {
        for (key, id, ts, body, expected) in VECTORS {
            verify(key, id, &ts.to_string(), expected, body, *ts).unwrap();
        }
    }

    #[test]
    fn secret_without_prefix_is_accepted() {
        let (key, id, ts, body, expected) = VECTORS[0];
        let bare = key.strip_prefix("whsec_").unwrap();
        assert_eq!(Secret::parse(bare).unwrap().sign(id, ts, body.as_bytes()), expected);
    }

    #[test]
    fn changed_signature_is_refused() {
        let (key, id, ts, body, _) = VECTORS[0];
        let bad = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OF=";
        assert_eq!(verify(key, id, &ts.to_string(), bad, body, ts), Err(Error::SignatureMismatch));
        // A changed body, id or timestamp with the right signature fails too.
        let (_, _, _, _, good) = VECTORS[0];
        assert_eq!(verify(key, id, &ts.to_string(), good, "{\"test\": 1}", ts), Err(Error::SignatureMismatch));
        assert_eq!(verify(key, "msg_other", &ts.to_string(), good, body, ts), Err(Error::SignatureMismatch));
        assert_eq!(verify(key, id, &(ts + 1).to_string(), good, body, ts), Err(Error::SignatureMismatch));
        // Garbage that is not base64 is a mismatch, not a panic.
        assert_eq!(verify(key, id, &ts.to_string(), "v1,!!!", body, ts), Err(Error::SignatureMismatch));
    }

    #[test]
    fn one_matching_signature_among_several_is_enough() {
        let (key, id, ts, body, good) = VECTORS[0];
        let header = format!("v1,Zm9v v1a,whatever {good}");
        verify(key, id, &ts.to_string(), &header, body, ts).unwrap();
        assert_eq!(verify(key, id, &ts.to_string(), "v1a,abc v2,xyz", body, ts), Err(Error::NoSignatures));
    }

    #[test]
    fn rotated_secrets_sign_side_by_side() {
        let old = Secret::generate();
        let new = Secret::generate();
        let signers = [Signer::Hmac(new.clone()), Signer::Hmac(old.clone())];
        let header = sign(&[&signers[0], &signers[1]], "evt_1", 1_700_000_000, b"{}").unwrap();
        assert_eq!(header.split(' ').count(), 2);
        for s in [&old, &new] {
            Verifier::new(s.clone())
                .verify_at(Some("evt_1"), Some("1700000000"), Some(&header), b"{}", 1_700_000_000)
                .unwrap();
        }
        let stranger = Secret::generate();
        assert_eq!(
            Verifier::new(stranger).verify_at(Some("evt_1"), Some("1700000000"), Some(&header), b"{}", 1_700_000_000),
            Err(Error::SignatureMismatch)
        );
    }

    #[test]
    fn empty_and_malformed_secrets_are_refused() {
        assert_eq!(Secret::parse(""), Err(Error::EmptySecret));
        assert_eq!(Secret::parse("whsec_"), Err(Error::EmptySecret));
        assert_eq!(Secret::parse("whsec_%%%"), Err(Error::InvalidSecretEncoding));
        assert_eq!(Secret::parse_strict("whsec_c2hvcnQ="), Err(Error::InvalidSecretLength(5)));
        let long = format!("whsec_{}", B64.encode([7u8; 65]));
        assert_eq!(Secret::parse(&long), Err(Error::InvalidSecretLength(65)));
    }

    #[test]
    fn generated_secrets_round_trip_and_differ() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a, b);
        assert!(a.to_text().starts_with("whsec_"));
        assert_eq!(Secret::parse_strict(&a.to_text()).unwrap(), a);
        assert_eq!(format!("{a:?}"), "Secret(***)");
    }

    #[test]
    fn malformed_timestamps_are_refused() {
        let (key, id, ts, body, good) = VECTORS[0];
        for bad in ["", "abc", "-1614265330", "1614265330.5", " 1614265330", "99999999999999999999"] {
            assert_eq!(verify(key, id, bad, good, body, ts), Err(Error::InvalidTimestamp), "{bad:?}");
        }
    }

    #[test]
    fn timestamps_outside_tolerance_are_refused() {
        let (key, id, ts, body, good) = VECTORS[0];
        let t = ts.to_string();
        assert_eq!(verify(key, id, &t, good, body, ts + 301), Err(Error::TimestampTooOld { age_secs: 301 }));
        assert_eq!(verify(key, id, &t, good, body, ts - 301), Err(Error::TimestampTooNew { ahead_secs: 301 }));
        verify(key, id, &t, good, body, ts + 300).unwrap();
        verify(key, id, &t, good, body, ts - 300).unwrap();
    }

    #[test]
    fn missing_headers_and_bad_ids_are_named() {
        let v = Verifier::new(Secret::generate());
        assert_eq!(v.verify_at(None, Some("1"), Some("v1,a"), b"", 1), Err(Error::MissingHeader("webhook-id")));
        assert_eq!(v.verify_at(Some("a"), None, Some("v1,a"), b"", 1), Err(Error::MissingHeader("webhook-timestamp")));
        assert_eq!(v.verify_at(Some("a"), Some("1"), None, b"", 1), Err(Error::MissingHeader("webhook-signature")));
        assert_eq!(v.verify_at(Some("a.b"), Some("1"), Some("v1,a"), b"", 1), Err(Error::InvalidMessageId));
        assert_eq!(sign(&[&Signer::Hmac(Secret::generate())], "a.b", 1, b""), Err(Error::InvalidMessageId));
    }

    #[test]
    fn a_subscription_moving_between_schemes_signs_with_both() {
        let hmac = Signer::parse_strict(&Secret::generate().to_text()).unwrap();
        let ed = Signer::parse_strict(&SigningKey::generate().to_text()).unwrap();
        assert!(hmac.public_key().is_none());
        let public = ed.public_key().unwrap();
        let header = sign(&[&ed, &hmac], "evt_1", 1_700_000_000, b"{}").unwrap();
        assert!(header.starts_with("v1a,") && header.contains(" v1,"), "{header}");
        let Signer::Hmac(secret) = &hmac else { unreachable!() };
        for verifier in [Verifier::new(secret.clone()), Verifier::for_public_key(public)] {
            verifier.verify_at(Some("evt_1"), Some("1700000000"), Some(&header), b"{}", 1_700_000_000).unwrap();
        }
        assert_eq!(Signer::parse(&ed.to_text()).unwrap().to_text(), ed.to_text());
        assert!(Signer::parse_strict("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0").is_err(), "a bare secret has no prefix");
        assert!(Signer::parse_strict("whsk_AAAA").is_err());
    }
}
