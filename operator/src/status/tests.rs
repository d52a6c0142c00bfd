use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::SignedDuration;

use super::*;

fn deployment(replicas: i32, ready: i32) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            generation: Some(2),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            ..DeploymentSpec::default()
        }),
        status: Some(DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(replicas),
            updated_replicas: Some(replicas),
            available_replicas: Some(ready),
            ready_replicas: Some(ready),
            ..DeploymentStatus::default()
        }),
    }
}

const UNREFERENCED: SecretState = SecretState::Unreferenced;

fn obs<'a>(secret: &'a SecretState, d: Option<&'a Deployment>) -> Observation<'a> {
    Observation {
        generation: Some(3),
        suspended: false,
        spec_error: None,
        apply_error: None,
        conflict: None,
        collector_pending: false,
        secret,
        deployment: d,
        template_generation: None,
        replicas: 3,
        floor: 3,
        selector: "app.kubernetes.io/instance=a".into(),
        url: "http://a.ns.svc:80".into(),
        http_route: None,
        pod_monitor: None,
        jwks: None,
        events: None,
    }
}

fn found() -> SecretState {
    SecretState::Found { hash: "h".into() }
}

fn get<'a>(s: &'a ScalableApiStatus, t: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn all_replicas_ready_means_ready_and_rolled_out() {
    let d = deployment(3, 3);
    let secret = found();
    let s = compute(&obs(&secret, Some(&d)), None, Timestamp::now());
    assert_eq!(get(&s, types::READY).status, "True");
    assert_eq!(get(&s, types::READY).reason, reasons::AVAILABLE);
    assert_eq!(
        get(&s, types::RECONCILING).reason,
        reasons::ROLLOUT_COMPLETE
    );
    assert_eq!(get(&s, types::RECONCILING).status, "False");
    assert_eq!(get(&s, types::STALLED).status, "False");
    assert_eq!(get(&s, types::DATABASE_CONFIGURED).status, "True");
    assert_eq!(get(&s, types::PAUSED).status, "False");
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(
        (s.replicas, s.ready_replicas, s.desired_replicas),
        (Some(3), Some(3), Some(3))
    );
    assert_eq!(s.url.as_deref(), Some("http://a.ns.svc:80"));
}

#[test]
fn missing_secret_is_reported_with_its_reason() {
    let secret = SecretState::SecretNotFound { name: "db".into() };
    let s = compute(&obs(&secret, None), None, Timestamp::now());
    let db = get(&s, types::DATABASE_CONFIGURED);
    assert_eq!(
        (db.status.as_str(), db.reason.as_str()),
        ("False", reasons::SECRET_NOT_FOUND)
    );
    assert!(db.message.contains("\"db\""));
    assert_eq!(get(&s, types::READY).reason, reasons::SECRET_NOT_FOUND);
    assert_eq!(
        get(&s, types::RECONCILING).reason,
        reasons::WAITING_FOR_DATABASE
    );
    assert_eq!(
        get(&s, types::STALLED).status,
        "False",
        "a Secret may still come"
    );
}

#[test]
fn missing_key_is_reported_with_its_reason() {
    let secret = SecretState::KeyNotFound {
        name: "db".into(),
        key: "password".into(),
    };
    let s = compute(&obs(&secret, None), None, Timestamp::now());
    assert_eq!(
        get(&s, types::DATABASE_CONFIGURED).reason,
        reasons::KEY_NOT_FOUND
    );
}

#[test]
fn fewer_available_than_the_floor_is_not_ready() {
    let d = deployment(3, 1);
    let secret = found();
    let s = compute(&obs(&secret, Some(&d)), None, Timestamp::now());
    let ready = get(&s, types::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::REPLICAS_UNAVAILABLE)
    );
    assert_eq!(ready.message, "1 available, at least 3 needed");
    assert_eq!(s.replica_summary.as_deref(), Some("1/3"));
}

#[test]
fn an_hpa_scale_up_above_the_floor_stays_ready() {
    // The HPA set spec.replicas from 3 to 5 and the operator wrote 5 to the Deployment
    // (generation 2 -> 3, template unchanged); the Deployment controller has not even seen it.
    let mut d = deployment(5, 3);
    d.metadata.generation = Some(3);
    let st = d.status.as_mut().unwrap();
    (st.replicas, st.updated_replicas) = (Some(3), Some(3));
    let secret = found();
    let mut o = obs(&secret, Some(&d));
    (o.replicas, o.floor, o.template_generation) = (5, 2, Some(2));
    let s = compute(&o, None, Timestamp::now());
    let ready = get(&s, types::READY);
    assert_eq!(
        (
            ready.status.as_str(),
            ready.reason.as_str(),
            ready.message.as_str()
        ),
        (
            "True",
            reasons::AVAILABLE,
            "3/5 replicas available, scaling to 5"
        )
    );
    assert_eq!(get(&s, types::RECONCILING).status, "False");
    // Without knowing which generation we wrote, the lag counts as a rollout.
    o.template_generation = None;
    let s = compute(&o, None, Timestamp::now());
    assert_eq!(get(&s, types::READY).reason, reasons::ROLLING_OUT);
}

#[test]
fn a_template_rollout_is_not_ready_and_reconciling() {
    let mut d = deployment(3, 3);
    let st = d.status.as_mut().unwrap();
    (st.replicas, st.updated_replicas) = (Some(4), Some(1));
    let secret = found();
    let s = compute(&obs(&secret, Some(&d)), None, Timestamp::now());
    assert_eq!(get(&s, types::READY).status, "False");
    assert_eq!(get(&s, types::READY).reason, reasons::ROLLING_OUT);
    assert_eq!(get(&s, types::RECONCILING).status, "True");
    assert_eq!(get(&s, types::STALLED).status, "False");
}

#[test]
fn zero_replicas_wanted_and_none_running_is_ready() {
    let d = deployment(0, 0);
    let secret = found();
    let mut o = obs(&secret, Some(&d));
    (o.replicas, o.floor) = (0, 0);
    let s = compute(&o, None, Timestamp::now());
    let ready = get(&s, types::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", reasons::SCALED_TO_ZERO)
    );
}

#[test]
fn refused_pods_stall_with_the_deployments_reason_and_message() {
    use k8s_openapi::api::apps::v1::DeploymentCondition;
    let mut d = deployment(3, 1);
    d.status.as_mut().unwrap().conditions = Some(vec![DeploymentCondition {
        type_: "ReplicaFailure".into(),
        status: "True".into(),
        reason: Some("FailedCreate".into()),
        message: Some("pods \"a-1\" is forbidden: exceeded quota: pods".into()),
        ..DeploymentCondition::default()
    }]);
    let secret = found();
    let s = compute(&obs(&secret, Some(&d)), None, Timestamp::now());
    let stalled = get(&s, types::STALLED);
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "FailedCreate")
    );
    assert!(
        stalled.message.contains("exceeded quota"),
        "{}",
        stalled.message
    );
    assert_eq!(get(&s, types::READY).status, "False");
    assert_eq!(get(&s, types::READY).reason, "FailedCreate");
    assert_eq!(get(&s, types::RECONCILING).status, "False");

    let mut deadline = deployment(3, 1);
    deadline.status.as_mut().unwrap().conditions = Some(vec![DeploymentCondition {
        type_: "Progressing".into(),
        status: "False".into(),
        reason: Some("ProgressDeadlineExceeded".into()),
        message: Some("ReplicaSet \"a-1\" has timed out progressing.".into()),
        ..DeploymentCondition::default()
    }]);
    let s = compute(&obs(&secret, Some(&deadline)), None, Timestamp::now());
    assert_eq!(get(&s, types::STALLED).reason, "ProgressDeadlineExceeded");
    // Conditions of a generation the controller has not seen yet say nothing.
    deadline.metadata.generation = Some(9);
    let s = compute(&obs(&secret, Some(&deadline)), None, Timestamp::now());
    assert_eq!(get(&s, types::STALLED).status, "False");
}

#[test]
fn a_conflicting_object_stalls_with_its_message() {
    let d = deployment(3, 3);
    let secret = found();
    let mut o = obs(&secret, Some(&d));
    o.conflict = Some("ConfigMap \"a-config\" already exists".into());
    let s = compute(&o, None, Timestamp::now());
    for t in [types::READY, types::STALLED] {
        assert_eq!(get(&s, t).reason, reasons::CHILD_CONFLICT, "{t}");
    }
    assert_eq!(get(&s, types::STALLED).status, "True");
    assert!(get(&s, types::READY).message.contains("a-config"));
    // An earlier ScalableApi's child the garbage collector is clearing: in progress.
    o.collector_pending = true;
    let s = compute(&o, None, Timestamp::now());
    assert_eq!(get(&s, types::READY).reason, reasons::WAITING_FOR_COLLECTOR);
    assert_eq!(get(&s, types::RECONCILING).status, "True");
    assert_eq!(get(&s, types::STALLED).status, "False");
}

#[test]
fn suspended_objects_are_paused() {
    let d = deployment(3, 3);
    let secret = found();
    let mut o = obs(&secret, Some(&d));
    o.suspended = true;
    let s = compute(&o, None, Timestamp::now());
    assert_eq!(get(&s, types::PAUSED).status, "True");
    assert_eq!(get(&s, types::RECONCILING).reason, reasons::SUSPENDED);
}

#[test]
fn invalid_spec_says_what_to_fix() {
    let secret = UNREFERENCED;
    let mut o = obs(&secret, None);
    o.spec_error = Some("remove spec.replicas".into());
    let s = compute(&o, None, Timestamp::now());
    let ready = get(&s, types::READY);
    assert_eq!(
        (ready.reason.as_str(), ready.message.as_str()),
        (reasons::INVALID_SPEC, "remove spec.replicas")
    );
}

#[test]
fn the_desired_count_is_what_the_deployment_is_set_to() {
    let mut d = deployment(6, 4);
    d.status.as_mut().unwrap().replicas = Some(4);
    let secret = found();
    let mut o = obs(&secret, Some(&d));
    (o.replicas, o.floor) = (6, 2);
    let s = compute(&o, None, Timestamp::now());
    assert_eq!(s.desired_replicas, Some(6));
    assert_eq!(
        get(&s, types::READY).message,
        "4/6 replicas available, scaling to 6"
    );
    assert_eq!(s.replica_summary.as_deref(), Some("4/6"));
}

#[test]
fn transition_time_is_kept_while_the_status_does_not_flip() {
    let d = deployment(3, 1);
    let secret = found();
    let t0 = Timestamp::now();
    let first = compute(&obs(&secret, Some(&d)), None, t0);
    let later = t0 + SignedDuration::from_secs(60);
    let second = compute(&obs(&secret, Some(&d)), Some(&first), later);
    assert!(unchanged(Some(&first), &second));
    assert!(transitions(Some(&first), &second).is_empty());

    let ready = deployment(3, 3);
    let third = compute(&obs(&secret, Some(&ready)), Some(&second), later);
    let old_ready = get(&second, types::READY);
    let new_ready = get(&third, types::READY);
    assert_ne!(
        old_ready.last_transition_time,
        new_ready.last_transition_time
    );
    assert_eq!(
        get(&second, types::DATABASE_CONFIGURED).last_transition_time,
        get(&third, types::DATABASE_CONFIGURED).last_transition_time
    );
    assert!(!unchanged(Some(&second), &third));
}

#[test]
fn condition_order_does_not_count_as_a_change() {
    let d = deployment(3, 3);
    let secret = found();
    let s = compute(&obs(&secret, Some(&d)), None, Timestamp::now());
    let mut reordered = s.clone();
    reordered.conditions.reverse();
    assert!(unchanged(Some(&reordered), &s));
}

#[test]
fn a_refused_child_is_not_ready_and_stalled_even_with_ready_pods() {
    let d = deployment(3, 3);
    let secret = found();
    let mut o = obs(&secret, Some(&d));
    o.apply_error = Some("the API server rejected the Deployment (422 Invalid): bad".into());
    let s = compute(&o, None, Timestamp::now());
    for t in [types::READY, types::STALLED] {
        let c = get(&s, t);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            (
                if t == types::STALLED { "True" } else { "False" },
                reasons::APPLY_FAILED,
                "the API server rejected the Deployment (422 Invalid): bad"
            ),
            "{t}"
        );
    }
    assert_eq!(get(&s, types::DATABASE_CONFIGURED).status, "True");
    assert_eq!(
        s.ready_replicas,
        Some(3),
        "the live counts are still reported"
    );
}

#[test]
fn an_invalid_spec_or_a_missing_secret_comes_before_a_refused_child() {
    let secret = SecretState::SecretNotFound { name: "db".into() };
    let mut o = obs(&secret, None);
    o.apply_error = Some("refused".into());
    let s = compute(&o, None, Timestamp::now());
    assert_eq!(get(&s, types::READY).reason, reasons::SECRET_NOT_FOUND);
    o.spec_error = Some("fix it".into());
    let s = compute(&o, None, Timestamp::now());
    assert_eq!(get(&s, types::READY).reason, reasons::INVALID_SPEC);
}

#[test]
fn a_long_refusal_is_cut_to_fit_an_event_note() {
    let secret = found();
    let mut o = obs(&secret, None);
    // Multi-byte characters: the cut must land on a char boundary.
    o.apply_error = Some("é".repeat(2 * MAX_APPLY_ERROR_BYTES));
    let s = compute(&o, None, Timestamp::now());
    let message = &get(&s, types::READY).message;
    assert!(message.len() <= MAX_APPLY_ERROR_BYTES, "{}", message.len());
    assert!(message.ends_with('…'));
    assert!(message.starts_with("éé"));
    let short = "the API server rejected the Service (403 Forbidden): no";
    o.apply_error = Some(short.into());
    assert_eq!(
        get(&compute(&o, None, Timestamp::now()), types::READY).message,
        short
    );
}

#[test]
fn without_a_deployment_the_desired_count_is_the_spec() {
    let secret = found();
    let mut o = obs(&secret, None);
    o.replicas = 2;
    let s = compute(&o, None, Timestamp::now());
    assert_eq!(s.desired_replicas, Some(2));
    assert_eq!(s.replica_summary.as_deref(), Some("0/2"));
}

#[test]
fn an_http_route_the_cluster_cannot_serve_is_a_condition_not_an_outage() {
    let d = deployment(3, 3);
    let secret = found();
    let mut o = obs(&secret, Some(&d));
    let without = compute(&o, None, Timestamp::now());
    assert!(
        without
            .conditions
            .iter()
            .all(|c| c.type_ != types::HTTP_ROUTE)
    );
    o.http_route = Some(false);
    let s = compute(&o, None, Timestamp::now());
    let route = get(&s, types::HTTP_ROUTE);
    assert_eq!(
        (route.status.as_str(), route.reason.as_str()),
        ("False", reasons::GATEWAY_API_NOT_INSTALLED)
    );
    assert_eq!(get(&s, types::READY).status, "True", "everything else runs");
    o.http_route = Some(true);
    let s = compute(&o, None, Timestamp::now());
    assert_eq!(get(&s, types::HTTP_ROUTE).status, "True");
}

#[test]
fn a_missing_jwks_secret_is_not_ready_and_says_which() {
    let d = deployment(3, 3);
    let secret = found();
    let missing = SecretState::SecretNotFound {
        name: "idp-jwks".into(),
    };
    let mut o = obs(&secret, Some(&d));
    o.jwks = Some(&missing);
    let s = compute(&o, None, Timestamp::now());
    let ready = get(&s, types::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::SECRET_NOT_FOUND)
    );
    assert!(ready.message.contains("spec.auth.jwt"), "{}", ready.message);
    assert_eq!(get(&s, types::AUTH_CONFIGURED).status, "False");
    assert_eq!(get(&s, types::DATABASE_CONFIGURED).status, "True");
    let there = found();
    o.jwks = Some(&there);
    let s = compute(&o, None, Timestamp::now());
    assert_eq!(get(&s, types::AUTH_CONFIGURED).status, "True");
    assert_eq!(get(&s, types::READY).status, "True");
}

#[test]
fn a_missing_kafka_key_is_not_ready_and_says_which() {
    let d = deployment(3, 3);
    let secret = found();
    let missing = SecretState::KeyNotFound {
        name: "kafka-user".into(),
        key: "password".into(),
    };
    let mut o = obs(&secret, Some(&d));
    o.events = Some(&missing);
    let s = compute(&o, None, Timestamp::now());
    let ready = get(&s, types::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::KEY_NOT_FOUND)
    );
    assert!(
        ready
            .message
            .contains("\"kafka-user\" has no key \"password\"")
            && ready.message.contains("spec.events.kafka"),
        "{}",
        ready.message
    );
    assert_eq!(
        get(&s, types::RECONCILING).reason,
        reasons::WAITING_FOR_EVENTS_SECRET
    );
    assert_eq!(get(&s, types::EVENTS_CONFIGURED).status, "False");
    let there = found();
    o.events = Some(&there);
    let s = compute(&o, None, Timestamp::now());
    assert_eq!(get(&s, types::EVENTS_CONFIGURED).status, "True");
    assert_eq!(get(&s, types::READY).status, "True");
}

#[test]
fn without_events_there_is_no_events_condition() {
    let d = deployment(3, 3);
    let secret = found();
    let s = compute(&obs(&secret, Some(&d)), None, Timestamp::now());
    assert!(
        s.conditions
            .iter()
            .all(|c| c.type_ != types::EVENTS_CONFIGURED)
    );
}
