//! Restricted Pod Security Standard contexts, shared by every container and the pod.

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, SecurityContext,
};

/// Numeric non-root uid/gid (the distroless `nonroot` user); numeric so the kubelet can verify
/// `runAsNonRoot` without reading the image.
pub const RUN_AS_USER: i64 = 65532;

fn seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

pub fn pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        // emptyDir volumes become writable by the non-root user.
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(seccomp()),
        ..PodSecurityContext::default()
    }
}

pub fn container() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(seccomp()),
        ..SecurityContext::default()
    }
}
