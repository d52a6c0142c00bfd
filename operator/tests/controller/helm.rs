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

/// True when `role` grants `verb` on scalableapis.
fn grants(role: Option<&ClusterRole>, verb: &str) -> bool {
    role.and_then(|r| r.rules.as_ref()).is_some_and(|rules| {
        rules.iter().any(|rule| {
            rule.api_groups
                .iter()
                .flatten()
                .any(|g| g == "scalable.dev")
                && rule.resources.iter().flatten().any(|r| r == "scalableapis")
                && rule.verbs.iter().any(|v| v == verb)
        })
    })
}

/// `kubectl auth can-i VERB scalableapis` in the test namespace, as ServiceAccount `sa`.
fn can_i(c: &Cluster, sa: &str, verb: &str) -> bool {
    let out = TestEnv::get().kubectl(&[
        "auth",
        "can-i",
        verb,
        "scalableapis.scalable.dev",
        "-n",
        &c.ns,
        &format!("--as=system:serviceaccount:{}:{sa}", c.ns),
    ]);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// People who hold the default `view` / `edit` roles in a namespace can read / also write
/// ScalableApis there, through the chart's aggregated ClusterRoles.
async fn default_roles_cover_scalable_apis(c: &Cluster) {
    let roles: Api<ClusterRole> = Api::all(c.client.clone());
    for (role, verb) in [("view", "list"), ("edit", "create"), ("admin", "delete")] {
        let aggregated = kube::runtime::wait::await_condition(
            roles.clone(),
            role,
            move |r: Option<&ClusterRole>| grants(r, verb),
        );
        within(
            &format!("the default {role} role to aggregate ScalableApis"),
            aggregated,
        )
        .await
        .expect("watch ClusterRoles");
    }
    for (sa, role) in [("viewer", "view"), ("editor", "edit")] {
        c.kubectl(&["create", "serviceaccount", sa]);
        c.kubectl(&[
            "create",
            "rolebinding",
            sa,
            &format!("--clusterrole={role}"),
            &format!("--serviceaccount={}:{sa}", c.ns),
        ]);
    }
    assert!(can_i(c, "viewer", "list") && can_i(c, "viewer", "watch"));
    assert!(!can_i(c, "viewer", "create"), "view does not write");
    assert!(can_i(c, "editor", "create") && can_i(c, "editor", "delete"));
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
    default_roles_cover_scalable_apis(&c).await;
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
    for name in [
        fullname.clone(),
        format!("{fullname}-view"),
        format!("{fullname}-edit"),
    ] {
        assert!(
            roles.get_opt(&name).await.expect("GET").is_none(),
            "the chart's ClusterRole {name} is removed"
        );
    }
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
