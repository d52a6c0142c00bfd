//! A ScalableApi under construction, shared by the in-memory and the real-cluster suites:
//! `scalable_api("users").replicas(3)`; each suite's harness adds `create`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use operator::crd::ScalableApi;
use serde_json::{Value, json};

/// A ScalableApi under construction, as JSON so tests can set any field.
pub struct SapiFixture {
    pub obj: Value,
}

/// `name` with a password Secret reference `<name>-db`/`password` and 2 fixed replicas.
pub fn scalable_api(name: &str) -> SapiFixture {
    SapiFixture {
        obj: json!({
            "apiVersion": "scalable.dev/v1alpha1",
            "kind": "ScalableApi",
            "metadata": {"name": name},
            "spec": {
                "replicas": 2,
                "database": {
                    "host": "postgres.shop.svc",
                    "name": "users",
                    "user": "app",
                    "passwordSecretRef": {"name": format!("{name}-db"), "key": "password"},
                },
            },
        }),
    }
}

impl SapiFixture {
    pub fn replicas(mut self, n: i32) -> Self {
        self.obj["spec"]["replicas"] = json!(n);
        self
    }

    /// No `spec.replicas`, as in a manifest that leaves the count to the schema default.
    pub fn without_replicas(mut self) -> Self {
        if let Some(spec) = self.obj["spec"].as_object_mut() {
            spec.remove("replicas");
        }
        self
    }

    pub fn autoscaling(mut self, min: i32, max: i32) -> Self {
        self = self.without_replicas();
        self.obj["spec"]["autoscaling"] = json!({"minReplicas": min, "maxReplicas": max});
        self
    }

    pub fn in_namespace(mut self, ns: &str) -> Self {
        self.obj["metadata"]["namespace"] = json!(ns);
        self
    }

    // This module is compiled into both test binaries; only the controller tests use it.
    #[allow(dead_code)]
    pub fn with(mut self, pointer: &str, value: Value) -> Self {
        if let Some(slot) = self.obj.pointer_mut(pointer) {
            *slot = value;
        } else {
            let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
            self.obj.pointer_mut(parent).expect("parent exists")[key] = value;
        }
        self
    }

    pub fn build(self) -> ScalableApi {
        serde_json::from_value(self.obj).expect("valid ScalableApi fixture")
    }
}

/// A Secret `name` in `namespace` holding one key.
pub fn secret_in(namespace: &str, name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            key.to_owned(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}
