#!/usr/bin/env bash
# Debian Chromium for the dashboard browser test (test/integration/web.test.ts drives it with playwright-core;
# `npx playwright install` cannot download browsers here, the Debian package comes from the apt mirror).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
echo "installing: chromium fonts-liberation"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
