//! Two operator processes on one real Lease: only the leader writes; after a SIGKILL the
//! standby takes over once the Lease has expired. Who wrote what, and when, comes from the
//! API server's audit log (scripts/cluster.sh logs every request made with a
//! ServiceAccount token).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use operator::leader::{LEASE_DURATION, LeaseLock, RETRY_PERIOD, Timing};
use serde_json::json;

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
    // The Lease was renewed at most one retry period before the kill. The standby counts
    // the lease from when it saw that renewal (up to one retry period later, its poll
    // interval, on its own clock) and takes over at its first poll after that.
    assert!(
        takeover <= LEASE_DURATION + 2 * RETRY_PERIOD + Duration::from_secs(1),
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

#[tokio::test]
async fn a_holder_whose_clock_is_an_hour_behind_is_followed_while_it_renews() {
    let c = Cluster::new("skew").await;
    let leases = c.api::<Lease>();
    // Another replica holds the Lease; its wall clock is an hour behind ours, so every
    // renewTime it writes is an hour old by our clock.
    let lease_duration = Duration::from_secs(2);
    let skewed = || Some(MicroTime(Timestamp::now() - SignedDuration::from_hours(1)));
    let held = Lease {
        metadata: ObjectMeta {
            name: Some(LEASE.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("skewed".into()),
            lease_duration_seconds: Some(lease_duration.as_secs() as i32),
            acquire_time: skewed(),
            renew_time: skewed(),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    };
    leases
        .create(&PostParams::default(), &held)
        .await
        .expect("create the Lease");
    let (candidate, _, _) = candidates(&c);
    let candidate = tokio::spawn(async move {
        candidate.acquire().await;
        Instant::now()
    });

    // The holder renews four times a second for two lease durations; each renewal finds it
    // still holding the Lease (a take-over would also make its stale replace fail with 409).
    let renew_until = Instant::now() + 2 * lease_duration;
    let mut last_renewal = Instant::now();
    while Instant::now() < renew_until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut lease = leases.get(LEASE).await.expect("read the Lease");
        let spec = lease.spec.as_mut().expect("spec");
        assert_eq!(
            spec.holder_identity.as_deref(),
            Some("skewed"),
            "the candidate took the Lease from a holder that renews it"
        );
        spec.renew_time = skewed();
        last_renewal = Instant::now();
        leases
            .replace(LEASE, &PostParams::default(), &lease)
            .await
            .expect("the holder renews (a conflict means the candidate wrote the Lease)");
    }
    assert!(!candidate.is_finished(), "the candidate took the Lease");

    // The holder stops: the candidate takes over one lease duration after the last change
    // it saw, on its own clock.
    let acquired = tokio::time::timeout(TIMEOUT, candidate)
        .await
        .expect("the candidate takes over")
        .expect("candidate task");
    let waited = acquired - last_renewal;
    println!("the candidate took the Lease {waited:?} after the last renewal");
    assert!(
        waited >= lease_duration,
        "took over {waited:?} after the last renewal"
    );
    assert!(
        waited <= lease_duration + 5 * SHORT.retry_period + Duration::from_secs(1),
        "took over {waited:?} after the last renewal"
    );
    let lease = leases.get(LEASE).await.expect("lease").spec.expect("spec");
    assert_eq!(lease.holder_identity.as_deref(), Some("pod-a"));
    assert_eq!(lease.lease_transitions, Some(1));
}

#[tokio::test]
async fn a_leader_whose_renewals_conflict_retries_and_keeps_leading() {
    let c = Cluster::new("conflict").await;
    let (a, _, leases) = candidates(&c);
    assert!(a.try_acquire_or_renew().await.expect("a"));
    // Same identity and Lease, but before each of its first three PUTs another writer
    // changes the Lease, so the real API server answers 409 Conflict. Three conflicts with
    // their re-reads fit the 3 s renew deadline even on a loaded machine (with SHORT's
    // 700 ms they did not, under 12 tests at once).
    const PATIENT: Timing = Timing {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(100),
    };
    let conflicts = Arc::new(AtomicUsize::new(0));
    let puts = Arc::new(AtomicUsize::new(0));
    let (inner, counted, put_count) = (c.client.clone(), conflicts.clone(), puts.clone());
    let writer = leases.clone();
    let racing = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let (inner, conflicts, puts, writer) = (
            inner.clone(),
            counted.clone(),
            put_count.clone(),
            writer.clone(),
        );
        async move {
            if req.method() == http::Method::PUT {
                let n = puts.fetch_add(1, Ordering::SeqCst);
                if n < 3 {
                    let touch =
                        json!({"metadata": {"annotations": {"test/touched": n.to_string()}}});
                    writer
                        .patch(LEASE, &PatchParams::default(), &Patch::Merge(&touch))
                        .await?;
                }
            }
            let resp = inner.send(req).await?;
            if resp.status() == http::StatusCode::CONFLICT {
                conflicts.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, kube::Error>(resp)
        }
    });
    let racing = LeaseLock::new(
        kube::Client::new(racing, "default"),
        &c.ns,
        LEASE,
        "pod-a",
        PATIENT,
    );
    let mut renewing = tokio::spawn(async move { racing.keep_renewing().await });
    // A leader that gave up on the first 409 would have returned long before this.
    let stepped_down = tokio::time::timeout(2 * PATIENT.lease_duration, &mut renewing).await;
    assert!(
        stepped_down.is_err(),
        "the leader stepped down: {stepped_down:?}"
    );
    assert_eq!(conflicts.load(Ordering::SeqCst), 3, "conflicts answered");
    assert!(
        puts.load(Ordering::SeqCst) > 3,
        "renewed after the conflicts"
    );
    let lease = leases.get(LEASE).await.expect("lease").spec.expect("spec");
    assert_eq!(lease.holder_identity.as_deref(), Some("pod-a"));
    renewing.abort();
}
