//! The console (`/console/`) and the portal (`/portal/`): static pages and their assets, built
//! into the binary (nothing is fetched from elsewhere, so they work offline), served with a
//! strict Content-Security-Policy. The console may not be framed; the portal may be framed by the
//! origins in `HERALD_PORTAL_FRAME_ANCESTORS`.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::AppState;
use crate::error::ApiError;

const CONSOLE_HTML: &str = include_str!("../../web/console.html");
const PORTAL_HTML: &str = include_str!("../../web/portal.html");

/// The assets under `/ui/`: name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    ("herald.css", "text/css; charset=utf-8", include_str!("../../web/herald.css")),
    ("common.js", "text/javascript; charset=utf-8", include_str!("../../web/common.js")),
    ("console.js", "text/javascript; charset=utf-8", include_str!("../../web/console.js")),
    ("portal.js", "text/javascript; charset=utf-8", include_str!("../../web/portal.js")),
    ("logo.svg", "image/svg+xml", include_str!("../../web/logo.svg")),
];

/// The policy of every page: scripts, styles and calls only from the gateway itself; images
/// also as `data:` and `https:` (a portal theme's logo).
fn policy(frame_ancestors: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; connect-src 'self'; \
         form-action 'self'; base-uri 'none'; frame-ancestors {frame_ancestors}"
    )
}

fn page(html: &'static str, csp: String, frameable: bool) -> Response {
    let mut res = (StatusCode::OK, html).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if !frameable {
        h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    }
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    res
}

fn enabled(state: &AppState) -> Result<(), ApiError> {
    if state.config.console {
        Ok(())
    } else {
        Err(ApiError::not_found("the console and portal are turned off (HERALD_CONSOLE=false)"))
    }
}

/// `GET /console` → `/console/`.
pub(crate) async fn console_redirect() -> Redirect {
    Redirect::permanent("/console/")
}

/// `GET /portal` → `/portal/`.
pub(crate) async fn portal_redirect() -> Redirect {
    Redirect::permanent("/portal/")
}

/// `GET /console/`.
pub(crate) async fn console(State(state): State<AppState>) -> Result<Response, ApiError> {
    enabled(&state)?;
    Ok(page(CONSOLE_HTML, policy("'none'"), false))
}

/// `GET /portal/`.
pub(crate) async fn portal(State(state): State<AppState>) -> Result<Response, ApiError> {
    enabled(&state)?;
    let ancestors = std::iter::once("'self'")
        .chain(state.config.portal_frame_ancestors.split([' ', ',']).filter(|o| !o.is_empty()))
        .collect::<Vec<_>>()
        .join(" ");
    Ok(page(PORTAL_HTML, policy(&ancestors), true))
}

/// `GET /ui/{name}`.
pub(crate) async fn asset(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    enabled(&state)?;
    let (_, content_type, body) =
        ASSETS.iter().find(|(n, _, _)| *n == name).ok_or_else(|| ApiError::not_found("no such asset"))?;
    let mut res = (StatusCode::OK, *body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    Ok(res)
}

/// Checks a frame-ancestors list: origins only (`https://app.example.com`), so nothing can be
/// injected into the policy.
pub fn check_frame_ancestors(text: &str) -> Result<String, String> {
    for origin in text.split([' ', ',']).filter(|o| !o.is_empty()) {
        let url =
            url::Url::parse(origin).map_err(|_| format!("{origin:?} is not an origin like https://app.example.com"))?;
        let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none() && url.username().is_empty();
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || !bare || origin.ends_with('/') {
            return Err(format!("{origin:?} is not an origin like https://app.example.com"));
        }
    }
    Ok(text.to_owned())
}
