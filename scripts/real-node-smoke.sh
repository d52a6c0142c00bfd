#!/usr/bin/env bash
# Proves the real node of `CLUSTER_NODE=real scripts/cluster.sh up` with the project's own
# images, reaching pods only through the API server:
#   - PostgreSQL (localhost/scalable-api-operator/postgres:15, examples/postgres-dev.yaml with
#     that image) becomes Ready on a PersistentVolume;
#   - an api-server pod with its Redis sidecar (a native sidecar, as the operator makes
#     them) becomes Ready: real containers, readiness probes passing against the database,
#     which it finds by the Service name `postgres` (cluster DNS);
#   - /healthz and /readyz answer through the Service (services/proxy) and the pod (pods/proxy);
#   - from inside the api-server container (kubectl exec), the Service names resolve.
# Namespace real-node-smoke (Pod Security "restricted" enforced), deleted afterwards unless
# SMOKE_KEEP=1. Every wait is bounded (kubectl wait / rollout status with a timeout).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
eval "$("$ROOT/scripts/cluster.sh" env)"
[[ "${SCALABLE_TESTENV_NODE:-}" == real ]] || { echo "smoke: the cluster is not in real-node mode (CLUSTER_NODE=real scripts/cluster.sh up)" >&2; exit 1; }
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml")"
API_IMAGE="${API_IMAGE:-ghcr.io/scalable-dev/api-server:$version}"
REDIS_IMAGE="${REDIS_IMAGE:-localhost/scalable-api-operator/redis:7.0}"
POSTGRES_IMAGE="${POSTGRES_IMAGE:-localhost/scalable-api-operator/postgres:15}"
NS=real-node-smoke
k() { "$SCALABLE_TESTENV_BIN/kubectl" -n "$NS" "$@"; }
step() { echo "smoke: $*" >&2; }
start=$SECONDS

cleanup() {
  local rc=$?
  if ((rc != 0)); then
    step "FAILED; state of $NS:"
    k get pods,svc,pvc -o wide >&2 || true
    k describe pods >&2 || true
    k logs --all-containers --prefix -l app=smoke-api --tail=30 >&2 || true
  fi
  if [[ -z "${SMOKE_KEEP:-}" ]]; then
    "$SCALABLE_TESTENV_BIN/kubectl" delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

"$SCALABLE_TESTENV_BIN/kubectl" create namespace "$NS" --dry-run=client -o yaml \
  | "$SCALABLE_TESTENV_BIN/kubectl" apply -f - >/dev/null
"$SCALABLE_TESTENV_BIN/kubectl" label namespace "$NS" --overwrite \
  pod-security.kubernetes.io/enforce=restricted >/dev/null

step "PostgreSQL from $POSTGRES_IMAGE"
sed -e "s#image: docker.io/library/postgres:17#image: $POSTGRES_IMAGE#" \
  -e "s#imagePullPolicy: IfNotPresent#imagePullPolicy: Never#" "$ROOT/examples/postgres-dev.yaml" | k apply -f - >/dev/null
k rollout status statefulset/postgres --timeout=180s

step "api-server ($API_IMAGE) with a Redis sidecar ($REDIS_IMAGE)"
k apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: smoke-api}
spec:
  replicas: 1
  selector: {matchLabels: {app: smoke-api}}
  template:
    metadata: {labels: {app: smoke-api}}
    spec:
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        seccompProfile: {type: RuntimeDefault}
      initContainers:
      - name: cache
        image: $REDIS_IMAGE
        imagePullPolicy: Never
        restartPolicy: Always
        args: [--bind, 127.0.0.1, --port, "6379", --save, "", --appendonly, "no"]
        startupProbe:
          exec: {command: [redis-cli, -h, 127.0.0.1, ping]}
          periodSeconds: 1
          failureThreshold: 30
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
      containers:
      - name: api
        image: $API_IMAGE
        imagePullPolicy: Never
        env:
        - {name: PGHOST, value: postgres}
        - {name: PGPORT, value: "5432"}
        - {name: PGUSER, value: app}
        - {name: PGDATABASE, value: app}
        - {name: PGSSLMODE, value: disable}
        - name: PGPASSWORD
          valueFrom: {secretKeyRef: {name: postgres-dev, key: password}}
        - {name: REDIS_URL, value: "redis://127.0.0.1:6379"}
        - {name: PORT, value: "8080"}
        - {name: ADMIN_PORT, value: "9090"}
        ports:
        - {name: http, containerPort: 8080}
        - {name: admin, containerPort: 9090}
        readinessProbe:
          httpGet: {path: /readyz, port: admin}
          periodSeconds: 2
        livenessProbe:
          httpGet: {path: /healthz, port: admin}
          periodSeconds: 10
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
---
apiVersion: v1
kind: Service
metadata: {name: smoke-api}
spec:
  selector: {app: smoke-api}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: admin, port: 9090, targetPort: admin}
EOF
k rollout status deployment/smoke-api --timeout=180s
pod="$(k get pods -l app=smoke-api -o jsonpath='{.items[0].metadata.name}')"
k get pod "$pod" -o wide
k get pod "$pod" -o jsonpath='{range .status.initContainerStatuses[*]}{.name}: ready={.ready} started={.started} {.containerID}{"\n"}{end}{range .status.containerStatuses[*]}{.name}: ready={.ready} {.containerID}{"\n"}{end}'

step "through the API server"
out="$(k get --raw "/api/v1/namespaces/$NS/services/smoke-api:admin/proxy/healthz")"
echo "services/smoke-api:admin/proxy/healthz -> $out"
out="$(k get --raw "/api/v1/namespaces/$NS/services/smoke-api:admin/proxy/readyz")"
echo "services/smoke-api:admin/proxy/readyz -> $out"
out="$(k get --raw "/api/v1/namespaces/$NS/pods/$pod:9090/proxy/healthz")"
echo "pods/$pod:9090/proxy/healthz -> $out"

step "cluster DNS from inside the api container (kubectl exec)"
# The image has no resolver tool; glibc's getent does the lookup a program would.
for name in postgres "postgres.$NS.svc.cluster.local" kubernetes.default smoke-api; do
  printf '%s -> ' "$name"
  k exec "$pod" -c api -- getent hosts "$name"
done
step "passed in $((SECONDS - start)) s"
