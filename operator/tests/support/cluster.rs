//! The real control plane of `scripts/cluster.sh` (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok, metrics-server) as a test sees it.
//!
//! The cluster is started once per test run (`make test`, or `scripts/cluster.sh up`), and
//! found through `SCALABLE_TESTENV`, never through `KUBECONFIG`: these tests create and
//! delete namespaces, and must not run against whatever cluster a developer's kubeconfig
//! points at. Each test gets a namespace of its own and, usually, its own controller
//! restricted to that namespace, so tests run in parallel without seeing each other.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, Config, Resource, ResourceExt};
use operator::controller::{self, Settings};
use operator::crd::ScalableApi;
use operator::desired::HashKey;
use operator::metrics::Metrics;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

pub use super::sapi_fixture::*;
use super::token_kubeconfig::write_token_kubeconfig;

/// Longest wait for anything a test waits for on the real cluster.
pub const TIMEOUT: Duration = Duration::from_secs(90);
/// `--default-image` of the test controllers; kwok runs no container, so it is never pulled.
pub const DEFAULT_TEST_IMAGE: &str = "registry.test/api-server:1.0.0";
/// Label on every namespace a test makes, so a leftover one is easy to find.
pub const TEST_NAMESPACE_LABEL: &str = "scalable.dev/test";

/// Where `scripts/cluster.sh up` left the cluster.
pub struct TestEnv {
    pub dir: PathBuf,
    /// The folder with kubectl (and the Kubernetes programs) of the cluster's version.
    pub bin: PathBuf,
}

impl TestEnv {
    pub fn get() -> &'static TestEnv {
        static ENV: OnceLock<TestEnv> = OnceLock::new();
        ENV.get_or_init(|| {
            let dir = std::env::var_os("SCALABLE_TESTENV").unwrap_or_else(|| {
                panic!(
                    "SCALABLE_TESTENV is not set: the controller tests run on the real control \
                     plane. Run `make test`, or `scripts/cluster.sh up` and then \
                     `eval \"$(scripts/cluster.sh env)\"` before `cargo nextest run`."
                )
            });
            let dir = PathBuf::from(dir);
            let bin = std::env::var_os("SCALABLE_TESTENV_BIN")
                .map(PathBuf::from)
                .expect("SCALABLE_TESTENV_BIN is set by `scripts/cluster.sh env`");
            assert!(
                dir.join("admin.kubeconfig").is_file(),
                "{} has no admin.kubeconfig: is the cluster up?",
                dir.display()
            );
            let env = TestEnv { dir, bin };
            env.install_crds();
            env
        })
    }

    /// `kubectl apply --server-side -f crds/`, then wait until the CRD is served. Each test
    /// process does it once; applying the same content again changes nothing.
    fn install_crds(&self) {
        let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");
        let applied = self.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crds]);
        assert!(
            applied.status.success(),
            "the API server refused crds/: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
        let established = self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/scalableapis.scalable.dev",
            "--timeout=60s",
        ]);
        assert!(
            established.status.success(),
            "the CRD was not established: {}",
            String::from_utf8_lossy(&established.stderr)
        );
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// A client with the admin (system:masters) identity.
    pub async fn admin_client(&self) -> Client {
        client_from_kubeconfig(&self.kubeconfig()).await
    }

    /// `kubectl ARGS` as admin; the output, whatever the exit status.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .args(args)
            .output()
            .expect("run kubectl")
    }
}

pub async fn client_from_kubeconfig(path: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("read kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    // Parallel tests share one API server; the default 5 s read timeout is too short for a
    // watch on a loaded 2-core machine, and kube re-establishes watches anyway.
    config.read_timeout = Some(Duration::from_secs(300));
    Client::try_from(config).expect("client")
}

/// A namespaced kind the waits can watch.
pub trait Kind:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + 'static
{
}

impl<K> Kind for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + 'static
{
}

/// Panics with `what` if `fut` does not finish within `TIMEOUT`.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {TIMEOUT:?} waiting for {what}"),
    }
}

/// One test's namespace on the shared cluster, deleted when the test ends.
pub struct Cluster {
    pub client: Client,
    pub ns: String,
    controller: Option<JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(task) = self.controller.take() {
            task.abort();
        }
        // Deleting the namespace is the cleanup; kube-controller-manager finishes it. A
        // plain thread with its own runtime, since Drop cannot await.
        let ns = self.ns.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let client = TestEnv::get().admin_client().await;
                let _ = Api::<Namespace>::all(client)
                    .delete(&ns, &DeleteParams::background())
                    .await;
            });
        })
        .join();
    }
}

impl Cluster {
    /// A fresh namespace `<prefix>-<random>` whose default ServiceAccount exists.
    pub async fn new(prefix: &str) -> Self {
        Self::with_namespace_labels(prefix, &[]).await
    }

    /// As `new`, with extra labels on the namespace (for example Pod Security levels).
    pub async fn with_namespace_labels(prefix: &str, labels: &[(&str, &str)]) -> Self {
        let client = TestEnv::get().admin_client().await;
        let ns = format!("{prefix}-{:08x}", rand::random::<u32>());
        let mut all_labels = std::collections::BTreeMap::from([(
            TEST_NAMESPACE_LABEL.to_owned(),
            "true".to_owned(),
        )]);
        all_labels.extend(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                labels: Some(all_labels),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create the test namespace");
        let cluster = Self {
            client,
            ns,
            controller: None,
        };
        // Pods are refused until the ServiceAccount controller made `default`.
        cluster
            .wait_for::<ServiceAccount>("default", "the default ServiceAccount", |_| true)
            .await;
        cluster
    }

    /// A fresh namespace with the real controller running in this process, watching it.
    pub async fn with_operator(prefix: &str) -> Self {
        let mut cluster = Self::new(prefix).await;
        cluster.start_operator().await;
        cluster
    }

    /// Starts the controller restricted to this namespace (as `--namespace` does), with the
    /// optional APIs the cluster serves (as at the operator's start).
    pub async fn start_operator(&mut self) {
        let apis = controller::optional_apis(&self.client).await;
        let metrics = Metrics::register(&mut Registry::default());
        let settings = Settings {
            namespaces: vec![self.ns.clone()],
            pod_defaults: operator::desired::PodDefaults {
                api_image: DEFAULT_TEST_IMAGE.to_owned(),
                ..operator::desired::PodDefaults::default()
            },
            apis,
            instance: "test-operator".to_owned(),
            resync_interval: controller::RESYNC_INTERVAL,
            hash_key: HashKey::generate(),
        };
        let (ctrl, ctx) = controller::build(self.client.clone(), settings, metrics);
        self.controller = Some(tokio::spawn(controller::drive(ctrl, ctx)));
    }

    /// Stops the in-process controller; a later `start_operator` begins with empty caches
    /// and records, as a restarted operator pod does.
    pub async fn stop_operator(&mut self) {
        if let Some(handle) = self.controller.take() {
            handle.abort();
            let _ = handle.await;
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn get<K: Kind>(&self, name: &str) -> Option<K> {
        self.api::<K>().get_opt(name).await.expect("GET")
    }

    /// Waits (on a watch) until `name` exists and `check` accepts it.
    pub async fn wait_for<K: Kind>(&self, name: &str, what: &str, check: impl Fn(&K) -> bool) -> K {
        let cond = move |obj: Option<&K>| obj.is_some_and(&check);
        within(what, await_condition(self.api::<K>(), name, cond))
            .await
            .expect("watch")
            .expect("the object exists")
    }

    /// Waits (on a watch) until `name` is gone.
    pub async fn wait_gone<K: Kind>(&self, name: &str) {
        let what = format!("{} {name} to be deleted", K::kind(&()));
        within(
            &what,
            await_condition(self.api::<K>(), name, |o: Option<&K>| o.is_none()),
        )
        .await
        .expect("watch");
    }

    /// Waits until the ScalableApi's condition `type_` has this status and reason.
    pub async fn wait_for_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> ScalableApi {
        let what = format!("{name}: {type_}={status} ({reason})");
        self.wait_for::<ScalableApi>(name, &what, |s| {
            condition(s, type_).is_some_and(|(st, re)| st == status && re == reason)
        })
        .await
    }

    /// Events (events.k8s.io) regarding `name` with `reason`.
    pub async fn events(&self, name: &str, reason: &str) -> Vec<Event> {
        let events = self
            .api::<Event>()
            .list(&ListParams::default())
            .await
            .expect("list Events");
        events
            .items
            .into_iter()
            .filter(|e| regards(e, name, reason))
            .collect()
    }

    /// Waits until an Event regarding `name` with `reason` exists; returns it.
    pub async fn wait_for_event(&self, name: &str, reason: &str) -> Event {
        let what = format!("an Event {reason} regarding {name}");
        within(&what, async {
            let mut events = kube::runtime::watcher(
                self.api::<Event>(),
                kube::runtime::watcher::Config::default(),
            )
            .boxed();
            use futures::{StreamExt, TryStreamExt};
            while let Some(ev) = events.try_next().await.expect("watch Events") {
                use kube::runtime::watcher::Event as W;
                match ev {
                    W::Apply(e) | W::InitApply(e) if regards(&e, name, reason) => return e,
                    _ => {}
                }
            }
            panic!("the Event watch ended")
        })
        .await
    }

    /// `kubectl -n <ns> ARGS` as admin; panics with its stderr if it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend_from_slice(args);
        let out = TestEnv::get().kubectl(&all);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            all.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The condition `type_` of a ScalableApi as (status, reason).
pub fn condition(sapi: &ScalableApi, type_: &str) -> Option<(String, String)> {
    let c = sapi
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

/// The message of the ScalableApi's condition `type_` (empty when it has none).
pub fn condition_message(sapi: &ScalableApi, type_: &str) -> String {
    sapi.status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// True when `e` regards the ScalableApi `name` and has `reason` (controllers publish
/// Events of the same reasons about the Deployment and ReplicaSets of that name).
fn regards(e: &Event, name: &str, reason: &str) -> bool {
    e.regarding.as_ref().is_some_and(|r| {
        r.name.as_deref() == Some(name) && r.kind.as_deref() == Some("ScalableApi")
    }) && e.reason.as_deref() == Some(reason)
}

/// Names of the objects in a list, for assertion messages.
pub fn names<K: ResourceExt>(items: &[K]) -> Vec<String> {
    items.iter().map(ResourceExt::name_any).collect()
}

impl SapiFixture {
    /// Creates the ScalableApi in the test's namespace.
    pub async fn create(self, c: &Cluster) -> ScalableApi {
        c.api::<ScalableApi>()
            .create(&PostParams::default(), &self.in_namespace(&c.ns).build())
            .await
            .expect("create ScalableApi")
    }
}

/// Creates the Secret a `scalable_api(name)` fixture references.
pub async fn create_db_secret(c: &Cluster, sapi_name: &str) -> Secret {
    c.api::<Secret>()
        .create(
            &PostParams::default(),
            &secret_in(&c.ns, &format!("{sapi_name}-db"), "password", "s3cret"),
        )
        .await
        .expect("create Secret")
}

/// Merge-patches the ScalableApi's spec, as `kubectl patch --type merge` would.
pub async fn patch_spec(c: &Cluster, name: &str, spec: serde_json::Value) -> ScalableApi {
    c.api::<ScalableApi>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": spec})),
        )
        .await
        .expect("patch ScalableApi spec")
}

/// A ServiceAccount `name` with every right inside the test's namespace (cluster-admin bound
/// by a RoleBinding), and a kubeconfig with its token: an operator process running as it
/// shows up in the audit log under its own name.
pub async fn namespace_admin(c: &Cluster, name: &str) -> PathBuf {
    use k8s_openapi::api::rbac::v1::RoleBinding;
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("sa");
    c.api::<ServiceAccount>()
        .create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": c.ns}],
    }))
    .expect("binding");
    c.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .expect("create RoleBinding");
    let token = service_account_token(&c.ns, name);
    token_kubeconfig(&token, &format!("{}-{name}.kubeconfig", c.ns))
}

/// A bearer token for ServiceAccount `name` in `ns` (TokenRequest, one hour).
pub fn service_account_token(ns: &str, name: &str) -> String {
    let out = TestEnv::get().kubectl(&["-n", ns, "create", "token", name, "--duration=1h"]);
    assert!(
        out.status.success(),
        "kubectl create token {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A kubeconfig file in the cluster's folder that reaches it with `token`.
pub fn token_kubeconfig(token: &str, file_name: &str) -> PathBuf {
    let env = TestEnv::get();
    let path = env.dir.join(file_name);
    write_token_kubeconfig(&env.kubeconfig(), token, &path).expect("token kubeconfig");
    path
}

/// The operator binary running as its own process, killed (SIGKILL) when dropped.
pub struct OperatorProcess {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl OperatorProcess {
    /// `scalable-api-operator run` with `kubeconfig`, watching `ns`, its Lease in `ns`.
    pub fn start(kubeconfig: &Path, ns: &str, pod_name: &str) -> Self {
        Self::start_with(kubeconfig, ns, pod_name, &[])
    }

    /// As `start`, with `extra` arguments for `run`.
    pub fn start_with(kubeconfig: &Path, ns: &str, pod_name: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--namespace", ns];
        args.extend_from_slice(extra);
        Self::start_in(kubeconfig, ns, pod_name, &args)
    }

    /// `scalable-api-operator run` with its Lease and hash key in `operator_ns`, watching
    /// what `args` say (all namespaces without `--namespace` or `--namespaces`).
    pub fn start_in(kubeconfig: &Path, operator_ns: &str, pod_name: &str, args: &[&str]) -> Self {
        let http_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let log = TestEnv::get()
            .dir
            .join("logs")
            .join(format!("operator-{operator_ns}-{pod_name}.log"));
        let log_file = std::fs::File::create(&log).expect("operator log");
        let child = Command::new(env!("CARGO_BIN_EXE_scalable-api-operator"))
            .args(["run", "--lease-namespace", operator_ns])
            .args(["--pod-name", pod_name, "--log-format", "text"])
            .args(["--default-image", DEFAULT_TEST_IMAGE])
            .arg(format!("--http-addr={http_addr}"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("start the operator");
        Self { child, log }
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no graceful release of the Lease.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
