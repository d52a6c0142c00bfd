//! Kubernetes Events, published only when a condition changes (never on a plain requeue).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};

use crate::crd::{ScalableApi, ScalableApiStatus};
use crate::status::{self, reasons, types};

/// Event reasons beyond the condition reasons in `status::reasons`.
pub const RESUMED: &str = "Resumed";
pub const UNAVAILABLE: &str = "Unavailable";
/// `action` of every Event we publish.
const ACTION: &str = "Reconcile";

fn event(type_: EventType, reason: &str, note: &str) -> Event {
    Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.to_owned()),
        action: ACTION.to_owned(),
        secondary: None,
    }
}

fn is_true(c: Option<&Condition>) -> bool {
    c.is_some_and(|c| c.status == "True")
}

/// The Events a status change deserves. Pure, so the rules are unit-tested.
///
/// One Warning when the object stalls (invalid spec, refused child, conflicting object,
/// refused pods), one when it loses availability it had; a rollout or a scale is no Warning.
pub fn events_for(previous: Option<&ScalableApiStatus>, new: &ScalableApiStatus) -> Vec<Event> {
    let stalled_now = new
        .conditions
        .iter()
        .any(|c| c.type_ == types::STALLED && c.status == "True");
    let mut out = Vec::new();
    for (old, c) in status::transitions(previous, new) {
        let now_true = c.status == "True";
        match c.type_.as_str() {
            types::DATABASE_CONFIGURED if !now_true && c.reason != reasons::INVALID_SPEC => {
                out.push(event(EventType::Warning, &c.reason, &c.message));
            }
            types::DATABASE_CONFIGURED if now_true && old.is_some() => {
                out.push(event(EventType::Normal, &c.reason, &c.message));
            }
            types::STALLED if now_true => {
                out.push(event(EventType::Warning, &c.reason, &c.message));
            }
            types::HTTP_ROUTE
            | types::POD_MONITOR
            | types::AUTH_CONFIGURED
            | types::EVENTS_CONFIGURED
                if !now_true =>
            {
                out.push(event(EventType::Warning, &c.reason, &c.message));
            }
            types::READY if now_true => out.push(event(EventType::Normal, &c.reason, &c.message)),
            // Lost without a spec change: an outage. After a spec change (a higher
            // minReplicas, a new image) the new generation is still on its way.
            types::READY
                if is_true(old)
                    && old.is_some_and(|o| o.observed_generation == c.observed_generation)
                    && !stalled_now
                    && ![
                        reasons::SECRET_NOT_FOUND,
                        reasons::KEY_NOT_FOUND,
                        reasons::ROLLING_OUT,
                    ]
                    .contains(&c.reason.as_str()) =>
            {
                out.push(event(EventType::Warning, UNAVAILABLE, &c.message));
            }
            types::PAUSED if now_true => out.push(event(EventType::Normal, &c.reason, &c.message)),
            types::PAUSED if is_true(old) => out.push(event(
                EventType::Normal,
                RESUMED,
                "spec.suspend is false again",
            )),
            _ => {}
        }
    }
    out
}

/// Publishes `events` for `sapi`. Best effort: a failed Event is logged, never fails reconcile.
pub async fn publish(recorder: &Recorder, sapi: &ScalableApi, events: &[Event]) {
    let reference = sapi.object_ref(&());
    for e in events {
        if let Err(err) = recorder.publish(e, &reference).await {
            tracing::warn!(error = %err, reason = %e.reason, "publishing an Event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn cond(t: &str, ok: bool, reason: &str) -> Condition {
        Condition {
            type_: t.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: "m".into(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    fn status(conditions: Vec<Condition>) -> ScalableApiStatus {
        ScalableApiStatus {
            conditions,
            ..ScalableApiStatus::default()
        }
    }

    fn reasons_of(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.reason.as_str()).collect()
    }

    #[test]
    fn a_missing_secret_is_a_warning_event() {
        let new = status(vec![cond(
            types::DATABASE_CONFIGURED,
            false,
            reasons::SECRET_NOT_FOUND,
        )]);
        let events = events_for(None, &new);
        assert_eq!(reasons_of(&events), vec![reasons::SECRET_NOT_FOUND]);
        assert_eq!(events[0].type_, EventType::Warning);
    }

    #[test]
    fn no_event_when_nothing_changed() {
        let s = status(vec![
            cond(types::READY, true, reasons::AVAILABLE),
            cond(types::DATABASE_CONFIGURED, false, reasons::KEY_NOT_FOUND),
        ]);
        assert!(events_for(Some(&s), &s).is_empty());
    }

    #[test]
    fn the_first_healthy_status_only_announces_readiness() {
        let new = status(vec![
            cond(types::READY, true, reasons::AVAILABLE),
            cond(types::RECONCILING, false, reasons::ROLLOUT_COMPLETE),
            cond(types::STALLED, false, reasons::NOT_STALLED),
            cond(types::DATABASE_CONFIGURED, true, reasons::SECRET_FOUND),
            cond(types::PAUSED, false, reasons::ACTIVE),
        ]);
        assert_eq!(
            reasons_of(&events_for(None, &new)),
            vec![reasons::AVAILABLE]
        );
    }

    #[test]
    fn losing_readiness_and_resuming_are_reported() {
        let old = status(vec![
            cond(types::READY, true, reasons::AVAILABLE),
            cond(types::PAUSED, true, reasons::SUSPENDED),
        ]);
        let new = status(vec![
            cond(types::READY, false, reasons::REPLICAS_UNAVAILABLE),
            cond(types::PAUSED, false, reasons::ACTIVE),
        ]);
        assert_eq!(
            reasons_of(&events_for(Some(&old), &new)),
            vec![UNAVAILABLE, RESUMED]
        );
    }

    #[test]
    fn a_stall_is_one_warning_event_with_the_stall_message() {
        let old = status(vec![
            cond(types::READY, true, reasons::AVAILABLE),
            cond(types::STALLED, false, reasons::NOT_STALLED),
        ]);
        let mut failed = cond(types::STALLED, true, reasons::APPLY_FAILED);
        failed.message = "the API server rejected the Deployment (422 Invalid): bad".into();
        let new = status(vec![
            cond(types::READY, false, reasons::APPLY_FAILED),
            failed,
        ]);
        let events = events_for(Some(&old), &new);
        assert_eq!(reasons_of(&events), vec![reasons::APPLY_FAILED]);
        assert_eq!(events[0].type_, EventType::Warning);
        assert_eq!(
            events[0].note.as_deref(),
            Some("the API server rejected the Deployment (422 Invalid): bad")
        );
        assert!(
            events_for(None, &new).len() == 1,
            "also on the first status"
        );
        assert!(events_for(Some(&new), &new).is_empty(), "not on a retry");
    }

    #[test]
    fn a_rollout_or_a_scale_is_no_warning() {
        let ready = status(vec![cond(types::READY, true, reasons::AVAILABLE)]);
        let rolling = status(vec![cond(types::READY, false, reasons::ROLLING_OUT)]);
        assert!(events_for(Some(&ready), &rolling).is_empty());
        let mut scaling = ready.clone();
        scaling.conditions[0].message = "3/5 replicas available, scaling to 5".into();
        assert!(events_for(Some(&ready), &scaling).is_empty());
        // minReplicas raised: below the new floor for a moment, but no outage.
        let mut raised = cond(types::READY, false, reasons::REPLICAS_UNAVAILABLE);
        raised.observed_generation = Some(2);
        assert!(events_for(Some(&ready), &status(vec![raised])).is_empty());
    }

    #[test]
    fn a_secret_that_appears_is_reported_once() {
        let old = status(vec![cond(
            types::DATABASE_CONFIGURED,
            false,
            reasons::SECRET_NOT_FOUND,
        )]);
        let new = status(vec![cond(
            types::DATABASE_CONFIGURED,
            true,
            reasons::SECRET_FOUND,
        )]);
        assert_eq!(
            reasons_of(&events_for(Some(&old), &new)),
            vec![reasons::SECRET_FOUND]
        );
    }
}
