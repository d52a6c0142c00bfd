//! (7) Killing the operator in the middle of converging 30 ScalableApis: the standby (or the
//! restarted pod) resumes, every one becomes Ready, and nothing is duplicated.

use e2e::TestEnv;
use e2e::children::{Children, live_pods};
use e2e::http::ServiceProxy;
use e2e::objects::scalable_api;
use e2e::postgres::Database;
use e2e::wait::{self, READY_TIMEOUT, ROLLOUT_TIMEOUT, SHORT_TIMEOUT};
use http::StatusCode;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use operator::crd::ScalableApi;
use serde_json::json;

/// ScalableApis created at once besides `inventory`: 30 in all. Small (10m CPU, no cache
/// sidecar, 2 connections) so their real pods fit one 2-core node beside the other scenarios.
const BULK: usize = 29;

const OPERATOR_SELECTOR: &str =
    "app.kubernetes.io/component=operator,app.kubernetes.io/part-of=scalable-api-operator";

#[tokio::test]
async fn killing_the_operator_mid_reconcile_resumes_without_duplicates() -> anyhow::Result<()> {
    let Some(env) = TestEnv::setup("operator-restart").await? else {
        return Ok(());
    };
    let db = Database::provision(&env).await?;
    let sapis = env.api::<ScalableApi>();
    let operator_pods: Api<Pod> =
        Api::namespaced(env.client.clone(), &env.settings.operator_namespace);
    let before = operator_pods
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await?;
    assert!(
        !before.items.is_empty(),
        "no operator pods match {OPERATOR_SELECTOR}"
    );

    sapis
        .create(
            &PostParams::default(),
            &scalable_api("inventory", &db, json!({"replicas": 2}))?,
        )
        .await?;
    let bulk: Vec<String> = (0..BULK).map(|i| format!("bulk-{i:02}")).collect();
    for name in &bulk {
        let small = json!({
            "replicas": 1,
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
            "database": {"pool": {"maxConnections": 2, "minConnections": 1}},
            "cache": {"enabled": false}
        });
        sapis
            .create(&PostParams::default(), &scalable_api(name, &db, small)?)
            .await?;
    }
    // Mid-way: the first child exists, the stack is not Ready yet.
    wait::until(
        &env.api::<Deployment>(),
        "inventory",
        "Deployment created",
        SHORT_TIMEOUT,
        |d: Option<&Deployment>| d.is_some(),
    )
    .await?;
    let ready_before = sapis
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|s| wait::sapi_ready(Some(s)))
        .count();
    assert!(
        ready_before < BULK + 1,
        "all {} were Ready before the kill: nothing was mid-convergence",
        BULK + 1
    );
    for pod in &before.items {
        operator_pods
            .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
            .await?;
    }
    for pod in &before.items {
        wait::deleted(&operator_pods, pod, SHORT_TIMEOUT).await?;
    }

    let sapi = wait::until(
        &sapis,
        "inventory",
        "Ready after the operator restart",
        READY_TIMEOUT,
        wait::sapi_ready,
    )
    .await?;
    let mut owners = vec![sapi.clone()];
    for name in &bulk {
        owners.push(
            wait::until(
                &sapis,
                name,
                "Ready after the operator restart",
                READY_TIMEOUT,
                wait::sapi_ready,
            )
            .await?,
        );
    }
    let operators: Api<Deployment> =
        Api::namespaced(env.client.clone(), &env.settings.operator_namespace);
    for d in operators
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await?
    {
        wait::until(
            &operators,
            &d.name_any(),
            "operator rolled out again",
            ROLLOUT_TIMEOUT,
            wait::rolled_out,
        )
        .await?;
    }

    // One live operator pod holds the Lease; the metrics Service answers.
    let live: Vec<String> = operator_pods
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.settings.operator_namespace);
    let release = env.settings.operator_release.clone();
    let lease = leases.get(&release).await?;
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        live.contains(&holder),
        "Lease holder {holder:?} is not one of the live operator pods {live:?}"
    );
    let metrics = ServiceProxy::new(
        env.client.clone(),
        &env.settings.operator_namespace,
        &format!("{release}-metrics"),
        8080,
    )
    .get("/metrics")
    .await?;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.text);
    assert!(
        metrics.text.contains("scalable_api_operator_"),
        "{}",
        metrics.text
    );

    // Exactly one of each child per ScalableApi, each owned by it; one ReplicaSet each: the
    // restart did not change any pod template (the config hash is stable).
    for owner in &owners {
        Children::get(&env, &owner.name_any())
            .await?
            .assert_owned_by(owner)?;
    }
    let deployments = env.api::<Deployment>().list(&ListParams::default()).await?;
    let services = env.api::<Service>().list(&ListParams::default()).await?;
    let config_maps = env.api::<ConfigMap>().list(&ListParams::default()).await?;
    let replica_sets = env.api::<ReplicaSet>().list(&ListParams::default()).await?;
    for (kind, controllers) in [
        ("Deployment", controllers(&deployments.items)),
        ("Service", controllers(&services.items)),
        ("ConfigMap", controllers(&config_maps.items)),
    ] {
        for owner in &owners {
            let uid = owner.uid().unwrap_or_default();
            let n = controllers.iter().filter(|c| **c == uid).count();
            assert_eq!(n, 1, "{n} {kind}s controlled by {}", owner.name_any());
        }
        assert_eq!(
            controllers.len(),
            owners.len(),
            "{kind}s controlled by a ScalableApi: {controllers:?}"
        );
    }
    assert_eq!(
        replica_sets.items.len(),
        owners.len(),
        "replica sets: {:?}",
        replica_sets
            .items
            .iter()
            .map(|r| r.name_any())
            .collect::<Vec<_>>()
    );
    let deployment = wait::until(
        &env.api::<Deployment>(),
        "inventory",
        "2 ready pods",
        ROLLOUT_TIMEOUT,
        wait::rolled_out_with(2),
    )
    .await?;
    assert_eq!(live_pods(&env, &deployment).await?.len(), 2);

    env.pass();
    Ok(())
}

/// The uid of the ScalableApi controlling each object that has one.
fn controllers<K: Resource>(objects: &[K]) -> Vec<String> {
    objects
        .iter()
        .filter_map(|o| {
            o.meta()
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true) && r.kind == "ScalableApi")
                .map(|r| r.uid.clone())
        })
        .collect()
}
