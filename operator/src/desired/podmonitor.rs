//! PodMonitor `<name>` (prometheus-operator), only when `spec.monitoring.podMonitor` is true:
//! `/metrics` on the admin port of every pod, with the instance label on every series.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::{child_meta, labels};
use crate::crd::ScalableApi;
use crate::prometheus_operator::{PodMetricsEndpoint, PodMonitor, PodMonitorSpec};

pub fn pod_monitor(sapi: &ScalableApi) -> Option<PodMonitor> {
    if !sapi.pod_monitor_wanted() {
        return None;
    }
    let mut monitor = PodMonitor::new(
        &sapi.name_any(),
        PodMonitorSpec {
            selector: LabelSelector {
                match_labels: Some(labels::selector(sapi)),
                ..LabelSelector::default()
            },
            pod_metrics_endpoints: vec![PodMetricsEndpoint {
                port: "admin".into(),
                path: "/metrics".into(),
            }],
            pod_target_labels: vec![labels::INSTANCE.into()],
        },
    );
    monitor.metadata = child_meta(sapi, sapi.name_any());
    let extra = sapi
        .spec
        .monitoring
        .as_ref()
        .and_then(|m| m.pod_monitor_labels.clone())
        .unwrap_or_default();
    if let Some(ours) = monitor.metadata.labels.as_mut() {
        // Ours win: the owns-watch finds children by the managed-by label.
        for (k, v) in extra {
            ours.entry(k).or_insert(v);
        }
    }
    Some(monitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MonitoringSpec;

    fn wanted(labels: Option<[(&str, &str); 1]>) -> ScalableApi {
        let mut sapi = ScalableApi::test();
        sapi.spec.monitoring = Some(MonitoringSpec {
            pod_monitor: true,
            pod_monitor_labels: labels.map(|l| {
                l.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
        });
        sapi
    }

    #[test]
    fn no_pod_monitor_unless_asked() {
        assert!(pod_monitor(&ScalableApi::test()).is_none());
        let mut off = wanted(None);
        off.spec.monitoring.as_mut().unwrap().pod_monitor = false;
        assert!(pod_monitor(&off).is_none());
    }

    #[test]
    fn scrapes_the_admin_port_of_the_pods_of_this_instance() {
        let m = pod_monitor(&wanted(Some([("release", "kube-prometheus")]))).expect("monitor");
        assert_eq!(m.metadata.name.as_deref(), Some("users"));
        let labels_of = m.metadata.labels.clone().unwrap();
        assert_eq!(
            labels_of.get("release").map(String::as_str),
            Some("kube-prometheus")
        );
        assert_eq!(
            labels_of.get(labels::MANAGED_BY).map(String::as_str),
            Some(labels::MANAGER)
        );
        assert_eq!(
            m.spec.selector.match_labels,
            Some(labels::selector(&ScalableApi::test()))
        );
        assert_eq!(
            m.spec.pod_metrics_endpoints,
            [PodMetricsEndpoint {
                port: "admin".into(),
                path: "/metrics".into()
            }]
        );
        assert_eq!(m.spec.pod_target_labels, [labels::INSTANCE]);
        let json = serde_json::to_value(&m).expect("json");
        assert_eq!(json["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(json["spec"]["podMetricsEndpoints"][0]["port"], "admin");
    }
}
