//! The HTTP/1.1 accept loop: hyper with the connection limits of [`HttpLimits`] applied.
//!
//! `axum::serve` exposes none of hyper's connection options, so this is its loop with them:
//! a bound on header size (hyper answers 431), header-read and idle deadlines on the socket
//! ([`deadlines`]), and a cap on connections served at once, past which a connection gets
//! one 503 problem+json and is closed (load shedding) instead of waiting in the backlog.

mod deadlines;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::config::HttpLimits;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::middleware;
use deadlines::{Activity, Deadlines};

/// Connections over the cap that are answered 503 at once; past that they are closed unread.
const SHED_AT_ONCE: usize = 256;
/// A shed connection gets this long to send its request head.
const SHED_HEADER_READ: Duration = Duration::from_secs(1);
/// After an accept error other than a client's reset (say, out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `stop_accepting` resolves, then waits for the open
/// connections to finish their current request (each is told to close after it).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &HttpLimits,
    metrics: Arc<Metrics>,
    stop_accepting: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.max_header_size(limits.max_header_bytes())
        // The deadlines wrapper does this, with a separate idle timeout.
        .header_read_timeout(None);
    let mut shed_http = http1::Builder::new();
    shed_http
        .max_header_size(limits.max_header_bytes())
        .header_read_timeout(None)
        .keep_alive(false);
    let shed_app = shed_router();
    let permits = Arc::new(Semaphore::new(limits.max_connections()));
    let shed_permits = Arc::new(Semaphore::new(SHED_AT_ONCE));
    let graceful = GracefulShutdown::new();
    let (header_read, idle) = (limits.header_read_timeout(), limits.idle_timeout());

    tokio::pin!(stop_accepting);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    on_accept_error(error).await;
                    continue;
                }
            },
            () = &mut stop_accepting => break,
        };
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            let activity = Arc::new(Activity::default());
            let io = TokioIo::new(Deadlines::new(stream, activity.clone(), header_read, idle));
            let connection =
                graceful.watch(http.serve_connection(io, service(app.clone(), peer, activity)));
            let metrics = metrics.clone();
            metrics.http_connections.inc();
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, %peer, "connection closed with an error");
                }
                metrics.http_connections.dec();
                drop(permit);
            });
        } else {
            metrics.http_connections_shed.inc();
            let Ok(permit) = shed_permits.clone().try_acquire_owned() else {
                continue; // dropping the stream closes it
            };
            let io = TokioIo::new(Deadlines::new(
                stream,
                Arc::new(Activity::default()),
                SHED_HEADER_READ,
                SHED_HEADER_READ,
            ));
            let connection = shed_http.serve_connection(
                io,
                service(shed_app.clone(), peer, Arc::new(Activity::default())),
            );
            tokio::spawn(async move {
                let _ = connection.await;
                drop(permit);
            });
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The app as a hyper service for one connection: each request carries the peer address
/// (`ConnectInfo`, for the rate limiter) and counts as activity while it is handled.
fn service(
    app: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let busy = activity.begin();
        let call = app.clone().oneshot(request.map(Body::new));
        async move {
            let response = call.await;
            drop(busy);
            response
        }
    })
}

/// What a connection over the cap is told, whatever it asked.
fn shed_router() -> Router {
    Router::new()
        .fallback(|| async { ApiError::Overloaded })
        .layer(axum::middleware::from_fn(middleware::drain_unread_body))
}

async fn on_accept_error(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accept failed; pausing");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}
