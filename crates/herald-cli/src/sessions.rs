//! `heraldctl sessions`: the live console and portal sessions, and ending one.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::{Api, with_query};

#[derive(Subcommand)]
pub(crate) enum SessionCommand {
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

pub(crate) async fn run(api: &Api, cmd: SessionCommand) -> anyhow::Result<Value> {
    Ok(match cmd {
        SessionCommand::List { kind, tenant } => {
            let path = with_query("/v1/sessions", &[("kind", kind), ("tenant", tenant)]);
            api.call(reqwest::Method::GET, &path, None).await?
        }
        SessionCommand::Revoke { id } => {
            api.call(reqwest::Method::DELETE, &format!("/v1/sessions/{id}"), None).await?;
            json!({"revoked": id})
        }
    })
}
