#!/usr/bin/env bash
# Runs every test: formatting and lints, unit tests, and the end-to-end suites against a real
# nats-server (installed into .tools/ if needed). This is the command CI runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
export NATS_SERVER_BIN
echo "using $("$NATS_SERVER_BIN" --version)"

cargo fmt --all -- --check
# One build of the workspace: the binaries (the crash tests run herald-dispatcher as a process)
# and every test target, with lints as errors.
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
# One closing line over all test binaries.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all test binaries: %d passed, %d failed\n", p, f }' "$log"
