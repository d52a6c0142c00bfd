//! (1) Ready and serving, (2) a spec change rolls out, (5) a deleted child is recreated,
//! (6) deleting the ScalableApi garbage-collects the stack.

use e2e::TestEnv;
use e2e::children::{Children, create_ready, live_pods};
use e2e::http::ServiceProxy;
use e2e::objects::scalable_api;
use e2e::postgres::Database;
use e2e::wait::{self, READY_TIMEOUT, ROLLOUT_TIMEOUT, SHORT_TIMEOUT};
use http::StatusCode;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use operator::crd::ScalableApi;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

#[tokio::test]
async fn becomes_ready_and_serves_the_user_api() -> anyhow::Result<()> {
    let Some(env) = TestEnv::setup("ready-and-serves").await? else {
        return Ok(());
    };
    let db = Database::provision(&env).await?;
    let sapi = create_ready(&env, &scalable_api("users", &db, json!({"replicas": 2}))?).await?;

    let status = sapi.status.clone().unwrap_or_default();
    assert_eq!(status.ready_replicas, Some(2), "status: {status:?}");
    assert!(
        status.selector.is_some(),
        "status.selector is set for the scale subresource"
    );
    let url = status.url.unwrap_or_default();
    assert!(
        url.contains(&format!("users.{}.svc", env.namespace)),
        "status.url = {url}"
    );
    assert_eq!(
        wait::condition_status(&sapi, "DatabaseConfigured"),
        Some("True")
    );

    let children = Children::get(&env, "users").await?;
    children.assert_owned_by(&sapi)?;
    assert!(children.hpa.is_none(), "no HPA without spec.autoscaling");
    assert!(children.pdb.is_some(), "a PDB protects 2 replicas");

    // CRUD through the Service (API server service proxy -> Service -> pods).
    let api = ServiceProxy::new(env.client.clone(), &env.namespace, "users", 80);
    assert_eq!(api.get("/readyz").await?.status, StatusCode::OK);
    let created = api
        .post(
            "/users",
            &json!({"name": "Ada Lovelace", "email": "ada@example.com"}),
        )
        .await?;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert!(created.location.is_some(), "201 carries a Location header");
    let id = created.json["id"].as_str().expect("user id").to_owned();

    let fetched = api.get(&format!("/users/{id}")).await?;
    assert_eq!(fetched.status, StatusCode::OK, "{}", fetched.text);
    assert_eq!(fetched.json["email"], "ada@example.com");

    let listed = api.get("/users?limit=10").await?;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    let items = listed.json["items"].as_array().cloned().unwrap_or_default();
    assert!(
        items.iter().any(|u| u["id"] == id.as_str()),
        "{}",
        listed.text
    );

    let updated = api
        .put(
            &format!("/users/{id}"),
            &json!({"name": "Ada King", "email": "ada@example.com"}),
        )
        .await?;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    assert_eq!(updated.json["name"], "Ada King");
    // Whichever replica (and Redis sidecar) answers, the update is visible.
    for _ in 0..4 {
        assert_eq!(
            api.get(&format!("/users/{id}")).await?.json["name"],
            "Ada King"
        );
    }

    assert_eq!(
        api.delete(&format!("/users/{id}")).await?.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.get(&format!("/users/{id}")).await?.status,
        StatusCode::NOT_FOUND
    );

    env.pass();
    Ok(())
}

#[tokio::test]
async fn a_spec_change_rolls_out() -> anyhow::Result<()> {
    let Some(env) = TestEnv::setup("spec-change").await? else {
        return Ok(());
    };
    let db = Database::provision(&env).await?;
    let sapis = env.api::<ScalableApi>();
    create_ready(&env, &scalable_api("orders", &db, json!({"replicas": 2}))?).await?;
    let before = Children::get(&env, "orders").await?;
    let old_pods: Vec<String> = live_pods(&env, &before.deployment)
        .await?
        .iter()
        .filter_map(|p| p.uid())
        .collect();

    let patched = sapis
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "cache": {"ttlSeconds": 42},
                "rateLimit": {"requestsPerSecond": 50, "burst": 100}
            }})),
        )
        .await?;
    let generation = patched.metadata.generation;
    wait::until(
        &sapis,
        "orders",
        "Ready at the new generation",
        ROLLOUT_TIMEOUT,
        |o: Option<&ScalableApi>| {
            wait::sapi_ready(o)
                && o.and_then(|o| o.status.as_ref())
                    .and_then(|s| s.observed_generation)
                    == generation
        },
    )
    .await?;
    let old_annotations = before.template_annotations();
    let deployment = wait::until(
        &env.api::<Deployment>(),
        "orders",
        "rolled out with a new pod template",
        ROLLOUT_TIMEOUT,
        move |d: Option<&Deployment>| {
            wait::rolled_out(d)
                && d.is_some_and(|d| e2e::children::template_annotations(d) != old_annotations)
        },
    )
    .await?;

    let after = Children::get(&env, "orders").await?;
    let config = after.config.data.clone().unwrap_or_default();
    assert!(
        config.values().any(|v| v == "42"),
        "ConfigMap carries the new TTL: {config:?}"
    );
    assert!(
        config.values().any(|v| v == "50"),
        "ConfigMap carries the rate limit: {config:?}"
    );
    let pods = live_pods(&env, &deployment).await?;
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        assert!(
            !old_pods.contains(&pod.uid().unwrap_or_default()),
            "old pod {} survived",
            pod.name_any()
        );
    }

    env.pass();
    Ok(())
}

/// Deletes the child `name` and waits for the operator to create it again (new uid).
async fn delete_and_expect_recreated<K>(api: &Api<K>, name: &str) -> anyhow::Result<()>
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned + Serialize + Send + 'static,
    K::DynamicType: Default,
{
    let old = api.get(name).await?;
    let old_uid = old.uid();
    api.delete(name, &DeleteParams::background()).await?;
    let kind = K::kind(&K::DynamicType::default()).to_string();
    wait::until(
        api,
        name,
        &format!("{kind} recreated"),
        SHORT_TIMEOUT,
        move |o: Option<&K>| {
            o.is_some_and(|o| o.uid() != old_uid && o.meta().deletion_timestamp.is_none())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_deleted_child_is_recreated() -> anyhow::Result<()> {
    let Some(env) = TestEnv::setup("child-recreated").await? else {
        return Ok(());
    };
    let db = Database::provision(&env).await?;
    let spec = json!({"autoscaling": {"minReplicas": 2, "maxReplicas": 3}});
    create_ready(&env, &scalable_api("carts", &db, spec)?).await?;

    delete_and_expect_recreated(&env.api::<Service>(), "carts").await?;
    delete_and_expect_recreated(&env.api::<ConfigMap>(), "carts-config").await?;
    delete_and_expect_recreated(&env.api::<HorizontalPodAutoscaler>(), "carts").await?;
    delete_and_expect_recreated(&env.api::<PodDisruptionBudget>(), "carts").await?;
    delete_and_expect_recreated(&env.api::<Deployment>(), "carts").await?;

    let sapi = wait::until(
        &env.api::<ScalableApi>(),
        "carts",
        "Ready again",
        READY_TIMEOUT,
        wait::sapi_ready,
    )
    .await?;
    Children::get(&env, "carts").await?.assert_owned_by(&sapi)?;
    env.pass();
    Ok(())
}

#[tokio::test]
async fn deleting_the_scalable_api_garbage_collects_everything() -> anyhow::Result<()> {
    let Some(env) = TestEnv::setup("garbage-collected").await? else {
        return Ok(());
    };
    let db = Database::provision(&env).await?;
    let spec = json!({"autoscaling": {"minReplicas": 2, "maxReplicas": 3}});
    let sapi = create_ready(&env, &scalable_api("billing", &db, spec)?).await?;
    let children = Children::get(&env, "billing").await?;
    let pods = live_pods(&env, &children.deployment).await?;
    assert!(children.hpa.is_some() && children.pdb.is_some());

    let sapis = env.api::<ScalableApi>();
    sapis.delete("billing", &DeleteParams::background()).await?;
    wait::deleted(&sapis, &sapi, SHORT_TIMEOUT).await?;
    wait::deleted(&env.api::<ConfigMap>(), &children.config, SHORT_TIMEOUT).await?;
    wait::deleted(
        &env.api::<Deployment>(),
        &children.deployment,
        SHORT_TIMEOUT,
    )
    .await?;
    wait::deleted(&env.api::<Service>(), &children.service, SHORT_TIMEOUT).await?;
    if let Some(hpa) = &children.hpa {
        wait::deleted(&env.api::<HorizontalPodAutoscaler>(), hpa, SHORT_TIMEOUT).await?;
    }
    if let Some(pdb) = &children.pdb {
        wait::deleted(&env.api::<PodDisruptionBudget>(), pdb, SHORT_TIMEOUT).await?;
    }
    for pod in &pods {
        wait::deleted(&env.api(), pod, ROLLOUT_TIMEOUT).await?;
    }
    env.pass();
    Ok(())
}
