#!/usr/bin/env bash
# Compares the working tree's build with an earlier one in one sitting, the regression guard of
# the hot path: builds REF (a git ref, e.g. the last release tag or `main~1`) and the working
# tree in release mode, then runs the same herald-bench RUNS times with each build's gateway and
# dispatchers, alternated (new first, then old, and so on), and prints every row's median for
# both and their ratio (new ÷ old). Rates, CPU per delivery and RSS are all rows, so a loss in
# any shows. Sittings on different machines cannot be compared; this one is one sitting.
#
#   scripts/bench-ab.sh REF [RUNS] [herald-bench options...]
#   scripts/bench-ab.sh main~1 3 --only ingest,e2e,ordered --subscriptions 1,10 --dispatchers 1 --runs 1
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
ref="${1:?usage: scripts/bench-ab.sh REF [RUNS] [herald-bench options...]}"
runs="${2:-3}"
shift $(( $# >= 2 ? 2 : 1 ))
NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
export NATS_SERVER_BIN
out="$root/target/ab"
rev="$(git rev-parse --short "$ref")"
scripts/build-ref.sh "$ref" >/dev/null
mkdir -p "$out/new"
echo "==> building the working tree" >&2
cargo build --release --locked --quiet -p herald-gateway -p herald-dispatcher -p herald-bench
cp target/release/herald-gateway target/release/herald-dispatcher "$out/new/"
for i in $(seq 1 "$runs"); do
  for side in new "old-$rev"; do
    echo "==> run $i of $runs: $side" >&2
    target/release/herald-bench --binaries "$out/$side" --json "$out/$side-$i.json" "$@" > "$out/$side-$i.txt"
  done
done
python3 - "$out" "$rev" "$runs" <<'PY'
import json, statistics, sys
out, rev, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
def rows(side):
    got = {}
    for i in range(1, runs + 1):
        for r in json.load(open(f"{out}/{side}-{i}.json"))["results"]:
            got.setdefault((r["payload_bytes"], r["measurement"], r["unit"]), []).append(r["value"])
    return got
new, old = rows("new"), rows(f"old-{rev}")
print(f"{'payload':>7}  {'measurement':<64} {'new (median)':>14} {'old ' + rev:>14}  {'new ÷ old':>9}  unit")
for key, values in new.items():
    if key not in old:
        continue
    n, o = statistics.median(values), statistics.median(old[key])
    ratio = f"{n / o:.2f}" if o else ""
    print(f"{key[0]:>6}B  {key[1][:64]:<64} {n:>14.1f} {o:>14.1f}  {ratio:>9}  {key[2]}")
print(f"every run's table: {out}/{{new,old-{rev}}}-N.txt")
PY
