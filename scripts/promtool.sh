#!/usr/bin/env bash
# promtool (github.com/prometheus/prometheus/cmd/promtool, a Go module), built from the Go
# module proxy into the same cache as the test control plane and helm-docs when missing, then
# run with the arguments given. check-manifests uses it for `promtool check rules` and
# `promtool test rules` on the chart's PrometheusRule and the dashboard's queries.
# Prometheus 3 tags its Go module v0.3XX.Y for its release 3.XX.Y: v0.316.0 is 3.16.0.
set -euo pipefail
VERSION=v0.316.0
BIN_DIR="${TESTENV_CACHE:-$HOME/.cache/scalable-api-operator}/promtool/$VERSION"
if [[ ! -x "$BIN_DIR/promtool" ]]; then
  echo "promtool: building $VERSION from the Go module proxy into $BIN_DIR (takes minutes)" >&2
  mkdir -p "$BIN_DIR.tmp"
  # The version is stamped as the Prometheus build does, so `promtool --version` names it.
  GOBIN="$BIN_DIR.tmp" CGO_ENABLED=0 go install \
    -ldflags "-X github.com/prometheus/common/version.Version=${VERSION#v}" \
    "github.com/prometheus/prometheus/cmd/promtool@$VERSION" >&2
  rm -rf "$BIN_DIR" && mv "$BIN_DIR.tmp" "$BIN_DIR"
fi
exec "$BIN_DIR/promtool" "$@"
