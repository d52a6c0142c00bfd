//! Service `<name>`: `spec.service.port` → the container port named `http`.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{child_meta, labels};
use crate::crd::ScalableApi;

pub fn service(sapi: &ScalableApi) -> Service {
    let svc = &sapi.spec.service;
    Service {
        metadata: child_meta(sapi, sapi.name_any()),
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().to_owned()),
            selector: Some(labels::selector(sapi)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: svc.port,
                // By name, so the container port can move without touching the Service.
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ServiceType;

    #[test]
    fn routes_the_service_port_to_the_http_container_port() {
        let svc = service(&ScalableApi::test().with_service(ServiceType::LoadBalancer, 8443));
        assert_eq!(svc.metadata.name.as_deref(), Some("users"));
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        let ports = spec.ports.expect("ports");
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, 8443);
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("http".into()))
        );
        assert_eq!(spec.selector, Some(labels::selector(&ScalableApi::test())));
    }

    #[test]
    fn defaults_to_cluster_ip_on_port_80() {
        let spec = service(&ScalableApi::test()).spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.ports.expect("ports")[0].port, 80);
    }
}
