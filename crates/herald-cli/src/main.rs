//! `heraldctl`: Herald's admin CLI over the gateway API, and `listen`, a local receiver that
//! verifies each webhook's signature and prints it.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use herald_signature::{PublicKey, Secret, Verifier};

mod poll;
mod sources;

#[derive(Parser)]
#[command(name = "heraldctl", version, about = "Manage Herald and receive its webhooks locally")]
struct Cli {
    /// The gateway's base URL [default: the profile's, else http://127.0.0.1:8080].
    #[arg(long, global = true, env = "HERALD_URL")]
    gateway: Option<String>,
    /// API token (prefer HERALD_TOKEN or a profile to the flag).
    #[arg(long, global = true, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A profile of the profiles file (`[name]` sections with `url =` and `token =`), at
    /// HERALD_PROFILES_FILE or ~/.config/heraldctl/profiles; `default` is used when present.
    #[arg(long, global = true, env = "HERALD_PROFILE")]
    profile: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive webhooks on a local port, verify their signatures and print them.
    Listen {
        /// The subscription's signing secret (`whsec_…`, HMAC `v1`) or Ed25519 public key
        /// (`whpk_…`, `v1a`); or set HERALD_SECRET.
        #[arg(long, visible_alias = "public-key", env = "HERALD_SECRET", hide_env_values = true)]
        secret: String,
        /// Port to listen on.
        #[arg(long, default_value_t = 9999)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Status to answer verified requests with (e.g. 500 to watch retries).
        #[arg(long, default_value_t = 200)]
        status: u16,
    },
    /// Manage subscriptions.
    #[command(subcommand, alias = "subs")]
    Subscriptions(SubCommand),
    /// Send events and read their attempts.
    #[command(subcommand)]
    Events(EventCommand),
    /// Exit 0 if the service listening on HERALD_LISTEN answers /healthz (container health
    /// checks).
    Health {
        /// The service's address (a 0.0.0.0 host is asked on 127.0.0.1).
        #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
        address: String,
    },
    /// List and redrive dead letters.
    #[command(subcommand, name = "dead-letters", alias = "dlq")]
    DeadLetters(DeadLetterCommand),
    /// Browse and manage the event-type catalog.
    #[command(subcommand, name = "event-types", alias = "types")]
    EventTypes(EventTypeCommand),
    /// Manage inbound webhook sources (the URLs providers call).
    #[command(subcommand)]
    Sources(sources::SourceCommand),
    /// Read a polling subscription's events; --follow keeps reading like `tail -f`.
    Poll(poll::PollArgs),
    /// A one-time link into a tenant's portal (what an operator's backend embeds in an iframe).
    PortalLink {
        /// The tenant whose endpoints the portal shows.
        #[arg(long)]
        tenant: String,
        /// How long the session lasts once opened (default 1h, at most 24h).
        #[arg(long)]
        expires_in: Option<String>,
        /// How long the link may wait to be opened (default 10m).
        #[arg(long)]
        link_expires_in: Option<String>,
        /// The portal's theme (JSON): name, logo_url, primary_color, background_color, text_color.
        #[arg(long)]
        theme: Option<String>,
    },
    /// List and end console and portal sessions.
    #[command(subcommand)]
    Sessions(SessionCommand),
    /// Try a payload filter on an event: does it match, and why.
    #[command(name = "filter-test")]
    FilterTest {
        /// The filter document (JSON), e.g. '{"data": {"amount": {"$gte": 100}}}'.
        #[arg(long)]
        filter: String,
        /// The event (JSON): any of id, type, tenant, source, time, data.
        #[arg(long)]
        event: String,
    },
    /// Run a transformation on a payload as a delivery would: what would be sent, or the error.
    #[command(name = "transformation-test")]
    TransformationTest {
        /// The JavaScript source defining `handler(webhook)`, or @file.js.
        #[arg(long)]
        code: String,
        /// The webhook body (JSON or @file) the handler gets as `webhook.payload`.
        #[arg(long)]
        payload: Option<String>,
        /// `webhook.eventType`.
        #[arg(long)]
        event_type: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum SessionCommand {
    /// The live sessions, newest first, and whether the token behind each is still in force.
    List {
        /// Only `console` or only `portal` sessions.
        #[arg(long)]
        kind: Option<String>,
        /// Only this tenant's portal sessions.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// End a session at once (its id from `sessions list`).
    Revoke { id: String },
}

#[derive(Subcommand)]
enum EventTypeCommand {
    /// List the catalog, by name.
    List {
        #[arg(long)]
        include_deprecated: bool,
    },
    /// Show one type with its schema.
    Get { name: String },
    /// Add a type.
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// JSON Schema for `data` (JSON, or @file).
        #[arg(long)]
        schema: Option<String>,
        /// An example `data` (JSON, or @file).
        #[arg(long)]
        example: Option<String>,
        #[arg(long)]
        deprecated: bool,
    },
    /// Change a type.
    Update {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// A new JSON Schema (JSON, or @file); 'null' removes it.
        #[arg(long)]
        schema: Option<String>,
        #[arg(long)]
        example: Option<String>,
        #[arg(long)]
        deprecated: Option<bool>,
    },
    /// Remove a type (its events are no longer checked).
    Delete { name: String },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// List dead letters, oldest first.
    List {
        #[arg(long)]
        subscription: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// RFC 3339.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Deliver dead letters again with a fresh retry schedule.
    Redrive {
        /// A dead letter's id (repeatable).
        #[arg(long = "id")]
        ids: Vec<u64>,
        #[arg(long)]
        subscription: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
}

/// A client certificate for mutual TLS, from PEM files.
#[derive(clap::Args)]
struct ClientCertArgs {
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

#[derive(Subcommand)]
enum SubCommand {
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

#[derive(Subcommand)]
enum EventCommand {
    /// Publish one event.
    Send {
        /// Event type, e.g. `order.created`.
        #[arg(long = "type", short = 't')]
        event_type: String,
        /// The payload, a JSON document.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Idempotency key (generated when absent).
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Every delivery attempt of one event.
    Attempts {
        id: String,
        /// RFC 3339: when the event was stored (its `stored_at`), so older records are not
        /// read; not needed for `evt_` ids.
        #[arg(long)]
        since: Option<String>,
    },
}

/// `path?k=v&…` with the given parameters (values percent-encoded).
fn with_query(path: &str, params: &[(&str, Option<String>)]) -> String {
    let pairs: Vec<String> =
        params.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", percent(v)))).collect();
    if pairs.is_empty() { path.to_owned() } else { format!("{path}?{}", pairs.join("&")) }
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A JSON command-line argument (or `@file` holding it), or an error that names the flag.
fn json_arg(flag: &str, text: &str) -> anyhow::Result<Value> {
    let text = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("{flag}: cannot read {path}"))?,
        None => text.to_owned(),
    };
    serde_json::from_str(&text).with_context(|| format!("{flag} is not JSON"))
}

/// A text argument, or the contents of the file it names after `@`.
fn text_arg(flag: &str, text: &str) -> anyhow::Result<String> {
    match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("{flag}: cannot read {path}")),
        None => Ok(text.to_owned()),
    }
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not name=value"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `url` and `token` of one profile of the profiles file, if there is one.
fn profile(name: Option<&str>) -> anyhow::Result<(Option<String>, Option<String>)> {
    let path = match std::env::var_os("HERALD_PROFILES_FILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => match std::env::var_os("HOME") {
            Some(home) => std::path::PathBuf::from(home).join(".config/heraldctl/profiles"),
            None => return Ok((None, None)),
        },
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        if let Some(name) = name {
            bail!("profile {name:?} asked for, but {} cannot be read", path.display());
        }
        return Ok((None, None));
    };
    let wanted = name.unwrap_or("default");
    let (mut section, mut found, mut url, mut token) = (String::new(), false, None, None);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_owned();
            found |= section == wanted;
        } else if section == wanted {
            match line.split_once('=').map(|(k, v)| (k.trim(), v.trim().trim_matches('"'))) {
                Some(("url", v)) => url = Some(v.to_owned()),
                Some(("token", v)) => token = Some(v.to_owned()),
                _ => bail!("{}: cannot read {line:?} (expected url = … or token = …)", path.display()),
            }
        }
    }
    if !found && name.is_some() {
        bail!("no [{wanted}] profile in {}", path.display());
    }
    Ok((url, token))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "heraldctl", &mut std::io::stdout());
        return Ok(());
    }
    let (profile_url, profile_token) = profile(cli.profile.as_deref())?;
    let base = cli.gateway.or(profile_url).unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let api =
        Api { base: base.trim_end_matches('/').to_owned(), token: cli.token.or(profile_token), http: http_client()? };
    let out_fmt = Output { json: cli.json };
    match cli.command {
        Command::Listen { secret, port, host, status } => listen(&secret, SocketAddr::new(host, port), status).await,
        Command::Subscriptions(cmd) => {
            let out = match cmd {
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
                SubCommand::Get { id } => {
                    api.call(reqwest::Method::GET, &format!("/v1/subscriptions/{id}"), None).await?
                }
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
                    api.call(reqwest::Method::POST, &format!("/v1/subscriptions/{id}/rotate-secret"), Some(body))
                        .await?
                }
                SubCommand::Test { id } => {
                    api.call(reqwest::Method::POST, &format!("/v1/subscriptions/{id}/test"), None).await?
                }
                SubCommand::Attempts { id, limit } => {
                    let path = with_query(
                        &format!("/v1/subscriptions/{id}/attempts"),
                        &[("limit", limit.map(|l| l.to_string()))],
                    );
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
            };
            out_fmt.print(&out)?;
            Ok(())
        }
        Command::Completions { .. } => unreachable!("handled before connecting"),
        Command::Health { address } => {
            let address = address.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
            let resp = api.http.get(format!("http://{address}/healthz")).send().await?;
            if !resp.status().is_success() {
                bail!("{address}/healthz answered {}", resp.status());
            }
            println!("ok");
            Ok(())
        }
        Command::EventTypes(cmd) => {
            let out = match cmd {
                EventTypeCommand::List { include_deprecated } => {
                    let params = [("include_deprecated", include_deprecated.then(|| "true".to_owned()))];
                    api.call(reqwest::Method::GET, &with_query("/v1/event-types", &params), None).await?
                }
                EventTypeCommand::Get { name } => {
                    api.call(reqwest::Method::GET, &format!("/v1/event-types/{name}"), None).await?
                }
                EventTypeCommand::Create { name, description, schema, example, deprecated } => {
                    let mut body = json!({"name": name, "deprecated": deprecated});
                    if let Some(d) = description {
                        body["description"] = json!(d);
                    }
                    if let Some(s) = schema {
                        body["schema"] = json_arg("--schema", &s)?;
                    }
                    if let Some(e) = example {
                        body["example"] = json_arg("--example", &e)?;
                    }
                    api.call(reqwest::Method::POST, "/v1/event-types", Some(body)).await?
                }
                EventTypeCommand::Update { name, description, schema, example, deprecated } => {
                    let mut body = json!({});
                    if let Some(d) = description {
                        body["description"] = json!(d);
                    }
                    if let Some(s) = schema {
                        body["schema"] = json_arg("--schema", &s)?;
                    }
                    if let Some(e) = example {
                        body["example"] = json_arg("--example", &e)?;
                    }
                    if let Some(d) = deprecated {
                        body["deprecated"] = json!(d);
                    }
                    api.call(reqwest::Method::PATCH, &format!("/v1/event-types/{name}"), Some(body)).await?
                }
                EventTypeCommand::Delete { name } => {
                    api.call(reqwest::Method::DELETE, &format!("/v1/event-types/{name}"), None).await?;
                    json!({"deleted": name})
                }
            };
            out_fmt.print(&out)?;
            Ok(())
        }
        Command::Poll(args) => {
            if let Some(page) = poll::run(&api, args).await? {
                out_fmt.print(&page)?;
            }
            Ok(())
        }
        Command::Sources(cmd) => {
            out_fmt.print(&sources::run(&api, cmd).await?)?;
            Ok(())
        }
        Command::PortalLink { tenant, expires_in, link_expires_in, theme } => {
            let mut body = json!({"tenant": tenant});
            if let Some(v) = expires_in {
                body["expires_in"] = json!(v);
            }
            if let Some(v) = link_expires_in {
                body["link_expires_in"] = json!(v);
            }
            if let Some(t) = theme {
                body["theme"] = json_arg("--theme", &t)?;
            }
            let out = api.call(reqwest::Method::POST, "/v1/portal/sessions", Some(body)).await?;
            out_fmt.print(&out)?;
            Ok(())
        }
        Command::Sessions(cmd) => {
            let out = match cmd {
                SessionCommand::List { kind, tenant } => {
                    let path = with_query("/v1/sessions", &[("kind", kind), ("tenant", tenant)]);
                    api.call(reqwest::Method::GET, &path, None).await?
                }
                SessionCommand::Revoke { id } => {
                    api.call(reqwest::Method::DELETE, &format!("/v1/sessions/{id}"), None).await?;
                    json!({"revoked": id})
                }
            };
            out_fmt.print(&out)?;
            Ok(())
        }
        Command::TransformationTest { code, payload, event_type } => {
            let mut body = json!({"code": text_arg("--code", &code)?});
            if let Some(p) = payload {
                body["payload"] = json_arg("--payload", &p)?;
            }
            if let Some(t) = event_type {
                body["event_type"] = json!(t);
            }
            let out = api.call(reqwest::Method::POST, "/v1/transformations/test", Some(body)).await?;
            out_fmt.print(&out)?;
            Ok(())
        }
        Command::FilterTest { filter, event } => {
            let body = json!({"filter": json_arg("--filter", &filter)?, "event": json_arg("--event", &event)?});
            let out = api.call(reqwest::Method::POST, "/v1/filters/test", Some(body)).await?;
            out_fmt.print(&out)?;
            Ok(())
        }
        Command::Events(EventCommand::Attempts { id, since }) => {
            let path = with_query(&format!("/v1/events/{id}/attempts"), &[("since", since)]);
            let out = api.call(reqwest::Method::GET, &path, None).await?;
            out_fmt.print(&out)?;
            Ok(())
        }
        Command::DeadLetters(cmd) => {
            let out = match cmd {
                DeadLetterCommand::List { subscription, tenant, since, until, limit } => {
                    let path = with_query(
                        "/v1/dead-letters",
                        &[
                            ("subscription", subscription),
                            ("tenant", tenant),
                            ("since", since),
                            ("until", until),
                            ("limit", limit.map(|l| l.to_string())),
                        ],
                    );
                    api.call(reqwest::Method::GET, &path, None).await?
                }
                DeadLetterCommand::Redrive { ids, subscription, tenant, since, until } => {
                    let mut body = json!({});
                    if !ids.is_empty() {
                        body["ids"] = json!(ids);
                    }
                    for (k, v) in
                        [("subscription", subscription), ("tenant", tenant), ("since", since), ("until", until)]
                    {
                        if let Some(v) = v {
                            body[k] = json!(v);
                        }
                    }
                    eprintln!("redriving…");
                    api.call(reqwest::Method::POST, "/v1/dead-letters/redrive", Some(body)).await?
                }
            };
            out_fmt.print(&out)?;
            Ok(())
        }
        Command::Events(EventCommand::Send { event_type, data, id, tenant }) => {
            let data: Value = serde_json::from_str(&data).context("--data must be a JSON document")?;
            let mut body = json!({"type": event_type, "data": data});
            if let Some(i) = id {
                body["id"] = json!(i);
            }
            if let Some(t) = tenant {
                body["tenant"] = json!(t);
            }
            let out = api.call(reqwest::Method::POST, "/v1/events", Some(body)).await?;
            out_fmt.print(&out)?;
            Ok(())
        }
    }
}

/// Prints API answers: JSON with `--json`, otherwise tables for lists and `key: value` lines
/// for single objects.
struct Output {
    json: bool,
}

impl Output {
    fn print(&self, value: &Value) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
            return Ok(());
        }
        match value.get("data").and_then(Value::as_array) {
            Some(rows) => {
                print_table(rows);
                if let Some(next) = value.get("next").filter(|n| !n.is_null()) {
                    println!("(more: pass {} to see the next page)", cell(next));
                }
            }
            None => match value.as_object() {
                Some(map) => {
                    let width = map.keys().map(String::len).max().unwrap_or(0);
                    for (k, v) in map {
                        println!("{k:width$}  {}", cell(v));
                    }
                }
                None => println!("{}", cell(value)),
            },
        }
        Ok(())
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn print_table(rows: &[Value]) {
    let Some(first) = rows.first().and_then(Value::as_object) else {
        println!("(none)");
        return;
    };
    let columns: &[&str] = if first.contains_key("provider") {
        &["id", "tenant", "provider", "event_type", "url"]
    } else if first.contains_key("event_types") {
        &["id", "tenant", "enabled", "event_types", "url"]
    } else if first.contains_key("outcome") {
        &["seq", "at", "event_id", "attempt", "status", "outcome", "error_class", "duration_ms"]
    } else if first.contains_key("reason") {
        &["id", "dead_at", "tenant", "subscription_id", "event_id", "attempts", "reason"]
    } else {
        &[]
    };
    let columns: Vec<&str> =
        if columns.is_empty() { first.keys().map(String::as_str).collect() } else { columns.to_vec() };
    let cells: Vec<Vec<String>> =
        rows.iter().map(|r| columns.iter().map(|c| cell(r.get(*c).unwrap_or(&Value::Null))).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).max().unwrap_or(0).max(c.len()))
        .collect();
    let line = |items: Vec<String>| {
        let padded: Vec<String> = items.iter().zip(&widths).map(|(s, w)| format!("{s:w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for row in cells {
        line(row);
    }
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?)
}

struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(serde_json::to_vec(&b)?);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await?;
        let value: Value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        if !status.is_success() {
            let detail =
                value.get("detail").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| value.to_string());
            let hint = if status == reqwest::StatusCode::UNAUTHORIZED { " (set HERALD_TOKEN)" } else { "" };
            bail!("{status}: {detail}{hint}");
        }
        Ok(value)
    }
}

async fn listen(secret: &str, addr: SocketAddr, status: u16) -> anyhow::Result<()> {
    let verifier = if secret.trim().starts_with(herald_signature::PUBLIC_KEY_PREFIX) {
        let key = PublicKey::parse(secret).context("--public-key must be the subscription's whpk_… key")?;
        Verifier::for_public_key(key)
    } else {
        Verifier::new(Secret::parse(secret).context("--secret must be the subscription's whsec_… secret")?)
    };
    let verifier = std::sync::Arc::new(verifier);
    let status = StatusCode::from_u16(status).context("--status must be an HTTP status code")?;
    let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let verifier = verifier.clone();
        async move {
            let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let verdict = verifier.verify(h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"), &body);
            let pretty = serde_json::from_slice::<Value>(&body)
                .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            match &verdict {
                Ok(()) => {
                    println!("✔ {method} {uri}  webhook-id={}  signature verified", h("webhook-id").unwrap_or("-"))
                }
                Err(e) => println!("✘ {method} {uri}  webhook-id={}  REJECTED: {e}", h("webhook-id").unwrap_or("-")),
            }
            println!("{pretty}\n");
            match verdict {
                Ok(()) => (status, "ok\n"),
                Err(_) => (StatusCode::UNAUTHORIZED, "invalid signature\n"),
            }
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    println!("listening on http://{addr}/ — verifying webhooks (Ctrl-C to stop)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
