//! An OAuth2 authorization server and the resource it protects, on loopback: `POST /token`
//! issues expiring bearer tokens for one client with the client credentials grant (RFC 6749
//! §4.4, the client authenticated with HTTP Basic or in the form), and every other path is a
//! webhook endpoint that answers 200 to a live token it issued and 401 to anything else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};

/// One request to the token endpoint.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The form's fields.
    pub form: HashMap<String, String>,
    /// How the client authenticated: `basic` or `post`.
    pub client_auth: &'static str,
    /// The status answered.
    pub status: u16,
}

/// One webhook request to the protected endpoint.
#[derive(Debug, Clone)]
pub struct Protected {
    /// The bearer token it carried, if any.
    pub token: Option<String>,
    /// The `webhook-id` header.
    pub webhook_id: String,
    /// 200 (a live token) or 401.
    pub status: u16,
}

#[derive(Default)]
struct State {
    tokens: HashMap<String, Instant>,
    issued: usize,
    token_requests: Vec<TokenRequest>,
    webhooks: Vec<Protected>,
    /// Answer the token endpoint with this status instead (503: it is down).
    failing: Option<u16>,
}

/// The server. Tokens live `lifetime` and say so in `expires_in`.
#[derive(Clone)]
pub struct TokenServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

/// The client the server knows.
pub const CLIENT_ID: &str = "herald-client";
/// Its secret (with characters that form-encoding changes).
pub const CLIENT_SECRET: &str = "s3cret:&+=";

impl TokenServer {
    /// Starts on a random port of 127.0.0.1.
    pub async fn start(lifetime: Duration) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let (issuer, resource) = (state.clone(), state.clone());
        let app = axum::Router::new()
            .route(
                "/token",
                axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                    let state = issuer.clone();
                    async move { issue(&state, lifetime, &headers, &body) }
                }),
            )
            .fallback(move |headers: HeaderMap| {
                let state = resource.clone();
                async move { protect(&state, &headers) }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind token server");
        let addr = listener.local_addr().expect("addr");
        drop(tokio::spawn(async move { axum::serve(listener, app).await }));
        Self { addr, state }
    }

    /// The token endpoint's URL.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// A URL of the protected endpoint.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests to the token endpoint so far.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state.lock().unwrap().token_requests.clone()
    }

    /// Webhook requests so far.
    pub fn webhooks(&self) -> Vec<Protected> {
        self.state.lock().unwrap().webhooks.clone()
    }

    /// Forgets every token issued: the next request with one is answered 401.
    pub fn revoke_all(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    /// Makes the token endpoint answer `status` (`None`: issue tokens again).
    pub fn fail_with(&self, status: Option<u16>) {
        self.state.lock().unwrap().failing = status;
    }
}

fn issue(
    state: &Mutex<State>,
    lifetime: Duration,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, axum::Json<Value>) {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    // RFC 6749 §2.3.1: the id and secret are form-encoded before they are joined.
    let decode = |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    let (client_auth, client) = match &basic {
        Some(pair) => {
            let (id, secret) = pair.split_once(':').unwrap_or((pair, ""));
            ("basic", (decode(id), decode(secret)))
        }
        None => ("post", (form.get("client_id").cloned(), form.get("client_secret").cloned())),
    };
    let mut st = state.lock().unwrap();
    let (status, answer) = if let Some(status) = st.failing {
        (status, json!({"error": "temporarily_unavailable", "error_description": "the test made it fail"}))
    } else if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        (400, json!({"error": "unsupported_grant_type"}))
    } else if client != (Some(CLIENT_ID.to_owned()), Some(CLIENT_SECRET.to_owned())) {
        (401, json!({"error": "invalid_client"}))
    } else {
        st.issued += 1;
        let token = format!("token-{}", st.issued);
        st.tokens.insert(token.clone(), Instant::now() + lifetime);
        (200, json!({"access_token": token, "token_type": "Bearer", "expires_in": lifetime.as_secs()}))
    };
    st.token_requests.push(TokenRequest { form, client_auth, status });
    (StatusCode::from_u16(status).unwrap(), axum::Json(answer))
}

fn protect(state: &Mutex<State>, headers: &HeaderMap) -> StatusCode {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let webhook_id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut st = state.lock().unwrap();
    let live = token.as_ref().and_then(|t| st.tokens.get(t)).is_some_and(|until| Instant::now() < *until);
    let status = if live { 200 } else { 401 };
    st.webhooks.push(Protected { token, webhook_id, status });
    StatusCode::from_u16(status).unwrap()
}
