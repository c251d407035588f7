//! Serving HTTP with the bounds a public endpoint needs: a client has `header_timeout` to send a
//! request's headers (a connection that sends half a request, or nothing, is closed), and on
//! shutdown requests in progress get `grace` to finish before the connections still open are
//! dropped, so a gateway stops in bounded time however many clients hold connections.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The bounds of [`serve`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long requests in progress may take to finish once shutdown begins.
    pub grace: Duration,
}

/// Serves `app` on `listener` until `shutdown`, then stops accepting, lets requests in progress
/// finish within `bounds.grace` (idle connections are closed at once), and drops the rest.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    bounds: Bounds,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let draining = CancellationToken::new();
    let dropped = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of file descriptors and the like: wait a moment rather than spin.
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let (draining, dropped) = (draining.clone(), dropped.clone());
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(bounds.header_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = draining.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            tokio::select! {
                _ = connection => {}
                _ = dropped.cancelled() => {}
            }
        });
    }
    drop(listener);
    draining.cancel();
    connections.close();
    if tokio::time::timeout(bounds.grace, connections.wait()).await.is_err() {
        tracing::warn!(open = connections.len(), grace = ?bounds.grace, "requests still in progress after the grace period; closing their connections");
        dropped.cancel();
        connections.wait().await;
    }
    Ok(())
}
