//! A Postgres role and database per test, in the shared dev Postgres
//! (`examples/postgres-dev.yaml`, installed by `e2e/scripts/run.sh`).
//!
//! psql runs inside the Postgres pod over its local socket (exec), so the tests need no
//! network path to the database and no client image.

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{AttachParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::AsyncReadExt as _;

use crate::TestEnv;
use crate::objects::{DB_SECRET, DB_SECRET_KEY};

/// The dev Postgres pod (StatefulSet `postgres`, ordinal 0) and its superuser.
const POSTGRES_POD: &str = "postgres-0";
const SUPERUSER: &str = "app";

/// Connection facts of a test's database.
#[derive(Debug, Clone)]
pub struct Database {
    pub host: String,
    pub name: String,
    pub user: String,
    pub password: String,
}

impl Database {
    /// Creates a role and a database named after the test namespace, and the Secret `db`
    /// (key `password`) in the test namespace.
    pub async fn provision(env: &TestEnv) -> anyhow::Result<Self> {
        let ident = env.namespace.replace('-', "_");
        let db = Self {
            host: format!(
                "postgres.{}.svc.cluster.local",
                env.settings.postgres_namespace
            ),
            name: ident.clone(),
            user: ident,
            password: random_password(),
        };
        psql(
            env,
            &[
                &format!(
                    "CREATE ROLE \"{}\" LOGIN PASSWORD '{}'",
                    db.user, db.password
                ),
                &format!("CREATE DATABASE \"{}\" OWNER \"{}\"", db.name, db.user),
            ],
        )
        .await?;
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": DB_SECRET },
            "stringData": { DB_SECRET_KEY: db.password },
        }))?;
        env.api::<Secret>()
            .create(&PostParams::default(), &secret)
            .await
            .context("creating the database password Secret")?;
        Ok(db)
    }

    /// Rotates the password: first in Postgres, then in the Secret, as an operator would.
    pub async fn rotate_password(&mut self, env: &TestEnv) -> anyhow::Result<()> {
        let new = random_password();
        psql(
            env,
            &[&format!("ALTER ROLE \"{}\" PASSWORD '{}'", self.user, new)],
        )
        .await?;
        env.api::<Secret>()
            .patch(
                DB_SECRET,
                &PatchParams::default(),
                &Patch::Merge(json!({ "stringData": { DB_SECRET_KEY: new } })),
            )
            .await
            .context("updating the database password Secret")?;
        self.password = new;
        Ok(())
    }
}

/// Runs each statement with `psql -c` (one transaction each; CREATE DATABASE needs that).
async fn psql(env: &TestEnv, statements: &[&str]) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.settings.postgres_namespace);
    let mut command = vec![
        "psql".to_owned(),
        "-v".to_owned(),
        "ON_ERROR_STOP=1".to_owned(),
        "-U".to_owned(),
        SUPERUSER.to_owned(),
        "-d".to_owned(),
        SUPERUSER.to_owned(),
    ];
    for s in statements {
        command.push("-c".to_owned());
        command.push((*s).to_owned());
    }
    let mut process = pods
        .exec(
            POSTGRES_POD,
            command,
            &AttachParams::default()
                .container("postgres")
                .stdin(false)
                .stdout(true)
                .stderr(true),
        )
        .await
        .with_context(|| {
            format!(
                "exec psql in {}/{POSTGRES_POD}",
                env.settings.postgres_namespace
            )
        })?;
    // Read both streams at once: a full stderr pipe must not block stdout.
    let (stdout, stderr) = tokio::join!(read_all(process.stdout()), read_all(process.stderr()));
    let (stdout, stderr) = (stdout?, stderr?);
    let status = match process.take_status() {
        Some(status) => status.await,
        None => bail!("psql: no exit status"),
    };
    process.join().await.context("psql exec stream")?;
    let success = status
        .as_ref()
        .and_then(|s| s.status.as_deref())
        .is_some_and(|s| s == "Success");
    ensure!(success, "psql failed: {stderr}{stdout} ({status:?})");
    Ok(stdout)
}

async fn read_all(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> anyhow::Result<String> {
    let mut text = String::new();
    if let Some(mut stream) = stream {
        stream.read_to_string(&mut text).await?;
    }
    Ok(text)
}

fn random_password() -> String {
    format!("{:032x}", rand::random::<u128>())
}
