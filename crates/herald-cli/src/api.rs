//! The gateway's API as heraldctl calls it, where it is (flags, `HERALD_URL`, a profile), and the
//! arguments that carry JSON or name a file.

use anyhow::{Context as _, bail};
use serde_json::Value;

pub(crate) fn http_client() -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?)
}

pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) token: Option<String>,
    pub(crate) http: reqwest::Client,
}

impl Api {
    pub(crate) async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
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

/// `path?k=v&…` with the given parameters (values percent-encoded).
pub(crate) fn with_query(path: &str, params: &[(&str, Option<String>)]) -> String {
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
pub(crate) fn json_arg(flag: &str, text: &str) -> anyhow::Result<Value> {
    let text = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("{flag}: cannot read {path}"))?,
        None => text.to_owned(),
    };
    serde_json::from_str(&text).with_context(|| format!("{flag} is not JSON"))
}

/// A text argument, or the contents of the file it names after `@`.
pub(crate) fn text_arg(flag: &str, text: &str) -> anyhow::Result<String> {
    match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("{flag}: cannot read {path}")),
        None => Ok(text.to_owned()),
    }
}

pub(crate) fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not name=value"))
}

/// `url` and `token` of one profile of the profiles file, if there is one.
pub(crate) fn profile(name: Option<&str>) -> anyhow::Result<(Option<String>, Option<String>)> {
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
