//! A typed client for Gateway API's HTTPRoute (`gateway.networking.k8s.io/v1`), with only the
//! fields the operator writes. The `gateway-api` crate (kube-rs/gateway-api-rs, 0.22) is built
//! on kube 4 and k8s-openapi 0.28, which cannot sit next to our kube 5 / k8s-openapi 0.29.
//! Not modelled: status, filters, matches, and every spec field the operator does not set (a
//! live route read through this type drops them; `covers` only compares what we send).

use kube::{Client, CustomResource};

use crate::discovery;
use serde::{Deserialize, Serialize};

pub const GROUP_VERSION: &str = "gateway.networking.k8s.io/v1";

#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    pub parent_refs: Vec<ParentReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

/// A Service and port (Gateway API's default backend kind).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BackendRef {
    pub name: String,
    pub port: i32,
}

/// True when the cluster serves HTTPRoutes (the Gateway API CRDs are installed).
pub async fn served(client: &Client) -> bool {
    discovery::served(client, GROUP_VERSION, "httproutes").await
}
