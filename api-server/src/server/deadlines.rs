//! Per-connection deadlines on the socket, in Go's `http.Server` model: the request line and
//! headers must arrive within the header-read timeout (from the connection's start for the
//! first request, from its first byte for later ones), and a keep-alive connection may sit
//! idle, or stall while its response is written, for at most the idle timeout.
//!
//! hyper's own `header_read_timeout` restarts after every response, so it would also be the
//! idle timeout; a proxy in front wants a longer idle timeout than a slow client deserves for
//! its headers, hence this wrapper. While a request is being handled there is no deadline
//! here: the request timeout bounds the handler.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests of one connection, as its service sees them.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    finished: AtomicU64,
}

impl Activity {
    /// Marks a request as being handled until the guard drops.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }
}

pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the rest of a request head.
    Head(Instant),
    /// Between requests, or writing a response the handler already produced.
    Idle(Instant),
    /// A request is being handled.
    Busy,
}

pub struct Deadlines<I> {
    io: I,
    activity: Arc<Activity>,
    seen_finished: u64,
    phase: Phase,
    timer: Pin<Box<Sleep>>,
    header_read: Duration,
    idle: Duration,
}

impl<I> Deadlines<I> {
    pub fn new(io: I, activity: Arc<Activity>, header_read: Duration, idle: Duration) -> Self {
        let deadline = Instant::now() + header_read;
        Self {
            io,
            activity,
            seen_finished: 0,
            phase: Phase::Head(deadline),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            header_read,
            idle,
        }
    }

    /// Brings the phase up to date with the service and with what the socket just did.
    fn observe(&mut self, read_bytes: bool, wrote_bytes: bool) {
        if self.activity.in_flight.load(Ordering::Relaxed) > 0 {
            self.phase = Phase::Busy;
            return;
        }
        let finished = self.activity.finished.load(Ordering::Relaxed);
        if finished != self.seen_finished || self.phase == Phase::Busy {
            self.seen_finished = finished;
            self.phase = Phase::Idle(Instant::now() + self.idle);
        }
        match self.phase {
            Phase::Idle(_) if read_bytes => {
                self.phase = Phase::Head(Instant::now() + self.header_read);
            }
            Phase::Idle(_) if wrote_bytes => self.phase = Phase::Idle(Instant::now() + self.idle),
            _ => {}
        }
    }

    /// After the socket returned `Pending`: an error once the phase's deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let (deadline, what) = match self.phase {
            Phase::Head(at) => (
                at,
                "request head not received within the header-read timeout",
            ),
            Phase::Idle(at) => (at, "connection idle for longer than the idle timeout"),
            Phase::Busy => return Poll::Pending,
        };
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        ready!(self.timer.as_mut().poll(cx));
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what))
    }

    /// After a write: hyper does not read again once a response is out until the socket is
    /// readable, so the idle deadline is armed here, and if it has passed the task is woken
    /// to find that out in `poll_read`.
    fn arm(&mut self, cx: &mut Context<'_>) {
        if self.poll_deadline(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Deadlines<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let read_bytes = buf.filled().len() > before;
        self.observe(read_bytes, false);
        match polled {
            Poll::Pending => self.poll_deadline(cx).map(Err),
            ready => ready,
        }
    }
}

impl<I> Deadlines<I> {
    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => self.poll_deadline(cx).map(Err),
            ready => {
                self.arm(cx);
                ready
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Deadlines<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        self.observe(false, matches!(polled, Poll::Ready(Ok(n)) if n > 0));
        self.after_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.observe(false, matches!(polled, Poll::Ready(Ok(n)) if n > 0));
        self.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.observe(false, false);
        self.after_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapper() -> (Deadlines<()>, Arc<Activity>) {
        let activity = Arc::new(Activity::default());
        let io = Deadlines::new(
            (),
            activity.clone(),
            Duration::from_secs(10),
            Duration::from_secs(60),
        );
        (io, activity)
    }

    #[tokio::test]
    async fn a_new_connection_waits_for_its_first_head() {
        let (io, _) = wrapper();
        assert!(matches!(io.phase, Phase::Head(_)));
    }

    #[tokio::test]
    async fn a_request_in_flight_has_no_deadline_and_its_end_starts_the_idle_one() {
        let (mut io, activity) = wrapper();
        let busy = activity.begin();
        io.observe(true, false);
        assert_eq!(io.phase, Phase::Busy);
        drop(busy);
        io.observe(false, false);
        assert!(matches!(io.phase, Phase::Idle(_)));
    }

    #[tokio::test]
    async fn the_first_byte_after_idling_starts_the_header_deadline() {
        let (mut io, activity) = wrapper();
        drop(activity.begin());
        io.observe(false, false);
        io.observe(true, false);
        assert!(matches!(io.phase, Phase::Head(_)));
    }

    #[tokio::test]
    async fn more_bytes_of_a_head_do_not_extend_its_deadline() {
        let (mut io, _) = wrapper();
        let first = io.phase;
        io.observe(true, false);
        assert_eq!(io.phase, first);
    }
}
