# shellcheck shell=bash
# The real node of scripts/cluster.sh (CLUSTER_NODE=real), sourced by it: containerd + runc,
# a kubelet, kube-proxy (iptables mode), CoreDNS as a Deployment, CNI bridge networking, and
# the project's images imported into containerd. See docs/real-node.md.
#
# Everything lives on this machine and is removed by `down`:
# - the bridge $NODE_BRIDGE (gateway $NODE_GW on $NODE_POD_CIDR), created here, deleted on down;
# - pods' network namespaces (made by containerd's CNI, named in $D/node/netns on down);
# - the filter chains SCALABLE-NODE-IN / SCALABLE-NODE-FWD (and their jumps), which stop
#   anything but this machine's own interfaces from reaching the pod network or the relay,
#   and stop pod traffic from leaving through any other interface; kube-proxy's KUBE-* chains
#   (kube-proxy --cleanup);
# - containerd's root, state and socket, the kubelet's root dir and pod logs, all under $D;
# - the kubepods cgroups the kubelet makes (only when up found none).
# Servers on the host bind 127.0.0.1, except the one relay that lets pods reach the API
# server: socat on $NODE_GW:$APISERVER_PORT (the bridge's own address) to 127.0.0.1.

NODE_POD_CIDR="${CLUSTER_POD_CIDR:-10.244.0.0/24}"
NODE_GW="${NODE_POD_CIDR%.*}.1"
NODE_BRIDGE="${CLUSTER_BRIDGE:-scalable-br0}"
NODE_NAME="${CLUSTER_NODE_NAME:-real-node-0}"
NODE_DNS_IP=10.96.0.10
NODE_CNI_NETWORK=scalable-testenv
CTR_NS=k8s.io
# shellcheck disable=SC2034 # used by cluster.sh's use_mode
REAL_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler apiserver-relay
  containerd kubelet kube-proxy metrics-server)
PAUSE_SRC="$ROOT/testenv/pause/pause.c"

version_of_root() { sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml"; }
PROJECT_VERSION="$(version_of_root)"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-ghcr.io/scalable-dev/scalable-api-operator:$PROJECT_VERSION}"
API_IMAGE="${API_IMAGE:-ghcr.io/scalable-dev/api-server:$PROJECT_VERSION}"
REDIS_IMAGE="${REDIS_IMAGE:-localhost/scalable-api-operator/redis:7.0}"
POSTGRES_IMAGE="${POSTGRES_IMAGE:-localhost/scalable-api-operator/postgres:15}"

ctr_() { ctr --address "$D/containerd/containerd.sock" -n "$CTR_NS" "$@"; }
# podman as scripts/images.sh runs it: runc, no default ulimits (no CAP_SYS_RESOURCE here).
podman_() {
  [[ -f "$D/node/containers.conf" ]] || printf '[containers]\ndefault_ulimits = []\n' >"$D/node/containers.conf"
  CONTAINERS_CONF="$D/node/containers.conf" command podman --runtime runc "$@"
}

# ---------------------------------------------------------------------------------------
# Before anything starts

node_preflight() {
  [[ "$(id -u)" -eq 0 ]] || die "CLUSTER_NODE=real needs root (containerd, network namespaces, iptables)"
  "$ROOT/scripts/ensure-deps.sh" node images
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    die "the bridge $NODE_BRIDGE already exists (another real-node cluster? its 'down' removes it; or set CLUSTER_BRIDGE)"
  fi
  local cidr_net="${NODE_POD_CIDR%/*}"
  if ip route show | grep -qF "${cidr_net%.*}."; then
    die "the pod network $NODE_POD_CIDR overlaps a route of this machine (ip route); set CLUSTER_POD_CIDR"
  fi
  [[ "$(cat /proc/sys/net/ipv4/ip_forward)" == 1 ]] \
    || die "net.ipv4.ip_forward is 0: pods cannot reach Services; this script does not change it"
}

node_network_up() {
  mkdir -p "$D/node"
  # What the firewall held before: down removes only KUBE-* chains and nftables tables that
  # were not there (the kubelet's KUBE-FIREWALL / KUBE-KUBELET-CANARY / KUBE-IPTABLES-HINT,
  # kube-proxy's KUBE-SERVICES and friends, and the ip6 / mangle tables they create).
  node_kube_chains >"$D/node/kube-chains-before"
  nft list tables >"$D/node/nft-tables-before" 2>/dev/null || true
  [[ -d /run/containerd ]] || touch "$D/node/own-run-containerd"
  [[ -d /var/lib/cni ]] || touch "$D/node/own-var-lib-cni"
  [[ -d /var/run/netns ]] || touch "$D/node/own-run-netns"
  ip link add "$NODE_BRIDGE" type bridge
  echo "$NODE_BRIDGE" >"$D/node/bridge"
  ip addr add "$NODE_GW/${NODE_POD_CIDR#*/}" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Only this machine reaches the pod network and the relay: packets for them must come from
  # the bridge or the host itself; pod packets may leave only into the bridge (pod to pod)
  # or to the host. kube-proxy's DNAT happens before these chains, so a NodePort or a
  # Service address reached from outside ends here too.
  iptables -w -N SCALABLE-NODE-IN
  iptables -w -A SCALABLE-NODE-IN -i lo -j RETURN
  iptables -w -A SCALABLE-NODE-IN -i "$NODE_BRIDGE" -j RETURN
  iptables -w -A SCALABLE-NODE-IN -d "$NODE_POD_CIDR" -j DROP
  iptables -w -I INPUT 1 -m comment --comment "scalable-testenv $D" -j SCALABLE-NODE-IN
  iptables -w -N SCALABLE-NODE-FWD
  iptables -w -A SCALABLE-NODE-FWD -s "$NODE_POD_CIDR" -i "$NODE_BRIDGE" -o "$NODE_BRIDGE" -j ACCEPT
  iptables -w -A SCALABLE-NODE-FWD -s "$NODE_POD_CIDR" -j DROP
  iptables -w -A SCALABLE-NODE-FWD -d "$NODE_POD_CIDR" -i "$NODE_BRIDGE" -j ACCEPT
  iptables -w -A SCALABLE-NODE-FWD -d "$NODE_POD_CIDR" -j DROP
  iptables -w -I FORWARD 1 -m comment --comment "scalable-testenv $D" -j SCALABLE-NODE-FWD
  # The node's address is the bridge's; the kubelet listens on 127.0.0.1 only. Connections
  # this machine makes to NODE_GW:KUBELET_PORT (the API server's logs/exec/port-forward,
  # metrics-server) are redirected to it in nat OUTPUT, which pods' packets never traverse.
  iptables -w -t nat -N SCALABLE-NODE-OUT
  iptables -w -t nat -A SCALABLE-NODE-OUT -d "$NODE_GW/32" -p tcp --dport "$KUBELET_PORT" \
    -j DNAT --to-destination "127.0.0.1:$KUBELET_PORT"
  iptables -w -t nat -I OUTPUT 1 -m comment --comment "scalable-testenv $D" -j SCALABLE-NODE-OUT
  echo iptables >"$D/node/chains"
}

node_pki() {
  cert kubelet "/CN=$NODE_NAME" "subjectAltName=IP:127.0.0.1,IP:$NODE_GW,DNS:localhost,DNS:$NODE_NAME\nextendedKeyUsage=serverAuth"
  cert node "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
  cert kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
  local who
  for who in node kube-proxy; do
    sed -e "s#$D/pki/admin.crt#$D/pki/$who.crt#" -e "s#$D/pki/admin.key#$D/pki/$who.key#" \
      -e "s#name: admin#name: $who#" -e "s#user: admin#user: $who#" \
      "$D/admin.kubeconfig" >"$D/$who.kubeconfig"
  done
}

# ---------------------------------------------------------------------------------------
# Images: the project's (scripts/images.sh build, when podman lacks one), a pause image
# (testenv/pause/pause.c, static) and CoreDNS's (the binary testenv-build.sh made), all
# saved from podman and imported into containerd's k8s.io namespace.

PAUSE_IMAGE=""
COREDNS_IMAGE=""

node_images_podman() {
  local tag
  tag="$(sha256sum "$PAUSE_SRC" | cut -c1-12)"
  PAUSE_IMAGE="localhost/scalable-testenv/pause:$tag"
  COREDNS_IMAGE="localhost/scalable-testenv/coredns:$COREDNS_VERSION"
  local ctx
  if ! podman_ image exists "$PAUSE_IMAGE"; then
    ctx="$(mktemp -d)"
    gcc -static -O2 -o "$ctx/pause" "$PAUSE_SRC"
    printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/Containerfile"
    podman_ build --quiet -f "$ctx/Containerfile" -t "$PAUSE_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
  if ! podman_ image exists "$COREDNS_IMAGE"; then
    ctx="$(mktemp -d)"
    cp "$COREDNS_BIN/coredns" "$ctx/"
    printf 'FROM scratch\nCOPY coredns /coredns\nUSER 65532:65532\nENTRYPOINT ["/coredns"]\n' >"$ctx/Containerfile"
    podman_ build --quiet -f "$ctx/Containerfile" -t "$COREDNS_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
  local img missing=""
  for img in "$OPERATOR_IMAGE" "$API_IMAGE" "$REDIS_IMAGE" "$POSTGRES_IMAGE"; do
    podman_ image exists "$img" || missing+=" $img"
  done
  if [[ -n "$missing" ]]; then
    echo "cluster: podman lacks$missing: building the images (scripts/images.sh build)" >&2
    "$ROOT/scripts/images.sh" build || fail containerd "building the images failed (scripts/images.sh build)"
  fi
}

node_images_import() {
  local start=$SECONDS
  podman_ save -m --format docker-archive "$PAUSE_IMAGE" "$COREDNS_IMAGE" "$OPERATOR_IMAGE" \
    "$API_IMAGE" "$REDIS_IMAGE" "$POSTGRES_IMAGE" | ctr_ images import --snapshotter overlayfs - >/dev/null \
    || fail containerd "importing the images into containerd failed"
  echo "cluster: images imported into containerd in $((SECONDS - start)) s"
}

# ---------------------------------------------------------------------------------------
# containerd

node_containerd_config() {
  mkdir -p "$D/containerd" "$D/cni/net.d"
  # The OCI spec every container starts from: containerd's default without rlimits (raising
  # RLIMIT_NOFILE needs CAP_SYS_RESOURCE, which this machine's root lacks).
  cat >"$D/cni/net.d/10-$NODE_CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$NODE_CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$D/cni/ipam"
      }
    }
  ]
}
EOF
  cat >"$D/containerd/config.toml" <<EOF
version = 2
root = "$D/containerd/root"
state = "$D/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$D/containerd/containerd.sock"
[ttrpc]
  address = "$D/containerd/containerd.sock.ttrpc"
[debug]
  address = "$D/containerd/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$D/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_unprivileged_ports = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      base_runtime_spec = "$D/containerd/base-spec.json"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$D/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni/net.d"
    max_conf_num = 1
EOF
  # containerd's own default spec, minus its rlimits.
  python3 - "$D/containerd/base-spec.json" <<'PY'
import json, sys
spec = {
  "ociVersion": "1.0.2-dev",
  "process": {
    "user": {"uid": 0, "gid": 0}, "cwd": "/",
    "capabilities": {k: ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
        "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
        for k in ("bounding", "effective", "permitted")},
    "noNewPrivileges": True,
  },
  "root": {"path": "rootfs"},
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
  ],
  "linux": {
    "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    "cgroupsPath": "/default",
    "resources": {"devices": [{"allow": False, "access": "rwm"}]},
    "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
  },
}
json.dump(spec, open(sys.argv[1], "w"), indent=1)
PY
}

node_start_containerd() {
  node_containerd_config
  start containerd containerd --config "$D/containerd/config.toml" --log-level warn
  wait_healthy containerd ctr_ version
}

# ---------------------------------------------------------------------------------------
# kubelet and kube-proxy

node_start_kubelet() {
  mkdir -p "$D/kubelet" "$D/pod-logs"
  : >"$D/node/resolv.conf"
  local kcg
  for kcg in /sys/fs/cgroup/memory/kubepods /sys/fs/cgroup/cpu/kubepods; do
    [[ -e "$kcg" ]] && { echo "cluster: note: $kcg already exists; down leaves kubepods cgroups alone" >&2; }
  done
  [[ -e /sys/fs/cgroup/memory/kubepods ]] || touch "$D/node/own-kubepods"
  cat >"$D/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $D/pki/kubelet.crt
tlsPrivateKeyFile: $D/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $D/pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$D/containerd/containerd.sock
clusterDNS: [$NODE_DNS_IP]
clusterDomain: cluster.local
resolvConf: $D/node/resolv.conf
podLogsDir: $D/pod-logs
volumePluginDir: $D/kubelet/volume-plugins
failSwapOn: false
# The project's images are imported, never pulled, and must never be collected.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
maxPods: 110
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
fileCheckFrequency: 0s
staticPodPath: ""
shutdownGracePeriod: 0s
oomScoreAdj: 0
EOF
  start kubelet "$NODE_BIN/kubelet" --config="$D/kubelet/config.yaml" \
    --kubeconfig="$D/node.kubeconfig" --root-dir="$D/kubelet" --cert-dir="$D/kubelet/pki" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_GW" \
    --node-labels="topology.kubernetes.io/zone=zone-0,type=real" --v=1
  wait_healthy kubelet curl -fsS --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
  wait_healthy kubelet kctl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
}

node_start_kube_proxy() {
  # kube-proxy acts as system:kube-proxy, which the default ClusterRoleBinding
  # system:node-proxier already authorises.
  cat >"$D/node/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $D/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
clusterCIDR: $NODE_POD_CIDR
detectLocalMode: ClusterCIDR
# NodePorts only on the bridge's address (nothing outside reaches it: SCALABLE-NODE-*).
nodePortAddresses: ["$NODE_GW/32"]
iptables: {localhostNodePorts: false, masqueradeAll: false}
# Leave the machine's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start kube-proxy "$NODE_BIN/kube-proxy" --config="$D/node/kube-proxy.yaml" --v=1
  wait_healthy kube-proxy curl -fsS --max-time 2 "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz"
}

# ---------------------------------------------------------------------------------------
# CoreDNS: a Deployment in kube-system with the Service kube-dns at $NODE_DNS_IP. It serves
# cluster.local only and forwards nothing (nothing leaves the machine).

node_coredns_manifest() {
  cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:1053 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        cache 30
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: coredns
        image: $COREDNS_IMAGE
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 1053, protocol: UDP}
        - {name: dns-tcp, containerPort: 1053, protocol: TCP}
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 2
        livenessProbe:
          httpGet: {path: /health, port: 8080}
          periodSeconds: 10
        resources:
          requests: {cpu: 50m, memory: 32Mi}
          limits: {memory: 128Mi}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $NODE_DNS_IP
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, targetPort: 1053, protocol: UDP}
  - {name: dns-tcp, port: 53, targetPort: 1053, protocol: TCP}
EOF
}

node_start_coredns() {
  node_volumes
  node_coredns_manifest | kctl apply -f - >/dev/null || fail kubelet "creating CoreDNS failed"
  wait_healthy kubelet kctl -n kube-system rollout status deployment/coredns --timeout=2s
}

# Storage: no provisioner runs here, so up makes CLUSTER_PVS (default 8) hostPath
# PersistentVolumes of 2Gi under $D/pv, with no StorageClass: a claim that names no class
# (examples/postgres-dev.yaml's volumeClaimTemplates) binds to one. Retained, never reused.
node_volumes() {
  local i n="${CLUSTER_PVS:-8}"
  for ((i = 0; i < n; i++)); do
    mkdir -p "$D/pv/$i"
    chmod 0777 "$D/pv/$i"
    cat <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: scalable-testenv-pv-$i, labels: {scalable.dev/testenv: "true"}}
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: $D/pv/$i, type: Directory}
---
EOF
  done | kctl apply -f - >/dev/null || fail kubelet "creating the PersistentVolumes failed"
}

# ---------------------------------------------------------------------------------------
# Tear-down pieces, called by stop_all (before containerd stops) and by down (after).

# With containerd still running: note the pods' network namespaces, kill every task.
node_kill_pods() {
  [[ -S "$D/containerd/containerd.sock" ]] || return 0
  local id ns
  for id in $(ctr_ containers ls -q 2>/dev/null); do
    ns="$(ctr_ containers info "$id" 2>/dev/null | python3 -c '
import json, sys
try:
    spec = json.load(sys.stdin).get("Spec") or {}
except ValueError:
    sys.exit(0)
for n in spec.get("linux", {}).get("namespaces", []):
    if n.get("type") == "network" and n.get("path", "").startswith("/var/run/netns/"):
        print(n["path"])
')" || true
    [[ -n "$ns" ]] && echo "$ns" >>"$D/node/netns"
    echo "$id" >>"$D/node/containers"
  done
  for id in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  # containerd's CRI deletes a task once it exits; delete what it has not, until none is left.
  local deadline=$((SECONDS + 20)) left
  while left="$(ctr_ tasks ls -q 2>/dev/null)" && [[ -n "$left" ]] && ((SECONDS < deadline)); do
    for id in $left; do ctr_ tasks delete "$id" >/dev/null 2>&1 || true; done
    sleep 0.2
  done
}

# Processes whose command line names this cluster's containerd socket (its shims).
node_shim_pids() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "-address $D/containerd/containerd.sock" \
      && echo "${p#/proc/}"
  done
  return 0
}

node_teardown() {
  [[ -d "$D/node" ]] || return 0
  local pid
  for pid in $(node_shim_pids); do kill -KILL "$pid" 2>/dev/null || true; done
  # Whatever still runs in the kubepods cgroups this run made (containers of killed shims).
  local ctl
  if [[ -f "$D/node/own-kubepods" ]]; then
    for ctl in /sys/fs/cgroup/*/kubepods; do
      [[ -d "$ctl" ]] || continue
      find "$ctl" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do
        kill -KILL "$pid" 2>/dev/null || true
      done
    done
  fi
  # Pods' network namespaces (deleting one deletes its veth).
  local ns
  if [[ -f "$D/node/netns" ]]; then
    sort -u "$D/node/netns" | while read -r ns; do
      [[ -e "$ns" ]] || continue
      umount "$ns" 2>/dev/null || true
      rm -f "$ns"
    done
  fi
  # Mounts under the state folder (overlay rootfs, shm, secret and token volumes), deepest first.
  local m
  findmnt -rn -o TARGET | { grep -F "$D/" || true; } | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2- \
    | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  # The kubelet's cgroups, leaves first (only when this run made them).
  if [[ -f "$D/node/own-kubepods" ]]; then
    for ctl in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
      [[ -d "$ctl" ]] || continue
      find "$ctl" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
  fi
  # kube-proxy's rules (KUBE-* chains), then ours.
  if [[ -n "${NODE_BIN:-}" && -x "$NODE_BIN/kube-proxy" && -f "$D/node/kube-proxy.yaml" ]]; then
    "$NODE_BIN/kube-proxy" --cleanup --config="$D/node/kube-proxy.yaml" >>"$D/logs/kube-proxy-cleanup.log" 2>&1 || true
  fi
  node_clean_kube_chains
  if [[ -f "$D/node/chains" ]]; then
    while iptables -w -t nat -D OUTPUT -m comment --comment "scalable-testenv $D" -j SCALABLE-NODE-OUT 2>/dev/null; do :; done
    if iptables -w -t nat -F SCALABLE-NODE-OUT 2>/dev/null; then iptables -w -t nat -X SCALABLE-NODE-OUT || true; fi
    while iptables -w -D INPUT -m comment --comment "scalable-testenv $D" -j SCALABLE-NODE-IN 2>/dev/null; do :; done
    while iptables -w -D FORWARD -m comment --comment "scalable-testenv $D" -j SCALABLE-NODE-FWD 2>/dev/null; do :; done
    if iptables -w -F SCALABLE-NODE-IN 2>/dev/null; then iptables -w -X SCALABLE-NODE-IN || true; fi
    if iptables -w -F SCALABLE-NODE-FWD 2>/dev/null; then iptables -w -X SCALABLE-NODE-FWD || true; fi
  fi
  if [[ -f "$D/node/bridge" ]]; then
    ip link delete "$(cat "$D/node/bridge")" type bridge 2>/dev/null || true
  fi
  node_clean_nft_tables
  # libcni's result cache (outside the state folder: go-cni's default), for this network and
  # for the loopback of this run's sandboxes; containerd's shim socket folder when up made it.
  rm -f /var/lib/cni/results/"$NODE_CNI_NETWORK"-* 2>/dev/null || true
  local id
  if [[ -f "$D/node/containers" ]]; then
    while read -r id; do rm -f "/var/lib/cni/results/cni-loopback-$id-lo"; done <"$D/node/containers"
  fi
  if [[ -f "$D/node/own-run-containerd" ]]; then
    find /run/containerd -depth -type d -empty -delete 2>/dev/null || true
  fi
  # `ip netns` style: /var/run/netns is a bind mount of itself once a namespace was made.
  if [[ -f "$D/node/own-run-netns" && -d /var/run/netns ]] && [[ -z "$(ls -A /var/run/netns)" ]]; then
    umount /var/run/netns 2>/dev/null || true
    rmdir /var/run/netns 2>/dev/null || true
  fi
  if [[ -f "$D/node/own-var-lib-cni" ]]; then
    find /var/lib/cni -depth -type d -empty -delete 2>/dev/null || true
  fi
}

# "<command> <table> <chain>" for every KUBE-* chain of iptables and ip6tables.
node_kube_chains() {
  local cmd t
  for cmd in iptables ip6tables; do
    for t in filter nat mangle; do
      "$cmd-save" -t "$t" 2>/dev/null | sed -n "s/^:\(KUBE-[^ ]*\) .*/$cmd $t \1/p"
    done
  done
  return 0
}

# Deletes the KUBE-* chains up did not find (with the rules that jump to them).
node_clean_kube_chains() {
  [[ -f "$D/node/kube-chains-before" ]] || return 0
  local cmd t ch rule
  local -a args
  node_kube_chains | { grep -vxF -f "$D/node/kube-chains-before" || true; } | while read -r cmd t ch; do
    "$cmd-save" -t "$t" 2>/dev/null | { grep -E -- "^-A .* -j $ch( |\$)" || true; } | while read -r rule; do
      read -ra args <<<"${rule/#-A/-D}"
      "$cmd" -w -t "$t" "${args[@]}" 2>/dev/null || true
    done
  done
  node_kube_chains | { grep -vxF -f "$D/node/kube-chains-before" || true; } | while read -r cmd t ch; do
    "$cmd" -w -t "$t" -F "$ch" 2>/dev/null || true
  done
  node_kube_chains | { grep -vxF -f "$D/node/kube-chains-before" || true; } | while read -r cmd t ch; do
    "$cmd" -w -t "$t" -X "$ch" 2>/dev/null || true
  done
  return 0
}

# nftables tables that appeared during the run and hold no rule any more.
node_clean_nft_tables() {
  [[ -f "$D/node/nft-tables-before" ]] || return 0
  local fam name
  nft list tables 2>/dev/null | { grep -vxF -f "$D/node/nft-tables-before" || true; } | while read -r _ fam name; do
    if nft -j list table "$fam" "$name" 2>/dev/null | python3 -c '
import json, sys
items = json.load(sys.stdin).get("nftables", [])
sys.exit(1 if any("rule" in i for i in items) else 0)'; then
      nft delete table "$fam" "$name" 2>/dev/null || true
    fi
  done
  return 0
}
