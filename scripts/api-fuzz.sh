#!/usr/bin/env bash
# Runs schemathesis (from PyPI, kept in .tools/) against a running local stack, driven by the
# gateway's own /openapi.json: no server error, every answer matching the documented schema,
# status code and content type. Bounded: a fixed number of examples per operation.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

st_py="$root/.tools/schemathesis"
if ! PYTHONPATH="$st_py" python3 -c 'import schemathesis' 2>/dev/null; then
  echo "installing schemathesis into .tools/"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$st_py" schemathesis==4.32.5
fi

# Fixed ports below the ephemeral range, apart from the demo run's.
export NATS_PORT=25222 GATEWAY_PORT=28180 DISPATCHER_PORT=29190 RECEIVER_PORT=29998
scripts/dev.sh >"$root/.herald-dev/api-fuzz-stack.log" 2>&1 &
stack=$!
trap 'kill $stack 2>/dev/null; wait $stack 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  grep -q 'Herald is running' "$root/.herald-dev/api-fuzz-stack.log" 2>/dev/null && break
  sleep 0.2
done
grep -q 'Herald is running' "$root/.herald-dev/api-fuzz-stack.log" || { cat "$root/.herald-dev/api-fuzz-stack.log" >&2; exit 1; }
token="$(sed -n 's/^admin=//p' "$root/.herald-dev/tokens")"

# Run from target/ so that schemathesis keeps its cache (.schemathesis/) out of the checkout.
mkdir -p "$root/target/schemathesis"
cd "$root/target/schemathesis"
PYTHONPATH="$st_py" timeout 600 python3 "$st_py/bin/st" run "http://127.0.0.1:$GATEWAY_PORT/openapi.json" \
  -H "Authorization: Bearer $token" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
  --max-examples 20 --generation-deterministic --phases examples,coverage,fuzzing
