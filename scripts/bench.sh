#!/usr/bin/env bash
# Runs Herald's benchmark: builds the release binaries, then herald-bench, which starts its own
# nats-server, gateway, dispatchers and receiver and prints a table (JSON in
# target/herald-bench.json). Arguments go to herald-bench (`--help` lists them).
#
#   scripts/bench.sh                      # the full run the README's table comes from
#   scripts/bench.sh --payloads 256 --runs 1
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
export NATS_SERVER_BIN
echo "==> building the release binaries" >&2
cargo build --release --locked --bins --quiet
exec target/release/herald-bench "$@"
