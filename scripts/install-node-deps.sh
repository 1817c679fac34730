#!/usr/bin/env bash
# Installs the Node packages the project uses, each into the folder that owns it:
#   compat/       npm yjs + y-websocket + ws: the stock Yjs client of tests/compat
#   bench/peers/  @y/websocket-server, @hocuspocus/server + provider, the load generator of
#                 bench/peers.py
# From the committed lockfiles (npm ci), without install scripts (none is needed). Idempotent:
# a folder whose node_modules was installed from the same lockfile is left alone.
#
#   scripts/install-node-deps.sh            # both folders
#   scripts/install-node-deps.sh compat     # only the test client
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null 2>&1; then
    echo "install-node-deps: npm not found (apt-get install nodejs npm)" >&2
    exit 1
fi

folders=("$@")
if [ ${#folders[@]} -eq 0 ]; then
    folders=(compat bench/peers)
fi

for dir in "${folders[@]}"; do
    case "$dir" in
        compat | bench/peers) ;;
        bench) dir=bench/peers ;;
        *)
            echo "install-node-deps: unknown folder $dir (compat or bench/peers)" >&2
            exit 2
            ;;
    esac
    stamp="$dir/node_modules/.crdtstate-lock.sha256"
    if [ -f "$dir/package-lock.json" ]; then
        want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
        if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
            echo "install-node-deps: $dir up to date"
            continue
        fi
        echo "install-node-deps: npm ci in $dir"
        (cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
    else
        echo "install-node-deps: npm install in $dir (no lockfile yet)"
        (cd "$dir" && npm install --no-audit --no-fund --ignore-scripts --loglevel=error)
        want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
    fi
    echo "$want" >"$stamp"
done
