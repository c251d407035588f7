//! `heraldctl subscriptions`: create, list, show, change, delete, rotate the secret, test, read the
//! attempts of, and replay to, subscriptions.

use std::collections::BTreeMap;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::{Api, json_arg, parse_pair, text_arg, with_query};

#[derive(Subcommand)]
pub(crate) enum SubCommand {
    /// Create a subscription; prints it with its secret (shown only this once).
    Create {
        /// Where to POST webhooks.
        #[arg(long, required_unless_present = "destination", conflicts_with = "destination")]
        url: Option<String>,
        /// A broker to write deliveries to instead (JSON, or @file holding it, since its URL
        /// carries credentials): `{"type": "amqp", "url": "amqp://…", "exchange": "…"}`,
        /// `{"type": "nats", "url": "nats://…", "subject": "…"}`, `{"type": "redis", "url":
        /// "redis://…", "stream": "…"}`.
        #[arg(long)]
        destination: Option<String>,
        /// Event type pattern (repeatable): `order.created`, `order.*`, `>`.
        #[arg(long = "event-type", short = 't', required = true)]
        event_types: Vec<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Extra request header `name=value` (repeatable).
        #[arg(long = "header", value_parser = parse_pair)]
        headers: Vec<(String, String)>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        /// `hmac-sha256` (the default: a shared `whsec_` secret) or `ed25519` (subscribers get a
        /// `whpk_` public key).
        #[arg(long, value_parser = ["hmac-sha256", "ed25519"])]
        signature_scheme: Option<String>,
        /// A payload filter (JSON): only events it matches are delivered.
        #[arg(long)]
        filter: Option<String>,
        /// A transformation: JavaScript defining `handler(webhook)`, or @file.js.
        #[arg(long)]
        transformation: Option<String>,
        #[command(flatten)]
        client_certificate: ClientCertArgs,
        /// How webhooks authenticate to the endpoint besides the signature (JSON, or @file
        /// holding it, since it carries a secret): `{"type": "oauth2_client_credentials",
        /// "token_url": "…", "client_id": "…", "client_secret": "…"}`, `{"type": "basic",
        /// "username": "…", "password": "…"}`, `{"type": "bearer", "token": "…"}`.
        #[arg(long)]
        auth: Option<String>,
    },
    /// List subscriptions.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        /// The `next` value of the previous page.
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one subscription.
    Get { id: String },
    /// Change a subscription.
    Update {
        id: String,
        /// A webhook URL: it becomes (or stays) a webhook.
        #[arg(long, conflicts_with = "destination")]
        url: Option<String>,
        /// A new broker destination (JSON or @file), replacing the current one.
        #[arg(long)]
        destination: Option<String>,
        /// Replaces the type patterns (repeatable).
        #[arg(long = "event-type", short = 't')]
        event_types: Vec<String>,
        #[arg(long)]
        enabled: Option<bool>,
        #[arg(long)]
        description: Option<String>,
        /// A new payload filter (JSON); '{}' removes it.
        #[arg(long)]
        filter: Option<String>,
        /// A new transformation (JavaScript or @file.js); '' removes it.
        #[arg(long)]
        transformation: Option<String>,
        #[command(flatten)]
        client_certificate: ClientCertArgs,
        /// Stop presenting a client certificate.
        #[arg(long, conflicts_with_all = ["client_cert", "client_key"])]
        remove_client_cert: bool,
        /// New endpoint authentication (JSON or @file); leave its secret out to keep the
        /// stored one.
        #[arg(long, conflicts_with = "remove_auth")]
        auth: Option<String>,
        /// Stop sending an Authorization header.
        #[arg(long)]
        remove_auth: bool,
    },
    /// Delete a subscription.
    Delete { id: String },
    /// Replace its signing secret; the old one keeps signing for the grace period.
    RotateSecret {
        id: String,
        /// e.g. 24h (the default), 0s to stop the old secret at once.
        #[arg(long)]
        grace: Option<String>,
        /// Switch to this scheme (`hmac-sha256` or `ed25519`); both sign during the grace period.
        #[arg(long, value_parser = ["hmac-sha256", "ed25519"])]
        signature_scheme: Option<String>,
    },
    /// Send it a `herald.ping` test webhook.
    Test { id: String },
    /// Its delivery attempts, newest first.
    Attempts {
        id: String,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Redeliver the retained events of a time range to it.
    Replay {
        id: String,
        /// RFC 3339.
        #[arg(long)]
        since: String,
        /// RFC 3339 (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Narrow to these type patterns (repeatable).
        #[arg(long = "event-type", short = 't')]
        event_types: Vec<String>,
    },
}

/// A client certificate for mutual TLS, from PEM files.
#[derive(clap::Args)]
pub(crate) struct ClientCertArgs {
    /// PEM file of the certificate to present to the subscriber (then any intermediates).
    #[arg(long, requires = "client_key")]
    client_cert: Option<std::path::PathBuf>,
    /// PEM file of its private key (unencrypted); stored sealed, never shown again.
    #[arg(long, requires = "client_cert")]
    client_key: Option<std::path::PathBuf>,
}

impl ClientCertArgs {
    /// The API's `client_certificate` object, if files were given.
    fn read(&self) -> anyhow::Result<Option<Value>> {
        let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) else { return Ok(None) };
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        };
        Ok(Some(json!({"certificate": read(cert)?, "private_key": read(key)?})))
    }
}

pub(crate) async fn run(api: &Api, cmd: SubCommand) -> anyhow::Result<Value> {
    Ok(match cmd {
        SubCommand::Create {
            url,
            destination,
            event_types,
            tenant,
            description,
            headers,
            disabled,
            signature_scheme,
            filter,
            transformation,
            client_certificate,
            auth,
        } => {
            let mut body = json!({"event_types": event_types, "enabled": !disabled});
            if let Some(a) = auth {
                body["auth"] = json_arg("--auth", &a)?;
            }
            if let Some(t) = transformation {
                body["transformation"] = json!(text_arg("--transformation", &t)?);
            }
            if let Some(u) = url {
                body["url"] = json!(u);
            }
            if let Some(d) = destination {
                body["destination"] = json_arg("--destination", &d)?;
            }
            if let Some(f) = filter {
                body["filter"] = json_arg("--filter", &f)?;
            }
            if let Some(s) = signature_scheme {
                body["signature_scheme"] = json!(s);
            }
            if let Some(c) = client_certificate.read()? {
                body["client_certificate"] = c;
            }
            if let Some(t) = tenant {
                body["tenant"] = json!(t);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            if !headers.is_empty() {
                body["headers"] = json!(headers.into_iter().collect::<BTreeMap<_, _>>());
            }
            api.call(reqwest::Method::POST, "/v1/subscriptions", Some(body)).await?
        }
        SubCommand::List { tenant, limit, after } => {
            let params = [("tenant", tenant), ("limit", limit.map(|l| l.to_string())), ("after", after)];
            api.call(reqwest::Method::GET, &with_query("/v1/subscriptions", &params), None).await?
        }
        SubCommand::Get { id } => api.call(reqwest::Method::GET, &format!("/v1/subscriptions/{id}"), None).await?,
        SubCommand::Update {
            id,
            url,
            destination,
            event_types,
            enabled,
            description,
            filter,
            transformation,
            client_certificate,
            remove_client_cert,
            auth,
            remove_auth,
        } => {
            let mut body = json!({});
            if let Some(a) = auth {
                body["auth"] = json_arg("--auth", &a)?;
            }
            if remove_auth {
                body["auth"] = Value::Null;
            }
            if let Some(t) = transformation {
                body["transformation"] = json!(text_arg("--transformation", &t)?);
            }
            if let Some(f) = filter {
                body["filter"] = json_arg("--filter", &f)?;
            }
            if let Some(c) = client_certificate.read()? {
                body["client_certificate"] = c;
            }
            if remove_client_cert {
                body["client_certificate"] = Value::Null;
            }
            if let Some(u) = url {
                body["url"] = json!(u);
            }
            if let Some(d) = destination {
                body["destination"] = json_arg("--destination", &d)?;
            }
            if !event_types.is_empty() {
                body["event_types"] = json!(event_types);
            }
            if let Some(e) = enabled {
                body["enabled"] = json!(e);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            api.call(reqwest::Method::PATCH, &format!("/v1/subscriptions/{id}"), Some(body)).await?
        }
        SubCommand::Delete { id } => {
            api.call(reqwest::Method::DELETE, &format!("/v1/subscriptions/{id}"), None).await?;
            json!({"deleted": id})
        }
        SubCommand::RotateSecret { id, grace, signature_scheme } => {
            let mut body = json!({});
            if let Some(g) = grace {
                body["grace"] = json!(g);
            }
            if let Some(s) = signature_scheme {
                body["signature_scheme"] = json!(s);
            }
            api.call(reqwest::Method::POST, &format!("/v1/subscriptions/{id}/rotate-secret"), Some(body)).await?
        }
        SubCommand::Test { id } => {
            api.call(reqwest::Method::POST, &format!("/v1/subscriptions/{id}/test"), None).await?
        }
        SubCommand::Attempts { id, limit } => {
            let path =
                with_query(&format!("/v1/subscriptions/{id}/attempts"), &[("limit", limit.map(|l| l.to_string()))]);
            api.call(reqwest::Method::GET, &path, None).await?
        }
        SubCommand::Replay { id, since, until, event_types } => {
            let mut body = json!({"since": since});
            if let Some(u) = until {
                body["until"] = json!(u);
            }
            if !event_types.is_empty() {
                body["event_types"] = json!(event_types);
            }
            eprintln!("replaying…");
            api.call(reqwest::Method::POST, &format!("/v1/subscriptions/{id}/replay"), Some(body)).await?
        }
    })
}
