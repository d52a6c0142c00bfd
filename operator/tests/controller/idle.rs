//! What an idle ScalableApi costs the API server, counted by the API server itself (its
//! audit log): on every resync the operator reads, and writes nothing, not even a DELETE
//! of an optional child that does not exist.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::jiff::Timestamp;

use crate::audit::{Request, requests_in};
use crate::cluster::*;

/// Resync interval of the operator under test: short, so a few resyncs pass quickly.
const RESYNC: &str = "2";
const RESYNCS: usize = 4;

#[tokio::test]
async fn resyncs_of_idle_objects_only_read() {
    let c = Cluster::new("idle").await;
    let kubeconfig = namespace_admin(&c, "operator").await;
    let _operator = OperatorProcess::start_with(
        &kubeconfig,
        &c.ns,
        "pod-idle",
        &["--resync-interval-seconds", RESYNC],
    );
    // One with an HPA and a PodDisruptionBudget, one with neither (nothing to delete).
    create_db_secret(&c, "scaled").await;
    scalable_api("scaled").autoscaling(2, 4).create(&c).await;
    create_db_secret(&c, "single").await;
    scalable_api("single").replicas(1).create(&c).await;
    for name in ["scaled", "single"] {
        c.wait_for_condition(name, "Ready", "True", "Available")
            .await;
    }
    c.wait_for::<HorizontalPodAutoscaler>("scaled", "the HPA to settle at 2", |h| {
        h.status
            .as_ref()
            .is_some_and(|s| s.desired_replicas == 2 && s.current_replicas == Some(2))
    })
    .await;

    let user = format!("system:serviceaccount:{}:operator", c.ns);
    let start = Timestamp::now();
    let since = |start: Timestamp| -> Vec<Request> {
        requests_in(&c.ns)
            .into_iter()
            .filter(|r| r.user == user && r.received > start && r.resource != "leases")
            .collect()
    };
    // Each resync of "single" reads its Deployment once: count those reads.
    let resyncs = |requests: &[Request]| {
        requests
            .iter()
            .filter(|r| r.verb == "get" && r.resource == "deployments" && r.name == "single")
            .count()
    };
    let idle = within("resyncs of the idle objects", async {
        loop {
            let seen = since(start);
            if resyncs(&seen) >= RESYNCS {
                return seen;
            }
            // The audit log is a file: poll it, a resync is seconds apart.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    let mut by_verb: BTreeMap<String, usize> = BTreeMap::new();
    for r in &idle {
        *by_verb
            .entry(format!("{} {}", r.verb, r.resource))
            .or_default() += 1;
    }
    println!(
        "{} resyncs of 2 idle objects: operator requests by verb: {by_verb:?}",
        resyncs(&idle)
    );
    let writes: Vec<_> = idle.iter().filter(|r| r.is_write()).collect();
    assert!(writes.is_empty(), "an idle object was written: {writes:#?}");
}
