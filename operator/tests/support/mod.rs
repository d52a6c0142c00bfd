//! Test support: the in-memory API server, fixtures and a harness that runs the real
//! controller against it.

pub mod fake;
mod fixtures;
mod sapi_fixture;

use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use kube::{Api, Client, Resource};
use operator::controller::{self, Settings};
use operator::desired::HashKey;
use operator::metrics::Metrics;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::task::JoinHandle;

pub use fake::FakeApiServer;
pub use fixtures::*;

/// Longest wait for any condition in a test.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How often conditions are re-checked.
const POLL: Duration = Duration::from_millis(10);
/// No request for this long means the controller has nothing left to do.
const QUIET: Duration = Duration::from_millis(500);

/// Polls `check` until it yields a value; fails the test after `TIMEOUT`.
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let waited = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(v) = check() {
                return v;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    match waited {
        Ok(v) => v,
        Err(_) => panic!("timed out after {TIMEOUT:?} waiting for {what}"),
    }
}

/// The real controller running against a fresh fake API server.
pub struct Harness {
    pub fake: FakeApiServer,
    pub client: Client,
    registry: Registry,
    task: JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_in(None).await
    }

    /// Starts the controller restricted to `namespace` (like `--namespace`).
    pub async fn start_in(namespace: Option<&str>) -> Self {
        let fake = FakeApiServer::new();
        let client = fake.client();
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let settings = Settings {
            namespaces: namespace.map(str::to_owned).into_iter().collect(),
            pod_defaults: operator::desired::PodDefaults {
                api_image: DEFAULT_TEST_IMAGE.to_owned(),
                ..operator::desired::PodDefaults::default()
            },
            // The fake serves no optional API, like a cluster without their CRDs.
            apis: controller::OptionalApis::default(),
            instance: "test-operator".to_owned(),
            resync_interval: controller::RESYNC_INTERVAL,
            hash_key: HashKey::generate(),
        };
        let (ctrl, ctx) = controller::build(client.clone(), settings, metrics);
        let task = tokio::spawn(controller::drive(ctrl, ctx));
        Self {
            fake,
            client,
            registry,
            task,
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    /// The stored object as JSON (`resource` like `apps/v1/deployments`), bypassing HTTP.
    pub fn object(&self, resource: &str, name: &str) -> Option<Value> {
        self.fake.object(resource, NS, name)
    }

    /// Waits until `resource/name` exists and `check` accepts it.
    pub async fn wait_for(
        &self,
        resource: &str,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(what, || self.object(resource, name).filter(|o| check(o))).await
    }

    /// Waits until the ScalableApi `name` has a status the controller wrote.
    pub async fn wait_for_status(&self, name: &str) -> Value {
        self.wait_for(SAPIS, name, "status", |o| {
            o.pointer("/status/observedGeneration").is_some()
        })
        .await
    }

    pub async fn wait_gone(&self, resource: &str, name: &str) {
        eventually(&format!("{resource}/{name} to be deleted"), || {
            self.object(resource, name).is_none().then_some(())
        })
        .await;
    }

    /// Waits until the controller stops talking to the API server for a while.
    pub async fn settle(&self) {
        let mut last = (self.fake.requests().len(), tokio::time::Instant::now());
        eventually("the controller to settle", || {
            let n = self.fake.requests().len();
            if n != last.0 {
                last = (n, tokio::time::Instant::now());
            }
            (last.1.elapsed() >= QUIET).then_some(())
        })
        .await;
    }

    /// Sum of `scalable_api_operator_<name>` samples whose labels contain `label`.
    pub fn metric(&self, name: &str, label: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encode metrics");
        let prefix = format!("scalable_api_operator_{name}");
        text.lines()
            .filter(|l| l.starts_with(&prefix) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    pub fn reconciliations(&self) -> u64 {
        self.metric("reconciliations_total", "")
    }
}
