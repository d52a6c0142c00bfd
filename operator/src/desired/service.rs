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
