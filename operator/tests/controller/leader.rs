//! Leader election on a Lease: one leader, standby, take-over after expiry, release.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use operator::leader::{LeaseLock, Timing};

use crate::support::*;

const SHORT: Timing = Timing {
    lease_duration: Duration::from_secs(1),
    renew_deadline: Duration::from_millis(700),
    retry_period: Duration::from_millis(100),
};

fn candidates(fake: &FakeApiServer) -> (LeaseLock, LeaseLock, Api<Lease>) {
    let client = fake.client();
    let a = LeaseLock::new(
        client.clone(),
        "ops",
        "scalable-api-operator",
        "pod-a",
        SHORT,
    );
    let b = LeaseLock::new(
        client.clone(),
        "ops",
        "scalable-api-operator",
        "pod-b",
        SHORT,
    );
    (a, b, Api::namespaced(client, "ops"))
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get("scalable-api-operator")
        .await
        .ok()?
        .spec?
        .holder_identity
}

#[tokio::test]
async fn only_one_candidate_leads() {
    let fake = FakeApiServer::new();
    let (a, b, leases) = candidates(&fake);
    assert!(a.try_acquire_or_renew().await.expect("a"));
    assert!(!b.try_acquire_or_renew().await.expect("b"));
    assert!(a.try_acquire_or_renew().await.expect("a renews"));
    assert_eq!(holder(&leases).await.as_deref(), Some("pod-a"));
}

#[tokio::test]
async fn the_standby_takes_over_after_the_lease_expires() {
    let fake = FakeApiServer::new();
    let (a, b, leases) = candidates(&fake);
    assert!(a.try_acquire_or_renew().await.expect("a"));
    // a stops renewing (crashed); b waits out the lease and takes over.
    tokio::time::timeout(TIMEOUT, b.acquire())
        .await
        .expect("b acquires within the timeout");
    let lease = leases
        .get("scalable-api-operator")
        .await
        .expect("lease")
        .spec
        .expect("spec");
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
    let fake = FakeApiServer::new();
    let (a, b, leases) = candidates(&fake);
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
    let fake = FakeApiServer::new();
    let (a, b, _) = candidates(&fake);
    assert!(a.try_acquire_or_renew().await.expect("a"));
    let renewing = tokio::spawn(async move { a.keep_renewing().await });
    // Across more than two lease durations b never gets in.
    let attempt = tokio::time::timeout(Duration::from_millis(2500), b.acquire()).await;
    assert!(attempt.is_err(), "b must not acquire while a renews");
    renewing.abort();
}

#[tokio::test]
async fn a_leader_whose_renewals_hang_steps_down_within_the_deadline() {
    let fake = FakeApiServer::new();
    let (a, _, _) = candidates(&fake);
    assert!(a.try_acquire_or_renew().await.expect("a"));
    // Same identity and Lease, but every request hangs, like a half-dead connection.
    let hanging = tower::service_fn(|_: http::Request<kube::client::Body>| async {
        std::future::pending::<Result<http::Response<kube::client::Body>, std::convert::Infallible>>()
            .await
    });
    let stuck = LeaseLock::new(
        kube::Client::new(hanging, "default"),
        "ops",
        "scalable-api-operator",
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
