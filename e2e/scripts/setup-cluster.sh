#!/usr/bin/env bash
# Lifecycle of the cluster used by the end-to-end suite: kind on a Docker host, else the
# real node of scripts/cluster.sh (CLUSTER_NODE=real: containerd, kubelet, kube-proxy,
# CoreDNS on this machine, as root; docs/real-node.md).
#   e2e/scripts/setup-cluster.sh create        create the cluster (reused if it exists), write its kubeconfig
#   e2e/scripts/setup-cluster.sh load IMAGE..  load local images into every node
#   e2e/scripts/setup-cluster.sh export-logs   kind logs + operator logs + objects of every test namespace
#   e2e/scripts/setup-cluster.sh teardown      delete the cluster, unless PRESERVE_CLUSTER=true
# Environment:
#   KIND_CLUSTER_NAME  cluster name                   (default scalable-e2e)
#   K8S_VERSION        kindest/node tag               (default v1.37.0, kind v0.33.0's default)
#   KIND_NODE_IMAGE    full node image, e.g. pinned by digest (default kindest/node:$K8S_VERSION)
#   E2E_KUBECONFIG     kubeconfig written by create    (default target/e2e/kubeconfig)
#   E2E_ARTIFACTS      where export-logs writes        (default target/e2e/logs)
#   PRESERVE_CLUSTER   true keeps the cluster on teardown, to debug
#   OPERATOR_NAMESPACE namespace of the operator      (default scalable-system)
#   E2E_CLUSTER        kind or real                   (default kind when docker and kind are
#                                                     on PATH, else real)
#   E2E_CLUSTER_DIR    the real node's state folder   (default target/e2e/cluster)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KIND_CLUSTER_NAME="${KIND_CLUSTER_NAME:-scalable-e2e}"
K8S_VERSION="${K8S_VERSION:-v1.37.0}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:$K8S_VERSION}"
E2E_KUBECONFIG="${E2E_KUBECONFIG:-$root/target/e2e/kubeconfig}"
E2E_ARTIFACTS="${E2E_ARTIFACTS:-$root/target/e2e/logs}"
PRESERVE_CLUSTER="${PRESERVE_CLUSTER:-false}"
OPERATOR_NAMESPACE="${OPERATOR_NAMESPACE:-scalable-system}"
export PATH="$root/.tools/bin:$PATH"
if [ -z "${E2E_CLUSTER:-}" ]; then
  if command -v docker >/dev/null && command -v kind >/dev/null; then E2E_CLUSTER=kind; else E2E_CLUSTER=real; fi
fi
export E2E_CLUSTER
E2E_CLUSTER_DIR="${E2E_CLUSTER_DIR:-$root/target/e2e/cluster}"
real_cluster() { CLUSTER_DIR="$E2E_CLUSTER_DIR" CLUSTER_NODE=real "$root/scripts/cluster.sh" "$@"; }

log() { echo "setup-cluster: $*" >&2; }
need() {
  command -v "$1" >/dev/null || { log "error: '$1' is required ($2)"; exit 1; }
}

cluster_exists() {
  kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER_NAME"
}

create_real() {
  mkdir -p "$(dirname "$E2E_KUBECONFIG")"
  local state
  state="$(real_cluster status 2>/dev/null || true)"
  if grep -q '^kubelet running' <<<"$state"; then
    log "reusing the real node in $E2E_CLUSTER_DIR"
  else
    log "starting the control plane and a real node in $E2E_CLUSTER_DIR"
    real_cluster up
  fi
  cp "$E2E_CLUSTER_DIR/admin.kubeconfig" "$E2E_KUBECONFIG"
  chmod 600 "$E2E_KUBECONFIG"
  kubectl --kubeconfig "$E2E_KUBECONFIG" wait --for=condition=Ready nodes --all --timeout=180s
  log "kubeconfig: $E2E_KUBECONFIG"
}

create() {
  [ "$E2E_CLUSTER" = real ] && { create_real; return; }
  need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
  need docker "kind runs its nodes as Docker containers"
  mkdir -p "$(dirname "$E2E_KUBECONFIG")"
  if cluster_exists; then
    log "reusing cluster $KIND_CLUSTER_NAME"
  else
    log "creating cluster $KIND_CLUSTER_NAME with $KIND_NODE_IMAGE"
    kind create cluster --name "$KIND_CLUSTER_NAME" --image "$KIND_NODE_IMAGE" \
      --config "$root/e2e/kind-config.yaml" --wait 180s
  fi
  kind get kubeconfig --name "$KIND_CLUSTER_NAME" >"$E2E_KUBECONFIG"
  chmod 600 "$E2E_KUBECONFIG"
  kubectl --kubeconfig "$E2E_KUBECONFIG" wait --for=condition=Ready nodes --all --timeout=180s
  log "kubeconfig: $E2E_KUBECONFIG"
}

load() {
  if [ "$E2E_CLUSTER" = real ]; then
    [ "$#" -gt 0 ] || { log "usage: $0 load IMAGE..."; exit 2; }
    real_cluster import "$@"
    return
  fi
  need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
  [ "$#" -gt 0 ] || { log "usage: $0 load IMAGE..."; exit 2; }
  for image in "$@"; do
    log "loading $image into $KIND_CLUSTER_NAME"
    kind load docker-image "$image" --name "$KIND_CLUSTER_NAME"
  done
}

export_logs() {
  mkdir -p "$E2E_ARTIFACTS"
  if [ "$E2E_CLUSTER" = real ]; then
    [ -d "$E2E_CLUSTER_DIR/logs" ] || { log "no real node in $E2E_CLUSTER_DIR: nothing to export"; return 0; }
    log "exporting logs to $E2E_ARTIFACTS"
    mkdir -p "$E2E_ARTIFACTS/node"
    cp -r "$E2E_CLUSTER_DIR/logs/." "$E2E_ARTIFACTS/node/" 2>/dev/null || true
  else
    need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
    cluster_exists || { log "no cluster $KIND_CLUSTER_NAME: nothing to export"; return 0; }
    log "exporting logs to $E2E_ARTIFACTS"
    kind export logs "$E2E_ARTIFACTS/kind" --name "$KIND_CLUSTER_NAME" >/dev/null || true
  fi
  local k=(kubectl --kubeconfig "$E2E_KUBECONFIG")
  "${k[@]}" get nodes -o wide >"$E2E_ARTIFACTS/nodes.txt" 2>&1 || true
  "${k[@]}" get all,scalableapis,hpa,pdb,leases -A -o wide >"$E2E_ARTIFACTS/objects.txt" 2>&1 || true
  "${k[@]}" get events -A --sort-by=.lastTimestamp >"$E2E_ARTIFACTS/events.txt" 2>&1 || true
  "${k[@]}" -n "$OPERATOR_NAMESPACE" logs -l app.kubernetes.io/component=operator --all-containers \
    --prefix --tail=-1 >"$E2E_ARTIFACTS/operator.log" 2>&1 || true
  "${k[@]}" -n "$OPERATOR_NAMESPACE" logs -l app.kubernetes.io/component=operator --all-containers \
    --prefix --previous >"$E2E_ARTIFACTS/operator-previous.log" 2>&1 || true
  local ns
  for ns in $("${k[@]}" get namespaces -l e2e.scalable.dev/test -o name 2>/dev/null | cut -d/ -f2); do
    mkdir -p "$E2E_ARTIFACTS/namespaces/$ns"
    "${k[@]}" -n "$ns" get scalableapis,deployments,replicasets,pods,services,configmaps,hpa,pdb -o yaml \
      >"$E2E_ARTIFACTS/namespaces/$ns/objects.yaml" 2>&1 || true
    "${k[@]}" -n "$ns" describe scalableapis,pods >"$E2E_ARTIFACTS/namespaces/$ns/describe.txt" 2>&1 || true
    "${k[@]}" -n "$ns" logs -l app.kubernetes.io/managed-by=scalable-api-operator --all-containers \
      --prefix --tail=500 >"$E2E_ARTIFACTS/namespaces/$ns/pods.log" 2>&1 || true
  done
}

teardown() {
  if [ "$PRESERVE_CLUSTER" = "true" ]; then
    log "PRESERVE_CLUSTER=true: keeping the $E2E_CLUSTER cluster (kubectl --kubeconfig $E2E_KUBECONFIG ...)"
    return 0
  fi
  if [ "$E2E_CLUSTER" = real ]; then
    real_cluster down
    return
  fi
  need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
  if cluster_exists; then
    log "deleting cluster $KIND_CLUSTER_NAME"
    kind delete cluster --name "$KIND_CLUSTER_NAME"
  fi
}

cmd="${1:-}"
[ "$#" -gt 0 ] && shift
case "$cmd" in
  create) create ;;
  load) load "$@" ;;
  export-logs) export_logs ;;
  teardown) teardown ;;
  *) echo "usage: $0 create|load IMAGE...|export-logs|teardown" >&2; exit 2 ;;
esac
