//! Waiting on conditions with deadlines: `await_condition` under `tokio::time::timeout`.

use std::fmt::Debug;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::wait::{Condition, await_condition, conditions};
use kube::{Api, Resource, ResourceExt};
use operator::crd::ScalableApi;
use serde::de::DeserializeOwned;

/// Image pulls and Postgres start-up on a fresh kind node take a while; rollouts are quicker.
pub const READY_TIMEOUT: Duration = Duration::from_secs(300);
pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(240);
pub const SHORT_TIMEOUT: Duration = Duration::from_secs(90);

/// Waits until `cond` holds for the object `name`, or fails after `timeout` with the object's
/// last state in the error, so a timeout explains itself.
pub async fn until<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: impl Condition<K>,
) -> anyhow::Result<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + serde::Serialize + Send + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(obj))) => Ok(obj),
        Ok(Ok(None)) => bail!("{name} was deleted while waiting for: {what}"),
        Ok(Err(e)) => Err(e).with_context(|| format!("watching {name} for: {what}")),
        Err(_) => {
            let last = api
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .map(|o| serde_json::to_string_pretty(&o).unwrap_or_default())
                .unwrap_or_else(|| "<absent>".to_owned());
            bail!("timed out after {timeout:?} waiting for {name}: {what}\nlast state: {last}")
        }
    }
}

/// Waits until the object with this uid is gone (deleted, or replaced by a new uid).
pub async fn deleted<K>(api: &Api<K>, obj: &K, timeout: Duration) -> anyhow::Result<()>
where
    K: Resource + Clone + Debug + DeserializeOwned + serde::Serialize + Send + 'static,
    K::DynamicType: Default,
{
    let name = obj.name_any();
    let uid = obj.uid().context("object without uid")?;
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let gone = await_condition(api.clone(), &name, conditions::is_deleted(&uid));
    match tokio::time::timeout(timeout, gone).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e).with_context(|| format!("watching {kind} {name} for deletion")),
        Err(_) => bail!("timed out after {timeout:?} waiting for {kind} {name} to be deleted"),
    }
}

/// The ScalableApi's status describes its current generation and says Ready=True.
pub fn sapi_ready(obj: Option<&ScalableApi>) -> bool {
    let Some(obj) = obj else { return false };
    let Some(status) = &obj.status else {
        return false;
    };
    status.observed_generation == obj.metadata.generation
        && condition_status(obj, "Ready") == Some("True")
}

/// The status of the condition `type_` of a ScalableApi, if present.
pub fn condition_status<'a>(obj: &'a ScalableApi, type_: &str) -> Option<&'a str> {
    obj.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// The Deployment controller has seen the latest spec and every pod runs the latest template
/// and is available (no old ReplicaSet pods left).
pub fn rolled_out(obj: Option<&Deployment>) -> bool {
    let Some(d) = obj else { return false };
    let Some(status) = &d.status else {
        return false;
    };
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    status.observed_generation >= d.metadata.generation
        && status.updated_replicas.unwrap_or(0) == want
        && status.replicas.unwrap_or(0) == want
        && status.available_replicas.unwrap_or(0) == want
        && status.ready_replicas.unwrap_or(0) == want
}

/// The Deployment has rolled out with exactly `n` ready pods.
pub fn rolled_out_with(n: i32) -> impl Fn(Option<&Deployment>) -> bool {
    move |d| {
        rolled_out(d)
            && d.and_then(|d| d.status.as_ref())
                .and_then(|s| s.ready_replicas)
                == Some(n)
    }
}
