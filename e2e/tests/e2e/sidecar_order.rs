//! (3) The Redis cache is a native sidecar: the kubelet starts it (and waits for its startup
//! probe) before the API container, and stops it only after the API container has exited, so
//! the API never runs without its cache, not even during its preStop sleep and drain.
//!
//! Every status of the pod the API server records is watched, from before the pod exists
//! until it is gone, and each one is checked: a sidecar started in parallel (a plain second
//! container) would show the API running while Redis's startup probe has not passed yet, and
//! Redis exited while the API is still in its 5 s preStop sleep.

use anyhow::{Context as _, ensure};
use e2e::TestEnv;
use e2e::children::{create_ready, live_pods};
use e2e::objects::scalable_api;
use e2e::postgres::Database;
use e2e::wait::SHORT_TIMEOUT;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::DeleteParams;
use kube::runtime::watcher::{self, Event};
use operator::desired::deployment::API_CONTAINER;
use operator::desired::redis::CONTAINER as CACHE_CONTAINER;
use serde_json::json;
use tokio::sync::mpsc;

#[tokio::test]
async fn the_cache_sidecar_starts_before_and_stops_after_the_api() -> anyhow::Result<()> {
    let Some(env) = TestEnv::setup("sidecar-order").await? else {
        return Ok(());
    };
    let db = Database::provision(&env).await?;

    // Every version of every pod in the namespace, in the order the API server wrote them.
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<(Pod, bool)>();
    let pods = env.api::<Pod>();
    let recorder = tokio::spawn(async move {
        let mut events = watcher::watcher(pods, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let sent = match event {
                Ok(Event::Apply(pod) | Event::InitApply(pod)) => seen_tx.send((pod, false)),
                Ok(Event::Delete(pod)) => seen_tx.send((pod, true)),
                _ => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
    });

    let sapi = create_ready(&env, &scalable_api("ordered", &db, json!({"replicas": 1}))?).await?;
    let deployment = env.api().get(&sapi.name_any()).await?;
    let pod = live_pods(&env, &deployment)
        .await?
        .pop()
        .context("no live pod")?;
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == CACHE_CONTAINER)
        .context("the cache is not an init container")?;
    assert_eq!(
        sidecar.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar"
    );

    // Start: in no recorded status does the API run before Redis has started.
    let mut history = drain(&mut seen, &pod.name_any());
    ensure!(
        history.len() >= 2,
        "only {} versions of {} were recorded",
        history.len(),
        pod.name_any()
    );
    for (i, status) in history.iter().enumerate() {
        if running(status.api.as_ref()).is_some() {
            ensure!(
                status.cache.as_ref().and_then(|c| c.started) == Some(true),
                "status {i}: the API runs while the cache has not started: {status:#?}"
            );
        }
    }
    let now = Observed::of(&pod);
    let cache_start = running(now.cache.as_ref()).context("cache not running")?;
    let api_start = running(now.api.as_ref()).context("api not running")?;
    ensure!(
        cache_start <= api_start,
        "cache started at {}, after the API at {}",
        cache_start.0,
        api_start.0
    );

    // Stop: delete the pod with its own grace period and follow it until it is gone.
    env.api::<Pod>()
        .delete(&pod.name_any(), &DeleteParams::default())
        .await?;
    let gone = tokio::time::timeout(SHORT_TIMEOUT, async {
        while let Some((version, deleted)) = seen.recv().await {
            if version.name_any() == pod.name_any() {
                history.push(Observed::of(&version));
                if deleted {
                    return true;
                }
            }
        }
        false
    })
    .await;
    recorder.abort();
    ensure!(
        gone == Ok(true),
        "the watch did not deliver the deletion of {} within {SHORT_TIMEOUT:?}",
        pod.name_any()
    );

    for (i, status) in history.iter().enumerate() {
        if finished(status.cache.as_ref()).is_some() {
            ensure!(
                finished(status.api.as_ref()).is_some(),
                "status {i}: the cache exited while the API still runs: {status:#?}"
            );
        }
    }
    let last = history
        .iter()
        .rev()
        .find(|s| finished(s.api.as_ref()).is_some())
        .context("no recorded status shows the API container exited")?;
    let api_end = finished(last.api.as_ref()).context("api not finished")?;
    if let Some(cache_end) = finished(last.cache.as_ref()) {
        ensure!(
            cache_end >= api_end,
            "cache exited at {}, before the API at {}",
            cache_end.0,
            api_end.0
        );
    }

    // The sequence, for the log: what each recorded version said of (cache, api).
    let states: Vec<String> = history
        .iter()
        .map(|s| format!("({}, {})", state(s.cache.as_ref()), state(s.api.as_ref())))
        .collect();
    println!(
        "{} versions of {}: {}",
        states.len(),
        pod.name_any(),
        states.join(" ")
    );

    env.pass();
    Ok(())
}

/// What one recorded version of the pod says about its two containers.
#[derive(Debug)]
struct Observed {
    cache: Option<ContainerStatus>,
    api: Option<ContainerStatus>,
}

impl Observed {
    fn of(pod: &Pod) -> Self {
        let status = pod.status.clone().unwrap_or_default();
        let find = |list: Option<Vec<ContainerStatus>>, name: &str| {
            list.into_iter().flatten().find(|c| c.name == name)
        };
        Self {
            cache: find(status.init_container_statuses, CACHE_CONTAINER),
            api: find(status.container_statuses, API_CONTAINER),
        }
    }
}

/// The versions of pod `name` received so far.
fn drain(seen: &mut mpsc::UnboundedReceiver<(Pod, bool)>, name: &str) -> Vec<Observed> {
    let mut out = Vec::new();
    while let Ok((pod, _)) = seen.try_recv() {
        if pod.name_any() == name {
            out.push(Observed::of(&pod));
        }
    }
    out
}

fn running(c: Option<&ContainerStatus>) -> Option<Time> {
    c?.state.as_ref()?.running.as_ref()?.started_at.clone()
}

fn finished(c: Option<&ContainerStatus>) -> Option<Time> {
    c?.state.as_ref()?.terminated.as_ref()?.finished_at.clone()
}

/// `waiting`, `started`/`running` (before and after the startup probe), `exited`, or `-`.
fn state(c: Option<&ContainerStatus>) -> &'static str {
    let Some(c) = c else { return "-" };
    match c.state.as_ref() {
        Some(s) if s.terminated.is_some() => "exited",
        Some(s) if s.running.is_some() && c.started == Some(true) => "started",
        Some(s) if s.running.is_some() => "running",
        _ => "waiting",
    }
}
