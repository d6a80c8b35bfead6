#!/usr/bin/env bash
# kube-apiserver + etcd for the Kubernetes integration tests, built from the Go module proxy.
# Source: test/peers/kube (wrapper module; go.sum committed). Output: $TERN_PEERS_DIR/kube/bin.
# Idempotent: skips when both binaries exist. Module and build caches live under $TERN_PEERS_DIR/kube.
set -euo pipefail
cd "$(dirname "$0")/../.."
PEERS="${TERN_PEERS_DIR:-$HOME/.cache/tern-peers}"
OUT="$PEERS/kube/bin"
if [ -x "$OUT/kube-apiserver" ] && [ -x "$OUT/etcd" ]; then
  echo "kube: kube-apiserver and etcd present in $OUT"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "kube: no 'go' command on PATH; the Kubernetes tests will skip" >&2
  exit 0
fi
mkdir -p "$OUT"
export GOMODCACHE="$PEERS/kube/gomod" GOCACHE="$PEERS/kube/gocache" GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
start=$(date +%s)
# A failed build must not stop the other suites: the Kubernetes tests skip and print this log's path.
if ! (cd test/peers/kube && go build -trimpath -ldflags='-s -w' -o "$OUT/" ./cmd/kube-apiserver ./cmd/etcd) \
  >"$PEERS/kube/build.log" 2>&1; then
  cp "$PEERS/kube/build.log" "$PEERS/kube/build-failed.log"
  echo "kube: build FAILED after $(( $(date +%s) - start ))s; tests will skip (log: $PEERS/kube/build-failed.log)" >&2
  tail -5 "$PEERS/kube/build.log" >&2
  exit 0
fi
rm -f "$PEERS/kube/build-failed.log"
echo "kube: built kube-apiserver and etcd in $(( $(date +%s) - start ))s ($(go version))"
# The module cache is only needed to rebuild; the build cache is large and not needed once built.
go clean -cache >/dev/null 2>&1 || true
