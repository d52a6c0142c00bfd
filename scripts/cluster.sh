#!/usr/bin/env bash
# A real Kubernetes control plane on this machine, from the programs scripts/testenv-build.sh
# builds: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (fake kubelet
# for CLUSTER_NODES nodes) and metrics-server reading kwok's simulated usage.
#
#   scripts/cluster.sh up     build what is missing, start everything, wait until healthy
#   scripts/cluster.sh env    print the exports that point kubectl and the tests at it
#   scripts/cluster.sh down   stop exactly what `up` started (by PID) and remove its state
#   scripts/cluster.sh status one line per component: running or not
#   scripts/cluster.sh import IMAGE...  (real node) copy podman images into its containerd
#
# CLUSTER_NODE=real `up` runs a real node instead of kwok: containerd + runc, a kubelet,
# kube-proxy, CNI bridge networking and CoreDNS, with the project's images imported
# (scripts/cluster-node.sh, docs/real-node.md; root only). `down`, `env` and `status` read the
# mode from the state folder. The default, CLUSTER_NODE=kwok, is unchanged.
#
# Every listener binds 127.0.0.1 on a free port (or CLUSTER_<COMPONENT>_PORT). Nodes and
# pods get fake addresses; nothing here dials them (kwok mode). State lives in CLUSTER_DIR (default
# .cluster in the checkout): PKI, kubeconfigs, logs, pids, etcd data. CLUSTER_KEEP_ON_FAILURE=1
# leaves a component that did not become healthy running, for inspection.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Absolute: the kubeconfigs name files under it, and a relative path would resolve twice.
D="$(realpath -m "${CLUSTER_DIR:-$ROOT/.cluster}")"
NODES="${CLUSTER_NODES:-2}"
# Seconds each component gets to become healthy.
HEALTH_TIMEOUT="${CLUSTER_HEALTH_TIMEOUT:-120}"
KWOK_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok metrics-server)
COMPONENTS=("${KWOK_COMPONENTS[@]}")
# shellcheck source=scripts/cluster-node.sh
source "$ROOT/scripts/cluster-node.sh"
# use_mode kwok|real: the components of that mode (stop_all and status walk them).
use_mode() {
  MODE="$1"
  case "$MODE" in
    kwok) COMPONENTS=("${KWOK_COMPONENTS[@]}") ;;
    real) COMPONENTS=("${REAL_COMPONENTS[@]}") ;;
    *) echo "cluster: CLUSTER_NODE must be kwok or real, not '$MODE'" >&2; exit 2 ;;
  esac
}
# The mode of the cluster in the state folder (kwok when it recorded none).
state_mode() { if [[ -f "$D/mode" ]]; then cat "$D/mode"; else echo kwok; fi; }
use_mode "$(state_mode)"

# Marks a folder as this script's state, so `down` never removes anything else.
MARKER=.scalable-testenv

remove_state() {
  [[ -e "$D" ]] || return 0
  [[ -f "$D/$MARKER" ]] || die "$D exists but was not made by this script; not removing it"
  rm -rf "$D"
}

die() { echo "cluster: $*" >&2; exit 1; }

log_tail() { # component: its log's last lines, to stderr
  if [[ -f "$D/logs/$1.log" ]]; then
    echo "--- last lines of $D/logs/$1.log ---" >&2
    tail -n 25 "$D/logs/$1.log" >&2
  fi
}

fail() { # component message: stop what was started, show the component's log
  local c="$1"; shift
  echo "cluster: $c: $*" >&2
  log_tail "$c"
  if [[ -n "${CLUSTER_KEEP_ON_FAILURE:-}" ]]; then
    echo "cluster: CLUSTER_KEEP_ON_FAILURE is set: left running for inspection; state in $D" >&2
  else
    stop_all >/dev/null 2>&1 || true
    if [[ "$MODE" == real ]]; then node_teardown >/dev/null 2>&1 || true; fi
  fi
  exit 1
}

# A component's pid is alive and still the process `up` started: its command line names the
# state folder (so a pid reused after a crash or reboot is never signalled).
pid_alive() {
  local pid
  [[ -f "$D/pids/$1" ]] || return 1
  pid="$(cat "$D/pids/$1")"
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$D/"
}

# ---------------------------------------------------------------------------------------
# Ports

port_taken() { # port: true when something already listens on 127.0.0.1:port
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
PY
}

PICKED=" "
# pick_port NAME: sets NAME_PORT to CLUSTER_NAME_PORT if given (it must be free), else to a
# free port not handed out before in this run.
pick_port() {
  local var="CLUSTER_${1}_PORT" p
  p="${!var:-}"
  if [[ -n "$p" ]]; then
    port_taken "$p" && die "port $p ($var) is already taken on 127.0.0.1; free it or choose another"
  else
    while :; do
      p="$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')"
      [[ "$PICKED" == *" $p "* ]] || break
    done
  fi
  PICKED+="$p "
  printf -v "${1}_PORT" '%s' "$p"
}

# ---------------------------------------------------------------------------------------
# PKI: one cluster CA for servers, clients and kubelet-facing certs; a front-proxy CA for
# the aggregation layer (metrics.k8s.io); a key pair that signs ServiceAccount tokens.

cert() { # name subject extensions [ca]
  local name="$1" subj="$2" ext="$3" ca="${4:-ca}"
  openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$D/pki/$name.key" \
    -out "$D/pki/$name.csr" 2>/dev/null
  printf '%b\n' "$ext" >"$D/pki/$name.ext"
  openssl x509 -req -in "$D/pki/$name.csr" -CA "$D/pki/$ca.crt" -CAkey "$D/pki/$ca.key" \
    -CAcreateserial -days 30 -extfile "$D/pki/$name.ext" -out "$D/pki/$name.crt" 2>/dev/null
}

make_pki() {
  mkdir -p "$D/pki"
  local ca
  for ca in ca front-proxy-ca; do
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=scalable-testenv-$ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$D/pki/$ca.key" -out "$D/pki/$ca.crt" 2>/dev/null
  done
  local san_server="subjectAltName=IP:127.0.0.1,DNS:localhost"
  local san_api="$san_server"
  # Real mode: pods reach the API server through the kubernetes Service's ClusterIP and the
  # relay on the bridge's address.
  if [[ "$MODE" == real ]]; then san_api+=",IP:10.96.0.1,IP:$NODE_GW"; fi
  cert apiserver /CN=kube-apiserver \
    "$san_api,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth"
  cert admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"
  cert kwok /CN=kwok "$san_server\nextendedKeyUsage=serverAuth"
  cert metrics-server /CN=metrics-server \
    "$san_server,DNS:metrics-server.kube-system.svc\nextendedKeyUsage=serverAuth"
  cert front-proxy-client /CN=front-proxy-client "extendedKeyUsage=clientAuth" front-proxy-ca
  openssl genrsa -out "$D/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$D/pki/sa.key" -pubout -out "$D/pki/sa.pub" 2>/dev/null
}

write_kubeconfig() {
  cat >"$D/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: scalable-testenv
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $D/pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $D/pki/admin.crt
    client-key: $D/pki/admin.key
contexts:
- name: scalable-testenv
  context: {cluster: scalable-testenv, user: admin}
current-context: scalable-testenv
EOF
}

# ---------------------------------------------------------------------------------------
# Processes

start() { # component command...: in the background, log + pid. No setsid: it forks when
  # the caller leads a process group, and the pid recorded would be the wrong one.
  local c="$1"; shift
  "$@" >"$D/logs/$c.log" 2>&1 </dev/null &
  echo $! >"$D/pids/$c"
}

wait_healthy() { # component check-command...: until it succeeds, the process dies, or time runs out
  local c="$1"; shift
  local deadline=$((SECONDS + HEALTH_TIMEOUT))
  # kill -0, not pid_alive: until the forked shell has exec'd, /proc/PID/cmdline is still
  # this script's, and a loaded machine can check in that moment.
  local pid
  pid="$(cat "$D/pids/$c")"
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || fail "$c" "exited before becoming healthy"
    ((SECONDS < deadline)) || fail "$c" "not healthy after ${HEALTH_TIMEOUT} s (check: $*)"
    sleep 0.2
  done
  echo "cluster: $c healthy"
}

https_ok() { # url: 200 with the admin certificate
  curl -fsS --max-time 5 --cacert "$D/pki/ca.crt" --cert "$D/pki/admin.crt" \
    --key "$D/pki/admin.key" "$1"
}

kctl() { "$K8S_BIN/kubectl" --kubeconfig="$D/admin.kubeconfig" "$@"; }

# The process exists and has not exited: a zombie (exited, not yet reaped by whichever init
# adopted it after `up` returned) counts as stopped.
running() {
  local st
  st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [[ -n "$st" && "$st" != Z ]]
}

stop_all() {
  local i c pid
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    c="${COMPONENTS[i]}"
    [[ -f "$D/pids/$c" ]] || continue
    pid="$(cat "$D/pids/$c")"
    if pid_alive "$c"; then
      if [[ "$c" == containerd ]]; then node_kill_pods; fi
      kill -TERM "$pid" 2>/dev/null || true
      local deadline=$((SECONDS + 15))
      while running "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
      echo "cluster: stopped $c (pid $pid)"
    fi
    rm -f "$D/pids/$c"
  done
}

# ---------------------------------------------------------------------------------------
# Configuration written at start-up

# kwok's stages and metrics definitions, read from kwok's own module in the Go module cache
# (nothing of kwok is copied into this repository).
kwok_config() {
  local dir
  dir="$(cd "$ROOT/testenv/kwok" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  [[ -d "$dir/kustomize" ]] || die "kwok's module source is not in the Go module cache ($dir)"
  local f
  for f in stage/node/fast/node-initialize.yaml \
    stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    stage/pod/fast/pod-ready.yaml stage/pod/fast/pod-complete.yaml \
    stage/pod/fast/pod-delete.yaml metrics/resource/metrics-resource.yaml \
    metrics/usage/usage-from-annotation.yaml; do
    cat "$dir/kustomize/$f"
    echo "---"
  done
}

node_json() { # index
  local name="kwok-node-$1"
  cat <<EOF
{"apiVersion": "v1", "kind": "Node",
 "metadata": {"name": "$name",
   "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0",
     "metrics.k8s.io/resource-metrics-path": "/metrics/nodes/$name/metrics/resource"},
   "labels": {"kubernetes.io/hostname": "$name", "kubernetes.io/os": "linux",
     "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": "zone-$(($1 % 2))",
     "type": "kwok"}},
 "status": {
   "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "5000"},
   "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "5000"},
   "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "$name"}]}}
EOF
}

# The aggregation layer reaches metrics-server, a process on 127.0.0.1, through an
# ExternalName Service (Endpoints may not point at loopback), as kwokctl does.
metrics_apiservice() {
  local ca
  ca="$(base64 -w0 <"$D/pki/ca.crt")"
  cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec: {type: ExternalName, externalName: 127.0.0.1}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  caBundle: $ca
  service: {name: metrics-server, namespace: kube-system, port: $METRICS_PORT}
EOF
}

# ---------------------------------------------------------------------------------------

up() {
  if pid_alive kube-apiserver; then
    die "already up in $D (run: scripts/cluster.sh down, or set CLUSTER_DIR for a second one)"
  fi
  command -v openssl >/dev/null || die "openssl is needed"
  command -v curl >/dev/null || die "curl is needed"
  local want="${CLUSTER_NODE:-kwok}" bins build_flags=() nbins=4
  use_mode "$want" # validates it
  if [[ "$want" == real ]]; then build_flags=(--node); nbins=6; fi
  bins="$("$ROOT/scripts/testenv-build.sh" "${build_flags[@]}" | tail -n "$nbins")" || die "building the control plane failed (see above)"
  ETCD_BIN="$(sed -n 1p <<<"$bins")"
  K8S_BIN="$(sed -n 2p <<<"$bins")"
  KWOK_BIN="$(sed -n 3p <<<"$bins")"
  MS_BIN="$(sed -n 4p <<<"$bins")"
  NODE_BIN="$(sed -n 5p <<<"$bins")"
  COREDNS_BIN="$(sed -n 6p <<<"$bins")"
  COREDNS_VERSION="${COREDNS_BIN##*/}"

  # Leftovers of an earlier run whose API server died: stop what still runs (in the mode it
  # ran in), start afresh.
  use_mode "$(state_mode)"
  if [[ -d "$D/pids" ]]; then stop_all >/dev/null 2>&1 || true; fi
  if [[ "$MODE" == real ]]; then node_teardown >/dev/null 2>&1 || true; fi
  remove_state
  use_mode "$want"
  if [[ "$MODE" == real ]]; then node_preflight; fi
  mkdir -p "$D/logs" "$D/pids"
  touch "$D/$MARKER"
  echo "$MODE" >"$D/mode"
  pick_port ETCD
  pick_port ETCD_PEER
  pick_port APISERVER
  pick_port KCM
  pick_port SCHEDULER
  pick_port KWOK
  pick_port METRICS
  if [[ "$MODE" == real ]]; then
    pick_port KUBELET
    pick_port KUBELET_HEALTHZ
    pick_port KUBE_PROXY_HEALTHZ
    pick_port KUBE_PROXY_METRICS
  fi
  make_pki
  write_kubeconfig
  # Real mode: the API server advertises the relay on the bridge (the kubernetes Service's
  # endpoint), authorises kubelets as nodes, and calls kubelets with a client certificate.
  local api_mode_flags=(--advertise-address=127.0.0.1 --endpoint-reconciler-type=none --authorization-mode=RBAC)
  if [[ "$MODE" == real ]]; then
    node_pki
    node_network_up
    # shellcheck disable=SC2054 # Node,RBAC is one flag value
    api_mode_flags=(--advertise-address="$NODE_GW" --endpoint-reconciler-type=lease
      --authorization-mode=Node,RBAC --kubelet-preferred-address-types=InternalIP
      --kubelet-client-certificate="$D/pki/admin.crt" --kubelet-client-key="$D/pki/admin.key")
  fi

  start etcd "$ETCD_BIN/etcd" --name=testenv --data-dir="$D/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="testenv=http://127.0.0.1:$ETCD_PEER_PORT" \
    --listen-metrics-urls="" --unsafe-no-fsync=true --log-level=warn
  wait_healthy etcd curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"

  # Requests made with ServiceAccount tokens (the operator processes of the tests; the
  # control plane's own components use the admin certificate) go to an audit log, so a test
  # can tell which process wrote what and when.
  cat >"$D/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts"]
- level: None
EOF
  # Default admission plugins (PodSecurity among them), RBAC, ServiceAccount tokens signed
  # by sa.key so TokenRequest works, the aggregation layer's front-proxy client.
  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 "${api_mode_flags[@]}" --secure-port="$APISERVER_PORT" \
    --cert-dir="$D/pki" --tls-cert-file="$D/pki/apiserver.crt" \
    --tls-private-key-file="$D/pki/apiserver.key" --client-ca-file="$D/pki/ca.crt" \
    --allow-privileged=true \
    --service-cluster-ip-range=10.96.0.0/16 \
    --service-account-issuer="https://127.0.0.1:$APISERVER_PORT" \
    --service-account-key-file="$D/pki/sa.pub" \
    --service-account-signing-key-file="$D/pki/sa.key" \
    --proxy-client-cert-file="$D/pki/front-proxy-client.crt" \
    --proxy-client-key-file="$D/pki/front-proxy-client.key" \
    --requestheader-client-ca-file="$D/pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --audit-policy-file="$D/audit-policy.yaml" --audit-log-path="$D/logs/audit.log" \
    --audit-log-format=json --audit-log-maxsize=4096 \
    --max-requests-inflight=2000 --max-mutating-requests-inflight=1000
  wait_healthy kube-apiserver https_ok "https://127.0.0.1:$APISERVER_PORT/readyz"

  local common=(--kubeconfig="$D/admin.kubeconfig"
    --authentication-kubeconfig="$D/admin.kubeconfig"
    --authorization-kubeconfig="$D/admin.kubeconfig"
    "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"
    --bind-address=127.0.0.1 --leader-elect=false)
  # Every default controller (garbage collector, deployment, replicaset, HPA, namespace,
  # serviceaccount, token...); the HPA syncs every second and scales down without the
  # 5-minute stabilisation, so a test sees it act in seconds.
  start kube-controller-manager "$K8S_BIN/kube-controller-manager" "${common[@]}" \
    --secure-port="$KCM_PORT" --controllers='*' \
    --root-ca-file="$D/pki/ca.crt" --service-account-private-key-file="$D/pki/sa.key" \
    --use-service-account-credentials=false \
    --kube-api-qps=1000 --kube-api-burst=2000 \
    --horizontal-pod-autoscaler-sync-period=1s \
    --horizontal-pod-autoscaler-downscale-stabilization=0s \
    --horizontal-pod-autoscaler-cpu-initialization-period=10s \
    --horizontal-pod-autoscaler-initial-readiness-delay=1s
  start kube-scheduler "$K8S_BIN/kube-scheduler" "${common[@]}" \
    --secure-port="$SCHEDULER_PORT" --kube-api-qps=1000 --kube-api-burst=2000
  wait_healthy kube-controller-manager curl -fsSk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz"
  wait_healthy kube-scheduler curl -fsSk --max-time 2 "https://127.0.0.1:$SCHEDULER_PORT/healthz"

  if [[ "$MODE" == real ]]; then
    # The relay's argv[0] names the state folder, so pid_alive knows it for ours.
    # shellcheck disable=SC2016 # expanded by the inner bash
    start apiserver-relay bash -c 'exec -a "socat-relay $1/" socat "TCP-LISTEN:$2,bind=$3,fork,reuseaddr" "TCP:127.0.0.1:$2"' \
      relay "$D" "$APISERVER_PORT" "$NODE_GW"
    wait_healthy apiserver-relay curl -fsS --max-time 2 --cacert "$D/pki/ca.crt" \
      --cert "$D/pki/admin.crt" --key "$D/pki/admin.key" "https://$NODE_GW:$APISERVER_PORT/readyz"
    node_images_podman
    node_start_containerd
    node_images_import
    node_start_kubelet
    node_start_kube_proxy
  else
    kwok_config >"$D/kwok.yaml"
    start kwok "$KWOK_BIN/kwok" --kubeconfig="$D/admin.kubeconfig" --config="$D/kwok.yaml" \
      --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
      --manage-nodes-with-label-selector= --manage-single-node= \
      --node-ip=127.0.0.1 --node-port="$KWOK_PORT" --server-address="127.0.0.1:$KWOK_PORT" \
      --tls-cert-file="$D/pki/kwok.crt" --tls-private-key-file="$D/pki/kwok.key" \
      --cidr=10.244.0.0/16 --node-lease-duration-seconds=40
    wait_healthy kwok curl -fsS --max-time 2 --cacert "$D/pki/ca.crt" "https://127.0.0.1:$KWOK_PORT/healthz"
    local i
    for ((i = 0; i < NODES; i++)); do
      node_json "$i" | kctl create -f - >/dev/null || fail kwok "creating node kwok-node-$i failed"
    done
    wait_healthy kwok kctl wait --for=condition=Ready node --all --timeout=2s
  fi

  start metrics-server "$MS_BIN/metrics-server" --kubeconfig="$D/admin.kubeconfig" \
    --authentication-kubeconfig="$D/admin.kubeconfig" \
    --authorization-kubeconfig="$D/admin.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$METRICS_PORT" \
    --tls-cert-file="$D/pki/metrics-server.crt" \
    --tls-private-key-file="$D/pki/metrics-server.key" \
    --kubelet-certificate-authority="$D/pki/ca.crt" \
    --kubelet-preferred-address-types=InternalIP --kubelet-use-node-status-port \
    --metric-resolution=10s --kubelet-request-timeout=5s
  metrics_apiservice | kctl apply -f - >/dev/null || fail metrics-server "registering the APIService failed"
  # Node metrics appear only once a pod uses something; an answer proves the aggregation path.
  wait_healthy metrics-server kctl get --raw /apis/metrics.k8s.io/v1beta1/nodes

  # Pods need the namespace's default ServiceAccount, made by the controller-manager.
  wait_healthy kube-controller-manager kctl -n default get serviceaccount default
  if [[ "$MODE" == real ]]; then node_start_coredns; fi

  # The Gateway API's CRDs (the release testenv/gateway-api pins), so that HTTPRoutes are
  # served as on a cluster that has them. The module comes from the Go proxy (its cache).
  local gw
  gw="$(cd "$ROOT/testenv/gateway-api" && go mod download -json sigs.k8s.io/gateway-api \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')" || true
  [[ -n "$gw" && -d "$gw/config/crd/standard" ]] || fail kube-apiserver "downloading the Gateway API module failed"
  for crd in gatewayclasses gateways httproutes; do
    kctl apply --server-side -f "$gw/config/crd/standard/gateway.networking.k8s.io_$crd.yaml" >/dev/null \
      || fail kube-apiserver "installing the Gateway API CRD $crd failed"
  done
  wait_healthy kube-apiserver kctl wait --for=condition=Established --timeout=2s crd/httproutes.gateway.networking.k8s.io
  # prometheus-operator's PodMonitor CRD (testenv/prometheus-operator pins the release).
  local po
  po="$(cd "$ROOT/testenv/prometheus-operator" && go mod download -json github.com/prometheus-operator/prometheus-operator \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')" || true
  [[ -n "$po" && -d "$po/example/prometheus-operator-crd" ]] || fail kube-apiserver "downloading the prometheus-operator module failed"
  kctl apply --server-side -f "$po/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml" >/dev/null \
    || fail kube-apiserver "installing the PodMonitor CRD failed"
  wait_healthy kube-apiserver kctl wait --for=condition=Established --timeout=2s crd/podmonitors.monitoring.coreos.com

  cat >"$D/env" <<EOF
export KUBECONFIG=$D/admin.kubeconfig
export SCALABLE_TESTENV=$D
export SCALABLE_TESTENV_BIN=$K8S_BIN
EOF
  if [[ "$MODE" == real ]]; then
    echo "export SCALABLE_TESTENV_NODE=real" >>"$D/env"
    echo "cluster: up (real node $NODE_NAME: containerd, kubelet, kube-proxy, CoreDNS; API server https://127.0.0.1:$APISERVER_PORT); state in $D"
  else
    echo "cluster: up ($NODES kwok nodes, API server https://127.0.0.1:$APISERVER_PORT); state in $D"
  fi
  echo "cluster: use it with: eval \"\$(scripts/cluster.sh env)\""
}

env_cmd() {
  if [[ ! -f "$D/env" ]] || ! pid_alive kube-apiserver; then
    die "not up in $D (run: scripts/cluster.sh up)"
  fi
  cat "$D/env"
}

status() {
  local c
  for c in "${COMPONENTS[@]}"; do
    if pid_alive "$c"; then echo "$c running (pid $(cat "$D/pids/$c"))"; else echo "$c not running"; fi
  done
}

down() {
  if [[ ! -d "$D" ]]; then echo "cluster: nothing to stop in $D"; return 0; fi
  [[ -d "$D/pids" ]] && stop_all
  if [[ "$MODE" == real ]]; then
    NODE_BIN="$("$ROOT/scripts/testenv-build.sh" --print --node 2>/dev/null | sed -n 5p)" || true
    node_teardown
    if findmnt -rn -o TARGET | grep -qF "$D/"; then
      die "mounts under $D remain (findmnt | grep $D); not removing it"
    fi
  fi
  remove_state
  echo "cluster: down; removed $D"
}

# import IMAGE...: copies images from podman into the real node's containerd (after a
# rebuild; `up` imports the project's images itself).
import_cmd() {
  if [[ "$MODE" != real ]] || ! pid_alive containerd; then
    die "no real node is up in $D (CLUSTER_NODE=real scripts/cluster.sh up)"
  fi
  (($# > 0)) || die "usage: scripts/cluster.sh import IMAGE..."
  podman_ save -m --format docker-archive "$@" | ctr_ images import --snapshotter overlayfs - >/dev/null \
    || die "importing $* failed"
  echo "cluster: imported $*"
}

case "${1:-}" in
  up) up ;;
  import) shift; import_cmd "$@" ;;
  env) env_cmd ;;
  down) down ;;
  status) status ;;
  *) echo "usage: scripts/cluster.sh up|env|down|status|import IMAGE..." >&2; exit 2 ;;
esac
