//! `heraldctl poll`: reads a polling subscription's events (`GET /v1/subscriptions/{id}/poll`),
//! once or, with `--follow`, on and on like `tail -f`, passing each page's cursor to the next so
//! that what was printed is acknowledged.

use std::io::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::{Api, with_query};

#[derive(clap::Args)]
pub(crate) struct PollArgs {
    /// The polling subscription (sub_…).
    id: String,
    /// Start after this cursor (acknowledging what it covers); default: after what was
    /// acknowledged last.
    #[arg(long)]
    cursor: Option<String>,
    /// Events per page (at most 500).
    #[arg(long)]
    limit: Option<usize>,
    /// Keep polling, printing each event as a line of JSON, until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,
    /// With --follow: how long to wait when nothing new is stored (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 1s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?} is not a duration like 1s or 500ms")),
    }
}

/// One page (without `--follow`), or `None` after following until interrupted.
pub(crate) async fn run(api: &Api, args: PollArgs) -> anyhow::Result<Option<Value>> {
    let page = |cursor: Option<String>| {
        let path = format!("/v1/subscriptions/{}/poll", args.id);
        with_query(&path, &[("cursor", cursor), ("limit", args.limit.map(|l| l.to_string()))])
    };
    if !args.follow {
        return Ok(Some(api.call(reqwest::Method::GET, &page(args.cursor.clone()), None).await?));
    }
    let mut cursor = args.cursor.clone();
    let mut out = std::io::stdout().lock();
    loop {
        let path = page(cursor.clone());
        let answer = tokio::select! {
            answer = api.call(reqwest::Method::GET, &path, None) => answer?,
            _ = tokio::signal::ctrl_c() => return Ok(None),
        };
        for event in answer["data"].as_array().into_iter().flatten() {
            writeln!(out, "{event}")?;
        }
        out.flush()?;
        cursor = answer["cursor"].as_str().map(str::to_owned).or(cursor);
        if answer["done"].as_bool().unwrap_or(true) {
            tokio::select! {
                _ = tokio::time::sleep(args.interval) => {}
                _ = tokio::signal::ctrl_c() => return Ok(None),
            }
        }
    }
}
