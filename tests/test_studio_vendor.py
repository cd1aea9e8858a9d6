"""The studio's bundled browser modules (triggers/studio/static/vendor/) are exactly what
scripts/studio-vendor/build.mjs makes from the versions its package-lock.json pins."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR_BUILD = ROOT / "scripts" / "studio-vendor"
CHECKED_IN = ROOT / "triggers" / "studio" / "static" / "vendor"


def test_the_checked_in_bundles_are_what_the_pinned_build_makes(tmp_path):
    node = shutil.which("node")
    assert node and (VENDOR_BUILD / "node_modules" / "esbuild").is_dir(), "run scripts/setup.sh (it runs npm ci)"
    subprocess.run([node, "build.mjs"], cwd=VENDOR_BUILD, check=True, env={**os.environ, "STUDIO_VENDOR_OUT": str(tmp_path)},
                   capture_output=True, timeout=120)
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == sorted(p.name for p in CHECKED_IN.iterdir()) == ["LICENSES.txt", "json-schema.js", "yaml.js"]
    for name in built:
        assert (tmp_path / name).read_bytes() == (CHECKED_IN / name).read_bytes(), f"{name} differs: rebuild it"
    lock = json.loads((VENDOR_BUILD / "package-lock.json").read_text())["packages"]
    for package in ("@cfworker/json-schema", "js-yaml"):
        version = lock[f"node_modules/{package}"]["version"]
        assert f"{package} {version}" in (CHECKED_IN / "LICENSES.txt").read_text()
