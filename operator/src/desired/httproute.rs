//! HTTPRoute `<name>` (Gateway API v1), only when `spec.httpRoute` is set: the given Gateways
//! and host names, all traffic to the Service's port.

use kube::ResourceExt;

use super::child_meta;
use crate::crd::ScalableApi;
use crate::gateway_api::{BackendRef, HTTPRoute, ParentReference, RouteRule, RouteSpec};

pub fn http_route(sapi: &ScalableApi) -> Option<HTTPRoute> {
    let spec = sapi.spec.http_route.as_ref()?;
    let mut route = HTTPRoute::new(
        &sapi.name_any(),
        RouteSpec {
            parent_refs: spec
                .parent_refs
                .iter()
                .map(|p| ParentReference {
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    section_name: p.section_name.clone(),
                })
                .collect(),
            hostnames: spec.hostnames.clone(),
            rules: vec![RouteRule {
                backend_refs: vec![BackendRef {
                    name: sapi.name_any(),
                    port: sapi.spec.service.port,
                }],
            }],
        },
    );
    route.metadata = child_meta(sapi, sapi.name_any());
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{GatewayRef, HttpRouteSpec};

    #[test]
    fn no_route_unless_asked() {
        assert!(http_route(&ScalableApi::test()).is_none());
    }

    #[test]
    fn attaches_to_the_gateways_and_sends_everything_to_the_service_port() {
        let mut sapi = ScalableApi::test();
        sapi.spec.http_route = Some(HttpRouteSpec {
            parent_refs: vec![GatewayRef {
                name: "public".into(),
                namespace: Some("gateways".into()),
                section_name: Some("https".into()),
            }],
            hostnames: vec!["users.example.com".into()],
        });
        let r = http_route(&sapi).expect("route");
        assert_eq!(r.metadata.name.as_deref(), Some("users"));
        assert!(r.metadata.owner_references.is_some());
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(json["kind"], "HTTPRoute");
        assert_eq!(
            json["spec"]["parentRefs"],
            serde_json::json!([{"name": "public", "namespace": "gateways", "sectionName": "https"}])
        );
        assert_eq!(
            json["spec"]["hostnames"],
            serde_json::json!(["users.example.com"])
        );
        assert_eq!(
            json["spec"]["rules"],
            serde_json::json!([{"backendRefs": [{"name": "users", "port": 80}]}])
        );
    }
}
