//! Fixtures that read like sentences: `scalable_api("users").replicas(3).create(&h)`.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use operator::crd::ScalableApi;
use serde_json::{Value, json};

pub use super::sapi_fixture::*;
use super::{Harness, eventually};

/// Namespace of every fixture.
pub const NS: &str = "shop";
/// `--default-image` of the test controller.
pub const DEFAULT_TEST_IMAGE: &str = "registry.test/api-server:1.0.0";
pub const DEPLOYMENTS: &str = "apps/v1/deployments";
pub const CONFIGMAPS: &str = "v1/configmaps";
pub const SERVICES: &str = "v1/services";
pub const HPAS: &str = "autoscaling/v2/horizontalpodautoscalers";
pub const PDBS: &str = "policy/v1/poddisruptionbudgets";
pub const SAPIS: &str = "scalable.dev/v1alpha1/scalableapis";
pub const EVENTS: &str = "events.k8s.io/v1/events";
/// Field manager the tests use to act as kube-controller-manager (Deployment and HPA controllers).
pub const KCM: &str = "kube-controller-manager";

impl SapiFixture {
    pub async fn create(self, h: &Harness) -> ScalableApi {
        let ns = self.obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or(NS)
            .to_owned();
        let api: Api<ScalableApi> = Api::namespaced(h.client.clone(), &ns);
        api.create(&PostParams::default(), &self.in_namespace(&ns).build())
            .await
            .expect("create ScalableApi")
    }
}

pub fn secret(name: &str, key: &str, value: &str) -> Secret {
    secret_in(NS, name, key, value)
}

/// Creates the Secret a `scalable_api(name)` fixture references.
pub async fn create_db_secret(h: &Harness, sapi_name: &str) {
    h.api::<Secret>()
        .create(
            &PostParams::default(),
            &secret(&format!("{sapi_name}-db"), "password", "s3cret"),
        )
        .await
        .expect("create Secret");
}

/// Merge-patches the ScalableApi's spec, as `kubectl patch --type merge` would.
pub async fn patch_spec(h: &Harness, name: &str, spec: Value) {
    h.api::<ScalableApi>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
        .expect("patch ScalableApi spec");
}

/// Acts as the Deployment controller: all `replicas` pods exist and `ready` are ready.
pub async fn set_deployment_status(h: &Harness, name: &str, ready: i32) {
    let d = h.object(DEPLOYMENTS, name).expect("Deployment exists");
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let status = json!({"status": {
        "observedGeneration": d["metadata"]["generation"],
        "replicas": replicas, "updatedReplicas": replicas,
        "readyReplicas": ready, "availableReplicas": ready,
    }});
    h.api::<k8s_openapi::api::apps::v1::Deployment>()
        .patch_status(name, &as_kcm(), &Patch::Merge(status))
        .await
        .expect("patch Deployment status");
}

/// The condition `type_` of the stored ScalableApi, as (status, reason).
pub fn condition(h: &Harness, name: &str, type_: &str) -> Option<(String, String)> {
    let obj = h.object(SAPIS, name)?;
    let c = obj
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
    ))
}

/// Events regarding `name` with this reason.
pub fn events_with_reason(h: &Harness, name: &str, reason: &str) -> usize {
    h.fake
        .objects(EVENTS, NS)
        .iter()
        .filter(|e| e["regarding"]["name"] == name && e["reason"] == reason)
        .count()
}

/// Waits until `name`'s condition `type_` has `status` and `reason`.
pub async fn wait_for_condition(h: &Harness, name: &str, type_: &str, status: &str, reason: &str) {
    eventually(&format!("{type_}={status}/{reason}"), || {
        (condition(h, name, type_)? == (status.into(), reason.into())).then_some(())
    })
    .await;
}

/// Waits until exactly one Event with `reason` regards `name`; returns it.
pub async fn wait_for_event(h: &Harness, what: &str, name: &str, reason: &str) -> Value {
    eventually(what, || {
        (events_with_reason(h, name, reason) == 1).then_some(())
    })
    .await;
    h.fake
        .objects(EVENTS, NS)
        .into_iter()
        .find(|e| e["reason"] == reason)
        .expect("event")
}

/// PatchParams of an imperative write by kube-controller-manager.
pub fn as_kcm() -> PatchParams {
    PatchParams {
        field_manager: Some(KCM.into()),
        ..PatchParams::default()
    }
}
