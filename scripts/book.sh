#!/usr/bin/env bash
# Builds the user's book (docs/, mdBook) into docs/book/, installing mdBook into .tools/mdbook
# first if it is missing (`cargo install` from crates.io, without its server, watcher and search,
# which a build does not need). The suite's `docs` tests check what mdBook does not: links and
# headings, the configuration, API and metrics references against the binaries.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="0.5.4"
bin="$root/.tools/mdbook/bin/mdbook"
if [ ! -x "$bin" ] || [ "$("$bin" --version 2>/dev/null)" != "mdbook v$version" ]; then
  echo "==> installing mdbook $version into .tools/mdbook (cargo install)" >&2
  cargo install --quiet --locked --no-default-features --root "$root/.tools/mdbook" mdbook --version "$version" >&2
fi
"$bin" build "$root/docs" >&2
echo "$root/docs/book"
