//! `heraldctl events`: publish one, and read one's attempts.

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::{Api, with_query};

#[derive(Subcommand)]
pub(crate) enum EventCommand {
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

pub(crate) async fn run(api: &Api, cmd: EventCommand) -> anyhow::Result<Value> {
    Ok(match cmd {
        EventCommand::Send { event_type, data, id, tenant } => {
            let data: Value = serde_json::from_str(&data).context("--data must be a JSON document")?;
            let mut body = json!({"type": event_type, "data": data});
            if let Some(i) = id {
                body["id"] = json!(i);
            }
            if let Some(t) = tenant {
                body["tenant"] = json!(t);
            }
            api.call(reqwest::Method::POST, "/v1/events", Some(body)).await?
        }
        EventCommand::Attempts { id, since } => {
            let path = with_query(&format!("/v1/events/{id}/attempts"), &[("since", since)]);
            api.call(reqwest::Method::GET, &path, None).await?
        }
    })
}
