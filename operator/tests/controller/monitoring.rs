//! Metrics out: the PodMonitor, on the prometheus-operator CRD that scripts/cluster.sh
//! installs into the control plane (no prometheus-operator runs: the object is only stored).

use kube::ResourceExt;
use operator::crd::ScalableApi;
use operator::prometheus_operator::PodMonitor;
use serde_json::json;

use crate::cluster::*;

#[tokio::test]
async fn a_pod_monitor_scrapes_the_admin_port_and_goes_when_turned_off() {
    let c = Cluster::with_operator("podmonitor").await;
    create_db_secret(&c, "users").await;
    let sapi = scalable_api("users")
        .with(
            "/spec/monitoring",
            json!({"podMonitor": true, "podMonitorLabels": {"release": "kube-prometheus"}}),
        )
        .create(&c)
        .await;
    let monitor = c
        .wait_for::<PodMonitor>("users", "the PodMonitor", |_| true)
        .await;
    assert!(
        monitor
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == sapi.metadata.uid.as_ref())
    );
    assert_eq!(
        monitor.labels().get("release").map(String::as_str),
        Some("kube-prometheus")
    );
    assert_eq!(monitor.spec.pod_metrics_endpoints[0].port, "admin");
    assert_eq!(monitor.spec.pod_metrics_endpoints[0].path, "/metrics");
    // The endpoint names a port the pods really have.
    let d = c
        .get::<k8s_openapi::api::apps::v1::Deployment>("users")
        .await
        .expect("Deployment");
    let api = &d.spec.unwrap().template.spec.unwrap().containers[0];
    assert!(
        api.ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some("admin") && p.container_port == 9090)
    );
    c.wait_for_condition("users", "PodMonitor", "True", "PrometheusOperatorServed")
        .await;

    patch_spec(&c, "users", json!({"monitoring": {"podMonitor": false}})).await;
    c.wait_gone::<PodMonitor>("users").await;
    let after = c
        .wait_for::<ScalableApi>("users", "the change reconciled", |s| {
            s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation
        })
        .await;
    assert_eq!(condition(&after, "PodMonitor"), None);
}
