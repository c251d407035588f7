//! Browser sessions for the console (an operator who signed in with an `admin` token) and the
//! portal (a tenant's users, let in by a one-time link the operator's backend asked for).
//!
//! Both live in the `herald-sessions` KV bucket, so any gateway replica serves any session. A
//! session's cookie (HttpOnly) carries a random secret; the bucket knows it only by its SHA-256,
//! so reading the bucket lets no one in. Every call a page makes with a session also sends the
//! session's CSRF token in `X-Herald-Csrf` (which a page of another origin cannot read, so cannot
//! send); a call carrying the cookie without it is refused. Links are stored the same way and
//! are spent by a compare-and-set on their revision: two openings, one session.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// The bucket.
pub const BUCKET: &str = "herald-sessions";
/// The console's cookie.
pub const CONSOLE_COOKIE: &str = "herald_console";
/// The portal's cookie.
pub const PORTAL_COOKIE: &str = "herald_portal";
/// The header a page sends its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-herald-csrf";
/// The bucket holds at most this much (about 100,000 sessions or links with themes); past it,
/// new ones are refused (503) until old ones expire.
pub const MAX_BYTES: i64 = 256 * 1024 * 1024;
/// One session or link at most (a theme's logo may be 64 KiB).
pub const MAX_VALUE: i32 = 96 * 1024;
/// No session or link outlives this (the bucket forgets entries older than it).
pub const LONGEST: Duration = Duration::from_secs(24 * 3600);

/// Which pages a session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The operator's console: admin.
    Console,
    /// A tenant's portal.
    Portal,
}

impl Kind {
    /// The cookie the session's secret travels in.
    pub fn cookie(self) -> &'static str {
        match self {
            Self::Console => CONSOLE_COOKIE,
            Self::Portal => PORTAL_COOKIE,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Self::Console => "console",
            Self::Portal => "portal",
        }
    }
}

/// The look of a portal, chosen by the operator per link.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Theme {
    /// Shown in the portal's header (the operator's product name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An `https:` or `data:image/…` URL of a logo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logo_url: Option<String>,
    /// CSS colours (`#0a7d5a`, `rgb(…)`), for buttons and links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_color: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background_color: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_color: Option<String>,
}

impl Theme {
    /// Refuses what could break out of a CSS value or load a script.
    pub fn check(&self) -> Result<(), String> {
        if self.name.as_ref().is_some_and(|n| n.chars().count() > 80) {
            return Err("theme.name: at most 80 characters".into());
        }
        if let Some(logo) = &self.logo_url {
            let ok = logo.len() <= 64 * 1024
                && (logo.starts_with("https://")
                    || logo.starts_with("data:image/png;")
                    || logo.starts_with("data:image/svg+xml;"))
                && !logo.chars().any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\');
            if !ok {
                return Err(
                    "theme.logo_url: an https: URL, or a data:image/png or data:image/svg+xml URL, at most 64 KiB"
                        .into(),
                );
            }
        }
        for (field, value) in [
            ("primary_color", &self.primary_color),
            ("background_color", &self.background_color),
            ("text_color", &self.text_color),
        ] {
            if let Some(v) = value {
                let ok = !v.is_empty()
                    && v.len() <= 64
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || " #(),.%-".contains(c));
                if !ok {
                    return Err(format!("theme.{field}: {v:?} is not a CSS colour (use #rrggbb, rgb(…) or a name)"));
                }
            }
        }
        Ok(())
    }
}

/// What a portal may offer beyond webhooks, as the operator's link granted it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Grants {
    /// Broker destination types the tenant may choose (`amqp`, `nats`, `redis`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,
    /// Whether the tenant may write transformations.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transformations: bool,
}

/// A signed-in page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub kind: Kind,
    /// The SHA-256 (hex) of the token that opened it (the console's admin token, or the token
    /// that asked for the portal link): it lives only while that token is in force with the
    /// scope it needs. Empty in sessions opened before it was kept: those are refused.
    #[serde(default)]
    pub token: String,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: i64,
    /// The portal's tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `console.…` or `portal.…`: what the page sends in `X-Herald-Csrf`.
    pub csrf: String,
    /// Unix seconds.
    pub expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub theme: Option<Theme>,
    /// A portal's grants.
    #[serde(default)]
    pub grants: Grants,
}

impl Session {
    /// True once past its expiry.
    pub fn expired(&self, now: i64) -> bool {
        now >= self.expires_at
    }
}

/// A one-time portal link, before and after it is opened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Link {
    pub tenant: String,
    /// The SHA-256 (hex) of the token that asked for it (see [`Session::token`]).
    #[serde(default)]
    pub token: String,
    /// How long the session it opens lasts, in seconds.
    pub session_seconds: u64,
    /// Unix seconds: unopened after this, it is worthless.
    pub expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub theme: Option<Theme>,
    /// What the portal may offer beyond webhooks.
    #[serde(default)]
    pub grants: Grants,
    /// Set when spent.
    #[serde(default)]
    pub used: bool,
}

/// Why a link did not open.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown, or so old the bucket forgot it.
    Unknown,
    /// Opened before.
    Used,
    /// Not opened in time.
    Expired,
    /// The bucket could not be reached.
    Unavailable(String),
}

/// Creates the bucket if it is missing.
pub async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, String> {
    let config = kv::Config {
        bucket: BUCKET.into(),
        description: "Herald: console and portal sessions and one-time portal links, keyed by their secret's SHA-256"
            .into(),
        history: 1,
        max_age: LONGEST + Duration::from_secs(3600),
        // Bounded: a token minting links in a loop fills this, not NATS's storage.
        max_bytes: MAX_BYTES,
        max_value_size: MAX_VALUE,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    js.create_or_update_key_value(config).await.map_err(|e| e.to_string())
}

/// A fresh random secret, 256 bits, URL-safe.
pub fn secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key(kind: &str, secret: &str) -> String {
    format!("{kind}.{:x}", Sha256::digest(secret.as_bytes()))
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// The SHA-256 (hex) of a token, as sessions and links keep it.
pub fn token_hash(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.as_bytes()))
}

/// What a new session is: its kind, the tenant of a portal, the hash of the token behind it,
/// how long it lasts and a portal's theme.
pub struct Opening {
    pub kind: Kind,
    pub tenant: Option<String>,
    pub token: String,
    pub ttl: Duration,
    pub theme: Option<Theme>,
    pub grants: Grants,
}

/// Stores a new session and answers its secret (the cookie's value) and the session.
pub async fn open(kv: &kv::Store, opening: Opening) -> Result<(String, Session), String> {
    let Opening { kind, tenant, token, ttl, theme, grants } = opening;
    let secret = secret();
    let session = Session {
        kind,
        token,
        created_at: now(),
        tenant,
        csrf: format!("{}.{}", kind.prefix(), self::secret()),
        expires_at: now() + ttl.min(LONGEST).as_secs() as i64,
        theme,
        grants,
    };
    let value = serde_json::to_vec(&session).map_err(|e| e.to_string())?;
    kv.put(key("s", &secret), value.into()).await.map_err(|e| e.to_string())?;
    Ok((secret, session))
}

/// The live session whose secret this is; `Ok(None)` when unknown or expired.
pub async fn find(kv: &kv::Store, secret: &str) -> Result<Option<Session>, String> {
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let Some(value) = kv.get(key("s", secret)).await.map_err(|e| e.to_string())? else { return Ok(None) };
    let session: Session = serde_json::from_slice(&value).map_err(|e| e.to_string())?;
    Ok((!session.expired(now())).then_some(session))
}

/// Ends a session.
pub async fn close(kv: &kv::Store, secret: &str) -> Result<(), String> {
    kv.purge(key("s", secret)).await.map_err(|e| e.to_string())
}

/// Every live session, each with its id (the SHA-256 of its secret: it lets no one in).
pub async fn list(kv: &kv::Store) -> Result<Vec<(String, Session)>, String> {
    use futures::TryStreamExt as _;
    let keys: Vec<String> =
        kv.keys().await.map_err(|e| e.to_string())?.try_collect().await.map_err(|e| e.to_string())?;
    let now = now();
    let mut out = Vec::new();
    for k in keys {
        let Some(id) = k.strip_prefix("s.") else { continue };
        let Some(value) = kv.get(&k).await.map_err(|e| e.to_string())? else { continue };
        if let Ok(session) = serde_json::from_slice::<Session>(&value)
            && !session.expired(now)
        {
            out.push((id.to_owned(), session));
        }
    }
    out.sort_by_key(|(_, s)| std::cmp::Reverse(s.created_at));
    Ok(out)
}

/// Ends the session with this id (see [`list`]); false if there was none.
pub async fn close_id(kv: &kv::Store, id: &str) -> Result<bool, String> {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(false);
    }
    let k = format!("s.{id}");
    if kv.get(&k).await.map_err(|e| e.to_string())?.is_none() {
        return Ok(false);
    }
    kv.purge(&k).await.map_err(|e| e.to_string())?;
    Ok(true)
}

/// Stores a one-time link and answers its code.
pub async fn issue_link(kv: &kv::Store, link: &Link) -> Result<String, String> {
    let code = secret();
    let value = serde_json::to_vec(link).map_err(|e| e.to_string())?;
    kv.create(key("l", &code), value.into()).await.map_err(|e| e.to_string())?;
    Ok(code)
}

/// Spends a link: of two concurrent openings exactly one gets it.
pub async fn spend_link(kv: &kv::Store, code: &str) -> Result<Link, Refusal> {
    if code.len() != 64 || !code.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refusal::Unknown);
    }
    let k = key("l", code);
    let entry = kv.entry(&k).await.map_err(|e| Refusal::Unavailable(e.to_string()))?.ok_or(Refusal::Unknown)?;
    if entry.operation != kv::Operation::Put {
        return Err(Refusal::Unknown);
    }
    let mut link: Link = serde_json::from_slice(&entry.value).map_err(|_| Refusal::Unknown)?;
    if link.used {
        return Err(Refusal::Used);
    }
    if now() >= link.expires_at {
        return Err(Refusal::Expired);
    }
    link.used = true;
    let spent = serde_json::to_vec(&link).map_err(|e| Refusal::Unavailable(e.to_string()))?;
    match kv.update(&k, spent.into(), entry.revision).await {
        Ok(_) => Ok(link),
        // Someone spent it between the read and the write.
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(Refusal::Used),
        Err(e) => Err(Refusal::Unavailable(e.to_string())),
    }
}

/// Compares two tokens in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// How a portal cookie crosses sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SameSite {
    /// Sent when the portal is a top-level page or framed by a page of the same site
    /// (`app.example.com` framing `webhooks.example.com`).
    Lax,
    /// Also sent when framed by another site: needs HTTPS (`Secure`), and is partitioned by the
    /// top-level site (CHIPS), as browsers now require of third-party cookies.
    None,
}

/// Whether session cookies are `Secure` and carry the `__Host-` prefix (so a sibling subdomain
/// cannot plant one): always, unless `HERALD_PUBLIC_URL` is an `http://` URL, or none is set and
/// the request came to a loopback host (local development over plain HTTP). Never from
/// `X-Forwarded-Proto`: a proxy that does not set it would otherwise get cookies without
/// `Secure`.
pub fn secure_cookies(public_url: Option<&str>, headers: &axum::http::HeaderMap) -> bool {
    if let Some(url) = public_url {
        return !url.starts_with("http://");
    }
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let loopback =
        name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    !loopback
}

/// The name of a session's cookie: `__Host-herald_console` when cookies are secure, else
/// `herald_console` (likewise for the portal).
pub fn cookie_name(kind: Kind, secure: bool) -> String {
    if secure { format!("__Host-{}", kind.cookie()) } else { kind.cookie().to_owned() }
}

/// The session secret a request carries for `kind`: only the `__Host-` cookie when cookies are
/// secure.
pub fn session_cookie(headers: &axum::http::HeaderMap, kind: Kind, secure: bool) -> Option<&str> {
    cookie(headers, &cookie_name(kind, secure))
}

/// The `Set-Cookie` value for a session.
pub fn set_cookie(kind: Kind, secret: &str, max_age: i64, secure: bool, portal_same_site: SameSite) -> String {
    let attributes = match (kind, portal_same_site) {
        (Kind::Console, _) => "SameSite=Strict",
        (Kind::Portal, SameSite::Lax) => "SameSite=Lax",
        (Kind::Portal, SameSite::None) => "SameSite=None; Secure; Partitioned",
    };
    let secure_flag = if secure && !attributes.contains("Secure") { "; Secure" } else { "" };
    let name = cookie_name(kind, secure);
    format!("{name}={secret}; Path=/; HttpOnly; Max-Age={max_age}; {attributes}{secure_flag}")
}

/// The `Set-Cookie` value that removes a session's cookie.
pub fn clear_cookie(kind: Kind, secure: bool) -> String {
    let secure_flag = if secure { "; Secure" } else { "" };
    format!("{}=; Path=/; HttpOnly; Max-Age=0; SameSite=Lax{secure_flag}", cookie_name(kind, secure))
}

/// The session kind a CSRF token belongs to.
pub fn kind_of_csrf(token: &str) -> Option<Kind> {
    match token.split_once('.')?.0 {
        "console" => Some(Kind::Console),
        "portal" => Some(Kind::Portal),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append("cookie", "a=1; herald_portal=abc".parse().unwrap());
        h.append("cookie", "herald_console=def".parse().unwrap());
        assert_eq!(cookie(&h, PORTAL_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, CONSOLE_COOKIE), Some("def"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn cookie_attributes_follow_the_kind() {
        let c = set_cookie(Kind::Console, "s", 60, false, SameSite::None);
        assert!(c.starts_with("herald_console=s;"), "{c}");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"), "{c}");
        let p = set_cookie(Kind::Portal, "s", 60, true, SameSite::Lax);
        assert!(p.starts_with("__Host-herald_portal=s; Path=/;"), "{p}");
        assert!(p.contains("SameSite=Lax") && p.contains("; Secure") && !p.contains("Domain"), "{p}");
        let n = set_cookie(Kind::Portal, "s", 60, false, SameSite::None);
        assert!(n.starts_with("herald_portal=") && n.contains("SameSite=None; Secure; Partitioned"), "{n}");
        let cleared = clear_cookie(Kind::Console, true);
        assert!(cleared.starts_with("__Host-herald_console=;") && cleared.contains("Secure"), "{cleared}");
    }

    #[test]
    fn cookies_are_secure_unless_the_gateway_is_plain_http_on_purpose() {
        let host = |h: &str| {
            let mut m = axum::http::HeaderMap::new();
            m.insert(axum::http::header::HOST, h.parse().unwrap());
            m
        };
        // Whatever X-Forwarded-Proto says: a proxy that does not set it must not lose `Secure`.
        let mut proxied = host("webhooks.example.com");
        proxied.insert("x-forwarded-proto", "http".parse().unwrap());
        assert!(secure_cookies(None, &proxied));
        for local in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "LOCALHOST", "127.1.2.3"] {
            assert!(!secure_cookies(None, &host(local)), "{local}");
        }
        assert!(secure_cookies(None, &host("127.0.0.1.example.com")));
        assert!(!secure_cookies(Some("http://10.0.0.5:8080"), &host("10.0.0.5:8080")));
        assert!(secure_cookies(Some("https://webhooks.example.com"), &host("127.0.0.1:8080")));
        // Only the prefixed cookie counts when cookies are secure.
        let mut h = axum::http::HeaderMap::new();
        h.append("cookie", "herald_console=planted; __Host-herald_console=mine".parse().unwrap());
        assert_eq!(session_cookie(&h, Kind::Console, true), Some("mine"));
        assert_eq!(session_cookie(&h, Kind::Console, false), Some("planted"));
    }

    #[test]
    fn themes_cannot_smuggle_css_or_scripts() {
        let ok = Theme {
            primary_color: Some("#0a7d5a".into()),
            logo_url: Some("https://x/l.png".into()),
            ..Default::default()
        };
        assert!(ok.check().is_ok());
        for bad in [
            Theme { primary_color: Some("red; background: url(x)".into()), ..Default::default() },
            Theme { logo_url: Some("javascript:alert(1)".into()), ..Default::default() },
            Theme { logo_url: Some("data:text/html;base64,AAAA".into()), ..Default::default() },
            Theme { text_color: Some("}".into()), ..Default::default() },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        assert_eq!(kind_of_csrf("portal.x"), Some(Kind::Portal));
        assert_eq!(kind_of_csrf("x"), None);
    }
}
