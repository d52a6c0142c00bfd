//! The cluster connection and the per-test namespace.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource};
use serde_json::json;

/// Path of the kind cluster's kubeconfig; the tests are skipped when it is unset.
pub const KUBECONFIG_ENV: &str = "E2E_KUBECONFIG";
/// Namespace of the operator release (`e2e/scripts/run.sh` installs it there).
pub const OPERATOR_NAMESPACE_ENV: &str = "E2E_OPERATOR_NAMESPACE";
/// Namespace of `examples/postgres-dev.yaml`.
pub const POSTGRES_NAMESPACE_ENV: &str = "E2E_POSTGRES_NAMESPACE";
/// Name of the operator's Helm release (its Lease and metrics Service are named after it).
pub const OPERATOR_RELEASE_ENV: &str = "E2E_OPERATOR_RELEASE";
/// Set to keep every test namespace, also after a pass (debugging).
pub const KEEP_NAMESPACES_ENV: &str = "E2E_KEEP_NAMESPACES";

/// Label put on every test namespace, so `setup-cluster.sh export-logs` can find them.
pub const TEST_LABEL: &str = "e2e.scalable.dev/test";

/// Where the cluster-wide pieces live.
#[derive(Debug, Clone)]
pub struct Settings {
    pub operator_namespace: String,
    pub operator_release: String,
    pub postgres_namespace: String,
}

impl Settings {
    fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Self {
            operator_namespace: var(OPERATOR_NAMESPACE_ENV, "scalable-system"),
            operator_release: var(OPERATOR_RELEASE_ENV, "scalable-api-operator"),
            postgres_namespace: var(POSTGRES_NAMESPACE_ENV, "e2e-postgres"),
        }
    }
}

/// The kubeconfig path from `E2E_KUBECONFIG`, if set and non-empty.
pub fn kubeconfig_path() -> Option<PathBuf> {
    std::env::var_os(KUBECONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A client for the cluster in `path`, ignoring `~/.kube/config` and `KUBECONFIG`, so the
/// suite can never run against a cluster it was not given explicitly.
pub async fn client_from(path: &Path) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("building a client config from the kubeconfig")?;
    Client::try_from(config).context("creating the Kubernetes client")
}

/// One test's view of the cluster: a client and a fresh namespace.
pub struct TestEnv {
    pub client: Client,
    pub namespace: String,
    pub settings: Settings,
    kubeconfig: PathBuf,
    passed: bool,
}

impl TestEnv {
    /// Connects and creates a namespace `e2e-<test>-<random>`, or returns `None` after printing
    /// why the test is skipped when `E2E_KUBECONFIG` is unset.
    pub async fn setup(test: &str) -> anyhow::Result<Option<Self>> {
        let Some(kubeconfig) = kubeconfig_path() else {
            // Straight to the process's stderr, past libtest's output capture, so `cargo test`
            // shows the skip (nextest shows it through .config/nextest.toml).
            let _ = writeln!(
                std::io::stderr(),
                "skipped: {KUBECONFIG_ENV} not set (test {test} needs a cluster: make e2e)"
            );
            return Ok(None);
        };
        let client = client_from(&kubeconfig).await?;
        let namespace = namespace_name(test);
        // The restricted Pod Security Standard is enforced, so every pod the operator creates
        // is proven to run under it.
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {
                "name": namespace,
                "labels": {
                    TEST_LABEL: test,
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                }
            }
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {namespace}"))?;
        println!("test {test}: namespace {namespace}");
        Ok(Some(Self {
            client,
            namespace,
            settings: Settings::from_env(),
            kubeconfig,
            passed: false,
        }))
    }

    /// A namespaced API in the test namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Marks the test as passed: its namespace is deleted. A test that returns early with an
    /// error or panics keeps its namespace for `setup-cluster.sh export-logs`.
    pub fn pass(mut self) {
        self.passed = true;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if !self.passed {
            eprintln!(
                "test failed: keeping namespace {} for the log export",
                self.namespace
            );
            return;
        }
        if std::env::var_os(KEEP_NAMESPACES_ENV).is_some() {
            return;
        }
        // Drop cannot await, and the test's runtime may be shutting down: delete from a fresh
        // runtime on a helper thread with a fresh client.
        let kubeconfig = self.kubeconfig.clone();
        let namespace = self.namespace.clone();
        let joined = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = client_from(&kubeconfig).await?;
                Api::<Namespace>::all(client)
                    .delete(&namespace, &DeleteParams::background())
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: deleting namespace {}: {e:#}", self.namespace),
            Err(_) => eprintln!("warning: namespace cleanup thread panicked"),
        }
    }
}

/// `e2e-<test>-<8 hex>`, a valid DNS label of at most 63 characters.
fn namespace_name(test: &str) -> String {
    let slug: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!(
        "e2e-{}-{:08x}",
        slug.trim_matches('-'),
        rand::random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::namespace_name;

    #[test]
    fn namespace_names_are_dns_labels() {
        let name = namespace_name("Rotating_the_password_secret_rolls_the_pods_and_more_words");
        assert!(name.len() <= 63, "{name}");
        assert!(name.starts_with("e2e-rotating-the-password"), "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{name}"
        );
        assert_ne!(namespace_name("x"), namespace_name("x"));
    }
}
