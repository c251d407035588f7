//! Standard Webhooks' asymmetric scheme, `v1a`: an Ed25519 signature of
//! `{webhook-id}.{webhook-timestamp}.{body}`. The sender keeps a `whsk_` signing key (base64 of
//! the 32-byte seed, RFC 8032); receivers get only the `whpk_` public key (base64 of its 32
//! bytes), which verifies and cannot sign, so a leaked public key forges nothing.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::Error;

/// Prefix of a signing key in its textual form.
pub const SIGNING_KEY_PREFIX: &str = "whsk_";
/// Prefix of a public key in its textual form.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";

/// An Ed25519 signing key (`whsk_…`).
pub struct SigningKey {
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

/// An Ed25519 public key (`whpk_…`).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    bytes: [u8; 32],
}

fn decode_key(text: &str, prefix: &str) -> Result<Vec<u8>, Error> {
    let encoded = text.trim();
    let encoded = encoded.strip_prefix(prefix).ok_or(Error::InvalidKey("it does not start with the right prefix"))?;
    B64.decode(encoded).map_err(|_| Error::InvalidKey("it is not valid base64"))
}

impl SigningKey {
    /// The key of a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).expect("any 32 bytes are an Ed25519 seed");
        Self { seed, pair }
    }

    /// Parses `whsk_<base64 of the 32-byte seed>`; 64 bytes (seed, then public key, as some
    /// libraries write it) are accepted when the public half matches.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let raw = decode_key(text, SIGNING_KEY_PREFIX)?;
        let seed: [u8; 32] =
            raw.get(..32).and_then(|s| s.try_into().ok()).ok_or(Error::InvalidKey("a signing key is 32 bytes"))?;
        let key = Self::from_seed(seed);
        match raw.len() {
            32 => Ok(key),
            64 if raw[32..] == key.public_key().bytes => Ok(key),
            64 => Err(Error::InvalidKey("its public half does not belong to its seed")),
            _ => Err(Error::InvalidKey("a signing key is 32 bytes")),
        }
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        Self::from_seed(seed)
    }

    /// The `whsk_…` text form.
    pub fn to_text(&self) -> String {
        format!("{SIGNING_KEY_PREFIX}{}", B64.encode(self.seed))
    }

    /// The public key receivers verify with.
    pub fn public_key(&self) -> PublicKey {
        let bytes = self.pair.public_key().as_ref().try_into().expect("an Ed25519 public key is 32 bytes");
        PublicKey { bytes }
    }

    /// Signs one message: returns `v1a,<base64 Ed25519 signature of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let signature = self.pair.sign(&crate::signed_content(msg_id, timestamp, body));
        format!("v1a,{}", B64.encode(signature.as_ref()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material, not even in debug logs.
        f.write_str("SigningKey(***)")
    }
}

impl PublicKey {
    /// Parses `whpk_<base64 of 32 bytes>`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let raw = decode_key(text, PUBLIC_KEY_PREFIX)?;
        let bytes = raw.try_into().map_err(|_| Error::InvalidKey("a public key is 32 bytes"))?;
        Ok(Self { bytes })
    }

    /// The `whpk_…` text form.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_KEY_PREFIX}{}", B64.encode(self.bytes))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// True if `signature` (the base64 part of one `v1a,` entry) is this key's signature of the
    /// message.
    pub(crate) fn matches(&self, msg_id: &str, timestamp: i64, body: &[u8], signature: &str) -> bool {
        let Ok(signature) = B64.decode(signature) else { return false };
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(&crate::signed_content(msg_id, timestamp, body), &signature)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Verifier;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn a_whsk_key_is_an_rfc_8032_seed() {
        // RFC 8032, section 7.1, test 1: the secret key and the public key it derives.
        let seed: [u8; 32] =
            hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").try_into().unwrap();
        let key = SigningKey::from_seed(seed);
        assert_eq!(
            key.public_key().as_bytes().to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let text = key.to_text();
        assert!(text.starts_with("whsk_"));
        assert_eq!(SigningKey::parse(&text).unwrap().public_key(), key.public_key());
        let long = format!("whsk_{}", B64.encode([seed.as_slice(), key.public_key().as_bytes()].concat()));
        assert_eq!(SigningKey::parse(&long).unwrap().public_key(), key.public_key());
    }

    #[test]
    fn signatures_verify_with_the_public_key_and_nothing_else() {
        let key = SigningKey::generate();
        let public = PublicKey::parse(&key.public_key().to_text()).unwrap();
        let (id, ts, body) = ("msg_1", 1_700_000_000, br#"{"a":1}"#.as_slice());
        let signature = key.sign(id, ts, body);
        assert!(signature.starts_with("v1a,"));
        let verifier = Verifier::for_public_key(public);
        verifier.verify_at(Some(id), Some(&ts.to_string()), Some(&signature), body, ts).unwrap();
        // Another key, a changed body, id or timestamp: refused.
        let other = Verifier::for_public_key(SigningKey::generate().public_key());
        let at = |v: &Verifier, id: &str, t: i64, body: &[u8]| {
            v.verify_at(Some(id), Some(&t.to_string()), Some(&signature), body, ts)
        };
        assert_eq!(at(&other, id, ts, body), Err(Error::SignatureMismatch));
        assert_eq!(at(&verifier, id, ts, b"{}"), Err(Error::SignatureMismatch));
        assert_eq!(at(&verifier, "msg_2", ts, body), Err(Error::SignatureMismatch));
        assert_eq!(at(&verifier, id, ts + 1, body), Err(Error::SignatureMismatch));
        // A v1 (HMAC) signature says nothing to a verifier that holds only a public key.
        let hmac = crate::Secret::generate().sign(id, ts, body);
        assert_eq!(
            verifier.verify_at(Some(id), Some(&ts.to_string()), Some(&hmac), body, ts),
            Err(Error::NoSignatures)
        );
    }

    #[test]
    fn a_header_with_both_schemes_verifies_with_either_key() {
        let (secret, key) = (crate::Secret::generate(), SigningKey::generate());
        let (id, ts, body) = ("msg_both", 1_700_000_000, b"{}".as_slice());
        let header = format!("{} {}", secret.sign(id, ts, body), key.sign(id, ts, body));
        let check = |v: Verifier| v.verify_at(Some(id), Some(&ts.to_string()), Some(&header), body, ts);
        check(Verifier::new(secret.clone())).unwrap();
        check(Verifier::for_public_key(key.public_key())).unwrap();
        check(Verifier::new(crate::Secret::generate()).with_public_key(key.public_key())).unwrap();
    }

    #[test]
    fn malformed_keys_are_refused_with_a_reason() {
        for bad in ["", "whpk_", "whpk_!!!", "whsec_AAAA", "whpk_AAAA", &format!("whpk_{}", B64.encode([0u8; 31]))] {
            assert!(matches!(PublicKey::parse(bad), Err(Error::InvalidKey(_))), "{bad:?}");
        }
        let seed = [7u8; 32];
        let wrong_half = format!("whsk_{}", B64.encode([seed.as_slice(), &[0u8; 32]].concat()));
        assert!(matches!(SigningKey::parse(&wrong_half), Err(Error::InvalidKey(_))));
        assert!(matches!(SigningKey::parse(&format!("whsk_{}", B64.encode([1u8; 16]))), Err(Error::InvalidKey(_))));
        assert_eq!(format!("{:?}", SigningKey::from_seed(seed)), "SigningKey(***)");
    }
}
