#!/usr/bin/env bash
# Where a Herald process spends its CPU under the benchmark's load: runs herald-bench in the
# background, attaches `perf record --call-graph dwarf` to the process for a while, and prints the
# heaviest symbols, inclusive of what they call. Needs root (perf attaching to a process) and
# Debian's linux-perf, installed here if missing.
#
#   scripts/profile.sh dispatcher        # the dispatcher draining one subscription's backlog
#   scripts/profile.sh gateway 20        # the gateway under single-event and batch ingest, 20 s
#   BINARIES=/tmp/old scripts/profile.sh gateway   # another build's binaries (e.g. from
#                                        # scripts/build-ref.sh), to compare two builds' profiles
#
# The recording stays in target/profile/<process>.data (<process>-<dir>.data for BINARIES=dir)
# for `perf report -i`.
set -euo pipefail
process="${1:-dispatcher}"
seconds="${2:-15}"
case "$process" in
  dispatcher) load=(--only e2e --subscriptions 1 --dispatchers 1 --runs 8 --events 40000 --payloads 256) ;;
  gateway) load=(--only ingest --runs 8 --payloads 256) ;;
  *) echo "usage: $0 dispatcher|gateway [seconds]" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if ! command -v perf > /dev/null; then
  echo "==> installing linux-perf (apt)" >&2
  apt-get install -y -q linux-perf > /dev/null
fi
NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
export NATS_SERVER_BIN
echo "==> building the release binaries" >&2
cargo build --release --locked --bins --quiet
binaries="${BINARIES:-$root/target/release}"
binaries="$(cd "$binaries" && pwd)"
out="target/profile"
mkdir -p "$out"
# A session of its own, so that stopping it stops the nats-server and processes it started.
setsid target/release/herald-bench --binaries "$binaries" "${load[@]}" > "$out/bench.log" 2>&1 &
bench=$!
trap 'kill -- "-$bench" 2> /dev/null || true' EXIT
pid=""
for _ in $(seq 1 120); do
  pid="$(pgrep -n -f "$binaries/herald-$process" || true)"
  [ -n "$pid" ] && break
  sleep 1
done
[ -n "$pid" ] || { echo "herald-$process did not start; see $out/bench.log" >&2; exit 1; }
# The benchmark measures its raw limits first: start recording once the process is busy (a
# fifth of a CPU or more over a second).
busy() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
for _ in $(seq 1 180); do
  before="$(busy)"
  sleep 1
  [ $(($(busy) - before)) -ge 20 ] && break
done
echo "==> recording herald-$process (pid $pid) for ${seconds}s" >&2
data="$out/$process${BINARIES:+-$(basename "$binaries")}.data"
perf record -q -F 997 --call-graph dwarf,16384 -o "$data" -p "$pid" -- sleep "$seconds"
perf report -i "$data" --children --sort symbol --stdio -g none 2> /dev/null |
  grep -v '^#' | grep -v '^$' | sed 's/ \{3,\}/  /g' | cut -c1-160 | awk 'NR <= 60'
