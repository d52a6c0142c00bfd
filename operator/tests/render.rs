//! `scalable-api-operator render` as a user runs it: a file in, YAML (or an error) out.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_scalable-api-operator");

const VALID: &str = r#"
apiVersion: scalable.dev/v1alpha1
kind: ScalableApi
metadata: { name: users, namespace: shop }
spec:
  autoscaling: { minReplicas: 3, maxReplicas: 20, targetCPUUtilizationPercentage: 50 }
  database:
    host: postgres.shop.svc
    name: users
    user: app
    passwordSecretRef: { name: users-db, key: password }
  rateLimit: { requestsPerSecond: 200, burst: 400 }
"#;

fn render_file(yaml: &str, extra: &[&str]) -> Output {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(yaml.as_bytes()).expect("write");
    let path = file.path().to_str().expect("utf-8 path").to_owned();
    Command::new(BIN)
        .args(["render", "-f", &path])
        .args(extra)
        .output()
        .expect("run the binary")
}

/// The documents of a render that must succeed.
fn rendered(yaml: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = render_file(yaml, extra);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    documents(&out.stdout)
}

fn documents(stdout: &[u8]) -> Vec<serde_json::Value> {
    let text = std::str::from_utf8(stdout).expect("utf-8");
    serde_saphyr::from_multiple(text).expect("multi-document YAML")
}

#[test]
fn valid_object_renders_the_five_children() {
    let out = render_file(VALID, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents(&out.stdout);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget"
        ]
    );
    for d in &docs {
        assert_eq!(d["metadata"]["namespace"], "shop");
        assert_eq!(
            d["metadata"]["labels"]["app.kubernetes.io/instance"],
            "users"
        );
    }
    // Autoscaling on: the Deployment runs spec.replicas (default 1) within the bounds, and
    // the HPA scales the ScalableApi.
    assert_eq!(docs[1]["spec"]["replicas"], 3);
    assert_eq!(docs[3]["spec"]["scaleTargetRef"]["kind"], "ScalableApi");
}

#[test]
fn output_is_stable() {
    let a = render_file(VALID, &[]);
    let b = render_file(VALID, &[]);
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn default_image_flag_is_used_without_spec_image() {
    let out = render_file(VALID, &["--default-image", "registry.local/api:dev"]);
    let docs = documents(&out.stdout);
    let image = &docs[1]["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(image, "registry.local/api:dev");
}

#[test]
fn stdin_is_read_with_dash() {
    let mut child = Command::new(BIN)
        .args(["render", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(VALID.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert_eq!(documents(&out.stdout).len(), 5);
}

#[test]
fn cel_violation_exits_non_zero_with_the_rule_message() {
    let invalid = VALID.replace("minReplicas: 3", "minReplicas: 30");
    let out = render_file(&invalid, &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas"),
        "{stderr}"
    );
}

#[test]
fn schema_violation_exits_non_zero_naming_the_field() {
    let invalid = VALID.replace(
        "name: users\n    user",
        "name: users\n    sslMode: sometimes\n    user",
    );
    let out = render_file(&invalid, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.database.sslMode: Unsupported value"),
        "{stderr}"
    );
}

#[test]
fn missing_file_and_bad_yaml_are_reported() {
    let out = Command::new(BIN)
        .args(["render", "-f", "/nonexistent/sapi.yaml"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/sapi.yaml"));
    let out = render_file("spec: [unclosed", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid YAML"));
}

#[test]
fn other_kinds_in_the_file_are_skipped() {
    let with_secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: users-db }}\nstringData: {{ password: pw }}\n---{VALID}"
    );
    let out = render_file(&with_secret, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(documents(&out.stdout).len(), 5);
    let out = render_file("apiVersion: v1\nkind: Secret\nmetadata: { name: x }\n", &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no ScalableApi (found v1 Secret)")
    );
}

#[test]
fn huge_cache_max_memory_is_rejected_not_a_panic() {
    let invalid = VALID.replace(
        "  rateLimit:",
        "  cache: { maxMemory: \"18446744073700000000\" }\n  rateLimit:",
    );
    let out = render_file(&invalid, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(
            "spec.cache.maxMemory must be a positive Kubernetes quantity of at most 64Gi"
        ),
        "{stderr}"
    );
}

#[test]
fn name_that_cannot_name_the_service_is_rejected() {
    for bad in ["my.api", &"a".repeat(71)] {
        let invalid = VALID.replace("name: users, namespace", &format!("name: {bad}, namespace"));
        let out = render_file(&invalid, &[]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("metadata.name must be a DNS-1035 label"),
            "{stderr}"
        );
    }
}

#[test]
fn pod_uid_platform_sets_no_ids_and_the_cache_image_flag_picks_the_sidecar() {
    let fixed = documents(&render_file(VALID, &[]).stdout);
    let pod = &fixed[1]["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["initContainers"][0]["image"],
        "docker.io/valkey/valkey:8.1-alpine"
    );
    let docs = rendered(
        VALID,
        &[
            "--pod-uid",
            "platform",
            "--default-cache-image",
            "registry.local/redis:7.2",
        ],
    );
    let pod = &docs[1]["spec"]["template"]["spec"];
    let text = serde_json::to_string(pod).expect("json");
    for id in ["runAsUser", "runAsGroup", "fsGroup"] {
        assert!(
            !text.contains(id),
            "{id} set with --pod-uid platform: {text}"
        );
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["initContainers"][0]["image"],
        "registry.local/redis:7.2"
    );
    assert_eq!(pod["initContainers"][0]["command"][0], "redis-server");
    let refused = render_file(VALID, &["--pod-uid", "0"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("neither a non-root uid"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn ingress_and_http_route_render_after_the_other_children() {
    let yaml = format!(
        "{VALID}  ingress: {{ host: users.example.com, tls: {{ secretName: users-tls }} }}\n  httpRoute: {{ parentRefs: [{{ name: public, namespace: gateways }}] }}\n"
    );
    let docs = rendered(&yaml, &[]);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(&kinds[5..], ["Ingress", "HTTPRoute"]);
    assert_eq!(docs[5]["spec"]["rules"][0]["host"], "users.example.com");
    assert_eq!(docs[5]["spec"]["rules"][0]["http"]["paths"][0]["path"], "/");
    assert_eq!(docs[6]["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(docs[6]["spec"]["parentRefs"][0]["namespace"], "gateways");
}
