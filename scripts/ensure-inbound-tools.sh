#!/usr/bin/env bash
# What the inbound-webhook tests sign requests with: each provider's own library, sharing no
# code with Herald. From npm (into .tools/inbound-js): Stripe's Node library and GitHub's
# @octokit/webhooks-methods; from PyPI (into .tools/inbound-py): the Standard Webhooks library.
# Prints two lines: the npm prefix, then the Python path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stripe="23.2.0"
octokit="6.0.0"
standard="1.3.0"
js="$root/.tools/inbound-js"
py="$root/.tools/inbound-py"
have() { node -p "try { require('$js/node_modules/$1/package.json').version } catch { '' }" 2>/dev/null; }
if [ "$(have stripe)" != "$stripe" ] || [ "$(have @octokit/webhooks-methods)" != "$octokit" ]; then
  echo "==> installing stripe $stripe and @octokit/webhooks-methods $octokit into .tools/inbound-js (npm)" >&2
  mkdir -p "$js"
  npm install --silent --no-audit --no-fund --no-save --prefix "$js" \
    "stripe@$stripe" "@octokit/webhooks-methods@$octokit" >&2
fi
if ! PYTHONPATH="$py" python3 -c 'import standardwebhooks' 2>/dev/null; then
  echo "==> installing standardwebhooks $standard into .tools/inbound-py (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$py" "standardwebhooks==$standard" >&2
fi
echo "$js"
echo "$py"
