//! desired(): children set, owner refs, labels, hashes and spec errors.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::*;

fn build(sapi: &ScalableApi) -> Children {
    desired(sapi, &Inputs::default()).expect("valid fixture")
}

fn pod_hash(children: &Children) -> String {
    children
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
        .cloned()
        .expect("config-hash annotation")
}

fn secret(pairs: &[(&str, &str)]) -> Secret {
    Secret {
        data: Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

#[test]
fn autoscaled_api_has_all_five_children() {
    let c = build(&ScalableApi::test().with_autoscaling(3, 20));
    assert!(c.hpa.is_some());
    assert!(c.pdb.is_some());
    assert_eq!(c.config_map.metadata.name.as_deref(), Some("users-config"));
    assert_eq!(c.deployment.metadata.name.as_deref(), Some("users"));
    assert_eq!(c.service.metadata.name.as_deref(), Some("users"));
}

#[test]
fn single_fixed_replica_has_no_hpa_and_no_pdb() {
    let c = build(&ScalableApi::test());
    assert!(c.hpa.is_none());
    assert!(c.pdb.is_none());
}

#[test]
fn suspend_removes_only_the_hpa() {
    let running = build(&ScalableApi::test().with_autoscaling(3, 20));
    let suspended = build(&ScalableApi::test().with_autoscaling(3, 20).suspended());
    assert!(suspended.hpa.is_none());
    assert_eq!(suspended.deployment, running.deployment);
    assert_eq!(suspended.pdb, running.pdb);
    assert_eq!(suspended.config_map, running.config_map);
}

#[test]
fn every_child_is_owned_by_the_scalable_api_and_labelled() {
    let sapi = ScalableApi::test().with_autoscaling(2, 4);
    let c = build(&sapi);
    let metas = [
        &c.config_map.metadata,
        &c.deployment.metadata,
        &c.service.metadata,
        &c.hpa.as_ref().expect("hpa").metadata,
        &c.pdb.as_ref().expect("pdb").metadata,
    ];
    for meta in metas {
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
        assert_eq!(meta.labels.as_ref(), Some(&labels::common(&sapi)));
        let owners = meta.owner_references.as_ref().expect("owner refs");
        assert_eq!(owners.len(), 1);
        let o = &owners[0];
        assert_eq!(o.kind, "ScalableApi");
        assert_eq!(o.api_version, "scalable.dev/v1alpha1");
        assert_eq!(o.name, "users");
        assert_eq!(Some(&o.uid), sapi.metadata.uid.as_ref());
        assert_eq!(o.controller, Some(true));
        assert_eq!(
            o.block_owner_deletion,
            Some(true),
            "foreground deletion waits for it"
        );
    }
}

#[test]
fn without_uid_the_owner_reference_is_left_out() {
    let c = build(&ScalableApi::test().without_uid());
    assert_eq!(c.deployment.metadata.owner_references, None);
    assert_eq!(c.config_map.metadata.owner_references, None);
}

#[test]
fn hash_changes_when_config_changes() {
    let before = pod_hash(&build(&ScalableApi::test()));
    for changed in [
        ScalableApi::test().with_cache_ttl(60),
        ScalableApi::test().with_pool(2, 20),
        ScalableApi::test().with_rate_limit(10, None),
        ScalableApi::test().without_cache(),
    ] {
        assert_ne!(pod_hash(&build(&changed)), before);
    }
}

#[test]
fn hash_changes_when_secret_data_changes() {
    let sapi = ScalableApi::test();
    let with = |s: &Secret| Inputs {
        secret_hash: secret_hash(s, "password", &KEY),
        ..Inputs::default()
    };
    let a = desired(&sapi, &with(&secret(&[("password", "one")]))).expect("valid");
    let b = desired(&sapi, &with(&secret(&[("password", "two")]))).expect("valid");
    let same = desired(&sapi, &with(&secret(&[("password", "one")]))).expect("valid");
    assert_ne!(pod_hash(&a), pod_hash(&b));
    assert_eq!(pod_hash(&a), pod_hash(&same));
}

#[test]
fn hash_ignores_what_does_not_reach_the_pods_config() {
    let before = pod_hash(&build(&ScalableApi::test()));
    for unrelated in [
        ScalableApi::test().with_replicas(5),
        ScalableApi::test().with_image("example.com/api:2"),
        ScalableApi::test().with_autoscaling(2, 9),
        ScalableApi::test().suspended(),
    ] {
        assert_eq!(pod_hash(&build(&unrelated)), before);
    }
}

const KEY: HashKey = HashKey::new([7; HashKey::LEN]);

#[test]
fn secret_hash_depends_only_on_the_referenced_key() {
    let a = secret(&[("password", "pw"), ("other", "1")]);
    let b = secret(&[("password", "pw"), ("other", "2")]);
    assert_eq!(
        secret_hash(&a, "password", &KEY),
        secret_hash(&b, "password", &KEY)
    );
    assert_ne!(
        secret_hash(&a, "other", &KEY),
        secret_hash(&b, "other", &KEY)
    );
}

#[test]
fn secret_hash_is_none_when_the_key_is_missing() {
    assert_eq!(
        secret_hash(&secret(&[("user", "app")]), "password", &KEY),
        None
    );
    assert_eq!(secret_hash(&Secret::default(), "password", &KEY), None);
}

#[test]
fn secret_hash_reads_string_data_too() {
    let s = Secret {
        string_data: Some(BTreeMap::from([("password".into(), "pw".into())])),
        ..Secret::default()
    };
    assert_eq!(
        secret_hash(&s, "password", &KEY),
        secret_hash(&secret(&[("password", "pw")]), "password", &KEY)
    );
}

#[test]
fn the_same_key_and_value_give_the_same_secret_hash() {
    let pw = secret(&[("password", "pw")]);
    let again = HashKey::new([7; HashKey::LEN]);
    assert_eq!(
        secret_hash(&pw, "password", &KEY),
        secret_hash(&pw, "password", &again)
    );
}

#[test]
fn two_keys_give_different_secret_hashes() {
    let pw = secret(&[("password", "pw")]);
    let other = HashKey::new([8; HashKey::LEN]);
    assert_ne!(
        secret_hash(&pw, "password", &KEY),
        secret_hash(&pw, "password", &other)
    );
}

#[test]
fn the_secret_hash_is_hmac_sha256_not_the_plain_digest_of_the_password() {
    use sha2::{Digest, Sha256};
    let pw = secret(&[("password", "pw")]);
    let keyed = secret_hash(&pw, "password", &KEY).expect("hash");
    let plain = hex(&Sha256::digest(b"pw"));
    assert_ne!(keyed, plain);
    // RFC 4231 test case 2: HMAC-SHA256(key "Jefe", "what do ya want for nothing?"). HMAC
    // pads a short key with zeros to the 64-byte block, so "Jefe" and "Jefe" followed by 28
    // zero bytes are the same key.
    let mut jefe = [0; HashKey::LEN];
    jefe[..4].copy_from_slice(b"Jefe");
    let rfc = secret(&[("k", "what do ya want for nothing?")]);
    assert_eq!(
        secret_hash(&rfc, "k", &HashKey::new(jefe)).as_deref(),
        Some("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    );
}

#[test]
fn the_hash_key_never_shows_in_debug_output() {
    assert_eq!(format!("{KEY:?}"), "HashKey(<redacted>)");
}

#[test]
fn invalid_specs_are_spec_errors_that_say_what_to_fix() {
    let mut neither = ScalableApi::test();
    neither.spec.database.password_secret_ref = None;
    let both = ScalableApi::test()
        .with_uri_secret("db", "uri")
        .with_password_secret("db", "pw");
    let mut no_host = ScalableApi::test();
    no_host.spec.database.host = None;
    let cases = [
        (neither, SpecError::DatabaseForm),
        (both, SpecError::DatabaseForm),
        (no_host, SpecError::DatabasePasswordForm),
        (
            ScalableApi::test().with_autoscaling(5, 3),
            SpecError::MinAboveMax { min: 5, max: 3 },
        ),
        (
            ScalableApi::test().with_pool(9, 3),
            SpecError::PoolMinAboveMax { min: 9, max: 3 },
        ),
        (
            ScalableApi::test().with_cache_memory("lots"),
            SpecError::MaxMemory {
                value: "lots".into(),
            },
        ),
        (
            ScalableApi::test()
                .with_autoscaling(1, 3)
                .with_requests(&[("memory", "64Mi")]),
            SpecError::MissingRequest { resource: "cpu" },
        ),
        (
            ScalableApi::test()
                .with_autoscaling(1, 3)
                .with_memory_target(80)
                .with_requests(&[("cpu", "100m")]),
            SpecError::MissingRequest { resource: "memory" },
        ),
        (ScalableApi::test().named(""), SpecError::MissingName),
        (
            ScalableApi::test().named("my.api"),
            SpecError::InvalidName {
                name: "my.api".into(),
            },
        ),
    ];
    for (sapi, expected) in cases {
        let err = desired(&sapi, &Inputs::default()).expect_err("invalid spec");
        assert_eq!(err, expected);
        assert!(err.to_string().contains("spec.") || err.to_string().contains("metadata.name"));
    }
}

#[test]
fn name_must_be_a_dns_1035_label() {
    let long = "a".repeat(64);
    for bad in [
        "my.api",
        "My-api",
        "1api",
        "api-",
        "-api",
        "my_api",
        long.as_str(),
    ] {
        assert!(!is_dns1035_label(bad), "{bad}");
        let err =
            desired(&ScalableApi::test().named(bad), &Inputs::default()).expect_err("invalid name");
        assert_eq!(err, SpecError::InvalidName { name: bad.into() });
        assert!(
            err.to_string()
                .contains(crate::crd::messages::NAME_DNS_LABEL)
        );
    }
    let max = "a".repeat(63);
    for good in ["a", "users", "my-api-2", max.as_str()] {
        assert!(is_dns1035_label(good), "{good}");
        desired(&ScalableApi::test().named(good), &Inputs::default()).expect("valid name");
    }
}

#[test]
fn the_operators_env_names_cover_every_variable_it_sets() {
    // The fullest spec: every optional ConfigMap key is set.
    let mut sapi = ScalableApi::test().with_rate_limit(10, Some(20));
    if let Some(rl) = sapi.spec.rate_limit.as_mut() {
        rl.client_address = Some(crate::crd::ClientAddress {
            source: crate::crd::ClientAddressSource::XForwardedFor,
            trusted_hops: Some(2),
        });
        rl.max_clients = Some(1000);
    }
    let c = build(&sapi);
    for key in c.config_map.data.iter().flatten().map(|(k, _)| k) {
        assert!(crate::crd::OPERATOR_ENV.contains(&key.as_str()), "{key}");
    }
    for sapi in [sapi.clone(), sapi.with_uri_secret("pg", "uri")] {
        let d = build(&sapi).deployment;
        let env = d.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        assert!(
            crate::crd::OPERATOR_ENV.contains(&env[0].name.as_str()),
            "{}",
            env[0].name
        );
    }
}

#[test]
fn reserved_env_labels_and_annotations_are_spec_errors_without_cel() {
    use k8s_openapi::api::core::v1::EnvVar;
    let mut sapi = ScalableApi::test();
    sapi.spec.env = vec![EnvVar {
        name: "REDIS_URL".into(),
        value: Some("redis://elsewhere".into()),
        ..EnvVar::default()
    }];
    assert_eq!(
        desired(&sapi, &Inputs::default()),
        Err(SpecError::ReservedEnv {
            name: "REDIS_URL".into()
        })
    );
    let mut sapi = ScalableApi::test();
    sapi.spec.pod = Some(crate::crd::PodOptions {
        labels: Some([("app.kubernetes.io/instance".to_owned(), "other".to_owned())].into()),
        ..Default::default()
    });
    assert!(matches!(
        desired(&sapi, &Inputs::default()),
        Err(SpecError::ReservedPodLabel { .. })
    ));
    let mut sapi = ScalableApi::test();
    sapi.spec.pod = Some(crate::crd::PodOptions {
        annotations: Some([(CONFIG_HASH_ANNOTATION.to_owned(), "x".to_owned())].into()),
        ..Default::default()
    });
    assert_eq!(
        desired(&sapi, &Inputs::default()),
        Err(SpecError::ReservedPodAnnotation)
    );
}
