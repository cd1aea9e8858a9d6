#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine: ffmpeg, a .venv with pinned torch, the project, facenet-pytorch.
# Re-running is cheap: it skips pip when nothing it depends on has changed.
set -euo pipefail
cd "$(dirname "$0")/.."

have_all() { for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || return 1; done; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. ffmpeg and ffprobe (ffmpeg-python shells out to both; Debian's package brings both)
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  echo "setup: installing ffmpeg from Debian"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq ffmpeg >/dev/null
fi

# 1a. chromium and its driver for the web studio's browser tests (tests/test_studio.py, driven by selenium)
if ! have_all chromium chromedriver; then
  echo "setup: installing chromium and chromium-driver from Debian (for the web studio's browser tests)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

# 1b. a one-node Ceph RGW for the S3 integration tests (scripts/ceph-rgw.sh starts it; nothing runs as a service)
if ! have_all ceph-mon ceph-osd radosgw radosgw-admin monmaptool ceph openssl curl; then
  echo "setup: installing ceph-mon, ceph-osd and radosgw from Debian (for the S3 tests)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    ceph-mon ceph-osd radosgw ceph-common openssl curl >/dev/null
fi

# 1c. Node and npm, for the studio's build-time tools (scripts/studio-vendor: esbuild, and axe-core for the
#     accessibility tests). Users of the studio never need Node: the bundles are checked in and packaged.
if ! have_all node npm; then
  echo "setup: installing nodejs and npm from Debian (the web studio's build and accessibility tools)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
vendor_stamp="scripts/studio-vendor/node_modules/.videostudio-installed"
vendor_want="$(sha256sum scripts/studio-vendor/package-lock.json | cut -d' ' -f1)"
if [ "$(cat "$vendor_stamp" 2>/dev/null)" != "$vendor_want" ]; then
  echo "setup: npm ci in scripts/studio-vendor (versions pinned by its package-lock.json)"
  npm ci --prefix scripts/studio-vendor --no-audit --no-fund --loglevel=error
  echo "$vendor_want" > "$vendor_stamp"
fi

# 2. a virtual environment with Python 3.11
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi

pip_quiet() {  # pip, without the noise of this machine's optional local indexes
  set +e
  .venv/bin/python -m pip "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory"
  local status=${PIPESTATUS[0]}
  set -e
  return "$status"
}

stamp=".venv/.videostudio-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing torch 2.14.1, torchvision 0.29.1 and videostudio into .venv"
  pip_quiet install -q --upgrade pip
  # 3. torch first, pinned (torchvision is needed by MTCNN's NMS)
  pip_quiet install -q "torch==2.14.1" "torchvision==0.29.1"
  # 4. the project and its test tools
  pip_quiet install -q -e ".[dev]"
  # 5. facenet-pytorch without its metadata's pins on old torch and numpy
  pip_quiet install -q --no-deps "facenet-pytorch==2.6.0"
  # 6. mediapipe's selfie segmentation (the compose stage; its tflite model is in the wheel) without its pins:
  #    protobuf<5 (modal and onnxruntime need newer), jax and a second OpenCV. Its runtime needs (numpy,
  #    protobuf, attrs, opencv, matplotlib) are in pyproject.toml.
  pip_quiet install -q --no-deps "mediapipe==0.10.14"
  echo "$want" > "$stamp"
fi
