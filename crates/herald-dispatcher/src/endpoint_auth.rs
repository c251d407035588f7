//! The `Authorization` header a subscription's webhooks carry besides Herald's signature: HTTP
//! Basic and static bearer tokens as given, and OAuth2 access tokens fetched with the client
//! credentials grant (RFC 6749 §4.4).
//!
//! A replica asks the token endpoint once per token, not once per delivery: tokens are kept
//! per credentials (token URL, client, scope, audience, secret), shared by every subscription
//! and delivery that uses them, and replaced shortly before they expire. Deliveries that need
//! a token while one is being fetched wait for that fetch. A 401 from the endpoint drops the
//! token it was sent with, once, and the delivery is sent again with a new one. A token
//! endpoint that fails is asked again at most once a second; meanwhile its failure is each
//! delivery's (class `auth`, retried on the subscription's schedule).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderValue};

use herald_core::endpoint_auth::{BASIC, BEARER, CLIENT_AUTH_POST, OAUTH2};
use herald_core::{metrics, proto, secrets::KeyRing};

use crate::Shared;
use crate::http_client::{self, Sent, WebhookRequest};
use crate::prepared::Prepared;
use crate::retry::ErrorClass;

/// How a prepared subscription authenticates to its endpoint.
#[derive(Debug)]
pub(crate) enum EndpointAuth {
    /// A header that does not change: Basic or a static bearer token.
    Fixed(HeaderValue),
    /// An access token from a token endpoint.
    OAuth2(Credentials),
}

/// What a token is asked for with. Two subscriptions with the same credentials share tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Credentials {
    token_url: url::Url,
    client_id: String,
    secret: String,
    scope: String,
    audience: String,
    in_form: bool,
}

impl EndpointAuth {
    /// `sub`'s auth with its secret opened, or why it cannot be used.
    pub(crate) fn prepare(sub: &proto::Subscription, keys: &KeyRing) -> Option<Result<Self, String>> {
        let auth = sub.auth.as_ref()?;
        Some(Self::of(auth, &sub.id, keys))
    }

    fn of(auth: &proto::EndpointAuth, subscription_id: &str, keys: &KeyRing) -> Result<Self, String> {
        let secret = keys
            .open(subscription_id, &auth.secret)
            .map_err(|e| format!("the subscription's {} auth secret does not open: {e}", auth.r#type))?;
        let header = |text: String| {
            let mut value =
                HeaderValue::try_from(text).map_err(|_| "the auth secret is not a valid header value".to_owned())?;
            value.set_sensitive(true);
            Ok::<_, String>(value)
        };
        match auth.r#type.as_str() {
            BASIC => {
                let pair = base64::engine::general_purpose::STANDARD.encode(format!("{}:{secret}", auth.username));
                header(format!("Basic {pair}")).map(Self::Fixed)
            }
            BEARER => header(format!("Bearer {secret}")).map(Self::Fixed),
            OAUTH2 => Ok(Self::OAuth2(Credentials {
                token_url: url::Url::parse(&auth.token_url)
                    .map_err(|e| format!("the token_url does not parse: {e}"))?,
                client_id: auth.client_id.clone(),
                secret,
                scope: auth.scope.clone(),
                audience: auth.audience.clone(),
                in_form: auth.client_auth == CLIENT_AUTH_POST,
            })),
            other => Err(format!("auth of type {other:?} is not known to this dispatcher")),
        }
    }
}

/// Why no token could be had: its class for the attempt record, and the words.
pub(crate) type TokenError = (ErrorClass, String);

/// A token to send, and which one it is (to drop exactly it after a 401).
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub header: HeaderValue,
    generation: u64,
}

/// The replica's tokens, by credentials.
pub(crate) struct Tokens {
    slots: Mutex<HashMap<Credentials, Arc<tokio::sync::Mutex<Slot>>>>,
}

#[derive(Default)]
struct Slot {
    token: Option<(Issued, Instant)>,
    /// The last failure, kept for [`RETRY_FETCH_AFTER`].
    failed: Option<(Instant, TokenError)>,
    generations: u64,
}

/// A failing token endpoint is asked again after this long at the soonest.
const RETRY_FETCH_AFTER: Duration = Duration::from_secs(1);
/// A token whose lifetime is not given is kept this long.
const UNSTATED_LIFETIME: Duration = Duration::from_secs(300);
/// At most this much of a token's answer is read.
const ANSWER_LIMIT: usize = 64 * 1024;

impl Tokens {
    pub(crate) fn new() -> Self {
        Self { slots: Mutex::default() }
    }

    fn slot(&self, credentials: &Credentials) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().expect("tokens lock");
        if let Some(slot) = slots.get(credentials) {
            return slot.clone();
        }
        // Credentials no subscription uses any more are forgotten as new ones come.
        if slots.len() >= 1024 {
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        slots.entry(credentials.clone()).or_default().clone()
    }

    /// A token for `credentials`: the one held while it is fresh, a new one otherwise.
    pub(crate) async fn token(
        &self,
        client: &reqwest::Client,
        credentials: &Credentials,
    ) -> Result<Issued, TokenError> {
        let slot = self.slot(credentials);
        let mut slot = slot.lock().await;
        slot.current(client, credentials).await
    }

    /// A token after the endpoint refused `refused` with a 401: a new one, unless another
    /// delivery already replaced it.
    pub(crate) async fn after_refusal(
        &self,
        client: &reqwest::Client,
        credentials: &Credentials,
        refused: &Issued,
    ) -> Result<Issued, TokenError> {
        let slot = self.slot(credentials);
        let mut slot = slot.lock().await;
        if slot.token.as_ref().is_some_and(|(held, _)| held.generation == refused.generation) {
            slot.token = None;
        }
        slot.current(client, credentials).await
    }
}

impl Slot {
    async fn current(&mut self, client: &reqwest::Client, credentials: &Credentials) -> Result<Issued, TokenError> {
        let now = Instant::now();
        if let Some((token, refresh_at)) = &self.token
            && now < *refresh_at
        {
            return Ok(token.clone());
        }
        if let Some((at, error)) = &self.failed
            && now.duration_since(*at) < RETRY_FETCH_AFTER
        {
            return Err(error.clone());
        }
        match fetch(client, credentials).await {
            Ok((header, lifetime)) => {
                metrics::TOKEN_REQUESTS.inc(&["issued"]);
                self.generations += 1;
                let issued = Issued { header, generation: self.generations };
                self.token = Some((issued.clone(), now + refresh_within(lifetime)));
                self.failed = None;
                Ok(issued)
            }
            Err(error) => {
                metrics::TOKEN_REQUESTS.inc(&["failed"]);
                tracing::warn!(token_url = %credentials.token_url, client_id = %credentials.client_id, "{}", error.1);
                self.token = None;
                self.failed = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }
}

/// How long a token that lives `lifetime` is used: until a fifth of its life (at most a
/// minute) is left, so that one in flight does not expire on the way.
fn refresh_within(lifetime: Duration) -> Duration {
    lifetime - (lifetime / 5).min(Duration::from_secs(60))
}

/// Asks the token endpoint for a token: the header to send and how long it lives.
async fn fetch(client: &reqwest::Client, credentials: &Credentials) -> Result<(HeaderValue, Duration), TokenError> {
    let failed = |why: String| (ErrorClass::Auth, format!("token endpoint {}: {why}", credentials.token_url));
    let mut request = client
        .post(credentials.token_url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(reqwest::header::ACCEPT, "application/json");
    let form = {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if !credentials.scope.is_empty() {
            form.append_pair("scope", &credentials.scope);
        }
        if !credentials.audience.is_empty() {
            form.append_pair("audience", &credentials.audience);
        }
        if credentials.in_form {
            form.append_pair("client_id", &credentials.client_id);
            form.append_pair("client_secret", &credentials.secret);
        }
        form.finish()
    };
    if !credentials.in_form {
        // RFC 6749 §2.3.1: each part form-encoded before they are joined.
        let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = format!("{}:{}", encode(&credentials.client_id), encode(&credentials.secret));
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
        request = request.header(AUTHORIZATION, basic);
    }
    let mut response = match request.body(form).send().await {
        Ok(response) => response,
        Err(e) => {
            let sent = crate::http_client::failure(&e);
            let class = if sent.class == Some(ErrorClass::Refused) { ErrorClass::Refused } else { ErrorClass::Auth };
            return Err((
                class,
                format!("token endpoint {}: {}", credentials.token_url, sent.error.unwrap_or_default()),
            ));
        }
    };
    let status = response.status();
    let mut body = Vec::new();
    while body.len() < ANSWER_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(ANSWER_LIMIT - body.len())]),
            Ok(None) => break,
            Err(e) => return Err(failed(format!("reading the answer failed: {e}"))),
        }
    }
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if !status.is_success() {
        // RFC 6749 §5.2: `error` and `error_description` say why.
        let mut why = format!("HTTP {}", status.as_u16());
        for field in ["error", "error_description"] {
            if let Some(text) = answer.get(field).and_then(|v| v.as_str()) {
                why.push_str(": ");
                why.extend(text.chars().take(200));
            }
        }
        return Err(failed(why));
    }
    let Some(token) = answer.get("access_token").and_then(|v| v.as_str()).filter(|t| !t.is_empty()) else {
        return Err(failed("the answer holds no access_token".into()));
    };
    if let Some(kind) = answer.get("token_type").and_then(|v| v.as_str())
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(failed(format!("token_type {kind:?} is not Bearer")));
    }
    let lifetime = match answer.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .filter(|s| s.is_finite() && *s >= 0.0)
    .map_or(UNSTATED_LIFETIME, |s| Duration::from_secs_f64(s.min(86_400.0 * 365.0)));
    let mut header = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| failed("the access_token is not a valid header value".into()))?;
    header.set_sensitive(true);
    Ok((header, lifetime))
}

/// Sends `request` with the subscription's `Authorization`: a 401 answered to an access token
/// gets one more try with a new token. A token that cannot be had fails the attempt without
/// sending anything (class `auth`).
pub(crate) async fn send(
    shared: &Shared,
    prepared: &Prepared,
    client: &http_client::WebhookClient,
    mut request: WebhookRequest<'_>,
) -> Sent {
    let limit = shared.config.response_body_limit;
    let credentials = match &prepared.auth {
        None => return http_client::send(client, request, limit).await,
        Some(Err(why)) => return http_client::failed_before_sending(ErrorClass::Auth, why),
        Some(Ok(EndpointAuth::Fixed(header))) => {
            request.headers.insert(AUTHORIZATION, header.clone());
            return http_client::send(client, request, limit).await;
        }
        Some(Ok(EndpointAuth::OAuth2(credentials))) => credentials,
    };
    let started = Instant::now();
    let took = |mut sent: Sent| {
        sent.elapsed = started.elapsed();
        sent
    };
    let token = match shared.tokens.token(&shared.http, credentials).await {
        Ok(token) => token,
        Err((class, why)) => return took(http_client::failed_before_sending(class, &why)),
    };
    let again = (request.headers.clone(), request.body.clone());
    request.headers.insert(AUTHORIZATION, token.header.clone());
    let (method, url) = (request.method.clone(), request.url);
    let sent = http_client::send(client, request, limit).await;
    if sent.result.status != Some(401) {
        return took(sent);
    }
    // Revoked, or expired sooner than it said: one new token, one more try.
    let Ok(fresh) = shared.tokens.after_refusal(&shared.http, credentials, &token).await else {
        return took(sent);
    };
    let (mut headers, body) = again;
    headers.insert(AUTHORIZATION, fresh.header);
    took(http_client::send(client, WebhookRequest { method, url, headers, body }, limit).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_replaced_before_they_expire() {
        assert_eq!(refresh_within(Duration::from_secs(3600)), Duration::from_secs(3540));
        assert_eq!(refresh_within(Duration::from_secs(10)), Duration::from_secs(8));
        assert_eq!(refresh_within(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn basic_and_bearer_headers_are_made_from_the_opened_secret() {
        let keys = KeyRing::parse("k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
        let auth = |kind: &str, username: &str, secret: &str| proto::EndpointAuth {
            r#type: kind.into(),
            username: username.into(),
            secret: keys.seal("sub_1", secret),
            ..Default::default()
        };
        let header = |auth: &proto::EndpointAuth| match EndpointAuth::of(auth, "sub_1", &keys).unwrap() {
            EndpointAuth::Fixed(value) => value.to_str().unwrap().to_owned(),
            EndpointAuth::OAuth2(_) => panic!("not fixed"),
        };
        // RFC 7617's example.
        assert_eq!(header(&auth(BASIC, "Aladdin", "open sesame")), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(header(&auth(BEARER, "", "t0k")), "Bearer t0k");
        let error = EndpointAuth::of(&auth(BEARER, "", "t0k"), "sub_2", &keys).unwrap_err();
        assert!(error.contains("does not open"), "{error}");
    }
}
