#!/usr/bin/env bash
# Re-lock the Modal image: writes scripts/modal-requirements.txt, exact `==` pins of videostudio's runtime
# dependency closure (pyproject.toml's [project].dependencies and everything they pull in), which deploy.py's
# image installs with `pip_install_from_requirements`, so two deploys build the same image.
#
#   scripts/lock-modal.sh              # pin what .venv has installed (the versions the tests ran with)
#   scripts/lock-modal.sh --upgrade    # the newest releases pyproject.toml's ranges allow
#
# The resolver is uv's `pip compile` (pinned below, installed into a throwaway venv when `uv` is not on PATH).
# It resolves for the image's interpreter and platform (Python 3.11, x86_64 manylinux), not this machine's,
# with torch and torchvision held at deploy.py's TORCH_PINS. facenet-pytorch is not in the closure: the image
# installs it with --no-deps (its metadata pins old torch and numpy). Check the new file in with the change
# that needed it; tests/test_deploy.py checks it pins every runtime dependency within pyproject's range.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
PYTHON_VERSION=3.11                 # deploy.py: modal.Image.debian_slim(python_version="3.11")
PLATFORM=x86_64-manylinux_2_28      # Modal's containers: x86_64 Linux, glibc 2.28 or newer
OUT=scripts/modal-requirements.txt
VENV_PYTHON=${VENV_PYTHON:-.venv/bin/python}

mode=venv
case "${1:-}" in
  "") ;;
  --upgrade) mode=upgrade ;;
  -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--upgrade]" >&2; exit 2 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. the resolver
if command -v uv >/dev/null 2>&1 && [ "$(uv --version | cut -d' ' -f2)" = "$UV_VERSION" ]; then
  UV=uv
else
  python3 -m venv "$work/uv"
  "$work/uv/bin/python" -m pip install -q "uv==$UV_VERSION" 2>&1 | grep -v "is ignored: it is neither" || true
  UV="$work/uv/bin/uv"
  [ -x "$UV" ] || { echo "lock-modal: could not install uv==$UV_VERSION" >&2; exit 1; }
fi

# 2. constraints: deploy.py's torch pins, always; in venv mode, every version .venv has installed too
python3 - deploy.py > "$work/constraints.txt" <<'EOF'
import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "TORCH_PINS" for t in node.targets):
        print("\n".join(ast.literal_eval(node.value)))
        break
else:
    sys.exit("lock-modal: no TORCH_PINS in deploy.py")
EOF
if [ "$mode" = venv ]; then
  [ -x "$VENV_PYTHON" ] || { echo "lock-modal: no $VENV_PYTHON (run scripts/setup.sh, or use --upgrade)" >&2; exit 1; }
  # Editable installs (the project itself) and local version labels (+cpu builds) are not PyPI releases.
  "$VENV_PYTHON" -m pip list --format=freeze --exclude-editable 2>/dev/null \
    | grep -E '^[A-Za-z0-9._-]+==' | sed -E 's/\+[A-Za-z0-9.]+$//' \
    | grep -viE '^(torch|torchvision)==' >> "$work/constraints.txt"
fi

# 3. resolve pyproject.toml's runtime dependencies (no extras) for the image
"$UV" pip compile pyproject.toml \
  --python-version "$PYTHON_VERSION" --python-platform "$PLATFORM" \
  --constraints "$work/constraints.txt" \
  --upgrade --quiet \
  --no-emit-index-url \
  --custom-compile-command "scripts/lock-modal.sh${1:+ $1}" \
  --output-file "$work/requirements.txt"
# The constraints file is a temporary one: drop it from the "# via" notes (so the file changes only with
# its pins), and write a note left with one entry on one line, as uv does.
python3 - "$work/requirements.txt" "$OUT" <<'EOF'
import re, sys
lines = [l for l in open(sys.argv[1]) if not re.match(r" +# +(via )?-c .*constraints\.txt$", l)]
out, i = [], 0
while i < len(lines):
    single = (lines[i].strip() == "# via" and i + 1 < len(lines) and lines[i + 1].startswith("    #   ")
              and not (i + 2 < len(lines) and lines[i + 2].startswith("    #   ")))
    out.append(f"    # via {lines[i + 1].strip()[1:].strip()}\n" if single else lines[i])
    i += 2 if single else 1
open(sys.argv[2], "w").writelines(out)
EOF
echo "lock-modal: wrote $OUT ($(grep -cE '^[A-Za-z0-9._-]+==' "$OUT") pins, from $mode versions)"
