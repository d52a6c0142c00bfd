#!/usr/bin/env bash
# The whole end-to-end run (`make e2e`): create the cluster, build and load both images,
# install metrics-server and the operator chart, apply the dev Postgres and a ScalableApi,
# run the Rust e2e suite, export logs on failure, tear down (unless PRESERVE_CLUSTER=true).
# On a Docker host: kind (needs Docker, kind and cargo). Elsewhere (E2E_CLUSTER=real, the
# default without docker/kind): the real node of scripts/cluster.sh on this machine, as root,
# with the images built by podman (scripts/images.sh) and imported into its containerd;
# metrics-server runs with the control plane there. helm and kubectl come from
# scripts/ensure-deps.sh.
# Environment (besides setup-cluster.sh's):
#   SKIP_BUILD=true          use images already built (e.g. by CI's docker build step)
#   OPERATOR_IMAGE/API_IMAGE image references (default ghcr.io/scalable-dev/...:<version>)
#   E2E_TEST_THREADS         scenarios run in parallel (default 3)
#   METRICS_SERVER_VERSION   default v0.7.2 (kind only)
#   E2E_CLUSTER              kind or real (see setup-cluster.sh)
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
REDIS_IMAGE="${REDIS_IMAGE:-localhost/scalable-api-operator/redis:7.0}"
POSTGRES_IMAGE="${POSTGRES_IMAGE:-localhost/scalable-api-operator/postgres:15}"
if [ -z "${E2E_CLUSTER:-}" ]; then
  if command -v docker >/dev/null && command -v kind >/dev/null; then E2E_CLUSTER=kind; else E2E_CLUSTER=real; fi
fi
export E2E_CLUSTER
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

chart_images=()
postgres_manifest() { cat examples/postgres-dev.yaml; }
if [ "$E2E_CLUSTER" = real ]; then
  # No registry: the images podman built (scripts/images.sh), also for the cache sidecar
  # and the dev Postgres.
  if [ "${SKIP_BUILD:-false}" != "true" ]; then
    step "images (podman)"
    scripts/images.sh build
  fi
  "$setup" load "$OPERATOR_IMAGE" "$API_IMAGE" "$REDIS_IMAGE" "$POSTGRES_IMAGE"
  chart_images=(--set defaultCacheImage="$REDIS_IMAGE")
  postgres_manifest() {
    sed -e "s#image: docker.io/library/postgres:17#image: $POSTGRES_IMAGE#" \
      -e "s#imagePullPolicy: IfNotPresent#imagePullPolicy: Never#" examples/postgres-dev.yaml
  }
else
  if [ "${SKIP_BUILD:-false}" != "true" ]; then
    step "images"
    scripts/docker-build.sh
  fi
  "$setup" load "$OPERATOR_IMAGE" "$API_IMAGE"
fi

if [ "$E2E_CLUSTER" = real ]; then
  step "metrics-server: runs with the control plane (scripts/cluster.sh)"
  k get --raw /apis/metrics.k8s.io/v1beta1/nodes >/dev/null
else
  step "metrics-server $METRICS_SERVER_VERSION"
  k apply -f "https://github.com/kubernetes-sigs/metrics-server/releases/download/$METRICS_SERVER_VERSION/components.yaml"
  # kind's kubelets serve self-signed certificates.
  if ! k -n kube-system get deployment metrics-server -o jsonpath='{.spec.template.spec.containers[0].args}' \
      | grep -q -- --kubelet-insecure-tls; then
    k -n kube-system patch deployment metrics-server --type=json \
      -p '[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--kubelet-insecure-tls"}]'
  fi
  k -n kube-system rollout status deployment/metrics-server --timeout=180s
fi

step "operator chart (2 replicas: leader election is part of the test)"
helm --kubeconfig "$E2E_KUBECONFIG" upgrade --install "$RELEASE" charts/scalable-api-operator \
  --namespace "$OPERATOR_NAMESPACE" --create-namespace \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set-string image.tag="${OPERATOR_IMAGE##*:}" \
  --set image.pullPolicy=IfNotPresent \
  --set defaultApiImage.repository="${API_IMAGE%:*}" --set-string defaultApiImage.tag="${API_IMAGE##*:}" \
  "${chart_images[@]}" \
  --set replicaCount=2 --set logFormat=text --set-string 'logLevel=info\,operator=debug' \
  --wait --timeout 5m
k wait --for=condition=Established crd/scalableapis.scalable.dev --timeout=60s

step "dev Postgres and a ScalableApi in $E2E_POSTGRES_NAMESPACE"
k create namespace "$E2E_POSTGRES_NAMESPACE" --dry-run=client -o yaml | k apply -f -
k label namespace "$E2E_POSTGRES_NAMESPACE" --overwrite pod-security.kubernetes.io/enforce=restricted
postgres_manifest | k -n "$E2E_POSTGRES_NAMESPACE" apply -f -
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
