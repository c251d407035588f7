//! Sessions for the pages: `POST /v1/portal/sessions` (the operator's backend asks for a
//! one-time portal link), `POST /portal/session` (the portal spends it), `POST /console/session`
//! (an operator signs in with an admin token), `GET /v1/session` and `DELETE /v1/session`; and
//! for the operator, `GET /v1/sessions` and `DELETE /v1/sessions/{id}`.
//! See `crate::session` for how they are kept and checked.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::auth::{Caller, Via};
use crate::error::ApiError;
use crate::session::{self, Kind, Link, Refusal, Theme};
use crate::{AppState, Body, Query};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PortalSessionInput {
    /// The tenant whose endpoints and deliveries the portal shows.
    tenant: String,
    /// How long the session lasts once the link is opened (default `1h`, at most `24h`).
    expires_in: Option<String>,
    /// How long the link may wait to be opened (default `10m`, at most `24h`).
    link_expires_in: Option<String>,
    /// The portal's look.
    theme: Option<Theme>,
    /// Destination types the tenant may choose in the portal besides webhooks (`amqp`, `nats`,
    /// `redis`, `polling`); none by default.
    #[serde(default)]
    destinations: Vec<String>,
    /// Whether the tenant may write transformations in the portal (default false).
    #[serde(default)]
    transformations: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PortalLink {
    /// Open it (a new tab, or an iframe's `src`) to start the session; it works once.
    url: String,
    tenant: String,
    /// When the unopened link stops working (RFC 3339).
    link_expires_at: String,
    /// How long the session it opens lasts.
    session_expires_in_seconds: u64,
}

fn duration(field: &'static str, text: Option<&str>, default: u64) -> Result<u64, ApiError> {
    let secs = match text {
        None => default,
        Some(t) => herald_core::runtime::parse_duration(t)
            .map_err(|e| ApiError::invalid(Some(field), format!("{field}: {e}")))?
            .as_secs(),
    };
    if secs == 0 || secs > session::LONGEST.as_secs() {
        return Err(ApiError::invalid(Some(field), format!("{field}: between 1s and 24h")));
    }
    Ok(secs)
}

/// Where the pages are reached: `HERALD_PUBLIC_URL`, or the request's host.
pub(crate) fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let proto = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    format!("{}://{host}", if proto == "https" { "https" } else { "http" })
}

fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    session::secure_cookies(state.config.public_url.as_deref(), headers)
}

fn kv_unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "session store failed");
    ApiError::unavailable("could not reach the session store in NATS; retry later")
}

/// `POST /v1/portal/sessions`: a one-time link into the portal of one tenant.
#[utoipa::path(post, path = "/v1/portal/sessions", tag = "portal", request_body = PortalSessionInput,
    responses((status = 201, description = "The link", body = PortalLink), crate::error::Problems, crate::error::Limited),
    security(("bearer" = [])))]
pub(crate) async fn create_portal_session(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<PortalLink>), ApiError> {
    if caller.via() == Via::Portal {
        return Err(ApiError::forbidden("a portal session cannot open portal sessions"));
    }
    state.limits.links.take(&caller.token_hash())?;
    let input: PortalSessionInput = body.json()?;
    herald_core::ids::TenantId::parse(&input.tenant)
        .map_err(|e| ApiError::invalid(Some("tenant"), format!("tenant: {}", e.0)))?;
    caller.require_tenant(&input.tenant)?;
    let session_seconds = duration("expires_in", input.expires_in.as_deref(), 3600)?;
    let link_seconds = duration("link_expires_in", input.link_expires_in.as_deref(), 600)?;
    if let Some(theme) = &input.theme {
        theme.check().map_err(|e| ApiError::invalid(Some("theme"), e))?;
    }
    for kind in &input.destinations {
        use herald_core::destination::{AMQP, NATS, POLLING, REDIS};
        if ![AMQP, NATS, REDIS, POLLING].contains(&kind.as_str()) {
            return Err(ApiError::invalid(
                Some("destinations"),
                format!(
                    "destinations: {kind:?} is not a destination type besides webhooks (amqp, nats, redis, polling)"
                ),
            ));
        }
    }
    let grants = session::Grants { destinations: input.destinations, transformations: input.transformations };
    let expires = OffsetDateTime::now_utc() + std::time::Duration::from_secs(link_seconds);
    let link = Link {
        tenant: input.tenant.clone(),
        token: caller.token_hash(),
        session_seconds,
        expires_at: expires.unix_timestamp(),
        theme: input.theme,
        grants,
        used: false,
    };
    let code = session::issue_link(&state.sessions, &link).await.map_err(kv_unavailable)?;
    tracing::info!(tenant = %input.tenant, "portal link issued");
    Ok((
        StatusCode::CREATED,
        Json(PortalLink {
            // In the fragment: never sent to a server, so it is in no access log and no
            // prefetcher spends it; the portal's script posts it.
            url: format!("{}/portal/#code={code}", base_url(&state, &headers)),
            tenant: input.tenant,
            link_expires_at: herald_core::rfc3339(expires),
            session_expires_in_seconds: session_seconds,
        }),
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SessionView {
    /// `console` or `portal`.
    #[schema(value_type = String)]
    kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    /// Send it in `X-Herald-Csrf` with every call.
    csrf: String,
    /// RFC 3339.
    expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    theme: Option<Theme>,
    /// A portal's: what it may offer beyond webhooks.
    grants: session::Grants,
}

impl SessionView {
    fn of(s: session::Session) -> Self {
        Self {
            kind: s.kind,
            tenant: s.tenant,
            csrf: s.csrf,
            expires_at: herald_core::rfc3339(
                OffsetDateTime::from_unix_timestamp(s.expires_at).unwrap_or(OffsetDateTime::UNIX_EPOCH),
            ),
            theme: s.theme,
            grants: s.grants,
        }
    }
}

/// Refuses a body that is not `application/json`: a cross-site HTML form can post only
/// `text/plain`, `multipart/form-data` or `application/x-www-form-urlencoded` without a
/// preflight, so a sign-in or a link opened from another site's form never gets through.
fn json_only(headers: &HeaderMap) -> Result<(), ApiError> {
    let media = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = media.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type("send the body as `Content-Type: application/json`"))
    }
}

/// Refuses a sign-in a page of another site started (login CSRF).
fn same_origin_only(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) if site != "same-origin" => {
            Err(ApiError::forbidden("sign-ins are accepted only from Herald's own pages"))
        }
        _ => Ok(()),
    }
}

fn started(state: &AppState, headers: &HeaderMap, secret: &str, s: session::Session) -> Response {
    let max_age = s.expires_at - OffsetDateTime::now_utc().unix_timestamp();
    let cookie =
        session::set_cookie(s.kind, secret, max_age, secure(state, headers), state.config.portal_cookie_samesite);
    let mut res = Json(SessionView::of(s)).into_response();
    if let Ok(v) = cookie.parse() {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    res
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenPortal {
    code: String,
}

/// `POST /portal/session {code}`: spends a link and starts the portal session.
pub(crate) async fn open_portal(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    same_origin_only(&headers)?;
    json_only(&headers)?;
    state.limits.portal_opens.take("")?;
    let input: OpenPortal = body.json()?;
    let link = match session::spend_link(&state.sessions, &input.code).await {
        Ok(link) => link,
        Err(Refusal::Unknown) => return Err(ApiError::not_found("this portal link is not valid; ask for a new one")),
        Err(Refusal::Used) => return Err(ApiError::gone("this portal link was already opened; ask for a new one")),
        Err(Refusal::Expired) => return Err(ApiError::gone("this portal link has expired; ask for a new one")),
        Err(Refusal::Unavailable(e)) => return Err(kv_unavailable(e)),
    };
    // The token that asked for the link must still be in force, with that tenant.
    if !state.tokens.current().still_allows(&link.token, Some(&link.tenant)) {
        return Err(ApiError::gone("the token that asked for this portal link was revoked; ask for a new one"));
    }
    let opening = session::Opening {
        kind: Kind::Portal,
        tenant: Some(link.tenant.clone()),
        token: link.token,
        ttl: std::time::Duration::from_secs(link.session_seconds),
        theme: link.theme,
        grants: link.grants,
    };
    let (secret, s) = session::open(&state.sessions, opening).await.map_err(kv_unavailable)?;
    tracing::info!(tenant = %link.tenant, "portal session opened");
    Ok(started(&state, &headers, &secret, s))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignIn {
    token: String,
}

/// `POST /console/session {token}`: an operator signs in with an admin token.
pub(crate) async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    same_origin_only(&headers)?;
    json_only(&headers)?;
    state.limits.sign_ins.take("")?;
    let input: SignIn = body.json()?;
    if !state.tokens.current().is_admin(input.token.trim()) {
        tracing::warn!("console sign-in refused");
        return Err(ApiError::unauthorized("that is not an admin token"));
    }
    let opening = session::Opening {
        kind: Kind::Console,
        tenant: None,
        token: session::token_hash(input.token.trim()),
        ttl: state.config.console_session_ttl,
        theme: None,
        grants: session::Grants::default(),
    };
    let (secret, s) = session::open(&state.sessions, opening).await.map_err(kv_unavailable)?;
    tracing::info!("console session opened");
    Ok(started(&state, &headers, &secret, s))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct WhichSession {
    /// `console` or `portal`.
    kind: String,
}

/// `GET /v1/session?kind=console|portal`: the page's session and its CSRF token (after a
/// reload, the page has only its cookie).
#[utoipa::path(get, path = "/v1/session", tag = "portal", params(WhichSession),
    responses((status = 200, description = "The session of the cookie", body = SessionView), crate::error::Problems))]
pub(crate) async fn current(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<WhichSession>,
) -> Result<Response, ApiError> {
    let kind = match q.kind.as_str() {
        "console" => Kind::Console,
        "portal" => Kind::Portal,
        _ => return Err(ApiError::invalid(Some("kind"), "kind: `console` or `portal`")),
    };
    same_origin_only(&headers)?;
    let secret = session::session_cookie(&headers, kind, secure(&state, &headers))
        .ok_or_else(|| ApiError::unauthorized("no session: sign in"))?;
    let s = session::find(&state.sessions, secret)
        .await
        .map_err(kv_unavailable)?
        .ok_or_else(|| ApiError::unauthorized("the session has expired or was closed"))?;
    let mut res = Json(SessionView::of(s)).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(res)
}

/// `DELETE /v1/session`: signs out (the session named by the call's CSRF token).
#[utoipa::path(delete, path = "/v1/session", tag = "portal",
    responses((status = 204, description = "Signed out; the cookie is cleared"), crate::error::Problems))]
pub(crate) async fn sign_out(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kind = match caller.via() {
        Via::Console => Kind::Console,
        Via::Portal => Kind::Portal,
        Via::Token => return Err(ApiError::invalid(None, "a bearer token has no session to end")),
    };
    let secure = secure(&state, &headers);
    if let Some(secret) = session::session_cookie(&headers, kind, secure) {
        session::close(&state.sessions, secret).await.map_err(kv_unavailable)?;
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = session::clear_cookie(kind, secure).parse() {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(res)
}

/// A live session, as the operator sees it: never its secret or CSRF token.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SessionEntry {
    /// The SHA-256 of its secret: names it, lets no one in.
    id: String,
    /// `console` or `portal`.
    #[schema(value_type = String)]
    kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    /// The first 12 hex digits of the SHA-256 of the token that opened it (the `sha256:` form
    /// of `HERALD_TOKENS` starts with them), so the sessions of one token can be told apart.
    token_sha256_prefix: String,
    /// RFC 3339 (empty for sessions opened before it was kept).
    created_at: String,
    /// RFC 3339.
    expires_at: String,
    /// False when the token behind it is no longer in force: its next call is refused.
    token_in_force: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SessionList {
    data: Vec<SessionEntry>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionFilter {
    /// Only `console` or only `portal` sessions.
    kind: Option<String>,
    /// Only the portal sessions of this tenant.
    tenant: Option<String>,
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_admin() && caller.via() != Via::Portal {
        Ok(())
    } else {
        Err(ApiError::forbidden("listing and ending sessions needs `admin`"))
    }
}

fn rfc3339_at(secs: i64) -> String {
    if secs == 0 {
        return String::new();
    }
    herald_core::rfc3339(OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH))
}

/// `GET /v1/sessions` (admin): the live console and portal sessions, newest first.
#[utoipa::path(get, path = "/v1/sessions", tag = "portal", params(SessionFilter),
    responses((status = 200, description = "Live sessions", body = SessionList), crate::error::Problems),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(filter): Query<SessionFilter>,
) -> Result<Json<SessionList>, ApiError> {
    require_admin(&caller)?;
    let kind = match filter.kind.as_deref() {
        None => None,
        Some("console") => Some(Kind::Console),
        Some("portal") => Some(Kind::Portal),
        Some(_) => return Err(ApiError::invalid(Some("kind"), "kind: `console` or `portal`")),
    };
    let tokens = state.tokens.current();
    let data = session::list(&state.sessions)
        .await
        .map_err(kv_unavailable)?
        .into_iter()
        .filter(|(_, s)| kind.is_none_or(|k| s.kind == k))
        .filter(|(_, s)| filter.tenant.as_deref().is_none_or(|t| s.tenant.as_deref() == Some(t)))
        .map(|(id, s)| SessionEntry {
            token_in_force: tokens.still_allows(&s.token, s.tenant.as_deref().filter(|_| s.kind == Kind::Portal)),
            id,
            kind: s.kind,
            tenant: s.tenant,
            token_sha256_prefix: s.token.chars().take(12).collect(),
            created_at: rfc3339_at(s.created_at),
            expires_at: rfc3339_at(s.expires_at),
        })
        .collect();
    Ok(Json(SessionList { data }))
}

/// `DELETE /v1/sessions/{id}` (admin): ends a session at once (its next call is refused).
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "portal",
    params(("id" = String, Path, description = "The session's id, from GET /v1/sessions")),
    responses((status = 204, description = "Ended"), crate::error::Problems),
    security(("bearer" = [])))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&caller)?;
    if session::close_id(&state.sessions, &id).await.map_err(kv_unavailable)? {
        tracing::info!(session = %id, "session revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no live session has this id"))
    }
}
