#!/usr/bin/env bash
# What the browser tests need: Debian's Chromium (installed with apt-get if missing; nothing
# downloads a browser build) and playwright-core from npm (into .tools/browser, which is
# ignored). Prints two lines: the Chromium binary, then the playwright-core module directory.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="1.65.1"
chromium="${HERALD_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "Chromium is missing; install it as root: apt-get install -y chromium" >&2
    exit 1
  fi
  echo "==> installing chromium (apt-get)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null \
    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null; }
fi
if ! command -v node >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "Node.js is missing; install it as root: apt-get install -y nodejs npm" >&2
    exit 1
  fi
  echo "==> installing nodejs and npm (apt-get)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm >/dev/null
fi
dir="$root/.tools/browser"
module="$dir/node_modules/playwright-core"
if [ "$(node -p "try { require('$module/package.json').version } catch { '' }" 2>/dev/null)" != "$version" ]; then
  echo "==> installing playwright-core $version into .tools/browser (npm)" >&2
  mkdir -p "$dir"
  npm install --silent --no-audit --no-fund --no-save --prefix "$dir" "playwright-core@$version" >&2
fi
echo "$chromium"
echo "$module"
