//! Pure status computation: conditions from what reconcile observed, with
//! `lastTransitionTime` kept unless the condition's status flips.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{Timestamp, Unit};

use crate::crd::ScalableApiStatus;

/// Condition types.
pub mod types {
    pub const READY: &str = "Ready";
    pub const PROGRESSING: &str = "Progressing";
    pub const DATABASE_CONFIGURED: &str = "DatabaseConfigured";
    pub const PAUSED: &str = "Paused";
}

/// Condition reasons (also used as Event reasons).
pub mod reasons {
    pub const AVAILABLE: &str = "Available";
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    pub const DEPLOYMENT_MISSING: &str = "DeploymentMissing";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The API server refused a child for good (invalid, forbidden); also the Event reason.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    pub const SECRET_FOUND: &str = "SecretFound";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const KEY_NOT_FOUND: &str = "KeyNotFound";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    pub const WAITING_FOR_DATABASE: &str = "WaitingForDatabase";
    pub const SUSPENDED: &str = "Suspended";
    pub const ACTIVE: &str = "Active";
}

/// What reconcile learned about the referenced Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretState {
    /// The key exists; `hash` rolls the pods when it changes.
    Found {
        hash: String,
    },
    SecretNotFound {
        name: String,
    },
    KeyNotFound {
        name: String,
        key: String,
    },
    /// The spec names no Secret (invalid spec).
    Unreferenced,
}

impl SecretState {
    pub fn is_usable(&self) -> bool {
        matches!(self, SecretState::Found { .. })
    }
}

/// Everything the status is derived from.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub generation: Option<i64>,
    pub suspended: bool,
    /// `Some(message)` when `desired()` rejected the spec.
    pub spec_error: Option<String>,
    /// `Some(message)` when the API server refused a child for good (`Error::child_rejection`).
    pub apply_error: Option<String>,
    pub secret: &'a SecretState,
    pub deployment: Option<&'a Deployment>,
    pub hpa: Option<&'a HorizontalPodAutoscaler>,
    /// `spec.replicas` (default 1) without autoscaling; `None` when an HPA owns the count.
    pub fixed_replicas: Option<i32>,
    pub selector: String,
    pub url: String,
}

/// Longest `ApplyFailed` message: the Ready message becomes the Event note, which the API
/// server caps at 1024 bytes, and API server messages can quote whole objects.
pub const MAX_APPLY_ERROR_BYTES: usize = 1000;

/// `message` cut to `MAX_APPLY_ERROR_BYTES` on a char boundary, marked with an ellipsis.
fn truncated(message: &str) -> String {
    if message.len() <= MAX_APPLY_ERROR_BYTES {
        return message.to_owned();
    }
    const MORE: &str = "…";
    let mut end = MAX_APPLY_ERROR_BYTES - MORE.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &message[..end])
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        // Placeholder: `compute` sets the real time (kept or now).
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

fn database_configured(obs: &Observation<'_>) -> (bool, &'static str, String) {
    match obs.secret {
        SecretState::Found { .. } => (
            true,
            reasons::SECRET_FOUND,
            "the referenced Secret key exists".into(),
        ),
        SecretState::SecretNotFound { name } => (
            false,
            reasons::SECRET_NOT_FOUND,
            format!(
                "Secret {name:?} does not exist in this namespace: create it or fix spec.database"
            ),
        ),
        SecretState::KeyNotFound { name, key } => (
            false,
            reasons::KEY_NOT_FOUND,
            format!("Secret {name:?} has no key {key:?}: add the key or fix spec.database"),
        ),
        SecretState::Unreferenced => (
            false,
            reasons::INVALID_SPEC,
            "spec.database names no Secret".into(),
        ),
    }
}

/// The replica count wanted now: spec.replicas, or what the HPA decided.
fn desired_replicas(obs: &Observation<'_>) -> Option<i32> {
    obs.fixed_replicas.or_else(|| {
        obs.hpa
            .and_then(|h| h.status.as_ref())
            .map(|s| s.desired_replicas)
            .filter(|n| *n > 0)
            .or_else(|| {
                obs.deployment
                    .and_then(|d| d.spec.as_ref())
                    .and_then(|s| s.replicas)
            })
    })
}

fn rollout_complete(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = d.status.as_ref() else {
        return false;
    };
    let updated = st.updated_replicas.unwrap_or(0);
    st.observed_generation >= d.metadata.generation
        && updated >= want
        && st.replicas.unwrap_or(0) <= updated
        && st.available_replicas.unwrap_or(0) >= want
}

/// The status for `obs`. Conditions whose status did not flip keep `previous`'s
/// `lastTransitionTime`, so an unchanged object yields an identical status.
pub fn compute(
    obs: &Observation<'_>,
    previous: Option<&ScalableApiStatus>,
    now: Timestamp,
) -> ScalableApiStatus {
    let g = obs.generation;
    let (db_ok, db_reason, db_message) = database_configured(obs);
    let want = desired_replicas(obs);
    let ready_replicas = obs
        .deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas);
    let apply_error = obs.apply_error.as_deref().map(truncated);
    let ready = match (&obs.spec_error, obs.deployment) {
        (Some(e), _) => (false, reasons::INVALID_SPEC, e.clone()),
        (None, _) if !db_ok => (false, db_reason, db_message.clone()),
        // Whatever the live pods do, the spec is not what runs: not Ready.
        (None, _) if apply_error.is_some() => (
            false,
            reasons::APPLY_FAILED,
            apply_error.clone().unwrap_or_default(),
        ),
        (None, None) => (
            false,
            reasons::DEPLOYMENT_MISSING,
            "the Deployment does not exist yet".into(),
        ),
        (None, Some(_)) => {
            let (r, w) = (ready_replicas.unwrap_or(0), want.unwrap_or(0));
            if w == 0 {
                (
                    false,
                    reasons::SCALED_TO_ZERO,
                    "zero replicas are wanted".into(),
                )
            } else if r >= w {
                (true, reasons::AVAILABLE, format!("{r}/{w} replicas ready"))
            } else {
                (
                    false,
                    reasons::REPLICAS_NOT_READY,
                    format!("{r}/{w} replicas ready"),
                )
            }
        }
    };
    let progressing = if obs.spec_error.is_some() {
        (
            false,
            reasons::INVALID_SPEC,
            "the spec is invalid; nothing is rolled out".to_owned(),
        )
    } else if obs.suspended {
        (false, reasons::SUSPENDED, "spec.suspend is true".to_owned())
    } else if !db_ok {
        (
            false,
            reasons::WAITING_FOR_DATABASE,
            "waiting for the database Secret".to_owned(),
        )
    } else if let Some(e) = apply_error {
        // Nothing rolls out until the rejection is fixed.
        (false, reasons::APPLY_FAILED, e)
    } else {
        match obs.deployment {
            Some(d) if rollout_complete(d) => (
                false,
                reasons::ROLLOUT_COMPLETE,
                "the Deployment is up to date".to_owned(),
            ),
            _ => (
                true,
                reasons::ROLLING_OUT,
                "the Deployment is rolling out".to_owned(),
            ),
        }
    };
    let paused = if obs.suspended {
        (
            true,
            reasons::SUSPENDED,
            "spec.suspend is true: children are left as they are and no HPA runs".to_owned(),
        )
    } else {
        (false, reasons::ACTIVE, "reconciling".to_owned())
    };
    let conditions = [
        (types::READY, ready),
        (types::PROGRESSING, progressing),
        (types::DATABASE_CONFIGURED, (db_ok, db_reason, db_message)),
        (types::PAUSED, paused),
    ]
    .into_iter()
    .map(|(t, (ok, reason, message))| {
        let mut c = condition(t, ok, reason, message, g);
        c.last_transition_time = transition_time(previous, &c, now);
        c
    })
    .collect();
    ScalableApiStatus {
        observed_generation: g,
        replicas: obs
            .deployment
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.replicas),
        ready_replicas,
        desired_replicas: want,
        replica_summary: want.map(|w| format!("{}/{w}", ready_replicas.unwrap_or(0))),
        selector: Some(obs.selector.clone()),
        url: Some(obs.url.clone()),
        conditions,
    }
}

fn find<'a>(status: Option<&'a ScalableApiStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

fn transition_time(previous: Option<&ScalableApiStatus>, new: &Condition, now: Timestamp) -> Time {
    match find(previous, &new.type_) {
        Some(old) if old.status == new.status => old.last_transition_time.clone(),
        // Whole seconds: what the API server stores, so the next comparison is exact.
        _ => Time(now.round(Unit::Second).unwrap_or(now)),
    }
}

/// True when writing `new` would change nothing (conditions compared by type).
pub fn unchanged(previous: Option<&ScalableApiStatus>, new: &ScalableApiStatus) -> bool {
    let Some(old) = previous else {
        return false;
    };
    let sorted = |s: &ScalableApiStatus| {
        let mut c = s.conditions.clone();
        c.sort_by(|a, b| a.type_.cmp(&b.type_));
        ScalableApiStatus {
            conditions: c,
            ..s.clone()
        }
    };
    sorted(old) == sorted(new)
}

/// Conditions whose status or reason differ from `previous`: (old, new) pairs.
pub fn transitions<'a>(
    previous: Option<&'a ScalableApiStatus>,
    new: &'a ScalableApiStatus,
) -> Vec<(Option<&'a Condition>, &'a Condition)> {
    new.conditions
        .iter()
        .filter_map(|c| {
            let old = find(previous, &c.type_);
            let same = old.is_some_and(|o| o.status == c.status && o.reason == c.reason);
            (!same).then_some((old, c))
        })
        .collect()
}

#[cfg(test)]
mod tests;
