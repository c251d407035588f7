//! `heraldctl portal-link`: a one-time link into a tenant's portal.

use serde_json::{Value, json};

use crate::{Api, json_arg};

#[derive(clap::Args)]
pub(crate) struct PortalLinkArgs {
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
}

pub(crate) async fn run(api: &Api, args: PortalLinkArgs) -> anyhow::Result<Value> {
    let PortalLinkArgs { tenant, expires_in, link_expires_in, theme } = args;
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
    api.call(reqwest::Method::POST, "/v1/portal/sessions", Some(body)).await
}
