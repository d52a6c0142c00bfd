#!/usr/bin/env bash
# Builds the test control plane's programs from the Go modules pinned in testenv/*/go.mod,
# into a cache outside the clone, one folder per component and version. A component is
# built only when its folder is missing, so a warm machine spends no time here.
#
#   scripts/testenv-build.sh          build what is missing (progress on stderr), print the
#                                     bin folder of each on stdout
#   scripts/testenv-build.sh --print  print the folders only (exit 1 if one is missing)
#   --node (before or after --print)  also the real node's programs: kubelet and kube-proxy
#                                     (k8s-node, from testenv/k8s) and CoreDNS (coredns, from
#                                     testenv/coredns), printed after the four above
#
# TESTENV_CACHE overrides the cache root
# (default ${XDG_CACHE_HOME:-$HOME/.cache}/scalable-api-operator).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scalable-api-operator}"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly

# The version a wrapper module pins for one upstream module, read from its go.mod.
pinned() { sed -n "s#^[[:space:]]*$2 \(v[^ ]*\).*#\1#p" "$ROOT/testenv/$1/go.mod" | head -n1; }

K8S_VERSION="$(pinned k8s k8s.io/kubernetes)"
ETCD_VERSION="$(pinned etcd go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(pinned kwok sigs.k8s.io/kwok)"
MS_VERSION="$(pinned metrics-server sigs.k8s.io/metrics-server)"
COREDNS_VERSION="$(pinned coredns github.com/coredns/coredns)"

dir_of() { # component -> its cache folder
  case "$1" in
    k8s) echo "$CACHE/k8s/$K8S_VERSION" ;;
    etcd) echo "$CACHE/etcd/$ETCD_VERSION" ;;
    kwok) echo "$CACHE/kwok/$KWOK_VERSION" ;;
    metrics-server) echo "$CACHE/metrics-server/$MS_VERSION" ;;
    k8s-node) echo "$CACHE/k8s-node/$K8S_VERSION" ;;
    coredns) echo "$CACHE/coredns/$COREDNS_VERSION" ;;
  esac
}
COMPONENTS=(etcd k8s kwok metrics-server)
PRINT=""
for arg in "$@"; do
  case "$arg" in
    --print) PRINT=1 ;;
    --node) COMPONENTS+=(k8s-node coredns) ;;
    *) echo "usage: scripts/testenv-build.sh [--print] [--node]" >&2; exit 2 ;;
  esac
done

if [[ -n "$PRINT" ]]; then
  for c in "${COMPONENTS[@]}"; do
    d="$(dir_of "$c")"
    [[ -f "$d/.complete" ]] || { echo "testenv: $c is not built ($d); run scripts/testenv-build.sh" >&2; exit 1; }
    echo "$d"
  done
  exit 0
fi

command -v go >/dev/null || { echo "testenv: Go is needed to build the control plane (go 1.25+ on PATH)" >&2; exit 1; }

# go build -v prints each package as it is compiled; show a count now and then so a
# cold build (tens of minutes) visibly moves.
progress() {
  local name="$1" n=0 start=$SECONDS
  while IFS= read -r line; do
    if [[ "$line" == *:* || "$line" == *" "* ]]; then
      echo "  [$name] $line" # an error or warning: show it whole
    else
      n=$((n + 1))
      if ((n % 200 == 0)); then echo "  [$name] $n packages compiled, $((SECONDS - start)) s"; fi
    fi
  done
}

# build COMPONENT LDFLAGS PACKAGE...: go build into a temporary folder, then rename it into
# place, so an interrupted build never leaves a folder that looks complete.
build() {
  local c="$1" ldflags="$2"; shift 2
  local out tmp log start=$SECONDS
  out="$(dir_of "$c")"
  if [[ -f "$out/.complete" ]]; then return 0; fi
  tmp="$out.partial.$$"
  log="$CACHE/build-$c.log"
  mkdir -p "$tmp" "$CACHE"
  echo "testenv: building $c into $out (cold: minutes; log $log)" >&2
  local mod="$c"
  if [[ "$c" == k8s-node ]]; then mod=k8s; fi
  if ! (cd "$ROOT/testenv/$mod" && go build -v -trimpath -tags=selinux,notest,grpcnotrace \
    -ldflags="-s -w $ldflags" -o "$tmp/" "$@") 2>&1 | tee "$log" | progress "$c" >&2; then
    echo "testenv: building $c failed; the last lines of $log:" >&2
    tail -n 30 "$log" >&2
    rm -rf "$tmp"
    exit 1
  fi
  # A /vN module path names its binary after the element before it: etcd's is "server".
  if [[ -f "$tmp/server" ]]; then mv "$tmp/server" "$tmp/etcd"; fi
  touch "$tmp/.complete"
  rm -rf "$out"
  mv "$tmp" "$out"
  echo "testenv: $c built in $((SECONDS - start)) s" >&2
}

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
k8s_version_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_version_flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

build etcd "-X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" go.etcd.io/etcd/server/v3
build k8s "$k8s_version_flags" k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl
build kwok "" sigs.k8s.io/kwok/cmd/kwok
build metrics-server "-X k8s.io/client-go/pkg/version.gitVersion=$MS_VERSION" \
  sigs.k8s.io/metrics-server/cmd/metrics-server
if [[ " ${COMPONENTS[*]} " == *" k8s-node "* ]]; then
  # The kubelet and kube-proxy come from the same wrapper module as the control plane (its
  # go.sum already covers them); a folder of their own, so the control plane's cache stays
  # valid and the default (kwok) mode never pays for them.
  build k8s-node "$k8s_version_flags" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
  build coredns "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" github.com/coredns/coredns
fi

for c in "${COMPONENTS[@]}"; do dir_of "$c"; done
