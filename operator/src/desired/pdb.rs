//! PodDisruptionBudget `<name>`, only when more than one replica is possible.
//!
//! `maxUnavailable: 1` rather than `minAvailable`: it lets a node drain evict one pod at a
//! time at any scale (minAvailable: 1 would allow 19 of 20 pods out at once, and blocks every
//! drain of a single-replica API), and it needs no update when the HPA changes the count.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{child_meta, labels};
use crate::crd::ScalableApi;

pub fn pdb(sapi: &ScalableApi) -> Option<PodDisruptionBudget> {
    if sapi.max_possible_replicas() <= 1 {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: child_meta(sapi, sapi.name_any()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels::selector(sapi)),
                ..LabelSelector::default()
            }),
            // A crash-looping pod must not block node drains.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_when_at_most_one_replica_is_possible() {
        assert!(pdb(&ScalableApi::test()).is_none());
        assert!(pdb(&ScalableApi::test().with_replicas(0)).is_none());
        assert!(pdb(&ScalableApi::test().with_autoscaling(1, 1)).is_none());
    }

    #[test]
    fn allows_one_pod_at_a_time_when_more_are_possible() {
        for sapi in [
            ScalableApi::test().with_replicas(2),
            ScalableApi::test().with_autoscaling(1, 3),
        ] {
            let p = pdb(&sapi).expect("pdb");
            assert_eq!(p.metadata.name.as_deref(), Some("users"));
            let spec = p.spec.expect("spec");
            assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
            assert_eq!(spec.min_available, None);
            assert_eq!(
                spec.selector.and_then(|s| s.match_labels),
                Some(labels::selector(&sapi))
            );
        }
    }
}
