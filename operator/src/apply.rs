//! Server-side apply of the children, removal of children that left the desired set, and
//! the explicit hand-over of `spec.replicas` to the HPA (see docs/architecture.md).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, PoisonError};

use crate::crd::ScalableApi;
use crate::desired::Children;
use crate::error::{Error, Result};

pub mod covers;
pub mod ownership;

use covers::covers;
use ownership::{Ownership, ownership};

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

/// Pure decision for the hand-over, from the live Deployment, the one we will apply and the
/// floor (`minReplicas`) the pinned count must not leave at 0.
pub fn replica_handover(
    live: Option<&Deployment>,
    desired: &Deployment,
    floor: i32,
) -> ReplicaHandover {
    let desired_sets_replicas = desired.spec.as_ref().and_then(|s| s.replicas).is_some();
    let Some(live) = live else {
        return ReplicaHandover::NotNeeded;
    };
    if desired_sets_replicas {
        return ReplicaHandover::NotNeeded;
    }
    match live.spec.as_ref().and_then(|s| s.replicas) {
        // Ours: pin it, or dropping the field drops the Deployment to 1.
        Some(replicas) if applies_replicas(live, FIELD_MANAGER) => ReplicaHandover::PinLiveValue {
            replicas: pin_value(replicas, floor),
        },
        // Someone's 0 (replicas: 0 before, kubectl scale --replicas=0): the HPA would never act.
        Some(0) => ReplicaHandover::PinLiveValue {
            replicas: pin_value(0, floor),
        },
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

/// The live replica count to pin while handing over: a count of 0 is raised to the floor,
/// because an HPA reads 0 as "scaling disabled" and would never act.
fn pin_value(live: i32, floor: i32) -> i32 {
    if live == 0 { floor.max(1) } else { live }
}

/// The count a new Deployment starts with under autoscaling: what the HPA last chose when
/// it still exists (the Deployment was deleted under it), else `minReplicas`.
pub fn start_replicas(min: i32, max: i32, hpa_choice: Option<i32>) -> i32 {
    hpa_choice
        .filter(|n| *n > 0)
        .map_or(min, |n| n.clamp(min, max.max(min)))
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// What this process last applied to each child: the hash of the body it sent and the
/// child's generation (resourceVersion for kinds without one) right after. A child whose
/// marker has not moved since is skipped without comparing; one whose marker moved (a
/// scale, a status write, someone's edit) is compared field by field (`covers`). Lost on
/// restart: the first pass then compares every child.
#[derive(Debug, Default)]
pub struct LastApplied(Mutex<HashMap<String, Record>>);

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
        self.lock().insert(key, record);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the records of every ScalableApi `keep` says is gone.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        self.lock().retain(|key, _| {
            let mut parts = key.splitn(3, '/');
            let (_, ns, name) = (parts.next(), parts.next(), parts.next());
            keep(ns.unwrap_or_default(), name.unwrap_or_default())
        });
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn record_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// Generation where the kind keeps one (spec changes only), else resourceVersion.
fn marker(meta: &ObjectMeta) -> String {
    match (meta.generation, &meta.resource_version) {
        (Some(g), _) => format!("g{g}"),
        (None, Some(rv)) => format!("rv{rv}"),
        (None, None) => String::new(),
    }
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

/// How `ensure` decides and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Skip when the live object already holds the body; a write carries the
    /// resourceVersion read, so if anyone changed the object since (the garbage collector
    /// orphaning it, a `kubectl scale`) the API server answers 409 and the retry decides again.
    IfChanged,
    /// Write whatever the live object holds (after a pin our body must go out), still on
    /// the resourceVersion read.
    Always,
    /// Write without a precondition: the object is the one this pass just created, whose
    /// only other writer so far is the Deployment controller's status.
    AlwaysOwnNew,
}

/// Applies `desired` as `mode` says, and records what was applied.
async fn ensure<K>(
    api: &Api<K>,
    desired: &K,
    live: Option<K>,
    records: &LastApplied,
    mode: Write,
) -> Result<Ensured<K>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let key = record_key(desired);
    let desired_json = serde_json::to_value(desired).unwrap_or_default();
    let body = body_hash(&desired_json);
    let previous = records.get(&key);
    if let (Some(live), Write::IfChanged) = (&live, mode) {
        let live_marker = marker(live.meta());
        let live_json = serde_json::to_value(live).unwrap_or_default();
        if up_to_date(
            previous.as_ref(),
            body,
            &live_marker,
            &live_json,
            &desired_json,
        ) {
            let template_generation = previous
                .and_then(|r| r.template_generation)
                .or(live.meta().generation);
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
    obj.meta_mut().resource_version = live
        .filter(|_| mode != Write::AlwaysOwnNew)
        .and_then(|l| l.meta().resource_version.clone());
    let name = obj.meta().name.clone().unwrap_or_default();
    let written = api.patch(&name, &params(), &Patch::Apply(&obj)).await?;
    records.put(
        key,
        Record {
            body,
            marker: marker(written.meta()),
            template_generation: written.meta().generation,
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
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// Deployment generation of our last write of its spec (later bumps are scales).
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
}

async fn read_live(client: &Client, ns: &str, name: &str, cm_name: &str) -> Result<Live> {
    let (config_map, service, deployment, hpa, pdb) = futures::try_join!(
        get_child(client, ns, cm_name),
        get_child(client, ns, name),
        get_child(client, ns, name),
        get_child(client, ns, name),
        get_child(client, ns, name),
    )?;
    Ok(Live {
        config_map,
        service,
        deployment,
        hpa,
        pdb,
    })
}

async fn get_child<K>(client: &Client, ns: &str, name: &str) -> Result<Option<K>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| Error::GetChild(<K as k8s_openapi::Resource>::KIND, e))
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

/// One pass over the children of `sapi`: read them, refuse any that is not ours, write only
/// what differs, hand `spec.replicas` to the HPA, delete the optional ones that are not
/// wanted (an unwanted HPA before the Deployment, see docs/architecture.md).
pub async fn apply_children(
    client: &Client,
    ns: &str,
    sapi: &ScalableApi,
    children: &Children,
    records: &LastApplied,
) -> Result<Pass> {
    let name = children.deployment.name_any();
    let live = read_live(client, ns, &name, &children.config_map.name_any()).await?;
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
        ensure(
            &config_maps,
            &children.config_map,
            live.config_map,
            records,
            Write::IfChanged,
        )
        .await
        .map_err(Error::ApplyConfigMap)?
        .written,
    );
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    writes += usize::from(
        ensure(
            &services,
            &children.service,
            live.service,
            records,
            Write::IfChanged,
        )
        .await
        .map_err(Error::ApplyService)?
        .written,
    );

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let hpa_choice = live
        .hpa
        .as_ref()
        .and_then(|h| h.status.as_ref())
        .map(|s| s.desired_replicas);
    if children.hpa.is_none()
        && let Some(h) = &live.hpa
        && mine("HorizontalPodAutoscaler", Some(h.meta()))
    {
        // Autoscaling off: the HPA goes before we take spec.replicas back. Applied the other
        // way round, a failed DELETE or an HPA sync in between rescales the Deployment.
        delete_ours(&hpas, h).await.map_err(Error::DeleteHpa)?;
        writes += 1;
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let (deployment, deployment_writes) = ensure_deployment(
        &deployments,
        sapi,
        &children.deployment,
        live.deployment,
        hpa_choice,
        records,
    )
    .await?;
    writes += deployment_writes;

    let hpa = match &children.hpa {
        Some(h) => {
            let e = ensure(&hpas, h, live.hpa, records, Write::IfChanged)
                .await
                .map_err(Error::ApplyHpa)?;
            writes += usize::from(e.written);
            Some(e.live)
        }
        None => None,
    };
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    match (&children.pdb, live.pdb) {
        (Some(p), live_pdb) => {
            let e = ensure(&pdbs, p, live_pdb, records, Write::IfChanged)
                .await
                .map_err(Error::ApplyPdb)?;
            writes += usize::from(e.written);
        }
        (None, Some(p)) if mine("PodDisruptionBudget", Some(p.meta())) => {
            delete_ours(&pdbs, &p).await.map_err(Error::DeletePdb)?;
            writes += 1;
        }
        (None, _) => {}
    }
    let template_generation = records
        .get(&record_key(&children.deployment))
        .and_then(|r| r.template_generation);
    Ok(Pass::Applied(Box::new(Applied {
        deployment,
        hpa,
        template_generation,
        writes,
    })))
}

/// The Deployment: created at the start count under autoscaling, `spec.replicas` handed over
/// to the HPA when our body stops setting it, then applied when it differs.
async fn ensure_deployment(
    api: &Api<Deployment>,
    sapi: &ScalableApi,
    desired: &Deployment,
    mut live: Option<Deployment>,
    hpa_choice: Option<i32>,
    records: &LastApplied,
) -> Result<(Deployment, usize)> {
    let mut writes = 0;
    let autoscaling = sapi.spec.autoscaling.as_ref();
    let created_now = live.is_none() && autoscaling.is_some();
    if let (None, Some(a)) = (&live, autoscaling) {
        // Created without spec.replicas it would start at 1 until the HPA acts.
        let mut first = desired.clone();
        if let Some(spec) = first.spec.as_mut() {
            spec.replicas = Some(start_replicas(a.min_replicas, a.max_replicas, hpa_choice));
        }
        let created = ensure(api, &first, None, records, Write::Always)
            .await
            .map_err(Error::ApplyDeployment)?;
        live = Some(created.live);
        writes += 1;
    }
    let floor = autoscaling.map_or(1, |a| a.min_replicas);
    let mut pinned = false;
    if let Some(l) = &live
        && let ReplicaHandover::PinLiveValue { replicas } =
            replica_handover(Some(l), desired, floor)
    {
        live = Some(pin(api, l, replicas, !created_now).await?);
        pinned = true;
        writes += 1;
    }
    // After a pin our body must go out, so that our manager lets go of spec.replicas.
    let mode = match (pinned, created_now) {
        (false, _) => Write::IfChanged,
        (true, false) => Write::Always,
        (true, true) => Write::AlwaysOwnNew,
    };
    let e = ensure(api, desired, live, records, mode)
        .await
        .map_err(Error::ApplyDeployment)?;
    Ok((e.live, writes + usize::from(e.written)))
}

/// Pins `replicas` on `live` under `HANDOVER_MANAGER`, on the condition that nobody wrote
/// the Deployment since `live` was read: a `kubectl scale` in between makes this a 409,
/// and the retry pins the new count instead of overwriting it.
pub async fn pin_replicas(
    api: &Api<Deployment>,
    live: &Deployment,
    replicas: i32,
) -> Result<Deployment> {
    pin(api, live, replicas, true).await
}

/// `pin_replicas`; `guarded: false` drops the precondition for a Deployment this pass just
/// created (nobody but the Deployment controller's status has written it yet).
async fn pin(
    api: &Api<Deployment>,
    live: &Deployment,
    replicas: i32,
    guarded: bool,
) -> Result<Deployment> {
    let name = live.name_any();
    tracing::info!(deployment = %name, replicas, "handing spec.replicas over to the HPA");
    let mut metadata = json!({"name": name});
    if guarded {
        metadata["resourceVersion"] = json!(live.resource_version());
    }
    let pin = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {"replicas": replicas},
    });
    let pp = PatchParams::apply(HANDOVER_MANAGER).force();
    api.patch(&name, &pp, &Patch::Apply(&pin))
        .await
        .map_err(Error::HandOverReplicas)
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
