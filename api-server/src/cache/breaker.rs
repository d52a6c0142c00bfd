//! A small circuit breaker for Redis: after a few consecutive failures, stop trying for a
//! short back-off, then let one request probe. Lock-free, and the closed (healthy) path
//! only reads two atomics, so it adds nothing measurable to a cache hit.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Consecutive failures that open the breaker.
pub const FAILURE_THRESHOLD: u32 = 3;
/// How long an open breaker refuses before it lets one probe through.
pub const OPEN_FOR: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Breaker {
    origin: Instant,
    failures: AtomicU32,
    /// Milliseconds since `origin` until which calls are refused; 0 when closed.
    open_until_ms: AtomicU64,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
        }
    }
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go to Redis now. When the back-off has passed, exactly one
    /// caller wins the right to probe; the others keep waiting for its outcome.
    pub fn allow(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        if now < until {
            return false;
        }
        let next = now + duration_ms(OPEN_FOR);
        self.open_until_ms
            .compare_exchange(until, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }

    pub fn success(&self) {
        // Only write when something changes: a hot, shared cache line stays clean.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until_ms.load(Ordering::Relaxed) != 0 {
            self.open_until_ms.store(0, Ordering::Release);
        }
    }

    pub fn failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= FAILURE_THRESHOLD {
            self.open_until_ms
                .store(self.now_ms() + duration_ms(OPEN_FOR), Ordering::Release);
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_breaker_allows_calls() {
        assert!(Breaker::default().allow());
    }

    #[test]
    fn it_stays_closed_below_the_threshold() {
        let breaker = Breaker::default();
        for _ in 1..FAILURE_THRESHOLD {
            breaker.failure();
        }
        assert!(breaker.allow());
    }

    #[test]
    fn it_opens_after_the_threshold() {
        let breaker = Breaker::default();
        for _ in 0..FAILURE_THRESHOLD {
            breaker.failure();
        }
        assert!(breaker.is_open());
        assert!(!breaker.allow());
    }

    #[test]
    fn a_success_closes_it() {
        let breaker = Breaker::default();
        for _ in 0..FAILURE_THRESHOLD {
            breaker.failure();
        }
        breaker.success();
        assert!(breaker.allow());
        assert!(!breaker.is_open());
    }

    #[test]
    fn after_the_back_off_exactly_one_probe_is_let_through() {
        let breaker = Breaker::default();
        for _ in 0..FAILURE_THRESHOLD {
            breaker.failure();
        }
        // Pretend the back-off has passed.
        breaker.open_until_ms.store(1, Ordering::Release);
        std::thread::sleep(Duration::from_millis(2));
        assert!(breaker.allow(), "the first caller probes");
        assert!(!breaker.allow(), "the others wait for the probe");
    }
}
