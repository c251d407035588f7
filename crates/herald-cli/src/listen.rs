//! `heraldctl listen`: a local receiver that verifies each webhook's signature (`v1` with a
//! `whsec_` secret, `v1a` with a `whpk_` public key) and prints it.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use bytes::Bytes;
use serde_json::Value;

use herald_signature::{PublicKey, Secret, Verifier};

pub(crate) async fn listen(secret: &str, addr: SocketAddr, status: u16) -> anyhow::Result<()> {
    let verifier = if secret.trim().starts_with(herald_signature::PUBLIC_KEY_PREFIX) {
        let key = PublicKey::parse(secret).context("--public-key must be the subscription's whpk_… key")?;
        Verifier::for_public_key(key)
    } else {
        Verifier::new(Secret::parse(secret).context("--secret must be the subscription's whsec_… secret")?)
    };
    let verifier = std::sync::Arc::new(verifier);
    let status = StatusCode::from_u16(status).context("--status must be an HTTP status code")?;
    let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let verifier = verifier.clone();
        async move {
            let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let verdict = verifier.verify(h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"), &body);
            let pretty = serde_json::from_slice::<Value>(&body)
                .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            match &verdict {
                Ok(()) => {
                    println!("✔ {method} {uri}  webhook-id={}  signature verified", h("webhook-id").unwrap_or("-"))
                }
                Err(e) => println!("✘ {method} {uri}  webhook-id={}  REJECTED: {e}", h("webhook-id").unwrap_or("-")),
            }
            println!("{pretty}\n");
            match verdict {
                Ok(()) => (status, "ok\n"),
                Err(_) => (StatusCode::UNAUTHORIZED, "invalid signature\n"),
            }
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    println!("listening on http://{addr}/ — verifying webhooks (Ctrl-C to stop)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
