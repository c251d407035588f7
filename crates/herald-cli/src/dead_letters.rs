//! `heraldctl dead-letters`: list and redrive.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::{Api, with_query};

#[derive(Subcommand)]
pub(crate) enum DeadLetterCommand {
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

pub(crate) async fn run(api: &Api, cmd: DeadLetterCommand) -> anyhow::Result<Value> {
    Ok(match cmd {
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
            for (k, v) in [("subscription", subscription), ("tenant", tenant), ("since", since), ("until", until)] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            eprintln!("redriving…");
            api.call(reqwest::Method::POST, "/v1/dead-letters/redrive", Some(body)).await?
        }
    })
}
