//! Cross-cutting request handling: metrics and timeout, rate limiting, request ids, and
//! discarding request bodies a response did not need.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::oneshot;
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::error::ApiError;
use crate::metrics::{HttpLabels, Metrics, method_label, route_label};

pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

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

/// Most bytes of an unread request body read and discarded after the response.
pub const DRAIN_MAX_BYTES: usize = 32 << 20;
/// Longest time spent discarding an unread request body after the response.
pub const DRAIN_FOR: Duration = Duration::from_secs(10);

/// Reads and discards the rest of a request body the response did not need (a 413 from the
/// declared length, a 400 for the content type), after the response is handed to hyper, up
/// to [`DRAIN_MAX_BYTES`] and [`DRAIN_FOR`], like nginx's lingering close.
///
/// Without it hyper closes the connection with the body's bytes still arriving. Closing a
/// socket with unread data makes the kernel send a reset, and a client that sends its whole
/// body before reading (no `Expect: 100-continue`: urllib, fetch, Go) gets a broken pipe
/// instead of our answer. A client that asked for `100-continue` and was never told to go
/// on sends no body, so there is nothing to drain.
pub async fn drain_unread_body(request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (back, mut unread) = oneshot::channel();
    let request = request.map(|body| {
        Body::new(ReturnUnread {
            body: Some(body),
            back: Some(back),
            polled: false,
        })
    });
    let response = next.run(request).await;
    if let Ok(Unread { body, polled }) = unread.try_recv()
        && (polled || !expects_continue)
    {
        tokio::spawn(discard(body));
    }
    response
}

async fn discard(body: Body) {
    let mut left = DRAIN_MAX_BYTES;
    let mut data = body.into_data_stream();
    let _ = tokio::time::timeout(DRAIN_FOR, async {
        while let Some(Ok(chunk)) = data.next().await {
            match left.checked_sub(chunk.len()) {
                Some(rest) => left = rest,
                None => return,
            }
        }
    })
    .await;
}

/// What a handler dropped before the end of the body.
struct Unread {
    body: Body,
    /// Whether anyone asked for data (which makes hyper send `100 Continue`).
    polled: bool,
}

/// A request body that, dropped before its end, is handed back to [`drain_unread_body`].
struct ReturnUnread {
    body: Option<Body>,
    back: Option<oneshot::Sender<Unread>>,
    polled: bool,
}

impl HttpBody for ReturnUnread {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        self.polled = true;
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.body = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for ReturnUnread {
    fn drop(&mut self) {
        if let (Some(body), Some(back)) = (self.body.take(), self.back.take())
            && !body.is_end_stream()
        {
            let _ = back.send(Unread {
                body,
                polled: self.polled,
            });
        }
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

/// `/users` answers 503 until the schema is in place, rather than 500s on missing tables.
pub async fn require_schema(
    State(state): State<crate::state::AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.health.schema_ready() {
        next.run(request).await
    } else {
        ApiError::Starting.into_response()
    }
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

/// Longest request id taken from a client.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether a client's request id may be used as ours (echoed, logged): 1 to 128 characters
/// of `[A-Za-z0-9._-]`. Anything else could forge log lines or bloat every log record.
pub fn is_acceptable_request_id(value: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Drops a client's `X-Request-Id` that is not acceptable, so one is generated instead.
pub async fn drop_unacceptable_request_id(mut request: Request) -> Request {
    let headers = request.headers_mut();
    let mut ids = headers.get_all(REQUEST_ID).iter();
    let usable = match (ids.next(), ids.next()) {
        (None, _) => true,
        (Some(id), None) => is_acceptable_request_id(id.as_bytes()),
        // Several ids are as unusable as a bad one.
        (Some(_), Some(_)) => false,
    };
    if !usable {
        headers.remove(REQUEST_ID);
    }
    request
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_letters_digits_dots_underscores_and_dashes_are_accepted() {
        assert!(is_acceptable_request_id(b"abc-123_x.Y"));
    }

    #[test]
    fn an_id_of_128_characters_is_accepted_and_of_129_refused() {
        assert!(is_acceptable_request_id(&[b'a'; 128]));
        assert!(!is_acceptable_request_id(&[b'a'; 129]));
    }

    #[test]
    fn an_empty_id_is_refused() {
        assert!(!is_acceptable_request_id(b""));
    }

    #[test]
    fn ids_with_spaces_quotes_slashes_or_non_ascii_are_refused() {
        for bad in [
            &b"a b"[..],
            b"a\"b",
            b"a/b",
            b"a\nb",
            "\u{e9}".as_bytes(),
            b"{x}",
        ] {
            assert!(!is_acceptable_request_id(bad), "{bad:?}");
        }
    }
}
