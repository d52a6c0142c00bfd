//! ScalableApi objects for the tests and the repository's example files.

use std::path::PathBuf;

use anyhow::Context as _;
use operator::crd::ScalableApi;
use serde_json::{Value, json};

use crate::postgres::Database;

/// Name of the per-test Secret holding the database password (key `password`).
pub const DB_SECRET: &str = "db";
pub const DB_SECRET_KEY: &str = "password";

/// A ScalableApi `name` using the test's database, small enough for a kind node, with
/// `overrides` merged into `spec` as a JSON merge patch (RFC 7386: `null` removes a field).
pub fn scalable_api(name: &str, db: &Database, overrides: Value) -> anyhow::Result<ScalableApi> {
    let mut spec = json!({
        "resources": {
            "requests": { "cpu": "50m", "memory": "64Mi" },
            "limits": { "memory": "256Mi" }
        },
        "database": {
            "host": db.host,
            "name": db.name,
            "user": db.user,
            "passwordSecretRef": { "name": DB_SECRET, "key": DB_SECRET_KEY },
            "sslMode": "disable",
            "pool": { "maxConnections": 4, "minConnections": 1 }
        },
        "cache": { "enabled": true, "maxMemory": "32Mi" }
    });
    merge(&mut spec, overrides);
    let obj = json!({
        "apiVersion": "scalable.dev/v1alpha1",
        "kind": "ScalableApi",
        "metadata": { "name": name },
        "spec": spec
    });
    serde_json::from_value(obj).context("building a ScalableApi from JSON")
}

/// RFC 7386 JSON merge patch of `patch` into `target`.
pub fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Value::Object(map) = target {
                for (key, value) in fields {
                    if value.is_null() {
                        map.remove(&key);
                    } else {
                        merge(map.entry(key).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other,
    }
}

/// The repository's `examples/` directory.
pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// An example file: its parsed object and its `# expect-error:` substrings.
pub struct Example {
    pub file: String,
    pub object: Value,
    pub expected_errors: Vec<String>,
}

/// Every `examples/invalid-*.yaml`, sorted by name.
pub fn invalid_examples() -> anyhow::Result<Vec<Example>> {
    let dir = examples_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("invalid-") && n.ends_with(".yaml"))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let object: Value = serde_saphyr::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            let expected_errors = text
                .lines()
                .filter_map(|l| l.strip_prefix("# expect-error: "))
                .map(str::to_owned)
                .collect();
            Ok(Example {
                file: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                object,
                expected_errors,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_replaces_adds_and_removes() {
        let mut spec = json!({"replicas": 2, "cache": {"enabled": true, "ttlSeconds": 5}});
        merge(
            &mut spec,
            json!({"replicas": null, "cache": {"ttlSeconds": 60}, "autoscaling": {"maxReplicas": 3}}),
        );
        assert_eq!(
            spec,
            json!({"cache": {"enabled": true, "ttlSeconds": 60}, "autoscaling": {"maxReplicas": 3}})
        );
    }

    #[test]
    fn every_invalid_example_names_its_expected_error() {
        let examples = invalid_examples().expect("examples parse");
        assert!(
            examples.len() >= 5,
            "only {} invalid examples",
            examples.len()
        );
        for example in examples {
            assert!(
                !example.expected_errors.is_empty(),
                "{} has no '# expect-error:' line",
                example.file
            );
            assert_eq!(example.object["kind"], "ScalableApi", "{}", example.file);
        }
    }

    #[test]
    fn the_test_object_is_a_valid_scalable_api() {
        let db = Database {
            host: "postgres.e2e-postgres.svc.cluster.local".into(),
            name: "t".into(),
            user: "t".into(),
            password: "p".into(),
        };
        let api = scalable_api("users", &db, json!({"replicas": 2})).expect("valid");
        assert_eq!(api.spec.replicas, 2);
        assert_eq!(api.spec.database.host.as_deref(), Some(db.host.as_str()));
    }
}
