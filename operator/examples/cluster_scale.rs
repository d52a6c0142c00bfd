//! Scale run on the real control plane of `scripts/cluster.sh`: COUNT ScalableApis (half
//! with autoscaling) and their Secrets created at once, then an idle period with a short
//! resync interval (an idle hour compressed: every object re-checked twice).
//!
//! `make bench-operator` (COUNT=1000) runs it on a fresh cluster:
//!   scripts/with-cluster.sh target/release/examples/cluster_scale \
//!     --operator target/release/scalable-api-operator --count 1000
//!
//! The operator runs as its own process (a release build) with a ServiceAccount token, so
//! the API server's audit log attributes each of its requests to it. Printed: time until
//! every object is Ready, the operator's peak RSS, its requests by verb (audit log) and
//! the API server's own request counters (apiserver_request_total, every client).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::CustomResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config, ResourceExt};
use operator::crd::ScalableApi;
use serde_json::{Value, json};

#[path = "../tests/support/token_kubeconfig.rs"]
mod token_kubeconfig;

use token_kubeconfig::write_token_kubeconfig;

const OPS_NS: &str = "scale-ops";
const NAMESPACES: usize = 10;

struct Args {
    operator: PathBuf,
    count: usize,
    resync_seconds: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        operator: PathBuf::from("target/release/scalable-api-operator"),
        count: 1000,
        resync_seconds: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--operator" => args.operator = value.into(),
            "--count" => args.count = value.parse()?,
            "--resync-seconds" => args.resync_seconds = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

fn testenv() -> anyhow::Result<PathBuf> {
    std::env::var_os("SCALABLE_TESTENV")
        .map(PathBuf::from)
        .context("SCALABLE_TESTENV is not set: run through scripts/with-cluster.sh")
}

async fn client(kubeconfig: Kubeconfig) -> anyhow::Result<Client> {
    let mut config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.read_timeout = Some(Duration::from_secs(300));
    Ok(Client::try_from(config)?)
}

/// The CRD (the same as crds/), applied server-side; returns once it is served.
async fn install_crd(admin: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let crd = ScalableApi::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("cluster-scale").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    let established = kube::runtime::wait::conditions::is_crd_established();
    tokio::time::timeout(
        Duration::from_secs(60),
        kube::runtime::wait::await_condition(crds, &name, established),
    )
    .await
    .context("the CRD was not established within 60 s")??;
    Ok(())
}

/// A ServiceAccount for the operator, bound to cluster-admin (this run measures load, the
/// controller tests check the chart's RBAC), and a kubeconfig with its token.
async fn operator_kubeconfig(admin: &Client, dir: &Path) -> anyhow::Result<PathBuf> {
    let pp = PostParams::default();
    Api::<Namespace>::all(admin.clone())
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": OPS_NS}}))?,
        )
        .await?;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), OPS_NS);
    sas.create(
        &pp,
        &serde_json::from_value(json!({"metadata": {"name": "operator"}}))?,
    )
    .await?;
    let binding = json!({
        "metadata": {"name": "scale-run-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": OPS_NS}],
    });
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&pp, &serde_json::from_value(binding)?)
        .await?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let token = sas
        .create_token_request("operator", &pp, &request)
        .await?
        .status
        .context("TokenRequest has no status")?
        .token;
    let path = dir.join("scale-run-operator.kubeconfig");
    write_token_kubeconfig(&dir.join("admin.kubeconfig"), &token, &path)?;
    Ok(path)
}

fn start_operator(args: &Args, kubeconfig: &Path, dir: &Path) -> anyhow::Result<(Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(dir.join("logs/scale-run-operator.log"))?;
    let child = Command::new(&args.operator)
        .args([
            "run",
            "--lease-namespace",
            OPS_NS,
            "--pod-name",
            "scale-run",
        ])
        .args([
            "--resync-interval-seconds",
            &args.resync_seconds.to_string(),
        ])
        .arg(format!("--http-addr=127.0.0.1:{port}"))
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", args.operator.display()))?;
    Ok((child, port))
}

/// The operator's own /metrics (plain HTTP on loopback).
async fn operator_metrics(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        Some(body)
    })
    .await
    .ok()?
}

/// Sum of the samples of `name` in a Prometheus text exposition.
fn sample_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// kube-apiserver's `apiserver_request_total`, summed by verb.
async fn apiserver_requests(admin: &Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = admin
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let mut by_verb = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let verb = line
            .split("verb=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("?");
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *by_verb.entry(verb.to_owned()).or_insert(0.0) += value;
    }
    Ok(by_verb)
}

fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), (v - before.get(k).unwrap_or(&0.0)) as u64))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// The operator's requests from the API server's audit log, as (verb, received at); leader
/// election's requests are labelled `<verb> (lease)`, apart from the per-object cost. A watch
/// counts when it starts; everything else when its response completes. kube-apiserver
/// rotates the log (audit-<time>.log) past --audit-log-maxsize, so every audit file is read.
fn audited(dir: &Path, user: &str) -> anyhow::Result<Vec<(String, Timestamp)>> {
    let mut requests = Vec::new();
    for entry in std::fs::read_dir(dir.join("logs"))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !(name.starts_with("audit") && name.ends_with(".log")) {
            continue;
        }
        for event in std::fs::read_to_string(&path)?
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            let verb = event["verb"].as_str().unwrap_or("?");
            let counted_stage = if verb == "watch" {
                "ResponseStarted"
            } else {
                "ResponseComplete"
            };
            if event["user"]["username"] != user || event["stage"] != counted_stage {
                continue;
            }
            let label = if event["objectRef"]["resource"] == "leases" {
                format!("{verb} {LEASE_LABEL}")
            } else {
                verb.to_owned()
            };
            if let Some(at) = event["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok())
            {
                requests.push((label, at));
            }
        }
    }
    Ok(requests)
}

/// Requests by verb received in [from, to).
fn by_verb(
    requests: &[(String, Timestamp)],
    from: Timestamp,
    to: Timestamp,
) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for (verb, _) in requests.iter().filter(|(_, at)| *at >= from && *at < to) {
        *counts.entry(verb.clone()).or_insert(0) += 1;
    }
    counts
}

/// Suffix of the audit labels of Lease requests (leader election, not per object).
const LEASE_LABEL: &str = "(lease)";

fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn objects(i: usize) -> (String, Value, Value) {
    let ns = format!("team-{}", i % NAMESPACES);
    let name = format!("api-{i}");
    let mut spec = json!({"database": {
        "host": "postgres", "name": "app", "user": "app",
        "passwordSecretRef": {"name": format!("{name}-db"), "key": "password"},
    }});
    if i.is_multiple_of(2) {
        spec["autoscaling"] = json!({"minReplicas": 1, "maxReplicas": 3});
    } else {
        spec["replicas"] = json!(1);
    }
    let secret =
        json!({"metadata": {"name": format!("{name}-db")}, "stringData": {"password": "s3cret"}});
    let sapi = json!({"apiVersion": "scalable.dev/v1alpha1", "kind": "ScalableApi", "metadata": {"name": name}, "spec": spec});
    (ns, secret, sapi)
}

fn ready(s: &ScalableApi) -> bool {
    s.status.as_ref().is_some_and(|st| {
        st.observed_generation == s.metadata.generation
            && st
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let dir = testenv()?;
    let admin = client(Kubeconfig::read_from(dir.join("admin.kubeconfig"))?).await?;
    let user = format!("system:serviceaccount:{OPS_NS}:operator");

    install_crd(&admin).await?;
    let kubeconfig = operator_kubeconfig(&admin, &dir).await?;
    let (mut operator, port) = start_operator(&args, &kubeconfig, &dir)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while operator_metrics(port)
        .await
        .is_none_or(|m| sample_sum(&m, "leader_election_master_status") < 1.0)
    {
        if Instant::now() > deadline {
            bail!(
                "the operator did not become the leader; see {}/logs/scale-run-operator.log",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..NAMESPACES {
        let ns = json!({"metadata": {"name": format!("team-{i}")}});
        Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &serde_json::from_value(ns)?)
            .await?;
    }

    // Watch every ScalableApi before creating any, so no Ready transition is missed.
    let sapis: Api<ScalableApi> = Api::all(admin.clone());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let watch = tokio::spawn(async move {
        let mut events = watcher::watcher(sapis, watcher::Config::default()).boxed();
        while let Ok(Some(event)) = events.try_next().await {
            if let watcher::Event::Apply(s) | watcher::Event::InitApply(s) = event
                && ready(&s)
            {
                let _ = ready_tx.send(format!(
                    "{}/{}",
                    s.namespace().unwrap_or_default(),
                    s.name_any()
                ));
            }
        }
    });

    let before = apiserver_requests(&admin).await?;
    let started_at = Timestamp::now();
    let started = Instant::now();
    stream::iter(0..args.count)
        .map(|i| {
            let admin = admin.clone();
            async move {
                let (ns, secret, sapi) = objects(i);
                let pp = PostParams::default();
                Api::<Secret>::namespaced(admin.clone(), &ns)
                    .create(&pp, &serde_json::from_value(secret)?)
                    .await?;
                Api::<ScalableApi>::namespaced(admin, &ns)
                    .create(&pp, &serde_json::from_value(sapi)?)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    let created = started.elapsed();

    let mut ready_set = BTreeSet::new();
    let converge_deadline = Instant::now() + Duration::from_secs(900);
    let mut next_report = Instant::now() + Duration::from_secs(15);
    while ready_set.len() < args.count {
        let left = converge_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(Duration::from_secs(15)), ready_rx.recv()).await {
            Ok(Some(key)) => {
                ready_set.insert(key);
            }
            Ok(None) => bail!("the ScalableApi watch ended"),
            Err(_) if left.is_zero() => bail!(
                "only {} of {} ScalableApis became Ready in 900 s",
                ready_set.len(),
                args.count
            ),
            Err(_) => {}
        }
        if Instant::now() >= next_report {
            eprintln!(
                "{:>5.0} s: {} of {} Ready",
                started.elapsed().as_secs_f64(),
                ready_set.len(),
                args.count
            );
            next_report += Duration::from_secs(15);
        }
    }
    let converged = started.elapsed();
    let converged_at = Timestamp::now();
    let after_converge = apiserver_requests(&admin).await?;
    let rss_converge = peak_rss_mib(operator.id());

    // Idle: nothing changes; every object is re-checked every resync interval. Two
    // intervals and a margin compress an idle hour at the default 30-minute resync.
    let reconciles_before = operator_metrics(port)
        .await
        .map(|m| sample_sum(&m, "scalable_api_operator_reconciliations_total"));
    let converge_reconciles = reconciles_before.unwrap_or(f64::NAN);
    let idle = Duration::from_secs(args.resync_seconds * 2 + 5);
    let idle_from = Timestamp::now();
    tokio::time::sleep(idle).await;
    let idle_to = Timestamp::now();
    let reconciles_after = operator_metrics(port)
        .await
        .map(|m| sample_sum(&m, "scalable_api_operator_reconciliations_total"));
    let after_idle = apiserver_requests(&admin).await?;
    let rss_end = peak_rss_mib(operator.id());

    let requests = audited(&dir, &user)?;
    let converge_ops = by_verb(&requests, started_at, converged_at);
    let idle_ops = by_verb(&requests, idle_from, idle_to);
    let idle_reconciles = match (reconciles_before, reconciles_after) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let resyncs = idle_reconciles / args.count as f64;
    let idle_writes: u64 = idle_ops
        .iter()
        .filter(|(v, _)| is_write(v))
        .map(|(_, n)| n)
        .sum();
    let idle_reads: u64 = idle_ops
        .iter()
        .filter(|(v, _)| !is_write(v) && !v.ends_with(LEASE_LABEL))
        .map(|(_, n)| n)
        .sum();

    println!(
        "objects:                {} ScalableApis in {NAMESPACES} namespaces, half with autoscaling (+{} Secrets)",
        args.count, args.count
    );
    println!("created (client side):  {:.1} s", created.as_secs_f64());
    println!(
        "all Ready after:        {:.1} s (from the first create)",
        converged.as_secs_f64()
    );
    println!(
        "operator peak RSS:      {:.1} MiB after converging, {:.1} MiB at the end",
        rss_converge.unwrap_or(f64::NAN),
        rss_end.unwrap_or(f64::NAN)
    );
    println!("operator requests while converging (audit log, by verb): {converge_ops:?}");
    let converge_total: u64 = converge_ops
        .iter()
        .filter(|(v, _)| !v.ends_with(LEASE_LABEL))
        .map(|(_, n)| n)
        .sum();
    println!(
        "  reconciles while converging: {converge_reconciles} = {:.1} per object, {:.1} requests each",
        converge_reconciles / args.count as f64,
        converge_total as f64 / converge_reconciles
    );
    println!(
        "all API server requests while converging (apiserver_request_total): {:?}",
        delta(&after_converge, &before)
    );
    println!(
        "idle window:            {} s, resync every {} s: {idle_reconciles} reconciles = {resyncs:.2} per object",
        idle.as_secs(),
        args.resync_seconds
    );
    println!("operator requests while idle (audit log, by verb): {idle_ops:?}");
    println!(
        "  writes per idle object per resync: {:.2}",
        idle_writes as f64 / idle_reconciles
    );
    println!(
        "  reads per resync (all objects):    {:.1}",
        idle_reads as f64 / resyncs
    );
    println!(
        "all API server requests while idle (apiserver_request_total): {:?}",
        delta(&after_idle, &after_converge)
    );

    watch.abort();
    let _ = operator.kill();
    let _ = operator.wait();
    Ok(())
}
