//! `crd` and `render`: YAML out, no cluster.
//!
//! `render` validates each ScalableApi document like `kubectl apply` would (schema, CEL), runs
//! `desired()` and prints the children as multi-document YAML with sorted keys, so the output
//! is stable and diffable. Referenced Secrets are assumed to exist; without their data the
//! config-hash annotation covers the ConfigMap only.

use std::io::Read;

use kube::CustomResourceExt;
use serde_json::Value;

use crate::cli::RenderArgs;
use crate::crd::ScalableApi;
use crate::desired::{Children, Inputs, SpecError, desired};
use crate::validate::{Invalid, validate};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid YAML: {message}")]
    Parse { path: String, message: String },
    #[error("{path} holds no ScalableApi (found {found})")]
    Empty { path: String, found: String },
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("ScalableApi {name:?} cannot be rendered: {source}")]
    Spec {
        name: String,
        #[source]
        source: SpecError,
    },
    #[error("cannot serialize to YAML: {0}")]
    Yaml(String),
}

/// The CRD as YAML, exactly what `crds/scalableapis.scalable.dev.yaml` holds.
pub fn crd_yaml() -> Result<String, RenderError> {
    to_yaml(&[sorted(
        serde_json::to_value(ScalableApi::crd()).map_err(yaml_err)?,
    )])
}

/// `render -f FILE` (`-` = stdin).
pub fn render_file(args: &RenderArgs) -> Result<String, RenderError> {
    let path = args.file.display().to_string();
    let read_err = |source| RenderError::Read {
        path: path.clone(),
        source,
    };
    let input = if path == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(read_err)?;
        s
    } else {
        std::fs::read_to_string(&args.file).map_err(read_err)?
    };
    let inputs = Inputs {
        pod: args.pod.pod_defaults(),
        secret_hash: None,
        jwks_hash: None,
        events_hash: None,
    };
    render(&input, &path, &inputs)
}

/// Render every ScalableApi document of `input`; `origin` names the input in messages.
pub fn render(input: &str, origin: &str, inputs: &Inputs) -> Result<String, RenderError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(input).map_err(|e| RenderError::Parse {
        path: origin.to_owned(),
        message: e.to_string(),
    })?;
    // Other kinds (a Secret next to the ScalableApi, say) are not ours to render.
    let ours: Vec<&Value> = docs
        .iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("ScalableApi"))
        .collect();
    if ours.is_empty() {
        let found: Vec<String> = docs.iter().map(describe).collect();
        return Err(RenderError::Empty {
            path: origin.to_owned(),
            found: if found.is_empty() {
                "nothing".to_owned()
            } else {
                found.join(", ")
            },
        });
    }
    let mut out = Vec::new();
    for doc in ours {
        let sapi = validate(doc)?;
        let children = desired(&sapi, inputs).map_err(|source| RenderError::Spec {
            name: kube::ResourceExt::name_any(&sapi),
            source,
        })?;
        out.extend(documents(&children)?);
    }
    to_yaml(&out)
}

/// `apps/v1 Deployment` for messages.
fn describe(doc: &Value) -> String {
    let field = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
    format!("{} {}", field("apiVersion"), field("kind"))
}

/// Children in apply order: config before the pods that read it, the HPA after its target.
fn documents(c: &Children) -> Result<Vec<Value>, RenderError> {
    let mut docs = vec![
        serde_json::to_value(&c.config_map),
        serde_json::to_value(&c.deployment),
        serde_json::to_value(&c.service),
    ];
    docs.extend(c.hpa.as_ref().map(serde_json::to_value));
    docs.extend(c.pdb.as_ref().map(serde_json::to_value));
    docs.extend(c.ingress.as_ref().map(serde_json::to_value));
    docs.extend(c.http_route.as_ref().map(serde_json::to_value));
    docs.extend(c.pod_monitor.as_ref().map(serde_json::to_value));
    docs.into_iter()
        .map(|d| d.map(sorted).map_err(yaml_err))
        .collect()
}

/// Sort keys at every level, whatever serde_json's map feature.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn to_yaml(docs: &[Value]) -> Result<String, RenderError> {
    serde_saphyr::to_string_multiple(docs).map_err(yaml_err)
}

fn yaml_err(e: impl std::fmt::Display) -> RenderError {
    RenderError::Yaml(e.to_string())
}
