//! Cross-cutting request handling: metrics and timeout, rate limiting, request ids, and
//! discarding request bodies a response did not need.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use futures::StreamExt;
use governor::Quota;
use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::client_address::{ClientAddress, rate_limit_key};
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

/// Per-client token buckets on `/users`, keyed by [`rate_limit_key`] of the address
/// [`ClientAddress`] finds.
pub struct RateLimiter {
    buckets: governor::RateLimiter<IpAddr, ClientBuckets, DefaultClock>,
    client_address: ClientAddress,
}

impl RateLimiter {
    /// `tracked` is set to the number of clients with a bucket, at most `max_clients`.
    pub fn new(
        (rps, burst): (NonZeroU32, NonZeroU32),
        client_address: ClientAddress,
        max_clients: NonZeroUsize,
        tracked: Gauge,
    ) -> Self {
        let buckets = ClientBuckets {
            clients: DashMap::new(),
            overflow: Bucket::default(),
            max_clients: max_clients.get(),
            admit: Mutex::new(()),
            tracked,
        };
        Self {
            buckets: governor::RateLimiter::new(
                Quota::per_second(rps).allow_burst(burst),
                buckets,
                DefaultClock::default(),
            ),
            client_address,
        }
    }

    /// Takes a token from the client's bucket, or says how long until one is there.
    pub fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), Duration> {
        let key = rate_limit_key(self.client_address.resolve(peer, headers));
        self.buckets
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Drops the buckets that are full again (as good as new), making room under the cap.
    pub fn retain_recent(&self) {
        self.buckets.retain_recent();
    }

    pub fn shrink_to_fit(&self) {
        self.buckets.shrink_to_fit();
    }

    /// Clients with a bucket of their own.
    pub fn tracked_clients(&self) -> usize {
        self.buckets.len()
    }
}

/// A GCRA state, as governor's `InMemoryState` (which only governor can update): the
/// theoretical arrival time in nanoseconds since the limiter's start, 0 for a fresh bucket.
#[derive(Default)]
struct Bucket(AtomicU64);

impl Bucket {
    fn measure_and_replace<T, E>(
        &self,
        f: impl Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    ) -> Result<T, E> {
        let mut prev = self.0.load(Ordering::Acquire);
        loop {
            let (result, next) = f(NonZeroU64::new(prev).map(|n| Nanos::new(n.get())))?;
            match self.0.compare_exchange_weak(
                prev,
                next.as_u64(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(result),
                Err(current) => prev = current,
            }
        }
    }
}

/// The buckets, at most `max_clients` of them. At the cap a client without a bucket is
/// counted in one shared overflow bucket (same quota) until the minutely sweep drops idle
/// ones: a flood of addresses can neither grow memory nor escape the limit, at the price of
/// limiting new clients together while it lasts.
struct ClientBuckets {
    clients: DashMap<IpAddr, Bucket>,
    overflow: Bucket,
    max_clients: usize,
    /// Held to add a client and to sweep, so the count never passes the cap, even briefly.
    admit: Mutex<()>,
    tracked: Gauge,
}

impl ClientBuckets {
    fn admit(&self) -> std::sync::MutexGuard<'_, ()> {
        self.admit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, count: usize) {
        self.tracked.set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

impl StateStore for ClientBuckets {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(bucket) = self.clients.get(key) {
            return bucket.measure_and_replace(f);
        }
        // Full: no need to queue for the lock (only a sweep makes room).
        if self.clients.len() >= self.max_clients {
            return self.overflow.measure_and_replace(f);
        }
        let _admit = self.admit();
        // Another request may have added this client meanwhile; `len` is read with no
        // entry held, as a shard lock taken twice could deadlock.
        if let Some(bucket) = self.clients.get(key) {
            return bucket.measure_and_replace(f);
        }
        let count = self.clients.len();
        if count >= self.max_clients {
            return self.overflow.measure_and_replace(f);
        }
        let bucket = self.clients.entry(*key).or_default();
        self.publish(count + 1);
        bucket.measure_and_replace(f)
    }
}

impl ShrinkableKeyedStateStore<IpAddr> for ClientBuckets {
    fn retain_recent(&self, drop_below: Nanos) {
        let _admit = self.admit();
        let fresh = |bucket: &Bucket| bucket.0.load(Ordering::Relaxed) <= drop_below.as_u64();
        self.clients.retain(|_, bucket| !fresh(bucket));
        self.publish(self.clients.len());
    }

    fn shrink_to_fit(&self) {
        self.clients.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.clients.len()
    }

    fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// Per-client token bucket. The client is the TCP peer unless RATE_LIMIT_CLIENT_ADDRESS
/// trusts a header of the proxy in front.
pub async fn rate_limit(
    State(state): State<crate::state::AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(limiter) = &state.rate_limiter else {
        return next.run(request).await;
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(addr)| {
            addr.ip()
        });
    match limiter.check(peer, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            state.metrics.rate_limited.inc();
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
    use crate::client_address::Source;

    fn limiter(burst: u32, max_clients: usize, source: Source) -> (RateLimiter, Gauge) {
        let gauge = Gauge::default();
        let limiter = RateLimiter::new(
            (NonZeroU32::MIN, NonZeroU32::new(burst).unwrap()),
            ClientAddress {
                source,
                trusted_hops: std::num::NonZeroU8::MIN,
            },
            NonZeroUsize::new(max_clients).unwrap(),
            gauge.clone(),
        );
        (limiter, gauge)
    }

    fn from(limiter: &RateLimiter, forwarded: &str) -> Result<(), Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", forwarded.parse().unwrap());
        limiter.check(Ipv4Addr::LOCALHOST.into(), &headers)
    }

    #[test]
    fn a_bucket_is_two_words() {
        // What RATE_LIMIT_MAX_CLIENTS's "40 to 80 bytes each" rests on, with hashbrown's
        // control byte and load factor.
        assert!(size_of::<(IpAddr, Bucket)>() <= 32);
    }

    #[test]
    fn each_client_has_its_own_bucket_up_to_the_cap_and_the_rest_share_one() {
        let (limiter, gauge) = limiter(2, 2, Source::XForwardedFor);
        for client in ["192.0.2.1", "192.0.2.2"] {
            assert!(from(&limiter, client).is_ok());
        }
        assert_eq!((limiter.tracked_clients(), gauge.get()), (2, 2));
        // The overflow bucket: two more clients spend it, a third is refused.
        assert!(from(&limiter, "192.0.2.3").is_ok());
        assert!(from(&limiter, "192.0.2.4").is_ok());
        let wait = from(&limiter, "192.0.2.5").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!((limiter.tracked_clients(), gauge.get()), (2, 2));
        // The clients with a bucket still have their second token.
        assert!(from(&limiter, "192.0.2.1").is_ok());
        assert!(from(&limiter, "192.0.2.1").is_err());
        assert!(from(&limiter, "192.0.2.2").is_ok());
    }

    #[test]
    fn a_sweep_drops_the_buckets_full_again_makes_room_and_updates_the_gauge() {
        let gauge = Gauge::default();
        let store = ClientBuckets {
            clients: DashMap::new(),
            overflow: Bucket::default(),
            max_clients: 2,
            admit: Mutex::new(()),
            tracked: gauge.clone(),
        };
        // Sets a bucket's theoretical arrival time, as governor does on a check.
        let spend = |client: &str, until: u64| {
            let key: IpAddr = client.parse().unwrap();
            store
                .measure_and_replace(&key, |_| Ok::<_, ()>(((), Nanos::new(until))))
                .unwrap();
        };
        spend("192.0.2.1", 5);
        spend("192.0.2.2", 50);
        spend("192.0.2.3", 70);
        assert_eq!((store.len(), gauge.get()), (2, 2));
        assert_eq!(store.overflow.0.load(Ordering::Relaxed), 70);

        store.retain_recent(Nanos::new(10));
        assert_eq!((store.len(), gauge.get()), (1, 1));
        assert!(
            store
                .clients
                .contains_key(&"192.0.2.2".parse::<IpAddr>().unwrap())
        );
        spend("192.0.2.3", 80);
        assert_eq!((store.len(), gauge.get()), (2, 2));
    }

    #[test]
    fn the_peer_source_keys_every_forwarded_address_on_the_peer() {
        let (limiter, gauge) = limiter(1, 10, Source::Peer);
        assert!(from(&limiter, "192.0.2.1").is_ok());
        assert!(from(&limiter, "192.0.2.2").is_err());
        assert_eq!(gauge.get(), 1);
    }

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
