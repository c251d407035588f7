//! `/healthz` (the process is up), `/readyz` (connected to NATS, subscriptions loaded,
//! consuming) and `/metrics` (Prometheus) on `HERALD_LISTEN`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use herald_core::registry::Registry;

use crate::Readiness;

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    client: async_nats::Client,
    registry: Arc<Registry>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    let ready = move || {
        let (client, registry, readiness) = (client.clone(), registry.clone(), readiness.clone());
        async move {
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            let consuming = readiness.consuming.load(Ordering::Relaxed);
            if connected && registry.is_ready() && consuming {
                (StatusCode::OK, "ready\n")
            } else if !connected {
                (StatusCode::SERVICE_UNAVAILABLE, "not connected to NATS\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "not consuming (starting or shutting down)\n")
            }
        }
    };
    let metrics = || async {
        ([(axum::http::header::CONTENT_TYPE, herald_core::metrics::CONTENT_TYPE)], herald_core::metrics::render())
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics));
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!(error = %e, "health endpoint failed");
    }
}
