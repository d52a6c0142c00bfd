//! Server-side apply of the children, removal of children that left the desired set, and
//! keeping `spec.replicas` within the autoscaling bounds (see docs/architecture/operator.md).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, PoisonError};

use crate::controller::OptionalApis;
use crate::crd::ScalableApi;
use crate::desired::Children;
use crate::error::{Error, Result};
use crate::gateway_api::HTTPRoute;
use crate::prometheus_operator::PodMonitor;

pub mod covers;
pub mod ownership;

use covers::covers;
use ownership::{Ownership, ownership};

/// The one field manager of every apply (children and status).
pub const FIELD_MANAGER: &str = "scalable-api-operator";
/// What `spec.replicas` must become before the children are applied: `None` when it is
/// right. Pure.
///
/// Under autoscaling our HPA scales the ScalableApi, which only works while `spec.replicas`
/// is within the bounds (an HPA reads 0 as "scaling disabled"): outside them (the schema
/// default 1 under minReplicas 2, a `replicas: 0` from before) it becomes the nearest bound.
/// Until our HPA scales the ScalableApi (autoscaling just turned on, an HPA of an older
/// operator that targets the Deployment, a resume from suspend), the Deployment's running
/// count is what counts: it is carried into `spec.replicas` (within the bounds), so handing
/// the count to the HPA starts or stops no pod.
pub fn scale_correction(
    sapi: &ScalableApi,
    live_deployment: Option<&Deployment>,
    live_hpa: Option<&HorizontalPodAutoscaler>,
) -> Option<i32> {
    let a = sapi.spec.autoscaling.as_ref()?;
    let hpa_scales_us = live_hpa
        .and_then(|h| h.spec.as_ref())
        .is_some_and(|s| s.scale_target_ref.kind == ScalableApi::kind(&()));
    let running = live_deployment
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .filter(|n| *n > 0 && !hpa_scales_us);
    let target = match running {
        Some(n) => n.clamp(a.min_replicas, a.max_replicas.max(a.min_replicas)),
        None => sapi.deployment_replicas(),
    };
    (target != sapi.spec.replicas).then_some(target)
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// What this process last applied to each child: the hash of the body it sent and the
/// child's generation (resourceVersion for kinds without one) right after. A child whose
/// marker has not moved since is skipped without comparing; one whose marker moved (a
/// scale, a status write, someone's edit) is compared field by field (`covers`). Lost on
/// restart: the first pass then compares every child.
///
/// It also knows which optional children (HPA, PDB, Ingress, HTTPRoute, PodMonitor) it saw
/// absent while they were not wanted, so later passes need not read them again: only this
/// process creates them, and its own writes clear the mark.
#[derive(Debug, Default)]
pub struct LastApplied {
    records: Mutex<HashMap<String, Record>>,
    absent: Mutex<HashSet<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    body: u64,
    marker: String,
    /// Deployment generation our last write of the body produced: later bumps are scales.
    template_generation: Option<i64>,
}

impl LastApplied {
    fn get(&self, key: &str) -> Option<Record> {
        self.lock().get(key).cloned()
    }

    fn put(&self, key: String, record: Record) {
        self.absent().remove(&key);
        self.lock().insert(key, record);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn absent(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.absent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn known_absent(&self, key: &str) -> bool {
        self.absent().contains(key)
    }

    fn mark_absent(&self, key: String) {
        self.lock().remove(&key);
        self.absent().insert(key);
    }

    /// Drops the records of every ScalableApi `keep` says is gone.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        let alive = |key: &String| {
            let mut parts = key.splitn(3, '/');
            let (_, ns, name) = (parts.next(), parts.next(), parts.next());
            keep(ns.unwrap_or_default(), name.unwrap_or_default())
        };
        self.lock().retain(|key, _| alive(key));
        self.absent().retain(alive);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn record_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    child_key::<K>(
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default(),
    )
}

fn child_key<K: Resource<DynamicType = ()>>(ns: &str, name: &str) -> String {
    format!("{}/{ns}/{name}", K::kind(&()))
}

/// Generation where the kind keeps one (spec changes only), else resourceVersion.
fn marker(meta: &ObjectMeta) -> String {
    match (meta.generation, &meta.resource_version) {
        (Some(g), _) => format!("g{g}"),
        (None, Some(rv)) => format!("rv{rv}"),
        (None, None) => String::new(),
    }
}

/// The Deployment generation whose rollout counts when the template did not change: our
/// record's, unless the record is newer than the object (someone re-created it).
fn template_generation(record: Option<&Record>, live_generation: Option<i64>) -> Option<i64> {
    record
        .and_then(|r| r.template_generation)
        .filter(|g| live_generation.is_none_or(|live| *g <= live))
        .or(live_generation)
}

fn body_hash(body: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    body.to_string().hash(&mut h);
    h.finish()
}

/// Pure: would applying `desired` change `live`? Metadata (labels, owner reference) is
/// always compared; the rest only when the marker moved since our last write.
fn up_to_date(
    record: Option<&Record>,
    body: u64,
    marker: &str,
    live: &Value,
    desired: &Value,
) -> bool {
    covers(&live["metadata"], &desired["metadata"])
        && (record.is_some_and(|r| r.body == body && r.marker == marker) || covers(live, desired))
}

/// A child after `ensure`: the live object and whether this pass wrote it.
struct Ensured<K> {
    live: K,
    written: bool,
}

/// Applies `desired` unless the live object already holds it, and records what was applied.
/// A write carries the resourceVersion read, so if anyone changed the object since (the
/// garbage collector orphaning it, an edit) the API server answers 409 and the retry
/// decides again.
async fn ensure<K>(
    api: &Api<K>,
    desired: &K,
    live: Option<K>,
    records: &LastApplied,
) -> Result<Ensured<K>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let key = record_key(desired);
    let desired_json = serde_json::to_value(desired).unwrap_or_default();
    let body = body_hash(&desired_json);
    let previous = records.get(&key);
    let live_json = live
        .as_ref()
        .map(|l| serde_json::to_value(l).unwrap_or_default());
    // A write that leaves the pod template as it is (a scale) is no rollout.
    let kept_template = live.as_ref().zip(live_json.as_ref()).and_then(|(l, j)| {
        covers(&j["spec"]["template"], &desired_json["spec"]["template"])
            .then(|| template_generation(previous.as_ref(), l.meta().generation))
    });
    if let (Some(live), Some(live_json)) = (&live, &live_json) {
        let live_marker = marker(live.meta());
        if up_to_date(
            previous.as_ref(),
            body,
            &live_marker,
            live_json,
            &desired_json,
        ) {
            let template_generation =
                template_generation(previous.as_ref(), live.meta().generation);
            records.put(
                key,
                Record {
                    body,
                    marker: live_marker,
                    template_generation,
                },
            );
            return Ok(Ensured {
                live: live.clone(),
                written: false,
            });
        }
    }
    let mut obj = desired.clone();
    obj.meta_mut().resource_version = live.and_then(|l| l.meta().resource_version.clone());
    let name = obj.meta().name.clone().unwrap_or_default();
    let written = api.patch(&name, &params(), &Patch::Apply(&obj)).await?;
    records.put(
        key,
        Record {
            body,
            marker: marker(written.meta()),
            template_generation: kept_template.flatten().or(written.meta().generation),
        },
    );
    Ok(Ensured {
        live: written,
        written: true,
    })
}

/// Deletes `live` (ours) with its uid and resourceVersion as preconditions; 404 is success.
async fn delete_ours<K>(api: &Api<K>, live: &K) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: live.meta().uid.clone(),
            resource_version: live.meta().resource_version.clone(),
        }),
        ..DeleteParams::background()
    };
    match api.delete(&live.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The live children after the pass, for status.
pub struct Applied {
    pub deployment: Deployment,
    /// Deployment generation of our last write of its pod template (later bumps are scales).
    pub template_generation: Option<i64>,
    /// Objects this pass wrote or deleted (0 when everything was up to date).
    pub writes: usize,
}

/// How a pass over the children ended.
pub enum Pass {
    Applied(Box<Applied>),
    /// An object with a child's name is not ours: nothing was written. `leftover` when every
    /// such object only waits for the garbage collector (an earlier ScalableApi's child).
    Conflict {
        message: String,
        leftover: bool,
    },
    /// An orphan was up for adoption, but a fresh read shows the ScalableApi deleted or
    /// replaced: this reconcile ran on a stale copy, so nothing was written.
    OwnerGone,
}

/// The live children, read in parallel.
struct Live {
    config_map: Option<ConfigMap>,
    service: Option<Service>,
    deployment: Option<Deployment>,
    hpa: Option<HorizontalPodAutoscaler>,
    pdb: Option<PodDisruptionBudget>,
    ingress: Option<Ingress>,
    http_route: Option<HTTPRoute>,
    pod_monitor: Option<PodMonitor>,
}

/// `apis`: what the cluster serves; a kind it does not serve has nothing to read.
async fn read_live(
    client: &Client,
    ns: &str,
    children: &Children,
    apis: OptionalApis,
    records: &LastApplied,
) -> Result<Live> {
    let name = &children.deployment.name_any();
    let cm_name = &children.config_map.name_any();
    let optional = Optional {
        client,
        ns,
        name,
        records,
    };
    let (config_map, service, deployment, hpa, pdb, ingress, http_route, pod_monitor) = futures::try_join!(
        get_child(client, ns, cm_name),
        get_child(client, ns, name),
        get_child(client, ns, name),
        optional.get(true, children.hpa.is_some()),
        optional.get(true, children.pdb.is_some()),
        optional.get(true, children.ingress.is_some()),
        optional.get(apis.gateway_api, children.http_route.is_some()),
        optional.get(apis.prometheus_operator, children.pod_monitor.is_some()),
    )?;
    Ok(Live {
        config_map,
        service,
        deployment,
        hpa,
        pdb,
        ingress,
        http_route,
        pod_monitor,
    })
}

/// Reads of the children that exist only when the spec asks for them.
struct Optional<'a> {
    client: &'a Client,
    ns: &'a str,
    name: &'a str,
    records: &'a LastApplied,
}

impl Optional<'_> {
    /// The live child, unless the cluster does not serve its kind (`served`), or it is not
    /// `wanted` and an earlier pass saw it absent: then nothing is read.
    async fn get<K>(&self, served: bool, wanted: bool) -> Result<Option<K>>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let key = child_key::<K>(self.ns, self.name);
        if !served || (!wanted && self.records.known_absent(&key)) {
            return Ok(None);
        }
        let live = get_child(self.client, self.ns, self.name).await?;
        if live.is_none() && !wanted {
            self.records.mark_absent(key);
        }
        Ok(live)
    }
}

async fn get_child<K>(client: &Client, ns: &str, name: &str) -> Result<Option<K>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| Error::GetChild(K::kind(&()).into_owned(), e))
}

/// True when a fresh read shows `sapi` itself alive: the check before adopting an orphan
/// (a reconcile of a just-deleted object would otherwise hand the orphan to the garbage
/// collector again).
async fn owner_alive(client: &Client, ns: &str, sapi: &ScalableApi) -> Result<bool> {
    let fresh = Api::<ScalableApi>::namespaced(client.clone(), ns)
        .get_opt(&sapi.name_any())
        .await
        .map_err(Error::GetOwner)?;
    Ok(fresh.is_some_and(|f| f.uid() == sapi.uid() && f.meta().deletion_timestamp.is_none()))
}

/// One pass over the children of `sapi`: read them, refuse any that is not ours, bring
/// `spec.replicas` within the autoscaling bounds, write only what differs, delete the
/// optional ones that are not wanted (an unwanted HPA first, see docs/architecture/operator.md).
pub async fn apply_children(
    client: &Client,
    ns: &str,
    sapi: &ScalableApi,
    children: &Children,
    records: &LastApplied,
    apis: OptionalApis,
) -> Result<Pass> {
    let live = read_live(client, ns, children, apis, records).await?;
    let checks = [
        (
            "ConfigMap",
            live.config_map.as_ref().map(|o| o.meta()),
            Some(children.config_map.meta()),
        ),
        (
            "Service",
            live.service.as_ref().map(|o| o.meta()),
            Some(children.service.meta()),
        ),
        (
            "Deployment",
            live.deployment.as_ref().map(|o| o.meta()),
            Some(children.deployment.meta()),
        ),
        (
            "HorizontalPodAutoscaler",
            live.hpa.as_ref().map(|o| o.meta()),
            children.hpa.as_ref().map(|o| o.meta()),
        ),
        (
            "PodDisruptionBudget",
            live.pdb.as_ref().map(|o| o.meta()),
            children.pdb.as_ref().map(|o| o.meta()),
        ),
        (
            "Ingress",
            live.ingress.as_ref().map(|o| o.meta()),
            children.ingress.as_ref().map(|o| o.meta()),
        ),
        (
            "HTTPRoute",
            live.http_route.as_ref().map(|o| o.meta()),
            children
                .http_route
                .as_ref()
                .filter(|_| apis.gateway_api)
                .map(|o| o.meta()),
        ),
        (
            "PodMonitor",
            live.pod_monitor.as_ref().map(|o| o.meta()),
            children
                .pod_monitor
                .as_ref()
                .filter(|_| apis.prometheus_operator)
                .map(|o| o.meta()),
        ),
    ];
    // An unwanted child is compared with what it would be, so a foreign one is left alone.
    let reference = children.deployment.meta();
    let (mut conflicts, mut leftover) = (Vec::new(), true);
    let mut orphans = false;
    for (kind, live_meta, want) in checks {
        let wanted = want.is_some();
        match ownership(kind, live_meta, want.unwrap_or(reference)) {
            Ownership::Foreign(message) if wanted => {
                conflicts.push(message);
                leftover = false;
            }
            Ownership::Leftover(message) if wanted => conflicts.push(message),
            Ownership::Orphan => orphans = true,
            _ => {}
        }
    }
    if !conflicts.is_empty() {
        return Ok(Pass::Conflict {
            message: conflicts.join("; "),
            leftover,
        });
    }
    if orphans && !owner_alive(client, ns, sapi).await? {
        return Ok(Pass::OwnerGone);
    }
    let mine = |kind: &str, meta: Option<&ObjectMeta>| {
        matches!(
            ownership(kind, meta, reference),
            Ownership::Ours | Ownership::Orphan
        )
    };
    let mut writes = 0;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    writes += usize::from(
        ensure(&config_maps, &children.config_map, live.config_map, records)
            .await
            .map_err(Error::ApplyConfigMap)?
            .written,
    );
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    writes += usize::from(
        ensure(&services, &children.service, live.service, records)
            .await
            .map_err(Error::ApplyService)?
            .written,
    );

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    if children.hpa.is_none()
        && let Some(h) = &live.hpa
        && mine("HorizontalPodAutoscaler", Some(h.meta()))
    {
        // Autoscaling off: the HPA goes first, so it cannot change spec.replicas (the count
        // that now stays) after this pass.
        delete_ours(&hpas, h).await.map_err(Error::DeleteHpa)?;
        records.mark_absent(record_key(h));
        writes += 1;
    }

    let ours_hpa = live
        .hpa
        .as_ref()
        .filter(|h| mine("HorizontalPodAutoscaler", Some(h.meta())));
    let mut deployment_body = Cow::Borrowed(&children.deployment);
    if let Some(replicas) = scale_correction(sapi, live.deployment.as_ref(), ours_hpa) {
        set_scale(client, ns, sapi, replicas).await?;
        writes += 1;
        if let Some(spec) = deployment_body.to_mut().spec.as_mut() {
            spec.replicas = Some(replicas);
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment = ensure(&deployments, &*deployment_body, live.deployment, records)
        .await
        .map_err(Error::ApplyDeployment)?;
    writes += usize::from(deployment.written);
    let deployment = deployment.live;

    if let Some(h) = &children.hpa {
        let e = ensure(&hpas, h, live.hpa, records)
            .await
            .map_err(Error::ApplyHpa)?;
        writes += usize::from(e.written);
    }
    // A kind the cluster does not serve was not read (None) and is not wanted here either.
    writes += ensure_optional(
        client,
        ns,
        children.pdb.as_ref(),
        live.pdb,
        records,
        &mine,
        (Error::ApplyPdb, Error::DeletePdb),
    )
    .await?;
    writes += ensure_optional(
        client,
        ns,
        children.ingress.as_ref(),
        live.ingress,
        records,
        &mine,
        (Error::ApplyIngress, Error::ApplyIngress),
    )
    .await?;
    writes += ensure_optional(
        client,
        ns,
        children.http_route.as_ref().filter(|_| apis.gateway_api),
        live.http_route,
        records,
        &mine,
        (Error::ApplyHttpRoute, Error::ApplyHttpRoute),
    )
    .await?;
    writes += ensure_optional(
        client,
        ns,
        children
            .pod_monitor
            .as_ref()
            .filter(|_| apis.prometheus_operator),
        live.pod_monitor,
        records,
        &mine,
        (Error::ApplyPodMonitor, Error::ApplyPodMonitor),
    )
    .await?;
    let template_generation = records
        .get(&record_key(&children.deployment))
        .and_then(|r| r.template_generation);
    Ok(Pass::Applied(Box::new(Applied {
        deployment,
        template_generation,
        writes,
    })))
}

/// Error constructors of a failed apply and a failed delete.
type OnError = (fn(kube::Error) -> Error, fn(kube::Error) -> Error);

/// A child that exists only when asked for (PDB, Ingress, HTTPRoute, PodMonitor): applied
/// when wanted, else deleted when it is ours. Returns the writes made.
async fn ensure_optional<K>(
    client: &Client,
    ns: &str,
    desired: Option<&K>,
    live: Option<K>,
    records: &LastApplied,
    mine: &impl Fn(&str, Option<&ObjectMeta>) -> bool,
    (apply_error, delete_error): OnError,
) -> Result<usize>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match (desired, live) {
        (Some(d), live) => {
            let e = ensure(&api, d, live, records).await.map_err(apply_error)?;
            Ok(usize::from(e.written))
        }
        (None, Some(l)) if mine(&K::kind(&()), Some(l.meta())) => {
            delete_ours(&api, &l).await.map_err(delete_error)?;
            records.mark_absent(record_key(&l));
            Ok(1)
        }
        (None, _) => Ok(0),
    }
}

/// Sets `spec.replicas` through the scale subresource, as an HPA or `kubectl scale` would,
/// on the condition that the ScalableApi is still the version reconciled: a newer count
/// (the HPA's, a `kubectl scale`) makes this a 409 and the retry decides again.
pub async fn set_scale(client: &Client, ns: &str, sapi: &ScalableApi, replicas: i32) -> Result<()> {
    let name = sapi.name_any();
    tracing::info!(%name, replicas, "setting spec.replicas within the autoscaling bounds");
    let api: Api<ScalableApi> = Api::namespaced(client.clone(), ns);
    let patch = json!({
        "metadata": {"resourceVersion": sapi.resource_version()},
        "spec": {"replicas": replicas},
    });
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_scale(&name, &pp, &Patch::Merge(&patch))
        .await
        .map_err(Error::SetScale)?;
    Ok(())
}

/// While suspended nothing is applied, but our HPA goes so the replica count stays put.
pub async fn suspend_children(client: &Client, ns: &str, sapi: &ScalableApi) -> Result<()> {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let live: Option<HorizontalPodAutoscaler> = get_child(client, ns, &sapi.name_any()).await?;
    let Some(h) = live else {
        return Ok(());
    };
    let ours = sapi
        .uid()
        .is_some_and(|uid| h.owner_references().iter().any(|o| o.uid == uid));
    if ours {
        delete_ours(&hpas, &h).await.map_err(Error::DeleteHpa)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
