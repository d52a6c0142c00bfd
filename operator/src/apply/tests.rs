use k8s_openapi::api::apps::v1::DeploymentSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta};
use serde_json::json;

use super::*;

fn entry(manager: &str, operation: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
    ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some(operation.into()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(FieldsV1(fields)),
        ..ManagedFieldsEntry::default()
    }
}

fn live(replicas: i32, managed: Vec<ManagedFieldsEntry>) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("a".into()),
            managed_fields: Some(managed),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn desired(replicas: Option<i32>) -> Deployment {
    Deployment {
        spec: Some(DeploymentSpec {
            replicas,
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn owns_replicas() -> serde_json::Value {
    json!({"f:spec": {"f:replicas": {}, "f:template": {}}})
}

#[test]
fn turning_autoscaling_on_pins_the_live_replica_count() {
    let live = live(5, vec![entry(FIELD_MANAGER, "Apply", owns_replicas())]);
    assert_eq!(
        replica_handover(Some(&live), &desired(None), 2),
        ReplicaHandover::PinLiveValue { replicas: 5 }
    );
}

#[test]
fn no_hand_over_when_we_still_set_replicas() {
    let live = live(5, vec![entry(FIELD_MANAGER, "Apply", owns_replicas())]);
    assert_eq!(
        replica_handover(Some(&live), &desired(Some(3)), 2),
        ReplicaHandover::NotNeeded
    );
}

#[test]
fn no_hand_over_once_we_no_longer_own_replicas() {
    // After the hand-over the HPA (an Update) and the hand-over manager own the field.
    let live = live(
        7,
        vec![
            entry(
                FIELD_MANAGER,
                "Apply",
                json!({"f:spec": {"f:template": {}}}),
            ),
            entry(
                HANDOVER_MANAGER,
                "Apply",
                json!({"f:spec": {"f:replicas": {}}}),
            ),
            entry(
                "kube-controller-manager",
                "Update",
                json!({"f:spec": {"f:replicas": {}}}),
            ),
        ],
    );
    assert_eq!(
        replica_handover(Some(&live), &desired(None), 2),
        ReplicaHandover::NotNeeded
    );
}

#[test]
fn no_hand_over_for_a_new_deployment() {
    assert_eq!(
        replica_handover(None, &desired(None), 2),
        ReplicaHandover::NotNeeded
    );
}

#[test]
fn an_update_by_our_manager_is_not_an_applied_ownership() {
    let live = live(5, vec![entry(FIELD_MANAGER, "Update", owns_replicas())]);
    assert!(!applies_replicas(&live, FIELD_MANAGER));
}

#[test]
fn zero_replicas_are_handed_over_as_the_floor_whoever_set_them() {
    // An HPA reads 0 as "scaling disabled": it would never act.
    let ours = live(0, vec![entry(FIELD_MANAGER, "Apply", owns_replicas())]);
    assert_eq!(
        replica_handover(Some(&ours), &desired(None), 3),
        ReplicaHandover::PinLiveValue { replicas: 3 }
    );
    let kubectl = live(0, vec![entry("kubectl", "Update", owns_replicas())]);
    assert_eq!(
        replica_handover(Some(&kubectl), &desired(None), 3),
        ReplicaHandover::PinLiveValue { replicas: 3 }
    );
}

#[test]
fn a_new_deployment_starts_at_min_or_at_what_the_hpa_chose() {
    assert_eq!(start_replicas(2, 8, None), 2);
    assert_eq!(start_replicas(2, 8, Some(0)), 2, "no choice yet");
    assert_eq!(start_replicas(2, 8, Some(5)), 5);
    assert_eq!(
        start_replicas(2, 8, Some(12)),
        8,
        "clamped to the new bounds"
    );
    assert_eq!(start_replicas(4, 8, Some(3)), 4);
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
