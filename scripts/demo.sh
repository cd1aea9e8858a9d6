#!/usr/bin/env bash
# Set up everything, then render the example brief on the embedded default (./bucket).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/videostudio run examples/hello.yaml --bucket "${VIDEOSTUDIO_BUCKET:-./bucket}" "$@"
