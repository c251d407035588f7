//! `heraldctl sources`: inbound webhook sources, the URLs providers call (`POST /in/{id}`).

use clap::Subcommand;
use serde_json::{Value, json};

use crate::{Api, text_arg, with_query};

#[derive(Subcommand)]
pub(crate) enum SourceCommand {
    /// Every source (of a tenant), by id.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// One source.
    Get { id: String },
    /// A new source; prints its `url` (what the provider is given) and, when Herald made the
    /// secret, that secret, once.
    Create(Box<NewSource>),
    /// Delete a source: its URL answers 404 from then on.
    Delete { id: String },
}

#[derive(clap::Args)]
pub(crate) struct NewSource {
    /// stripe, github, shopify, standard-webhooks, hmac, basic or api-key.
    #[arg(long)]
    provider: String,
    /// The provider's secret (or the basic password, the API key), or @file; omitted:
    /// Herald makes one. Prefer @file or HERALD_SOURCE_SECRET to the flag.
    #[arg(long, env = "HERALD_SOURCE_SECRET", hide_env_values = true)]
    secret: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    /// The events' type; `{type}` stands for the provider's (`stripe.{type}`).
    #[arg(long)]
    event_type: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// Stripe, Standard Webhooks: how far the signed timestamp may be from now (seconds).
    #[arg(long)]
    tolerance_seconds: Option<u32>,
    /// hmac: the signature's header; api-key: the key's.
    #[arg(long)]
    header: Option<String>,
    /// hmac: sha256, sha512 or sha1.
    #[arg(long)]
    algorithm: Option<String>,
    /// hmac: hex or base64.
    #[arg(long)]
    encoding: Option<String>,
    /// hmac: what precedes the signature (`sha256=`).
    #[arg(long)]
    prefix: Option<String>,
    /// basic: the user name.
    #[arg(long)]
    username: Option<String>,
    /// hmac, basic, api-key: the header with the provider's delivery id.
    #[arg(long)]
    id_header: Option<String>,
}

/// Runs one `sources` command and returns what to print.
pub(crate) async fn run(api: &Api, cmd: SourceCommand) -> anyhow::Result<Value> {
    Ok(match cmd {
        SourceCommand::List { tenant } => {
            api.call(reqwest::Method::GET, &with_query("/v1/sources", &[("tenant", tenant)]), None).await?
        }
        SourceCommand::Get { id } => api.call(reqwest::Method::GET, &format!("/v1/sources/{id}"), None).await?,
        SourceCommand::Create(new) => {
            let NewSource {
                provider,
                secret,
                tenant,
                event_type,
                description,
                tolerance_seconds,
                header,
                algorithm,
                encoding,
                prefix,
                username,
                id_header,
            } = *new;
            let mut body = json!({"provider": provider});
            if let Some(s) = secret {
                body["secret"] = json!(text_arg("--secret", &s)?.trim());
            }
            let optional = [
                ("tenant", tenant),
                ("event_type", event_type),
                ("description", description),
                ("header", header),
                ("algorithm", algorithm),
                ("encoding", encoding),
                ("prefix", prefix),
                ("username", username),
                ("id_header", id_header),
            ];
            for (name, value) in optional {
                if let Some(v) = value {
                    body[name] = json!(v);
                }
            }
            if let Some(t) = tolerance_seconds {
                body["tolerance_seconds"] = json!(t);
            }
            api.call(reqwest::Method::POST, "/v1/sources", Some(body)).await?
        }
        SourceCommand::Delete { id } => {
            api.call(reqwest::Method::DELETE, &format!("/v1/sources/{id}"), None).await?;
            json!({"deleted": id})
        }
    })
}
