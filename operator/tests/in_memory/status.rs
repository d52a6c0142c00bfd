//! Status writes: only on change, invalid specs, error back-off.

use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn an_unchanged_object_writes_no_status_and_changes_no_child() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    scalable_api("users").create(&h).await;
    h.wait_for_status("users").await;
    h.settle().await;
    let versions = |h: &Harness| {
        [
            (SAPIS, "users"),
            (DEPLOYMENTS, "users"),
            (SERVICES, "users"),
            (CONFIGMAPS, "users-config"),
            (PDBS, "users"),
        ]
        .map(|(r, n)| {
            h.object(r, n)
                .map(|o| o["metadata"]["resourceVersion"].clone())
        })
    };
    let before = versions(&h);
    let reconciles = h.reconciliations();
    h.fake.clear_requests();

    // A label on the ScalableApi triggers a reconcile without changing anything we manage.
    let touch = json!({"metadata": {"labels": {"touched": "yes"}}});
    h.api::<operator::crd::ScalableApi>()
        .patch("users", &PatchParams::default(), &Patch::Merge(touch))
        .await
        .expect("touch");
    eventually("a reconcile after the touch", || {
        (h.reconciliations() > reconciles).then_some(())
    })
    .await;
    h.settle().await;

    let requests = h.fake.requests();
    let child_writes: Vec<_> = requests
        .iter()
        .filter(|r| r.method != "GET" && !r.path.contains("/scalableapis/"))
        .filter(|r| !r.path.contains("/events"))
        .collect();
    assert!(
        requests
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with("/deployments/users")),
        "the reconcile read the children"
    );
    let unwanted_reads: Vec<_> = requests
        .iter()
        .filter(|r| r.path.contains("/horizontalpodautoscalers/") || r.path.contains("/ingresses/"))
        .collect();
    assert!(
        unwanted_reads.is_empty(),
        "children the spec does not ask for, seen absent before, are not read again: {unwanted_reads:?}"
    );
    assert!(
        child_writes.is_empty(),
        "an unchanged child is not written, got {child_writes:?}"
    );
    let status_writes: Vec<_> = requests
        .iter()
        .filter(|r| r.path.ends_with("/status"))
        .collect();
    assert!(
        status_writes.is_empty(),
        "no status write expected, got {status_writes:?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.method != "POST" || !r.path.contains("/events")),
        "no Event expected"
    );
    let after = versions(&h);
    assert_eq!(
        before[1..],
        after[1..],
        "children keep their resourceVersion"
    );
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_not_retried_in_a_loop() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    // minReplicas above maxReplicas: the CEL rule rejects this in a cluster; the operator
    // must cope when it gets through anyway (older CRD, disabled validation).
    scalable_api("users").autoscaling(5, 2).create(&h).await;
    eventually("Ready=False/InvalidSpec", || {
        (condition(&h, "users", "Ready")?.1 == "InvalidSpec").then_some(())
    })
    .await;
    wait_for_event(&h, "an InvalidSpec Event", "users", "InvalidSpec").await;
    let sapi = h.object(SAPIS, "users").expect("sapi");
    let ready = sapi["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .expect("ready");
    assert!(
        ready["message"]
            .as_str()
            .unwrap_or_default()
            .contains("must be less than or equal to spec.autoscaling.maxReplicas"),
        "{ready}"
    );
    assert!(h.object(DEPLOYMENTS, "users").is_none());
    h.settle().await;
    let settled = h.reconciliations();
    h.settle().await;
    assert_eq!(
        h.reconciliations(),
        settled,
        "no reconcile without a change"
    );
    assert!(h.metric("reconciliations_total", "invalid_spec") >= 1);
}

#[tokio::test]
async fn a_failed_apply_is_retried_and_counted_by_reason() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    h.fake.inject_fault("PATCH", "/deployments/users", 500, 1);
    scalable_api("users").create(&h).await;
    eventually("the failure to be counted", || {
        (h.metric("reconcile_errors_total", "apply_deployment") == 1).then_some(())
    })
    .await;
    // A transient failure is retried quietly: no ApplyFailed in status.
    assert_ne!(
        condition(&h, "users", "Ready").map(|c| c.1).as_deref(),
        Some("ApplyFailed")
    );
    // error_policy requeues (transient back-off); any new watch event also retries it.
    h.wait_for(DEPLOYMENTS, "users", "deployment after the retry", |_| true)
        .await;
    h.wait_for_status("users").await;
}

/// The Ready condition's message of the stored ScalableApi.
fn ready_message(h: &Harness, name: &str) -> String {
    h.object(SAPIS, name)
        .and_then(|o| {
            o["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?["message"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_child_the_api_server_refuses_is_a_condition_and_an_event_until_fixed() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    // Every apply of the Deployment is refused, like a memory request above its limit.
    h.fake
        .inject_fault("PATCH", "/deployments/users", 422, usize::MAX);
    scalable_api("users").create(&h).await;
    wait_for_condition(&h, "users", "Ready", "False", "ApplyFailed").await;
    assert_eq!(
        condition(&h, "users", "Stalled"),
        Some(("True".into(), "ApplyFailed".into()))
    );
    let message = ready_message(&h, "users");
    assert!(
        message.contains("Deployment") && message.contains("422 Invalid"),
        "{message}"
    );
    assert!(
        message.contains("injected fault"),
        "the server's message: {message}"
    );
    let event = wait_for_event(&h, "an ApplyFailed Event", "users", "ApplyFailed").await;
    assert_eq!(event["type"], json!("Warning"));

    // The error still reaches error_policy: counted, then a long back-off, no hot loop.
    assert!(h.metric("reconcile_errors_total", "apply_deployment") >= 1);
    h.settle().await;
    let settled = h.reconciliations();
    h.settle().await;
    assert_eq!(h.reconciliations(), settled, "backing off, not looping");
    assert_eq!(events_with_reason(&h, "users", "ApplyFailed"), 1);

    // The fix (here: the fault cleared, then a spec change) brings the Ready path back.
    h.fake.clear_faults();
    patch_spec(&h, "users", json!({"replicas": 3})).await;
    h.wait_for(DEPLOYMENTS, "users", "the Deployment", |d| {
        d["spec"]["replicas"] == json!(3)
    })
    .await;
    wait_for_condition(&h, "users", "Ready", "False", "RollingOut").await;
    set_deployment_status(&h, "users", 3).await;
    wait_for_condition(&h, "users", "Ready", "True", "Available").await;
    wait_for_event(&h, "an Available Event", "users", "Available").await;
}

#[tokio::test]
async fn a_refused_hpa_is_reported_with_its_kind() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    // Like an invalid `behavior`: the Deployment goes through, the HPA does not.
    h.fake
        .inject_fault("PATCH", "/horizontalpodautoscalers/users", 422, usize::MAX);
    scalable_api("users").autoscaling(2, 5).create(&h).await;
    eventually("Ready=False/ApplyFailed", || {
        (condition(&h, "users", "Ready")?.1 == "ApplyFailed").then_some(())
    })
    .await;
    let message = ready_message(&h, "users");
    assert!(message.contains("HorizontalPodAutoscaler"), "{message}");
    assert!(h.object(DEPLOYMENTS, "users").is_some());
    wait_for_event(&h, "an ApplyFailed Event", "users", "ApplyFailed").await;
}

#[tokio::test]
async fn an_http_route_without_the_gateway_api_is_a_condition_and_one_warning() {
    // The fake serves no Gateway API, like a cluster without its CRDs (the real control
    // plane of the tests has them installed).
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    let mut sapi = scalable_api("users").build();
    sapi.spec.http_route =
        serde_json::from_value(json!({"parentRefs": [{"name": "public"}]})).expect("httpRoute");
    h.api::<operator::crd::ScalableApi>()
        .create(&Default::default(), &sapi)
        .await
        .expect("create");
    eventually("HTTPRoute=False/GatewayAPINotInstalled", || {
        (condition(&h, "users", "HTTPRoute")?.1 == "GatewayAPINotInstalled").then_some(())
    })
    .await;
    wait_for_event(&h, "the Warning", "users", "GatewayAPINotInstalled").await;
    assert!(
        h.object(DEPLOYMENTS, "users").is_some(),
        "everything else is applied"
    );
    assert!(
        h.fake
            .requests()
            .iter()
            .all(|r| !r.path.contains("httproutes")),
        "no request for an API the cluster does not serve"
    );
}

#[tokio::test]
async fn a_pod_monitor_without_prometheus_operator_is_a_condition_and_one_warning() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    let mut sapi = scalable_api("users").build();
    sapi.spec.monitoring = serde_json::from_value(json!({"podMonitor": true})).expect("monitoring");
    h.api::<operator::crd::ScalableApi>()
        .create(&Default::default(), &sapi)
        .await
        .expect("create");
    eventually("PodMonitor=False/PrometheusOperatorNotInstalled", || {
        (condition(&h, "users", "PodMonitor")?.1 == "PrometheusOperatorNotInstalled").then_some(())
    })
    .await;
    wait_for_event(&h, "the Warning", "users", "PrometheusOperatorNotInstalled").await;
    assert!(h.object(DEPLOYMENTS, "users").is_some());
    assert!(
        h.fake
            .requests()
            .iter()
            .all(|r| !r.path.contains("podmonitors")),
        "no request for an API the cluster does not serve"
    );
}
