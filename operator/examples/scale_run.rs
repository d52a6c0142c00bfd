//! Scale run: 1,000 ScalableApis (and their Secrets) through the real controller, until
//! every object has `status.observedGeneration` and every child exists.
//!
//! `cargo run --release -p scalable-api-operator --example scale_run [-- COUNT]`
//!
//! The in-memory API server runs in a child process (this binary with `--serve-fake`) and
//! the controller talks to it over loopback HTTP, like a real operator talks to a real API
//! server. So the peak RSS printed for the operator process is the controller's alone.

// The example uses only part of the shared test support.
#[allow(dead_code)]
#[path = "../tests/support/fake/mod.rs"]
mod fake;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fake::FakeApiServer;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use operator::controller::{self, Settings};
use operator::metrics::Metrics;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

const DEFAULT_COUNT: usize = 1_000;
const NAMESPACES: usize = 10;
/// Watch history the fake keeps; enough for watchers to start after their initial list.
const EVENT_LOG: usize = 20_000;
const DEADLINE: Duration = Duration::from_secs(120);
const PROGRESS_PATH: &str = "/scale-run/progress";

fn peak_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of a process (clock ticks are 1/100 s on Linux).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The i-th ScalableApi: half fixed (2 replicas), half autoscaling (2..5), 10 namespaces.
fn fixture(i: usize) -> (String, Value, Value) {
    let ns = format!("team-{}", i % NAMESPACES);
    let name = format!("api-{i}");
    let mut spec = json!({"database": {
        "host": "postgres.db.svc", "name": "users", "user": "app",
        "passwordSecretRef": {"name": format!("{name}-db"), "key": "password"},
    }});
    if i.is_multiple_of(2) {
        spec["replicas"] = json!(2);
    } else {
        spec["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 5});
    }
    let obj = json!({"apiVersion": "scalable.dev/v1alpha1", "kind": "ScalableApi",
                     "metadata": {"name": name, "namespace": ns}, "spec": spec});
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": format!("{name}-db"), "namespace": ns},
                        "data": {"password": "czNjcmV0"}});
    (ns, obj, secret)
}

async fn seed(client: &kube::Client, count: usize) -> anyhow::Result<()> {
    let sapi_ar = ApiResource::erase::<operator::crd::ScalableApi>(&());
    let secret_ar = ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&());
    for i in 0..count {
        let (ns, obj, secret) = fixture(i);
        let secrets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &secret_ar);
        secrets
            .create(&PostParams::default(), &serde_json::from_value(secret)?)
            .await?;
        let sapis: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &sapi_ar);
        sapis
            .create(&PostParams::default(), &serde_json::from_value(obj)?)
            .await?;
    }
    Ok(())
}

fn progress(fake: &FakeApiServer) -> Value {
    let with_status = (0..NAMESPACES)
        .flat_map(|i| fake.objects("scalable.dev/v1alpha1/scalableapis", &format!("team-{i}")))
        .filter(|o| o.pointer("/status/observedGeneration").is_some())
        .count();
    json!({
        "status": with_status,
        "configmaps": fake.count("v1/configmaps"),
        "deployments": fake.count("apps/v1/deployments"),
        "services": fake.count("v1/services"),
        "pdbs": fake.count("policy/v1/poddisruptionbudgets"),
        "hpas": fake.count("autoscaling/v2/horizontalpodautoscalers"),
    })
}

/// Child process: seed the fake, serve it on a loopback port, exit when stdin closes.
async fn serve_fake(count: usize) -> anyhow::Result<()> {
    use axum::extract::{Request, State};
    use axum::response::IntoResponse;

    let fake = FakeApiServer::lean(EVENT_LOG);
    seed(&fake.client(), count).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("PORT {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;

    async fn proxy(State(fake): State<FakeApiServer>, req: Request) -> axum::response::Response {
        if req.uri().path() == PROGRESS_PATH {
            return axum::Json(progress(&fake)).into_response();
        }
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        fake.handle(&parts.method, &parts.uri, &parts.headers, bytes)
            .map(axum::body::Body::new)
    }
    let app = axum::Router::new().fallback(proxy).with_state(fake);
    let parent_gone = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = parent_gone.await;
        })
        .await?;
    Ok(())
}

async fn run_controller(port: &str, child_pid: &str, count: usize) -> anyhow::Result<()> {
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse()?);
    let client = kube::Client::try_from(config)?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let settings = Settings {
        namespace: None,
        default_image: "registry.test/api-server:1.0.0".into(),
        instance: "scale-run".into(),
        resync_interval: controller::RESYNC_INTERVAL,
    };
    let rss_idle = peak_rss_kib("self").unwrap_or(0);
    let (cpu_self, cpu_fake) = (
        cpu_seconds("self").unwrap_or(0.0),
        cpu_seconds(child_pid).unwrap_or(0.0),
    );
    let (ctrl, ctx) = controller::build(client.clone(), settings, metrics);
    let started = Instant::now();
    let task = tokio::spawn(controller::drive(ctrl, ctx));
    let done = |p: &Value| {
        let n = |k: &str| p[k].as_u64().unwrap_or(0) as usize;
        n("status") == count
            && ["configmaps", "deployments", "services", "pdbs"]
                .iter()
                .all(|k| n(k) == count)
            && n("hpas") == count / 2
    };
    loop {
        let req = http::Request::get(PROGRESS_PATH).body(Vec::new())?;
        let p: Value = serde_json::from_str(&client.request_text(req).await?)?;
        if done(&p) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < DEADLINE,
            "not converged after {DEADLINE:?}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed();
    task.abort();

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    let reconciles: f64 = text
        .lines()
        .filter(|l| l.starts_with("scalable_api_operator_reconciliations_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let peak = peak_rss_kib("self").unwrap_or(0);
    let fake_peak = peak_rss_kib(child_pid).unwrap_or(0);
    println!(
        "objects:                {count} ScalableApis in {NAMESPACES} namespaces, half with autoscaling (+{count} Secrets)"
    );
    println!(
        "converged in:           {:.2} s (from controller start to observedGeneration on all and every child present)",
        wall.as_secs_f64()
    );
    println!(
        "children:               {} ConfigMaps, Deployments, Services, PDBs each; {} HPAs",
        count,
        count / 2
    );
    println!("reconciliations:        {reconciles}");
    println!(
        "operator peak RSS:      {:.1} MiB (VmHWM of this process; {:.1} MiB before the controller started)",
        mib(peak),
        mib(rss_idle)
    );
    println!(
        "fake API server RSS:    {:.1} MiB (child process, not part of the figure)",
        mib(fake_peak)
    );
    println!(
        "CPU during the run:     operator {:.2} s, fake API server {:.2} s (2 shared cores)",
        cpu_seconds("self").unwrap_or(0.0) - cpu_self,
        cpu_seconds(child_pid).unwrap_or(0.0) - cpu_fake
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.get(1).map(String::as_str) == Some("--serve-fake") {
        let count = args
            .get(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(DEFAULT_COUNT);
        return runtime.block_on(serve_fake(count));
    }
    let count = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(DEFAULT_COUNT);
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve-fake", &count.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the fake API server process")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .context("child did not report its port")?
        .to_owned();
    let result = runtime.block_on(run_controller(&port, &child.id().to_string(), count));
    drop(child.stdin.take());
    let _ = child.wait();
    result
}
