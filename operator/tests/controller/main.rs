//! Controller scenarios on the real control plane of `scripts/cluster.sh`: kube-apiserver
//! with etcd, kube-controller-manager (garbage collector, Deployment, ReplicaSet, HPA),
//! kube-scheduler, kwok's fake nodes and metrics-server. `make test` starts it; see
//! tests/support/cluster.rs for how a test finds it.

#[path = "../support/audit.rs"]
mod audit;
#[path = "../support/cluster.rs"]
mod cluster;
#[path = "../support/history.rs"]
mod history;
#[path = "../support/sapi_fixture.rs"]
mod sapi_fixture;
#[path = "../support/token_kubeconfig.rs"]
mod token_kubeconfig;

mod autoscaling;
mod crds;
mod helm;
mod idle;
mod leader;
mod lifecycle;
mod monitoring;
mod namespaces;
mod ownership;
mod secrets;
mod status;
mod supervisor;
mod traffic;
