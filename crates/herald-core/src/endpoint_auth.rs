//! How a webhook authenticates to its endpoint besides Herald's signature: an OAuth2 access
//! token fetched with the client credentials grant (RFC 6749 §4.4), HTTP Basic, or a static
//! bearer token. This module validates what users give; the dispatcher's `endpoint_auth`
//! fetches, caches and sends the tokens.

use crate::proto;
use crate::secrets::KeyRing;
use crate::subscription::InvalidField;

/// An access token from `token_url`, fetched with the client credentials grant.
pub const OAUTH2: &str = "oauth2_client_credentials";
/// `Authorization: Basic` with a user name and password.
pub const BASIC: &str = "basic";
/// `Authorization: Bearer` with a token that does not change.
pub const BEARER: &str = "bearer";

/// The types `auth` may have.
pub const TYPES: &[&str] = &[OAUTH2, BASIC, BEARER];

/// The client authenticates to the token endpoint with HTTP Basic (RFC 6749 §2.3.1's
/// recommendation, and the default) …
pub const CLIENT_AUTH_BASIC: &str = "basic";
/// … or with `client_id` and `client_secret` in the form (what some providers require).
pub const CLIENT_AUTH_POST: &str = "post";

/// `auth` as a user gives it, before validation. `secret` is the client secret, the password
/// or the token, by type; `None` on a change keeps the stored one (see [`Given::keeping`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given {
    pub kind: String,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub client_auth: Option<String>,
    pub username: Option<String>,
    pub secret: Option<String>,
}

fn invalid(message: impl Into<String>) -> InvalidField {
    InvalidField { field: "auth", message: message.into() }
}

/// The name the secret goes by for each type, in messages and in the API.
pub fn secret_field(kind: &str) -> &'static str {
    match kind {
        OAUTH2 => "client_secret",
        BASIC => "password",
        _ => "token",
    }
}

/// Validates `given`. The result holds the secret in the clear: seal it with [`sealed`]
/// before storing. `current` is the stored auth (sealed), whose secret a change without one
/// keeps when the type stays the same.
pub fn validate(given: &Given, current: Option<&proto::EndpointAuth>) -> Result<proto::EndpointAuth, InvalidField> {
    let kind = given.kind.as_str();
    if !TYPES.contains(&kind) {
        return Err(invalid(format!("type {kind:?} is not one of {}", TYPES.join(", "))));
    }
    // What each type takes besides its secret; anything else given is refused.
    let takes: &[&str] = match kind {
        OAUTH2 => &["token_url", "client_id", "scope", "audience", "client_auth"],
        BASIC => &["username"],
        _ => &[],
    };
    for (field, value) in [
        ("token_url", &given.token_url),
        ("client_id", &given.client_id),
        ("scope", &given.scope),
        ("audience", &given.audience),
        ("client_auth", &given.client_auth),
        ("username", &given.username),
    ] {
        if value.is_some() && !takes.contains(&field) {
            return Err(invalid(format!("{field} does not apply to {kind} auth")));
        }
    }
    let mut auth = proto::EndpointAuth { r#type: kind.to_owned(), ..Default::default() };
    match kind {
        OAUTH2 => {
            let token_url = required("token_url", &given.token_url)?;
            auth.token_url = crate::subscription::validate_url(token_url)
                .map_err(|e| invalid(format!("token_url: {}", e.message)))?;
            auth.client_id = printable("client_id", required("client_id", &given.client_id)?, 512)?.to_owned();
            auth.scope = printable("scope", given.scope.as_deref().unwrap_or(""), 1024)?.to_owned();
            auth.audience = printable("audience", given.audience.as_deref().unwrap_or(""), 1024)?.to_owned();
            auth.client_auth = match given.client_auth.as_deref() {
                None | Some(CLIENT_AUTH_BASIC) => String::new(),
                Some(CLIENT_AUTH_POST) => CLIENT_AUTH_POST.to_owned(),
                Some(other) => {
                    return Err(invalid(format!(
                        "client_auth {other:?} is not \"{CLIENT_AUTH_BASIC}\" (HTTP Basic, the default) or \"{CLIENT_AUTH_POST}\" (in the form)"
                    )));
                }
            };
        }
        BASIC => {
            let username = required("username", &given.username)?;
            if username.contains(':') {
                return Err(invalid("username: may not contain ':' (HTTP Basic separates it from the password)"));
            }
            auth.username = printable("username", username, 512)?.to_owned();
        }
        _ => {}
    }
    let secret_name = secret_field(kind);
    auth.secret = match (&given.secret, current) {
        (Some(secret), _) => {
            if secret.is_empty() {
                return Err(invalid(format!("{secret_name}: may not be empty")));
            }
            printable(secret_name, secret, 8192)?.to_owned()
        }
        // Kept as stored (sealed): the caller seals only a secret given now.
        (None, Some(current)) if current.r#type == kind && !current.secret.is_empty() => current.secret.clone(),
        (None, _) => return Err(invalid(format!("{secret_name}: required for {kind} auth"))),
    };
    Ok(auth)
}

/// `auth` as stored: its secret sealed for `subscription_id`, unless it was kept from `current`
/// (already sealed).
pub fn sealed(
    mut auth: proto::EndpointAuth,
    current: Option<&proto::EndpointAuth>,
    subscription_id: &str,
    keys: &KeyRing,
) -> proto::EndpointAuth {
    let kept = current.is_some_and(|c| c.r#type == auth.r#type && c.secret == auth.secret);
    if !kept {
        auth.secret = keys.seal(subscription_id, &auth.secret);
    }
    auth
}

fn required<'a>(field: &str, value: &'a Option<String>) -> Result<&'a str, InvalidField> {
    match value.as_deref() {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(invalid(format!("{field}: required"))),
    }
}

/// Header-safe text: no control characters (it travels in a form or a header), at most `max`
/// bytes.
fn printable<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, InvalidField> {
    if value.len() > max {
        return Err(invalid(format!("{field}: must be at most {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(format!("{field}: may not contain control characters")));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth2() -> Given {
        Given {
            kind: OAUTH2.into(),
            token_url: Some("https://auth.example.com/oauth/token".into()),
            client_id: Some("herald".into()),
            secret: Some("s3cret".into()),
            ..Default::default()
        }
    }

    fn error(given: &Given) -> String {
        validate(given, None).unwrap_err().message
    }

    #[test]
    fn each_type_takes_what_it_needs_and_refuses_the_rest() {
        let auth = validate(&oauth2(), None).unwrap();
        assert_eq!(
            (auth.token_url.as_str(), auth.client_id.as_str()),
            ("https://auth.example.com/oauth/token", "herald")
        );
        assert_eq!(auth.client_auth, "", "HTTP Basic is the default");
        assert!(error(&Given { kind: "digest".into(), ..oauth2() }).contains("not one of"));
        assert!(error(&Given { token_url: None, ..oauth2() }).contains("token_url: required"));
        assert!(error(&Given { token_url: Some("ftp://x".into()), ..oauth2() }).contains("token_url: scheme"));
        assert!(error(&Given { client_id: Some(String::new()), ..oauth2() }).contains("client_id: required"));
        assert!(error(&Given { secret: None, ..oauth2() }).contains("client_secret: required"));
        assert!(error(&Given { client_auth: Some("jwt".into()), ..oauth2() }).contains("client_auth"));
        assert!(error(&Given { username: Some("u".into()), ..oauth2() }).contains("username does not apply"));

        let basic = Given {
            kind: BASIC.into(),
            username: Some("herald".into()),
            secret: Some("pw".into()),
            ..Default::default()
        };
        assert_eq!(validate(&basic, None).unwrap().username, "herald");
        assert!(error(&Given { username: Some("a:b".into()), ..basic.clone() }).contains("':'"));
        assert!(error(&Given { secret: None, ..basic.clone() }).contains("password: required"));
        assert!(error(&Given { scope: Some("x".into()), ..basic }).contains("scope does not apply"));

        let bearer = Given { kind: BEARER.into(), secret: Some("tok".into()), ..Default::default() };
        assert_eq!(validate(&bearer, None).unwrap().secret, "tok");
        assert!(error(&Given { secret: Some("a\nb".into()), ..bearer.clone() }).contains("control characters"));
        assert!(error(&Given { client_id: Some("c".into()), ..bearer }).contains("client_id does not apply"));
    }

    #[test]
    fn secrets_are_sealed_and_a_change_without_one_keeps_the_stored_one() {
        let keys = KeyRing::parse("k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
        let stored = sealed(validate(&oauth2(), None).unwrap(), None, "sub_1", &keys);
        assert!(!stored.secret.contains("s3cret"));
        assert_eq!(keys.open("sub_1", &stored.secret).unwrap(), "s3cret");

        // A new scope without the secret: the sealed secret stays as it was, not sealed twice.
        let changed = Given { scope: Some("webhooks".into()), secret: None, ..oauth2() };
        let kept = sealed(validate(&changed, Some(&stored)).unwrap(), Some(&stored), "sub_1", &keys);
        assert_eq!((kept.secret.as_str(), kept.scope.as_str()), (stored.secret.as_str(), "webhooks"));
        // Another type needs its own secret.
        let bearer = Given { kind: BEARER.into(), ..Default::default() };
        assert!(validate(&bearer, Some(&stored)).unwrap_err().message.contains("token: required"));
        // A new secret is sealed.
        let rotated = Given { secret: Some("n3w".into()), ..oauth2() };
        let rotated = sealed(validate(&rotated, Some(&stored)).unwrap(), Some(&stored), "sub_1", &keys);
        assert_eq!(keys.open("sub_1", &rotated.secret).unwrap(), "n3w");
    }
}
