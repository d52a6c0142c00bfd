//! Pure desired state: what one ScalableApi becomes. No client, no async, no I/O.
//!
//! `desired()` re-checks the cross-field rules that the CRD's CEL rules enforce, so an object
//! that bypassed them (an older CRD, a hand-made fixture) yields a `SpecError`, never nonsense.

use hmac::{Hmac, Mac};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, EnvVar, EnvVarSource, Secret, SecretKeySelector, Service,
};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

pub use crate::crd::DEFAULT_IMAGE;
use crate::crd::{ScalableApi, SecretKeyRef};

pub mod configmap;
pub mod deployment;
pub mod hpa;
pub mod httproute;
pub mod ingress;
pub mod kafka;
pub mod labels;
pub mod pdb;
pub mod podmonitor;
pub mod redis;
pub mod security;
pub mod service;

/// Pod-template annotation whose change rolls the pods when config or Secret data change.
pub const CONFIG_HASH_ANNOTATION: &str = "scalable.dev/config-hash";

/// Operator-wide choices for every pod, from the command line (`--default-image`,
/// `--default-cache-image`, `--pod-uid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDefaults {
    /// Image of the `api` container when `spec.image` is unset.
    pub api_image: String,
    /// Image of the cache sidecar when `spec.cache.image` is unset.
    pub cache_image: String,
    /// uid, gid and fsGroup of every container; `None` leaves them to the platform
    /// (OpenShift's `restricted-v2` assigns them from the namespace's range).
    pub uid: Option<i64>,
}

impl Default for PodDefaults {
    fn default() -> Self {
        Self {
            api_image: DEFAULT_IMAGE.to_owned(),
            cache_image: redis::DEFAULT_IMAGE.to_owned(),
            uid: Some(security::RUN_AS_USER),
        }
    }
}

/// What reconcile fetched before building: the only non-spec inputs of `desired()`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inputs {
    pub pod: PodDefaults,
    /// `secret_hash()` of the referenced Secret key, keyed with the operator's `HashKey`;
    /// `None` when unknown (e.g. `render`, which reads no Secret).
    pub secret_hash: Option<String>,
    /// `secret_hash()` of the JWKS Secret key (`spec.auth.jwt`), when there is one.
    pub jwks_hash: Option<String>,
    /// One hash of every Kafka Secret key (`spec.events`), when there are any.
    pub events_hash: Option<String>,
}

/// Every child of one ScalableApi. `hpa`, `pdb`, `ingress` and `http_route` are `None` when
/// they must not exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub pdb: Option<PodDisruptionBudget>,
    pub ingress: Option<Ingress>,
    pub http_route: Option<crate::gateway_api::HTTPRoute>,
    pub pod_monitor: Option<crate::prometheus_operator::PodMonitor>,
}

/// A spec the operator cannot turn into children. Messages say what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("metadata.name is missing: give the ScalableApi a name")]
    MissingName,
    #[error("{} (got {name:?})", crate::crd::messages::NAME_DNS_LABEL)]
    InvalidName { name: String },
    #[error("{}", crate::crd::messages::DATABASE_ONE_FORM)]
    DatabaseForm,
    #[error("{}", crate::crd::messages::DATABASE_PASSWORD_FORM)]
    DatabasePasswordForm,
    #[error(
        "{} (got minReplicas {min}, maxReplicas {max})",
        crate::crd::messages::MIN_ABOVE_MAX
    )]
    MinAboveMax { min: i32, max: i32 },
    #[error(
        "{} (got minConnections {min}, maxConnections {max})",
        crate::crd::messages::POOL_MIN_ABOVE_MAX
    )]
    PoolMinAboveMax { min: i32, max: i32 },
    #[error("{} (got {value:?})", crate::crd::messages::MAX_MEMORY_QUANTITY)]
    MaxMemory { value: String },
    #[error(
        "spec.resources must request {resource} when autoscaling targets {resource} utilisation: set spec.resources.requests.{resource} (or leave spec.resources unset for the defaults)"
    )]
    MissingRequest { resource: &'static str },
    #[error("{} (got {name:?})", crate::crd::messages::RESERVED_ENV)]
    ReservedEnv { name: String },
    #[error("{} (got {key:?})", crate::crd::messages::RESERVED_POD_LABEL)]
    ReservedPodLabel { key: String },
    #[error("{}", crate::crd::messages::RESERVED_POD_ANNOTATION)]
    ReservedPodAnnotation,
}

/// Variable `name` read from a Secret key that must exist.
fn secret_env(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Build every child of `sapi`. Pure: the same inputs always give the same children.
///
/// `spec.suspend` only removes the HPA (`hpa: None`): the controller does not apply anything
/// while suspended, and never re-creates an HPA that would resume scaling behind the user's back.
pub fn desired(sapi: &ScalableApi, inputs: &Inputs) -> Result<Children, SpecError> {
    check(sapi)?;
    let config_map = configmap::config_map(sapi);
    let hash = config_hash(
        &config_map,
        inputs.secret_hash.as_deref(),
        inputs.jwks_hash.as_deref(),
        inputs.events_hash.as_deref(),
    );
    Ok(Children {
        deployment: deployment::deployment(sapi, inputs, &hash)?,
        service: service::service(sapi),
        hpa: if sapi.spec.suspend {
            None
        } else {
            hpa::hpa(sapi)
        },
        pdb: pdb::pdb(sapi),
        ingress: ingress::ingress(sapi),
        http_route: httproute::http_route(sapi),
        pod_monitor: podmonitor::pod_monitor(sapi),
        config_map,
    })
}

/// Cross-field rules (mirrors of the CEL rules, for objects that skipped admission).
fn check(sapi: &ScalableApi) -> Result<(), SpecError> {
    let name = match sapi.meta().name.as_deref() {
        None | Some("") => return Err(SpecError::MissingName),
        Some(name) => name,
    };
    if !is_dns1035_label(name) {
        return Err(SpecError::InvalidName {
            name: name.to_owned(),
        });
    }
    let spec = &sapi.spec;
    let db = &spec.database;
    let auth = db.auth().ok_or(SpecError::DatabaseForm)?;
    if matches!(auth, crate::crd_funcs::DatabaseAuth::Password(_))
        && (db.host.is_none() || db.name.is_none() || db.user.is_none())
    {
        return Err(SpecError::DatabasePasswordForm);
    }
    if db.pool.min_connections > db.pool.max_connections {
        return Err(SpecError::PoolMinAboveMax {
            min: db.pool.min_connections,
            max: db.pool.max_connections,
        });
    }
    if let Some(e) = spec
        .env
        .iter()
        .find(|e| crate::crd::OPERATOR_ENV.contains(&e.name.as_str()))
    {
        return Err(SpecError::ReservedEnv {
            name: e.name.clone(),
        });
    }
    if let Some(pod) = &spec.pod {
        let ours = labels::common(sapi);
        if let Some(key) = pod
            .labels
            .iter()
            .flatten()
            .map(|(k, _)| k)
            .find(|k| ours.contains_key(*k))
        {
            return Err(SpecError::ReservedPodLabel { key: key.clone() });
        }
        if pod
            .annotations
            .iter()
            .flatten()
            .any(|(k, _)| k == CONFIG_HASH_ANNOTATION)
        {
            return Err(SpecError::ReservedPodAnnotation);
        }
    }
    if let Some(a) = &spec.autoscaling
        && a.min_replicas > a.max_replicas
    {
        return Err(SpecError::MinAboveMax {
            min: a.min_replicas,
            max: a.max_replicas,
        });
    }
    Ok(())
}

/// `crd::NAME_RULE` in Rust: at most 63 of `[-a-z0-9]`, starting with a letter, not ending in '-'.
pub fn is_dns1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes.last().is_some_and(|b| *b != b'-')
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// The operator's secret key for `secret_hash`: 32 random bytes that only the operator
/// reads (the Secret `hash_key::SECRET_NAME` in its namespace). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct HashKey([u8; HashKey::LEN]);

impl HashKey {
    /// Bytes of a key: HMAC-SHA256's block is 64, and 32 random bytes are its full strength.
    pub const LEN: usize = 32;

    pub const fn new(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh random key (from the OS-seeded thread RNG).
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// `None` unless `bytes` is exactly `LEN` long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(<redacted>)")
    }
}

/// Keyed hash (HMAC-SHA256 under `hash_key`) of one Secret key's value, so a rotated password
/// rolls the pods while the pod-template annotation, which anyone who may read Deployments
/// sees, cannot be used to test password guesses. `None` when the key is missing (in `data`
/// or `stringData`).
pub fn secret_hash(secret: &Secret, key: &str, hash_key: &HashKey) -> Option<String> {
    let bytes: &[u8] = match secret.data.as_ref().and_then(|d| d.get(key)) {
        Some(v) => &v.0,
        None => secret.string_data.as_ref()?.get(key)?.as_bytes(),
    };
    // Hmac::new_from_slice only fails for fixed-size MACs; HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(hash_key.as_bytes()).ok()?;
    mac.update(bytes);
    Some(hex(&mac.finalize().into_bytes()))
}

/// Hash of the rendered ConfigMap data plus the Secret hash: the pod-template annotation.
/// `jwks_hash` and `events_hash` count only when present, so objects without `spec.auth` or
/// `spec.events` keep their hash.
pub fn config_hash(
    config_map: &ConfigMap,
    secret_hash: Option<&str>,
    jwks_hash: Option<&str>,
    events_hash: Option<&str>,
) -> String {
    let mut h = Sha256::new();
    // BTreeMap iteration is sorted, and NUL separators keep "a=bc" apart from "ab=c".
    for (k, v) in config_map.data.iter().flatten() {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.update(b"secret\0");
    h.update(secret_hash.unwrap_or("").as_bytes());
    if let Some(jwks) = jwks_hash {
        h.update(b"\0jwks\0");
        h.update(jwks.as_bytes());
    }
    if let Some(events) = events_hash {
        h.update(b"\0events\0");
        h.update(events.as_bytes());
    }
    // 128 bits are plenty to detect a change, and keep `kubectl describe` readable.
    hex(&h.finalize()[..16])
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Metadata shared by every child: name, namespace, labels and the controller owner ref.
/// Without a uid (e.g. `render` of a file) the owner ref is left out rather than invented.
pub(crate) fn child_meta(sapi: &ScalableApi, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: sapi.namespace(),
        labels: Some(labels::common(sapi)),
        owner_references: sapi.controller_owner_ref(&()).map(|o| {
            // Foreground deletion of the ScalableApi waits for the children only when they
            // block it (kube's controller_owner_ref leaves this unset).
            vec![OwnerReference {
                block_owner_deletion: Some(true),
                ..o
            }]
        }),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests;
