//! Signing secrets at rest: sealed with an AEAD (ChaCha20-Poly1305) before they are stored in
//! the `herald-subscriptions` bucket, and opened only where a webhook is signed. The key ring
//! comes from `HERALD_SECRET_KEYS` (or a file): `id:base64-32-bytes` entries, comma-separated,
//! the first one sealing new secrets, all of them opening old ones — so a key is rotated by
//! putting a new one first and dropping the old one once every secret was re-sealed.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;

const PREFIX: &str = "enc:v1:";

/// Why a stored secret could not be opened, or a key ring not parsed. Never carries key or
/// secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(pub String);

/// The configured keys; empty means secrets are stored as they are (local development).
#[derive(Default)]
pub struct KeyRing {
    keys: Vec<(String, LessSafeKey)>,
    /// Per key, the key that authenticates operational events (see [`KeyRing::operator_mac`]):
    /// derived from it, so it is never the sealing key itself.
    macs: Vec<(String, hmac::Key)>,
}

/// What a key's operational-event MAC key is derived with.
const OPERATOR_MAC_CONTEXT: &[u8] = b"herald operational events v1";

/// Whether an operational event read from NATS was written by a Herald dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Its MAC verifies with a configured key.
    ByHerald,
    /// No MAC, a malformed one, an unknown key or a MAC that does not verify.
    Forged,
    /// No keys are configured, so nothing can be told (local development).
    Unknown,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("key_ids", &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>()).finish()
    }
}

impl KeyRing {
    /// Parses `id:base64,id:base64` (one per line also works). Ids are 1–32 chars of
    /// `[A-Za-z0-9_-]`; keys are 32 random bytes (`openssl rand -base64 32`).
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let mut keys = Vec::new();
        let mut macs = Vec::new();
        for (i, entry) in
            text.split([',', '\n']).map(str::trim).filter(|e| !e.is_empty() && !e.starts_with('#')).enumerate()
        {
            let (id, key) =
                entry.split_once(':').ok_or_else(|| SecretError(format!("key {} is not id:base64", i + 1)))?;
            if id.is_empty()
                || id.len() > 32
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(SecretError(format!("key {}: the id must be 1 to 32 of [A-Za-z0-9_-]", i + 1)));
            }
            let bytes = B64.decode(key.trim()).map_err(|_| SecretError(format!("key {id}: not base64")))?;
            if bytes.len() != 32 {
                return Err(SecretError(format!("key {id}: {} bytes; it must be 32", bytes.len())));
            }
            let unbound =
                UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| SecretError(format!("key {id}: unusable")))?;
            keys.push((id.to_owned(), LessSafeKey::new(unbound)));
            let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &bytes), OPERATOR_MAC_CONTEXT);
            macs.push((id.to_owned(), hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())));
        }
        Ok(Self { keys, macs })
    }

    /// True when secrets are sealed.
    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Seals `secret` for the subscription `owner` (bound to it: a sealed secret copied onto
    /// another subscription does not open). Without keys, returns it unchanged.
    pub fn seal(&self, owner: &str, secret: &str) -> String {
        let Some((id, key)) = self.keys.first() else { return secret.to_owned() };
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        let mut data = secret.as_bytes().to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(owner.as_bytes()), &mut data)
            .expect("sealing cannot fail for these sizes");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{PREFIX}{id}:{}", B64.encode(out))
    }

    /// The MAC a dispatcher puts on an operational event's stored `payload`
    /// ([`crate::nats::OPERATOR_MAC_HEADER`], `id:base64`, with the first key), so that gateways
    /// and dispatchers can tell it from one published by anyone else who may write to
    /// `herald.events.>`. `None` without keys.
    pub fn operator_mac(&self, payload: &[u8]) -> Option<String> {
        let (id, key) = self.macs.first()?;
        Some(format!("{id}:{}", B64.encode(hmac::sign(key, payload))))
    }

    /// Checks `mac` (the header's value, if any) on an operational event's `payload`, with
    /// whichever configured key it names.
    pub fn operator_written(&self, payload: &[u8], mac: Option<&str>) -> Written {
        if self.macs.is_empty() {
            return Written::Unknown;
        }
        let verified = mac.and_then(|m| m.split_once(':')).is_some_and(|(id, tag)| {
            let key = self.macs.iter().find(|(k, _)| k == id);
            let tag = B64.decode(tag.trim());
            matches!((key, tag), (Some((_, key)), Ok(tag)) if hmac::verify(key, payload, &tag).is_ok())
        });
        if verified { Written::ByHerald } else { Written::Forged }
    }

    /// Opens what [`KeyRing::seal`] produced (a secret stored unsealed is returned as is).
    pub fn open(&self, owner: &str, stored: &str) -> Result<String, SecretError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else { return Ok(stored.to_owned()) };
        let (id, sealed) = rest.split_once(':').ok_or_else(|| SecretError("malformed sealed secret".into()))?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| SecretError(format!("the secret is sealed with key {id:?}, which is not configured")))?;
        let bytes = B64.decode(sealed).map_err(|_| SecretError("malformed sealed secret".into()))?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretError("malformed sealed secret".into()));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError("malformed sealed secret".into()))?;
        let mut data = ciphertext.to_vec();
        let plain = key.open_in_place(nonce, Aad::from(owner.as_bytes()), &mut data).map_err(|_| {
            SecretError(format!("the secret does not open with key {id:?} (tampered, or another subscription's)"))
        })?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError("the opened secret is not text".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "k2:HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo=";

    #[test]
    fn seal_and_open() {
        let ring = KeyRing::parse(K1).unwrap();
        let sealed = ring.seal("sub_1", "whsec_abc");
        assert!(sealed.starts_with("enc:v1:k1:"));
        assert!(!sealed.contains("whsec_abc"));
        assert_ne!(sealed, ring.seal("sub_1", "whsec_abc"), "a fresh nonce each time");
        assert_eq!(ring.open("sub_1", &sealed).unwrap(), "whsec_abc");
        assert!(ring.open("sub_2", &sealed).is_err(), "bound to its subscription");
    }

    #[test]
    fn key_rotation_keeps_old_secrets_readable() {
        let old = KeyRing::parse(K1).unwrap();
        let sealed = old.seal("s", "whsec_x");
        let rotated = KeyRing::parse(&format!("{K2},{K1}")).unwrap();
        assert_eq!(rotated.open("s", &sealed).unwrap(), "whsec_x");
        assert!(rotated.seal("s", "whsec_y").starts_with("enc:v1:k2:"));
        let dropped = KeyRing::parse(K2).unwrap();
        assert!(dropped.open("s", &sealed).unwrap_err().0.contains("not configured"));
    }

    #[test]
    fn operational_events_are_told_from_forged_ones_by_their_mac() {
        let ring = KeyRing::parse(K1).unwrap();
        let mac = ring.operator_mac(b"event").unwrap();
        assert!(mac.starts_with("k1:"), "{mac}");
        assert_eq!(ring.operator_written(b"event", Some(&mac)), Written::ByHerald);
        assert_eq!(ring.operator_written(b"evenT", Some(&mac)), Written::Forged, "bound to the payload");
        for forged in [None, Some(""), Some("k1"), Some("k1:@@"), Some("k9:AAAA"), Some("k1:AAAA")] {
            assert_eq!(ring.operator_written(b"event", forged), Written::Forged, "{forged:?}");
        }
        // Not the sealing key: a MAC is no use against a sealed secret and the other way round.
        let sealed = ring.seal("s", "whsec_x");
        assert!(!sealed.contains(mac.split_once(':').unwrap().1));
        // A rotated ring (a new key first) still knows events written with the old one.
        let rotated = KeyRing::parse(&format!("{},{}", K2, K1)).unwrap();
        assert_eq!(rotated.operator_written(b"event", Some(&mac)), Written::ByHerald);
        assert!(rotated.operator_mac(b"event").unwrap().starts_with("k2:"));
        let other = KeyRing::parse(K2).unwrap();
        assert_eq!(other.operator_written(b"event", Some(&mac)), Written::Forged);
    }

    #[test]
    fn tampering_and_bad_keys_are_refused_without_leaking() {
        let ring = KeyRing::parse(K1).unwrap();
        let mut sealed = ring.seal("s", "whsec_x");
        sealed.replace_range(sealed.len() - 3.., "AAA");
        assert!(ring.open("s", &sealed).is_err());
        for bad in ["k1", "k1:@@@", "k1:AAAA", "bad id:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="] {
            let err = KeyRing::parse(bad).unwrap_err();
            assert!(!err.0.contains("AAEC"), "{err}");
        }
        let none = KeyRing::default();
        assert!(!none.is_enabled());
        assert_eq!(none.operator_mac(b"x"), None);
        assert_eq!(none.operator_written(b"x", None), Written::Unknown);
        assert_eq!(none.seal("s", "whsec_x"), "whsec_x");
        assert_eq!(none.open("s", "whsec_x").unwrap(), "whsec_x");
    }
}

/// The key ring's settings, shared by gateway and dispatcher (which must be given the same).
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// Keys that seal signing secrets at rest, `id:base64` comma-separated, the first sealing
    /// new ones. Prefer HERALD_SECRET_KEYS_FILE. Without keys, secrets are stored unsealed.
    #[arg(long, env = "HERALD_SECRET_KEYS", hide_env_values = true)]
    pub secret_keys: Option<String>,
    /// File of keys, one `id:base64` per line.
    #[arg(long, env = "HERALD_SECRET_KEYS_FILE")]
    pub secret_keys_file: Option<std::path::PathBuf>,
}

impl KeyArgs {
    /// Loads the key ring from the variable and the file together.
    pub fn load(&self) -> Result<KeyRing, SecretError> {
        let mut text = self.secret_keys.clone().unwrap_or_default();
        if let Some(path) = &self.secret_keys_file {
            let file = std::fs::read_to_string(path)
                .map_err(|e| SecretError(format!("HERALD_SECRET_KEYS_FILE: cannot read {}: {e}", path.display())))?;
            text.push('\n');
            text.push_str(&file);
        }
        let ring = KeyRing::parse(&text).map_err(|e| SecretError(format!("HERALD_SECRET_KEYS: {e}")))?;
        if !ring.is_enabled() {
            tracing::warn!(
                "no HERALD_SECRET_KEYS: subscription secrets are stored unsealed (fine for local development only)"
            );
        }
        Ok(ring)
    }
}
