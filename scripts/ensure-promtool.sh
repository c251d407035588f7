#!/usr/bin/env bash
# Installs promtool (Debian's prometheus package) if missing, without starting Prometheus as a
# service. Prints the binary's path. It checks and unit-tests the alerting rules.
set -euo pipefail
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "promtool is missing; install it as root: apt-get install -y prometheus" >&2
    exit 1
  fi
  echo "==> installing promtool (apt-get install prometheus)" >&2
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null \
    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null; }
  rm -f /usr/sbin/policy-rc.d
fi
command -v promtool
