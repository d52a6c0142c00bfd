use k8s_openapi::api::apps::v1::DeploymentSpec;
use k8s_openapi::api::autoscaling::v2::{CrossVersionObjectReference, HorizontalPodAutoscalerSpec};

use super::*;

fn deployment(replicas: i32) -> Deployment {
    Deployment {
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// An HPA whose scaleTargetRef is `kind` (an older operator's targets the Deployment).
fn hpa_targeting(kind: &str) -> HorizontalPodAutoscaler {
    HorizontalPodAutoscaler {
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                kind: kind.into(),
                name: "users".into(),
                api_version: None,
            },
            max_replicas: 8,
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    }
}

#[test]
fn spec_replicas_within_the_bounds_is_left_alone() {
    let sapi = ScalableApi::test().with_autoscaling(2, 8).with_replicas(5);
    let ours = hpa_targeting("ScalableApi");
    assert_eq!(
        scale_correction(&sapi, Some(&deployment(5)), Some(&ours)),
        None
    );
    assert_eq!(
        scale_correction(&sapi, Some(&deployment(3)), Some(&ours)),
        None,
        "the Deployment follows spec.replicas, not the other way round"
    );
    assert_eq!(
        scale_correction(&ScalableApi::test().with_replicas(0), None, None),
        None,
        "without autoscaling 0 is a count like any other"
    );
}

#[test]
fn spec_replicas_outside_the_bounds_is_brought_within() {
    let scaled = |replicas| {
        ScalableApi::test()
            .with_autoscaling(2, 8)
            .with_replicas(replicas)
    };
    // A new object carries the schema default 1; an HPA would read 0 as "scaling disabled".
    assert_eq!(scale_correction(&scaled(1), None, None), Some(2));
    assert_eq!(
        scale_correction(&scaled(0), Some(&deployment(0)), None),
        Some(2)
    );
    assert_eq!(scale_correction(&scaled(12), None, None), Some(8));
}

#[test]
fn turning_autoscaling_on_keeps_the_running_count() {
    // `replicas: 3` removed from the manifest reads as the default 1.
    let sapi = ScalableApi::test().with_autoscaling(2, 8);
    assert_eq!(scale_correction(&sapi, Some(&deployment(3)), None), Some(3));
    assert_eq!(
        scale_correction(&sapi, Some(&deployment(1)), None),
        Some(2),
        "but within the bounds"
    );
    assert_eq!(
        scale_correction(
            &sapi.clone().with_replicas(3),
            Some(&deployment(7)),
            Some(&hpa_targeting("ScalableApi"))
        ),
        None,
        "once our HPA scales the ScalableApi, spec.replicas leads"
    );
}

#[test]
fn an_older_operators_hpa_on_the_deployment_hands_its_count_to_spec_replicas() {
    let sapi = ScalableApi::test().with_autoscaling(2, 8);
    let old = hpa_targeting("Deployment");
    assert_eq!(
        scale_correction(&sapi, Some(&deployment(6)), Some(&old)),
        Some(6),
        "the count the HPA chose survives retargeting it"
    );
    assert_eq!(
        scale_correction(&sapi, Some(&deployment(20)), Some(&old)),
        Some(8)
    );
    assert_eq!(
        scale_correction(
            &sapi.clone().with_replicas(6),
            Some(&deployment(6)),
            Some(&old)
        ),
        None,
        "carried over already"
    );
    assert_eq!(
        scale_correction(&sapi, Some(&deployment(0)), Some(&old)),
        Some(2),
        "a 0 is no count to keep"
    );
}

#[test]
fn a_scale_keeps_the_template_generation_unless_the_object_was_recreated() {
    let r = |g| Record {
        body: 1,
        marker: String::new(),
        template_generation: Some(g),
    };
    assert_eq!(template_generation(Some(&r(3)), Some(7)), Some(3));
    assert_eq!(
        template_generation(Some(&r(9)), Some(2)),
        Some(2),
        "a record newer than the object is of an earlier object"
    );
    assert_eq!(template_generation(None, Some(4)), Some(4));
}

fn record(body: u64, marker: &str) -> Record {
    Record {
        body,
        marker: marker.into(),
        template_generation: Some(1),
    }
}

#[test]
fn an_untouched_child_is_up_to_date_without_comparing() {
    let desired = json!({"metadata": {"name": "a"}, "spec": {"quantity": "0.5"}});
    // The server normalised the quantity: a field compare alone would call it drift.
    let live = json!({"metadata": {"name": "a"}, "spec": {"quantity": "500m"}});
    let body = body_hash(&desired);
    assert!(up_to_date(
        Some(&record(body, "g1")),
        body,
        "g1",
        &live,
        &desired
    ));
    assert!(!up_to_date(
        Some(&record(body, "g1")),
        body,
        "g2",
        &live,
        &desired
    ));
    assert!(!up_to_date(
        Some(&record(body + 1, "g1")),
        body,
        "g1",
        &live,
        &desired
    ));
    assert!(!up_to_date(None, body, "g1", &live, &desired));
}

#[test]
fn a_moved_marker_compares_the_fields() {
    let desired = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"n": 1}});
    let same = json!({"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "spec": {"n": 1, "m": 2}});
    let body = body_hash(&desired);
    assert!(up_to_date(None, body, "g2", &same, &desired));
    assert!(up_to_date(
        Some(&record(body, "g1")),
        body,
        "g2",
        &same,
        &desired
    ));
    let label_gone = json!({"metadata": {"name": "a"}, "spec": {"n": 1}});
    assert!(
        !up_to_date(Some(&record(body, "g2")), body, "g2", &label_gone, &desired),
        "metadata is always compared: a label edit bumps no generation"
    );
}

#[test]
fn records_of_deleted_objects_are_dropped() {
    let records = LastApplied::default();
    records.put("Deployment/ns/a".into(), record(1, "g1"));
    records.put("Service/ns/b".into(), record(1, "rv1"));
    records.retain(|ns, name| ns == "ns" && name == "a");
    assert_eq!(records.len(), 1);
    assert!(records.get("Deployment/ns/a").is_some());
}

#[test]
fn an_optional_child_seen_absent_is_not_read_again_until_written() {
    let records = LastApplied::default();
    let key = "Ingress/ns/a".to_owned();
    assert!(!records.known_absent(&key));
    records.mark_absent(key.clone());
    assert!(records.known_absent(&key));
    records.put(key.clone(), record(1, "g1"));
    assert!(!records.known_absent(&key), "our write clears the mark");
    records.mark_absent(key.clone());
    assert!(records.get(&key).is_none(), "deleted: the record goes");
    records.retain(|_, name| name != "a");
    assert!(
        !records.known_absent(&key),
        "forgotten with its ScalableApi"
    );
}
