//! HorizontalPodAutoscaler `<name>` (autoscaling/v2), only when `spec.autoscaling` is set.
//!
//! It scales the ScalableApi through its scale subresource (as Argo Rollouts' HPAs scale a
//! Rollout), so `spec.replicas` always holds the live count and the operator alone writes
//! the Deployment's.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use kube::{Resource, ResourceExt};

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
                api_version: Some(ScalableApi::api_version(&()).into_owned()),
                kind: ScalableApi::kind(&()).into_owned(),
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::autoscaling::v2::{
        HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior,
    };

    use super::*;

    fn spec(sapi: &ScalableApi) -> HorizontalPodAutoscalerSpec {
        hpa(sapi).and_then(|h| h.spec).expect("hpa spec")
    }

    #[test]
    fn no_hpa_without_autoscaling() {
        assert!(hpa(&ScalableApi::test().with_replicas(3)).is_none());
    }

    #[test]
    fn targets_the_scalable_api_within_min_and_max() {
        let h = hpa(&ScalableApi::test().with_autoscaling(3, 20)).expect("hpa");
        assert_eq!(h.metadata.name.as_deref(), Some("users"));
        let s = h.spec.expect("spec");
        assert_eq!(s.min_replicas, Some(3));
        assert_eq!(s.max_replicas, 20);
        assert_eq!(s.scale_target_ref.kind, "ScalableApi");
        assert_eq!(s.scale_target_ref.name, "users");
        assert_eq!(
            s.scale_target_ref.api_version.as_deref(),
            Some("scalable.dev/v1alpha1")
        );
    }

    #[test]
    fn scales_on_cpu_utilisation_only_by_default() {
        let metrics = spec(
            &ScalableApi::test()
                .with_autoscaling(1, 5)
                .with_cpu_target(55),
        )
        .metrics
        .expect("metrics");
        assert_eq!(metrics.len(), 1);
        let r = metrics[0].resource.as_ref().expect("resource");
        assert_eq!(metrics[0].type_, "Resource");
        assert_eq!(r.name, "cpu");
        assert_eq!(r.target.type_, "Utilization");
        assert_eq!(r.target.average_utilization, Some(55));
    }

    #[test]
    fn adds_memory_utilisation_when_asked() {
        let metrics = spec(
            &ScalableApi::test()
                .with_autoscaling(1, 5)
                .with_memory_target(80),
        )
        .metrics
        .expect("metrics");
        let names: Vec<_> = metrics
            .iter()
            .filter_map(|m| m.resource.as_ref())
            .map(|r| (r.name.as_str(), r.target.average_utilization))
            .collect();
        assert_eq!(names, [("cpu", Some(70)), ("memory", Some(80))]);
    }

    #[test]
    fn passes_behavior_through_verbatim() {
        let behavior = HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules {
                stabilization_window_seconds: Some(300),
                policies: Some(vec![HPAScalingPolicy {
                    type_: "Pods".into(),
                    value: 1,
                    period_seconds: 60,
                }]),
                ..HPAScalingRules::default()
            }),
            scale_up: None,
        };
        let s = spec(
            &ScalableApi::test()
                .with_autoscaling(1, 5)
                .with_behavior(behavior.clone()),
        );
        assert_eq!(s.behavior, Some(behavior));
        assert_eq!(
            spec(&ScalableApi::test().with_autoscaling(1, 5)).behavior,
            None
        );
    }
}
