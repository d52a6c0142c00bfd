//! The reconcile loop: a kube-runtime `Controller` on ScalableApi that owns every child kind
//! and watches the Secrets the ScalableApis reference.
//!
//! Required RBAC (kept in sync with charts/scalable-api-operator/templates/rbac.yaml; the
//! chart policy check in scripts/check_chart_policy.py parses this table):
//!
//! ```text
//! scalable.dev            scalableapis                  get list watch
//! scalable.dev            scalableapis/status           get patch
//! scalable.dev            scalableapis/scale            patch
//! scalable.dev            scalableapis/finalizers       update
//! ""                      configmaps, services          get list watch create patch delete
//! apps                    deployments                   get list watch create patch delete
//! autoscaling             horizontalpodautoscalers      get list watch create patch delete
//! policy                  poddisruptionbudgets          get list watch create patch delete
//! networking.k8s.io       ingresses                     get list watch create patch delete
//! gateway.networking.k8s.io  httproutes                 get list watch create patch delete
//! monitoring.coreos.com   podmonitors                   get list watch create patch delete
//! ""                      secrets                       get list watch
//! events.k8s.io           events                        create patch
//! coordination.k8s.io     leases                        get create update  (operator namespace only)
//! ""                      secrets                       get create  (operator namespace only: the hash key)
//! ```
//!
//! `scalableapis/scale` patch: under autoscaling `spec.replicas` is brought within
//! minReplicas..maxReplicas (`apply::scale_correction`), the one write to a ScalableApi
//! besides status. `scalableapis/finalizers` update: children carry `blockOwnerDeletion`, which the
//! OwnerReferencesPermissionEnforcement admission plugin only allows with it. Children and
//! Secrets are watched metadata-only, which needs the same list/watch verbs. The operator
//! namespace's Secret `hash_key::SECRET_NAME` is read (`get`, by name) or made (`create`)
//! once at start; no other Secret is ever written.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::apply::{self, FIELD_MANAGER, LastApplied, Pass};
use crate::crd::{ScalableApi, SecretKeyRef};
use crate::desired::{self, HashKey, Inputs, PodDefaults, labels};
use crate::error::{Error, Result};
use crate::events;
use crate::gateway_api::{self, HTTPRoute};
use crate::metrics::Metrics;
use crate::multi_namespace;
use crate::prometheus_operator::{self, PodMonitor};
use crate::retry::{self, Failures};
use crate::status::{self, Observation, SecretState};

pub use crate::supervisor::{run, run_with};

/// Default re-check of a healthy object, in case a watch event was missed
/// (`--resync-interval-seconds`).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30 * 60);
/// Re-check of an object waiting for its Secret (the Secret watch usually comes first).
pub const SECRET_RECHECK: Duration = Duration::from_secs(5 * 60);
/// Re-check of an object blocked by a foreign object of a child's name: only our own
/// children are watched, so its removal brings no event.
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(20);
/// Re-check while the garbage collector clears an earlier ScalableApi's children: it takes
/// moments (the re-created-after-orphaning case).
pub const COLLECTOR_RECHECK: Duration = Duration::from_secs(1);
/// Reconciles running at once; bounds memory and API-server load after a restart.
pub const MAX_CONCURRENT_RECONCILES: u16 = 32;
/// Triggers for one object closer together than this become one reconcile: the watch
/// events our own writes cause arrive in a burst just after the reconcile that caused them.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// Optional APIs: each kind is applied and watched only when the cluster serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OptionalApis {
    /// Gateway API HTTPRoutes (`gateway.networking.k8s.io/v1`).
    pub gateway_api: bool,
    /// prometheus-operator PodMonitors (`monitoring.coreos.com/v1`).
    pub prometheus_operator: bool,
}

/// Reporting controller name of our Events.
pub const CONTROLLER_NAME: &str = "scalable-api-operator";

/// What the controller needs to know from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Watch only these namespaces (`--namespace` or `--namespaces`); empty watches all.
    pub namespaces: Vec<String>,
    /// Images and ids of the pods (`--default-image`, `--default-cache-image`, `--pod-uid`).
    pub pod_defaults: PodDefaults,
    /// Optional APIs the cluster serves (`optional_apis`, checked at start).
    pub apis: OptionalApis,
    /// This replica's identity in Events (the pod name).
    pub instance: String,
    /// Re-check of a healthy object (`RESYNC_INTERVAL` unless set on the command line).
    pub resync_interval: Duration,
    /// Key of the Secret hash on the pod template (`hash_key::load_or_create`).
    pub hash_key: HashKey,
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pod_defaults: PodDefaults,
    apis: OptionalApis,
    resync_interval: Duration,
    hash_key: HashKey,
    store: Store<ScalableApi>,
    /// What this process last wrote to each child, so an unchanged child is not written.
    last_applied: LastApplied,
    failures: Failures,
}

/// The requeue after a failed reconcile: exponential back-off with jitter by error class.
pub fn error_policy(sapi: Arc<ScalableApi>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.failures.record(&sapi);
    let delay = retry::backoff(error.class(), failures, retry::jitter());
    tracing::warn!(
        name = %sapi.name_any(),
        reason = error.metric_label(),
        failures,
        retry_in = ?delay,
        error = %error,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// How a successful reconcile ended; decides the requeue and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Suspended,
    WaitingForSecret,
    InvalidSpec,
    ChildConflict,
    /// Children of an earlier ScalableApi of this name, which the garbage collector is
    /// removing or orphaning right now.
    WaitingForCollector,
    Deleting,
}

impl Outcome {
    /// When to look again; `resync` is the re-check of a healthy object.
    pub fn action(self, resync: Duration) -> Action {
        match self {
            Outcome::Applied => Action::requeue(resync),
            Outcome::WaitingForSecret => Action::requeue(SECRET_RECHECK),
            Outcome::ChildConflict => Action::requeue(CONFLICT_RECHECK),
            Outcome::WaitingForCollector => Action::requeue(COLLECTOR_RECHECK),
            // Only a spec change can help: the watch brings it.
            Outcome::Suspended | Outcome::InvalidSpec | Outcome::Deleting => Action::await_change(),
        }
    }

    pub fn metric_label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Suspended => "suspended",
            Outcome::WaitingForSecret => "waiting_for_secret",
            Outcome::InvalidSpec => "invalid_spec",
            Outcome::ChildConflict => "child_conflict",
            Outcome::WaitingForCollector => "waiting_for_collector",
            Outcome::Deleting => "deleting",
        }
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The ScalableApis in `secret`'s namespace that reference it.
fn referencing(
    store: &Store<ScalableApi>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<ScalableApi>> {
    let (ns, name) = (secret.namespace(), secret.name_any());
    store
        .state()
        .iter()
        .filter(|s| s.namespace() == ns && s.secret_names().any(|n| n == name))
        .map(|s| ObjectRef::from_obj(&**s))
        .collect()
}

/// Metadata-only watch events of `K` in every scope (`None`: all namespaces), merged.
/// Metadata only: owner references and resourceVersion are all a trigger needs, and neither
/// whole Deployments nor the data of any Secret ever sit in our memory.
fn metadata_triggers<K>(
    client: &Client,
    scopes: &[Option<&str>],
    wc: &watcher::Config,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    futures::stream::select_all(scopes.iter().map(|ns| {
        // An Api of PartialObjectMeta makes kube send metadata-only list and watch requests.
        watcher(api::<PartialObjectMeta<K>>(client, *ns), wc.clone())
            .touched_objects()
            .boxed()
    }))
}

/// Only changes a reconcile can act on trigger one: the spec (generation), labels and
/// annotations. Our own status writes change none of them, and without this filter each of
/// them came back as one more read-only reconcile. The store behind the stream still sees
/// every version.
fn spec_changes(
    objects: impl futures::Stream<Item = Result<ScalableApi, watcher::Error>> + Send + 'static,
) -> impl futures::Stream<Item = Result<ScalableApi, watcher::Error>> + Send + 'static {
    objects.predicate_filter(
        predicates::generation
            .combine(predicates::labels)
            .combine(predicates::annotations),
        Default::default(),
    )
}

/// The optional APIs the cluster serves, for `Settings` (checked once, at start).
pub async fn optional_apis(client: &Client) -> OptionalApis {
    let (gateway_api, prometheus_operator) = futures::join!(
        gateway_api::served(client),
        prometheus_operator::served(client)
    );
    OptionalApis {
        gateway_api,
        prometheus_operator,
    }
}

/// The controller and its context; `run` and the tests add shutdown and drive it.
///
/// No namespace, or one: kube-runtime's own watch of one `Api`. Several: one watcher per
/// namespace for each kind, merged (`multi_namespace`), so only per-namespace Roles are needed.
pub fn build(
    client: Client,
    settings: Settings,
    metrics: Metrics,
) -> (Controller<ScalableApi>, Arc<Context>) {
    let scopes: Vec<Option<&str>> = match settings.namespaces.as_slice() {
        [] => vec![None],
        namespaces => namespaces.iter().map(|ns| Some(ns.as_str())).collect(),
    };
    let ours =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    let (store, writer) = reflector::store();
    let controller = match scopes.as_slice() {
        [scope] => {
            let objects = watcher::watcher(
                api::<ScalableApi>(&client, *scope),
                watcher::Config::default(),
            )
            .reflect(writer)
            .applied_objects();
            Controller::for_stream(spec_changes(objects), store)
        }
        _ => {
            let objects = multi_namespace::watch_namespaces(&client, &settings.namespaces, writer);
            Controller::for_stream(spec_changes(objects), store)
        }
    };
    let store = controller.store();
    let mapper_store = store.clone();
    let controller = controller
        .with_config(
            controller::Config::default()
                .concurrency(MAX_CONCURRENT_RECONCILES)
                .debounce(DEBOUNCE),
        )
        .owns_stream(metadata_triggers::<ConfigMap>(&client, &scopes, &ours))
        .owns_stream(metadata_triggers::<Deployment>(&client, &scopes, &ours))
        .owns_stream(metadata_triggers::<Service>(&client, &scopes, &ours))
        .owns_stream(metadata_triggers::<HorizontalPodAutoscaler>(
            &client, &scopes, &ours,
        ))
        .owns_stream(metadata_triggers::<PodDisruptionBudget>(
            &client, &scopes, &ours,
        ))
        .owns_stream(metadata_triggers::<Ingress>(&client, &scopes, &ours))
        .watches_stream(
            metadata_triggers::<Secret>(&client, &scopes, &watcher::Config::default()),
            move |secret| referencing(&mapper_store, &secret),
        );
    // Only an API the cluster serves can be watched: without the Gateway API CRDs the
    // watch would fail for good.
    let controller = if settings.apis.gateway_api {
        controller.owns_stream(metadata_triggers::<HTTPRoute>(&client, &scopes, &ours))
    } else {
        controller
    };
    let controller = if settings.apis.prometheus_operator {
        controller.owns_stream(metadata_triggers::<PodMonitor>(&client, &scopes, &ours))
    } else {
        controller
    };
    let reporter = Reporter {
        controller: CONTROLLER_NAME.into(),
        instance: Some(settings.instance),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics,
        pod_defaults: settings.pod_defaults,
        apis: settings.apis,
        resync_interval: settings.resync_interval,
        hash_key: settings.hash_key,
        store,
        last_applied: LastApplied::default(),
        failures: Failures::default(),
    });
    (controller, ctx)
}

/// Runs the controller stream to its end, logging every result (errors are never dropped).
pub async fn drive(controller: Controller<ScalableApi>, ctx: Arc<Context>) {
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, action)) => tracing::debug!(object = %obj, ?action, "reconciled"),
                // error_policy already logged it at warn, with the back-off it chose.
                Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                    tracing::debug!(object = %obj, reason = e.metric_label(), "reconcile failed");
                }
                Err(e) => tracing::warn!(error = %e, "controller error"),
            }
        })
        .await;
}

#[tracing::instrument(skip_all, fields(namespace = sapi.namespace().unwrap_or_default(), name = %sapi.name_any()))]
pub async fn reconcile(sapi: Arc<ScalableApi>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.start();
    let result = reconcile_inner(&sapi, &ctx).await;
    timer.finish(result.as_ref().map(|o| o.metric_label()));
    let managed = ctx.store.state();
    ctx.metrics.set_managed_objects(managed.len());
    // Five records per object at most: forget the children of deleted objects.
    if ctx.last_applied.len() > 5 * managed.len() + 100 {
        let alive: std::collections::HashSet<(String, String)> = managed
            .iter()
            .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
            .collect();
        ctx.last_applied
            .retain(|ns, name| alive.contains(&(ns.to_owned(), name.to_owned())));
    }
    let outcome = result?;
    ctx.failures.reset(&sapi);
    tracing::debug!(outcome = outcome.metric_label(), "reconciled");
    Ok(outcome.action(ctx.resync_interval))
}

async fn reconcile_inner(sapi: &ScalableApi, ctx: &Context) -> Result<Outcome> {
    let ns = sapi.namespace().ok_or(Error::MissingNamespace)?;
    if sapi.meta().deletion_timestamp.is_some() {
        // Children carry owner references: the garbage collector removes them.
        return Ok(Outcome::Deleting);
    }
    let secret = observe_secret(ctx, &ns, sapi).await?;
    let jwks = match &sapi.spec.auth {
        Some(auth) => Some(observe_key(ctx, &ns, &auth.jwt.jwks_secret_ref).await?),
        None => None,
    };
    let events = match &sapi.spec.events {
        Some(e) => observe_keys(ctx, &ns, &desired::kafka::secret_keys(&e.kafka)).await?,
        None => None,
    };
    let mut obs = Observation {
        generation: sapi.meta().generation,
        suspended: sapi.spec.suspend,
        spec_error: None,
        apply_error: None,
        conflict: None,
        collector_pending: false,
        secret: &secret,
        deployment: None,
        template_generation: None,
        replicas: sapi.deployment_replicas(),
        floor: sapi.replica_floor(),
        selector: sapi.selector_string(),
        url: sapi.url(),
        http_route: sapi.spec.http_route.as_ref().map(|_| ctx.apis.gateway_api),
        pod_monitor: sapi
            .pod_monitor_wanted()
            .then_some(ctx.apis.prometheus_operator),
        jwks: jwks.as_ref(),
        events: events.as_ref(),
    };
    if sapi.spec.suspend {
        apply::suspend_children(&ctx.client, &ns, sapi).await?;
        return observe_only(ctx, sapi, &ns, obs, Outcome::Suspended).await;
    }
    let secret_hash = match &secret {
        SecretState::Found { hash } => Some(hash.clone()),
        _ => None,
    };
    let jwks_hash = match &jwks {
        Some(SecretState::Found { hash }) => Some(hash.clone()),
        _ => None,
    };
    let events_hash = match &events {
        Some(SecretState::Found { hash }) => Some(hash.clone()),
        _ => None,
    };
    let inputs = Inputs {
        pod: ctx.pod_defaults.clone(),
        secret_hash,
        jwks_hash,
        events_hash,
    };
    let children = match desired::desired(sapi, &inputs) {
        Ok(children) => children,
        Err(e) => {
            obs.spec_error = Some(e.to_string());
            return observe_only(ctx, sapi, &ns, obs, Outcome::InvalidSpec).await;
        }
    };
    if !secret.is_usable()
        || jwks.as_ref().is_some_and(|j| !j.is_usable())
        || events.as_ref().is_some_and(|e| !e.is_usable())
    {
        // Existing children are left alone until the Secret is usable: a running stack
        // keeps serving while someone restores its Secret.
        return observe_only(ctx, sapi, &ns, obs, Outcome::WaitingForSecret).await;
    }
    let pass = match apply::apply_children(
        &ctx.client,
        &ns,
        sapi,
        &children,
        &ctx.last_applied,
        ctx.apis,
    )
    .await
    {
        Ok(pass) => pass,
        Err(e) => return Err(report_rejection(ctx, sapi, &ns, obs, e).await),
    };
    let applied = match pass {
        Pass::Applied(applied) => applied,
        Pass::Conflict { message, leftover } => {
            obs.conflict = Some(message);
            obs.collector_pending = leftover;
            let outcome = if leftover {
                Outcome::WaitingForCollector
            } else {
                Outcome::ChildConflict
            };
            return observe_only(ctx, sapi, &ns, obs, outcome).await;
        }
        // Reconciled from a stale copy of a deleted object: the watch brings the deletion.
        Pass::OwnerGone => return Ok(Outcome::Deleting),
    };
    tracing::debug!(writes = applied.writes, "children reconciled");
    obs.deployment = Some(&applied.deployment);
    obs.template_generation = applied.template_generation;
    write_status(ctx, sapi, &ns, &obs).await?;
    Ok(Outcome::Applied)
}

/// A child the API server refused for good goes to status and an Event before the error is
/// returned: error_policy still backs off, but the user sees why nothing rolls out.
/// Transient errors (5xx, 409, 429, timeouts) return unreported; the retry usually succeeds.
async fn report_rejection(
    ctx: &Context,
    sapi: &ScalableApi,
    ns: &str,
    mut obs: Observation<'_>,
    error: Error,
) -> Error {
    let Some(message) = error.child_rejection() else {
        return error;
    };
    obs.apply_error = Some(message);
    // The apply error is what error_policy logs and counts; a failed report is only logged.
    if let Err(e) = write_observed(ctx, sapi, ns, obs).await {
        tracing::warn!(error = %e, "reporting the refused child in status failed");
    }
    error
}

/// Status without applying anything: reads the live Deployment for the replica counts.
async fn observe_only(
    ctx: &Context,
    sapi: &ScalableApi,
    ns: &str,
    obs: Observation<'_>,
    outcome: Outcome,
) -> Result<Outcome> {
    write_observed(ctx, sapi, ns, obs).await?;
    Ok(outcome)
}

/// Writes the status of `obs` with the live Deployment read for the replica counts.
async fn write_observed(
    ctx: &Context,
    sapi: &ScalableApi,
    ns: &str,
    obs: Observation<'_>,
) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let live = deployments
        .get_opt(&sapi.name_any())
        .await
        .map_err(Error::GetDeployment)?;
    let obs = Observation {
        deployment: live.as_ref(),
        ..obs
    };
    write_status(ctx, sapi, ns, &obs).await
}

async fn observe_secret(ctx: &Context, ns: &str, sapi: &ScalableApi) -> Result<SecretState> {
    let Some(r) = sapi.secret_ref() else {
        return Ok(SecretState::Unreferenced);
    };
    observe_key(ctx, ns, r).await
}

/// Whether a Secret key exists, and the keyed hash of its value (which rolls the pods).
async fn observe_key(ctx: &Context, ns: &str, r: &SecretKeyRef) -> Result<SecretState> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = secrets.get_opt(&r.name).await.map_err(Error::GetSecret)?;
    Ok(match secret {
        None => SecretState::SecretNotFound {
            name: r.name.clone(),
        },
        Some(s) => match desired::secret_hash(&s, &r.key, &ctx.hash_key) {
            Some(hash) => SecretState::Found { hash },
            None => SecretState::KeyNotFound {
                name: r.name.clone(),
                key: r.key.clone(),
            },
        },
    })
}

/// Several Secret keys as one: the first that is missing, or one hash over all of them (so
/// any new value rolls the pods). `None` for no keys.
async fn observe_keys(
    ctx: &Context,
    ns: &str,
    refs: &[SecretKeyRef],
) -> Result<Option<SecretState>> {
    let mut hashes = Vec::with_capacity(refs.len());
    for r in refs {
        match observe_key(ctx, ns, r).await? {
            SecretState::Found { hash } => hashes.push(hash),
            missing => return Ok(Some(missing)),
        }
    }
    Ok((!hashes.is_empty()).then(|| SecretState::Found {
        hash: hashes.join(":"),
    }))
}

/// Writes the status only when it changed, then publishes Events for the transitions.
async fn write_status(
    ctx: &Context,
    sapi: &ScalableApi,
    ns: &str,
    obs: &Observation<'_>,
) -> Result<()> {
    let previous = sapi.status.as_ref();
    let new = status::compute(obs, previous, Timestamp::now());
    if status::unchanged(previous, &new) {
        return Ok(());
    }
    let body = json!({
        "apiVersion": ScalableApi::api_version(&()),
        "kind": ScalableApi::kind(&()),
        "status": new,
    });
    let api: Api<ScalableApi> = Api::namespaced(ctx.client.clone(), ns);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&sapi.name_any(), &pp, &Patch::Apply(&body))
        .await
        .map_err(Error::PatchStatus)?;
    events::publish(&ctx.recorder, sapi, &events::events_for(previous, &new)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_specs_and_suspended_objects_wait_for_a_change() {
        let resync = RESYNC_INTERVAL;
        assert_eq!(Outcome::InvalidSpec.action(resync), Action::await_change());
        assert_eq!(Outcome::Suspended.action(resync), Action::await_change());
        assert_eq!(
            Outcome::WaitingForSecret.action(resync),
            Action::requeue(SECRET_RECHECK)
        );
        let short = Duration::from_secs(20);
        assert_eq!(Outcome::Applied.action(short), Action::requeue(short));
    }
}
