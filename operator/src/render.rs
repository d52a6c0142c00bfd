//! `crd` and `render`: YAML out, no cluster.

use kube::CustomResourceExt;

use crate::cli::RenderArgs;
use crate::crd::ScalableApi;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot serialize to YAML: {0}")]
    Yaml(String),
}

/// The CRD as YAML, exactly what `crds/scalableapis.scalable.dev.yaml` holds.
pub fn crd_yaml() -> Result<String, RenderError> {
    to_yaml(&ScalableApi::crd())
}

pub fn render_file(_args: &RenderArgs) -> Result<String, RenderError> {
    Err(RenderError::Yaml("todo".into()))
}

fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, RenderError> {
    serde_saphyr::to_string(value).map_err(|e| RenderError::Yaml(e.to_string()))
}
