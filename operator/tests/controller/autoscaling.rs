//! Autoscaling with the real HPA controller and metrics-server (reading kwok's simulated
//! usage), the replica hand-over, the scale subresource and suspend.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::ResourceExt;
use operator::apply::{FIELD_MANAGER, HANDOVER_MANAGER};
use operator::crd::ScalableApi;
use serde_json::json;

use crate::cluster::*;
use crate::history::History;

fn replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref()?.replicas
}

/// Managers owning `spec.replicas`, each as (manager, operation, subresource).
fn replica_owners(d: &Deployment) -> Vec<(String, String, String)> {
    d.managed_fields()
        .iter()
        .filter(|e| {
            e.fields_v1
                .as_ref()
                .and_then(|f| f.0.pointer("/f:spec/f:replicas"))
                .is_some()
        })
        .map(|e| {
            (
                e.manager.clone().unwrap_or_default(),
                e.operation.clone().unwrap_or_default(),
                e.subresource.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// `spec.replicas/status.replicas` of the ScalableApi's scale subresource, as kubectl sees it.
fn scale_subresource(c: &Cluster, name: &str) -> String {
    c.kubectl(&[
        "get",
        &format!("scalableapi/{name}"),
        "--subresource=scale",
        "-o",
        "jsonpath={.spec.replicas}/{.status.replicas}",
    ])
}

#[tokio::test]
async fn turning_autoscaling_on_hands_replicas_to_the_hpa_without_dropping_below_the_count() {
    let c = Cluster::with_operator("handover").await;
    create_db_secret(&c, "users").await;
    scalable_api("users").replicas(3).create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let history = History::start(c.api::<Deployment>(), "users");
    c.wait_for::<Deployment>("users", "3 replicas owned by the operator", |d| {
        replicas(d) == Some(3)
    })
    .await;

    // minReplicas above the current count: the HPA controller must scale up through the
    // Deployment's /scale subresource, which is the write that takes the field over.
    patch_spec(
        &c,
        "users",
        json!({"replicas": null, "autoscaling": {"minReplicas": 4, "maxReplicas": 8}}),
    )
    .await;
    let d = c
        .wait_for::<Deployment>("users", "the HPA controller to scale to 4", |d| {
            replicas(d) == Some(4)
        })
        .await;
    let owners = replica_owners(&d);
    assert_eq!(
        owners,
        vec![(
            "kube-controller-manager".to_owned(),
            "Update".to_owned(),
            "scale".to_owned()
        )],
        "only the HPA controller's /scale write owns spec.replicas; the hand-over manager is gone"
    );
    assert!(
        d.managed_fields()
            .iter()
            .all(|e| e.manager.as_deref() != Some(HANDOVER_MANAGER))
    );
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;

    let counts: Vec<Option<i32>> = history.versions().iter().map(replicas).collect();
    assert!(!counts.is_empty());
    assert!(
        counts.iter().all(|r| r.is_some_and(|r| r >= 3)),
        "spec.replicas dropped below 3 during the hand-over: {counts:?}"
    );
}

#[tokio::test]
async fn the_hpa_scales_up_under_cpu_load_and_the_operator_never_writes_replicas() {
    let c = Cluster::with_operator("cpuload").await;
    create_db_secret(&c, "users").await;
    scalable_api("users")
        .autoscaling(2, 6)
        .with(
            "/spec/autoscaling/targetCPUUtilizationPercentage",
            json!(50),
        )
        .create(&c)
        .await;
    c.wait_for::<HorizontalPodAutoscaler>("users", "the HPA", |_| true)
        .await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;

    // Load: kwok reports 200m of CPU per container of every pod (requests: 100m + 50m),
    // set on the pod template by another manager, which the operator leaves alone.
    let history = History::start(c.api::<Deployment>(), "users");
    let statuses = History::start(c.api::<ScalableApi>(), "users");
    c.kubectl(&[
        "patch",
        "deployment/users",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"metadata":{"annotations":{"kwok.x-k8s.io/usage-cpu":"200m"}}}}}"#,
    ]);
    let scaled = c
        .wait_for::<Deployment>("users", "the HPA to scale up to 6", |d| {
            replicas(d) == Some(6)
        })
        .await;
    c.wait_for::<HorizontalPodAutoscaler>("users", "the HPA to report 6", |h| {
        h.status.as_ref().map(|s| s.desired_replicas) == Some(6)
    })
    .await;
    c.wait_for::<ScalableApi>("users", "status.desiredReplicas 6", |s| {
        s.status.as_ref().and_then(|st| st.desired_replicas) == Some(6)
    })
    .await;

    c.wait_for::<ScalableApi>("users", "6 ready replicas in status", |s| {
        s.status.as_ref().and_then(|st| st.ready_replicas) == Some(6)
    })
    .await;
    // The annotation rolled the pods out first (Ready=False, RollingOut: right); from the
    // HPA's first scale on, Ready stays True and no Warning is sent.
    let scaling: Vec<(String, String)> = statuses
        .versions()
        .iter()
        .filter(|s| s.status.as_ref().and_then(|st| st.desired_replicas) > Some(2))
        .filter_map(|s| condition(s, "Ready"))
        .collect();
    assert!(!scaling.is_empty());
    assert!(
        scaling.iter().all(|(status, _)| status == "True"),
        "Ready flapped while the HPA scaled up: {scaling:?}"
    );
    assert!(c.events("users", "Unavailable").await.is_empty());

    let versions = history.versions();
    let counts: Vec<i32> = versions.iter().filter_map(replicas).collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "the count only grew while the HPA scaled up: {counts:?}"
    );
    // The new Deployment started at minReplicas under the hand-over manager; from the HPA's
    // first scale on, only the HPA controller owns the count.
    for d in versions.iter().chain([&scaled]) {
        let owners = replica_owners(d);
        assert!(
            owners.iter().all(|(m, _, _)| m != FIELD_MANAGER),
            "the operator's own manager owned spec.replicas at resourceVersion {:?}: {owners:?}",
            d.resource_version(),
        );
        if replicas(d) > Some(2) {
            assert!(
                owners.iter().all(|(m, _, _)| m != HANDOVER_MANAGER),
                "the hand-over manager still owned spec.replicas after the HPA scaled: {owners:?}"
            );
        }
    }
}

#[tokio::test]
async fn kubectl_scale_works_through_the_scale_subresource() {
    let c = Cluster::with_operator("scale").await;
    create_db_secret(&c, "users").await;
    scalable_api("users").replicas(2).create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;

    c.kubectl(&["scale", "scalableapi/users", "--replicas=4"]);
    let sapi = c
        .wait_for::<ScalableApi>("users", "4 ready replicas", |s| {
            s.status.as_ref().and_then(|st| st.ready_replicas) == Some(4)
        })
        .await;
    assert_eq!(sapi.spec.replicas, Some(4));
    let d = c.get::<Deployment>("users").await.expect("Deployment");
    assert_eq!(replicas(&d), Some(4));
    let scale = scale_subresource(&c, "users");
    assert_eq!(scale, "4/4");
}

#[tokio::test]
async fn suspend_removes_the_hpa_and_leaves_the_deployment_alone_until_resumed() {
    let c = Cluster::with_operator("suspend").await;
    create_db_secret(&c, "users").await;
    scalable_api("users").autoscaling(2, 5).create(&c).await;
    // The HPA raises the new Deployment from 1 to minReplicas; let it settle first, so any
    // change to the Deployment below would be the operator's.
    c.wait_for::<HorizontalPodAutoscaler>("users", "the HPA to settle at 2", |h| {
        h.status
            .as_ref()
            .is_some_and(|s| s.desired_replicas == 2 && s.current_replicas == Some(2))
    })
    .await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let before = c.get::<Deployment>("users").await.expect("Deployment");

    patch_spec(
        &c,
        "users",
        json!({"suspend": true, "image": "registry.test/api-server:9.9.9"}),
    )
    .await;
    c.wait_for_condition("users", "Paused", "True", "Suspended")
        .await;
    c.wait_gone::<HorizontalPodAutoscaler>("users").await;
    c.wait_for_event("users", "Suspended").await;
    let during = c.get::<Deployment>("users").await.expect("Deployment");
    assert_eq!(
        during.metadata.generation, before.metadata.generation,
        "the Deployment's spec is untouched while suspended"
    );

    patch_spec(&c, "users", json!({"suspend": false})).await;
    c.wait_for::<HorizontalPodAutoscaler>("users", "the HPA back", |_| true)
        .await;
    c.wait_for::<Deployment>("users", "the new image", |d| {
        serde_json::to_string(d).is_ok_and(|j| j.contains("api-server:9.9.9"))
    })
    .await;
    c.wait_for_event("users", "Resumed").await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
}

#[tokio::test]
async fn a_new_object_with_autoscaling_never_runs_below_min_replicas() {
    let c = Cluster::with_operator("startmin").await;
    create_db_secret(&c, "users").await;
    let history = History::start(c.api::<Deployment>(), "users");
    scalable_api("users").autoscaling(3, 6).create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let counts: Vec<Option<i32>> = history.versions().iter().map(replicas).collect();
    assert!(!counts.is_empty());
    assert!(
        counts.iter().all(|r| *r == Some(3)),
        "the Deployment was created at minReplicas and stayed there: {counts:?}"
    );
    let d = c.get::<Deployment>("users").await.expect("Deployment");
    assert!(
        replica_owners(&d)
            .iter()
            .all(|(m, _, _)| m != FIELD_MANAGER),
        "our own manager let go of spec.replicas: {:?}",
        replica_owners(&d)
    );
}

#[tokio::test]
async fn zero_replicas_then_autoscaling_hands_the_hpa_min_replicas() {
    let c = Cluster::with_operator("zero").await;
    create_db_secret(&c, "users").await;
    scalable_api("users").replicas(0).create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "ScaledToZero")
        .await;
    patch_spec(
        &c,
        "users",
        json!({"replicas": null, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}),
    )
    .await;
    c.wait_for::<Deployment>("users", "2 replicas", |d| replicas(d) == Some(2))
        .await;
    // An HPA that found 0 would say ScalingActive=False (ScalingDisabled) and never act.
    let hpa = c
        .wait_for::<HorizontalPodAutoscaler>("users", "the HPA to be active", |h| {
            h.status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "ScalingActive" && c.status == "True")
        })
        .await;
    assert_eq!(hpa.status.map(|s| s.desired_replicas), Some(2));
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
}

#[tokio::test]
async fn a_pin_from_a_stale_read_is_refused_and_the_newer_count_survives() {
    use operator::error::ErrorClass;
    // No operator here: the pin itself against the real API server.
    let c = Cluster::new("pin").await;
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "users"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "users"}},
            "template": {"metadata": {"labels": {"app": "users"}},
                "spec": {"containers": [{"name": "api", "image": DEFAULT_TEST_IMAGE}]}},
        },
    }))
    .expect("deployment");
    let api = c.api::<Deployment>();
    let stale = api
        .create(&Default::default(), &d)
        .await
        .expect("create the Deployment");
    c.kubectl(&["scale", "deployment/users", "--replicas=5"]);

    let refused = operator::apply::pin_replicas(&api, &stale, 3)
        .await
        .expect_err("the resourceVersion precondition refuses a pin from a stale read");
    assert_eq!(refused.class(), ErrorClass::Conflict, "{refused}");
    let live = c.get::<Deployment>("users").await.expect("Deployment");
    assert_eq!(replicas(&live), Some(5), "kubectl's count survives");
    // The retry reads again and pins what it read. Status writes of the Deployment
    // controller also move the resourceVersion, so a retry can meet another 409.
    let mut pinned = None;
    for _ in 0..20 {
        let fresh = c.get::<Deployment>("users").await.expect("Deployment");
        match operator::apply::pin_replicas(&api, &fresh, 5).await {
            Ok(d) => {
                pinned = Some(d);
                break;
            }
            Err(e) => assert_eq!(e.class(), ErrorClass::Conflict, "{e}"),
        }
    }
    let pinned = pinned.expect("a pin from a fresh read succeeds within 20 tries");
    assert_eq!(replicas(&pinned), Some(5));
}

#[tokio::test]
async fn an_hpa_that_targets_the_scalable_api_itself_scales_the_stack() {
    // What a KEDA ScaledObject (or a custom-metrics HPA) makes: an HPA whose scaleTargetRef
    // is the ScalableApi, scaling it through its scale subresource.
    let c = Cluster::with_operator("external").await;
    create_db_secret(&c, "users").await;
    scalable_api("users").replicas(1).create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "users-external"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "scalable.dev/v1alpha1", "kind": "ScalableApi", "name": "users"},
            "minReplicas": 3,
            "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}],
        },
    }))
    .expect("hpa");
    c.api::<HorizontalPodAutoscaler>()
        .create(&Default::default(), &hpa)
        .await
        .expect("create the external HPA");

    // Below its minReplicas, the HPA raises the count through /scale at once.
    let scaled = c
        .wait_for::<ScalableApi>("users", "3 ready replicas in status", |s| {
            s.spec.replicas == Some(3)
                && s.status.as_ref().and_then(|st| st.ready_replicas) == Some(3)
        })
        .await;
    assert_eq!(
        condition(&scaled, "Ready").map(|c| c.0).as_deref(),
        Some("True")
    );
    let d = c.get::<Deployment>("users").await.expect("Deployment");
    assert_eq!(replicas(&d), Some(3));
    let scale = scale_subresource(&c, "users");
    assert_eq!(scale, "3/3");
    let external = c
        .wait_for::<HorizontalPodAutoscaler>("users-external", "the HPA to see 3", |h| {
            h.status.as_ref().and_then(|s| s.current_replicas) == Some(3)
        })
        .await;
    assert_eq!(external.status.map(|s| s.desired_replicas), Some(3));
}
