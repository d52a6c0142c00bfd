#!/usr/bin/env bash
# helm-docs (github.com/norwoodj/helm-docs, a Go module), built from the Go module proxy into
# the same cache as the test control plane when missing, then run with the arguments given
# on the chart: writes charts/scalable-api-operator/README.md from README.md.gotmpl and
# values.yaml. `--dry-run` prints instead (check-manifests diffs that against the file).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION=v1.14.2
BIN_DIR="${TESTENV_CACHE:-$HOME/.cache/scalable-api-operator}/helm-docs/$VERSION"
if [[ ! -x "$BIN_DIR/helm-docs" ]]; then
  echo "helm-docs: building $VERSION from the Go module proxy into $BIN_DIR" >&2
  mkdir -p "$BIN_DIR.tmp"
  GOBIN="$BIN_DIR.tmp" CGO_ENABLED=0 go install "github.com/norwoodj/helm-docs/cmd/helm-docs@$VERSION" >&2
  rm -rf "$BIN_DIR" && mv "$BIN_DIR.tmp" "$BIN_DIR"
fi
cd "$ROOT"
exec "$BIN_DIR/helm-docs" --chart-search-root charts --chart-to-generate charts/scalable-api-operator \
  --sort-values-order file --skip-version-footer --log-level warning "$@"
