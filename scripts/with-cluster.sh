#!/usr/bin/env bash
# Runs a command with a fresh test control plane (scripts/cluster.sh) and stops it after,
# whatever the command's outcome:
#   scripts/with-cluster.sh cargo nextest run --workspace
# The cluster's state goes to CLUSTER_DIR (default .cluster-test, apart from the .cluster
# of `make cluster-up`, so a developer's cluster and a test run do not meet).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_DIR="$(realpath -m "${CLUSTER_DIR:-$ROOT/.cluster-test}")"
export CLUSTER_DIR
[[ $# -gt 0 ]] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }

"$ROOT/scripts/cluster.sh" down >/dev/null
trap '"$ROOT/scripts/cluster.sh" down >/dev/null' EXIT
start=$SECONDS
"$ROOT/scripts/cluster.sh" up
echo "with-cluster: control plane up in $((SECONDS - start)) s"
eval "$("$ROOT/scripts/cluster.sh" env)"
"$@"
