//! Deployment builder: names, selector, replicas, containers, probes, env, security, spread.

use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::*;
use crate::desired::{Inputs, PodDefaults, configmap, desired};

fn deployment_of(sapi: &ScalableApi) -> Deployment {
    desired(sapi, &Inputs::default()).expect("valid").deployment
}

fn pod(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

fn api(d: &Deployment) -> &Container {
    pod(d)
        .containers
        .iter()
        .find(|c| c.name == API_CONTAINER)
        .expect("api container")
}

fn sidecar(d: &Deployment) -> Option<&Container> {
    pod(d)
        .init_containers
        .as_ref()?
        .iter()
        .find(|c| c.name == "redis")
}

fn replicas(sapi: &ScalableApi) -> Option<i32> {
    deployment_of(sapi).spec.and_then(|s| s.replicas)
}

#[test]
fn selector_uses_name_and_instance_only() {
    let d = deployment_of(&ScalableApi::test());
    let spec = d.spec.as_ref().expect("spec");
    let selector = spec.selector.match_labels.as_ref().expect("labels");
    assert_eq!(selector, &labels::selector(&ScalableApi::test()));
    assert_eq!(selector.len(), 2);
    assert_eq!(
        selector.get(labels::NAME).map(String::as_str),
        Some("api-server")
    );
    assert_eq!(
        selector.get(labels::INSTANCE).map(String::as_str),
        Some("users")
    );
    // The pods carry every selector label, or the Deployment would be rejected.
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    assert_eq!(pod_labels, Some(&labels::common(&ScalableApi::test())));
}

#[test]
fn replicas_follow_spec_replicas_without_autoscaling() {
    assert_eq!(replicas(&ScalableApi::test().with_replicas(4)), Some(4));
    assert_eq!(replicas(&ScalableApi::test().with_replicas(0)), Some(0));
}

#[test]
fn replicas_default_to_one() {
    assert_eq!(replicas(&ScalableApi::test()), Some(1));
}

#[test]
fn under_autoscaling_replicas_are_spec_replicas_within_the_bounds() {
    // The HPA scales the ScalableApi, so the Deployment's count is always ours to write.
    let scaled = ScalableApi::test().with_autoscaling(3, 20);
    assert_eq!(
        replicas(&scaled),
        Some(3),
        "the default 1 under minReplicas 3"
    );
    assert_eq!(replicas(&scaled.clone().with_replicas(7)), Some(7));
    assert_eq!(replicas(&scaled.with_replicas(40)), Some(20));
}

#[test]
fn api_container_uses_the_default_image_unless_spec_image_is_set() {
    let inputs = Inputs {
        pod: PodDefaults {
            api_image: "registry.local/api:7".into(),
            ..PodDefaults::default()
        },
        secret_hash: None,
        jwks_hash: None,
        events_hash: None,
    };
    let d = desired(&ScalableApi::test(), &inputs)
        .expect("valid")
        .deployment;
    assert_eq!(api(&d).image.as_deref(), Some("registry.local/api:7"));
    let d = deployment_of(&ScalableApi::test().with_image("example.com/api:2"));
    assert_eq!(api(&d).image.as_deref(), Some("example.com/api:2"));
}

#[test]
fn api_container_exposes_http_on_8080_and_admin_on_9090() {
    let ports = api(&deployment_of(&ScalableApi::test()))
        .ports
        .clone()
        .expect("ports");
    let named: Vec<(Option<&str>, i32)> = ports
        .iter()
        .map(|p| (p.name.as_deref(), p.container_port))
        .collect();
    assert_eq!(named, [(Some("http"), 8080), (Some("admin"), 9090)]);
}

#[test]
fn probes_are_healthz_for_liveness_and_readyz_for_readiness() {
    let d = deployment_of(&ScalableApi::test());
    let c = api(&d);
    let path = |p: &Option<Probe>| {
        let get = p
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet");
        // The admin port, which /metrics shares with the probes, never the public one.
        assert_eq!(get.port, IntOrString::String("admin".into()));
        get.path.clone()
    };
    assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(path(&c.startup_probe).as_deref(), Some("/healthz"));
}

#[test]
fn password_form_sets_only_pgpassword_from_the_secret() {
    let d = deployment_of(&ScalableApi::test());
    let env = api(&d).env.clone().expect("env");
    assert_eq!(env.len(), 1);
    assert_eq!(env[0].name, "PGPASSWORD");
    let r = env[0]
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("secretKeyRef");
    assert_eq!((r.name.as_str(), r.key.as_str()), ("users-db", "password"));
}

#[test]
fn uri_form_sets_only_database_url_from_the_secret() {
    let d = deployment_of(&ScalableApi::test().with_uri_secret("pg-app", "uri"));
    let env = api(&d).env.clone().expect("env");
    assert_eq!(env.len(), 1);
    assert_eq!(env[0].name, "DATABASE_URL");
    let r = env[0]
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("secretKeyRef");
    assert_eq!((r.name.as_str(), r.key.as_str()), ("pg-app", "uri"));
}

#[test]
fn the_rest_of_the_env_comes_from_the_config_map() {
    let d = deployment_of(&ScalableApi::test());
    let from = api(&d).env_from.clone().expect("envFrom");
    assert_eq!(from.len(), 1);
    let cm = from[0].config_map_ref.as_ref().expect("configMapRef");
    assert_eq!(cm.name, "users-config");
    // Service links would inject *_SERVICE_HOST variables outside the api-server's interface.
    assert_eq!(pod(&d).enable_service_links, Some(false));
}

#[test]
fn default_requests_make_hpa_utilisation_work() {
    let d = deployment_of(
        &ScalableApi::test()
            .with_autoscaling(2, 5)
            .with_memory_target(80),
    );
    let res = api(&d).resources.clone().expect("resources");
    let requests = res.requests.expect("requests");
    assert_eq!(requests.get("cpu"), Some(&Quantity("100m".into())));
    assert_eq!(requests.get("memory"), Some(&Quantity("64Mi".into())));
    // Every container, the sidecar included, needs requests for pod utilisation.
    let side = sidecar(&d)
        .and_then(|c| c.resources.clone())
        .and_then(|r| r.requests);
    let side = side.expect("sidecar requests");
    assert!(side.contains_key("cpu") && side.contains_key("memory"));
}

#[test]
fn spec_resources_are_used_verbatim() {
    let sapi = ScalableApi::test().with_requests(&[("cpu", "250m"), ("memory", "128Mi")]);
    let d = deployment_of(&sapi);
    assert_eq!(api(&d).resources, sapi.spec.resources);
}

#[test]
fn redis_is_a_native_sidecar_when_the_cache_is_enabled() {
    let d = deployment_of(&ScalableApi::test().with_cache_memory("128Mi"));
    let r = sidecar(&d).expect("redis sidecar");
    assert_eq!(r.restart_policy.as_deref(), Some("Always"));
    let args = r.args.clone().expect("args");
    let pair = |flag: &str| {
        let i = args.iter().position(|a| a == flag).expect(flag);
        args[i + 1].clone()
    };
    assert_eq!(pair("--save"), "");
    assert_eq!(pair("--appendonly"), "no");
    assert_eq!(pair("--maxmemory"), (128u64 * 1024 * 1024).to_string());
    assert_eq!(pair("--maxmemory-policy"), "allkeys-lru");
    assert_eq!(pair("--bind"), "127.0.0.1");
    assert!(r.startup_probe.is_some() && r.liveness_probe.is_some());
    // Redis down must not take the pod out of the Service: no readiness probe.
    assert!(r.readiness_probe.is_none());
    let volumes = pod(&d).volumes.clone().expect("volumes");
    assert!(
        volumes
            .iter()
            .any(|v| v.name == redis::DATA_VOLUME && v.empty_dir.is_some())
    );
}

#[test]
fn no_sidecar_without_the_cache() {
    let d = deployment_of(&ScalableApi::test().without_cache());
    assert!(pod(&d).init_containers.is_none());
    assert!(
        !pod(&d)
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == redis::DATA_VOLUME)
    );
}

#[test]
fn every_container_and_the_pod_are_restricted() {
    let d = deployment_of(&ScalableApi::test());
    let p = pod(&d);
    let psc = p.security_context.as_ref().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert!(psc.run_as_user.is_some_and(|u| u > 0));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let all = p
        .containers
        .iter()
        .chain(p.init_containers.iter().flatten());
    let mut count = 0;
    for c in all {
        count += 1;
        let sc = c.security_context.as_ref().expect("securityContext");
        assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
        assert!(sc.run_as_user.is_some_and(|u| u > 0), "{}", c.name);
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        let drop = sc.capabilities.as_ref().and_then(|c| c.drop.clone());
        assert_eq!(drop, Some(vec!["ALL".to_owned()]), "{}", c.name);
        let seccomp = sc.seccomp_profile.as_ref().map(|s| s.type_.clone());
        assert_eq!(seccomp.as_deref(), Some("RuntimeDefault"), "{}", c.name);
    }
    assert_eq!(count, 2);
    // The read-only root filesystem gets a writable /tmp.
    let mounts = api(&d).volume_mounts.clone().expect("mounts");
    assert!(mounts.iter().any(|m| m.mount_path == "/tmp"));
}

#[test]
fn with_platform_uids_no_id_is_set_and_the_rest_stays_restricted() {
    // OpenShift's restricted-v2 assigns uid, gid and fsGroup from the namespace's range and
    // refuses fixed ones outside it.
    let inputs = Inputs {
        pod: PodDefaults {
            uid: None,
            ..PodDefaults::default()
        },
        secret_hash: None,
        jwks_hash: None,
        events_hash: None,
    };
    let d = desired(&ScalableApi::test(), &inputs)
        .expect("valid")
        .deployment;
    let p = pod(&d);
    let psc = p.security_context.as_ref().expect("pod securityContext");
    assert_eq!(
        (psc.run_as_user, psc.run_as_group, psc.fs_group),
        (None, None, None)
    );
    assert_eq!(psc.run_as_non_root, Some(true));
    for c in p
        .containers
        .iter()
        .chain(p.init_containers.iter().flatten())
    {
        let sc = c.security_context.as_ref().expect("securityContext");
        assert_eq!(
            (sc.run_as_user, sc.run_as_group),
            (None, None),
            "{}",
            c.name
        );
        assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
    }
}

#[test]
fn pods_spread_over_nodes_without_blocking_scheduling() {
    let d = deployment_of(&ScalableApi::test());
    let tsc = pod(&d).topology_spread_constraints.clone().expect("spread");
    assert_eq!(tsc.len(), 1);
    assert_eq!(tsc[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(tsc[0].when_unsatisfiable, "ScheduleAnyway");
    let selector = tsc[0]
        .label_selector
        .as_ref()
        .and_then(|s| s.match_labels.clone());
    assert_eq!(selector, Some(labels::selector(&ScalableApi::test())));
}

#[test]
fn grace_period_outlasts_the_drain() {
    let d = deployment_of(&ScalableApi::test());
    let grace = pod(&d).termination_grace_period_seconds.expect("grace");
    assert!(grace > configmap::SHUTDOWN_TIMEOUT_SECONDS + PRE_STOP_SLEEP_SECONDS);
}

#[test]
fn rollouts_never_reduce_capacity() {
    let d = deployment_of(&ScalableApi::test());
    let ru = d
        .spec
        .and_then(|s| s.strategy)
        .and_then(|s| s.rolling_update)
        .expect("rollingUpdate");
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
}

#[test]
fn pod_options_and_extra_env_reach_the_pod_template() {
    use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, Toleration};
    let mut sapi = ScalableApi::test();
    sapi.spec.env = vec![EnvVar {
        name: "OTEL_SERVICE_NAME".into(),
        value: Some("users".into()),
        ..EnvVar::default()
    }];
    sapi.spec.pod = Some(crate::crd::PodOptions {
        node_selector: Some([("pool".to_owned(), "api".to_owned())].into()),
        tolerations: Some(vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        }]),
        priority_class_name: Some("high".into()),
        image_pull_secrets: Some(vec![LocalObjectReference {
            name: "regcred".into(),
        }]),
        service_account_name: Some("users-api".into()),
        labels: Some([("team".to_owned(), "payments".to_owned())].into()),
        annotations: Some([("example.com/owner".to_owned(), "payments".to_owned())].into()),
        topology_spread_constraints: Some(Vec::new()),
        ..Default::default()
    });
    let d = deployment_of(&sapi);
    let template = d.spec.as_ref().unwrap().template.clone();
    let meta = template.metadata.unwrap();
    let labels = meta.labels.unwrap();
    assert_eq!(labels.get("team").map(String::as_str), Some("payments"));
    assert_eq!(
        labels.get(labels::INSTANCE).map(String::as_str),
        Some("users"),
        "ours stay"
    );
    let annotations = meta.annotations.unwrap();
    assert!(annotations.contains_key("example.com/owner"));
    assert!(annotations.contains_key(CONFIG_HASH_ANNOTATION));
    let p = pod(&d);
    assert_eq!(
        p.node_selector
            .as_ref()
            .and_then(|n| n.get("pool"))
            .map(String::as_str),
        Some("api")
    );
    assert_eq!(p.tolerations.as_ref().map(Vec::len), Some(1));
    assert_eq!(p.priority_class_name.as_deref(), Some("high"));
    assert_eq!(p.service_account_name.as_deref(), Some("users-api"));
    assert_eq!(p.automount_service_account_token, Some(false));
    assert_eq!(p.image_pull_secrets.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        p.topology_spread_constraints,
        Some(Vec::new()),
        "an empty list replaces the default spread"
    );
    let env = api(&d).env.clone().unwrap();
    assert_eq!(
        env.last().map(|e| e.name.as_str()),
        Some("OTEL_SERVICE_NAME")
    );
    // The selector is untouched by pod labels.
    assert_eq!(
        d.spec.unwrap().selector.match_labels,
        Some(labels::selector(&sapi))
    );
}

#[test]
fn auth_mounts_the_jwks_and_points_the_api_at_it() {
    use crate::crd::{AuthSpec, JwtAuth, SecretKeyRef};
    let mut sapi = ScalableApi::test();
    sapi.spec.auth = Some(AuthSpec {
        jwt: JwtAuth {
            issuer: "https://issuer.example".into(),
            audience: "users-api".into(),
            jwks_secret_ref: SecretKeyRef {
                name: "idp-jwks".into(),
                key: "jwks.json".into(),
            },
        },
    });
    let c = desired(&sapi, &Inputs::default()).expect("valid");
    let data = c.config_map.data.clone().unwrap();
    assert_eq!(
        data.get("AUTH_JWKS_PATH").map(String::as_str),
        Some("/etc/scalable-api/jwks/jwks.json")
    );
    assert_eq!(
        data.get("AUTH_JWT_ISSUER").map(String::as_str),
        Some("https://issuer.example")
    );
    assert_eq!(
        data.get("AUTH_JWT_AUDIENCE").map(String::as_str),
        Some("users-api")
    );
    let p = pod(&c.deployment);
    let volume = p
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == JWKS_VOLUME)
        .expect("jwks volume");
    let secret = volume.secret.as_ref().expect("secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("idp-jwks"));
    assert_eq!(secret.items.as_ref().unwrap()[0].key, "jwks.json");
    let mount = api(&c.deployment)
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == JWKS_VOLUME)
        .expect("jwks mount");
    assert_eq!(mount.mount_path, "/etc/scalable-api/jwks");
    assert_eq!(mount.read_only, Some(true));
    // Without auth: no volume, no variables.
    let plain = deployment_of(&ScalableApi::test());
    assert!(
        pod(&plain)
            .volumes
            .iter()
            .flatten()
            .all(|v| v.name != JWKS_VOLUME)
    );
}

#[test]
fn a_new_jwks_rolls_the_pods_and_no_auth_keeps_the_old_hash() {
    let hash = |jwks: Option<&str>| {
        let inputs = Inputs {
            secret_hash: Some("db".into()),
            jwks_hash: jwks.map(str::to_owned),
            ..Inputs::default()
        };
        template_hash(
            &desired(&ScalableApi::test(), &inputs)
                .expect("valid")
                .deployment,
        )
    };
    assert_ne!(hash(Some("k1")), hash(Some("k2")));
    assert_ne!(hash(None), hash(Some("k1")));
    let cm = desired(&ScalableApi::test(), &Inputs::default())
        .unwrap()
        .config_map;
    assert_eq!(
        crate::desired::config_hash(&cm, Some("db"), None, None),
        hash(None),
        "the same hash as before spec.auth existed"
    );
}

#[test]
fn events_mount_the_kafka_files_and_read_the_password_from_its_secret() {
    let sapi = ScalableApi::test().with_kafka_tls_and_sasl(&["kafka.kafka.svc:9093"]);
    let c = desired(&sapi, &Inputs::default()).expect("valid");
    let data = c.config_map.data.clone().unwrap();
    assert_eq!(
        data.get("EVENTS_KAFKA_BROKERS").map(String::as_str),
        Some("kafka.kafka.svc:9093")
    );
    assert_eq!(data.get("EVENTS_SOURCE").map(String::as_str), Some("users"));
    let p = pod(&c.deployment);
    let volume = p
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == crate::desired::kafka::TLS_VOLUME)
        .expect("kafka-tls volume");
    assert!(volume.projected.is_some());
    let mount = api(&c.deployment)
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == crate::desired::kafka::TLS_VOLUME)
        .expect("kafka-tls mount");
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/etc/scalable-api/kafka-tls", Some(true))
    );
    let password = api(&c.deployment)
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "EVENTS_KAFKA_SASL_PASSWORD")
        .expect("password variable");
    assert!(password.value.is_none() && password.value_from.is_some());

    // Plaintext: settings only, nothing mounted, no password.
    let plain = desired(
        &ScalableApi::test().with_kafka(&["k:9092"]),
        &Inputs::default(),
    )
    .expect("valid");
    let p = pod(&plain.deployment);
    assert!(
        p.volumes
            .iter()
            .flatten()
            .all(|v| v.name != crate::desired::kafka::TLS_VOLUME)
    );
    assert!(
        api(&plain.deployment)
            .env
            .iter()
            .flatten()
            .all(|e| e.name != "EVENTS_KAFKA_SASL_PASSWORD")
    );
}

#[test]
fn a_new_kafka_secret_value_rolls_the_pods_and_no_events_keeps_the_old_hash() {
    let sapi = ScalableApi::test().with_kafka_tls_and_sasl(&["k:9093"]);
    let hash = |events: Option<&str>| {
        let inputs = Inputs {
            secret_hash: Some("db".into()),
            events_hash: events.map(str::to_owned),
            ..Inputs::default()
        };
        template_hash(&desired(&sapi, &inputs).expect("valid").deployment)
    };
    assert_ne!(hash(Some("a:b")), hash(Some("a:c")));
    let cm = desired(&ScalableApi::test(), &Inputs::default())
        .unwrap()
        .config_map;
    assert_eq!(
        crate::desired::config_hash(&cm, Some("db"), None, None),
        crate::desired::config_hash(&cm, Some("db"), None, None),
    );
    assert_ne!(
        crate::desired::config_hash(&cm, Some("db"), None, Some("e")),
        crate::desired::config_hash(&cm, Some("db"), None, None),
        "the events hash counts when present"
    );
}

/// The pod template's config-hash annotation.
fn template_hash(d: &Deployment) -> String {
    d.spec
        .clone()
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
        .expect("config-hash annotation")
}
