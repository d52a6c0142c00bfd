//! (7) A pod that really fails: the API container's image exits at once (the operator's own
//! image, which finds no Kubernetes credentials in an API pod and stops with status 1). The
//! container restarts under the kubelet, no replica becomes available, and once the
//! Deployment's progress deadline passes the ScalableApi's status says why.

use e2e::TestEnv;
use e2e::objects::scalable_api;
use e2e::postgres::Database;
use e2e::wait::{self, READY_TIMEOUT, ROLLOUT_TIMEOUT, SHORT_TIMEOUT};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use operator::crd::ScalableApi;
use serde_json::json;

/// An image whose entrypoint exits non-zero in an API pod: the operator image (the one
/// `e2e/scripts/run.sh` installs, `OPERATOR_IMAGE`).
fn exiting_image() -> String {
    std::env::var("OPERATOR_IMAGE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            format!(
                "ghcr.io/scalable-dev/scalable-api-operator:{}",
                env!("CARGO_PKG_VERSION")
            )
        })
}

/// (restarts, exit code, reason) of the pod's `api` container once it has exited non-zero
/// and been restarted by the kubelet.
fn exited_api_container(pod: &Pod) -> Option<(i32, i32, Option<String>)> {
    let c = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "api")?;
    let last = c.last_state.as_ref()?.terminated.as_ref()?;
    (last.exit_code != 0 && c.restart_count >= 1)
        .then(|| (c.restart_count, last.exit_code, last.reason.clone()))
}

/// The condition `type_` as (status, reason, message).
fn condition(sapi: &ScalableApi, type_: &str) -> Option<(String, String, String)> {
    sapi.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn a_container_that_exits_stalls_the_scalable_api_with_the_reason() -> anyhow::Result<()> {
    let Some(env) = TestEnv::setup("container-exits").await? else {
        return Ok(());
    };
    let db = Database::provision(&env).await?;
    let image = exiting_image();
    let sapis = env.api::<ScalableApi>();
    let deployments = env.api::<Deployment>();
    sapis
        .create(
            &Default::default(),
            &scalable_api("broken", &db, json!({"replicas": 1, "image": image}))?,
        )
        .await?;

    // The default progress deadline is 10 minutes; the operator does not set the field, so
    // a shorter one set here stays (another field manager) and the test needs no sleep.
    wait::until(
        &deployments,
        "broken",
        "the Deployment exists",
        SHORT_TIMEOUT,
        |d: Option<&Deployment>| d.is_some(),
    )
    .await?;
    deployments
        .patch(
            "broken",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"progressDeadlineSeconds": 15}})),
        )
        .await?;

    // The container really ran and exited: the kubelet reports a termination with a
    // non-zero exit code (or restarts with a CrashLoopBackOff wait).
    let pods = env.api::<Pod>();
    let config = watcher::Config::default().labels("app.kubernetes.io/instance=broken");
    let mut events = watcher::watcher(pods, config).applied_objects().boxed();
    let crashed = tokio::time::timeout(ROLLOUT_TIMEOUT, async {
        while let Some(pod) = events.try_next().await? {
            if let Some(found) = exited_api_container(&pod) {
                return anyhow::Ok(found);
            }
        }
        anyhow::bail!("the pod watch ended")
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!("no api container of 'broken' exited within {ROLLOUT_TIMEOUT:?}")
    })??;
    println!(
        "api container: restarts {}, last exit code {}, reason {:?}",
        crashed.0, crashed.1, crashed.2
    );

    let stalled = wait::until(
        &sapis,
        "broken",
        "Stalled=True with the Deployment's reason",
        READY_TIMEOUT,
        |o: Option<&ScalableApi>| {
            o.and_then(|o| condition(o, "Stalled"))
                .is_some_and(|(status, _, _)| status == "True")
        },
    )
    .await?;
    let (_, reason, message) = condition(&stalled, "Stalled").expect("Stalled");
    assert_eq!(reason, "ProgressDeadlineExceeded", "Stalled: {message}");
    assert!(
        message.contains("timed out progressing"),
        "the Deployment's message is quoted: {message}"
    );
    let (ready, ready_reason, _) = condition(&stalled, "Ready").expect("Ready");
    assert_eq!(
        (ready.as_str(), ready_reason.as_str()),
        ("False", "ProgressDeadlineExceeded")
    );
    assert_eq!(
        stalled
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        0,
        "no replica is ready"
    );
    env.pass();
    Ok(())
}
