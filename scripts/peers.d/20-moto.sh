#!/usr/bin/env bash
# moto (PyPI) as the S3/EC2 server for storage and AWS platform tests: a venv under $TERN_PEERS_DIR/moto.
# Launched by test/harness/moto.ts as `$TERN_PEERS_DIR/moto/venv/bin/moto_server -p PORT -H 127.0.0.1`.
# Idempotent: skips when the pinned version is already installed. Needs python3-venv (00-apt.sh).
set -euo pipefail
PEERS="${TERN_PEERS_DIR:-$HOME/.cache/tern-peers}"
DIR="$PEERS/moto"
VENV="$DIR/venv"
MOTO_VERSION="${TERN_MOTO_VERSION:-5.2.5}"
if [ -x "$VENV/bin/moto_server" ] && [ "$(cat "$DIR/version" 2>/dev/null)" = "$MOTO_VERSION" ]; then
  echo "moto: $MOTO_VERSION present in $VENV"
  exit 0
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "moto: no python3 on PATH; the S3 tests will skip" >&2
  exit 0
fi
start=$(date +%s)
rm -rf "$VENV"
mkdir -p "$DIR"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
echo "$MOTO_VERSION" >"$DIR/version"
echo "moto: installed $MOTO_VERSION in $(( $(date +%s) - start ))s"
