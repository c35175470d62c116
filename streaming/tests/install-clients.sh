#!/usr/bin/env bash
# Installs the independent clients the streaming tests drive (npm:
# spdy-transport and ws; PyPI: websocket-client) under DIR, by default
# <workspace>/target/streaming-clients. Quick when already installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/../../target/streaming-clients}
if ! command -v npm >/dev/null; then
  echo "install-clients: apt-get install nodejs npm" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
mkdir -p "$dir/node"
if [[ ! -f $dir/node/.installed ]] || ! cmp -s "$here/node/package.json" "$dir/node/package.json"; then
  echo "install-clients: npm install (spdy-transport, ws)" >&2
  cp "$here/node/package.json" "$dir/node/package.json"
  (cd "$dir/node" && npm install --no-audit --no-fund --no-package-lock --silent)
  touch "$dir/node/.installed"
fi
if [[ ! -x $dir/pyenv/bin/python ]]; then
  echo "install-clients: creating $dir/pyenv" >&2
  python3 -m venv "$dir/pyenv"
fi
if ! "$dir/pyenv/bin/python" -c 'import websocket' 2>/dev/null; then
  echo "install-clients: pip install websocket-client" >&2
  "$dir/pyenv/bin/python" -m pip install -q --disable-pip-version-check 'websocket-client>=1.8,<2'
fi
