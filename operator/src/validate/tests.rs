//! The CRD's schema and CEL rules on valid and invalid objects, evaluated without a cluster.

use serde_json::{Value, json};

use super::*;
use crate::crd::messages;

fn minimal() -> Value {
    json!({
        "apiVersion": "scalable.dev/v1alpha1",
        "kind": "ScalableApi",
        "metadata": {"name": "users", "namespace": "shop"},
        "spec": {
            "database": {
                "host": "postgres.shop.svc",
                "name": "users",
                "user": "app",
                "passwordSecretRef": {"name": "users-db", "key": "password"}
            }
        }
    })
}

/// `minimal()` with `value` set at the JSON pointer `path` (`None` removes it).
fn with(path: &str, value: Option<Value>) -> Value {
    let mut obj = minimal();
    let (parent, key) = path.rsplit_once('/').expect("pointer");
    let mut target = &mut obj;
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        target = target
            .as_object_mut()
            .expect("object")
            .entry(part)
            .or_insert_with(|| json!({}));
    }
    let map = target.as_object_mut().expect("object");
    match value {
        Some(v) => map.insert(key.to_owned(), v),
        None => map.remove(key),
    };
    obj
}

fn problems(obj: &Value) -> Vec<String> {
    validate(obj).expect_err("invalid object").problems
}

fn assert_rejected_with(obj: &Value, message: &str) {
    let p = problems(obj);
    assert!(
        p.iter().any(|x| x.contains(message)),
        "{message:?} not in {p:#?}"
    );
}

#[test]
fn minimal_object_is_valid_and_gets_the_defaults() {
    let sapi = validate(&minimal()).expect("valid");
    assert_eq!(
        sapi.spec.replicas, 1,
        "the schema default the scale subresource reads"
    );
    assert_eq!(sapi.spec.service.port, 80);
    assert_eq!(sapi.spec.database.port, 5432);
    assert!(sapi.spec.cache.enabled);
    assert_eq!(sapi.spec.cache.max_memory, "64Mi");
    assert!(!sapi.spec.suspend);
}

#[test]
fn full_object_is_valid() {
    let mut obj = minimal();
    obj["spec"]["autoscaling"] = json!({
        "minReplicas": 3, "maxReplicas": 20,
        "targetCPUUtilizationPercentage": 50, "targetMemoryUtilizationPercentage": 80,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}
    });
    obj["spec"]["resources"] =
        json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}});
    obj["spec"]["service"] = json!({"type": "LoadBalancer", "port": 443});
    obj["spec"]["cache"] = json!({"enabled": true, "ttlSeconds": 60, "maxMemory": "128Mi"});
    obj["spec"]["rateLimit"] = json!({"requestsPerSecond": 200, "burst": 400});
    obj["spec"]["database"]["sslMode"] = json!("verify-full");
    obj["spec"]["database"]["pool"] =
        json!({"maxConnections": 20, "minConnections": 2, "acquireTimeoutMs": 500});
    validate(&obj).expect("valid");
}

#[test]
fn uri_form_is_valid() {
    let mut obj = minimal();
    obj["spec"]["database"] = json!({"uriSecretRef": {"name": "pg-app", "key": "uri"}});
    validate(&obj).expect("valid");
}

#[test]
fn replicas_and_autoscaling_together_are_valid() {
    // The HPA writes spec.replicas of an autoscaled object: both are set in every one.
    let mut obj = with("/spec/replicas", Some(json!(2)));
    obj["spec"]["autoscaling"] = json!({"minReplicas": 1, "maxReplicas": 3});
    validate(&obj).expect("valid");
}

#[test]
fn min_replicas_above_max_replicas_is_rejected() {
    let obj = with(
        "/spec/autoscaling",
        Some(json!({"minReplicas": 5, "maxReplicas": 3})),
    );
    assert_rejected_with(&obj, messages::MIN_ABOVE_MAX);
}

#[test]
fn min_replicas_defaults_to_one_under_a_max_of_one() {
    validate(&with("/spec/autoscaling", Some(json!({"maxReplicas": 1})))).expect("valid");
}

#[test]
fn a_database_without_credentials_is_rejected() {
    let obj = with("/spec/database/passwordSecretRef", None);
    assert_rejected_with(&obj, messages::DATABASE_ONE_FORM);
}

#[test]
fn both_database_forms_are_rejected() {
    let obj = with(
        "/spec/database/uriSecretRef",
        Some(json!({"name": "pg-app", "key": "uri"})),
    );
    assert_rejected_with(&obj, messages::DATABASE_ONE_FORM);
}

#[test]
fn password_form_needs_host_name_and_user() {
    for field in ["host", "name", "user"] {
        let obj = with(&format!("/spec/database/{field}"), None);
        assert_rejected_with(&obj, messages::DATABASE_PASSWORD_FORM);
    }
}

#[test]
fn uri_form_rejects_host_name_and_user() {
    let mut obj = minimal();
    obj["spec"]["database"] =
        json!({"uriSecretRef": {"name": "pg-app", "key": "uri"}, "host": "x"});
    assert_rejected_with(&obj, messages::DATABASE_URI_FORM);
}

#[test]
fn pool_min_above_max_is_rejected() {
    let obj = with(
        "/spec/database/pool",
        Some(json!({"minConnections": 20, "maxConnections": 10})),
    );
    assert_rejected_with(&obj, messages::POOL_MIN_ABOVE_MAX);
}

#[test]
fn name_must_be_a_dns_1035_label() {
    let long = "a".repeat(64);
    for bad in ["my.api", "My-api", "1api", "api-", long.as_str()] {
        let obj = with("/metadata/name", Some(json!(bad)));
        assert_rejected_with(&obj, messages::NAME_DNS_LABEL);
    }
    let max = "a".repeat(63);
    for good in ["a", "my-api-2", max.as_str()] {
        validate(&with("/metadata/name", Some(json!(good)))).expect("valid name");
    }
}

#[test]
fn max_memory_must_be_a_positive_quantity() {
    for bad in ["lots", "0", "64MB", "65Gi", "18446744073700000000"] {
        let obj = with("/spec/cache/maxMemory", Some(json!(bad)));
        assert_rejected_with(&obj, messages::MAX_MEMORY_QUANTITY);
    }
    for good in ["1Gi", "64Gi"] {
        validate(&with("/spec/cache/maxMemory", Some(json!(good)))).expect("valid");
    }
}

#[test]
fn ranges_are_enforced() {
    let cases = [
        (
            "/spec/service/port",
            json!(70000),
            "must be less than or equal to 65535",
        ),
        (
            "/spec/service/port",
            json!(0),
            "must be greater than or equal to 1",
        ),
        (
            "/spec/database/port",
            json!(0),
            "must be greater than or equal to 1",
        ),
        (
            "/spec/replicas",
            json!(-1),
            "must be greater than or equal to 0",
        ),
        (
            "/spec/cache/ttlSeconds",
            json!(0),
            "must be greater than or equal to 1",
        ),
        (
            "/spec/database/pool/maxConnections",
            json!(0),
            "must be greater than or equal to 1",
        ),
    ];
    for (path, value, message) in cases {
        let p = problems(&with(path, Some(value)));
        let field = path.trim_start_matches('/').replace('/', ".");
        assert!(
            p.iter()
                .any(|x| x.starts_with(&field) && x.contains(message)),
            "{p:?}"
        );
    }
}

#[test]
fn cpu_target_is_a_percentage() {
    for bad in [0, 101] {
        let obj = with(
            "/spec/autoscaling",
            Some(json!({"maxReplicas": 3, "targetCPUUtilizationPercentage": bad})),
        );
        let p = problems(&obj);
        assert!(
            p.iter()
                .any(|x| x.starts_with("spec.autoscaling.targetCPUUtilizationPercentage")),
            "{p:?}"
        );
    }
}

#[test]
fn enums_are_enforced() {
    let p = problems(&with("/spec/database/sslMode", Some(json!("sometimes"))));
    assert!(
        p[0].starts_with("spec.database.sslMode: Unsupported value: \"sometimes\""),
        "{p:?}"
    );
    assert!(p[0].contains("\"verify-full\""));
    let p = problems(&with("/spec/service/type", Some(json!("ExternalName"))));
    assert!(
        p[0].starts_with("spec.service.type: Unsupported value"),
        "{p:?}"
    );
}

#[test]
fn types_required_fields_and_unknown_fields_are_enforced() {
    let p = problems(&with("/spec/replicas", Some(json!("three"))));
    assert!(p[0].contains("spec.replicas: Invalid value: \"three\": must be of type integer"));
    let p = problems(&with("/spec/database", None));
    assert_eq!(p, ["spec.database: Required value"]);
    let p = problems(&with("/spec/replica", Some(json!(2))));
    assert_eq!(p, ["spec.replica: unknown field"]);
}

#[test]
fn wrong_kind_is_rejected() {
    let p = problems(&with("/kind", Some(json!("Deployment"))));
    assert!(p[0].contains("expected apiVersion scalable.dev/v1alpha1 and kind ScalableApi"));
}

#[test]
fn generated_validate_cel_agrees_on_typed_objects() {
    use crate::crd::ScalableApi;
    ScalableApi::test().validate_cel().expect("valid fixture");
    ScalableApi::test()
        .with_autoscaling(3, 20)
        .validate_cel()
        .expect("valid");
    let errors = ScalableApi::test()
        .with_autoscaling(5, 2)
        .validate_cel()
        .expect_err("min > max");
    assert!(errors.iter().any(|e| e.message == messages::MIN_ABOVE_MAX));
    ScalableApi::test()
        .with_replicas(2)
        .with_autoscaling(1, 2)
        .validate_cel()
        .expect("replicas with autoscaling");
}

#[test]
fn spec_env_may_not_set_the_operators_variables() {
    for name in crate::crd::OPERATOR_ENV {
        let obj = with("/spec/env", Some(json!([{"name": name, "value": "x"}])));
        assert_rejected_with(&obj, messages::RESERVED_ENV);
    }
    let obj = with(
        "/spec/env",
        Some(json!([
            {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://collector:4317"},
            {"name": "DB_STATEMENT_TIMEOUT_MS", "valueFrom": {"configMapKeyRef": {"name": "tuning", "key": "statement"}}},
        ])),
    );
    let sapi = validate(&obj).expect("other names, value or valueFrom");
    assert_eq!(sapi.spec.env.len(), 2);
}

#[test]
fn the_env_rule_lists_exactly_the_operators_variables() {
    let quoted: Vec<&str> = crate::crd::RESERVED_ENV_RULE
        .split('\'')
        .skip(1)
        .step_by(2)
        .collect();
    assert_eq!(quoted, crate::crd::OPERATOR_ENV);
    for name in crate::crd::OPERATOR_ENV {
        assert!(
            messages::RESERVED_ENV.contains(name),
            "{name} missing from the message"
        );
    }
}

#[test]
fn pod_labels_and_annotations_of_the_operator_are_refused() {
    for key in [
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
        "app.kubernetes.io/part-of",
        "app.kubernetes.io/managed-by",
    ] {
        let obj = with("/spec/pod/labels", Some(json!({key: "x"})));
        assert_rejected_with(&obj, messages::RESERVED_POD_LABEL);
    }
    let obj = with(
        "/spec/pod/annotations",
        Some(json!({"scalable.dev/config-hash": "x"})),
    );
    assert_rejected_with(&obj, messages::RESERVED_POD_ANNOTATION);
    let obj = with(
        "/spec/pod",
        Some(json!({
            "labels": {"team": "payments"},
            "annotations": {"prometheus.io/scrape": "true"},
            "nodeSelector": {"kubernetes.io/arch": "arm64"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "api", "effect": "NoSchedule"}],
            "priorityClassName": "high",
            "imagePullSecrets": [{"name": "regcred"}],
            "serviceAccountName": "users-api",
        })),
    );
    validate(&obj).expect("placement fields");
}

#[test]
fn rate_limit_client_address_takes_a_source_and_hops_only_for_list_headers() {
    let client = |v: Value| {
        with(
            "/spec/rateLimit",
            Some(json!({"requestsPerSecond": 10, "clientAddress": v})),
        )
    };
    let sapi = validate(&client(
        json!({"source": "XForwardedFor", "trustedHops": 2}),
    ))
    .expect("X-Forwarded-For with 2 hops");
    let address = sapi.spec.rate_limit.unwrap().client_address.unwrap();
    assert_eq!(
        address.source,
        crate::crd::ClientAddressSource::XForwardedFor
    );
    assert_eq!(address.trusted_hops, Some(2));
    for source in ["Peer", "XRealIP", "Forwarded"] {
        validate(&client(json!({"source": source}))).expect(source);
    }
    validate(&client(json!({"source": "Forwarded", "trustedHops": 1}))).expect("Forwarded");
    let sapi = validate(&client(json!({}))).expect("no source");
    assert_eq!(
        sapi.spec.rate_limit.unwrap().client_address.unwrap().source,
        crate::crd::ClientAddressSource::Peer
    );

    for hops_without_a_list in [
        json!({"source": "Peer", "trustedHops": 1}),
        json!({"source": "XRealIP", "trustedHops": 1}),
        json!({"trustedHops": 2}),
    ] {
        assert_rejected_with(&client(hops_without_a_list), messages::TRUSTED_HOPS_SOURCE);
    }
    let p = problems(&client(json!({"source": "XFF"})));
    assert!(
        p[0].starts_with("spec.rateLimit.clientAddress.source: Unsupported value"),
        "{p:?}"
    );
    for hops in [0, 17] {
        let p = problems(&client(
            json!({"source": "XForwardedFor", "trustedHops": hops}),
        ));
        assert!(p[0].contains("trustedHops"), "{p:?}");
    }
    let p = problems(&with(
        "/spec/rateLimit",
        Some(json!({"requestsPerSecond": 10, "maxClients": 0})),
    ));
    assert!(p[0].contains("maxClients"), "{p:?}");
}

#[test]
fn events_kafka_takes_host_port_brokers_a_topic_tls_and_sasl() {
    let kafka = |v: Value| with("/spec/events", Some(json!({"kafka": v})));
    let sapi = validate(&kafka(json!({
        "bootstrapServers": ["kafka-bootstrap.kafka.svc:9093", "10.0.0.7:9092", "[fd00::1]:9094"],
        "tls": {
            "caSecretRef": {"name": "kafka-cluster-ca-cert", "key": "ca.crt"},
            "clientCertificateSecretRef": {"name": "users-kafka"}
        },
        "sasl": {"username": "users", "passwordSecretRef": {"name": "users-kafka", "key": "password"}}
    })))
    .expect("TLS and SASL");
    let k = sapi.spec.events.expect("events").kafka;
    assert_eq!(k.topic, "users.events", "default topic");
    let client = k.tls.unwrap().client_certificate_secret_ref.unwrap();
    assert_eq!(
        (
            client.certificate_key.as_str(),
            client.private_key_key.as_str()
        ),
        ("tls.crt", "tls.key")
    );
    assert_eq!(
        k.sasl.unwrap().mechanism,
        crate::crd::SaslMechanism::ScramSha512
    );
    validate(&kafka(
        json!({"bootstrapServers": ["k:9092"], "topic": "a_b-c.9", "tls": {}}),
    ))
    .expect("system CAs");

    for broker in [
        "kafka",
        "kafka:",
        ":9092",
        "http://kafka:9092",
        "kafka:9092,other:9092",
        "-k:1",
    ] {
        assert_rejected_with(
            &kafka(json!({"bootstrapServers": [broker]})),
            messages::KAFKA_BOOTSTRAP_SERVER,
        );
    }
    for topic in [".", "..", "users events", "users/events"] {
        assert_rejected_with(
            &kafka(json!({"bootstrapServers": ["k:9092"], "topic": topic})),
            messages::KAFKA_TOPIC,
        );
    }
    let p = problems(&kafka(json!({"bootstrapServers": []})));
    assert!(p[0].contains("bootstrapServers"), "{p:?}");
    let p = problems(&kafka(
        json!({"bootstrapServers": ["k:9092"], "topic": "t".repeat(250)}),
    ));
    assert!(p[0].contains("topic"), "{p:?}");
    let p = problems(&kafka(json!({"bootstrapServers": ["k:9092"],
        "sasl": {"mechanism": "GSSAPI", "username": "u", "passwordSecretRef": {"name": "s", "key": "k"}}})));
    assert!(p[0].contains("mechanism: Unsupported value"), "{p:?}");
    let p = problems(&kafka(
        json!({"bootstrapServers": ["k:9092"], "sasl": {"username": "u"}}),
    ));
    assert!(p[0].contains("passwordSecretRef: Required value"), "{p:?}");
}
