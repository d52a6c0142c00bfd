//! The cache as a native sidecar: an init container with `restartPolicy: Always`, so it
//! starts before the API and stops after it. Any Redis-protocol server whose image carries
//! `redis-server`/`redis-cli`, or `valkey-server`/`valkey-cli` (Valkey's images).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ExecAction, Probe, ResourceRequirements, VolumeMount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{PodDefaults, SpecError, security};
use crate::crd::CacheSpec;

/// The cache image when neither `spec.cache.image` nor `--default-cache-image` is set:
/// Valkey (BSD-3-Clause, the Linux Foundation's fork of Redis 7.2), fully qualified so that
/// platforms refusing short names accept it.
pub const DEFAULT_IMAGE: &str = "docker.io/valkey/valkey:8.1-alpine";
pub const CONTAINER: &str = "redis";
pub const DATA_VOLUME: &str = "redis-data";
/// Memory Redis needs beyond `maxmemory` (allocator, buffers, the process itself).
const OVERHEAD_BYTES: u64 = 32 * MIB;
const MIB: u64 = 1024 * 1024;
/// Largest `maxMemory` accepted (the CEL rule's bound): a per-pod cache, not a data store.
pub const MAX_MEMORY_BYTES: u64 = 64 * 1024 * MIB;

/// Server and client binaries of a cache image: `valkey-*` for an image whose repository is
/// named `valkey...`, else `redis-*`.
pub fn binaries(image: &str) -> (&'static str, &'static str) {
    let without_digest = image.split('@').next().unwrap_or(image);
    let name = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let repository = name.split(':').next().unwrap_or(name);
    if repository.starts_with("valkey") {
        ("valkey-server", "valkey-cli")
    } else {
        ("redis-server", "redis-cli")
    }
}

pub fn sidecar(cache: &CacheSpec, pod: &PodDefaults) -> Result<Container, SpecError> {
    let invalid = || SpecError::MaxMemory {
        value: cache.max_memory.clone(),
    };
    let max_memory = quantity_bytes(&cache.max_memory)
        .filter(|b| (1..=MAX_MEMORY_BYTES).contains(b))
        .ok_or_else(invalid)?;
    // Checked even below the bound, so a change of MAX_MEMORY_BYTES can never overflow.
    let memory_bytes = max_memory.checked_add(OVERHEAD_BYTES).ok_or_else(invalid)?;
    let args = [
        "--port",
        "6379",
        // Only the api container in this pod may talk to it.
        "--bind",
        "127.0.0.1",
        // A cache: no persistence, evict least-recently-used keys when full.
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory",
        &max_memory.to_string(),
        "--maxmemory-policy",
        "allkeys-lru",
        "--dir",
        "/data",
    ];
    // Requests cover CPU and memory because HPA utilisation is only defined when every
    // container of the pod (sidecars included) requests the measured resource.
    let memory = Quantity(format!("{}Mi", memory_bytes.div_ceil(MIB)));
    let image = cache
        .image
        .clone()
        .unwrap_or_else(|| pod.cache_image.clone());
    let (server, cli) = binaries(&image);
    Ok(Container {
        name: CONTAINER.into(),
        command: Some(vec![server.into()]),
        image: Some(image),
        args: Some(args.iter().map(|s| (*s).to_owned()).collect()),
        restart_policy: Some("Always".into()),
        // The bind is 127.0.0.1, so the kubelet cannot probe over TCP: exec the client.
        startup_probe: Some(ping(cli, 1, 30)),
        liveness_probe: Some(ping(cli, 10, 3)),
        // No readiness probe: Redis is an optimisation, a pod without it still serves.
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("50m".into())),
                ("memory".into(), memory.clone()),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), memory)])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(security::container(pod.uid)),
        volume_mounts: Some(vec![VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: "/data".into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    })
}

fn ping(cli: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                cli.into(),
                "-h".into(),
                "127.0.0.1".into(),
                "ping".into(),
            ]),
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// Bytes of a Kubernetes quantity (`64Mi`, `1G`, `1.5Gi`, `1e9`), rounded up; `None` if malformed.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number.parse().ok()?;
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let bytes = (value * multiplier).ceil();
    // Finite and within u64: the cast below cannot truncate.
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_become_bytes() {
        assert_eq!(quantity_bytes("64Mi"), Some(64 * 1024 * 1024));
        assert_eq!(quantity_bytes("1Gi"), Some(1024 * 1024 * 1024));
        assert_eq!(quantity_bytes("1.5Gi"), Some(1536 * 1024 * 1024));
        assert_eq!(quantity_bytes("100M"), Some(100_000_000));
        assert_eq!(quantity_bytes("2k"), Some(2000));
        assert_eq!(quantity_bytes("1e6"), Some(1_000_000));
        assert_eq!(quantity_bytes("4096"), Some(4096));
    }

    #[test]
    fn malformed_quantities_are_rejected() {
        for bad in ["", "lots", "64MB", "Mi", "-1Gi", "1.2.3Mi"] {
            assert_eq!(quantity_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_image_picks_the_server_and_client_binaries() {
        for image in [
            DEFAULT_IMAGE,
            "valkey/valkey:9.0",
            "registry.example/mirror/valkey@sha256:0f",
        ] {
            assert_eq!(binaries(image), ("valkey-server", "valkey-cli"), "{image}");
        }
        for image in [
            "docker.io/library/redis:7.2-alpine",
            "registry.example:5000/redis",
            "registry.example/valkey-team/keydb:6",
        ] {
            assert_eq!(binaries(image), ("redis-server", "redis-cli"), "{image}");
        }
    }

    #[test]
    fn spec_cache_image_beats_the_operator_default_and_sets_the_probes() {
        let pod = PodDefaults {
            cache_image: "registry.local/valkey:8".into(),
            ..PodDefaults::default()
        };
        let c = sidecar(&CacheSpec::default(), &pod).expect("sidecar");
        assert_eq!(c.image.as_deref(), Some("registry.local/valkey:8"));
        assert_eq!(c.command, Some(vec!["valkey-server".to_owned()]));
        let cache = CacheSpec {
            image: Some("docker.io/library/redis:7.2-alpine".into()),
            ..CacheSpec::default()
        };
        let c = sidecar(&cache, &pod).expect("sidecar");
        assert_eq!(
            c.image.as_deref(),
            Some("docker.io/library/redis:7.2-alpine")
        );
        assert_eq!(c.command, Some(vec!["redis-server".to_owned()]));
        let probe = c
            .liveness_probe
            .and_then(|p| p.exec)
            .and_then(|e| e.command);
        assert_eq!(
            probe.and_then(|c| c.first().cloned()).as_deref(),
            Some("redis-cli")
        );
    }

    #[test]
    fn memory_request_covers_maxmemory_plus_overhead() {
        let c = sidecar(&CacheSpec::default(), &PodDefaults::default()).expect("sidecar");
        let requests = c.resources.and_then(|r| r.requests).expect("requests");
        assert_eq!(requests.get("memory"), Some(&Quantity("96Mi".into())));
    }

    #[test]
    fn zero_max_memory_is_an_error() {
        let cache = CacheSpec {
            max_memory: "0".into(),
            ..CacheSpec::default()
        };
        assert!(sidecar(&cache, &PodDefaults::default()).is_err());
    }

    #[test]
    fn max_memory_above_64gi_is_an_error_not_an_overflow() {
        for huge in ["18446744073700000000", "65Gi", "1Ei", "16E"] {
            let cache = CacheSpec {
                max_memory: huge.into(),
                ..CacheSpec::default()
            };
            assert_eq!(
                sidecar(&cache, &PodDefaults::default()),
                Err(SpecError::MaxMemory { value: huge.into() }),
                "{huge}"
            );
        }
    }

    #[test]
    fn max_memory_of_exactly_64gi_is_accepted() {
        let cache = CacheSpec {
            max_memory: "64Gi".into(),
            ..CacheSpec::default()
        };
        let c = sidecar(&cache, &PodDefaults::default()).expect("sidecar");
        let limits = c.resources.and_then(|r| r.limits).expect("limits");
        assert_eq!(limits.get("memory"), Some(&Quantity("65568Mi".into())));
    }
}
