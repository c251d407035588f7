#!/usr/bin/env bash
# Installs Debian's tinyproxy (the egress proxy the tests send deliveries through) if missing,
# without starting it as a service. Prints the binary's path.
set -euo pipefail
if ! command -v tinyproxy >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "tinyproxy is missing; install it as root: apt-get install -y tinyproxy" >&2
    exit 1
  fi
  echo "==> installing tinyproxy (apt-get)" >&2
  # No service start inside containers and build machines: the tests start their own.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tinyproxy >/dev/null \
    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tinyproxy >/dev/null; }
  rm -f /usr/sbin/policy-rc.d
fi
command -v tinyproxy
