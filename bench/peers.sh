#!/usr/bin/env bash
# Benchmark peers (not test peers): restic and GNU time from Debian, kopia built from the Go module proxy.
# Idempotent and cached: a second run costs a few dpkg queries. kopia is optional: when the module proxy does not
# serve it, the bench runs without it and says so (a marker file stops us asking again for the same version).
set -euo pipefail
export TERN_PEERS_DIR="${TERN_PEERS_DIR:-$HOME/.cache/tern-peers}"
KOPIA_VERSION="${KOPIA_VERSION:-v0.21.1}"
mkdir -p "$TERN_PEERS_DIR/bin"

PKGS=(restic time)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench peers: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

kopia="$TERN_PEERS_DIR/bin/kopia"
marker="$TERN_PEERS_DIR/kopia-$KOPIA_VERSION.unavailable"
if [ -x "$kopia" ]; then
  :
elif [ -e "$marker" ]; then
  echo "bench peers: kopia $KOPIA_VERSION not served by the Go module proxy (cached answer; rm $marker to retry)"
elif ! command -v go >/dev/null; then
  echo "bench peers: no Go toolchain, kopia skipped"
else
  echo "bench peers: building kopia $KOPIA_VERSION (a few minutes on 2 cores, once)"
  log="$TERN_PEERS_DIR/kopia-build.log"
  # Built from a throwaway module that requires it, not with `go install kopia@version`: that also asks the proxy
  # for the module's list of versions (to check for a deprecation), which this proxy refuses (403) while it
  # serves v0.21.1 itself (v0.18.2 it refuses).
  mod="$(mktemp -d)"
  if (
    cd "$mod" &&
      go mod init tern-bench-peers &&
      printf '\nrequire github.com/kopia/kopia %s\n' "$KOPIA_VERSION" >>go.mod &&
      printf '//go:build tools\n\npackage peers\n\nimport _ "github.com/kopia/kopia"\n' >tools.go &&
      go mod tidy &&
      GOFLAGS=-buildvcs=false nice -n 10 go build -o "$kopia" github.com/kopia/kopia
  ) >"$log" 2>&1; then
    rm -rf "$mod"
    echo "bench peers: kopia built: $("$kopia" --version | head -1)"
  else
    rm -rf "$mod"
    if grep -qE '403 Forbidden|404 Not Found|410 Gone|not available' "$log"; then
      touch "$marker"
      echo "bench peers: the Go module proxy refused github.com/kopia/kopia@$KOPIA_VERSION; benchmarking without kopia"
    else
      echo "bench peers: kopia build failed (see $log); benchmarking without kopia"
    fi
  fi
fi
