//! Autoscaling on and off: the exact order of the scale-subresource write, the HPA and the
//! Deployment writes.

use kube::api::Patch;
use operator::crd::ScalableApi;
use serde_json::{Value, json};

use crate::support::*;

fn replicas(d: &Value) -> Option<i64> {
    d["spec"]["replicas"].as_i64()
}

/// Acts as the HPA controller: scales the ScalableApi (the fake keeps /scale's effect on
/// `spec.replicas` only, so a merge patch of the object is the same write).
async fn hpa_scales_to(h: &Harness, n: i32) {
    h.api::<ScalableApi>()
        .patch(
            "users",
            &as_kcm(),
            &Patch::Merge(json!({"spec": {"replicas": n}})),
        )
        .await
        .expect("scale");
}

#[tokio::test]
async fn turning_autoscaling_on_writes_the_running_count_to_scale_before_the_hpa_exists() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    scalable_api("users").replicas(3).create(&h).await;
    h.wait_for(DEPLOYMENTS, "users", "3 replicas", |d| {
        replicas(d) == Some(3)
    })
    .await;
    h.settle().await;
    h.fake.clear_requests();

    // The manifest dropped `replicas` (the default 1 here, as in a cluster).
    patch_spec(
        &h,
        "users",
        json!({"replicas": null, "autoscaling": {"minReplicas": 2, "maxReplicas": 10}}),
    )
    .await;
    let hpa = h.wait_for(HPAS, "users", "the HPA", |_| true).await;
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], json!("ScalableApi"));
    h.settle().await;

    let requests = h.fake.requests();
    let position = |method: &str, suffix: &str| {
        requests
            .iter()
            .position(|r| r.method == method && r.path.ends_with(suffix))
    };
    let scaled = position("PATCH", "/scalableapis/users/scale").expect("a /scale write");
    let body = requests[scaled].body.clone().unwrap_or_default();
    assert_eq!(body["spec"]["replicas"], json!(3), "{body}");
    assert!(
        body["metadata"]["resourceVersion"].is_string(),
        "guarded by the resourceVersion reconciled: {body}"
    );
    let hpa_applied = position("PATCH", "/horizontalpodautoscalers/users").expect("HPA apply");
    assert!(
        scaled < hpa_applied,
        "spec.replicas holds the running count before any HPA reads it"
    );
    let sapi = h.object(SAPIS, "users").expect("ScalableApi");
    assert_eq!(sapi["spec"]["replicas"], json!(3));
    let history = h.fake.history(DEPLOYMENTS, NS, "users");
    assert!(
        history.iter().all(|d| replicas(d) == Some(3)),
        "the Deployment kept 3 in every stored version: {:?}",
        history.iter().map(replicas).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn turning_autoscaling_off_deletes_the_hpa_before_taking_replicas_back() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    scalable_api("users").autoscaling(2, 10).create(&h).await;
    h.wait_for(HPAS, "users", "the HPA", |_| true).await;
    h.wait_for(DEPLOYMENTS, "users", "deployment", |_| true)
        .await;
    hpa_scales_to(&h, 7).await;
    h.wait_for(DEPLOYMENTS, "users", "7 replicas", |d| {
        replicas(d) == Some(7)
    })
    .await;
    h.settle().await;
    h.fake.clear_requests();

    // The first DELETE of the HPA fails: the Deployment must keep the HPA's count meanwhile.
    h.fake
        .inject_fault("DELETE", "/horizontalpodautoscalers/users", 500, 1);
    patch_spec(&h, "users", json!({"autoscaling": null, "replicas": 4})).await;
    eventually("the failed DELETE to be counted", || {
        (h.metric("reconcile_errors_total", "delete_hpa") == 1).then_some(())
    })
    .await;
    let deployment_patches = |h: &Harness| {
        h.fake
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with("/deployments/users"))
            .count()
    };
    assert_eq!(
        deployment_patches(&h),
        0,
        "no Deployment apply before the HPA is gone"
    );
    assert_eq!(
        replicas(&h.object(DEPLOYMENTS, "users").expect("deployment")),
        Some(7)
    );

    // The retry deletes the HPA, then takes the count back.
    h.wait_gone(HPAS, "users").await;
    h.wait_for(DEPLOYMENTS, "users", "4 replicas", |d| {
        replicas(d) == Some(4)
    })
    .await;
    let requests = h.fake.requests();
    let position = |method: &str, suffix: &str| {
        requests
            .iter()
            .position(|r| r.method == method && r.path.ends_with(suffix))
    };
    let deleted = requests
        .iter()
        .rposition(|r| r.method == "DELETE" && r.path.ends_with("/horizontalpodautoscalers/users"))
        .expect("HPA DELETE");
    let applied = position("PATCH", "/deployments/users").expect("Deployment apply");
    assert!(
        deleted < applied,
        "the HPA goes before the Deployment apply"
    );
}
