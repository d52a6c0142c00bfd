//! The operator's HTTP port: `/healthz` (process alive), `/readyz` (leading and the
//! controller running), `/metrics` (OpenMetrics text).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::error::{Error, Result};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Readiness flag shared by the controller and `/readyz`.
#[derive(Clone, Default, Debug)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
pub struct HttpState {
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.readiness.get() {
        (StatusCode::OK, "ready").into_response()
    } else {
        // Standby replicas and a controller that is still starting are not ready.
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not leading or not started",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Binds the listener up front, so a taken port fails start-up instead of a background task.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(Error::BindHttp)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /healthz /readyz /metrics");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::ServeHttp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn state(ready: bool) -> HttpState {
        let readiness = Readiness::default();
        readiness.set(ready);
        let mut registry = Registry::default();
        crate::metrics::Metrics::register(&mut registry);
        HttpState {
            registry: Arc::new(registry),
            readiness,
        }
    }

    async fn status_of(state: HttpState, path: &str) -> StatusCode {
        let req = Request::get(path).body(Body::empty()).unwrap();
        router(state).oneshot(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn healthz_is_ok_even_on_a_standby_replica() {
        assert_eq!(status_of(state(false), "/healthz").await, StatusCode::OK);
    }

    #[tokio::test]
    async fn readyz_follows_the_readiness_flag() {
        assert_eq!(
            status_of(state(false), "/readyz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status_of(state(true), "/readyz").await, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let req = Request::get("/metrics").body(Body::empty()).unwrap();
        let resp = router(state(true)).oneshot(req).await.unwrap();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], OPENMETRICS);
    }
}
