#!/usr/bin/env bash
# The one test command (README): install test peers, lint, type-check, run every test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
step() { echo; echo "=== $1 (t+$(( $(date +%s) - t0 ))s)"; }
step "test peers"
bash scripts/ensure-peers.sh
step "lint"
npx eslint .
step "format"
npx prettier --check . >/dev/null || { npx prettier --check . ; exit 1; }
step "typecheck"
npx tsc -p tsconfig.json
step "tests"
export TERN_PEERS_DIR="${TERN_PEERS_DIR:-$HOME/.cache/tern-peers}"
./node_modules/.bin/node --test --test-concurrency=2 --test-timeout=600000 --test-reporter=spec \
  'test/unit/**/*.test.ts' 'test/contract/**/*.test.ts' 'test/integration/**/*.test.ts'
step "done"
