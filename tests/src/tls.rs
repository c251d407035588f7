//! Certificates made by the harness itself (no files checked in): a private CA, server
//! certificates it signs (current, expired, for another name), and a TLS listener that lets a
//! [`crate::Receiver`] speak HTTPS.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// A private certificate authority for one test.
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

/// How a server certificate's validity period lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday to next year.
    Current,
    /// Ended yesterday.
    Expired,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        Self { pem: cert.pem(), params, key }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA certificate to a new file (what `HERALD_CA_FILE` takes) and returns its path.
    pub fn write_pem(&self) -> PathBuf {
        let path = crate::temp_dir("herald-ca").join("ca.pem");
        std::fs::write(&path, &self.pem).expect("write CA file");
        path
    }

    /// A certificate for `host` signed by this CA, and its key.
    pub fn issue(&self, host: &str, validity: Validity) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let (cert, key) = self.server_certificate(host, validity);
        (cert.der().clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
    }

    /// A current certificate for `host` and its key, written as PEM files into `dir` (what
    /// brokers' TLS settings take): `(certificate, key)`.
    pub fn write_server_files(&self, host: &str, dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let (cert, key) = self.server_certificate(host, Validity::Current);
        let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    fn server_certificate(&self, host: &str, validity: Validity) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec![host.to_owned()]).expect("server params");
        params.distinguished_name.push(DnType::CommonName, host);
        let now = OffsetDateTime::now_utc();
        (params.not_before, params.not_after) = match validity {
            Validity::Current => (now - Duration::days(1), now + Duration::days(365)),
            Validity::Expired => (now - Duration::days(30), now - Duration::days(1)),
        };
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign server certificate");
        (cert, key)
    }

    /// A client certificate named `name` signed by this CA, and its key, both PEM (what a
    /// subscription's `client_certificate` takes).
    pub fn issue_client(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        (params.not_before, params.not_after) = (now - Duration::days(1), now + Duration::days(90));
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign client certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A TLS server configuration presenting a certificate for `host` (HTTP/1.1 only).
    pub fn server_config(&self, host: &str, validity: Validity) -> Arc<rustls::ServerConfig> {
        self.server(host, validity, rustls::ServerConfig::builder().with_no_client_auth())
    }

    /// Like [`TestCa::server_config`], for a server that demands a client certificate signed
    /// by `clients` and closes the handshake of any client without one.
    pub fn server_config_requiring_client_certificates(
        &self,
        host: &str,
        clients: &TestCa,
    ) -> Arc<rustls::ServerConfig> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        let ca = <CertificateDer as rustls::pki_types::pem::PemObject>::from_pem_slice(clients.pem.as_bytes())
            .expect("client CA PEM");
        roots.add(ca).expect("client CA");
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().expect("client verifier");
        self.server(host, Validity::Current, rustls::ServerConfig::builder().with_client_cert_verifier(verifier))
    }

    fn server(
        &self,
        host: &str,
        validity: Validity,
        builder: rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>,
    ) -> Arc<rustls::ServerConfig> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (cert, key) = self.issue(host, validity);
        let mut config = builder.with_single_cert(vec![cert], key).expect("server TLS config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A TCP listener whose connections are TLS: handshakes that fail are dropped (and counted),
/// as a real server's would be.
pub(crate) struct TlsListener {
    pub(crate) tcp: tokio::net::TcpListener,
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    pub(crate) failed_handshakes: Arc<std::sync::atomic::AtomicUsize>,
    /// SHA-256 (hex) of each client certificate presented in a handshake that succeeded.
    pub(crate) client_certificates: Arc<std::sync::Mutex<Vec<String>>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else { continue };
            match self.acceptor.accept(stream).await {
                Ok(tls) => {
                    if let Some(presented) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                        self.client_certificates.lock().unwrap().push(fingerprint(presented));
                    }
                    return (tls, addr);
                }
                Err(_) => {
                    self.failed_handshakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// SHA-256 of a certificate's DER, lower-case hex (as Herald's API shows it).
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
