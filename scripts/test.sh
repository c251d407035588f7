#!/usr/bin/env bash
# Runs every test: formatting and lints, unit tests, and the end-to-end suites against a real
# nats-server (installed into .tools/ if needed). This is the command CI runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# What the checkout looks like before: a test run must leave it so (checked at the end).
status_before="$(git status --porcelain 2>/dev/null || true)"

NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
export NATS_SERVER_BIN
echo "using $("$NATS_SERVER_BIN" --version)"
# The egress proxy the tests deliver through (Debian's tinyproxy).
TINYPROXY_BIN="$(scripts/ensure-tinyproxy.sh)"
export TINYPROXY_BIN
# The brokers the destination tests write to (Debian's rabbitmq-server and redis-server) and an
# AMQP client independent of Herald's (pika), which reads back what arrived.
HERALD_AMQP_PY="$(scripts/ensure-brokers.sh)"
export HERALD_AMQP_PY

# The Helm chart: rendered with every value set in deploy/helm/ci through the Helm SDK and
# validated against Kubernetes' schemas (Python tools from PyPI, kept in .tools/).
chart_py="$root/.tools/chart-py"
if ! PYTHONPATH="$chart_py" python3 -c 'import helm_python, kubernetes_validate, yaml' 2>/dev/null; then
  echo "installing the chart check's tools into .tools/ (helm-python-sdk, kubernetes-validate)"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$chart_py" helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 pyyaml==6.0.3
fi
PYTHONPATH="$chart_py" python3 scripts/check-chart.py
# An Ed25519 implementation independent of Herald's (Python's `cryptography`, i.e. OpenSSL), which
# the signing tests check v1a signatures with.
crypto_py="$root/.tools/crypto-py"
if ! PYTHONPATH="$crypto_py" python3 -c 'import cryptography.hazmat.primitives.asymmetric.ed25519' 2>/dev/null; then
  echo "installing the signature tests' verifier into .tools/ (cryptography)"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$crypto_py" 'cryptography>=42,<50'
fi
export HERALD_CRYPTO_PY="$crypto_py"
# The OpenTelemetry project's protobuf definitions (an OTLP receiver that shares no code with
# Herald's exporter) and the Prometheus project's text parser, for the observability tests.
otel_py="$root/.tools/otel-py"
if ! PYTHONPATH="$otel_py" python3 -c 'import opentelemetry.proto.collector.trace.v1.trace_service_pb2, prometheus_client.parser' 2>/dev/null; then
  echo "installing the observability tests' Python tools into .tools/ (opentelemetry-proto, prometheus-client)"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$otel_py" 'opentelemetry-proto>=1.27,<2' 'prometheus-client>=0.20,<1'
fi
export HERALD_OTEL_PY="$otel_py"
python3 scripts/check-dockerfile.py
# The alerting rules (checked and unit-tested by promtool, Debian's prometheus package) and the
# Grafana dashboard's queries.
python3 scripts/check-observability.py "$(scripts/ensure-promtool.sh)"
# The browser tests' Chromium (Debian's) and playwright-core (npm, into .tools/browser).
scripts/ensure-browser.sh >/dev/null
# What the inbound-webhook tests sign with: Stripe's and GitHub's own libraries (npm) and the
# Standard Webhooks library (PyPI), into .tools/ (after ensure-browser.sh, which installs Node.js).
inbound_tools="$(scripts/ensure-inbound-tools.sh)"
HERALD_INBOUND_JS="$(sed -n 1p <<<"$inbound_tools")"
HERALD_INBOUND_PY="$(sed -n 2p <<<"$inbound_tools")"
export HERALD_INBOUND_JS HERALD_INBOUND_PY
# The user's book (mdBook, installed into .tools/ if missing): it must build; the `docs` tests
# check its links and its references against the binaries.
scripts/book.sh >/dev/null

cargo fmt --all -- --check
# One build of the workspace: the binaries (the crash tests run herald-dispatcher as a process)
# and every test target, with lints as errors.
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
# The README's first command (the demo), end to end (its own ports and data folder).
NATS_PORT=24222 GATEWAY_PORT=28080 DISPATCHER_PORT=29090 RECEIVER_PORT=29999 scripts/dev.sh --once >/dev/null
echo "scripts/dev.sh --once: the demo webhook arrived and verified"
# The API against its own OpenAPI document (schemathesis, bounded).
scripts/api-fuzz.sh | tail -n 4
# The benchmark in a tiny configuration, so it cannot rot (it never fails on a number).
cargo run -q -p herald-bench --locked -- --smoke --json target/herald-bench-smoke.json >target/herald-bench-smoke.txt
echo "herald-bench --smoke: ran ($(head -n 1 target/herald-bench-smoke.txt))"
# One closing line over all test binaries.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all test binaries: %d passed, %d failed\n", p, f }' "$log"
# A test run leaves the checkout as it found it: tools' caches and outputs go to target/ or
# .tools/ (both ignored), never into tracked or unignored files.
status_after="$(git status --porcelain 2>/dev/null || true)"
if [ "$status_before" != "$status_after" ]; then
  echo "the test run changed the checkout (git status --porcelain before / after):" >&2
  diff <(echo "$status_before") <(echo "$status_after") >&2 || true
  exit 1
fi
echo "git status: the checkout is as the test run found it"
