//! `run`: the process around the controller. HTTP first (so probes answer while standing
//! by), then the leader Lease, then the controller until a signal or a lost Lease.
//!
//! Readiness means "this replica is initialised and can take over", not "this replica
//! leads": a standby that reported 503 would keep `helm install --wait` and rolling
//! updates of a two-replica Deployment waiting forever (controller-runtime and
//! kube-controller-manager behave the same way). Who leads is the
//! `leader_election_master_status` gauge.

use std::sync::Arc;

use kube::Client;
use prometheus_client::registry::Registry;

use crate::cli::RunArgs;
use crate::controller::{self, Settings};
use crate::error::{Error, Result};
use crate::hash_key;
use crate::http::{self, HttpState, Readiness};
use crate::leader::{LeaseLock, Timing};
use crate::metrics::Metrics;

/// Resolves on SIGTERM or Ctrl-C (used while standing by; the running controller uses
/// kube-runtime's own `shutdown_on_signal`).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn identity(args: &RunArgs) -> String {
    args.pod_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("scalable-api-operator-{:08x}", rand::random::<u32>()))
}

/// Runs the operator until SIGTERM/Ctrl-C (Ok) or until the leader Lease is lost (Err:
/// the process should exit so it restarts as a standby).
pub async fn run(args: RunArgs) -> Result<()> {
    // A contradictory command line fails before any connection is tried.
    args.watch_namespaces()?;
    let client = Client::try_default().await.map_err(Error::CreateClient)?;
    run_with(client, args, Timing::default()).await
}

/// `run` with a given client and Lease timing (the tests use the in-memory API server).
pub async fn run_with(client: Client, args: RunArgs, timing: Timing) -> Result<()> {
    let namespaces = args.watch_namespaces()?;
    // First, and on every replica (standbys too): all of them end up with the one key, so a
    // hand-over changes no hash and rolls no pod. A failure exits before anything started.
    let hash_key =
        hash_key::load_or_create(&client, &args.lease_namespace, hash_key::SECRET_NAME).await?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::default();
    let listener = http::bind(args.http_addr).await?;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let state = HttpState {
        registry: Arc::new(registry),
        readiness: readiness.clone(),
    };
    let server = tokio::spawn(http::serve(listener, state, async {
        // A dropped sender also stops the server.
        let _ = http_stopped.await;
    }));

    readiness.set(true);

    let identity = identity(&args);
    let lease = args.leader_election.then(|| {
        LeaseLock::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            timing,
        )
    });
    if let Some(lock) = &lease {
        metrics.set_leader(lock.name(), false);
        tracing::info!(identity = %identity, lease = %args.lease_name, "waiting for the leader Lease");
        tokio::select! {
            () = lock.acquire() => {},
            () = shutdown_signal() => {
                readiness.set(false);
                let _ = stop_http.send(());
                return Ok(());
            }
        }
        metrics.set_leader(lock.name(), true);
    }

    let apis = controller::optional_apis(&client).await;
    let settings = Settings {
        namespaces: namespaces.clone(),
        pod_defaults: args.pod.pod_defaults(),
        apis,
        instance: identity,
        resync_interval: args.resync_interval(),
        hash_key,
    };
    let (ctrl, ctx) = controller::build(client, settings, metrics.clone());
    let ctrl = ctrl.shutdown_on_signal();
    metrics.controller_started(controller::MAX_CONCURRENT_RECONCILES);
    let watched = match namespaces.as_slice() {
        [] => "<all>".to_owned(),
        some => some.join(","),
    };
    tracing::info!(namespaces = %watched, "starting the controller");
    let result = match &lease {
        Some(lock) => tokio::select! {
            () = controller::drive(ctrl, ctx) => Ok(()),
            e = lock.keep_renewing() => Err(e),
        },
        None => {
            controller::drive(ctrl, ctx).await;
            Ok(())
        }
    };
    readiness.set(false);
    if let Some(lock) = &lease {
        metrics.set_leader(lock.name(), false);
    }
    if let (Ok(()), Some(lock)) = (&result, &lease) {
        match lock.release().await {
            Ok(()) => tracing::info!("released the leader Lease"),
            Err(e) => tracing::warn!(error = %e, "releasing the leader Lease failed"),
        }
    }
    let _ = stop_http.send(());
    match server.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server ended with an error"),
        Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    result
}
