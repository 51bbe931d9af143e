#!/usr/bin/env bash
# Build the documentation site and take screenshots of its home page and one experiment page
# with headless Chromium (Debian: apt-get install chromium), for a look at what users see.
#   bash scripts/screenshot_site.sh [OUT_DIR]        # default: site-shots/
set -euo pipefail
out=${1:-site-shots}
site=$(mktemp -d)
python -m mkdocs build --strict -q -d "$site"
port=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
python -m http.server "$port" --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
server=$!
trap 'kill $server; rm -rf "$site"' EXIT
sleep 1
mkdir -p "$out"
for page in "" experiments/path-patching/; do
  name=$(echo "${page:-home}" | tr -d '/' | tr -c 'a-z0-9-\n' '_')
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,1800 \
    --screenshot="$out/$name.png" "http://127.0.0.1:$port/$page" 2>/dev/null
done
ls "$out"
