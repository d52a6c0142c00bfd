//! The chart on the real cluster: `helm install`, the operator running with a token of the
//! chart's own ServiceAccount (so the chart's RBAC is what the API server enforces), `helm
//! upgrade`, `helm uninstall` keeping the CRD.

use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use operator::hash_key;
use serde_json::json;

use crate::cluster::*;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// `helm ARGS` against the test cluster; panics with its output if it fails.
pub fn helm(args: &[&str]) -> String {
    let root = repo_root();
    let helm = std::env::var_os("HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".tools/bin/helm"));
    let out = Command::new(&helm)
        .args(args)
        .env("KUBECONFIG", TestEnv::get().kubeconfig())
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "run {} (scripts/ensure-deps.sh k8s installs it): {e}",
                helm.display()
            )
        });
    assert!(
        out.status.success(),
        "helm {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn helm_install_then_the_operator_under_the_charts_rbac_then_upgrade_and_uninstall() {
    let c = Cluster::new("helm").await;
    let release = format!("op-{}", &c.ns[c.ns.len() - 8..]);
    let fullname = format!("{release}-scalable-api-operator");
    let chart = "charts/scalable-api-operator";

    // The CRD is already in the cluster (every test process applies crds/), so the release
    // takes it over, as `helm install --take-ownership` does for an existing install.
    helm(&[
        "install",
        &release,
        chart,
        "-n",
        &c.ns,
        "--take-ownership",
        "--wait",
        "--timeout=2m",
    ]);
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    let crd = crds
        .get("scalableapis.scalable.dev")
        .await
        .expect("the CRD");
    assert_eq!(
        crd.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("meta.helm.sh/release-name")),
        Some(&release),
        "the release owns the CRD"
    );
    let chart_deployment = c
        .wait_for::<Deployment>(&fullname, "the chart's operator Deployment", |_| true)
        .await;
    assert_eq!(
        chart_deployment.status.and_then(|s| s.available_replicas),
        Some(1),
        "helm --wait returned with the operator pod available (kwok runs no container)"
    );

    // kwok runs no container, so the operator runs here, with a token of the chart's
    // ServiceAccount: every request it makes is authorised by the chart's ClusterRole.
    let token = service_account_token(&c.ns, &fullname);
    let kubeconfig = token_kubeconfig(&token, &format!("{}-operator.kubeconfig", c.ns));
    let operator = OperatorProcess::start(&kubeconfig, &c.ns, "chart-operator-0");

    create_db_secret(&c, "users").await;
    scalable_api("users").replicas(3).create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    c.wait_for_event("users", "Available").await;
    // Every verb of a reconcile: autoscaling on creates an HPA, one replica deletes the PDB.
    patch_spec(
        &c,
        "users",
        json!({"replicas": null, "autoscaling": {"minReplicas": 3, "maxReplicas": 4}}),
    )
    .await;
    c.wait_for::<HorizontalPodAutoscaler>("users", "the HPA", |_| true)
        .await;
    patch_spec(&c, "users", json!({"autoscaling": null, "replicas": 1})).await;
    c.wait_gone::<HorizontalPodAutoscaler>("users").await;
    c.wait_gone::<PodDisruptionBudget>("users").await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let log = operator.log_text();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the chart's RBAC refused a request:\n{log}"
    );

    // The operator made its hash key under the chart's hash-key Role; the chart does not
    // manage that Secret, so neither the upgrade nor the uninstall below touches it.
    let key = c
        .get::<Secret>(hash_key::SECRET_NAME)
        .await
        .expect("the operator's hash-key Secret");

    helm(&[
        "upgrade",
        &release,
        chart,
        "-n",
        &c.ns,
        "--reuse-values",
        "--set",
        "replicaCount=2",
        "--wait",
        "--timeout=2m",
    ]);
    c.wait_for::<Deployment>(&fullname, "2 operator replicas", |d| {
        d.status.as_ref().and_then(|s| s.available_replicas) == Some(2)
    })
    .await;

    helm(&["uninstall", &release, "-n", &c.ns, "--wait", "--timeout=2m"]);
    c.wait_gone::<Deployment>(&fullname).await;
    let roles: Api<ClusterRole> = Api::all(c.client.clone());
    assert!(
        roles.get_opt(&fullname).await.expect("GET").is_none(),
        "the chart's ClusterRole is removed"
    );
    let kept = crds.get("scalableapis.scalable.dev").await;
    assert!(
        kept.is_ok(),
        "the CRD stays after helm uninstall (resource-policy: keep)"
    );
    // The ScalableApi and its stack are left alone by the uninstall.
    assert!(c.get::<Deployment>("users").await.is_some());
    let kept_key = c.get::<Secret>(hash_key::SECRET_NAME).await;
    assert_eq!(
        kept_key.map(|k| k.metadata.uid),
        Some(key.metadata.uid),
        "upgrade and uninstall leave the hash key as it was"
    );
    drop(operator);
}
