//! Leader election on a `coordination.k8s.io/v1` Lease, the protocol of client-go's
//! leaderelection: the holder renews `renewTime` every `retry_period`; anyone may take
//! the Lease once `renewTime + leaseDurationSeconds` has passed; a leader that cannot renew
//! within `renew_deadline` steps down (the process exits and restarts as a standby).
//!
//! kube 5 ships no leader election and kube-leader-election 0.44 needs kube 4, hence this
//! small module.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
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

/// Pure decision from the Lease spec, our identity and the current time.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let expired = spec.is_none_or(|s| {
        let duration = SignedDuration::from_secs(i64::from(s.lease_duration_seconds.unwrap_or(0)));
        s.renew_time
            .as_ref()
            .or(s.acquire_time.as_ref())
            .is_none_or(|t| t.0.saturating_add(duration).is_ok_and(|until| until <= now))
    });
    if expired {
        Decision::Acquire
    } else {
        Decision::Follow {
            holder: holder.to_owned(),
        }
    }
}

/// One candidate's handle on the Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
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
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

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

    /// One attempt: `Ok(true)` when we hold the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(&self.name).await.map_err(Error::Lease)? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(Error::Lease(e)),
            };
        };
        match decide(lease.spec.as_ref(), &self.identity, now) {
            Decision::Follow { .. } => Ok(false),
            Decision::Renew | Decision::Acquire => {
                let mut updated = lease.clone();
                updated.spec = Some(self.spec(lease.spec.as_ref(), now));
                // `replace` carries metadata.resourceVersion: a concurrent writer wins, we retry.
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &updated)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(Error::Lease(e)),
                }
            }
        }
    }

    /// Waits until we hold the Lease. API errors are logged and retried.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(identity = %self.identity, lease = %self.name, "acquired the leader Lease");
                    return;
                }
                Ok(false) => {
                    tracing::debug!(lease = %self.name, "standing by: the Lease is held by another replica")
                }
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews until renewal fails for `renew_deadline` or another holder took over; then
    /// returns the error that makes the caller step down.
    pub async fn keep_renewing(&self) -> Error {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            // A request hanging on a half-dead connection must not outlive the deadline:
            // kube's client has no read timeout by default, and a leader stuck here would
            // keep reconciling after a standby took the expired Lease.
            let left = self
                .timing
                .renew_deadline
                .saturating_sub(last_renewal.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last_renewal = tokio::time::Instant::now(),
                Ok(Ok(false)) => return Error::LeadershipLost(self.timing.renew_deadline),
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the leader Lease failed"),
                Err(_) => tracing::warn!("renewing the leader Lease timed out"),
            }
            if last_renewal.elapsed() >= self.timing.renew_deadline {
                return Error::LeadershipLost(self.timing.renew_deadline);
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

    fn lease(holder: &str, renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        let now = Timestamp::now();
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_missing_or_empty_lease_is_acquired() {
        assert_eq!(decide(None, "a", Timestamp::now()), Decision::Acquire);
        let empty = LeaseSpec::default();
        assert_eq!(
            decide(Some(&empty), "a", Timestamp::now()),
            Decision::Acquire
        );
    }

    #[test]
    fn the_holder_renews() {
        assert_eq!(
            decide(Some(&lease("a", 1, 15)), "a", Timestamp::now()),
            Decision::Renew
        );
    }

    #[test]
    fn a_valid_lease_of_another_holder_is_followed() {
        let d = decide(Some(&lease("b", 5, 15)), "a", Timestamp::now());
        assert_eq!(d, Decision::Follow { holder: "b".into() });
    }

    #[test]
    fn an_expired_lease_is_taken_over() {
        assert_eq!(
            decide(Some(&lease("b", 20, 15)), "a", Timestamp::now()),
            Decision::Acquire
        );
    }

    #[test]
    fn renew_deadline_is_shorter_than_the_lease() {
        let t = Timing::default();
        assert!(t.renew_deadline < t.lease_duration);
        assert!(t.retry_period < t.renew_deadline);
    }
}
