//! (7) Killing the operator in the middle of a reconcile: the standby (or the restarted pod)
//! resumes, the ScalableApi becomes Ready, and nothing is duplicated.

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
use kube::{Api, ResourceExt};
use operator::crd::ScalableApi;
use serde_json::json;

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
    // Mid-way: the first child exists, the stack is not Ready yet.
    wait::until(
        &env.api::<Deployment>(),
        "inventory",
        "Deployment created",
        SHORT_TIMEOUT,
        |d: Option<&Deployment>| d.is_some(),
    )
    .await?;
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

    // Exactly one of each child, all owned by this ScalableApi.
    let children = Children::get(&env, "inventory").await?;
    children.assert_owned_by(&sapi)?;
    assert_eq!(
        env.api::<Deployment>()
            .list(&ListParams::default())
            .await?
            .items
            .len(),
        1
    );
    assert_eq!(
        env.api::<Service>()
            .list(&ListParams::default())
            .await?
            .items
            .len(),
        1
    );
    let config_maps = env.api::<ConfigMap>().list(&ListParams::default()).await?;
    let ours: Vec<_> = config_maps
        .items
        .iter()
        .filter(|c| c.name_any().starts_with("inventory"))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "config maps: {:?}",
        ours.iter().map(|c| c.name_any()).collect::<Vec<_>>()
    );
    // One ReplicaSet: the restart did not change the pod template (the config hash is stable).
    let replica_sets = env.api::<ReplicaSet>().list(&ListParams::default()).await?;
    assert_eq!(
        replica_sets.items.len(),
        1,
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
