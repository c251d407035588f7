//! `heraldctl`: Herald's admin CLI over the gateway API, and `listen`, a local receiver that
//! verifies each webhook's signature and prints it.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Parser, Subcommand};
use serde_json::json;

use api::{Api, http_client, json_arg, parse_pair, profile, text_arg, with_query};
use output::Output;

mod api;
mod dead_letters;
mod event_types;
mod events;
mod listen;
mod output;
mod poll;
mod portal;
mod sessions;
mod sources;
mod subscriptions;

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
    Subscriptions(subscriptions::SubCommand),
    /// Send events and read their attempts.
    #[command(subcommand)]
    Events(events::EventCommand),
    /// Exit 0 if the service listening on HERALD_LISTEN answers /healthz (container health
    /// checks).
    Health {
        /// The service's address (a 0.0.0.0 host is asked on 127.0.0.1).
        #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
        address: String,
    },
    /// List and redrive dead letters.
    #[command(subcommand, name = "dead-letters", alias = "dlq")]
    DeadLetters(dead_letters::DeadLetterCommand),
    /// Browse and manage the event-type catalog.
    #[command(subcommand, name = "event-types", alias = "types")]
    EventTypes(event_types::EventTypeCommand),
    /// Manage inbound webhook sources (the URLs providers call).
    #[command(subcommand)]
    Sources(sources::SourceCommand),
    /// Read a polling subscription's events; --follow keeps reading like `tail -f`.
    Poll(poll::PollArgs),
    /// A one-time link into a tenant's portal (what an operator's backend embeds in an iframe).
    PortalLink(portal::PortalLinkArgs),
    /// List and end console and portal sessions.
    #[command(subcommand)]
    Sessions(sessions::SessionCommand),
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
        Command::Listen { secret, port, host, status } => {
            listen::listen(&secret, SocketAddr::new(host, port), status).await
        }
        Command::Subscriptions(cmd) => {
            out_fmt.print(&subscriptions::run(&api, cmd).await?)?;
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
            out_fmt.print(&event_types::run(&api, cmd).await?)?;
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
        Command::PortalLink(args) => {
            let out = portal::run(&api, args).await?;
            out_fmt.print(&out)?;
            Ok(())
        }
        Command::Sessions(cmd) => {
            out_fmt.print(&sessions::run(&api, cmd).await?)?;
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
        Command::Events(cmd) => {
            out_fmt.print(&events::run(&api, cmd).await?)?;
            Ok(())
        }
        Command::DeadLetters(cmd) => {
            out_fmt.print(&dead_letters::run(&api, cmd).await?)?;
            Ok(())
        }
    }
}
