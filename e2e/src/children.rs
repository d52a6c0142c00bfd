//! The objects one ScalableApi becomes, fetched together, and ownership checks.

use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, PostParams};
use kube::{Resource, ResourceExt};
use operator::crd::ScalableApi;

use crate::TestEnv;
use crate::wait::{self, READY_TIMEOUT};

/// The children of one ScalableApi as they are now.
#[derive(Debug)]
pub struct Children {
    pub config: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub pdb: Option<PodDisruptionBudget>,
}

impl Children {
    /// Fetches `<name>-config` and the Deployment, Service, HPA and PDB `<name>`.
    pub async fn get(env: &TestEnv, name: &str) -> anyhow::Result<Self> {
        Ok(Self {
            config: env
                .api::<ConfigMap>()
                .get(&format!("{name}-config"))
                .await
                .context("ConfigMap <name>-config")?,
            deployment: env
                .api::<Deployment>()
                .get(name)
                .await
                .context("Deployment")?,
            service: env.api::<Service>().get(name).await.context("Service")?,
            hpa: env.api::<HorizontalPodAutoscaler>().get_opt(name).await?,
            pdb: env.api::<PodDisruptionBudget>().get_opt(name).await?,
        })
    }

    /// Every child carries a controller ownerReference to `owner`.
    pub fn assert_owned_by(&self, owner: &ScalableApi) -> anyhow::Result<()> {
        let uid = owner.uid().context("owner without uid")?;
        let mut metas = vec![
            ("ConfigMap", self.config.meta()),
            ("Deployment", self.deployment.meta()),
            ("Service", self.service.meta()),
        ];
        if let Some(hpa) = &self.hpa {
            metas.push(("HorizontalPodAutoscaler", hpa.meta()));
        }
        if let Some(pdb) = &self.pdb {
            metas.push(("PodDisruptionBudget", pdb.meta()));
        }
        for (kind, meta) in metas {
            let controller = meta
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true))
                .with_context(|| format!("{kind} has no controller ownerReference"))?;
            ensure!(
                controller.uid == uid && controller.kind == "ScalableApi",
                "{kind} is controlled by {} {}, not ScalableApi {uid}",
                controller.kind,
                controller.uid
            );
        }
        Ok(())
    }

    /// The pod-template annotations: they carry the config and Secret hash.
    pub fn template_annotations(&self) -> std::collections::BTreeMap<String, String> {
        template_annotations(&self.deployment)
    }
}

pub fn template_annotations(d: &Deployment) -> std::collections::BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default()
}

/// Running (not terminating) pods selected by the Deployment.
pub async fn live_pods(env: &TestEnv, deployment: &Deployment) -> anyhow::Result<Vec<Pod>> {
    let labels = deployment
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .context("Deployment without matchLabels")?;
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = env
        .api::<Pod>()
        .list(&ListParams::default().labels(&selector))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// Creates `api` in the test namespace and waits until it is Ready and its Deployment has
/// rolled out.
pub async fn create_ready(env: &TestEnv, api: &ScalableApi) -> anyhow::Result<ScalableApi> {
    let name = api.name_any();
    let sapis = env.api::<ScalableApi>();
    sapis
        .create(&PostParams::default(), api)
        .await
        .with_context(|| format!("creating ScalableApi {name}"))?;
    let ready = wait::until(&sapis, &name, "Ready=True", READY_TIMEOUT, wait::sapi_ready).await?;
    wait::until(
        &env.api::<Deployment>(),
        &name,
        "rolled out",
        READY_TIMEOUT,
        wait::rolled_out,
    )
    .await?;
    Ok(ready)
}
