//! Two operator processes on one real Lease: only the leader writes; after a SIGKILL the
//! standby takes over once the Lease has expired. Who wrote what, and when, comes from the
//! API server's audit log (scripts/cluster.sh logs every request made with a
//! ServiceAccount token).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use operator::leader::{LEASE_DURATION, LeaseLock, RETRY_PERIOD, Timing};

use crate::audit::{Request, requests_in};
use crate::cluster::*;

const LEASE: &str = "scalable-api-operator";

async fn wait_for_holder(c: &Cluster, who: &str) -> Lease {
    c.wait_for::<Lease>(LEASE, &format!("{who} to hold the Lease"), |l| {
        l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(who)
    })
    .await
}

#[tokio::test]
async fn the_standby_takes_over_after_the_leader_is_killed_and_never_both_write() {
    let c = Cluster::new("leader").await;
    let (config_a, config_b) = (
        namespace_admin(&c, "operator-a").await,
        namespace_admin(&c, "operator-b").await,
    );
    let mut a = OperatorProcess::start(&config_a, &c.ns, "pod-a");
    wait_for_holder(&c, "pod-a").await;
    let b = OperatorProcess::start(&config_b, &c.ns, "pod-b");

    create_db_secret(&c, "users").await;
    scalable_api("users").create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let before_kill = wait_for_holder(&c, "pod-a").await;
    assert_eq!(
        before_kill
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds),
        Some(LEASE_DURATION.as_secs() as i32)
    );

    a.kill();
    let killed = Instant::now();
    wait_for_holder(&c, "pod-b").await;
    let takeover = killed.elapsed();
    println!("the standby took the Lease {takeover:?} after the leader's SIGKILL");
    // The Lease was renewed at most one retry period before the kill; the standby polls
    // every retry period.
    assert!(
        takeover <= LEASE_DURATION + RETRY_PERIOD + Duration::from_secs(1),
        "take-over took {takeover:?}"
    );

    create_db_secret(&c, "orders").await;
    scalable_api("orders").create(&c).await;
    c.wait_for_condition("orders", "Ready", "True", "Available")
        .await;
    assert!(!b.log_text().to_lowercase().contains("forbidden"));

    let user = |n: &str| format!("system:serviceaccount:{}:{n}", c.ns);
    let writes: Vec<Request> = requests_in(&c.ns)
        .into_iter()
        .filter(Request::is_write)
        .collect();
    let by = |who: &str| -> Vec<&Request> {
        writes
            .iter()
            .filter(|w| w.user == user(who) && w.resource != "leases")
            .collect()
    };
    let (writes_a, writes_b) = (by("operator-a"), by("operator-b"));
    assert!(
        !writes_a.is_empty(),
        "the first leader wrote nothing: {writes:?}"
    );
    assert!(!writes_b.is_empty(), "the second leader wrote nothing");
    let last_a = writes_a.iter().map(|w| w.answered).max().expect("a");
    let first_b = writes_b.iter().min_by_key(|w| w.received).expect("b");
    assert!(
        last_a < first_b.received,
        "both wrote at once: a's last write answered at {last_a}, b's first ({} {}) arrived at {}",
        first_b.verb,
        first_b.resource,
        first_b.received
    );
}

// The Lease protocol of `LeaseLock` itself, with short timings, on the real API server
// (its resourceVersion checks are what keeps two candidates from both winning).

const SHORT: Timing = Timing {
    lease_duration: Duration::from_secs(1),
    renew_deadline: Duration::from_millis(700),
    retry_period: Duration::from_millis(100),
};

fn candidates(c: &Cluster) -> (LeaseLock, LeaseLock, Api<Lease>) {
    let lock = |who: &str| LeaseLock::new(c.client.clone(), &c.ns, LEASE, who, SHORT);
    (lock("pod-a"), lock("pod-b"), c.api::<Lease>())
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get(LEASE).await.ok()?.spec?.holder_identity
}

#[tokio::test]
async fn only_one_candidate_leads() {
    let c = Cluster::new("lease").await;
    let (a, b, leases) = candidates(&c);
    assert!(a.try_acquire_or_renew().await.expect("a"));
    assert!(!b.try_acquire_or_renew().await.expect("b"));
    assert!(a.try_acquire_or_renew().await.expect("a renews"));
    assert_eq!(holder(&leases).await.as_deref(), Some("pod-a"));
}

#[tokio::test]
async fn the_standby_takes_over_after_the_lease_expires() {
    let c = Cluster::new("lease").await;
    let (a, b, leases) = candidates(&c);
    assert!(a.try_acquire_or_renew().await.expect("a"));
    // a stops renewing (crashed); b waits out the lease and takes over.
    tokio::time::timeout(TIMEOUT, b.acquire())
        .await
        .expect("b acquires within the timeout");
    let lease = leases.get(LEASE).await.expect("lease").spec.expect("spec");
    assert_eq!(lease.holder_identity.as_deref(), Some("pod-b"));
    assert_eq!(lease.lease_transitions, Some(1));
    // The old leader notices on its next renewal and steps down.
    let err = tokio::time::timeout(TIMEOUT, a.keep_renewing())
        .await
        .expect("a steps down");
    assert_eq!(err.metric_label(), "leadership_lost");
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    let c = Cluster::new("lease").await;
    let (a, b, leases) = candidates(&c);
    assert!(a.try_acquire_or_renew().await.expect("a"));
    a.release().await.expect("release");
    assert!(
        b.try_acquire_or_renew()
            .await
            .expect("b takes the released lease")
    );
    assert_eq!(holder(&leases).await.as_deref(), Some("pod-b"));
}

#[tokio::test]
async fn the_leader_keeps_renewing() {
    let c = Cluster::new("lease").await;
    let (a, b, _) = candidates(&c);
    assert!(a.try_acquire_or_renew().await.expect("a"));
    let renewing = tokio::spawn(async move { a.keep_renewing().await });
    // Across more than two lease durations b never gets in.
    let attempt = tokio::time::timeout(Duration::from_millis(2500), b.acquire()).await;
    assert!(attempt.is_err(), "b must not acquire while a renews");
    renewing.abort();
}

#[tokio::test]
async fn a_leader_whose_renewals_hang_steps_down_within_the_deadline() {
    let c = Cluster::new("hang").await;
    let (a, _, _) = candidates(&c);
    assert!(a.try_acquire_or_renew().await.expect("a"));
    // Same identity and Lease, but every request hangs, like a half-dead connection.
    let hanging = tower::service_fn(|_: http::Request<kube::client::Body>| async {
        std::future::pending::<Result<http::Response<kube::client::Body>, std::convert::Infallible>>()
            .await
    });
    let stuck = LeaseLock::new(
        kube::Client::new(hanging, "default"),
        &c.ns,
        LEASE,
        "pod-a",
        SHORT,
    );
    let started = tokio::time::Instant::now();
    let err = tokio::time::timeout(TIMEOUT, stuck.keep_renewing())
        .await
        .expect("a hanging renewal must not keep the leader leading");
    assert_eq!(err.metric_label(), "leadership_lost");
    // Steps down once renew_deadline has passed, before the Lease (1 s) expires for others.
    assert!(
        started.elapsed() < SHORT.lease_duration,
        "stepped down after {:?}",
        started.elapsed()
    );
}
