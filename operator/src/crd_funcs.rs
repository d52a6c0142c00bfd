//! Helper methods on the CRD types (kept apart from the schema, as in CNPG's `_funcs.go`).

use kube::ResourceExt;
use kube::core::Selector;

use crate::crd::{DatabaseSpec, ScalableApi, SecretKeyRef, ServiceType, SslMode};
use crate::desired::labels;

/// `spec.replicas` when unset (the CRD schema default).
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

    /// Names of every Secret the pods read: the database's, the JWKS's and the Kafka ones.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        let kafka = self.spec.events.as_ref().map(|e| &e.kafka);
        let tls = kafka.and_then(|k| k.tls.as_ref());
        self.secret_ref()
            .into_iter()
            .chain(self.spec.auth.as_ref().map(|a| &a.jwt.jwks_secret_ref))
            .chain(tls.and_then(|t| t.ca_secret_ref.as_ref()))
            .chain(
                kafka
                    .and_then(|k| k.sasl.as_ref())
                    .map(|s| &s.password_secret_ref),
            )
            .map(|r| r.name.as_str())
            .chain(
                tls.and_then(|t| t.client_certificate_secret_ref.as_ref())
                    .map(|c| c.name.as_str()),
            )
    }

    /// True when `spec.monitoring.podMonitor` asks for a PodMonitor.
    pub fn pod_monitor_wanted(&self) -> bool {
        self.spec.monitoring.as_ref().is_some_and(|m| m.pod_monitor)
    }

    /// True when an HPA owns the replica count.
    pub fn autoscaling_enabled(&self) -> bool {
        self.spec.autoscaling.is_some()
    }

    /// The count the Deployment runs: `spec.replicas`, clamped to minReplicas..maxReplicas
    /// under autoscaling (the HPA never writes outside them, but a user, a `replicas: 0`
    /// from before, or the schema default can).
    pub fn deployment_replicas(&self) -> i32 {
        match &self.spec.autoscaling {
            Some(a) => self
                .spec
                .replicas
                .clamp(a.min_replicas, a.max_replicas.max(a.min_replicas)),
            None => self.spec.replicas,
        }
    }

    /// Fewest available pods that count as Ready: minReplicas with autoscaling, else the
    /// fixed count.
    pub fn replica_floor(&self) -> i32 {
        match &self.spec.autoscaling {
            Some(a) => a.min_replicas,
            None => self.spec.replicas,
        }
    }

    /// The most replicas this object can run: maxReplicas with autoscaling, else the fixed count.
    pub fn max_possible_replicas(&self) -> i32 {
        match &self.spec.autoscaling {
            Some(a) => a.max_replicas,
            None => self.spec.replicas,
        }
    }

    /// Label selector of the pods, in the string form of `status.selector`.
    pub fn selector_string(&self) -> String {
        Selector::from_iter(labels::selector(self)).to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_ref_follows_the_database_form() {
        let r = ScalableApi::test().secret_ref().cloned().expect("ref");
        assert_eq!((r.name.as_str(), r.key.as_str()), ("users-db", "password"));
        let sapi = ScalableApi::test().with_uri_secret("pg-app", "uri");
        assert!(matches!(
            sapi.spec.database.auth(),
            Some(DatabaseAuth::Uri(_))
        ));
        assert_eq!(sapi.secret_ref().map(|r| r.name.as_str()), Some("pg-app"));
        let mut neither = ScalableApi::test();
        neither.spec.database.password_secret_ref = None;
        assert_eq!(neither.secret_ref(), None);
    }

    #[test]
    fn max_possible_replicas_is_max_replicas_or_the_fixed_count() {
        assert_eq!(ScalableApi::test().max_possible_replicas(), 1);
        assert_eq!(
            ScalableApi::test().with_replicas(4).max_possible_replicas(),
            4
        );
        let scaled = ScalableApi::test().with_autoscaling(2, 9);
        assert_eq!(scaled.max_possible_replicas(), 9);
        assert!(scaled.autoscaling_enabled());
        assert!(!ScalableApi::test().autoscaling_enabled());
    }

    #[test]
    fn the_deployment_runs_spec_replicas_clamped_to_the_autoscaling_bounds() {
        assert_eq!(ScalableApi::test().deployment_replicas(), 1);
        assert_eq!(
            ScalableApi::test().with_replicas(0).deployment_replicas(),
            0
        );
        let scaled = |replicas| {
            ScalableApi::test()
                .with_autoscaling(2, 6)
                .with_replicas(replicas)
                .deployment_replicas()
        };
        assert_eq!(scaled(4), 4, "the HPA's choice");
        assert_eq!(scaled(1), 2, "the schema default under minReplicas 2");
        assert_eq!(scaled(0), 2, "0 would disable the HPA");
        assert_eq!(scaled(9), 6);
    }

    #[test]
    fn status_helpers_describe_the_service_and_selector() {
        let sapi = ScalableApi::test().with_service(ServiceType::ClusterIP, 8080);
        assert_eq!(sapi.url(), "http://users.shop.svc:8080");
        assert_eq!(
            sapi.selector_string(),
            "app.kubernetes.io/instance=users,app.kubernetes.io/name=api-server"
        );
        assert_eq!(sapi.config_map_name(), "users-config");
    }
}
