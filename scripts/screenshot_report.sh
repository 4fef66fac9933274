#!/usr/bin/env bash
# Render a run's report.html in headless Debian chromium and save a PNG (a human-eye check of the report).
#   apt-get install -y chromium        # once
#   scripts/screenshot_report.sh s3://bucket/run out.png [WIDTH [HEIGHT]]   (S3 credentials: the AWS_* variables)
set -euo pipefail
uri=${1:?output URI}; png=${2:-report.png}; width=${3:-1100}; height=${4:-1500}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python - "$uri" "$tmp/report.html" <<'PY'
import sys
from imagefleet.actors.storage import resolve_store_spec
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import S3Config
uri, dest = sys.argv[1], sys.argv[2]
open(dest, "wb").write(open_store(uri, resolve_store_spec(uri, S3Config())).get("report.html"))
PY
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$tmp/profile" --window-size="$width,$height" --hide-scrollbars \
  --screenshot="$(realpath -m "$png")" "file://$tmp/report.html"
echo "wrote $png"
