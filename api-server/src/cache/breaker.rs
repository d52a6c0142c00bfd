//! The Redis circuit breaker: it opens on the error rate or the slow-call rate over a
//! window of calls, not only on consecutive failures, so a Redis that answers in 200 ms, or
//! fails a third of its calls, is skipped too.
//!
//! - Closed: calls are counted in a window. Once it has seen at least [`MIN_CALLS`], it
//!   opens if at least [`FAILURE_RATE`] of them failed (error or timeout) or at least
//!   [`SLOW_RATE`] took longer than the slow-call threshold. A window starts afresh when it
//!   is [`WINDOW`] old and has [`MIN_CALLS`] (so under load it holds the last second or so,
//!   and at low traffic it waits for enough calls to judge), or when it is [`MAX_WINDOW`] old.
//! - Open: calls are refused for [`OPEN_FOR`]; then exactly one caller probes (half-open).
//! - Half-open: a fast success closes it; a failure or a slow success opens it again.
//!
//! Time is passed in (milliseconds since the breaker's origin), so the policy is tested
//! on outcomes and order without sleeping. A mutex guards the state: it is held for a few
//! integer operations, next to a Redis round trip of tens of microseconds.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Age after which a window with enough calls starts afresh.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Age after which any window starts afresh.
pub const MAX_WINDOW: Duration = Duration::from_secs(30);
/// Calls a window needs before its rates are judged (a few errors at low traffic do not open).
pub const MIN_CALLS: u32 = 10;
/// Share of failed calls in a window that opens the breaker.
pub const FAILURE_RATE: f64 = 0.2;
/// Share of slow calls in a window that opens the breaker.
pub const SLOW_RATE: f64 = 0.5;
/// How long an open breaker refuses before it lets one probe through.
pub const OPEN_FOR: Duration = Duration::from_secs(1);

/// How one call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok(Duration),
    Failed,
}

/// A change of state, for the caller to log and export.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    Opened(Trip),
    Closed,
}

/// Why the breaker opened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trip {
    ErrorRate { calls: u32, rate: f64 },
    SlowRate { calls: u32, rate: f64 },
    ProbeFailed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        window_start: u64,
        calls: u32,
        failed: u32,
        slow: u32,
    },
    Open {
        until: u64,
    },
    HalfOpen,
}

#[derive(Debug)]
pub struct Breaker {
    origin: Instant,
    slow_call: Duration,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker; calls slower than `slow_call` count as slow.
    pub fn new(slow_call: Duration) -> Self {
        Self {
            origin: Instant::now(),
            slow_call,
            state: Mutex::new(closed(0)),
        }
    }

    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go to Redis now.
    pub fn allow(&self) -> bool {
        self.allow_at(self.now_ms())
    }

    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }

    /// Records a call's outcome; returns the transition it caused, if any.
    pub fn record(&self, outcome: Outcome) -> Option<Transition> {
        self.record_at(self.now_ms(), outcome)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the back-off has passed, exactly one caller wins the probe; the others wait
    /// for its outcome.
    fn allow_at(&self, now: u64) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    fn record_at(&self, now: u64, outcome: Outcome) -> Option<Transition> {
        let slow = matches!(outcome, Outcome::Ok(took) if took > self.slow_call);
        let failed = outcome == Outcome::Failed;
        let mut state = self.lock();
        match &mut *state {
            State::HalfOpen if failed || slow => {
                *state = open(now);
                Some(Transition::Opened(Trip::ProbeFailed))
            }
            State::HalfOpen => {
                *state = closed(now);
                Some(Transition::Closed)
            }
            // A call let through before the breaker opened: its outcome is already judged.
            State::Open { .. } => None,
            State::Closed {
                window_start,
                calls,
                ..
            } => {
                let age = now.saturating_sub(*window_start);
                if (age >= duration_ms(WINDOW) && *calls >= MIN_CALLS)
                    || age >= duration_ms(MAX_WINDOW)
                {
                    *state = closed(now);
                }
                let State::Closed {
                    calls,
                    failed: failures,
                    slow: slows,
                    ..
                } = &mut *state
                else {
                    return None;
                };
                *calls += 1;
                *failures += u32::from(failed);
                *slows += u32::from(slow);
                let trip = judge(*calls, *failures, *slows)?;
                *state = open(now);
                Some(Transition::Opened(trip))
            }
        }
    }
}

fn judge(calls: u32, failed: u32, slow: u32) -> Option<Trip> {
    if calls < MIN_CALLS {
        return None;
    }
    let rate = |n: u32| f64::from(n) / f64::from(calls);
    if rate(failed) >= FAILURE_RATE {
        return Some(Trip::ErrorRate {
            calls,
            rate: rate(failed),
        });
    }
    if rate(slow) >= SLOW_RATE {
        return Some(Trip::SlowRate {
            calls,
            rate: rate(slow),
        });
    }
    None
}

fn closed(now: u64) -> State {
    State::Closed {
        window_start: now,
        calls: 0,
        failed: 0,
        slow: 0,
    }
}

fn open(now: u64) -> State {
    State::Open {
        until: now + duration_ms(OPEN_FOR),
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOW: Duration = Duration::from_millis(10);
    const FAST: Outcome = Outcome::Ok(Duration::from_micros(300));
    const SLOW_OK: Outcome = Outcome::Ok(Duration::from_millis(200));

    fn breaker() -> Breaker {
        Breaker::new(SLOW)
    }

    /// Records `outcomes` at time `at`; returns every transition, in order.
    fn feed(breaker: &Breaker, at: u64, outcomes: &[Outcome]) -> Vec<Transition> {
        outcomes
            .iter()
            .filter_map(|o| breaker.record_at(at, *o))
            .collect()
    }

    fn opened(transitions: &[Transition]) -> bool {
        matches!(transitions, [Transition::Opened(_)])
    }

    #[test]
    fn a_new_breaker_allows_calls() {
        assert!(breaker().allow_at(0));
    }

    #[test]
    fn a_few_failures_at_low_traffic_do_not_open_it() {
        let breaker = breaker();
        let t = feed(&breaker, 0, &[Outcome::Failed; (MIN_CALLS - 1) as usize]);
        assert!(t.is_empty());
        assert!(breaker.allow_at(0));
    }

    #[test]
    fn thirty_percent_failures_open_it() {
        let breaker = breaker();
        let mut calls = Vec::new();
        for i in 0..20 {
            calls.push(if i % 10 < 3 { Outcome::Failed } else { FAST });
        }
        let t = feed(&breaker, 0, &calls);
        assert!(
            matches!(t[..], [Transition::Opened(Trip::ErrorRate { .. })]),
            "{t:?}"
        );
        assert!(!breaker.allow_at(1));
    }

    #[test]
    fn slow_successes_open_it_without_any_error() {
        let breaker = breaker();
        let t = feed(&breaker, 0, &[SLOW_OK; MIN_CALLS as usize]);
        assert!(
            matches!(t[..], [Transition::Opened(Trip::SlowRate { .. })]),
            "{t:?}"
        );
    }

    #[test]
    fn a_healthy_redis_keeps_it_closed() {
        let breaker = breaker();
        let mut calls = vec![FAST; 99];
        calls.push(Outcome::Failed);
        assert!(feed(&breaker, 0, &calls).is_empty());
        assert!(breaker.allow_at(0));
    }

    #[test]
    fn a_full_window_is_judged_afresh_after_a_second() {
        let breaker = breaker();
        assert!(feed(&breaker, 0, &[FAST; MIN_CALLS as usize]).is_empty());
        // 2 failures in 10 calls: 20% of this window, 10% had the old calls still counted.
        let mut calls = vec![Outcome::Failed; 2];
        calls.extend([FAST; 8]);
        let t = feed(&breaker, duration_ms(WINDOW), &calls);
        assert!(opened(&t), "{t:?}");
    }

    #[test]
    fn slow_calls_at_low_traffic_add_up_across_seconds() {
        let breaker = breaker();
        let t: Vec<_> = (0..u64::from(MIN_CALLS))
            .filter_map(|second| breaker.record_at(second * 1000, SLOW_OK))
            .collect();
        assert!(opened(&t), "{t:?}");
    }

    #[test]
    fn after_the_back_off_exactly_one_probe_is_let_through() {
        let breaker = breaker();
        assert!(opened(&feed(&breaker, 0, &[Outcome::Failed; 10])));
        let after = duration_ms(OPEN_FOR);
        assert!(!breaker.allow_at(after - 1), "still backing off");
        assert!(breaker.allow_at(after), "the first caller probes");
        assert!(!breaker.allow_at(after), "the others wait for the probe");
    }

    #[test]
    fn a_fast_probe_closes_it_and_a_slow_one_reopens_it() {
        let breaker = breaker();
        feed(&breaker, 0, &[Outcome::Failed; 10]);
        let after = duration_ms(OPEN_FOR);
        assert!(breaker.allow_at(after));
        assert_eq!(
            feed(&breaker, after, &[SLOW_OK]),
            [Transition::Opened(Trip::ProbeFailed)]
        );
        let again = after + duration_ms(OPEN_FOR);
        assert!(breaker.allow_at(again));
        assert_eq!(feed(&breaker, again, &[FAST]), [Transition::Closed]);
        assert!(breaker.allow_at(again));
        assert!(!breaker.is_open());
    }
}
