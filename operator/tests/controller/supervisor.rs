//! `run` end to end (minus the kubeconfig) on the real API server: HTTP probes, leader
//! election and the controller of two in-process operator replicas sharing one Lease.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use operator::cli::{LogFormat, RunArgs};
use operator::leader::Timing;

use k8s_openapi::api::apps::v1::Deployment;

use crate::cluster::*;

const SHORT: Timing = Timing {
    lease_duration: Duration::from_secs(1),
    renew_deadline: Duration::from_millis(700),
    retry_period: Duration::from_millis(100),
};

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

fn args(ns: &str, pod: &str, http_addr: SocketAddr) -> RunArgs {
    RunArgs {
        namespace: Some(ns.into()),
        namespaces: Vec::new(),
        pod: operator::cli::PodArgs {
            default_image: DEFAULT_TEST_IMAGE.into(),
            default_cache_image: operator::desired::redis::DEFAULT_IMAGE.into(),
            pod_uid: operator::cli::PodUid::Fixed(operator::desired::security::RUN_AS_USER),
        },
        http_addr,
        leader_election: true,
        lease_name: "scalable-api-operator".into(),
        lease_namespace: ns.into(),
        pod_name: Some(pod.into()),
        log_format: LogFormat::Text,
        resync_interval_seconds: operator::controller::RESYNC_INTERVAL.as_secs(),
    }
}

/// Status and body of `GET path`, or `None` while nothing listens.
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let req = format!("GET {path} HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let mut stream =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(req.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, response))
    })
    .await
    .ok()?
}

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).await.map(|(status, _)| status)
}

async fn wait_status(addr: SocketAddr, path: &str, want: u16) {
    let waited = tokio::time::timeout(TIMEOUT, async {
        while http_status(addr, path).await != Some(want) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{addr}{path} never answered {want}");
}

/// Polls `/metrics` (an HTTP endpoint has nothing to watch) until `check` accepts it.
async fn wait_metrics(addr: SocketAddr, what: &str, check: impl Fn(&str) -> bool) -> String {
    within(what, async {
        loop {
            if let Some((200, body)) = http_get(addr, "/metrics").await
                && check(&body)
            {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Matches the sample line exactly: the metric's HELP text also follows its name.
fn leader_gauge_is(metrics: &str, value: u8) -> bool {
    let want = format!(r#"leader_election_master_status{{name="scalable-api-operator"}} {value}"#);
    metrics.lines().any(|line| line == want)
}

/// The value of the sample line that starts with `series` (name and labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn only_the_leader_reconciles_the_standby_is_ready_and_takes_over() {
    let c = Cluster::new("replicas").await;
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let a = tokio::spawn(operator::controller::run_with(
        c.client.clone(),
        args(&c.ns, "pod-a", addr_a),
        SHORT,
    ));
    wait_status(addr_a, "/readyz", 200).await;
    // Ready does not mean leading (a standby is ready too): wait for the Lease.
    c.wait_for::<Lease>("scalable-api-operator", "pod-a to hold the Lease", |l| {
        l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some("pod-a")
    })
    .await;
    let b = tokio::spawn(operator::controller::run_with(
        c.client.clone(),
        args(&c.ns, "pod-b", addr_b),
        SHORT,
    ));
    wait_status(addr_b, "/healthz", 200).await;
    // Ready while standing by, so a two-replica rollout (`helm install --wait`) completes.
    wait_status(addr_b, "/readyz", 200).await;

    create_db_secret(&c, "users").await;
    scalable_api("users").create(&c).await;
    c.wait_for::<Deployment>("users", "the leader to reconcile", |_| true)
        .await;
    let requeued =
        r#"controller_runtime_reconcile_total{controller="scalableapi",result="requeue_after"}"#;
    let metrics_a = wait_metrics(addr_a, "the leader to count an applied reconcile", |m| {
        m.contains("scalable_api_operator_reconciliations_total{outcome=\"applied\"}")
            && sample(m, requeued).is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(leader_gauge_is(&metrics_a, 1), "{metrics_a}");
    let series = |name: &str| format!(r#"{name}{{controller="scalableapi"}}"#);
    assert_eq!(
        sample(
            &metrics_a,
            &series("controller_runtime_max_concurrent_reconciles")
        ),
        Some(f64::from(operator::controller::MAX_CONCURRENT_RECONCILES)),
        "{metrics_a}"
    );
    assert!(
        sample(
            &metrics_a,
            &series("controller_runtime_reconcile_time_seconds_count")
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics_a}"
    );
    let (_, metrics_b) = http_get(addr_b, "/metrics").await.expect("standby metrics");
    assert!(leader_gauge_is(&metrics_b, 0), "{metrics_b}");
    // A standby runs no controller, so it has no controller series (as controller-runtime).
    assert!(
        !metrics_b.contains("controller_runtime_reconcile_total{"),
        "{metrics_b}"
    );

    // The leader dies without releasing the Lease; the standby waits it out and takes over.
    a.abort();
    wait_metrics(addr_b, "the standby to become the leader", |m| {
        leader_gauge_is(m, 1)
    })
    .await;
    let lease = c
        .get::<Lease>("scalable-api-operator")
        .await
        .expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("pod-b")
    );
    scalable_api("orders").create(&c).await;
    create_db_secret(&c, "orders").await;
    c.wait_for::<Deployment>("orders", "the new leader to reconcile", |_| true)
        .await;
    b.abort();
}
