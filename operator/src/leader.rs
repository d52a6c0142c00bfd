//! Leader election on a `coordination.k8s.io/v1` Lease, the protocol of client-go's
//! leaderelection: the holder renews the Lease every `retry_period`; a candidate takes it
//! once the record (holder, renewTime, transitions, ...) has not changed for
//! `leaseDurationSeconds`, measured from the moment the candidate saw it change, on its own
//! monotonic clock. The Lease's `renewTime` is the holder's wall clock and is never compared
//! with ours, so replicas whose clocks disagree still elect one leader. A leader that cannot
//! renew within `renew_deadline` steps down (the process exits and restarts as a standby);
//! a 409 Conflict is retried within that deadline.
//!
//! kube 5 ships no leader election; why kube-lease-manager is not used is in
//! docs/architecture/dependencies.md.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::error::{Error, Result};

/// How long a Lease stays valid after its last renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// A leader that has not renewed for this long steps down (must be < LEASE_DURATION).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between acquire/renew attempts.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: LEASE_DURATION,
            renew_deadline: RENEW_DEADLINE,
            retry_period: RETRY_PERIOD,
        }
    }
}

/// The Lease record as a candidate last read it, and when (on the candidate's monotonic
/// clock) it saw that record change.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub record: LeaseSpec,
    pub changed_at: Instant,
}

impl Observed {
    /// `previous` updated with the record read at `now`: the time moves only when the
    /// record differs from the one seen before (client-go's `observedRawRecord`).
    pub fn update(previous: Option<Observed>, record: LeaseSpec, now: Instant) -> Observed {
        match previous {
            Some(p) if p.record == record => p,
            _ => Observed {
                record,
                changed_at: now,
            },
        }
    }
}

/// What a candidate should do with the Lease as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Someone else holds a valid Lease.
    Follow { holder: String },
}

/// Pure decision from the observed record, our identity and our clock. The record's own
/// `leaseDurationSeconds` counts (as in client-go), ours only when it has none.
pub fn decide(observed: &Observed, identity: &str, now: Instant, timing: &Timing) -> Decision {
    let record = &observed.record;
    let holder = record.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let duration = record
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .filter(|&s| s > 0)
        .map_or(timing.lease_duration, Duration::from_secs);
    if now.saturating_duration_since(observed.changed_at) >= duration {
        Decision::Acquire
    } else {
        Decision::Follow {
            holder: holder.to_owned(),
        }
    }
}

/// How one acquire-or-renew attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease now.
    Held,
    /// Another holder's Lease is valid.
    HeldBy(String),
    /// Someone wrote the Lease between our read and our write (409): read again next time.
    Conflict,
    /// The request failed or timed out (already logged).
    Failed,
}

/// What the leader does after a renewal attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewStep {
    Renewed,
    /// Try again after the retry period.
    Retry,
    StepDown,
}

/// Pure renew-loop step: another holder ends leadership at once; a conflict or a failed
/// request is retried until `renew_deadline` has passed since the last renewal.
pub fn renew_step(attempt: &Attempt, since_renewal: Duration, timing: &Timing) -> RenewStep {
    match attempt {
        Attempt::Held => RenewStep::Renewed,
        Attempt::HeldBy(_) => RenewStep::StepDown,
        Attempt::Conflict | Attempt::Failed if since_renewal >= timing.renew_deadline => {
            RenewStep::StepDown
        }
        Attempt::Conflict | Attempt::Failed => RenewStep::Retry,
    }
}

/// One candidate's handle on the Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The record last read or written, and when it last changed on our clock.
    observed: Arc<Mutex<Option<Observed>>>,
}

impl LeaseLock {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            observed: Arc::default(),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The Lease's name (the `name` label of `leader_election_master_status`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The record we write. `now` is our wall clock: readers only see that it changed.
    fn spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours =
            previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        let had_holder = previous
            .and_then(|p| p.holder_identity.as_deref())
            .is_some_and(|h| !h.is_empty());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.lease_duration.as_secs())
                    .unwrap_or(i32::MAX)
                    .max(1),
            ),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours || !had_holder {
                transitions
            } else {
                transitions + 1
            }),
            ..LeaseSpec::default()
        }
    }

    /// Notes `record` as read or written at `now`; returns what we know of the Lease.
    fn observe(&self, record: LeaseSpec, now: Instant) -> Observed {
        let mut observed = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
        let updated = Observed::update(observed.take(), record, now);
        *observed = Some(updated.clone());
        updated
    }

    /// One attempt: `Ok(true)` when we hold the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        Ok(self.attempt().await? == Attempt::Held)
    }

    /// One attempt: read the Lease, decide, and write it when it is ours or ours to take.
    pub async fn attempt(&self) -> Result<Attempt> {
        let Some(lease) = self.api.get_opt(&self.name).await.map_err(Error::Lease)? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, Timestamp::now())),
            };
            return self.written(self.api.create(&PostParams::default(), &lease).await);
        };
        let now = Instant::now();
        let observed = self.observe(lease.spec.clone().unwrap_or_default(), now);
        match decide(&observed, &self.identity, now, &self.timing) {
            Decision::Follow { holder } => Ok(Attempt::HeldBy(holder)),
            Decision::Renew | Decision::Acquire => {
                let mut updated = lease.clone();
                updated.spec = Some(self.spec(lease.spec.as_ref(), Timestamp::now()));
                // `replace` carries metadata.resourceVersion: a concurrent writer wins (409).
                let result = self
                    .api
                    .replace(&self.name, &PostParams::default(), &updated)
                    .await;
                self.written(result)
            }
        }
    }

    /// The outcome of our create or replace; what the API server stored is what we observed.
    fn written(&self, result: kube::Result<Lease>) -> Result<Attempt> {
        match result {
            Ok(lease) => {
                self.observe(lease.spec.unwrap_or_default(), Instant::now());
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(Error::Lease(e)),
        }
    }

    /// Waits until we hold the Lease. Conflicts and API errors are retried.
    pub async fn acquire(&self) {
        loop {
            match self.attempt().await {
                Ok(Attempt::Held) => {
                    tracing::info!(identity = %self.identity, lease = %self.name, "acquired the leader Lease");
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    tracing::debug!(lease = %self.name, %holder, "standing by: the Lease is held by another replica");
                }
                Ok(Attempt::Conflict | Attempt::Failed) => {
                    tracing::debug!(lease = %self.name, "the Lease changed while we wrote it; reading it again");
                }
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews until another holder took over or renewal fails (errors, timeouts, conflicts)
    /// for `renew_deadline`; then returns the error that makes the caller step down.
    pub async fn keep_renewing(&self) -> Error {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            // A request hanging on a half-dead connection must not outlive the deadline:
            // kube's client has no read timeout by default, and a leader stuck here would
            // keep reconciling after a standby took the expired Lease.
            let left = self
                .timing
                .renew_deadline
                .saturating_sub(last_renewal.elapsed());
            let attempt = match tokio::time::timeout(left, self.attempt()).await {
                Ok(Ok(attempt)) => attempt,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "renewing the leader Lease failed");
                    Attempt::Failed
                }
                Err(_) => {
                    tracing::warn!("renewing the leader Lease timed out");
                    Attempt::Failed
                }
            };
            match renew_step(&attempt, last_renewal.elapsed(), &self.timing) {
                RenewStep::Renewed => last_renewal = Instant::now(),
                RenewStep::Retry => {
                    tracing::debug!(
                        ?attempt,
                        "renewing the leader Lease again next retry period"
                    );
                }
                RenewStep::StepDown => {
                    if let Attempt::HeldBy(holder) = &attempt {
                        tracing::warn!(%holder, "another replica holds the leader Lease");
                    }
                    return Error::LeadershipLost(self.timing.renew_deadline);
                }
            }
        }
    }

    /// Gives the Lease up on a clean shutdown so a standby takes over at once.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await.map_err(Error::Lease)? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
            .map_err(Error::Lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    const HOUR: SignedDuration = SignedDuration::from_hours(1);

    /// `holder`'s record with `renewTime` at `renewed` on the holder's clock.
    fn record(holder: &str, renewed: Timestamp, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }
    }

    /// `record` first seen at `seen`, decided `after` later on our clock.
    fn decide_after(record: LeaseSpec, after: Duration) -> Decision {
        let seen = Instant::now();
        let observed = Observed::update(None, record, seen);
        decide(&observed, "a", seen + after, &Timing::default())
    }

    #[test]
    fn a_missing_or_empty_lease_is_acquired() {
        assert_eq!(
            decide_after(LeaseSpec::default(), Duration::ZERO),
            Decision::Acquire
        );
        let released = LeaseSpec {
            holder_identity: Some(String::new()),
            ..record("", Timestamp::now(), 15)
        };
        assert_eq!(decide_after(released, Duration::ZERO), Decision::Acquire);
    }

    #[test]
    fn the_holder_renews() {
        let ours = record("a", Timestamp::now() - HOUR, 15);
        assert_eq!(decide_after(ours, Duration::from_secs(60)), Decision::Renew);
    }

    #[test]
    fn a_holder_seen_renewing_a_second_ago_is_followed_though_its_renew_time_is_an_hour_old() {
        // The holder's clock is an hour behind ours.
        let skewed = record("b", Timestamp::now() - HOUR, 15);
        assert_eq!(
            decide_after(skewed, Duration::from_secs(1)),
            Decision::Follow { holder: "b".into() }
        );
    }

    #[test]
    fn a_record_unchanged_for_the_lease_duration_is_taken_whatever_its_renew_time() {
        // The holder's clock is an hour ahead of ours, so its renewTime is in our future.
        let ahead = record("b", Timestamp::now() + HOUR, 15);
        assert_eq!(
            decide_after(ahead.clone(), Duration::from_secs(14)),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide_after(ahead, Duration::from_secs(15)),
            Decision::Acquire
        );
    }

    #[test]
    fn the_lease_duration_of_the_record_counts() {
        let long = record("b", Timestamp::now(), 60);
        assert_eq!(
            decide_after(long, Duration::from_secs(30)),
            Decision::Follow { holder: "b".into() }
        );
        let without = LeaseSpec {
            lease_duration_seconds: None,
            ..record("b", Timestamp::now(), 0)
        };
        assert_eq!(
            decide_after(without, LEASE_DURATION),
            Decision::Acquire,
            "without one, ours"
        );
    }

    #[test]
    fn only_a_changed_record_restarts_the_lease_on_our_clock() {
        let first_seen = Instant::now();
        let renewed_at = Timestamp::now() - HOUR;
        let seen = Observed::update(None, record("b", renewed_at, 15), first_seen);
        let later = first_seen + Duration::from_secs(10);
        let same = Observed::update(Some(seen.clone()), record("b", renewed_at, 15), later);
        assert_eq!(same.changed_at, first_seen);
        let renewed = record("b", renewed_at + SignedDuration::from_secs(2), 15);
        let changed = Observed::update(Some(seen), renewed, later);
        assert_eq!(changed.changed_at, later);
        // Ten seconds after the renewal we saw, a 15 s lease is still valid.
        assert_eq!(
            decide(
                &changed,
                "a",
                later + Duration::from_secs(10),
                &Timing::default()
            ),
            Decision::Follow { holder: "b".into() }
        );
    }

    #[test]
    fn a_conflicting_renewal_is_retried_within_the_renew_deadline() {
        let t = Timing::default();
        let early = t.renew_deadline - Duration::from_secs(1);
        assert_eq!(renew_step(&Attempt::Conflict, early, &t), RenewStep::Retry);
        assert_eq!(renew_step(&Attempt::Failed, early, &t), RenewStep::Retry);
        assert_eq!(
            renew_step(&Attempt::Conflict, t.renew_deadline, &t),
            RenewStep::StepDown
        );
        assert_eq!(
            renew_step(&Attempt::Failed, t.renew_deadline, &t),
            RenewStep::StepDown
        );
    }

    #[test]
    fn a_leader_that_sees_another_holder_steps_down_at_once() {
        let t = Timing::default();
        assert_eq!(
            renew_step(&Attempt::HeldBy("b".into()), Duration::ZERO, &t),
            RenewStep::StepDown
        );
        assert_eq!(
            renew_step(&Attempt::Held, t.renew_deadline, &t),
            RenewStep::Renewed
        );
    }

    #[test]
    fn renew_deadline_is_shorter_than_the_lease() {
        let t = Timing::default();
        assert!(t.renew_deadline < t.lease_duration);
        assert!(t.retry_period < t.renew_deadline);
    }
}
