#!/usr/bin/env bash
# Builds the gateway and dispatcher of a git ref (a release tag, `main~1`, a commit) in release
# mode, in a worktree of its own, and prints the directory holding them: what the benchmark's
# regression guard runs this build against.
#
#   scripts/bench.sh --only regression --baseline "$(scripts/build-ref.sh v0.9.0)"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
ref="${1:?usage: scripts/build-ref.sh REF}"
rev="$(git rev-parse --short "$ref")"
out="$root/target/ab/old-$rev"
if [ ! -x "$out/herald-dispatcher" ] || [ ! -x "$out/herald-gateway" ]; then
  echo "==> building $ref ($rev)" >&2
  mkdir -p "$out"
  tree="$(mktemp -d)"
  git worktree add --detach -f "$tree" "$rev" >/dev/null
  (cd "$tree" && CARGO_TARGET_DIR="$root/target/ab/target-old" cargo build --release --locked --quiet -p herald-gateway -p herald-dispatcher)
  cp "$root/target/ab/target-old/release/herald-gateway" "$root/target/ab/target-old/release/herald-dispatcher" "$out/"
  git worktree remove --force "$tree"
fi
echo "$out"
