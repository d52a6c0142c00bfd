//! What the conditions say on a real cluster when the Deployment controller cannot make the
//! pods: Stalled with the Deployment's own reason and message, one Warning, and back to
//! Ready once the cause is gone.

use k8s_openapi::api::core::v1::ResourceQuota;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::cluster::*;

/// A quota of `pods` pods in the test's namespace, once the quota controller counted it
/// (admission refuses every pod while a quota has no status yet).
async fn pod_quota(c: &Cluster, pods: &str) {
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "pods"},
        "spec": {"hard": {"pods": pods}},
    }))
    .expect("quota");
    c.api::<ResourceQuota>()
        .create(&PostParams::default(), &quota)
        .await
        .expect("create ResourceQuota");
    c.wait_for::<ResourceQuota>("pods", "the quota controller to count the quota", |q| {
        q.status.as_ref().and_then(|s| s.hard.as_ref()).is_some()
    })
    .await;
}

#[tokio::test]
async fn pods_a_quota_refuses_stall_the_object_with_the_deployments_message_until_it_is_raised() {
    let c = Cluster::with_operator("stalled").await;
    pod_quota(&c, "1").await;
    create_db_secret(&c, "users").await;
    scalable_api("users").replicas(3).create(&c).await;

    let stalled = c
        .wait_for_condition("users", "Stalled", "True", "FailedCreate")
        .await;
    let text = condition_message(&stalled, "Stalled");
    assert!(
        text.contains("exceeded quota"),
        "the ReplicaSet's refusal is quoted: {text}"
    );
    assert_eq!(
        condition(&stalled, "Ready"),
        Some(("False".into(), "FailedCreate".into()))
    );
    let warning = c.wait_for_event("users", "FailedCreate").await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let printed = c.kubectl(&[
        "get",
        "sapi",
        "users",
        "-o",
        "custom-columns=R:.status.conditions[?(@.type==\"Ready\")].reason",
        "--no-headers",
    ]);
    assert_eq!(printed.trim(), "FailedCreate");

    c.api::<ResourceQuota>()
        .patch(
            "pods",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"hard": {"pods": "10"}}})),
        )
        .await
        .expect("raise the quota");
    let recovered = c
        .wait_for_condition("users", "Ready", "True", "Available")
        .await;
    assert_eq!(
        condition(&recovered, "Stalled"),
        Some(("False".into(), "NotStalled".into()))
    );
    assert_eq!(
        c.events("users", "FailedCreate").await.len(),
        1,
        "one Warning for the stall, however often the status was written"
    );
}
