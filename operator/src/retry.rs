//! Exponential back-off with jitter, by error class, and the per-object failure count it
//! grows with. `controller::error_policy` turns them into the requeue.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use rand::Rng;

use crate::crd::ScalableApi;
use crate::error::ErrorClass;

/// Exponential back-off per error class: (first delay, cap).
pub const BACKOFF_CONFLICT: (Duration, Duration) =
    (Duration::from_millis(500), Duration::from_secs(30));
pub const BACKOFF_TRANSIENT: (Duration, Duration) =
    (Duration::from_secs(2), Duration::from_secs(300));
pub const BACKOFF_PERMANENT: (Duration, Duration) =
    (Duration::from_secs(30), Duration::from_secs(900));
/// Delays vary by up to ±20 % so objects that failed together do not retry together.
pub const BACKOFF_JITTER: f64 = 0.2;

/// Exponential back-off for the `failures`-th consecutive error of `class`; `jitter` in
/// [-BACKOFF_JITTER, BACKOFF_JITTER] scales the delay.
pub fn backoff(class: ErrorClass, failures: u32, jitter: f64) -> Duration {
    let (first, cap) = match class {
        ErrorClass::Conflict => BACKOFF_CONFLICT,
        ErrorClass::Transient => BACKOFF_TRANSIENT,
        ErrorClass::Permanent => BACKOFF_PERMANENT,
    };
    let exponent = failures.saturating_sub(1).min(16);
    let delay = first.saturating_mul(1 << exponent).min(cap);
    delay.mul_f64(1.0 + jitter.clamp(-BACKOFF_JITTER, BACKOFF_JITTER))
}

/// Consecutive failures per object, for the exponential back-off.
#[derive(Debug, Default)]
pub struct Failures(Mutex<HashMap<ObjectRef<ScalableApi>, u32>>);

impl Failures {
    /// Counts one more failure of `sapi`; returns how many in a row.
    pub fn record(&self, sapi: &ScalableApi) -> u32 {
        let mut failures = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = failures.entry(ObjectRef::from_obj(sapi)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// A success ends the run of failures.
    pub fn reset(&self, sapi: &ScalableApi) {
        let mut failures = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        failures.remove(&ObjectRef::from_obj(sapi));
    }
}

/// A random factor in [-BACKOFF_JITTER, BACKOFF_JITTER] for `backoff`.
pub fn jitter() -> f64 {
    rand::rng().random_range(-BACKOFF_JITTER..=BACKOFF_JITTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_failure_up_to_the_cap() {
        assert_eq!(
            backoff(ErrorClass::Transient, 1, 0.0),
            Duration::from_secs(2)
        );
        assert_eq!(
            backoff(ErrorClass::Transient, 2, 0.0),
            Duration::from_secs(4)
        );
        assert_eq!(
            backoff(ErrorClass::Transient, 3, 0.0),
            Duration::from_secs(8)
        );
        assert_eq!(backoff(ErrorClass::Transient, 30, 0.0), BACKOFF_TRANSIENT.1);
    }

    #[test]
    fn conflicts_retry_sooner_than_permanent_errors() {
        assert!(backoff(ErrorClass::Conflict, 1, 0.0) < backoff(ErrorClass::Transient, 1, 0.0));
        assert!(backoff(ErrorClass::Transient, 1, 0.0) < backoff(ErrorClass::Permanent, 1, 0.0));
    }

    #[test]
    fn failures_count_up_per_object_until_reset() {
        let failures = Failures::default();
        let a = ScalableApi::test().named("a");
        let b = ScalableApi::test().named("b");
        assert_eq!((failures.record(&a), failures.record(&a)), (1, 2));
        assert_eq!(failures.record(&b), 1);
        failures.reset(&a);
        assert_eq!(failures.record(&a), 1);
    }

    #[test]
    fn jitter_is_bounded() {
        let base = backoff(ErrorClass::Permanent, 1, 0.0);
        assert_eq!(backoff(ErrorClass::Permanent, 1, 5.0), base.mul_f64(1.2));
        assert_eq!(backoff(ErrorClass::Permanent, 1, -5.0), base.mul_f64(0.8));
    }
}
