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
        replica_handover(Some(&live), &desired(None)),
        ReplicaHandover::PinLiveValue { replicas: 5 }
    );
}

#[test]
fn no_hand_over_when_we_still_set_replicas() {
    let live = live(5, vec![entry(FIELD_MANAGER, "Apply", owns_replicas())]);
    assert_eq!(
        replica_handover(Some(&live), &desired(Some(3))),
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
        replica_handover(Some(&live), &desired(None)),
        ReplicaHandover::NotNeeded
    );
}

#[test]
fn no_hand_over_for_a_new_deployment() {
    assert_eq!(
        replica_handover(None, &desired(None)),
        ReplicaHandover::NotNeeded
    );
}

#[test]
fn an_update_by_our_manager_is_not_an_applied_ownership() {
    let live = live(5, vec![entry(FIELD_MANAGER, "Update", owns_replicas())]);
    assert!(!applies_replicas(&live, FIELD_MANAGER));
}
