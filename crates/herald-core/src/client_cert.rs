//! Client certificates of subscriptions (mutual TLS). What a user gives is checked once, at the
//! API — PEM that parses, a key that belongs to the certificate, not expired — and stored with
//! its private key sealed like the signing secrets. The dispatcher opens it into the identity
//! its TLS client presents to that subscriber alone. The key is never returned by the API;
//! the certificate's subject, expiry and fingerprint are.

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::proto;
use crate::secrets::{KeyRing, SecretError};
use crate::subscription::InvalidField;

/// The API field the checks report on.
const FIELD: &str = "client_certificate";

/// Largest certificate chain, and largest key, accepted (PEM bytes each).
pub const MAX_PEM_BYTES: usize = 64 * 1024;

fn invalid(message: impl Into<String>) -> InvalidField {
    InvalidField { field: FIELD, message: message.into() }
}

/// What the key is sealed against: the subscription, and this field (so a sealed value cannot
/// be moved between a subscription's signing secrets and its client key).
fn owner(subscription_id: &str) -> String {
    format!("{subscription_id}/client_certificate")
}

/// A certificate and key that passed [`check`].
#[derive(Debug)]
pub struct Checked {
    certificate: String,
    private_key: String,
    subject: String,
    not_after: OffsetDateTime,
    fingerprint_sha256: String,
}

/// Checks a certificate chain (PEM, the subscription's own certificate first) and its private
/// key (unencrypted PEM: PKCS#8, PKCS#1 or SEC1) as of `now`.
pub fn check(certificate: &str, private_key: &str, now: OffsetDateTime) -> Result<Checked, InvalidField> {
    if certificate.len() > MAX_PEM_BYTES || private_key.len() > MAX_PEM_BYTES {
        return Err(invalid(format!("the certificate and the key are at most {MAX_PEM_BYTES} bytes each")));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(certificate.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("certificate: not PEM certificates ({e})")))?;
    let Some(leaf) = chain.first() else {
        return Err(invalid("certificate: holds no `-----BEGIN CERTIFICATE-----` block"));
    };
    let key = PrivateKeyDer::from_pem_slice(private_key.as_bytes()).map_err(|_| {
        invalid("private_key: not an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1; decrypt it first)")
    })?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| invalid(format!("private_key: not a key TLS can use ({e})")))?;
    match rustls::sign::CertifiedKey::new(chain.clone(), signing_key).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => return Err(invalid("private_key: does not belong to the (first) certificate")),
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| invalid(format!("certificate: the first certificate does not parse ({e})")))?;
    let not_after = OffsetDateTime::from_unix_timestamp(parsed.validity().not_after.timestamp())
        .map_err(|_| invalid("certificate: its expiry is out of range"))?;
    if not_after <= now {
        return Err(invalid(format!("certificate: expired at {}", crate::rfc3339(not_after))));
    }
    let fingerprint_sha256 =
        ring::digest::digest(&ring::digest::SHA256, leaf).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Checked {
        certificate: certificate.trim().to_owned(),
        private_key: private_key.trim().to_owned(),
        subject: parsed.subject().to_string(),
        not_after,
        fingerprint_sha256,
    })
}

impl Checked {
    /// What is stored: the key sealed for `subscription_id`.
    pub fn seal(self, subscription_id: &str, keys: &KeyRing) -> proto::ClientCertificate {
        proto::ClientCertificate {
            private_key: keys.seal(&owner(subscription_id), &self.private_key),
            certificate: self.certificate,
            subject: self.subject,
            not_after: crate::rfc3339(self.not_after),
            fingerprint_sha256: self.fingerprint_sha256,
        }
    }
}

/// The subscription's client certificate and opened key as one PEM document (what TLS clients
/// load as an identity), or `None` when it has none.
pub fn open(sub: &proto::Subscription, keys: &KeyRing) -> Option<Result<String, SecretError>> {
    let stored = sub.client_certificate.as_ref()?;
    Some(keys.open(&owner(&sub.id), &stored.private_key).map(|key| format!("{}\n{key}\n", stored.certificate)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A throw-away self-signed certificate would need a generator here; these tests cover what
    // needs none. Whole certificates are checked end to end in the e2e suite (tests/egress.rs),
    // whose harness makes them with rcgen.

    #[test]
    fn what_is_not_a_certificate_or_key_is_refused_with_the_reason() {
        let now = OffsetDateTime::now_utc();
        let err = check("hello", "", now).unwrap_err();
        assert_eq!(err.field, "client_certificate");
        assert!(err.message.contains("no `-----BEGIN CERTIFICATE-----`"), "{err}");
        let too_big = "x".repeat(MAX_PEM_BYTES + 1);
        assert!(check(&too_big, "", now).unwrap_err().message.contains("at most"));
        let garbled = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = check(garbled, "nope", now).unwrap_err();
        assert!(err.message.starts_with("private_key:"), "{err}");
    }

    #[test]
    fn the_key_is_sealed_for_its_own_field() {
        let ring = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        let checked = Checked {
            certificate: "CERT".into(),
            private_key: "KEY".into(),
            subject: "CN=x".into(),
            not_after: OffsetDateTime::UNIX_EPOCH,
            fingerprint_sha256: "00".into(),
        };
        let stored = checked.seal("sub_1", &ring);
        assert!(stored.private_key.starts_with("enc:v1:") && !stored.private_key.contains("KEY"));
        let sub =
            proto::Subscription { id: "sub_1".into(), client_certificate: Some(stored.clone()), ..Default::default() };
        assert_eq!(open(&sub, &ring).unwrap().unwrap(), "CERT\nKEY\n");
        // Moved to another subscription, or into a signing secret's place, it does not open.
        let other = proto::Subscription { id: "sub_2".into(), client_certificate: Some(stored.clone()), ..sub };
        assert!(open(&other, &ring).unwrap().is_err());
        assert!(ring.open("sub_1", &stored.private_key).is_err());
        assert!(open(&proto::Subscription::default(), &ring).is_none());
    }
}
