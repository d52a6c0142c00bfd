//! Helper methods on the CRD types (kept apart from the schema, as in CNPG's `_funcs.go`).

use kube::ResourceExt;

use crate::crd::{DatabaseSpec, ScalableApi, SecretKeyRef, ServiceType, SslMode};
use crate::desired::labels;

/// Replica count when neither `replicas` nor `autoscaling` is set.
pub const DEFAULT_REPLICAS: i32 = 1;

/// Which of the two database forms a ScalableApi uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseAuth<'a> {
    /// host/name/user in the ConfigMap, PGPASSWORD from this Secret key.
    Password(&'a SecretKeyRef),
    /// DATABASE_URL from this Secret key.
    Uri(&'a SecretKeyRef),
}

impl<'a> DatabaseAuth<'a> {
    /// The referenced Secret key, whichever form.
    pub fn secret_ref(self) -> &'a SecretKeyRef {
        match self {
            Self::Password(r) | Self::Uri(r) => r,
        }
    }
}

impl DatabaseSpec {
    /// The form in use; `None` when the CEL rule "exactly one form" was bypassed.
    pub fn auth(&self) -> Option<DatabaseAuth<'_>> {
        match (&self.password_secret_ref, &self.uri_secret_ref) {
            (Some(p), None) => Some(DatabaseAuth::Password(p)),
            (None, Some(u)) => Some(DatabaseAuth::Uri(u)),
            _ => None,
        }
    }
}

impl ScalableApi {
    /// The Secret key the pods read credentials from (`None` only for an invalid spec).
    pub fn secret_ref(&self) -> Option<&SecretKeyRef> {
        self.spec.database.auth().map(DatabaseAuth::secret_ref)
    }

    /// True when an HPA owns the replica count.
    pub fn autoscaling_enabled(&self) -> bool {
        self.spec.autoscaling.is_some()
    }

    /// Fixed replica count without autoscaling (`spec.replicas`, default 1).
    pub fn fixed_replicas(&self) -> i32 {
        self.spec.replicas.unwrap_or(DEFAULT_REPLICAS)
    }

    /// The most replicas this object can run: maxReplicas with autoscaling, else the fixed count.
    pub fn max_possible_replicas(&self) -> i32 {
        match &self.spec.autoscaling {
            Some(a) => a.max_replicas,
            None => self.fixed_replicas(),
        }
    }

    /// Label selector of the pods, in the string form of `status.selector`.
    pub fn selector_string(&self) -> String {
        labels::selector(self)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// In-cluster URL of the Service, for `status.url`.
    pub fn url(&self) -> String {
        let ns = self.namespace().unwrap_or_else(|| "default".to_owned());
        format!(
            "http://{}.{}.svc:{}",
            self.name_any(),
            ns,
            self.spec.service.port
        )
    }

    /// Name of the ConfigMap child.
    pub fn config_map_name(&self) -> String {
        format!("{}-config", self.name_any())
    }
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}
