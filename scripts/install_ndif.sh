#!/usr/bin/env bash
# Install the loopback NDIF server used by the remote tests (tests/ndif_stack.py):
# Debian's redis-server, and a Python 3.12 venv outside the clone with the pinned server
# stack of tests/ndif_server/requirements.txt. Idempotent: a venv whose stamp matches the
# requirements is kept. Costs ~2 min and ~6 GB (PyPI's torch for Python 3.12 is a CUDA build).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
req="$here/tests/ndif_server/requirements.txt"
venv="${REASON_INTERP_NDIF_VENV:-$HOME/.cache/reason-interp/ndif-venv}"

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  apt-get install -y -qq redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
fi

stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -x "$venv/bin/ndif" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "NDIF server venv up to date: $venv"
  exit 0
fi
py="${REASON_INTERP_NDIF_PYTHON:-}"
if [ -z "$py" ]; then  # a pyenv shim may exist and still refuse to run, so try each candidate
  for c in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python /usr/bin/python3.12; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then py="$c"; break; fi
  done
fi
if [ -z "$py" ]; then
  echo "the NDIF server needs Python 3.12: set REASON_INTERP_NDIF_PYTHON=/path/to/python3.12" >&2
  exit 1
fi
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
echo "$want" > "$stamp"
echo "NDIF server venv ready: $venv"
