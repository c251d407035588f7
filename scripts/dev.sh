#!/usr/bin/env bash
# Runs Herald locally: nats-server (JetStream) + gateway + dispatcher + a demo receiver
# (`heraldctl listen`), creates a subscription, sends an event, and prints curl lines to try.
# Data and logs live in .herald-dev/ (gitignored). Ctrl-C stops everything.
#
#   scripts/dev.sh              # run until Ctrl-C
#   scripts/dev.sh --once       # stop after the demo event arrived (a smoke test)
#
# Ports: NATS_PORT (4222), GATEWAY_PORT (8080), DISPATCHER_PORT (9090), RECEIVER_PORT (9999).
# NATS_SYNC: how often nats-server flushes its store to disk — its default "2m", or "always"
# (every write reaches the disk before the PubAck, so before Herald's 202; slower ingest).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
once=false
[ "${1:-}" = "--once" ] && once=true

NATS_PORT="${NATS_PORT:-4222}"
GATEWAY_PORT="${GATEWAY_PORT:-8080}"
DISPATCHER_PORT="${DISPATCHER_PORT:-9090}"
RECEIVER_PORT="${RECEIVER_PORT:-9999}"
dev="$root/.herald-dev"
mkdir -p "$dev"

nats_bin="$(scripts/ensure-nats.sh)"
echo "==> building Herald (first build takes a few minutes)"
cargo build --workspace --bins --quiet
bin="$root/target/debug"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() { # url what
  for _ in $(seq 1 200); do
    if python3 - "$1" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=1)
PY
    sleep 0.1
  done
  echo "$2 did not become ready; see $dev/*.log" >&2
  exit 1
}

NATS_SYNC="${NATS_SYNC:-2m}"
case "$NATS_SYNC" in always | [0-9]*[smh]) ;; *) echo "NATS_SYNC must be \"always\" or a duration such as 2m" >&2; exit 2 ;; esac
printf 'jetstream {\n  store_dir: "%s"\n  sync_interval: %s\n}\n' "$dev/jetstream" "$NATS_SYNC" >"$dev/nats.conf"
echo "==> nats-server on 127.0.0.1:$NATS_PORT (store: .herald-dev/jetstream, sync_interval: $NATS_SYNC)"
"$nats_bin" -c "$dev/nats.conf" -a 127.0.0.1 -p "$NATS_PORT" >"$dev/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break; sleep 0.1; done

# Fresh random tokens each run, kept in a file the gateway reads.
admin_token="dev-admin-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
publish_token="dev-publish-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
printf 'admin=%s\npublish=%s\n' "$admin_token" "$publish_token" >"$dev/tokens"
chmod 600 "$dev/tokens"

# The key that seals signing secrets at rest; kept with the data so old secrets still open.
if [ ! -f "$dev/secret-keys" ]; then
  python3 -c 'import base64, os; print("dev:" + base64.b64encode(os.urandom(32)).decode())' >"$dev/secret-keys"
  chmod 600 "$dev/secret-keys"
fi
export HERALD_SECRET_KEYS_FILE="$dev/secret-keys"

export HERALD_NATS_URL="nats://127.0.0.1:$NATS_PORT"
# The demo receiver is on loopback, which the SSRF guard refuses unless allowed.
export HERALD_ALLOW_NETWORKS="127.0.0.0/8,::1/128"
echo "==> gateway on 127.0.0.1:$GATEWAY_PORT"
HERALD_LISTEN="127.0.0.1:$GATEWAY_PORT" HERALD_TOKENS_FILE="$dev/tokens" \
  "$bin/herald-gateway" >"$dev/gateway.log" 2>&1 &
pids+=($!)
echo "==> dispatcher (health on 127.0.0.1:$DISPATCHER_PORT)"
HERALD_LISTEN="127.0.0.1:$DISPATCHER_PORT" HERALD_RETRY_SCHEDULE="${HERALD_RETRY_SCHEDULE:-5s,30s,2m,10m}" \
  "$bin/herald-dispatcher" >"$dev/dispatcher.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$GATEWAY_PORT/readyz" gateway
wait_http "http://127.0.0.1:$DISPATCHER_PORT/readyz" dispatcher

export HERALD_URL="http://127.0.0.1:$GATEWAY_PORT" HERALD_TOKEN="$admin_token"
# The store survives between runs; replace the previous run's demo subscription (its secret is gone).
old_demo="$("$bin/heraldctl" --json subscriptions list --limit 500 | python3 -c '
import json, sys
for s in json.load(sys.stdin)["data"]:
    if s["description"] == "local demo receiver":
        print(s["id"])')"
for id in $old_demo; do "$bin/heraldctl" subscriptions delete "$id" >/dev/null; done

echo "==> creating a subscription for every event type, to the demo receiver"
sub_json="$("$bin/heraldctl" --json subscriptions create --url "http://127.0.0.1:$RECEIVER_PORT/webhook" \
  --event-type '>' --description "local demo receiver")"
sub_id="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$sub_json")"
secret="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["secret"])' "$sub_json")"
echo "    subscription $sub_id"

echo "==> demo receiver on 127.0.0.1:$RECEIVER_PORT (verifies every signature)"
HERALD_SECRET="$secret" "$bin/heraldctl" listen --port "$RECEIVER_PORT" >"$dev/receiver.log" 2>&1 &
pids+=($!)
tail -n +1 -f "$dev/receiver.log" &
pids+=($!)
sleep 0.5

echo "==> sending a demo event"
"$bin/heraldctl" events send --type order.created --data '{"order_id": 1001, "total": "42.00"}' >/dev/null
for _ in $(seq 1 100); do grep -q 'signature verified' "$dev/receiver.log" && break; sleep 0.1; done
if ! grep -q 'signature verified' "$dev/receiver.log"; then
  echo "the demo event did not arrive; see $dev/dispatcher.log" >&2
  exit 1
fi

cat <<TXT

Herald is running. Try:

  # the console: open it and sign in with the admin token $admin_token
  http://127.0.0.1:$GATEWAY_PORT/console/

  # a one-time link into tenant default's portal (what your backend asks for, to embed it)
  curl -s -X POST http://127.0.0.1:$GATEWAY_PORT/v1/portal/sessions \\
    -H 'Authorization: Bearer $admin_token' -H 'Content-Type: application/json' -d '{"tenant": "default"}'

  # publish an event (202 once it is durably in JetStream)
  curl -s -X POST http://127.0.0.1:$GATEWAY_PORT/v1/events \\
    -H 'Authorization: Bearer $publish_token' -H 'Content-Type: application/json' \\
    -d '{"type": "user.signed_up", "data": {"user_id": 7}}'

  # publish the same id twice: the second answer says "duplicate": true, and it is delivered once
  curl -s -X POST http://127.0.0.1:$GATEWAY_PORT/v1/events \\
    -H 'Authorization: Bearer $publish_token' -H 'Content-Type: application/json' \\
    -d '{"id": "order-1002", "type": "order.paid", "data": {"order_id": 1002}}'

  # list subscriptions
  curl -s http://127.0.0.1:$GATEWAY_PORT/v1/subscriptions -H 'Authorization: Bearer $admin_token'

  # or with the CLI
  export HERALD_URL=http://127.0.0.1:$GATEWAY_PORT HERALD_TOKEN=$admin_token
  target/debug/heraldctl subscriptions list

Logs: .herald-dev/{nats,gateway,dispatcher,receiver}.log. Ctrl-C stops everything.
TXT

if $once; then
  exit 0
fi
wait
