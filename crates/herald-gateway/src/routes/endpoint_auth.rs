//! A subscription's `auth`: how its webhooks authenticate to the endpoint besides Herald's
//! signature (an OAuth2 client credentials token, HTTP Basic, a static bearer token), as the
//! API takes and shows it. The secret is sealed and never shown.

use serde::{Deserialize, Serialize};

use herald_core::endpoint_auth::{self, Given};
use herald_core::proto;

use crate::AppState;
use crate::error::ApiError;

/// `auth` as a user gives it:
/// `{"type": "oauth2_client_credentials", "token_url": …, "client_id": …, "client_secret": …,
/// "scope"?: …, "audience"?: …, "client_auth"?: "basic" | "post"}`,
/// `{"type": "basic", "username": …, "password": …}` or `{"type": "bearer", "token": …}`.
/// On a change, leaving the secret out keeps the stored one (same type only).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthInput {
    /// `oauth2_client_credentials`, `basic` or `bearer`.
    #[serde(rename = "type")]
    kind: String,
    /// OAuth2: the token endpoint (checked by the SSRF guard like a webhook URL).
    token_url: Option<String>,
    /// OAuth2: the client's id.
    client_id: Option<String>,
    /// OAuth2: the client's secret. Stored sealed, never shown again.
    client_secret: Option<String>,
    /// OAuth2: the scope asked for (space-separated), if any.
    scope: Option<String>,
    /// OAuth2: the audience asked for (Auth0 and others), if any.
    audience: Option<String>,
    /// OAuth2: how the client authenticates to the token endpoint: `basic` (HTTP Basic, the
    /// default) or `post` (`client_id` and `client_secret` in the form).
    client_auth: Option<String>,
    /// Basic: the user name.
    username: Option<String>,
    /// Basic: the password. Stored sealed, never shown again.
    password: Option<String>,
    /// Bearer: the token sent as `Authorization: Bearer …`. Stored sealed, never shown again.
    token: Option<String>,
}

/// `auth` as the API shows it: everything but the secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AuthView {
    /// `oauth2_client_credentials`, `basic` or `bearer`.
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audience: Option<String>,
    /// OAuth2: `basic` or `post`.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_auth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
}

impl AuthView {
    pub(crate) fn of(sub: &proto::Subscription) -> Option<Self> {
        let auth = sub.auth.as_ref()?;
        let text = |v: &String| (!v.is_empty()).then(|| v.clone());
        let oauth2 = auth.r#type == endpoint_auth::OAUTH2;
        Some(Self {
            kind: auth.r#type.clone(),
            token_url: text(&auth.token_url),
            client_id: text(&auth.client_id),
            scope: text(&auth.scope),
            audience: text(&auth.audience),
            client_auth: oauth2.then(|| {
                if auth.client_auth.is_empty() { endpoint_auth::CLIENT_AUTH_BASIC } else { &auth.client_auth }
                    .to_owned()
            }),
            username: text(&auth.username),
        })
    }
}

impl AuthInput {
    /// The secret under the name the type gives it; a secret under another name is refused.
    fn secret(&self) -> Result<Option<String>, ApiError> {
        let expected = endpoint_auth::secret_field(&self.kind);
        let mut given = None;
        for (name, value) in
            [("client_secret", &self.client_secret), ("password", &self.password), ("token", &self.token)]
        {
            match value {
                Some(v) if name == expected => given = Some(v.clone()),
                Some(_) if endpoint_auth::TYPES.contains(&self.kind.as_str()) => {
                    return Err(ApiError::invalid(
                        Some("auth"),
                        format!("auth: {name} does not apply to {} auth (it takes {expected})", self.kind),
                    ));
                }
                _ => {}
            }
        }
        Ok(given)
    }

    /// Checked and sealed for `sub`, keeping `sub`'s stored secret when none is given.
    pub(crate) fn stored(&self, state: &AppState, sub: &proto::Subscription) -> Result<proto::EndpointAuth, ApiError> {
        let given = Given {
            kind: self.kind.clone(),
            token_url: self.token_url.clone(),
            client_id: self.client_id.clone(),
            scope: self.scope.clone(),
            audience: self.audience.clone(),
            client_auth: self.client_auth.clone(),
            username: self.username.clone(),
            secret: self.secret()?,
        };
        let current = sub.auth.as_ref();
        let checked =
            endpoint_auth::validate(&given, current).map_err(|e| ApiError::invalid(Some(e.field), e.to_string()))?;
        if !checked.token_url.is_empty() {
            let url = url::Url::parse(&checked.token_url)
                .map_err(|e| ApiError::invalid(Some("auth"), format!("auth: token_url: {e}")))?;
            state
                .policy
                .check_url(&url)
                .map_err(|r| ApiError::invalid(Some("auth"), format!("auth: token_url: {r}")))?;
        }
        Ok(endpoint_auth::sealed(checked, current, &sub.id, &state.keys))
    }
}

/// Refuses what cannot go with `auth`: a broker destination (its credentials are in its URL),
/// and an `Authorization` header of the subscription's own (it would be replaced).
pub(crate) fn check_combination(sub: &proto::Subscription) -> Result<(), ApiError> {
    if sub.auth.is_none() {
        return Ok(());
    }
    if let Some(d) = &sub.destination {
        return Err(ApiError::invalid(
            Some("auth"),
            format!(
                "auth: applies to webhooks only, not to a {} destination (a broker's credentials go in its URL; nothing is sent to a polling subscription)",
                d.r#type
            ),
        ));
    }
    if sub.headers.contains_key("authorization") {
        return Err(ApiError::invalid(
            Some("auth"),
            "auth: sets the Authorization header; remove the subscription's own `authorization` header",
        ));
    }
    Ok(())
}
