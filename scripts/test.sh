#!/usr/bin/env bash
# Installs crdtstate with its test tools into .venv (idempotent) and runs every check:
# ruff, mypy, the test suite (unit, property, contract, integration, chaos, simulation).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,dev,nats]'
if command -v npm >/dev/null 2>&1; then
    bash scripts/install-node-deps.sh compat   # the stock Yjs client of tests/compat
fi
echo "== ruff"
.venv/bin/ruff check crdtstate relay chaos tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
