//! Server-side apply of the children, removal of children that left the desired set, and
//! the explicit hand-over of `spec.replicas` to the HPA (see docs/architecture.md).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::desired::Children;
use crate::error::{Error, Result};

/// The one field manager of every apply (children and status).
pub const FIELD_MANAGER: &str = "scalable-api-operator";
/// Manager that briefly co-owns `spec.replicas` while the HPA takes the count over.
pub const HANDOVER_MANAGER: &str = "scalable-api-operator-handover";

/// What must happen to `spec.replicas` before applying a Deployment body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaHandover {
    /// Apply as is.
    NotNeeded,
    /// Our manager still owns `spec.replicas` but the body omits it: pin the live value
    /// under `HANDOVER_MANAGER` first, or the API server drops the field and the
    /// Deployment falls back to 1 replica.
    PinLiveValue { replicas: i32 },
}

/// Pure decision for the hand-over, from the live Deployment and the one we will apply.
pub fn replica_handover(live: Option<&Deployment>, desired: &Deployment) -> ReplicaHandover {
    let desired_sets_replicas = desired.spec.as_ref().and_then(|s| s.replicas).is_some();
    let Some(live) = live else {
        return ReplicaHandover::NotNeeded;
    };
    let live_replicas = live.spec.as_ref().and_then(|s| s.replicas);
    match live_replicas {
        Some(replicas) if !desired_sets_replicas && applies_replicas(live, FIELD_MANAGER) => {
            ReplicaHandover::PinLiveValue { replicas }
        }
        _ => ReplicaHandover::NotNeeded,
    }
}

/// True when `manager` owns `spec.replicas` through an Apply entry of `managedFields`.
pub fn applies_replicas(d: &Deployment, manager: &str) -> bool {
    d.managed_fields().iter().any(|e| {
        e.manager.as_deref() == Some(manager)
            && e.operation.as_deref() == Some("Apply")
            && e.subresource.as_deref().is_none_or(str::is_empty)
            && e.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:replicas"))
                .is_some()
    })
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &params(), &Patch::Apply(obj)).await
}

/// Deletes `name` if it exists; 404 is success.
async fn delete_if_exists<K>(api: &Api<K>, name: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The live children after the apply, for status.
pub struct Applied {
    pub deployment: Deployment,
    pub hpa: Option<HorizontalPodAutoscaler>,
}

/// Applies every child of `children` in `ns` and deletes the optional ones that are not wanted
/// (an unwanted HPA before the Deployment, see docs/architecture.md).
pub async fn apply_children(client: &Client, ns: &str, children: &Children) -> Result<Applied> {
    let name = children.deployment.name_any();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    apply(&config_maps, &children.config_map)
        .await
        .map_err(Error::ApplyConfigMap)?;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    apply(&services, &children.service)
        .await
        .map_err(Error::ApplyService)?;

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    if children.hpa.is_none() {
        // Autoscaling off: the HPA goes before we take spec.replicas back. Applied the other
        // way round, a failed DELETE or an HPA sync in between rescales the Deployment.
        delete_if_exists(&hpas, &name)
            .await
            .map_err(Error::DeleteHpa)?;
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    hand_over_replicas(&deployments, &children.deployment).await?;
    let deployment = apply(&deployments, &children.deployment)
        .await
        .map_err(Error::ApplyDeployment)?;

    let hpa = match &children.hpa {
        Some(h) => Some(apply(&hpas, h).await.map_err(Error::ApplyHpa)?),
        None => None,
    };
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    match &children.pdb {
        Some(p) => {
            apply(&pdbs, p).await.map_err(Error::ApplyPdb)?;
        }
        None => {
            delete_if_exists(&pdbs, &name)
                .await
                .map_err(Error::DeletePdb)?;
        }
    }
    Ok(Applied { deployment, hpa })
}

/// Only when autoscaling is on (the body omits replicas) is the live object read.
async fn hand_over_replicas(api: &Api<Deployment>, desired: &Deployment) -> Result<()> {
    if desired.spec.as_ref().and_then(|s| s.replicas).is_some() {
        return Ok(());
    }
    let name = desired.name_any();
    let live = api.get_opt(&name).await.map_err(Error::GetDeployment)?;
    if let ReplicaHandover::PinLiveValue { replicas } = replica_handover(live.as_ref(), desired) {
        tracing::info!(deployment = %name, replicas, "handing spec.replicas over to the HPA");
        let pin = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": replicas},
        });
        let pp = PatchParams::apply(HANDOVER_MANAGER).force();
        api.patch(&name, &pp, &Patch::Apply(&pin))
            .await
            .map_err(Error::HandOverReplicas)?;
    }
    Ok(())
}

/// While suspended nothing is applied, but the HPA goes so the replica count stays put.
pub async fn suspend_children(client: &Client, ns: &str, name: &str) -> Result<()> {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    delete_if_exists(&hpas, name)
        .await
        .map_err(Error::DeleteHpa)?;
    Ok(())
}

#[cfg(test)]
mod tests;
