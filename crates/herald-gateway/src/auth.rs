//! Bearer-token authentication. Tokens come from `HERALD_TOKENS` (comma-separated) or
//! `HERALD_TOKENS_FILE` (one per line, `#` comments), each written `scope=token`; a token written
//! `sha256:<hex>` is given by its SHA-256 so the plain text need not be stored. Scopes: `admin`
//! (everything), `publish` (send events), `tenant:{id}` (that tenant's subscriptions),
//! `poll:{subscription_id}` (reading that polling subscription, and nothing else).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;
use herald_core::ids::TenantId;

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    Admin,
    /// Publish events of any tenant.
    Publish,
    /// Manage and read one tenant's subscriptions.
    Tenant(String),
    /// Read one polling subscription's events (`GET /v1/subscriptions/{id}/poll`), nothing else:
    /// what a consumer behind a firewall is given.
    Poll(String),
}

impl Scope {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "admin" => Ok(Self::Admin),
            "publish" => Ok(Self::Publish),
            t => match (t.strip_prefix("tenant:"), t.strip_prefix("poll:")) {
                (Some(id), _) => TenantId::parse(id).map(|_| Self::Tenant(id.to_owned())).map_err(|e| e.0),
                (_, Some(id)) => herald_core::ids::SubscriptionId::parse(id)
                    .map(|_| Self::Poll(id.to_owned()))
                    .map_err(|_| format!("poll:{id}: not a subscription id (sub_…)")),
                _ => Err(format!("unknown scope {t:?} (use admin, publish, tenant:<id> or poll:<subscription id>)")),
            },
        }
    }
}

/// The configured tokens, by the SHA-256 of their text.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Vec<Scope>>,
}

impl Tokens {
    /// Parses `scope=token` entries separated by commas or newlines; blank lines and `#` comments
    /// are skipped. The error names the offending entry's position, never the token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut tokens = Self::default();
        let entries = text.lines().map(|l| l.split('#').next().unwrap_or("")).flat_map(|l| l.split(','));
        for (i, entry) in entries.map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let (scope, token) =
                entry.split_once('=').ok_or_else(|| format!("token entry {} is not `scope=token`", i + 1))?;
            let scope = Scope::parse(scope.trim()).map_err(|e| format!("token entry {}: {e}", i + 1))?;
            let hash = match token.trim().strip_prefix("sha256:") {
                Some(hex) => {
                    parse_hex32(hex).ok_or_else(|| format!("token entry {}: sha256: needs 64 hex digits", i + 1))?
                }
                None if token.trim().len() >= 16 => Sha256::digest(token.trim().as_bytes()).into(),
                None => return Err(format!("token entry {} is shorter than 16 characters", i + 1)),
            };
            tokens.by_hash.entry(hash).or_default().push(scope);
        }
        Ok(tokens)
    }

    /// True when no token is configured (every authenticated route then answers 401).
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// True if `token` carries the `admin` scope.
    pub fn is_admin(&self, token: &str) -> bool {
        self.scopes(token).is_some_and(|s| s.contains(&Scope::Admin))
    }

    fn scopes(&self, token: &str) -> Option<&[Scope]> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash).map(Vec::as_slice)
    }

    /// The scopes of the token whose SHA-256 is `hex`, if it is in force.
    pub fn scopes_of_hash(&self, hex: &str) -> Option<&[Scope]> {
        self.by_hash.get(&parse_hex32(hex)?).map(Vec::as_slice)
    }

    /// True if the token whose SHA-256 is `hex` is in force and may open `tenant`'s portal
    /// (`admin`, or `tenant:{tenant}`), or the console (`admin`) when `tenant` is `None`.
    pub fn still_allows(&self, hex: &str, tenant: Option<&str>) -> bool {
        self.scopes_of_hash(hex).is_some_and(|scopes| {
            scopes.iter().any(|s| match (s, tenant) {
                (Scope::Admin, _) => true,
                (Scope::Tenant(t), Some(want)) => t == want,
                _ => false,
            })
        })
    }
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The tokens in force, replaceable while the gateway runs (file change or SIGHUP).
#[derive(Debug, Default)]
pub struct TokenStore {
    current: std::sync::RwLock<Arc<Tokens>>,
}

impl TokenStore {
    /// A store holding `tokens`.
    pub fn new(tokens: Tokens) -> Self {
        Self { current: std::sync::RwLock::new(Arc::new(tokens)) }
    }

    /// The tokens in force.
    pub fn current(&self) -> Arc<Tokens> {
        self.current.read().expect("token lock").clone()
    }

    /// Puts new tokens in force.
    pub fn replace(&self, tokens: Tokens) {
        *self.current.write().expect("token lock") = Arc::new(tokens);
    }
}

/// How a caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A bearer token.
    Token,
    /// The console's session (an operator who signed in with an admin token).
    Console,
    /// A portal session: one tenant's users, who manage endpoints but publish nothing.
    Portal,
}

/// The routes a portal session may call (method, route as the router names it): what the portal
/// offers an end user — the tenant's endpoints (list, read, create, change, delete, test, rotate
/// the secret), its deliveries (events, their attempts, resend), statistics, the event-type
/// catalog to pick from, and its own session. Everything else answers 403, whatever the tenant
/// token behind the link could do.
pub const PORTAL_ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/subscriptions"),
    ("POST", "/v1/subscriptions"),
    ("GET", "/v1/subscriptions/{id}"),
    ("PATCH", "/v1/subscriptions/{id}"),
    ("DELETE", "/v1/subscriptions/{id}"),
    ("POST", "/v1/subscriptions/{id}/test"),
    ("POST", "/v1/subscriptions/{id}/rotate-secret"),
    ("POST", "/v1/subscriptions/{id}/resend"),
    ("GET", "/v1/subscriptions/{id}/attempts"),
    ("GET", "/v1/events"),
    ("GET", "/v1/events/{id}/attempts"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/event-types"),
    ("GET", "/v1/event-types/{name}"),
    ("GET", "/v1/session"),
    ("DELETE", "/v1/session"),
    // Only with the link's `transformations` grant (checked by the handler).
    ("POST", "/v1/transformations/test"),
];

/// The fields a portal session may set on an endpoint (creating or changing it): its URL, types,
/// description, state and how it authenticates to the endpoint (`auth`, its owner's own
/// credentials); not its metadata, headers, rate limit, retry schedule, ordering, filter, client
/// certificate or signature scheme.
pub const PORTAL_ENDPOINT_FIELDS: &[&str] = &["url", "event_types", "description", "enabled", "auth"];

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    scopes: Arc<[Scope]>,
    via: Via,
    /// The SHA-256 of the token behind the call: the bearer token, or the one that opened the
    /// session (computed once, for the lookup; made hex only where it is kept or keys a limit).
    token: [u8; 32],
    /// A portal session's grants (empty for everyone else).
    grants: Arc<crate::session::Grants>,
}

impl Caller {
    fn has(&self, scope: &Scope) -> bool {
        self.scopes.contains(scope)
    }

    /// How the caller authenticated.
    pub fn via(&self) -> Via {
        self.via
    }

    /// Refuses a portal session's body (a JSON object) that sets a field outside `allowed`; any
    /// other caller, and a body that is not a JSON object (the route refuses it as malformed),
    /// passes.
    pub fn limit_fields(&self, body: &[u8], allowed: &[&str]) -> Result<(), ApiError> {
        if self.via != Via::Portal {
            return Ok(());
        }
        let Ok(fields) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) else {
            return Ok(());
        };
        match fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(field) => {
                let may = if allowed.is_empty() { "no field".to_owned() } else { allowed.join(", ") };
                Err(ApiError::forbidden(format!("a portal session may not set `{field}` here; it may set {may}"))
                    .with_field(field))
            }
        }
    }

    /// The fields a portal session may set on an endpoint: [`PORTAL_ENDPOINT_FIELDS`], plus
    /// `destination` and `transformation` where its link granted them.
    pub fn endpoint_fields(&self) -> Vec<&'static str> {
        let mut fields = PORTAL_ENDPOINT_FIELDS.to_vec();
        if !self.grants.destinations.is_empty() {
            fields.push("destination");
        }
        if self.grants.transformations {
            fields.push("transformation");
        }
        fields
    }

    /// Refuses a destination type a portal session was not granted (webhooks always are).
    pub fn require_destination(&self, kind: &str) -> Result<(), ApiError> {
        if self.via != Via::Portal
            || kind == herald_core::destination::WEBHOOK
            || self.grants.destinations.iter().any(|d| d == kind)
        {
            return Ok(());
        }
        Err(ApiError::forbidden(format!("this portal may not create {kind} destinations")).with_field("destination"))
    }

    /// Refuses running transformations to a caller that cannot set one: a `publish`-only token,
    /// or a portal whose link did not grant them.
    pub fn require_transformations(&self) -> Result<(), ApiError> {
        let manages = self.scopes.iter().any(|s| matches!(s, Scope::Admin | Scope::Tenant(_)));
        if !manages || (self.via == Via::Portal && !self.grants.transformations) {
            return Err(ApiError::forbidden(
                "running transformations needs `admin` or a `tenant:<id>` scope (in the portal, a link that grants them)",
            ));
        }
        Ok(())
    }

    /// The SHA-256 (hex) of the token behind the call (a session's: the one that opened it).
    pub fn token_hash(&self) -> String {
        self.token.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Admin scope.
    pub fn is_admin(&self) -> bool {
        self.has(&Scope::Admin)
    }

    /// True if the token may read polling subscription `id` by its `poll:` scope.
    pub fn may_poll(&self, id: &str) -> bool {
        self.scopes.iter().any(|s| matches!(s, Scope::Poll(p) if p == id))
    }

    /// Refuses unless the token may publish events at all.
    pub fn require_publish(&self) -> Result<(), ApiError> {
        if self.via == Via::Portal {
            return Err(ApiError::forbidden("a portal session cannot publish events"));
        }
        if self.is_admin() || self.has(&Scope::Publish) || self.scopes.iter().any(|s| matches!(s, Scope::Tenant(_))) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "publishing events needs a token with the `publish`, `admin` or `tenant:<id>` scope",
            ))
        }
    }

    /// Refuses unless the token may publish events of `tenant`: `admin` and `publish` may
    /// publish for any tenant, `tenant:{id}` only for its own.
    pub fn require_publish_for(&self, tenant: &str) -> Result<(), ApiError> {
        if self.via == Via::Portal {
            return Err(ApiError::forbidden("a portal session cannot publish events"));
        }
        if self.is_admin() || self.has(&Scope::Publish) || self.may_manage(tenant) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this token may not publish events of tenant {tenant:?}")))
        }
    }

    /// The one tenant a tenant-scoped token covers, used when an event names none.
    pub fn own_tenant(&self) -> Option<&str> {
        if self.is_admin() || self.has(&Scope::Publish) {
            return None;
        }
        match self.tenant_limit()?.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// True if the token may manage `tenant`'s subscriptions.
    pub fn may_manage(&self, tenant: &str) -> bool {
        self.is_admin() || self.scopes.iter().any(|s| matches!(s, Scope::Tenant(t) if t == tenant))
    }

    /// Refuses unless the token may manage `tenant`'s subscriptions.
    pub fn require_tenant(&self, tenant: &str) -> Result<(), ApiError> {
        if self.may_manage(tenant) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this token may not manage tenant {tenant:?}; it needs `admin` or `tenant:{tenant}`"
            )))
        }
    }

    /// The tenants a listing reads for this caller: `requested` if given (valid, and the caller
    /// may see it), else every tenant (`"*"`) for admin, else the token's own; `what` names
    /// the listing in the refusal of a token with no tenant scope.
    pub fn readable_tenants(&self, requested: Option<&str>, what: &str) -> Result<Vec<String>, ApiError> {
        if let Some(t) = requested {
            herald_core::ids::TenantId::parse(t)
                .map_err(|e| ApiError::invalid(Some("tenant"), format!("tenant: {}", e.0)))?;
            self.require_tenant(t)?;
            return Ok(vec![t.to_owned()]);
        }
        match self.tenant_limit() {
            None => Ok(vec!["*".to_owned()]),
            Some(ts) if ts.is_empty() => {
                Err(ApiError::forbidden(format!("{what} need `admin` or a `tenant:<id>` scope")))
            }
            Some(ts) => Ok(ts.iter().map(|t| t.to_string()).collect()),
        }
    }

    /// The tenants a tenant-scoped token is limited to (`None` for admin).
    pub fn tenant_limit(&self) -> Option<Vec<&str>> {
        if self.is_admin() {
            return None;
        }
        Some(
            self.scopes.iter().filter_map(|s| if let Scope::Tenant(t) = s { Some(t.as_str()) } else { None }).collect(),
        )
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            return from_session(parts, state).await;
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let tokens = state.tokens.current();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let scopes =
            tokens.by_hash.get(&digest).ok_or_else(|| ApiError::unauthorized("the bearer token is not valid"))?;
        Ok(Caller { scopes: scopes.as_slice().into(), via: Via::Token, token: digest, grants: Arc::default() })
    }
}

/// A page's call: the session cookie named by the CSRF token's kind, and the CSRF token equal
/// to the session's. A cookie alone (what a forged cross-site request carries) gets nothing.
async fn from_session(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    use crate::session;
    let Some(csrf) = parts.headers.get(session::CSRF_HEADER).and_then(|v| v.to_str().ok()) else {
        let detail = if [session::CONSOLE_COOKIE, session::PORTAL_COOKIE].iter().any(|c| {
            session::cookie(&parts.headers, c).is_some()
                || session::cookie(&parts.headers, &format!("__Host-{c}")).is_some()
        }) {
            "a session's calls must carry its X-Herald-Csrf token"
        } else {
            "send `Authorization: Bearer <token>`"
        };
        return Err(ApiError::unauthorized(detail));
    };
    // Browsers say where a request comes from; a page of another site never gets through.
    if let Some(site) = parts.headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
    {
        return Err(ApiError::forbidden("session calls are accepted only from Herald's own pages"));
    }
    let kind =
        session::kind_of_csrf(csrf).ok_or_else(|| ApiError::unauthorized("the X-Herald-Csrf token is not valid"))?;
    let secure = session::secure_cookies(state.config.public_url.as_deref(), &parts.headers);
    let secret = session::session_cookie(&parts.headers, kind, secure)
        .ok_or_else(|| ApiError::unauthorized("no session: sign in again (the session cookie is missing)"))?;
    let found = session::find(&state.sessions, secret).await.map_err(|e| {
        tracing::warn!(error = %e, "session lookup failed");
        ApiError::unavailable("could not read the session from NATS; retry later")
    })?;
    let found = found.ok_or_else(|| ApiError::unauthorized("the session has expired or was closed: sign in again"))?;
    if !session::same(&found.csrf, csrf) {
        return Err(ApiError::unauthorized("the X-Herald-Csrf token does not belong to this session"));
    }
    // It lives only as long as the token that opened it, with the scope it needs: a token
    // removed (file change or SIGHUP) ends its sessions at their next call.
    let tenant = match found.kind {
        session::Kind::Console => None,
        session::Kind::Portal => {
            Some(found.tenant.as_deref().ok_or_else(|| ApiError::unauthorized("the session names no tenant"))?)
        }
    };
    if !state.tokens.current().still_allows(&found.token, tenant) {
        return Err(ApiError::unauthorized(
            "the token that opened this session is no longer in force (revoked or narrowed): sign in again",
        ));
    }
    if tenant.is_some() {
        let route = parts.extensions.get::<axum::extract::MatchedPath>().map(|m| m.as_str()).unwrap_or("");
        let method = parts.method.as_str();
        if !PORTAL_ROUTES.iter().any(|(m, r)| *m == method && *r == route) {
            return Err(ApiError::forbidden(format!(
                "a portal session may not call {method} {route}: it manages the tenant's endpoints, tests them, resends events and reads deliveries and statistics"
            )));
        }
    }
    let (scopes, via): (Arc<[Scope]>, Via) = match tenant {
        None => (Arc::new([Scope::Admin]), Via::Console),
        Some(tenant) => (Arc::new([Scope::Tenant(tenant.to_owned())]), Via::Portal),
    };
    let token = parse_hex32(&found.token).unwrap_or_default();
    Ok(Caller { scopes, via, token, grants: Arc::new(found.grants) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_hashed_and_commented_tokens() {
        let hashed = format!("{:x}", Sha256::digest(b"another-long-token"));
        let text = format!(
            "admin=admin-token-0123456789\n# comment\npublish=pub-token-0123456789, tenant:acme=sha256:{hashed}\n"
        );
        let t = Tokens::parse(&text).unwrap();
        assert_eq!(t.scopes("admin-token-0123456789").unwrap(), [Scope::Admin]);
        assert_eq!(t.scopes("pub-token-0123456789").unwrap(), [Scope::Publish]);
        assert_eq!(t.scopes("another-long-token").unwrap(), [Scope::Tenant("acme".into())]);
        assert!(t.scopes("nope").is_none());
        let id = herald_core::ids::SubscriptionId::generate().into_string();
        let polls = Tokens::parse(&format!("poll:{id}=poll-token-0123456789")).unwrap();
        assert_eq!(polls.scopes("poll-token-0123456789").unwrap(), [Scope::Poll(id)]);
    }

    #[test]
    fn refuses_bad_entries_without_echoing_tokens() {
        for bad in [
            "admin",
            "root=token-0123456789abcdef",
            "admin=short",
            "admin=sha256:abc",
            "tenant:a.b=token-0123456789abcdef",
            "poll:acme=token-0123456789abcdef",
        ] {
            let err = Tokens::parse(bad).unwrap_err();
            assert!(!err.contains("0123456789abcdef"), "{err}");
        }
        assert!(Tokens::parse("").unwrap().is_empty());
    }
}
