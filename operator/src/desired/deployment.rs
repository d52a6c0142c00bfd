//! Deployment `<name>`: container `api`, optional Redis sidecar, restricted security, probes,
//! topology spread and the config-hash annotation that rolls pods on config or Secret change.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource,
    HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretVolumeSource, SleepAction, TopologySpreadConstraint, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::configmap::{ADMIN_PORT, HTTP_PORT, JWKS_DIR, JWKS_FILE, SHUTDOWN_TIMEOUT_SECONDS};
use super::{
    CONFIG_HASH_ANNOTATION, Inputs, SpecError, child_meta, kafka, labels, redis, secret_env,
    security,
};
use crate::crd::ScalableApi;
use crate::crd_funcs::DatabaseAuth;

pub const API_CONTAINER: &str = "api";
/// The JWKS Secret's volume (`spec.auth.jwt`); the api-server re-reads the file on change.
pub const JWKS_VOLUME: &str = "jwks";
/// Time for endpoints to drop the pod before the api-server stops accepting connections.
pub const PRE_STOP_SLEEP_SECONDS: i64 = 5;
/// preStop sleep + the api-server's drain + margin, so the kubelet never SIGKILLs a drain.
pub const TERMINATION_GRACE_SECONDS: i64 = PRE_STOP_SLEEP_SECONDS + SHUTDOWN_TIMEOUT_SECONDS + 10;

pub fn deployment(
    sapi: &ScalableApi,
    inputs: &Inputs,
    hash: &str,
) -> Result<Deployment, SpecError> {
    let spec = &sapi.spec;
    let selector = labels::selector(sapi);
    let mut init_containers = Vec::new();
    let mut volumes = vec![empty_dir("tmp")];
    if let Some(auth) = &spec.auth {
        volumes.push(Volume {
            name: JWKS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(auth.jwt.jwks_secret_ref.name.clone()),
                items: Some(vec![KeyToPath {
                    key: auth.jwt.jwks_secret_ref.key.clone(),
                    path: JWKS_FILE.into(),
                    ..KeyToPath::default()
                }]),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    volumes.extend(
        spec.events
            .as_ref()
            .and_then(|e| kafka::tls_volume(&e.kafka)),
    );
    if spec.cache.enabled {
        init_containers.push(redis::sidecar(&spec.cache, &inputs.pod)?);
        volumes.push(empty_dir(redis::DATA_VOLUME));
    }
    let options = spec.pod.clone().unwrap_or_default();
    let pod = PodSpec {
        containers: vec![api_container(sapi, inputs)?],
        init_containers: (!init_containers.is_empty()).then_some(init_containers),
        volumes: Some(volumes),
        security_context: Some(security::pod(inputs.pod.uid)),
        // The API never talks to the Kubernetes API, and service links would add env
        // variables outside the api-server's interface.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        node_selector: options.node_selector,
        tolerations: options.tolerations,
        affinity: options.affinity,
        priority_class_name: options.priority_class_name,
        image_pull_secrets: options.image_pull_secrets,
        service_account_name: options.service_account_name,
        // The user's spread replaces ours, whole (an empty list removes it).
        topology_spread_constraints: options
            .topology_spread_constraints
            .or_else(|| Some(default_spread(&selector))),
        ..PodSpec::default()
    };
    let mut pod_labels = options.labels.unwrap_or_default();
    pod_labels.extend(labels::common(sapi));
    let mut pod_annotations = options.annotations.unwrap_or_default();
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), hash.to_owned());
    Ok(Deployment {
        metadata: child_meta(sapi, sapi.name_any()),
        spec: Some(DeploymentSpec {
            // Always ours: the HPA scales the ScalableApi, not the Deployment, so nobody else
            // writes this field (see docs/architecture/operator.md, "Replicas").
            replicas: Some(sapi.deployment_replicas()),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            revision_history_limit: Some(5),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

/// Spread over nodes, preferred only: a small cluster never leaves a pod pending.
fn default_spread(selector: &BTreeMap<String, String>) -> Vec<TopologySpreadConstraint> {
    vec![TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "kubernetes.io/hostname".into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector.clone()),
            ..LabelSelector::default()
        }),
        // Spread each ReplicaSet on its own, so a rollout does not skew the new pods.
        match_label_keys: Some(vec!["pod-template-hash".into()]),
        ..TopologySpreadConstraint::default()
    }]
}

fn api_container(sapi: &ScalableApi, inputs: &Inputs) -> Result<Container, SpecError> {
    let spec = &sapi.spec;
    let (env_name, secret) = match spec.database.auth().ok_or(SpecError::DatabaseForm)? {
        DatabaseAuth::Password(r) => ("PGPASSWORD", r),
        DatabaseAuth::Uri(r) => ("DATABASE_URL", r),
    };
    Ok(Container {
        name: API_CONTAINER.into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| inputs.pod.api_image.clone()),
        ),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: ADMIN_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: sapi.config_map_name(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        // Ours first; spec.env may not repeat our names (CEL and `check`), so order is moot.
        env: Some(
            std::iter::once(secret_env(env_name, secret))
                .chain(
                    spec.events
                        .as_ref()
                        .and_then(|e| kafka::password_env(&e.kafka)),
                )
                .chain(spec.env.iter().cloned())
                .collect(),
        ),
        resources: Some(resources(sapi)?),
        // Startup covers migrations at first boot; liveness only restarts a hung process.
        startup_probe: Some(http_probe("/healthz", 2, 30)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(security::container(inputs.pod.uid)),
        volume_mounts: Some(
            std::iter::once(VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            })
            .chain(spec.auth.as_ref().map(|_| VolumeMount {
                name: JWKS_VOLUME.into(),
                mount_path: JWKS_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }))
            .chain(
                spec.events
                    .as_ref()
                    .filter(|e| !kafka::tls_files(&e.kafka).is_empty())
                    .map(|_| kafka::tls_mount()),
            )
            .collect(),
        ),
        ..Container::default()
    })
}

/// `spec.resources`, or requests that make HPA utilisation work plus a memory limit.
fn resources(sapi: &ScalableApi) -> Result<ResourceRequirements, SpecError> {
    let Some(res) = sapi.spec.resources.clone() else {
        return Ok(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("100m".into())),
                ("memory".into(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".into(),
                Quantity("256Mi".into()),
            )])),
            ..ResourceRequirements::default()
        });
    };
    if let Some(a) = &sapi.spec.autoscaling {
        // A limit without a request defaults the request to the limit, which also works.
        let has = |r: &str| {
            [&res.requests, &res.limits]
                .iter()
                .any(|m| m.as_ref().is_some_and(|m| m.contains_key(r)))
        };
        if !has("cpu") {
            return Err(SpecError::MissingRequest { resource: "cpu" });
        }
        if a.target_memory_utilization_percentage.is_some() && !has("memory") {
            return Err(SpecError::MissingRequest { resource: "memory" });
        }
    }
    Ok(res)
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            // The admin port: probes keep answering however busy or shed the API port is.
            port: IntOrString::String("admin".into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

#[cfg(test)]
mod tests;
