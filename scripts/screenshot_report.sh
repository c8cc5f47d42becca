#!/usr/bin/env bash
# Render a sweep's report.html in headless Chromium and save a full-page PNG next to it, to
# look at what a reader sees. Needs Debian's chromium package (apt-get install chromium).
#   scripts/screenshot_report.sh forgetscope-demo/sweep
set -euo pipefail
dir="${1:?usage: scripts/screenshot_report.sh SWEEP_DIR}"
page="$(cd "$dir" && pwd)/report.html"
[ -f "$page" ] || { echo "error: $page not found (run forgetscope report $dir)" >&2; exit 2; }
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
  --window-size=1200,"${HEIGHT:-5200}" --screenshot="$dir/report_screenshot.png" "file://$page" 2>/dev/null
echo "screenshot: $dir/report_screenshot.png"
