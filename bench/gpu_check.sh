#!/usr/bin/env bash
# The GPU check on a lent GPU machine (docs/benchmarks.md, "GPU check"): install the wheels bench/gpu_wheels.sh
# put in .whl/ into /tmp/site, run bench/gpu_check.py, and keep its JSON and the whole log under $OUT
# ($OUT/gpu_check.json, $OUT/log). Through the device tool, from this machine:
#
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# Under 8 minutes in all: the install (seconds), then gpu_check.py with a 400 s measurement budget (each part
# skips what no longer fits, with a note) inside a hard limit of GPU_CHECK_TIMEOUT seconds (default 450: SIGINT,
# which still writes the JSON and the table; SIGKILL 15 s later). Arguments go to gpu_check.py, e.g. a short
# rerun:  bash bench/gpu_check.sh --budget-s 150 --parts infinitetalk_render --it-methods int8 nf4
#
# Locally (no install: the venv has everything):
#   PYTHON=.venv/bin/python GPU_CHECK_NO_INSTALL=1 bash bench/gpu_check.sh --tiny
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$PWD/bench/out/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PIP_ROOT_USER_ACTION=ignore  # nothing can be fetched there

main() {
  local started=$SECONDS
  echo "[gpu_check.sh] $(date -u +%FT%TZ) on $(hostname), $("$PY" --version 2>&1)"
  if command -v nvidia-smi >/dev/null; then  # read-only queries
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.mem,temperature.gpu \
      --format=csv 2>&1 || true
  fi
  if [ "${GPU_CHECK_NO_INSTALL:-0}" != 1 ]; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
      echo "[gpu_check.sh] no wheels in .whl/: run bash bench/gpu_wheels.sh here, then carry=[\".whl\"]" >&2
      return 3
    fi
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl || { echo "[gpu_check.sh] pip install failed" >&2; return 4; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "[gpu_check.sh] installed $(ls .whl/*.whl | wc -l) wheels into /tmp/site in $((SECONDS - started)) s"
  else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  "$PY" -c "import torch; print('[gpu_check.sh] torch', torch.__version__, 'CUDA', torch.version.cuda, \
'available', torch.cuda.is_available())"
  timeout -k 15 -s INT "${GPU_CHECK_TIMEOUT:-450}" "$PY" bench/gpu_check.py --out "$OUT/gpu_check.json" "$@"
  local rc=$?
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used,clocks.sm,temperature.gpu --format=csv,noheader 2>&1 || true
  fi
  echo "[gpu_check.sh] exit $rc after $((SECONDS - started)) s; $OUT/gpu_check.json, $OUT/log"
  return $rc
}

main "$@" 2>&1 | tee "$OUT/log"
exit "${PIPESTATUS[0]}"
