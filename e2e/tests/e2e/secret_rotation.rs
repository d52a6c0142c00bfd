//! (3) Rotating the password Secret rolls the pods, and the new pods use the new password.

use e2e::TestEnv;
use e2e::children::{Children, create_ready, live_pods, template_annotations};
use e2e::http::ServiceProxy;
use e2e::objects::scalable_api;
use e2e::postgres::Database;
use e2e::wait::{self, ROLLOUT_TIMEOUT};
use http::StatusCode;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use operator::crd::ScalableApi;
use serde_json::json;

#[tokio::test]
async fn rotating_the_password_secret_rolls_the_pods() -> anyhow::Result<()> {
    let Some(env) = TestEnv::setup("secret-rotation").await? else {
        return Ok(());
    };
    let mut db = Database::provision(&env).await?;
    create_ready(
        &env,
        &scalable_api("accounts", &db, json!({"replicas": 2}))?,
    )
    .await?;
    let before = Children::get(&env, "accounts").await?;
    let old_annotations = before.template_annotations();
    let old_pods: Vec<String> = live_pods(&env, &before.deployment)
        .await?
        .iter()
        .filter_map(|p| p.uid())
        .collect();

    db.rotate_password(&env).await?;

    // The Secret is not part of the ScalableApi, so its generation does not move: the proof is
    // a new pod template (the Secret hash annotation) that has fully rolled out.
    let deployment = wait::until(
        &env.api::<Deployment>(),
        "accounts",
        "rolled out with a new Secret hash",
        ROLLOUT_TIMEOUT,
        move |d: Option<&Deployment>| {
            wait::rolled_out(d) && d.is_some_and(|d| template_annotations(d) != old_annotations)
        },
    )
    .await?;
    let pods = live_pods(&env, &deployment).await?;
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        assert!(
            !old_pods.contains(&pod.uid().unwrap_or_default()),
            "pod {} predates the rotation",
            pod.name_any()
        );
    }
    wait::until(
        &env.api::<ScalableApi>(),
        "accounts",
        "Ready after the rotation",
        ROLLOUT_TIMEOUT,
        wait::sapi_ready,
    )
    .await?;

    // Only the new password works now; the new pods write to Postgres with it.
    let api = ServiceProxy::new(env.client.clone(), &env.namespace, "accounts", 80);
    let created = api
        .post(
            "/users",
            &json!({"name": "Grace Hopper", "email": "grace@example.com"}),
        )
        .await?;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);

    env.pass();
    Ok(())
}
