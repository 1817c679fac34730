#!/usr/bin/env bash
# The README's first command: install crdtstate into .venv (idempotent), then run the demo
# (a relay and three agent instances as real processes; a partition, a killswitch flipped
# on both sides, the heal, convergence). Exit 0 when the instances converged, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/python -m crdtstate.demo "$@"
