//! Test fixtures that read like sentences: `ScalableApi::test().with_autoscaling(3, 20)`.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::crd::{
    Autoscaling, CacheSpec, ClientCertificateRef, DatabaseSpec, EventsSpec, KafkaEvents, KafkaSasl,
    KafkaTls, PoolSpec, RateLimit, SaslMechanism, ScalableApi, ScalableApiSpec, SecretKeyRef,
    ServiceSpec, ServiceType, SslMode,
};

impl ScalableApi {
    /// `users` in `shop`, as read from the API server (with a uid): password form, cache on,
    /// 1 replica (the schema default) and no autoscaling.
    pub fn test() -> Self {
        let mut sapi = ScalableApi::new(
            "users",
            ScalableApiSpec {
                image: None,
                replicas: crate::crd::DEFAULT_REPLICAS,
                autoscaling: None,
                resources: None,
                service: ServiceSpec::default(),
                database: DatabaseSpec {
                    host: Some("postgres.shop.svc".into()),
                    port: 5432,
                    name: Some("users".into()),
                    user: Some("app".into()),
                    password_secret_ref: Some(secret_ref("users-db", "password")),
                    uri_secret_ref: None,
                    ssl_mode: SslMode::Prefer,
                    pool: PoolSpec::default(),
                },
                cache: CacheSpec::default(),
                rate_limit: None,
                ingress: None,
                http_route: None,
                auth: None,
                events: None,
                monitoring: None,
                pod: None,
                env: Vec::new(),
                suspend: false,
            },
        );
        sapi.metadata.namespace = Some("shop".into());
        sapi.metadata.uid = Some("5e1f0c1a-0000-4000-8000-000000000001".into());
        sapi.metadata.generation = Some(1);
        sapi
    }

    pub fn named(mut self, name: &str) -> Self {
        self.metadata.name = Some(name.into());
        self
    }

    /// As in a file given to `render`: never stored, so no uid.
    pub fn without_uid(mut self) -> Self {
        self.metadata.uid = None;
        self
    }

    pub fn with_replicas(mut self, replicas: i32) -> Self {
        self.spec.replicas = replicas;
        self
    }

    pub fn with_autoscaling(mut self, min: i32, max: i32) -> Self {
        self.spec.autoscaling = Some(Autoscaling {
            min_replicas: min,
            max_replicas: max,
            target_cpu_utilization_percentage: 70,
            target_memory_utilization_percentage: None,
            behavior: None,
        });
        self
    }

    pub fn with_cpu_target(mut self, percent: i32) -> Self {
        if let Some(a) = self.spec.autoscaling.as_mut() {
            a.target_cpu_utilization_percentage = percent;
        }
        self
    }

    pub fn with_memory_target(mut self, percent: i32) -> Self {
        if let Some(a) = self.spec.autoscaling.as_mut() {
            a.target_memory_utilization_percentage = Some(percent);
        }
        self
    }

    pub fn with_behavior(mut self, behavior: HorizontalPodAutoscalerBehavior) -> Self {
        if let Some(a) = self.spec.autoscaling.as_mut() {
            a.behavior = Some(behavior);
        }
        self
    }

    /// Switch to the `uriSecretRef` form (host, name and user removed, as CEL demands).
    pub fn with_uri_secret(mut self, name: &str, key: &str) -> Self {
        let db = &mut self.spec.database;
        db.host = None;
        db.name = None;
        db.user = None;
        db.password_secret_ref = None;
        db.uri_secret_ref = Some(secret_ref(name, key));
        self
    }

    pub fn with_password_secret(mut self, name: &str, key: &str) -> Self {
        self.spec.database.password_secret_ref = Some(secret_ref(name, key));
        self
    }

    pub fn with_pool(mut self, min: i32, max: i32) -> Self {
        self.spec.database.pool.min_connections = min;
        self.spec.database.pool.max_connections = max;
        self
    }

    pub fn without_cache(mut self) -> Self {
        self.spec.cache.enabled = false;
        self
    }

    pub fn with_cache_memory(mut self, quantity: &str) -> Self {
        self.spec.cache.max_memory = quantity.into();
        self
    }

    pub fn with_cache_ttl(mut self, seconds: i32) -> Self {
        self.spec.cache.ttl_seconds = seconds;
        self
    }

    pub fn with_rate_limit(mut self, rps: i32, burst: Option<i32>) -> Self {
        self.spec.rate_limit = Some(RateLimit {
            requests_per_second: rps,
            burst,
            client_address: None,
            max_clients: None,
        });
        self
    }

    /// `spec.events.kafka`, plaintext, to `brokers` on the default topic.
    pub fn with_kafka(mut self, brokers: &[&str]) -> Self {
        self.spec.events = Some(EventsSpec {
            kafka: KafkaEvents {
                bootstrap_servers: brokers.iter().map(|b| (*b).to_owned()).collect(),
                topic: "users.events".into(),
                tls: None,
                sasl: None,
            },
        });
        self
    }

    /// `with_kafka` plus TLS with the CA in `kafka-ca`/`ca.crt`, a Strimzi-style client
    /// certificate in `users-kafka` (`user.crt`, `user.key`) and SCRAM-SHA-256 with the
    /// password in `users-kafka`/`password`.
    pub fn with_kafka_tls_and_sasl(self, brokers: &[&str]) -> Self {
        let mut sapi = self.with_kafka(brokers);
        if let Some(e) = sapi.spec.events.as_mut() {
            e.kafka.tls = Some(KafkaTls {
                ca_secret_ref: Some(secret_ref("kafka-ca", "ca.crt")),
                client_certificate_secret_ref: Some(ClientCertificateRef {
                    name: "users-kafka".into(),
                    certificate_key: "user.crt".into(),
                    private_key_key: "user.key".into(),
                }),
            });
            e.kafka.sasl = Some(KafkaSasl {
                mechanism: SaslMechanism::ScramSha256,
                username: "users".into(),
                password_secret_ref: secret_ref("users-kafka", "password"),
            });
        }
        sapi
    }

    pub fn with_image(mut self, image: &str) -> Self {
        self.spec.image = Some(image.into());
        self
    }

    /// `spec.resources` with the given requests (e.g. `[("cpu", "250m")]`) and no limits.
    pub fn with_requests(mut self, requests: &[(&str, &str)]) -> Self {
        self.spec.resources = Some(ResourceRequirements {
            requests: Some(
                requests
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..ResourceRequirements::default()
        });
        self
    }

    pub fn with_service(mut self, type_: ServiceType, port: i32) -> Self {
        self.spec.service = ServiceSpec { type_, port };
        self
    }

    pub fn suspended(mut self) -> Self {
        self.spec.suspend = true;
        self
    }
}

fn secret_ref(name: &str, key: &str) -> SecretKeyRef {
    SecretKeyRef {
        name: name.into(),
        key: key.into(),
    }
}
