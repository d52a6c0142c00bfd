//! Traffic in: the Ingress, and the HTTPRoute on the Gateway API CRDs that scripts/cluster.sh
//! installs into the control plane (no Gateway controller runs: the route is only stored).

use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use operator::crd::ScalableApi;
use operator::gateway_api::HTTPRoute;
use serde_json::json;

use crate::cluster::*;

fn host(i: &Ingress) -> Option<String> {
    i.spec.as_ref()?.rules.as_ref()?.first()?.host.clone()
}

#[tokio::test]
async fn the_ingress_and_the_http_route_follow_the_spec_and_go_when_removed() {
    let c = Cluster::with_operator("traffic").await;
    create_db_secret(&c, "users").await;
    let sapi = scalable_api("users")
        .with(
            "/spec/ingress",
            json!({"className": "nginx", "host": "users.example.test", "path": "/",
                "tls": {"secretName": "users-tls"}}),
        )
        .with(
            "/spec/httpRoute",
            json!({"parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
                "hostnames": ["users.example.test"]}),
        )
        .create(&c)
        .await;
    let owned_by_sapi =
        |owners: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
            owners
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == sapi.metadata.uid.as_ref())
        };

    let ingress = c
        .wait_for::<Ingress>("users", "the Ingress", |_| true)
        .await;
    assert!(owned_by_sapi(ingress.owner_references()));
    let spec = ingress.spec.clone().expect("spec");
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    assert_eq!(host(&ingress).as_deref(), Some("users.example.test"));
    let path = &spec.rules.expect("rules")[0]
        .http
        .clone()
        .expect("http")
        .paths[0];
    let backend = path.backend.service.clone().expect("service backend");
    assert_eq!(backend.name, "users");
    assert_eq!(backend.port.and_then(|p| p.number), Some(80));
    assert_eq!(
        spec.tls.expect("tls")[0].secret_name.as_deref(),
        Some("users-tls")
    );

    let route = c
        .wait_for::<HTTPRoute>("users", "the HTTPRoute", |_| true)
        .await;
    assert!(owned_by_sapi(route.owner_references()));
    assert_eq!(route.spec.parent_refs[0].name, "public");
    assert_eq!(
        route.spec.parent_refs[0].section_name.as_deref(),
        Some("https")
    );
    assert_eq!(route.spec.hostnames, ["users.example.test"]);
    assert_eq!(route.spec.rules[0].backend_refs[0].name, "users");
    assert_eq!(route.spec.rules[0].backend_refs[0].port, 80);
    c.wait_for_condition("users", "HTTPRoute", "True", "GatewayAPIServed")
        .await;

    // Drift in a field we own is corrected through the Ingress watch.
    c.kubectl(&[
        "patch",
        "ingress/users",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/rules/0/host","value":"other.example.test"}]"#,
    ]);
    c.wait_for::<Ingress>("users", "the host set back", |i| {
        host(i).as_deref() == Some("users.example.test")
    })
    .await;

    patch_spec(&c, "users", json!({"ingress": null, "httpRoute": null})).await;
    c.wait_gone::<Ingress>("users").await;
    c.wait_gone::<HTTPRoute>("users").await;
    let after = c
        .wait_for::<ScalableApi>("users", "the removal reconciled", |s| {
            s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation
        })
        .await;
    assert_eq!(
        condition(&after, "HTTPRoute"),
        None,
        "no HTTPRoute condition without spec.httpRoute"
    );
}
