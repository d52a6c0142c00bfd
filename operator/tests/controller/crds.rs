//! crds/ and examples/ against the real API server: structural schema, CEL (and its cost
//! budget) evaluated by kube-apiserver, not by our own validator.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use serde_json::Value;

use crate::cluster::*;

/// The examples/*.yaml files, each as (file name, path); `invalid` picks the invalid-*
/// ones or the others.
fn examples(invalid: bool) -> Vec<(String, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                p,
            )
        })
        .filter(|(name, _)| name.starts_with("invalid-") == invalid)
        .collect();
    files.sort();
    files
}

/// The `# expect-error:` lines of an invalid example.
fn expected_errors(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect-error:"))
        .map(|m| m.trim().to_owned())
        .collect()
}

/// `kubectl apply --server-side` of `file`'s documents, each moved into `ns`.
fn apply_in(ns: &str, file: &Path) -> Output {
    let text = std::fs::read_to_string(file).expect("read example");
    let mut docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("example YAML");
    for doc in &mut docs {
        doc["metadata"]["namespace"] = Value::String(ns.to_owned());
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs});
    let env = TestEnv::get();
    let mut child = Command::new(env.bin.join("kubectl"))
        .arg(format!("--kubeconfig={}", env.kubeconfig().display()))
        .args(["apply", "--server-side", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(list.to_string().as_bytes())
        .expect("write");
    child.wait_with_output().expect("kubectl output")
}

#[tokio::test]
async fn the_crd_is_structural_and_established() {
    let c = Cluster::new("crd").await;
    let crd = Api::<CustomResourceDefinition>::all(c.client.clone())
        .get("scalableapis.scalable.dev")
        .await
        .expect("the CRD that every test process applies from crds/");
    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    let status = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.status.as_str())
    };
    assert_eq!(status("Established"), Some("True"));
    assert_eq!(status("NamesAccepted"), Some("True"));
    assert_eq!(status("NonStructuralSchema"), None, "{conditions:?}");
}

#[tokio::test]
async fn every_invalid_example_is_rejected_with_its_documented_message() {
    let c = Cluster::new("invalid").await;
    let examples = examples(true);
    assert!(
        examples.len() >= 8,
        "only {} invalid examples",
        examples.len()
    );
    for (name, file) in examples {
        let expected = expected_errors(&std::fs::read_to_string(&file).expect("read"));
        assert!(!expected.is_empty(), "{name} has no `# expect-error:` line");
        let out = apply_in(&c.ns, &file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name} was accepted by the API server"
        );
        for message in expected {
            assert!(
                stderr.contains(&message),
                "{name}: the API server's answer lacks {message:?}:\n{stderr}"
            );
        }
    }
}

#[tokio::test]
async fn every_valid_example_is_accepted() {
    let c = Cluster::new("valid").await;
    let examples = examples(false);
    assert!(
        examples.len() >= 4,
        "only {} valid examples",
        examples.len()
    );
    for (name, file) in examples {
        let out = apply_in(&c.ns, &file);
        assert!(
            out.status.success(),
            "{name} was refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn an_object_without_replicas_reads_the_default_through_the_scale_subresource() {
    use kube::api::{Patch, PatchParams};
    use operator::crd::ScalableApi;
    // No operator: the schema default alone. An HPA or KEDA scaling through /scale must
    // find a count, never an absent field read as 0 ("scaling disabled").
    let c = Cluster::new("scaledefault").await;
    let created = scalable_api("users").autoscaling(2, 5).create(&c).await;
    assert_eq!(created.spec.replicas, 1);
    let scale = c.kubectl(&[
        "get",
        "scalableapi/users",
        "--subresource=scale",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(scale, "1");
    // `replicas: null` (kubectl apply of a manifest that dropped it) is defaulted again.
    let patched = c
        .api::<ScalableApi>()
        .patch(
            "users",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 4}})),
        )
        .await
        .expect("set replicas");
    assert_eq!(patched.spec.replicas, 4);
    let dropped = c
        .api::<ScalableApi>()
        .patch(
            "users",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": null, "autoscaling": null}})),
        )
        .await
        .expect("removing replicas and autoscaling is accepted");
    assert_eq!(dropped.spec.replicas, 1);
}
