//! Which optional APIs the cluster serves (Gateway API, prometheus-operator), checked once at
//! start: a watch can only be made for an API that exists.

use kube::Client;

/// True when the cluster serves `plural` in `group_version` (e.g. `gateway.networking.k8s.io/v1`,
/// `httproutes`). A 404 means the CRDs are not installed; another error is logged and read as
/// "not served", so the operator starts without that kind rather than not at all.
pub async fn served(client: &Client, group_version: &str, plural: &str) -> bool {
    let served = match client.list_api_group_resources(group_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == plural),
        Err(kube::Error::Api(s)) if s.is_not_found() => false,
        Err(e) => {
            tracing::warn!(error = %e, group_version, "API discovery failed; treating it as not served");
            false
        }
    };
    tracing::info!(group_version, plural, served, "optional API");
    served
}
