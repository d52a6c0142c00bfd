//! The operator's error type: one variant per failed operation, a stable metric label each.

use std::time::Duration;

/// Errors of the reconcile loop and of `run`. Invalid specs and missing Secrets are not
/// errors: they are reported in status and Events (see `controller::Outcome`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the ScalableApi has no namespace")]
    MissingNamespace,
    #[error("reading the referenced Secret failed: {0}")]
    GetSecret(#[source] kube::Error),
    #[error("reading the live Deployment failed: {0}")]
    GetDeployment(#[source] kube::Error),
    #[error("reading the live {0} failed: {1}")]
    GetChild(String, #[source] kube::Error),
    #[error("re-reading the ScalableApi before adopting an orphaned child failed: {0}")]
    GetOwner(#[source] kube::Error),
    #[error("applying the ConfigMap failed: {0}")]
    ApplyConfigMap(#[source] kube::Error),
    #[error("setting spec.replicas through the ScalableApi's scale subresource failed: {0}")]
    SetScale(#[source] kube::Error),
    #[error("applying the Deployment failed: {0}")]
    ApplyDeployment(#[source] kube::Error),
    #[error("applying the Service failed: {0}")]
    ApplyService(#[source] kube::Error),
    #[error("applying the HorizontalPodAutoscaler failed: {0}")]
    ApplyHpa(#[source] kube::Error),
    #[error("deleting the HorizontalPodAutoscaler failed: {0}")]
    DeleteHpa(#[source] kube::Error),
    #[error("applying the PodDisruptionBudget failed: {0}")]
    ApplyPdb(#[source] kube::Error),
    #[error("deleting the PodDisruptionBudget failed: {0}")]
    DeletePdb(#[source] kube::Error),
    #[error("applying or deleting the Ingress failed: {0}")]
    ApplyIngress(#[source] kube::Error),
    #[error("applying or deleting the HTTPRoute failed: {0}")]
    ApplyHttpRoute(#[source] kube::Error),
    #[error("applying or deleting the PodMonitor failed: {0}")]
    ApplyPodMonitor(#[source] kube::Error),
    #[error("patching the ScalableApi status failed: {0}")]
    PatchStatus(#[source] kube::Error),
    #[error("creating the Kubernetes client failed: {0}")]
    CreateClient(#[source] kube::Error),
    #[error("binding the HTTP listener failed: {0}")]
    BindHttp(#[source] std::io::Error),
    #[error("serving HTTP failed: {0}")]
    ServeHttp(#[source] std::io::Error),
    #[error("reading or writing the leader Lease failed: {0}")]
    Lease(#[source] kube::Error),
    #[error(
        "lost the leader Lease (not renewed within {0:?}); exiting so another replica takes over"
    )]
    LeadershipLost(Duration),
    #[error("reading or creating the hash-key Secret {name:?} failed: {source}")]
    HashKey {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the hash-key Secret {name:?} has no {len}-byte data key {key:?}: delete the Secret to have a new key made (every ScalableApi's pods then roll once)"
    )]
    MalformedHashKey {
        name: String,
        key: &'static str,
        len: usize,
    },
    #[error(
        "give either --namespace (WATCH_NAMESPACE) or --namespaces (WATCH_NAMESPACES), not both"
    )]
    NamespaceFlagsConflict,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How `error_policy` retries a failed reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Someone else wrote first (409): retry soon.
    Conflict,
    /// Network, throttling, 5xx: retry with growing delays.
    Transient,
    /// Forbidden, invalid, not found: retrying fast will not help.
    Permanent,
}

impl Error {
    /// A stable, low-cardinality label for metrics (never the Debug string).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingNamespace => "missing_namespace",
            Error::GetSecret(_) => "get_secret",
            Error::GetDeployment(_) => "get_deployment",
            Error::GetChild(..) => "get_child",
            Error::GetOwner(_) => "get_owner",
            Error::ApplyConfigMap(_) => "apply_configmap",
            Error::SetScale(_) => "set_scale",
            Error::ApplyDeployment(_) => "apply_deployment",
            Error::ApplyService(_) => "apply_service",
            Error::ApplyHpa(_) => "apply_hpa",
            Error::DeleteHpa(_) => "delete_hpa",
            Error::ApplyPdb(_) => "apply_pdb",
            Error::DeletePdb(_) => "delete_pdb",
            Error::ApplyIngress(_) => "apply_ingress",
            Error::ApplyHttpRoute(_) => "apply_httproute",
            Error::ApplyPodMonitor(_) => "apply_podmonitor",
            Error::PatchStatus(_) => "patch_status",
            Error::CreateClient(_) => "create_client",
            Error::BindHttp(_) => "bind_http",
            Error::ServeHttp(_) => "serve_http",
            Error::Lease(_) => "lease",
            Error::LeadershipLost(_) => "leadership_lost",
            Error::HashKey { .. } => "hash_key",
            Error::MalformedHashKey { .. } => "malformed_hash_key",
            Error::NamespaceFlagsConflict => "namespace_flags_conflict",
        }
    }

    fn kube_error(&self) -> Option<&kube::Error> {
        match self {
            Error::GetSecret(e)
            | Error::GetDeployment(e)
            | Error::GetChild(_, e)
            | Error::GetOwner(e)
            | Error::ApplyConfigMap(e)
            | Error::SetScale(e)
            | Error::ApplyDeployment(e)
            | Error::ApplyService(e)
            | Error::ApplyHpa(e)
            | Error::DeleteHpa(e)
            | Error::ApplyPdb(e)
            | Error::DeletePdb(e)
            | Error::ApplyIngress(e)
            | Error::ApplyHttpRoute(e)
            | Error::ApplyPodMonitor(e)
            | Error::PatchStatus(e)
            | Error::CreateClient(e)
            | Error::Lease(e)
            | Error::HashKey { source: e, .. } => Some(e),
            _ => None,
        }
    }

    /// The child kind a failed write of `apply_children` concerns.
    fn child_kind(&self) -> Option<&str> {
        match self {
            Error::ApplyConfigMap(_) => Some("ConfigMap"),
            Error::GetChild(kind, _) => Some(kind.as_str()),
            Error::GetDeployment(_) | Error::ApplyDeployment(_) => Some("Deployment"),
            Error::SetScale(_) => Some("ScalableApi scale subresource"),
            Error::ApplyService(_) => Some("Service"),
            Error::ApplyHpa(_) | Error::DeleteHpa(_) => Some("HorizontalPodAutoscaler"),
            Error::ApplyPdb(_) | Error::DeletePdb(_) => Some("PodDisruptionBudget"),
            Error::ApplyIngress(_) => Some("Ingress"),
            Error::ApplyHttpRoute(_) => Some("HTTPRoute"),
            Error::ApplyPodMonitor(_) => Some("PodMonitor"),
            _ => None,
        }
    }

    /// When the API server refused a child for good (4xx other than 409/429: invalid,
    /// forbidden), a message naming the child and quoting the server, for status. Retrying
    /// cannot help until someone changes the spec or the RBAC, so the user must see it.
    pub fn child_rejection(&self) -> Option<String> {
        let kind = self.child_kind()?;
        let Some(kube::Error::Api(status)) = self.kube_error() else {
            return None;
        };
        if self.class() != ErrorClass::Permanent {
            return None;
        }
        let reason = if status.reason.is_empty() {
            String::new()
        } else {
            format!(" {}", status.reason)
        };
        Some(format!(
            "the API server rejected the {kind} ({}{reason}): {}",
            status.code, status.message
        ))
    }

    pub fn class(&self) -> ErrorClass {
        match self.kube_error() {
            Some(kube::Error::Api(status)) => match status.code {
                409 => ErrorClass::Conflict,
                429 | 500..=599 => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
            Some(_) => ErrorClass::Transient,
            None => match self {
                Error::MissingNamespace => ErrorClass::Permanent,
                _ => ErrorClass::Transient,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Status::failure("boom", "Reason").with_code(code).boxed())
    }

    #[test]
    fn a_conflict_is_retried_soon() {
        assert_eq!(
            Error::ApplyDeployment(api_error(409)).class(),
            ErrorClass::Conflict
        );
    }

    #[test]
    fn server_errors_and_throttling_are_transient() {
        assert_eq!(
            Error::ApplyService(api_error(503)).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            Error::ApplyService(api_error(429)).class(),
            ErrorClass::Transient
        );
    }

    #[test]
    fn forbidden_is_permanent() {
        assert_eq!(
            Error::PatchStatus(api_error(403)).class(),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn an_invalid_child_is_a_rejection_naming_the_kind_and_the_message() {
        let e = Error::ApplyHpa(kube::Error::Api(
            Status::failure("spec.behavior: Invalid value", "Invalid")
                .with_code(422)
                .boxed(),
        ));
        assert_eq!(
            e.child_rejection().as_deref(),
            Some(
                "the API server rejected the HorizontalPodAutoscaler (422 Invalid): \
                 spec.behavior: Invalid value"
            )
        );
        assert!(
            Error::ApplyDeployment(api_error(403))
                .child_rejection()
                .is_some_and(|m| m.contains("Deployment (403 Reason): boom"))
        );
    }

    #[test]
    fn transient_errors_and_non_child_errors_are_no_rejection() {
        for code in [409, 429, 500, 503] {
            assert_eq!(
                Error::ApplyDeployment(api_error(code)).child_rejection(),
                None
            );
        }
        assert_eq!(Error::PatchStatus(api_error(422)).child_rejection(), None);
        assert_eq!(Error::GetSecret(api_error(403)).child_rejection(), None);
    }

    #[test]
    fn metric_labels_do_not_carry_the_error_text() {
        assert_eq!(Error::ApplyHpa(api_error(500)).metric_label(), "apply_hpa");
    }
}
