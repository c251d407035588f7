#!/usr/bin/env bash
# Installs what the broker-destination tests need, if missing: Debian's rabbitmq-server and
# redis-server (with redis-cli), without starting them as services (the tests start their own on
# random ports), and pika (an AMQP client independent of Herald's) into .tools/amqp-py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
missing=()
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${missing[*]}; install them as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "==> installing ${missing[*]} (apt-get)" >&2
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
  rm -f /usr/sbin/policy-rc.d
fi
amqp_py="$root/.tools/amqp-py"
if ! PYTHONPATH="$amqp_py" python3 -c 'import pika' 2>/dev/null; then
  echo "==> installing pika into .tools/amqp-py" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$amqp_py" 'pika>=1.3,<2' >&2
fi
echo "$amqp_py"
