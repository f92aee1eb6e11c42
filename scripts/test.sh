#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine, then run it.
#   scripts/test.sh [pytest args...]
# System packages (prometheus for the dashboard integration test, redis-server for the
# shared fingerprint store, node/npm for the TypeScript-SDK and Claude Code proxy tests) are installed
# with apt-get when missing and we are root; otherwise the script says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "scripts/test.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "scripts/test.sh: please install: ${missing[*]} (e.g. sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev]'

if [ -f tests/node/package.json ]; then
  (cd tests/node && npm install --no-audit --no-fund --silent >/dev/null)
fi

exec .venv/bin/python -m pytest "$@"
