//! Ingress `<name>` (networking.k8s.io/v1), only when `spec.ingress` is set: one host and path
//! prefix to the Service's port, TLS from a Secret when asked.

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use kube::ResourceExt;

use super::child_meta;
use crate::crd::ScalableApi;

pub fn ingress(sapi: &ScalableApi) -> Option<Ingress> {
    let spec = sapi.spec.ingress.as_ref()?;
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: sapi.name_any(),
            port: Some(ServiceBackendPort {
                number: Some(sapi.spec.service.port),
                ..ServiceBackendPort::default()
            }),
        }),
        ..IngressBackend::default()
    };
    Some(Ingress {
        metadata: child_meta(sapi, sapi.name_any()),
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(spec.path.clone()),
                        path_type: "Prefix".into(),
                        backend,
                    }],
                }),
            }]),
            tls: spec.tls.as_ref().map(|tls| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(tls.secret_name.clone()),
                }]
            }),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{IngressSpec as Wanted, IngressTls, ServiceType};

    fn wanted(tls: bool) -> ScalableApi {
        let mut sapi = ScalableApi::test().with_service(ServiceType::ClusterIP, 8080);
        sapi.spec.ingress = Some(Wanted {
            class_name: Some("nginx".into()),
            host: "users.example.com".into(),
            path: "/api".into(),
            tls: tls.then(|| IngressTls {
                secret_name: "users-tls".into(),
            }),
        });
        sapi
    }

    #[test]
    fn no_ingress_unless_asked() {
        assert!(ingress(&ScalableApi::test()).is_none());
    }

    #[test]
    fn routes_the_host_and_prefix_to_the_service_port() {
        let i = ingress(&wanted(false)).expect("ingress");
        assert_eq!(i.metadata.name.as_deref(), Some("users"));
        let spec = i.spec.expect("spec");
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        assert_eq!(spec.tls, None);
        let rule = &spec.rules.expect("rules")[0];
        assert_eq!(rule.host.as_deref(), Some("users.example.com"));
        let path = &rule.http.as_ref().expect("http").paths[0];
        assert_eq!(
            (path.path.as_deref(), path.path_type.as_str()),
            (Some("/api"), "Prefix")
        );
        let svc = path.backend.service.as_ref().expect("service backend");
        assert_eq!(svc.name, "users");
        assert_eq!(svc.port.as_ref().and_then(|p| p.number), Some(8080));
    }

    #[test]
    fn tls_names_the_host_and_the_secret() {
        let tls = ingress(&wanted(true))
            .and_then(|i| i.spec)
            .and_then(|s| s.tls)
            .expect("tls");
        assert_eq!(tls[0].hosts, Some(vec!["users.example.com".to_owned()]));
        assert_eq!(tls[0].secret_name.as_deref(), Some("users-tls"));
    }
}
