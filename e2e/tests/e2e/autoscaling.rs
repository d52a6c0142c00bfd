//! (4) Turning autoscaling on keeps the pod count (no drop to 1, not even briefly), the HPA then
//! owns the replica count, and the operator never reverts what the HPA chose.

use std::sync::{Arc, Mutex};

use e2e::TestEnv;
use e2e::children::create_ready;
use e2e::objects::scalable_api;
use e2e::postgres::Database;
use e2e::wait::{self, ROLLOUT_TIMEOUT, SHORT_TIMEOUT};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use operator::crd::ScalableApi;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Every `spec.replicas` the watched Deployment has shown, in order.
struct ReplicaRecorder {
    seen: Arc<Mutex<Vec<Option<i32>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReplicaRecorder {
    /// Starts watching the Deployment `name`; returns once the initial list is in.
    async fn start(api: kube::Api<Deployment>, name: &str) -> anyhow::Result<Self> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = oneshot::channel();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut events = watcher::watcher(api, config).boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::Apply(d) | Event::InitApply(d)) => {
                        let replicas = d.spec.as_ref().and_then(|s| s.replicas);
                        if let Ok(mut seen) = sink.lock() {
                            seen.push(replicas);
                        }
                    }
                    Ok(Event::InitDone) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("deployment watch error (retried): {e}"),
                }
            }
        });
        ready_rx.await?;
        Ok(Self { seen, task })
    }

    fn stop(self) -> Vec<Option<i32>> {
        self.task.abort();
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn patch_spec(
    sapis: &kube::Api<ScalableApi>,
    name: &str,
    spec: Value,
) -> anyhow::Result<Option<i64>> {
    let patched = sapis
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await?;
    Ok(patched.metadata.generation)
}

async fn ready_at(
    sapis: &kube::Api<ScalableApi>,
    name: &str,
    generation: Option<i64>,
) -> anyhow::Result<()> {
    wait::until(
        sapis,
        name,
        "Ready at the new generation",
        ROLLOUT_TIMEOUT,
        // At this generation or a later one: the hand-over itself writes spec.replicas
        // (through the scale subresource), which bumps the generation once more, and a
        // status written before that write may never be observed.
        move |o: Option<&ScalableApi>| {
            wait::sapi_ready(o)
                && o.and_then(|o| o.status.as_ref())
                    .and_then(|s| s.observed_generation)
                    >= generation
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn enabling_autoscaling_keeps_the_pods_and_the_hpa_owns_the_count() -> anyhow::Result<()> {
    let Some(env) = TestEnv::setup("autoscaling-handover").await? else {
        return Ok(());
    };
    let db = Database::provision(&env).await?;
    let sapis = env.api::<ScalableApi>();
    let deployments = env.api::<Deployment>();
    let hpas = env.api::<HorizontalPodAutoscaler>();
    create_ready(&env, &scalable_api("search", &db, json!({"replicas": 3}))?).await?;
    wait::until(
        &deployments,
        "search",
        "3 ready pods",
        ROLLOUT_TIMEOUT,
        wait::rolled_out_with(3),
    )
    .await?;

    let recorder = ReplicaRecorder::start(deployments.clone(), "search").await?;

    // Hand-over: spec.replicas goes away (the schema default 1 under the running 3); the
    // operator keeps 3 in spec.replicas and the HPA (floor 2, slow scale-down) scales the
    // ScalableApi from there.
    let generation = patch_spec(
        &sapis,
        "search",
        json!({
            "replicas": null,
            "autoscaling": {
                "minReplicas": 2,
                "maxReplicas": 6,
                "targetCPUUtilizationPercentage": 80,
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 900}}
            }
        }),
    )
    .await?;
    ready_at(&sapis, "search", generation).await?;
    wait::until(
        &hpas,
        "search",
        "HPA with min 2 / max 6",
        SHORT_TIMEOUT,
        |h: Option<&HorizontalPodAutoscaler>| {
            h.and_then(|h| h.spec.as_ref())
                .is_some_and(|s| s.min_replicas == Some(2) && s.max_replicas == 6)
        },
    )
    .await?;
    let d = deployments.get("search").await?;
    assert_eq!(
        d.spec.as_ref().and_then(|s| s.replicas),
        Some(3),
        "the hand-over kept 3 pods"
    );
    assert_eq!(
        sapis.get("search").await?.spec.replicas,
        3,
        "the running count went into spec.replicas, which the HPA now scales"
    );

    // Raising the floor above the count lifts spec.replicas, and with it the Deployment, to 4.
    let generation =
        patch_spec(&sapis, "search", json!({"autoscaling": {"minReplicas": 4}})).await?;
    ready_at(&sapis, "search", generation).await?;
    wait::until(
        &deployments,
        "search",
        "HPA scaled to 4 ready pods",
        ROLLOUT_TIMEOUT,
        wait::rolled_out_with(4),
    )
    .await?;

    // A further reconcile (an unrelated spec change) must leave the HPA's choice alone.
    let generation = patch_spec(
        &sapis,
        "search",
        json!({"rateLimit": {"requestsPerSecond": 500}}),
    )
    .await?;
    ready_at(&sapis, "search", generation).await?;
    wait::until(
        &deployments,
        "search",
        "rolled out after the rate-limit change",
        ROLLOUT_TIMEOUT,
        wait::rolled_out_with(4),
    )
    .await?;
    let status = sapis.get("search").await?.status.unwrap_or_default();
    assert_eq!(
        status.desired_replicas,
        Some(4),
        "status follows the HPA: {status:?}"
    );

    let seen = recorder.stop();
    println!("Deployment spec.replicas over time: {seen:?}");
    assert!(
        seen.iter().all(|r| r.is_some_and(|r| r >= 3)),
        "spec.replicas dropped below 3 (or vanished) during the hand-over: {seen:?}"
    );
    if let Some(first_four) = seen.iter().position(|r| *r == Some(4)) {
        assert!(
            seen[first_four..].iter().all(|r| *r == Some(4)),
            "the operator reverted the HPA's count: {seen:?}"
        );
    }
    env.pass();
    Ok(())
}
