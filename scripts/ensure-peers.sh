#!/usr/bin/env bash
# Installs every real component the tests talk to (idempotent: fast when already present).
# Each scripts/peers.d/NN-*.sh installs one peer into $TERN_PEERS_DIR or via apt-get/pip/go.
set -euo pipefail
cd "$(dirname "$0")/.."
export TERN_PEERS_DIR="${TERN_PEERS_DIR:-$HOME/.cache/tern-peers}"
mkdir -p "$TERN_PEERS_DIR"
for step in scripts/peers.d/*.sh; do
  [ -e "$step" ] || continue
  start=$(date +%s)
  echo "== peer: $(basename "$step")"
  bash "$step"
  echo "== peer: $(basename "$step") done in $(( $(date +%s) - start ))s"
done
