//! The referenced Secret: missing, created later, rotated; the keyed config hash and the
//! operator's hash key; and Pod Security at admission.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use operator::crd::ScalableApi;
use operator::desired::{self, HashKey, configmap};
use operator::hash_key;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cluster::*;

#[tokio::test]
async fn a_missing_secret_is_a_condition_and_an_event_until_it_appears_then_ready() {
    let c = Cluster::with_operator("nosecret").await;
    scalable_api("users").create(&c).await;

    let sapi = c
        .wait_for_condition("users", "DatabaseConfigured", "False", "SecretNotFound")
        .await;
    assert_eq!(
        condition(&sapi, "Ready"),
        Some(("False".into(), "SecretNotFound".into()))
    );
    let event = c.wait_for_event("users", "SecretNotFound").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event
            .note
            .as_deref()
            .is_some_and(|n| n.contains("users-db")),
        "the Event names the Secret: {:?}",
        event.note
    );
    assert!(
        c.get::<Deployment>("users").await.is_none(),
        "nothing rolls out against a missing Secret"
    );

    // The Secret watch maps the new Secret to its ScalableApi; the pods then run for real.
    create_db_secret(&c, "users").await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let sapi = c
        .wait_for_condition("users", "DatabaseConfigured", "True", "SecretFound")
        .await;
    assert_eq!(sapi.status.as_ref().and_then(|s| s.ready_replicas), Some(2));
    assert_eq!(
        c.events("users", "SecretNotFound").await.len(),
        1,
        "one Event per transition"
    );
}

#[tokio::test]
async fn a_secret_without_the_key_is_key_not_found() {
    let c = Cluster::with_operator("nokey").await;
    c.api::<Secret>()
        .create(
            &PostParams::default(),
            &secret_in(&c.ns, "users-db", "not-password", "x"),
        )
        .await
        .expect("create the Secret");
    scalable_api("users").create(&c).await;
    c.wait_for_condition("users", "DatabaseConfigured", "False", "KeyNotFound")
        .await;
    let event = c.wait_for_event("users", "KeyNotFound").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(c.get::<Deployment>("users").await.is_none());
}

fn config_hash(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("scalable.dev/config-hash")
        .cloned()
}

#[tokio::test]
async fn a_new_secret_value_rolls_the_pods_through_a_new_replica_set() {
    let c = Cluster::with_operator("rotate").await;
    create_db_secret(&c, "users").await;
    scalable_api("users").create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let before = c.get::<Deployment>("users").await.expect("Deployment");
    let old_pods = c
        .api::<Pod>()
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items;

    c.api::<Secret>()
        .patch(
            "users-db",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "rotated"}})),
        )
        .await
        .expect("rotate the password");
    c.wait_for::<Deployment>("users", "a new config hash", |d| {
        config_hash(d) != config_hash(&before)
    })
    .await;
    // The rolling update ends with every pod from the new ReplicaSet.
    let done = c
        .wait_for::<Deployment>("users", "the rollout to finish", |d| {
            let s = d.status.as_ref();
            s.and_then(|s| s.observed_generation) == d.metadata.generation
                && s.and_then(|s| s.updated_replicas) == Some(2)
                && s.and_then(|s| s.available_replicas) == Some(2)
                && s.and_then(|s| s.replicas) == Some(2)
        })
        .await;
    let sets = c
        .api::<ReplicaSet>()
        .list(&ListParams::default())
        .await
        .expect("rs")
        .items;
    assert_eq!(
        sets.len(),
        2,
        "the old and the new ReplicaSet: {:?}",
        names(&sets)
    );
    let new_pods = c
        .api::<Pod>()
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items;
    for old in &old_pods {
        assert!(
            new_pods.iter().all(|p| p.uid() != old.uid()),
            "pod {} survived the rollout",
            old.name_any()
        );
    }
    assert!(done.metadata.generation > before.metadata.generation);
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
}

#[tokio::test]
async fn a_restricted_namespace_admits_the_pods_and_refuses_a_privileged_one() {
    let mut c = Cluster::with_namespace_labels(
        "restricted",
        &[
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/enforce-version", "latest"),
        ],
    )
    .await;
    c.start_operator().await;
    create_db_secret(&c, "users").await;
    scalable_api("users").create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let pods = c
        .api::<Pod>()
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items;
    assert_eq!(pods.len(), 2, "{:?}", names(&pods));

    // Enforcement is on: a pod that breaks the restricted profile is refused.
    let privileged: Pod = serde_json::from_value(json!({
        "metadata": {"name": "privileged"},
        "spec": {"containers": [{
            "name": "c", "image": "registry.test/x:1",
            "securityContext": {"privileged": true},
        }]},
    }))
    .expect("pod");
    let err = c
        .api::<Pod>()
        .create(&PostParams::default(), &privileged)
        .await
        .expect_err("a privileged pod must be refused");
    assert!(
        err.to_string()
            .contains("violates PodSecurity \"restricted:latest\""),
        "{err}"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key the operator keeps in its namespace, read as admin.
async fn operator_hash_key(c: &Cluster) -> HashKey {
    let secret = c
        .wait_for::<Secret>(hash_key::SECRET_NAME, "the hash-key Secret", |_| true)
        .await;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(hash_key::DATA_KEY))
        .expect("the key's data");
    HashKey::from_slice(&bytes.0).expect("32 bytes")
}

/// The Lease holder of the operator processes in `c.ns`.
async fn leader(c: &Cluster) -> String {
    let lease = c
        .wait_for::<Lease>("scalable-api-operator", "a Lease holder", |l| {
            l.spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_ref())
                .is_some()
        })
        .await;
    lease
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a holder")
}

#[tokio::test]
async fn the_config_hash_is_keyed_by_one_key_that_two_operator_processes_share() {
    let c = Cluster::new("hashkey").await;
    // Two operator processes start at once, before any key exists: both read, both try to
    // create, one gets 409 and reads the other's key.
    let kubeconfig = TestEnv::get().kubeconfig();
    let mut processes = [
        OperatorProcess::start(&kubeconfig, &c.ns, "op-a"),
        OperatorProcess::start(&kubeconfig, &c.ns, "op-b"),
    ];
    create_db_secret(&c, "users").await;
    scalable_api("users").create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let key = operator_hash_key(&c).await;
    let keys = c
        .api::<Secret>()
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=scalable-api-operator"))
        .await
        .expect("list Secrets")
        .items;
    assert_eq!(names(&keys), [hash_key::SECRET_NAME], "one key Secret");

    // The annotation is the config hash over HMAC-SHA256(key, password), and not over the
    // plain SHA-256 of the password that anyone who reads Deployments could test guesses on.
    let sapi = c.get::<ScalableApi>("users").await.expect("ScalableApi");
    let config_map = configmap::config_map(&sapi);
    let password = secret_in(&c.ns, "users-db", "password", "s3cret");
    let keyed = desired::secret_hash(&password, "password", &key).expect("hash");
    let unkeyed = hex(&Sha256::digest(b"s3cret"));
    let deployment = c.get::<Deployment>("users").await.expect("Deployment");
    let annotation = config_hash(&deployment).expect("config-hash annotation");
    assert_eq!(
        annotation,
        desired::config_hash(&config_map, Some(&keyed), None, None),
        "the config hash is made with the key in the operator's Secret"
    );
    assert_ne!(
        annotation,
        desired::config_hash(&config_map, Some(&unkeyed), None, None),
        "the config hash must not be derived from the unkeyed SHA-256 of the password"
    );
    assert!(!annotation.contains(&unkeyed[..16]));

    // The standby loaded the key at its own start: when it takes over and reconciles, the
    // hash stays, so a hand-over rolls no pod.
    let (first, survivor) = match leader(&c).await.as_str() {
        "op-a" => (0, "op-b"),
        "op-b" => (1, "op-a"),
        other => panic!("unexpected Lease holder {other}"),
    };
    processes[first].kill();
    c.wait_for::<Lease>("scalable-api-operator", "the standby to take over", |l| {
        l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(survivor)
    })
    .await;
    patch_spec(&c, "users", json!({"replicas": 3})).await;
    let after = c
        .wait_for::<Deployment>("users", "the new leader to reconcile", |d| {
            d.spec.as_ref().and_then(|s| s.replicas) == Some(3)
        })
        .await;
    assert_eq!(
        config_hash(&after).as_deref(),
        Some(annotation.as_str()),
        "the new leader hashes with the same key"
    );
}

#[tokio::test]
async fn a_jwks_secret_is_awaited_then_mounted_and_a_new_value_rolls_the_pods() {
    let c = Cluster::with_operator("jwks").await;
    create_db_secret(&c, "users").await;
    scalable_api("users")
        .with(
            "/spec/auth",
            json!({"jwt": {"issuer": "https://issuer.test", "audience": "users-api",
                "jwksSecretRef": {"name": "idp-jwks", "key": "jwks.json"}}}),
        )
        .create(&c)
        .await;
    // No JWKS yet: said so, with a Warning, and nothing applied (pods could not start).
    c.wait_for_condition("users", "AuthConfigured", "False", "SecretNotFound")
        .await;
    c.wait_for_event("users", "SecretNotFound").await;
    assert!(c.get::<Deployment>("users").await.is_none());

    c.api::<Secret>()
        .create(
            &PostParams::default(),
            &secret_in(&c.ns, "idp-jwks", "jwks.json", r#"{"keys":[]}"#),
        )
        .await
        .expect("create the JWKS Secret");
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let before = c.get::<Deployment>("users").await.expect("Deployment");
    let pod = before.spec.clone().unwrap().template.spec.unwrap();
    assert!(
        pod.volumes.iter().flatten().any(|v| v
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some("idp-jwks"))
    );

    c.api::<Secret>()
        .patch(
            "idp-jwks",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"jwks.json": r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#}})),
        )
        .await
        .expect("rotate the JWKS");
    c.wait_for::<Deployment>("users", "a new config hash", |d| {
        config_hash(d) != config_hash(&before)
    })
    .await;
}

#[tokio::test]
async fn kafka_secrets_are_awaited_then_mounted_and_a_new_password_rolls_the_pods() {
    let c = Cluster::with_operator("kafka").await;
    create_db_secret(&c, "users").await;
    scalable_api("users")
        .with(
            "/spec/events",
            json!({"kafka": {"bootstrapServers": ["kafka-bootstrap.kafka.svc:9093"],
                "tls": {"caSecretRef": {"name": "kafka-ca", "key": "ca.crt"}},
                "sasl": {"username": "users",
                    "passwordSecretRef": {"name": "users-kafka", "key": "password"}}}}),
        )
        .create(&c)
        .await;
    // Neither Secret yet: the first missing one is named, with a Warning, and nothing is
    // applied (the pods could not start without their files).
    c.wait_for_condition("users", "EventsConfigured", "False", "SecretNotFound")
        .await;
    c.wait_for_event("users", "SecretNotFound").await;
    assert!(c.get::<Deployment>("users").await.is_none());

    c.api::<Secret>()
        .create(
            &PostParams::default(),
            &secret_in(&c.ns, "kafka-ca", "ca.crt", "-----BEGIN CERTIFICATE-----"),
        )
        .await
        .expect("create the CA Secret");
    c.api::<Secret>()
        .create(
            &PostParams::default(),
            &secret_in(&c.ns, "users-kafka", "other", "x"),
        )
        .await
        .expect("create the user Secret without its key");
    c.wait_for_condition("users", "EventsConfigured", "False", "KeyNotFound")
        .await;
    c.api::<Secret>()
        .patch(
            "users-kafka",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "first"}})),
        )
        .await
        .expect("add the password");
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    c.wait_for_condition("users", "EventsConfigured", "True", "SecretFound")
        .await;
    let before = c.get::<Deployment>("users").await.expect("Deployment");
    let pod = before.spec.clone().unwrap().template.spec.unwrap();
    let projected: Vec<String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.secret.as_ref().map(|s| s.name.clone()))
        .collect();
    assert_eq!(projected, ["kafka-ca"]);
    let config: ConfigMap = c.get("users-config").await.expect("ConfigMap");
    let data = config.data.unwrap_or_default();
    assert_eq!(
        data.get("EVENTS_KAFKA_SECURITY_PROTOCOL")
            .map(String::as_str),
        Some("sasl_ssl")
    );
    assert!(!data.contains_key("EVENTS_KAFKA_SASL_PASSWORD"));

    c.api::<Secret>()
        .patch(
            "users-kafka",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "rotated"}})),
        )
        .await
        .expect("rotate the password");
    c.wait_for::<Deployment>("users", "a new config hash", |d| {
        config_hash(d) != config_hash(&before)
    })
    .await;
}
