//! `heraldctl event-types`: the event-type catalog.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::{Api, json_arg, with_query};

#[derive(Subcommand)]
pub(crate) enum EventTypeCommand {
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

pub(crate) async fn run(api: &Api, cmd: EventTypeCommand) -> anyhow::Result<Value> {
    Ok(match cmd {
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
    })
}
