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

/// `uid`: the numeric user, group and fsGroup; `None` sets none of them, for platforms that
/// assign them (OpenShift's `restricted-v2` refuses ids outside the namespace's range). The
/// images' non-root default user and world-writable emptyDirs work either way.
pub fn pod(uid: Option<i64>) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: uid,
        run_as_group: uid,
        // emptyDir volumes become writable by the non-root user.
        fs_group: uid,
        seccomp_profile: Some(seccomp()),
        ..PodSecurityContext::default()
    }
}

pub fn container(uid: Option<i64>) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: uid,
        run_as_group: uid,
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
