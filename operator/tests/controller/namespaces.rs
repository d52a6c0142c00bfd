//! `--namespaces a,b` on the real cluster, under exactly the RBAC the chart renders for
//! `watchNamespaces: [a, b]`: a Role in each watched namespace, the Lease and hash-key Roles
//! in the operator's namespace, and no ClusterRole.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::PostParams;
use operator::crd::ScalableApi;
use operator::hash_key;

use crate::cluster::*;
use crate::helm::helm;

const SERVICE_ACCOUNT: &str = "operator";

/// The chart's RBAC for `watchNamespaces` in release namespace `release_ns`, bound to
/// `SERVICE_ACCOUNT`, as YAML.
fn chart_rbac(release_ns: &str, watched: &[&str]) -> String {
    helm(&[
        "template",
        "multi",
        "charts/scalable-api-operator",
        "-n",
        release_ns,
        "--set",
        &format!("watchNamespaces={{{}}}", watched.join(",")),
        "--set",
        "serviceAccount.create=false",
        "--set",
        &format!("serviceAccount.name={SERVICE_ACCOUNT}"),
        "--show-only",
        "templates/rbac.yaml",
    ])
}

#[tokio::test]
async fn namespaces_mode_reconciles_the_listed_namespaces_under_roles_only() {
    let ops = Cluster::new("multi-ops").await;
    let a = Cluster::new("multi-a").await;
    let b = Cluster::new("multi-b").await;
    let elsewhere = Cluster::new("multi-c").await;

    let rbac = chart_rbac(&ops.ns, &[&a.ns, &b.ns]);
    assert!(
        !rbac.contains("kind: ClusterRole"),
        "watchNamespaces renders no ClusterRole or ClusterRoleBinding:\n{rbac}"
    );
    for ns in [&a.ns, &b.ns] {
        assert!(rbac.contains(&format!("namespace: {ns}")), "a Role in {ns}");
    }
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": SERVICE_ACCOUNT}}))
            .expect("sa");
    ops.api::<ServiceAccount>()
        .create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
    let rbac_file = TestEnv::get().dir.join(format!("{}-rbac.yaml", ops.ns));
    std::fs::write(&rbac_file, &rbac).expect("write the rendered RBAC");
    let applied = TestEnv::get().kubectl(&["apply", "-f", &rbac_file.to_string_lossy()]);
    assert!(
        applied.status.success(),
        "apply the chart's RBAC: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    // What the mode is for: this identity cannot read Secrets outside the watched namespaces.
    let who = format!("system:serviceaccount:{}:{SERVICE_ACCOUNT}", ops.ns);
    for (args, want) in [
        (
            vec!["auth", "can-i", "list", "secrets", "--all-namespaces"],
            "no",
        ),
        (
            vec!["auth", "can-i", "list", "secrets", "-n", &elsewhere.ns],
            "no",
        ),
        (
            vec!["auth", "can-i", "watch", "secrets", "-n", &a.ns],
            "yes",
        ),
    ] {
        let mut args = args;
        args.extend(["--as", &who]);
        let out = TestEnv::get().kubectl(&args);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "kubectl {}",
            args.join(" ")
        );
    }

    // The ScalableApi the operator must leave alone exists first, so it would be reconciled
    // no later than the others if the operator saw it.
    for c in [&elsewhere, &a, &b] {
        create_db_secret(c, "users").await;
        scalable_api("users").create(c).await;
    }
    let token = service_account_token(&ops.ns, SERVICE_ACCOUNT);
    let kubeconfig = token_kubeconfig(&token, &format!("{}-operator.kubeconfig", ops.ns));
    let watched = format!("{},{}", a.ns, b.ns);
    let operator =
        OperatorProcess::start_in(&kubeconfig, &ops.ns, "multi-0", &["--namespaces", &watched]);

    for c in [&a, &b] {
        c.wait_for_condition("users", "Ready", "True", "Available")
            .await;
    }
    let untouched = elsewhere
        .get::<ScalableApi>("users")
        .await
        .expect("the ScalableApi");
    assert!(
        untouched.status.is_none(),
        "a namespace not listed gets no status: {:?}",
        untouched.status
    );
    assert!(elsewhere.get::<Deployment>("users").await.is_none());
    assert!(
        ops.get::<Secret>(hash_key::SECRET_NAME).await.is_some(),
        "the hash key lives in the operator's namespace"
    );
    let log = operator.log_text();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the per-namespace Roles refused a request:\n{log}"
    );
}
