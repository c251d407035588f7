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

fn page(html: &'static str, csp: &HeaderValue, frameable: bool) -> Response {
    let mut res = (StatusCode::OK, html).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if !frameable {
        h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    }
    h.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
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
    Ok(page(CONSOLE_HTML, &state.policies.console, false))
}

/// `GET /portal/`.
pub(crate) async fn portal(State(state): State<AppState>) -> Result<Response, ApiError> {
    enabled(&state)?;
    Ok(page(PORTAL_HTML, &state.policies.portal, true))
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

/// Checks a frame-ancestors list (origins like `https://app.example.com`, separated by spaces,
/// commas or line breaks: a ConfigMap's block scalar ends in one) and returns it as the policy
/// will carry it: each origin serialised from its parsed URL, one space between them, so nothing
/// but origins can reach the header.
pub fn check_frame_ancestors(text: &str) -> Result<String, String> {
    let mut origins = Vec::new();
    for origin in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|o| !o.is_empty()) {
        let refused = || format!("{origin:?} is not an origin like https://app.example.com");
        let url = url::Url::parse(origin).map_err(|_| refused())?;
        let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none() && url.username().is_empty();
        // A host of letters, digits, dots and dashes (`*.` in front allowed), or an address:
        // a `;` or a quote would end the directive and start another.
        let host = match url.host() {
            Some(url::Host::Domain(d)) => {
                let d = d.strip_prefix("*.").unwrap_or(d);
                !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            }
            Some(_) => true,
            None => false,
        };
        if !matches!(url.scheme(), "http" | "https") || !host || !bare || origin.ends_with('/') {
            return Err(refused());
        }
        origins.push(url.origin().ascii_serialization());
    }
    Ok(origins.join(" "))
}

/// The policies of the console and the portal, built once at start: a gateway that could not
/// send one refuses to start rather than serve a page without it.
pub(crate) struct Policies {
    console: HeaderValue,
    portal: HeaderValue,
}

impl Policies {
    pub(crate) fn new(portal_frame_ancestors: &str) -> anyhow::Result<Self> {
        let ancestors = check_frame_ancestors(portal_frame_ancestors)
            .map_err(|e| anyhow::anyhow!("HERALD_PORTAL_FRAME_ANCESTORS: {e}"))?;
        let portal = std::iter::once("'self'").chain(ancestors.split(' ').filter(|o| !o.is_empty()));
        let portal = policy(&portal.collect::<Vec<_>>().join(" "));
        let header = |csp: String, what: &str| {
            HeaderValue::from_str(&csp)
                .map_err(|_| anyhow::anyhow!("the {what}'s Content-Security-Policy {csp:?} is not a valid header"))
        };
        Ok(Self { console: header(policy("'none'"), "console")?, portal: header(portal, "portal")? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ancestors_are_serialised_from_their_urls_whatever_separates_them() {
        // A ConfigMap's block scalar ends in a line break; a list may use commas, tabs, lines.
        let got = check_frame_ancestors("https://app.example.com\n").unwrap();
        assert_eq!(got, "https://app.example.com");
        let got =
            check_frame_ancestors(" https://A.example.com:8443,\thttp://127.0.0.1:3000\r\nhttps://*.example.org ");
        assert_eq!(got.unwrap(), "https://a.example.com:8443 http://127.0.0.1:3000 https://*.example.org");
        assert_eq!(check_frame_ancestors("").unwrap(), "");
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://app.example.com?x",
            "ftp://app.example.com",
            "https://user@app.example.com",
            "https://app.example.com;script-src",
            "'unsafe-inline'",
            "*",
        ] {
            assert!(check_frame_ancestors(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_policy_built_is_a_valid_header_with_its_frame_ancestors() {
        let policies = Policies::new("https://app.example.com\n").unwrap();
        let portal = policies.portal.to_str().unwrap();
        assert!(portal.ends_with("frame-ancestors 'self' https://app.example.com"), "{portal}");
        assert!(policies.console.to_str().unwrap().ends_with("frame-ancestors 'none'"));
        let refused = Policies::new("https://app.example.com/x").err().expect("refused");
        assert!(refused.to_string().starts_with("HERALD_PORTAL_FRAME_ANCESTORS: "), "{refused}");
    }
}
