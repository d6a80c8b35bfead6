#!/usr/bin/env bash
# helm (v4, from the Go module proxy) to render deploy/helm/tern in test/integration/kube-deploy.test.ts.
# Source: test/peers/helm (wrapper module; go.sum committed). Output: $TERN_PEERS_DIR/helm/bin/helm.
# Idempotent: skips when the binary exists. Shares the module cache with 30-kube.sh (same k8s.io modules).
set -euo pipefail
cd "$(dirname "$0")/../.."
PEERS="${TERN_PEERS_DIR:-$HOME/.cache/tern-peers}"
OUT="$PEERS/helm/bin"
if [ -x "$OUT/helm" ]; then
  echo "helm: present in $OUT"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "helm: no 'go' command on PATH; the Helm chart test will skip" >&2
  exit 0
fi
mkdir -p "$OUT"
export GOMODCACHE="$PEERS/kube/gomod" GOCACHE="$PEERS/helm/gocache" GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
start=$(date +%s)
if ! (cd test/peers/helm && go build -trimpath -ldflags='-s -w' -o "$OUT/" helm.sh/helm/v4/cmd/helm) \
  >"$PEERS/helm/build.log" 2>&1; then
  echo "helm: build FAILED after $(( $(date +%s) - start ))s; the Helm chart test will skip (log: $PEERS/helm/build.log)" >&2
  tail -5 "$PEERS/helm/build.log" >&2
  exit 0
fi
echo "helm: built in $(( $(date +%s) - start ))s ($(go version))"
go clean -cache >/dev/null 2>&1 || true
