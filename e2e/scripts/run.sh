#!/usr/bin/env bash
# The whole kind end-to-end run (`make e2e`): create the cluster, build and load both images,
# install metrics-server and the operator chart, apply the dev Postgres and a ScalableApi,
# run the Rust e2e suite, export logs on failure, tear down (unless PRESERVE_CLUSTER=true).
# Needs Docker, kind, and cargo; helm and kubectl come from scripts/ensure-deps.sh.
# Environment (besides setup-cluster.sh's):
#   SKIP_BUILD=true          use images already built (e.g. by CI's docker build step)
#   OPERATOR_IMAGE/API_IMAGE image references (default ghcr.io/scalable-dev/...:<version>)
#   E2E_TEST_THREADS         scenarios run in parallel (default 3)
#   METRICS_SERVER_VERSION   default v0.7.2
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
export OPERATOR_IMAGE="${OPERATOR_IMAGE:-ghcr.io/scalable-dev/scalable-api-operator:$version}"
export API_IMAGE="${API_IMAGE:-ghcr.io/scalable-dev/api-server:$version}"
export E2E_KUBECONFIG="${E2E_KUBECONFIG:-$root/target/e2e/kubeconfig}"
export OPERATOR_NAMESPACE="${OPERATOR_NAMESPACE:-scalable-system}"
export E2E_OPERATOR_NAMESPACE="$OPERATOR_NAMESPACE"
export E2E_POSTGRES_NAMESPACE="${E2E_POSTGRES_NAMESPACE:-e2e-postgres}"
METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-v0.7.2}"
RELEASE="scalable-api-operator"
export E2E_OPERATOR_RELEASE="$RELEASE"
setup="$root/e2e/scripts/setup-cluster.sh"

scripts/ensure-deps.sh k8s
export PATH="$root/.tools/bin:$PATH"
k() { kubectl --kubeconfig "$E2E_KUBECONFIG" "$@"; }
step() { echo "=== $*" >&2; }

status=1
# shellcheck disable=SC2317 # invoked by the EXIT trap
finish() {
  if [ "$status" -ne 0 ]; then
    step "failed: exporting logs"
    "$setup" export-logs || true
  fi
  "$setup" teardown
}
trap finish EXIT

step "cluster"
"$setup" create

if [ "${SKIP_BUILD:-false}" != "true" ]; then
  step "images"
  scripts/docker-build.sh
fi
"$setup" load "$OPERATOR_IMAGE" "$API_IMAGE"

step "metrics-server $METRICS_SERVER_VERSION"
k apply -f "https://github.com/kubernetes-sigs/metrics-server/releases/download/$METRICS_SERVER_VERSION/components.yaml"
# kind's kubelets serve self-signed certificates.
if ! k -n kube-system get deployment metrics-server -o jsonpath='{.spec.template.spec.containers[0].args}' \
    | grep -q -- --kubelet-insecure-tls; then
  k -n kube-system patch deployment metrics-server --type=json \
    -p '[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--kubelet-insecure-tls"}]'
fi
k -n kube-system rollout status deployment/metrics-server --timeout=180s

step "operator chart (2 replicas: leader election is part of the test)"
helm --kubeconfig "$E2E_KUBECONFIG" upgrade --install "$RELEASE" charts/scalable-api-operator \
  --namespace "$OPERATOR_NAMESPACE" --create-namespace \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set-string image.tag="${OPERATOR_IMAGE##*:}" \
  --set image.pullPolicy=IfNotPresent \
  --set defaultApiImage.repository="${API_IMAGE%:*}" --set-string defaultApiImage.tag="${API_IMAGE##*:}" \
  --set replicaCount=2 --set logFormat=text --set-string 'logLevel=info\,operator=debug' \
  --wait --timeout 5m
k wait --for=condition=Established crd/scalableapis.scalable.dev --timeout=60s

step "dev Postgres and a ScalableApi in $E2E_POSTGRES_NAMESPACE"
k create namespace "$E2E_POSTGRES_NAMESPACE" --dry-run=client -o yaml | k apply -f -
k label namespace "$E2E_POSTGRES_NAMESPACE" --overwrite pod-security.kubernetes.io/enforce=restricted
k -n "$E2E_POSTGRES_NAMESPACE" apply -f examples/postgres-dev.yaml
k -n "$E2E_POSTGRES_NAMESPACE" rollout status statefulset/postgres --timeout=300s
k -n "$E2E_POSTGRES_NAMESPACE" apply -f examples/minimal.yaml
k -n "$E2E_POSTGRES_NAMESPACE" wait --for=condition=Ready scalableapi/users --timeout=300s
k get scalableapis -A

step "e2e tests"
if cargo test --locked -p e2e --test e2e -- --test-threads="${E2E_TEST_THREADS:-3}"; then
  status=0
fi
k get scalableapis -A || true
exit "$status"
