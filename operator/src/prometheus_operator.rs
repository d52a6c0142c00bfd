//! A typed client for prometheus-operator's PodMonitor (`monitoring.coreos.com/v1`), with only
//! the fields the operator writes (the same reasoning as `gateway_api.rs`: no crate of these
//! types is built on kube 5). Not modelled: status and every field the operator does not set.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{Client, CustomResource};
use serde::{Deserialize, Serialize};

use crate::discovery;

pub const GROUP_VERSION: &str = "monitoring.coreos.com/v1";

#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "PodMonitor",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct PodMonitorSpec {
    pub selector: LabelSelector,
    pub pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
    /// Pod labels copied onto every series (the dashboards group by the instance label).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_target_labels: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodMetricsEndpoint {
    /// The container port's name.
    pub port: String,
    pub path: String,
}

/// True when the cluster serves PodMonitors (prometheus-operator's CRDs are installed).
pub async fn served(client: &Client) -> bool {
    discovery::served(client, GROUP_VERSION, "podmonitors").await
}
