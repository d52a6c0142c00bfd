//! Pure status computation: conditions from what reconcile observed, with
//! `lastTransitionTime` kept unless the condition's status flips.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{Timestamp, Unit};

use crate::crd::ScalableApiStatus;

/// Condition types: kstatus' `Ready` / `Reconciling` / `Stalled` (so `kubectl wait`, Flux and
/// kstatus-based tools need no custom health check) plus two of our own.
pub mod types {
    pub const READY: &str = "Ready";
    /// True while the operator or the Deployment controller still works towards the spec.
    pub const RECONCILING: &str = "Reconciling";
    /// True when progress needs a change by someone: the spec, a quota, a conflicting object.
    pub const STALLED: &str = "Stalled";
    pub const DATABASE_CONFIGURED: &str = "DatabaseConfigured";
    /// Only when `spec.auth` is set: whether the JWKS Secret key exists.
    pub const AUTH_CONFIGURED: &str = "AuthConfigured";
    /// `spec.events` is set: every Secret key the Kafka settings name exists.
    pub const EVENTS_CONFIGURED: &str = "EventsConfigured";
    /// Only when `spec.httpRoute` is set: whether the cluster serves HTTPRoutes.
    pub const HTTP_ROUTE: &str = "HTTPRoute";
    /// Only when `spec.monitoring.podMonitor` is true: whether the cluster serves PodMonitors.
    pub const POD_MONITOR: &str = "PodMonitor";
    pub const PAUSED: &str = "Paused";
}

/// Condition reasons (also used as Event reasons). A stalled Deployment lends its own
/// reason (`FailedCreate`, `ProgressDeadlineExceeded`, ...).
pub mod reasons {
    pub const AVAILABLE: &str = "Available";
    /// Rolled out, but fewer pods available than the floor (minReplicas or replicas).
    pub const REPLICAS_UNAVAILABLE: &str = "ReplicasUnavailable";
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    pub const DEPLOYMENT_MISSING: &str = "DeploymentMissing";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The API server refused a child for good (invalid, forbidden); also the Event reason.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// An object with a child's name is not controlled by this ScalableApi.
    pub const CHILD_CONFLICT: &str = "ChildConflict";
    /// A child of an earlier ScalableApi of this name is still being collected.
    pub const WAITING_FOR_COLLECTOR: &str = "WaitingForCollector";
    pub const SECRET_FOUND: &str = "SecretFound";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const KEY_NOT_FOUND: &str = "KeyNotFound";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    pub const WAITING_FOR_DATABASE: &str = "WaitingForDatabase";
    pub const WAITING_FOR_JWKS: &str = "WaitingForJwks";
    pub const WAITING_FOR_EVENTS_SECRET: &str = "WaitingForEventsSecret";
    pub const SUSPENDED: &str = "Suspended";
    pub const ACTIVE: &str = "Active";
    /// Stalled=False: nothing blocks the rollout.
    pub const NOT_STALLED: &str = "NotStalled";
    pub const GATEWAY_API_SERVED: &str = "GatewayAPIServed";
    pub const GATEWAY_API_NOT_INSTALLED: &str = "GatewayAPINotInstalled";
    pub const PROMETHEUS_OPERATOR_SERVED: &str = "PrometheusOperatorServed";
    pub const PROMETHEUS_OPERATOR_NOT_INSTALLED: &str = "PrometheusOperatorNotInstalled";
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
    /// `Some(message)` when an object with a child's name is not ours (`ChildConflict`).
    pub conflict: Option<String>,
    /// The conflicting objects are only an earlier ScalableApi's children that the garbage
    /// collector is clearing: in progress, not stalled.
    pub collector_pending: bool,
    pub secret: &'a SecretState,
    pub deployment: Option<&'a Deployment>,
    /// Deployment generation of our last write of its pod template; a later one is a scale.
    pub template_generation: Option<i64>,
    /// The count the Deployment is meant to run (`ScalableApi::deployment_replicas`).
    pub replicas: i32,
    /// Fewest available pods that still count as Ready: `autoscaling.minReplicas`, or the
    /// fixed count.
    pub floor: i32,
    pub selector: String,
    pub url: String,
    /// `Some(served)` when `spec.httpRoute` is set: whether the cluster serves HTTPRoutes.
    pub http_route: Option<bool>,
    /// `Some(served)` when a PodMonitor is wanted: whether the cluster serves PodMonitors.
    pub pod_monitor: Option<bool>,
    /// The JWKS Secret key, when `spec.auth` is set.
    pub jwks: Option<&'a SecretState>,
    /// The Kafka Secrets of `spec.events` together (the first missing one, or their hash).
    pub events: Option<&'a SecretState>,
}

/// The condition of a child of an optional API that the spec asks for.
fn optional_api(
    served: bool,
    ok_reason: &str,
    missing_reason: &str,
    what: &str,
    api: &str,
    crds: &str,
) -> State {
    if served {
        state(true, ok_reason, format!("the cluster serves {api}"))
    } else {
        state(
            false,
            missing_reason,
            format!(
                "{what} is set, but the cluster served no {api} when the operator started: install the {crds} CRDs, then restart the operator; everything else is applied"
            ),
        )
    }
}

/// Longest message we copy from the API server or the Deployment: the Ready message becomes
/// an Event note, which the API server caps at 1024 bytes, and API server messages can quote
/// whole objects.
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
    secret_condition(obs.secret, "spec.database")
}

/// The state of a Secret key the spec names (`field`), as (ok, reason, message).
fn secret_condition(secret: &SecretState, field: &str) -> (bool, &'static str, String) {
    match secret {
        SecretState::Found { .. } => (
            true,
            reasons::SECRET_FOUND,
            "the referenced Secret key exists".into(),
        ),
        SecretState::SecretNotFound { name } => (
            false,
            reasons::SECRET_NOT_FOUND,
            format!("Secret {name:?} does not exist in this namespace: create it or fix {field}"),
        ),
        SecretState::KeyNotFound { name, key } => (
            false,
            reasons::KEY_NOT_FOUND,
            format!("Secret {name:?} has no key {key:?}: add the key or fix {field}"),
        ),
        SecretState::Unreferenced => (
            false,
            reasons::INVALID_SPEC,
            format!("{field} names no Secret"),
        ),
    }
}

/// The replica count wanted now: what the Deployment is set to (spec.replicas, which the
/// HPA writes under autoscaling, within its bounds).
fn desired_replicas(obs: &Observation<'_>) -> i32 {
    obs.deployment
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(obs.replicas)
}

/// The Deployment controller has seen the template we wrote (`template_generation`; unknown
/// means the live generation), and every pod runs it. A scale bumps the generation but
/// changes no template, so it never counts as a rollout.
pub fn rolled_out(d: &Deployment, template_generation: Option<i64>) -> bool {
    let Some(st) = d.status.as_ref() else {
        return false;
    };
    st.observed_generation >= template_generation.or(d.metadata.generation)
        && st.replicas.unwrap_or(0) <= st.updated_replicas.unwrap_or(0)
}

/// `(reason, message)` when the Deployment controller reports that the rollout cannot go on
/// by itself: pods refused (`ReplicaFailure`) or the progress deadline exceeded.
pub fn deployment_stall(d: &Deployment) -> Option<(String, String)> {
    let st = d.status.as_ref()?;
    if st.observed_generation < d.metadata.generation {
        // The conditions describe an older spec.
        return None;
    }
    st.conditions.iter().flatten().find_map(|c| {
        let stalled = (c.type_ == "ReplicaFailure" && c.status == "True")
            || (c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
        stalled.then(|| {
            (
                c.reason.clone().unwrap_or_else(|| c.type_.clone()),
                truncated(&format!(
                    "Deployment {}: {}",
                    c.type_,
                    c.message.as_deref().unwrap_or("no message")
                )),
            )
        })
    })
}

type State = (bool, String, String);

fn state(ok: bool, reason: &str, message: impl Into<String>) -> State {
    (ok, reason.to_owned(), message.into())
}

/// Ready, Reconciling and Stalled together: they describe one situation from three sides.
fn readiness(obs: &Observation<'_>, db: &(bool, &'static str, String)) -> [State; 3] {
    let not_stalled = || state(false, reasons::NOT_STALLED, "nothing blocks the rollout");
    let stalled = |reason: &str, message: &str| {
        [
            state(false, reason, message),
            state(false, reason, "waiting for a change: see Stalled"),
            state(true, reason, message),
        ]
    };
    if let Some(e) = &obs.spec_error {
        return stalled(reasons::INVALID_SPEC, e);
    }
    if !db.0 {
        return [
            state(false, db.1, db.2.clone()),
            state(
                true,
                reasons::WAITING_FOR_DATABASE,
                "waiting for the database Secret",
            ),
            not_stalled(),
        ];
    }
    if let Some((false, reason, message)) = obs.jwks.map(|j| secret_condition(j, "spec.auth.jwt")) {
        return [
            state(false, reason, message),
            state(
                true,
                reasons::WAITING_FOR_JWKS,
                "waiting for the JWKS Secret",
            ),
            not_stalled(),
        ];
    }
    if let Some((false, reason, message)) =
        obs.events.map(|e| secret_condition(e, "spec.events.kafka"))
    {
        return [
            state(false, reason, message),
            state(
                true,
                reasons::WAITING_FOR_EVENTS_SECRET,
                "waiting for the Kafka Secrets of spec.events",
            ),
            not_stalled(),
        ];
    }
    if let Some(c) = &obs.conflict {
        if obs.collector_pending {
            return [
                state(false, reasons::WAITING_FOR_COLLECTOR, truncated(c)),
                state(
                    true,
                    reasons::WAITING_FOR_COLLECTOR,
                    "waiting for the garbage collector",
                ),
                not_stalled(),
            ];
        }
        return stalled(reasons::CHILD_CONFLICT, &truncated(c));
    }
    if let Some(e) = &obs.apply_error {
        // Whatever the live pods do, the spec is not what runs: not Ready.
        return stalled(reasons::APPLY_FAILED, &truncated(e));
    }
    let Some(d) = obs.deployment else {
        return [
            state(
                false,
                reasons::DEPLOYMENT_MISSING,
                "the Deployment does not exist yet",
            ),
            state(true, reasons::DEPLOYMENT_MISSING, "creating the Deployment"),
            not_stalled(),
        ];
    };
    if let Some((reason, message)) = deployment_stall(d) {
        return stalled(&reason, &message);
    }
    let st = d.status.clone().unwrap_or_default();
    let available = st.available_replicas.unwrap_or(0);
    let want = desired_replicas(obs);
    let (floor, done) = (obs.floor, rolled_out(d, obs.template_generation));
    let reconciling = if obs.suspended {
        state(false, reasons::SUSPENDED, "spec.suspend is true")
    } else if done {
        state(
            false,
            reasons::ROLLOUT_COMPLETE,
            "the Deployment runs the current spec",
        )
    } else {
        state(
            true,
            reasons::ROLLING_OUT,
            "the Deployment is rolling out the current spec",
        )
    };
    let ready = if !done {
        let updated = st.updated_replicas.unwrap_or(0);
        state(
            false,
            reasons::ROLLING_OUT,
            format!("rolling out: {updated} of {want} pods run the current spec"),
        )
    } else if want == 0 && floor == 0 {
        state(true, reasons::SCALED_TO_ZERO, "no replicas are wanted")
    } else if available < floor {
        state(
            false,
            reasons::REPLICAS_UNAVAILABLE,
            format!("{available} available, at least {floor} needed"),
        )
    } else if available < want {
        // Scaling up (or replacing a lost pod) above the floor is no outage.
        state(
            true,
            reasons::AVAILABLE,
            format!("{available}/{want} replicas available, scaling to {want}"),
        )
    } else {
        state(
            true,
            reasons::AVAILABLE,
            format!("{available}/{want} replicas available"),
        )
    };
    [ready, reconciling, not_stalled()]
}

/// The status for `obs`. Conditions whose status did not flip keep `previous`'s
/// `lastTransitionTime`, so an unchanged object yields an identical status.
pub fn compute(
    obs: &Observation<'_>,
    previous: Option<&ScalableApiStatus>,
    now: Timestamp,
) -> ScalableApiStatus {
    let g = obs.generation;
    let db = database_configured(obs);
    let want = desired_replicas(obs);
    let ready_replicas = obs
        .deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas);
    let [ready, reconciling, stalled] = readiness(obs, &db);
    let paused = if obs.suspended {
        state(
            true,
            reasons::SUSPENDED,
            "spec.suspend is true: children are left as they are and no HPA runs",
        )
    } else {
        state(false, reasons::ACTIVE, "reconciling")
    };
    let route = obs.http_route.map(|served| {
        optional_api(
            served,
            reasons::GATEWAY_API_SERVED,
            reasons::GATEWAY_API_NOT_INSTALLED,
            "spec.httpRoute",
            "gateway.networking.k8s.io/v1 HTTPRoutes",
            "Gateway API",
        )
    });
    let monitor = obs.pod_monitor.map(|served| {
        optional_api(
            served,
            reasons::PROMETHEUS_OPERATOR_SERVED,
            reasons::PROMETHEUS_OPERATOR_NOT_INSTALLED,
            "spec.monitoring.podMonitor",
            "monitoring.coreos.com/v1 PodMonitors",
            "prometheus-operator",
        )
    });
    let conditions = [
        (types::READY, ready),
        (types::RECONCILING, reconciling),
        (types::STALLED, stalled),
        (types::DATABASE_CONFIGURED, state(db.0, db.1, db.2)),
        (types::PAUSED, paused),
    ]
    .into_iter()
    .chain(route.map(|r| (types::HTTP_ROUTE, r)))
    .chain(monitor.map(|m| (types::POD_MONITOR, m)))
    .chain(obs.jwks.map(|j| {
        let (ok, reason, message) = secret_condition(j, "spec.auth.jwt");
        (types::AUTH_CONFIGURED, state(ok, reason, message))
    }))
    .chain(obs.events.map(|e| {
        let (ok, reason, message) = secret_condition(e, "spec.events.kafka");
        (types::EVENTS_CONFIGURED, state(ok, reason, message))
    }))
    .map(|(t, (ok, reason, message))| {
        let mut c = condition(t, ok, &reason, message, g);
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
        desired_replicas: Some(want),
        replica_summary: Some(format!("{}/{want}", ready_replicas.unwrap_or(0))),
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
