//! HorizontalPodAutoscaler `<name>` (autoscaling/v2), only when `spec.autoscaling` is set.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use kube::ResourceExt;

use super::child_meta;
use crate::crd::ScalableApi;

pub fn hpa(sapi: &ScalableApi) -> Option<HorizontalPodAutoscaler> {
    let a = sapi.spec.autoscaling.as_ref()?;
    let mut metrics = vec![utilization("cpu", a.target_cpu_utilization_percentage)];
    if let Some(mem) = a.target_memory_utilization_percentage {
        metrics.push(utilization("memory", mem));
    }
    Some(HorizontalPodAutoscaler {
        metadata: child_meta(sapi, sapi.name_any()),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: sapi.name_any(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(metrics),
            // Verbatim: the user's scaling policy is theirs, not ours to reinterpret.
            behavior: a.behavior.clone(),
        }),
        ..HorizontalPodAutoscaler::default()
    })
}

fn utilization(resource: &str, percent: i32) -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: resource.into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(percent),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }
}
