//! Autoscaling with the real HPA controller and metrics-server (reading kwok's simulated
//! usage): our HPA scales the ScalableApi through its scale subresource, the operator writes
//! the Deployment's count; the hand-over from an older operator's HPA, and suspend.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::Resource;
use operator::apply::FIELD_MANAGER;
use operator::crd::ScalableApi;
use serde_json::json;

use crate::cluster::*;
use crate::history::History;

fn replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref()?.replicas
}

/// Managers owning `spec.replicas` of `obj`, each as (manager, operation, subresource).
fn replica_owners<K: Resource>(obj: &K) -> Vec<(String, String, String)> {
    obj.meta()
        .managed_fields
        .iter()
        .flatten()
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

/// True when only the operator's own manager owns the Deployment's `spec.replicas`.
fn only_the_operator_owns_replicas(d: &Deployment) -> bool {
    let owners = replica_owners(d);
    !owners.is_empty() && owners.iter().all(|(m, _, _)| m == FIELD_MANAGER)
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

/// Waits until our HPA scales the ScalableApi and the HPA controller acts on it.
async fn wait_for_hpa_on_the_scalable_api(c: &Cluster, name: &str) -> HorizontalPodAutoscaler {
    c.wait_for::<HorizontalPodAutoscaler>(name, "the HPA to scale the ScalableApi", |h| {
        h.spec
            .as_ref()
            .is_some_and(|s| s.scale_target_ref.kind == "ScalableApi")
            && h.status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "ScalingActive" && c.status == "True")
    })
    .await
}

#[tokio::test]
async fn turning_autoscaling_on_keeps_the_running_count_and_hands_it_to_the_hpa() {
    let c = Cluster::with_operator("handover").await;
    create_db_secret(&c, "users").await;
    scalable_api("users").replicas(3).create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let history = History::start(c.api::<Deployment>(), "users");
    c.wait_for::<Deployment>("users", "3 replicas", |d| replicas(d) == Some(3))
        .await;

    // `replicas` removed from the manifest reads as the schema default 1, under the
    // running 3: the operator keeps 3 and the HPA decides from there. (Scale-down is off:
    // a new HPA over idle pods would otherwise scale down to 2 at once, as it may.)
    patch_spec(
        &c,
        "users",
        json!({"replicas": null, "autoscaling": {"minReplicas": 2, "maxReplicas": 8,
            "behavior": {"scaleDown": {"selectPolicy": "Disabled"}}}}),
    )
    .await;
    let hpa = wait_for_hpa_on_the_scalable_api(&c, "users").await;
    assert_eq!(hpa.status.map(|s| s.current_replicas), Some(Some(3)));
    let sapi = c.get::<ScalableApi>("users").await.expect("ScalableApi");
    assert_eq!(
        sapi.spec.replicas, 3,
        "the running count went into spec.replicas"
    );
    assert_eq!(scale_subresource(&c, "users"), "3/3");
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;

    let versions = history.versions();
    let counts: Vec<Option<i32>> = versions.iter().map(replicas).collect();
    assert!(!counts.is_empty());
    assert!(
        counts.iter().all(|r| *r == Some(3)),
        "the Deployment kept 3 throughout: {counts:?}"
    );
    assert!(
        versions.iter().all(only_the_operator_owns_replicas),
        "nobody but the operator wrote the Deployment's count"
    );
}

#[tokio::test]
async fn the_hpa_scales_the_scalable_api_up_under_cpu_load_and_ready_never_flaps() {
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
    wait_for_hpa_on_the_scalable_api(&c, "users").await;
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
        .wait_for::<ScalableApi>("users", "the HPA to scale the ScalableApi to 6", |s| {
            s.spec.replicas == 6
        })
        .await;
    assert!(
        replica_owners(&scaled)
            .iter()
            .any(|(m, op, sub)| m == "kube-controller-manager" && op == "Update" && sub == "scale"),
        "the HPA controller wrote spec.replicas through /scale: {:?}",
        replica_owners(&scaled)
    );
    c.wait_for::<ScalableApi>("users", "6 ready replicas in status", |s| {
        s.status.as_ref().and_then(|st| st.ready_replicas) == Some(6)
            && s.status.as_ref().and_then(|st| st.desired_replicas) == Some(6)
    })
    .await;
    assert_eq!(scale_subresource(&c, "users"), "6/6");
    let d = c.get::<Deployment>("users").await.expect("Deployment");
    assert_eq!(replicas(&d), Some(6));

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
    assert!(
        versions
            .iter()
            .chain([&d])
            .all(only_the_operator_owns_replicas),
        "only the operator wrote the Deployment's count"
    );
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
    assert_eq!(sapi.spec.replicas, 4);
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
    // Let the HPA settle first, so any change to the Deployment below would be the operator's.
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
    // The schema default 1 was brought within the bounds, so /scale tells the truth.
    let sapi = c.get::<ScalableApi>("users").await.expect("ScalableApi");
    assert_eq!(sapi.spec.replicas, 3);
    assert_eq!(scale_subresource(&c, "users"), "3/3");
    wait_for_hpa_on_the_scalable_api(&c, "users").await;
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
    let hpa = wait_for_hpa_on_the_scalable_api(&c, "users").await;
    assert_eq!(hpa.status.map(|s| s.desired_replicas), Some(2));
    assert_eq!(scale_subresource(&c, "users"), "2/2");
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
}

#[tokio::test]
async fn a_scale_correction_from_a_stale_read_is_refused_and_the_newer_count_survives() {
    use operator::error::ErrorClass;
    // No operator here: the correction itself against the real API server.
    let c = Cluster::new("stalescale").await;
    let stale = scalable_api("users").autoscaling(2, 8).create(&c).await;
    c.kubectl(&["scale", "scalableapi/users", "--replicas=5"]);

    let refused = operator::apply::set_scale(&c.client, &c.ns, &stale, 2)
        .await
        .expect_err("the resourceVersion precondition refuses a write from a stale read");
    assert_eq!(refused.class(), ErrorClass::Conflict, "{refused}");
    let live = c.get::<ScalableApi>("users").await.expect("ScalableApi");
    assert_eq!(live.spec.replicas, 5, "kubectl's count survives");

    operator::apply::set_scale(&c.client, &c.ns, &live, 6)
        .await
        .expect("a write from a fresh read succeeds");
    let written = c.get::<ScalableApi>("users").await.expect("ScalableApi");
    assert_eq!(written.spec.replicas, 6);
    assert!(
        replica_owners(&written)
            .iter()
            .any(|(m, op, sub)| m == FIELD_MANAGER && op == "Update" && sub == "scale"),
        "{:?}",
        replica_owners(&written)
    );
}

#[tokio::test]
async fn an_older_operators_hpa_on_the_deployment_is_retargeted_without_changing_the_count() {
    let mut c = Cluster::with_operator("migrate").await;
    create_db_secret(&c, "users").await;
    scalable_api("users")
        .autoscaling(2, 8)
        .with(
            "/spec/autoscaling/behavior",
            json!({"scaleDown": {"selectPolicy": "Disabled"}}),
        )
        .create(&c)
        .await;
    wait_for_hpa_on_the_scalable_api(&c, "users").await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;

    // What an operator from before this design leaves: its HPA scales the Deployment, which
    // runs the HPA's count (5; scale-down is off, so the HPA keeps it there).
    c.stop_operator().await;
    c.kubectl(&[
        "patch",
        "hpa/users",
        "--type=merge",
        "-p",
        r#"{"spec":{"scaleTargetRef":{"apiVersion":"apps/v1","kind":"Deployment","name":"users"}}}"#,
    ]);
    c.kubectl(&["scale", "deployment/users", "--replicas=5"]);
    c.wait_for::<Deployment>("users", "5 replicas", |d| replicas(d) == Some(5))
        .await;
    let history = History::start(c.api::<Deployment>(), "users");

    c.start_operator().await;
    wait_for_hpa_on_the_scalable_api(&c, "users").await;
    c.wait_for::<ScalableApi>("users", "spec.replicas 5", |s| s.spec.replicas == 5)
        .await;
    // Restarted without its records, the operator waits for the Deployment controller to
    // report the generation it saw before calling the stack Ready again.
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    assert_eq!(scale_subresource(&c, "users"), "5/5");

    // Autoscaling off: the count the HPA left stays (no CEL rule needed any more).
    patch_spec(&c, "users", json!({"autoscaling": null})).await;
    c.wait_gone::<HorizontalPodAutoscaler>("users").await;
    c.wait_for::<ScalableApi>("users", "the spec without autoscaling reconciled", |s| {
        s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation
    })
    .await;
    let counts: Vec<Option<i32>> = history.versions().iter().map(replicas).collect();
    assert!(
        counts.iter().all(|r| *r == Some(5)),
        "the Deployment kept 5 through the retargeting and the removal: {counts:?}"
    );
    let d = c.get::<Deployment>("users").await.expect("Deployment");
    assert_eq!(replicas(&d), Some(5));
}

#[tokio::test]
async fn an_hpa_that_targets_the_scalable_api_itself_scales_the_stack() {
    // What a KEDA ScaledObject (or a custom-metrics HPA) makes: an HPA whose scaleTargetRef
    // is the ScalableApi, scaling it through its scale subresource.
    let c = Cluster::with_operator("external").await;
    create_db_secret(&c, "users").await;
    // No spec.replicas in the manifest: the schema default 1 is what /scale reads.
    scalable_api("users").without_replicas().create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    assert_eq!(scale_subresource(&c, "users"), "1/1");
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
            s.spec.replicas == 3 && s.status.as_ref().and_then(|st| st.ready_replicas) == Some(3)
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
