//! A kubeconfig that reaches the test cluster with a bearer token instead of the admin
//! certificate; shared by the controller tests and the scale-run example.

use std::path::Path;

use anyhow::Context as _;
use kube::config::{AuthInfo, Kubeconfig};

/// Writes to `out` the admin kubeconfig at `admin` with every user's credentials replaced
/// by `token`, so the API server authorises each request with that identity's RBAC.
pub fn write_token_kubeconfig(admin: &Path, token: &str, out: &Path) -> anyhow::Result<()> {
    let mut kubeconfig = Kubeconfig::read_from(admin)?;
    for named in &mut kubeconfig.auth_infos {
        named.auth_info = Some(AuthInfo {
            token: Some(token.to_owned().into()),
            ..AuthInfo::default()
        });
    }
    let json = serde_json::to_string_pretty(&kubeconfig)?;
    std::fs::write(out, json).with_context(|| format!("write {}", out.display()))
}
