//! The `ScalableApi` custom resource: types, schema (ranges, enums, defaults) and CEL rules.
//!
//! Helper methods live in `crd_funcs.rs`; this file only declares the API surface, so the
//! generated CRD (`crds/scalableapis.scalable.dev.yaml`) can be read next to it.

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::crd_funcs::{DEFAULT_REPLICAS, DatabaseAuth};

/// Image used when `spec.image` is unset: the api-server released with this operator.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/scalable-dev/api-server:",
    env!("CARGO_PKG_VERSION")
);

/// Exact CEL messages, shared by the schema, the tests and the README rule table.
pub mod messages {
    pub const NAME_DNS_LABEL: &str = "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter and ending with a letter or digit, at most 63 characters) because it names the Service and is the app.kubernetes.io/instance label value";
    pub const MIN_ABOVE_MAX: &str =
        "spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas";
    pub const DATABASE_ONE_FORM: &str = "set exactly one of spec.database.passwordSecretRef (together with host, name and user) or spec.database.uriSecretRef (a Secret key holding a full postgres:// URI)";
    pub const DATABASE_PASSWORD_FORM: &str = "spec.database.passwordSecretRef needs spec.database.host, spec.database.name and spec.database.user";
    pub const DATABASE_URI_FORM: &str = "spec.database.uriSecretRef carries host, name and user in the URI: remove spec.database.host, spec.database.name and spec.database.user";
    pub const POOL_MIN_ABOVE_MAX: &str = "spec.database.pool.minConnections must be less than or equal to spec.database.pool.maxConnections";
    pub const INGRESS_PATH: &str = "spec.ingress.path must start with '/', such as / or /users";
    pub const RESERVED_ENV: &str = "spec.env must not set a variable the operator sets from the spec (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSSLMODE, DATABASE_URL, DB_POOL_MAX, DB_POOL_MIN, DB_ACQUIRE_TIMEOUT_MS, REDIS_URL, CACHE_TTL_SECONDS, RATE_LIMIT_RPS, RATE_LIMIT_BURST, RATE_LIMIT_CLIENT_ADDRESS, RATE_LIMIT_TRUSTED_HOPS, RATE_LIMIT_MAX_CLIENTS, PORT, ADMIN_PORT, LOG_FORMAT, SHUTDOWN_TIMEOUT_SECONDS, AUTH_JWKS_PATH, AUTH_JWT_ISSUER, AUTH_JWT_AUDIENCE, EVENTS_KAFKA_BROKERS, EVENTS_TOPIC, EVENTS_SOURCE, EVENTS_KAFKA_SECURITY_PROTOCOL, EVENTS_KAFKA_SSL_CA_LOCATION, EVENTS_KAFKA_SSL_CERTIFICATE_LOCATION, EVENTS_KAFKA_SSL_KEY_LOCATION, EVENTS_KAFKA_SASL_MECHANISM, EVENTS_KAFKA_SASL_USERNAME, EVENTS_KAFKA_SASL_PASSWORD): set spec.database, spec.cache, spec.rateLimit, spec.auth or spec.events instead";
    pub const RESERVED_POD_LABEL: &str = "spec.pod.labels must not set the app.kubernetes.io/name, instance, component, part-of or managed-by labels: the operator sets them, and name and instance select the pods";
    pub const RESERVED_POD_ANNOTATION: &str = "spec.pod.annotations must not set scalable.dev/config-hash: the operator sets it to roll the pods when the config or the database Secret changes";
    pub const KAFKA_BOOTSTRAP_SERVER: &str = "spec.events.kafka.bootstrapServers must be host:port entries, such as kafka-bootstrap.kafka.svc:9092 or [fd00::1]:9093";
    pub const KAFKA_TOPIC: &str = "spec.events.kafka.topic must be a Kafka topic name: 1 to 249 of the letters a-z and A-Z, digits, '.', '_' and '-', and not '.' or '..'";
    pub const TRUSTED_HOPS_SOURCE: &str = "spec.rateLimit.clientAddress.trustedHops applies only to source XForwardedFor or Forwarded";
    pub const MAX_MEMORY_QUANTITY: &str = "spec.cache.maxMemory must be a positive Kubernetes quantity of at most 64Gi, such as 64Mi or 1Gi (it is a per-pod Redis sidecar: the pod requests maxMemory + 32Mi of memory)";
}

/// Environment variables the operator sets on the `api` container (the ConfigMap's keys and
/// the Secret-backed credential): `spec.env` may not override them.
pub const OPERATOR_ENV: &[&str] = &[
    "PGHOST",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGSSLMODE",
    "DATABASE_URL",
    "DB_POOL_MAX",
    "DB_POOL_MIN",
    "DB_ACQUIRE_TIMEOUT_MS",
    "REDIS_URL",
    "CACHE_TTL_SECONDS",
    "RATE_LIMIT_RPS",
    "RATE_LIMIT_BURST",
    "RATE_LIMIT_CLIENT_ADDRESS",
    "RATE_LIMIT_TRUSTED_HOPS",
    "RATE_LIMIT_MAX_CLIENTS",
    "PORT",
    "ADMIN_PORT",
    "LOG_FORMAT",
    "SHUTDOWN_TIMEOUT_SECONDS",
    "AUTH_JWKS_PATH",
    "AUTH_JWT_ISSUER",
    "AUTH_JWT_AUDIENCE",
    "EVENTS_KAFKA_BROKERS",
    "EVENTS_TOPIC",
    "EVENTS_SOURCE",
    "EVENTS_KAFKA_SECURITY_PROTOCOL",
    "EVENTS_KAFKA_SSL_CA_LOCATION",
    "EVENTS_KAFKA_SSL_CERTIFICATE_LOCATION",
    "EVENTS_KAFKA_SSL_KEY_LOCATION",
    "EVENTS_KAFKA_SASL_MECHANISM",
    "EVENTS_KAFKA_SASL_USERNAME",
    "EVENTS_KAFKA_SASL_PASSWORD",
];

/// CEL rule on `spec.env`: `OPERATOR_ENV` written out (a test keeps the two equal).
pub const RESERVED_ENV_RULE: &str = "self.all(e, !(e.name in ['PGHOST', 'PGPORT', 'PGDATABASE', 'PGUSER', 'PGPASSWORD', 'PGSSLMODE', 'DATABASE_URL', 'DB_POOL_MAX', 'DB_POOL_MIN', 'DB_ACQUIRE_TIMEOUT_MS', 'REDIS_URL', 'CACHE_TTL_SECONDS', 'RATE_LIMIT_RPS', 'RATE_LIMIT_BURST', 'RATE_LIMIT_CLIENT_ADDRESS', 'RATE_LIMIT_TRUSTED_HOPS', 'RATE_LIMIT_MAX_CLIENTS', 'PORT', 'ADMIN_PORT', 'LOG_FORMAT', 'SHUTDOWN_TIMEOUT_SECONDS', 'AUTH_JWKS_PATH', 'AUTH_JWT_ISSUER', 'AUTH_JWT_AUDIENCE', 'EVENTS_KAFKA_BROKERS', 'EVENTS_TOPIC', 'EVENTS_SOURCE', 'EVENTS_KAFKA_SECURITY_PROTOCOL', 'EVENTS_KAFKA_SSL_CA_LOCATION', 'EVENTS_KAFKA_SSL_CERTIFICATE_LOCATION', 'EVENTS_KAFKA_SSL_KEY_LOCATION', 'EVENTS_KAFKA_SASL_MECHANISM', 'EVENTS_KAFKA_SASL_USERNAME', 'EVENTS_KAFKA_SASL_PASSWORD']))";

/// CEL rule on `spec.events.kafka.bootstrapServers`: `host:port`, the host a DNS name, an IPv4
/// address or a bracketed IPv6 address.
pub const KAFKA_BOOTSTRAP_RULE: &str = "self.all(s, s.matches('^([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\\\\[[0-9A-Fa-f:.]+\\\\]):[0-9]{1,5}$'))";

/// CEL rule on `spec.events.kafka.topic`: Kafka's own rule for topic names.
pub const KAFKA_TOPIC_RULE: &str =
    "self.matches('^[a-zA-Z0-9._-]+$') && self != '.' && self != '..'";

/// CEL rule on `spec.rateLimit.clientAddress`: a hop count only for the list headers (an
/// absent source is the default, Peer).
pub const TRUSTED_HOPS_RULE: &str =
    "!has(self.trustedHops) || (has(self.source) && self.source in ['XForwardedFor', 'Forwarded'])";

/// CEL rule on `spec.pod.labels`: none of the labels the operator puts on every pod.
pub const RESERVED_POD_LABEL_RULE: &str = "!('app.kubernetes.io/name' in self) && !('app.kubernetes.io/instance' in self) && !('app.kubernetes.io/component' in self) && !('app.kubernetes.io/part-of' in self) && !('app.kubernetes.io/managed-by' in self)";

/// CEL rule on `spec.pod.annotations`.
pub const RESERVED_POD_ANNOTATION_RULE: &str = "!('scalable.dev/config-hash' in self)";

/// Root CEL rule: the name is used as is for the Service (an RFC 1035 label) and as the
/// `app.kubernetes.io/instance` label value (at most 63 characters).
pub const NAME_RULE: &str =
    "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";

/// One ScalableApi becomes a ConfigMap, a Deployment (api + Redis sidecar), a Service, an
/// HPA and a PodDisruptionBudget.
// Each printcolumn repeats `type_`, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "scalable.dev",
    version = "v1alpha1",
    kind = "ScalableApi",
    namespaced,
    shortname = "sapi",
    status = "ScalableApiStatus",
    derive = "PartialEq",
    doc = "A production-shaped API stack: Deployment with a Redis sidecar, Service, HPA, PodDisruptionBudget and Postgres wiring.",
    cel,
    validation = Rule::new(NAME_RULE).message(messages::NAME_DNS_LABEL),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Ready condition"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why Ready is what it is (Available, RollingOut, FailedCreate, ChildConflict, ...)"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "string",
        json_path = ".status.replicaSummary",
        description = "Ready replicas / replicas wanted now (spec.replicas, which the HPA sets under autoscaling)"
    ),
    printcolumn(
        name = "Min",
        type_ = "integer",
        json_path = ".spec.autoscaling.minReplicas",
        description = "Autoscaling lower bound"
    ),
    printcolumn(
        name = "Max",
        type_ = "integer",
        json_path = ".spec.autoscaling.maxReplicas",
        description = "Autoscaling upper bound"
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".status.url",
        description = "In-cluster URL of the Service"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ScalableApiSpec {
    /// Container image of the API. Default: the api-server released with the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Replica count, the scale subresource's `spec.replicas`. With `autoscaling` the HPA
    /// (which targets this ScalableApi) writes it, and the Deployment runs it clamped to
    /// minReplicas..maxReplicas; leave it out of manifests you re-apply, as for a Deployment
    /// under an HPA. Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// HorizontalPodAutoscaler settings: the operator runs an HPA that scales this
    /// ScalableApi through its scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Resources of the `api` container. Default: requests cpu 100m, memory 64Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The Service in front of the pods.
    #[serde(default)]
    pub service: ServiceSpec,
    /// How the API reaches Postgres.
    pub database: DatabaseSpec,
    /// The per-pod Redis cache sidecar.
    #[serde(default)]
    pub cache: CacheSpec,
    /// Per-client-IP token bucket in the API; unset means no rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// An Ingress (networking.k8s.io/v1) in front of the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// A Gateway API HTTPRoute (gateway.networking.k8s.io/v1) to the Service. Needs the
    /// Gateway API CRDs in the cluster when the operator starts; without them the condition
    /// HTTPRoute says so and everything else is applied as usual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_route: Option<HttpRouteSpec>,
    /// Bearer-token (OAuth 2.0 JWT) authentication of `/users`; unset: the API is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// User events (CloudEvents on Kafka, through a transactional outbox in Postgres); unset:
    /// none are written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventsSpec>,
    /// Scraping of the API's metrics (its admin port) by prometheus-operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSpec>,
    /// Where the pods run and what they carry: node selection, tolerations, affinity,
    /// spread, priority, pull secrets, labels, annotations, service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodOptions>,
    /// Extra environment variables of the `api` container (`value` or `valueFrom`), after the
    /// operator's own, which they may not override. A change of a Secret or ConfigMap they
    /// reference does not roll the pods (only the database Secret's does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new(RESERVED_ENV_RULE).message(messages::RESERVED_ENV))]
    pub env: Vec<EnvVar>,
    /// Pause reconciliation: children stay as they are and no HPA is applied.
    #[serde(default)]
    pub suspend: bool,
}

/// Authentication of the API's `/users` routes (probes and metrics stay open).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// JWTs signed with RS256, ES256 or EdDSA; `users:read` / `users:write` scopes.
    pub jwt: JwtAuth,
}

/// Which tokens the API accepts.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtAuth {
    /// The `iss` every token must carry, exactly (AUTH_JWT_ISSUER).
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: String,
    /// A value the token's `aud` must contain (AUTH_JWT_AUDIENCE).
    #[schemars(length(min = 1, max = 2048))]
    pub audience: String,
    /// Secret key (in this namespace) holding the issuer's JWKS, mounted as the file
    /// AUTH_JWKS_PATH names; a new value rolls the pods.
    pub jwks_secret_ref: SecretKeyRef,
}

/// Where user events go.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventsSpec {
    /// A Kafka cluster: every committed create, update and delete of a user becomes one
    /// CloudEvents message on `topic`, keyed by the user id.
    pub kafka: KafkaEvents,
}

/// The Kafka cluster and topic of user events, and how the API authenticates to it.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaEvents {
    /// Brokers the producer bootstraps from, `host:port` each (EVENTS_KAFKA_BROKERS), e.g.
    /// Strimzi's `<cluster>-kafka-bootstrap.<namespace>.svc:9092`.
    #[schemars(length(min = 1, max = 16), inner(length(min = 3, max = 261)))]
    #[x_kube(validation = Rule::new(KAFKA_BOOTSTRAP_RULE).message(messages::KAFKA_BOOTSTRAP_SERVER))]
    pub bootstrap_servers: Vec<String>,
    /// Topic of the events (EVENTS_TOPIC). Create it with the partitions and replication you
    /// want unless the brokers auto-create topics. Default users.events.
    #[serde(default = "default_events_topic")]
    #[schemars(length(min = 1, max = 249))]
    #[x_kube(validation = Rule::new(KAFKA_TOPIC_RULE).message(messages::KAFKA_TOPIC))]
    pub topic: String,
    /// TLS to the brokers; unset: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,
    /// SASL authentication; unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
}

/// TLS to the brokers. `{}` trusts the image's system CAs.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTls {
    /// Secret key holding the PEM CAs that sign the brokers' certificates, e.g. Strimzi's
    /// `<cluster>-cluster-ca-cert` / `ca.crt`; unset: the system CAs. A new value rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// A Secret with the client certificate and key, for brokers that authenticate clients by
    /// TLS (a `kubernetes.io/tls` Secret, or Strimzi's KafkaUser Secret with its key names).
    /// A new value rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret_ref: Option<ClientCertificateRef>,
}

/// The Secret and key names of a PEM client certificate and its private key.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the certificate. Default tls.crt (Strimzi: user.crt).
    #[serde(default = "default_certificate_key")]
    #[schemars(length(min = 1, max = 253))]
    pub certificate_key: String,
    /// Key of the private key. Default tls.key (Strimzi: user.key).
    #[serde(default = "default_private_key_key")]
    #[schemars(length(min = 1, max = 253))]
    pub private_key_key: String,
}

/// SASL authentication to the brokers.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (EVENTS_KAFKA_SASL_MECHANISM). Default
    /// SCRAM-SHA-512, what Strimzi's `scram-sha-512` KafkaUsers use.
    #[serde(default)]
    pub mechanism: SaslMechanism,
    /// The user name (EVENTS_KAFKA_SASL_USERNAME), e.g. the KafkaUser's name.
    #[schemars(length(min = 1, max = 253))]
    pub username: String,
    /// Secret key holding the password (EVENTS_KAFKA_SASL_PASSWORD), e.g. the KafkaUser
    /// Secret's `password`. A new value rolls the pods.
    pub password_secret_ref: SecretKeyRef,
}

/// SASL mechanisms the API's Kafka client speaks.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// Metrics collection.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Make a PodMonitor (monitoring.coreos.com/v1) that scrapes `/metrics` on every pod's
    /// admin port. Needs prometheus-operator's CRDs when the operator starts; without them the
    /// condition PodMonitor says so and everything else is applied as usual.
    #[serde(default)]
    pub pod_monitor: bool,
    /// Labels of the PodMonitor, e.g. the one your Prometheus' podMonitorSelector wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_monitor_labels: Option<BTreeMap<String, String>>,
}

/// The Ingress `<name>`: one host and path prefix to the Service's port.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// IngressClass that serves it (`ingressClassName`); unset: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,
    /// Host name the Ingress answers for, e.g. `users.example.com`.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Path prefix routed to the API. Default `/`.
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message(messages::INGRESS_PATH))]
    pub path: String,
    /// Terminate TLS with the certificate in this Secret (e.g. one cert-manager fills).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<IngressTls>,
}

/// TLS of the Ingress.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressTls {
    /// Secret (type kubernetes.io/tls, in this namespace) with the host's certificate.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// The HTTPRoute `<name>`: the Service's port, behind the given Gateways.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Gateways (or their listeners) the route attaches to.
    #[schemars(length(min = 1, max = 32))]
    pub parent_refs: Vec<GatewayRef>,
    /// Host names the route matches; empty: the listeners' host names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub hostnames: Vec<String>,
}

/// A Gateway, as Gateway API's ParentReference names it.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    /// Name of the Gateway.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Gateway; unset: this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// One listener of the Gateway (`sectionName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

/// Pod-template fields passed through as given (core/v1 types).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodOptions {
    /// Node labels the pods must run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node and pod (anti-)affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Replaces the operator's default (spread over nodes, `ScheduleAnyway`); an empty list
    /// removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub priority_class_name: Option<String>,
    /// Secrets for pulling the api and cache images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Extra pod annotations (not `scalable.dev/config-hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RESERVED_POD_ANNOTATION_RULE).message(messages::RESERVED_POD_ANNOTATION))]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Extra pod labels (not the `app.kubernetes.io/*` labels the operator sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RESERVED_POD_LABEL_RULE).message(messages::RESERVED_POD_LABEL))]
    pub labels: Option<BTreeMap<String, String>>,
    /// ServiceAccount of the pods (default: the namespace's `default`). Its token is still not
    /// mounted: the API never calls the Kubernetes API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub service_account_name: Option<String>,
}

/// HPA (autoscaling/v2) settings.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message(messages::MIN_ABOVE_MAX))]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Lower bound of the replica count.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Upper bound of the replica count.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU utilisation (percent of the CPU request) the HPA aims for.
    #[serde(
        rename = "targetCPUUtilizationPercentage",
        default = "default_target_cpu"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
    /// Optional average memory utilisation (percent of the memory request) target.
    #[serde(
        rename = "targetMemoryUtilizationPercentage",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_memory_utilization_percentage: Option<i32>,
    /// HPA v2 `behavior`, passed through verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

/// The Service type; `ExternalName` makes no sense for a workload and is not offered.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// The Service in front of the API pods.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(rename = "type", default)]
    pub type_: ServiceType,
    /// Service port; traffic goes to the container port named `http` (8080).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_service_port(),
        }
    }
}

/// A key in a Secret in the ScalableApi's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// libpq `sslmode` values.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Postgres connection: either host/name/user + passwordSecretRef, or uriSecretRef.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.passwordSecretRef) != has(self.uriSecretRef)").message(messages::DATABASE_ONE_FORM),
    validation = Rule::new("!has(self.passwordSecretRef) || (has(self.host) && has(self.name) && has(self.user))").message(messages::DATABASE_PASSWORD_FORM),
    validation = Rule::new("!has(self.uriSecretRef) || has(self.passwordSecretRef) || (!has(self.host) && !has(self.name) && !has(self.user))").message(messages::DATABASE_URI_FORM)
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Host name of Postgres (PGHOST), e.g. a Service `postgres.db.svc`. Password form only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub host: Option<String>,
    /// Port of Postgres (PGPORT). Default 5432.
    #[serde(default = "default_pg_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Database to use (PGDATABASE); the API creates its tables there at start. Password
    /// form only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,
    /// User to connect as (PGUSER); it needs CREATE on the database for the migrations.
    /// Password form only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub user: Option<String>,
    /// Secret key (in this namespace) holding the password (PGPASSWORD); a new value rolls
    /// the pods. Set this or uriSecretRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding a full `postgres://` URI (DATABASE_URL), e.g. CloudNativePG's
    /// `<cluster>-app` / `uri`; a new value rolls the pods. Set this or passwordSecretRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_secret_ref: Option<SecretKeyRef>,
    /// TLS to Postgres, as libpq's sslmode (PGSSLMODE): `require` encrypts, `verify-full`
    /// also checks the server's certificate and name. With uriSecretRef the URI's own
    /// sslmode wins. Default prefer.
    #[serde(default)]
    pub ssl_mode: SslMode,
    /// Connection pool of each replica.
    #[serde(default)]
    pub pool: PoolSpec,
}

/// Connection pool of each API replica (max connections to Postgres = replicas × maxConnections).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("self.minConnections <= self.maxConnections").message(messages::POOL_MIN_ABOVE_MAX))]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// Most open connections of each replica (DB_POOL_MAX); Postgres sees up to
    /// replicas (maxReplicas under autoscaling) × this. Default 10.
    #[serde(default = "default_pool_max")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_connections: i32,
    /// Connections each replica keeps open while idle (DB_POOL_MIN). Default 1.
    #[serde(default = "default_pool_min")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_connections: i32,
    /// How long a request waits for a free connection before it is answered 503 with
    /// Retry-After (DB_ACQUIRE_TIMEOUT_MS), in milliseconds. Default 2000.
    #[serde(default = "default_acquire_timeout_ms")]
    #[schemars(range(min = 1, max = 600000))]
    pub acquire_timeout_ms: i32,
}

impl Default for PoolSpec {
    fn default() -> Self {
        Self {
            max_connections: default_pool_max(),
            min_connections: default_pool_min(),
            acquire_timeout_ms: default_acquire_timeout_ms(),
        }
    }
}

/// The Redis sidecar cache.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Run a Redis sidecar and let the API cache reads in it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Seconds a cached user lives in Redis (CACHE_TTL_SECONDS); writes evict it sooner, on
    /// every replica. Default 300.
    #[serde(default = "default_ttl_seconds")]
    #[schemars(range(min = 1, max = 604800))]
    pub ttl_seconds: i32,
    /// Redis `maxmemory` (evicting with allkeys-lru), as a Kubernetes quantity, at most 64Gi.
    #[serde(default = "default_max_memory")]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0')) && quantity(self).compareTo(quantity('64Gi')) <= 0").message(messages::MAX_MEMORY_QUANTITY))]
    pub max_memory: String,
    /// Image of the cache sidecar. Default: the operator's `--default-cache-image`
    /// (docker.io/valkey/valkey:8.1-alpine). It must carry `redis-server` and `redis-cli`,
    /// or `valkey-server` and `valkey-cli` when the repository's name starts with `valkey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_seconds: default_ttl_seconds(),
            max_memory: default_max_memory(),
            image: None,
        }
    }
}

/// Per-client-IP token bucket enforced by the API.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests per second each client IP may make on average (RATE_LIMIT_RPS); more get
    /// 429 with Retry-After. Counted per replica.
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_second: i32,
    /// Requests a client IP may make at once above the average (RATE_LIMIT_BURST, the token
    /// bucket's size). Default: requestsPerSecond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<i32>,
    /// Where the client IP comes from (RATE_LIMIT_CLIENT_ADDRESS). Unset: the TCP peer, which
    /// behind an Ingress or a Service without `externalTrafficPolicy: Local` is the proxy or
    /// node for every client, so they all share one bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<ClientAddress>,
    /// Most clients with a bucket in each replica (RATE_LIMIT_MAX_CLIENTS, 40 to 80 bytes
    /// each); past it, clients without one share a single bucket until idle ones are dropped
    /// (every minute). Default 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_clients: Option<i32>,
}

/// Where the API reads the client's IP. Trust a header only when every request passes
/// through the proxy that sets it; otherwise any client can name its own address.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = Rule::new(TRUSTED_HOPS_RULE).message(messages::TRUSTED_HOPS_SOURCE))]
#[serde(rename_all = "camelCase")]
pub struct ClientAddress {
    /// `Peer` (the TCP peer), `XForwardedFor` (the entry `trustedHops` from the right),
    /// `XRealIP` (set by the one proxy in front, e.g. ingress-nginx), or `Forwarded`
    /// (RFC 7239 `for=` of the element `trustedHops` from the right). A header that is
    /// missing or does not parse counts as the peer. Default Peer.
    #[serde(default)]
    pub source: ClientAddressSource,
    /// Proxies in front that append to X-Forwarded-For or Forwarded, e.g. 1 for an Ingress
    /// (RATE_LIMIT_TRUSTED_HOPS). Only with XForwardedFor or Forwarded. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub trusted_hops: Option<i32>,
}

/// The sources of `spec.rateLimit.clientAddress`.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAddressSource {
    #[default]
    Peer,
    XForwardedFor,
    #[serde(rename = "XRealIP")]
    XRealIp,
    Forwarded,
}

/// Observed state, written by the controller through the status subresource.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScalableApiStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of the Deployment (scale subresource `statusReplicasPath`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Ready pods of the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Replicas the Deployment is set to: spec.replicas (written by the HPA under
    /// autoscaling), within minReplicas..maxReplicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// `<readyReplicas>/<desiredReplicas>`, e.g. `3/5`: the Replicas printer column (a
    /// column shows one JSONPath, so the pair is kept as one string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_summary: Option<String>,
    /// Label selector of the pods (scale subresource `labelSelectorPath`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// In-cluster URL of the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Ready, Reconciling, Stalled (kstatus), DatabaseConfigured, Paused, and HTTPRoute when
    /// spec.httpRoute is set (metav1.Condition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// Conditions are a map keyed by `type`, so server-side apply merges them per type.
fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    let obj = schema.ensure_object();
    obj.insert("x-kubernetes-list-type".into(), "map".into());
    obj.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

fn default_path() -> String {
    "/".to_owned()
}
fn default_replicas() -> i32 {
    crate::crd_funcs::DEFAULT_REPLICAS
}
fn default_min_replicas() -> i32 {
    1
}
fn default_target_cpu() -> i32 {
    70
}
fn default_service_port() -> i32 {
    80
}
fn default_pg_port() -> i32 {
    5432
}
fn default_pool_max() -> i32 {
    10
}
fn default_pool_min() -> i32 {
    1
}
fn default_acquire_timeout_ms() -> i32 {
    2000
}
fn default_events_topic() -> String {
    "users.events".to_owned()
}
fn default_certificate_key() -> String {
    "tls.crt".to_owned()
}
fn default_private_key_key() -> String {
    "tls.key".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_ttl_seconds() -> i32 {
    300
}
fn default_max_memory() -> String {
    "64Mi".to_owned()
}
