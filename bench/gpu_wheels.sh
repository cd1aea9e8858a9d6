#!/usr/bin/env bash
# Download the wheels bench/gpu_check.sh needs on the lent GPU machine (nvidia-h200: Python 3.12, torch 2.11,
# transformers, accelerate, peft, safetensors, huggingface_hub, numpy, pillow, pyyaml... already there; no
# diffusers, bitsandbytes, torchao, pydantic) into .whl/ at the repository root, and keep .whl/ out of git
# (.git/info/exclude). Versions are the ones this repository's venv runs, so the GPU runs the code tested here.
#
#   bash bench/gpu_wheels.sh                       # all of them, bitsandbytes slimmed (19.4 MiB)
#   bash bench/gpu_wheels.sh --full-bitsandbytes   # bitsandbytes' wheel as published (41 MiB; 54 MiB in all)
#   bash bench/gpu_wheels.sh --no-bitsandbytes     # without it (13 MiB): no nf4, int8 on torchao, AdamW
#                                                  # instead of AdamW8bit for the LoRA steps
#
# bitsandbytes' wheel (41 MiB) holds one native library per CUDA version (11.8 … 13.2, ROCm, XPU); the device's
# torch is built for CUDA 13.0 (KINDS.md: torch 2.11.0+cu130), and bitsandbytes loads the library of torch's
# CUDA version. By default the wheel is repacked with only the CPU and CUDA 13.x libraries (RECORD rewritten
# to match), which takes it to 6.8 MiB.
#
# What each is for (Requires-Dist of each wheel checked against the device's package list, /work/.library/
# device/KINDS.md):
#   diffusers          the transformers' classes (Wan, Mochi), fp8 layerwise casting, LoRA integration; its
#                      Requires-Dist are there except importlib_metadata, which diffusers imports only on
#                      Python < 3.8 (importlib.metadata otherwise), so it is left out (it would also need
#                      lazy-importer)
#   torchao            fp8-dynamic (Float8DynamicActivationFloat8WeightConfig); torchao 0.18 wants torch >= 2.11
#   bitsandbytes       int8 on CUDA (LLM.int8), nf4, AdamW8bit (the LoRA trainer's optimizer on CUDA)
#   pydantic, pydantic_core, annotated_types, typing_inspection, typing_extensions
#                      schemas/ (the planner's jobs import schemas.brief; VideostudioError)
#   pydantic_settings, python_dotenv, ffmpeg_python, future
#                      core.settings / core.video, imported by functions.backends.infinitetalk (TARGET_MODULES)
#                      and functions.infinitetalk_dataset (InfiniteTalkCondition)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
WITH_BNB=1
SLIM_BNB=1
for arg in "$@"; do
  case "$arg" in
    --no-bitsandbytes) WITH_BNB=0 ;;
    --full-bitsandbytes) SLIM_BNB=0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# The distributions to carry, at the versions installed in the venv.
NAMES=(diffusers torchao pydantic pydantic_core annotated_types typing_inspection
       typing_extensions pydantic_settings python_dotenv ffmpeg_python future)
[ "$WITH_BNB" = 1 ] && NAMES+=(bitsandbytes)
SPECS=()
for name in "${NAMES[@]}"; do
  version="$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")" || {
    echo "$name is not installed in $PY's environment" >&2; exit 1; }
  SPECS+=("$name==$version")
done

# Ignored by git (the device tool still carries it when `carry` names it).
mkdir -p .git/info
touch .git/info/exclude
grep -qxF '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude

rm -rf .whl
mkdir -p .whl
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
for spec in "${SPECS[@]}"; do
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d .whl "$spec" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true  # a failure shows in the count below
done

if [ "$WITH_BNB" = 1 ] && [ "$SLIM_BNB" = 1 ]; then
  "$PY" - .whl/bitsandbytes-*.whl <<'PYEOF'
import re, sys, zipfile
from pathlib import Path

path = Path(sys.argv[1])
keep = re.compile(r"bitsandbytes/libbitsandbytes_(cpu|cuda13\d)\.so$")
drop = lambda name: name.startswith("bitsandbytes/libbitsandbytes_") and not keep.search(name)
slim = path.with_suffix(".slim")
with zipfile.ZipFile(path) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
        if drop(info.filename):
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = [l for l in data.decode().splitlines() if not drop(l.split(",", 1)[0])]
            data = ("\n".join(lines) + "\n").encode()
        dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
slim.replace(path)
print(f"repacked {path.name} with the CPU and CUDA 13.x libraries only")
PYEOF
fi

# One wheel per distribution (two stop the whole install there), and every one of them downloaded.
count="$(ls .whl/*.whl | wc -l)"
if [ "$count" -ne "${#SPECS[@]}" ]; then
  echo "expected ${#SPECS[@]} wheels, got $count:" >&2; ls .whl >&2; exit 1
fi
ls -l .whl | awk 'NR > 1 {printf "%10.1f MiB  %s\n", $5 / 1048576, $9}'
total="$(du -cb .whl/*.whl | tail -1 | cut -f1)"
awk -v t="$total" 'BEGIN {printf "total %.1f MiB in .whl/ (the working tree that travels, these included, " \
  "must stay under 64 MiB)\n", t / 1048576}'
if [ "$total" -gt $((58 * 1024 * 1024)) ]; then
  echo "warning: over 58 MiB of wheels; with the tree this may pass the 64 MiB limit (try --no-bitsandbytes)" >&2
fi
