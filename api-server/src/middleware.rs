//! Cross-cutting request handling: metrics and timeout, rate limiting, request ids.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::error::ApiError;
use crate::metrics::{HttpLabels, Metrics, method_label, route_label};

/// No request may take longer than this; the client gets 503 instead of a hung socket.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Refuses a body whose declared `Content-Length` is over `limit` from the header alone:
/// 413 problem+json before a byte of it is read (with `Expect: 100-continue`, the client is
/// never asked to send it). Bodies without a length are still capped while being read, by
/// `DefaultBodyLimit`.
pub async fn reject_declared_oversize(
    State(limit): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if usize::try_from(length).map_or(true, |length| length > limit) => {
            ApiError::PayloadTooLarge.into_response()
        }
        _ => next.run(request).await,
    }
}

/// Records count and latency by route and status, and bounds the request's duration.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(request.method());
    let route = route_label(
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    };
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    metrics.observe_request(labels, start.elapsed().as_secs_f64());
    response
}

pub type RateLimiter = DefaultKeyedRateLimiter<IpAddr>;

pub fn rate_limiter(rps: NonZeroU32, burst: NonZeroU32) -> RateLimiter {
    RateLimiter::dashmap(Quota::per_second(rps).allow_burst(burst))
}

/// Per-client-IP token bucket. The peer address is used, not X-Forwarded-For, which any
/// client could forge.
pub async fn rate_limit(
    State(state): State<crate::state::AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(limiter) = &state.rate_limiter else {
        return next.run(request).await;
    };
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(addr)| {
            addr.ip()
        });
    match limiter.check_key(&ip) {
        Ok(()) => next.run(request).await,
        Err(not_until) => {
            state.metrics.rate_limited.inc();
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::RateLimited {
                retry_after_secs: retry_after_secs.max(1),
            }
            .into_response()
        }
    }
}

/// Request ids as `<process prefix>-<counter>`: unique per process start, and cheaper than a
/// random UUID per request.
#[derive(Clone)]
pub struct RequestIds {
    prefix: u32,
    counter: Arc<AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self {
            prefix: rand::random(),
            counter: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:08x}-{n:x}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}
