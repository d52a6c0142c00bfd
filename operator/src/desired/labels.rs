//! The one place that knows the `app.kubernetes.io/*` labels of every child.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::crd::ScalableApi;

pub const NAME: &str = "app.kubernetes.io/name";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const PART_OF: &str = "app.kubernetes.io/part-of";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

pub const APP_NAME: &str = "api-server";
pub const MANAGER: &str = "scalable-api-operator";

/// Labels on every child and on the pods.
pub fn common(sapi: &ScalableApi) -> BTreeMap<String, String> {
    let mut labels = selector(sapi);
    labels.insert(COMPONENT.into(), "api".into());
    labels.insert(PART_OF.into(), "scalable-api".into());
    labels.insert(MANAGED_BY.into(), MANAGER.into());
    labels
}

/// Pod selector: name + instance only, because selectors are immutable on Deployments and
/// must never change when other labels do.
pub fn selector(sapi: &ScalableApi) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_owned(), APP_NAME.to_owned()),
        (INSTANCE.to_owned(), sapi.name_any()),
    ])
}
