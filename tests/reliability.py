"""Helpers for the reliability tests (tests/test_reliability_*.py): fault-injected workers, bucket integrity checks.

`VIDEOSTUDIO_RELIABILITY_FULL=1` switches the tests from CI sizes to the full sizes reported in
docs/reliability.md (`full(ci, full_size)` picks one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import REPO, read_log, worker_env
from core.storage.base import validate_key

FULL = os.environ.get("VIDEOSTUDIO_RELIABILITY_FULL", "") not in ("", "0")
FAULT_WORKER = str(REPO / "tests" / "fault_worker.py")
RESULTS_DIR = Path(os.environ.get("VIDEOSTUDIO_RELIABILITY_OUT", REPO / "bench" / "out" / "reliability"))


def full(ci: int, full_size: int) -> int:
    return full_size if FULL else ci


def record(name: str, data: dict) -> None:
    """Write a test's figures to bench/out/reliability/<name>.json (what docs/reliability.md quotes)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    data = {"full": FULL, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **data}
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))


def start_fault_up(bucket: Path, log_path: Path, fault: dict | None = None, **env: str) -> subprocess.Popen:
    """`videostudio up` (through tests/fault_worker.py) with a fault plan; a new session, so killpg reaches it."""
    handle = open(log_path, "ab")
    environment = worker_env(**env)
    environment["VS_FAULT"] = json.dumps(fault or {})
    proc = subprocess.Popen([sys.executable, FAULT_WORKER, "up", "--bucket", str(bucket)], stdout=handle,
                            stderr=subprocess.STDOUT, env=environment, start_new_session=True, cwd=bucket.parent)
    handle.close()
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def job_manifests(bucket: Path) -> list[dict]:
    out = []
    for path in sorted((bucket / "jobs").glob("*/manifest.json")):
        manifest = load_json(path)
        if manifest is not None:
            out.append(manifest)
    return out


# ------------------------------------------------------------------------------------------ integrity
def _check_file(path: Path) -> None:
    """The file is whole: it parses, decodes or loads as its type says."""
    name = path.name
    data = path.read_bytes()
    if name.endswith(".json"):
        json.loads(data)
    elif name.endswith(".jsonl"):
        for line in data.splitlines():
            if line.strip():
                json.loads(line)
    elif name.endswith((".jpg", ".jpeg", ".png")):
        with Image.open(path) as image:
            image.load()
    elif name.endswith(".mp4"):
        result = subprocess.run(["ffmpeg", "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"],
                                capture_output=True, text=True)
        assert result.returncode == 0 and not result.stderr.strip(), f"{path}: {result.stderr[-300:]}"
    elif name.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                handle.get_tensor(key)
    elif name.endswith(".pt"):
        with zipfile.ZipFile(path) as archive:  # torch.save's format: a CRC check of every member
            assert archive.testzip() is None, path
    else:
        assert len(data) > 0 or name.endswith((".yaml", ".yml")), path


def handoff_keys(record: dict) -> set[str]:
    """Bucket keys a stage's typed record hands on (fields named `*_key`, nested plans included)."""
    keys: set[str] = set()
    for name, value in record.items():
        if isinstance(value, dict):
            keys |= handoff_keys(value)
        elif name.endswith("_key") and isinstance(value, str):
            keys.add(value)
    return keys


def referenced_keys(manifest: dict) -> set[str]:
    """Every bucket key a committed job manifest points at."""
    keys: set[str] = set()
    for record in manifest.get("stages", {}).values():
        keys.update(record.get("outputs", {}).values())
    keys.update(manifest.get("outputs", {}).values())
    for record in manifest.get("stages", {}).values():
        keys |= handoff_keys(record.get("handoff") or {})
    for delivery in manifest.get("webhooks", []):
        keys.add(f"jobs/{manifest['job_id']}/webhooks/{delivery['webhook_id']}.json")
    return keys


def check_bucket_integrity(bucket: Path) -> dict[str, int]:
    """No committed manifest references a missing, partial or hidden (temp) file.

    Looks at job manifests, stage manifests, avatar manifests and the training checkpoint pointer.
    Returns counts of what it checked.
    """
    keys: set[str] = set()
    manifests = 0
    for path in (bucket / "jobs").glob("*/manifest.json") if (bucket / "jobs").exists() else []:
        manifest = json.loads(path.read_text())  # a manifest itself is never half-written
        manifests += 1
        keys |= referenced_keys(manifest)
        for name, record in manifest["stages"].items():
            if record["status"] == "succeeded":
                stage_manifest = json.loads((path.parent / name / "manifest.json").read_text())
                assert stage_manifest["status"] == "succeeded", (path, name)
                keys.update(stage_manifest["outputs"].values())
            else:
                assert not record.get("outputs"), f"{path}: {name} is {record['status']} but lists outputs"
    for path in (bucket / "jobs").glob("*/*/manifest.json") if (bucket / "jobs").exists() else []:
        json.loads(path.read_text())
        manifests += 1
    for path in (bucket / "avatars").glob("*/manifest.json") if (bucket / "avatars").exists() else []:
        avatar = json.loads(path.read_text())
        manifests += 1
        keys.add(avatar["weights_key"])
    for pointer in (bucket / "jobs").glob("*/train/checkpoints/latest.json") if (bucket / "jobs").exists() else []:
        keys.add(json.loads(pointer.read_text())["key"])
    files = 0
    for key in sorted(keys):
        validate_key(key.rstrip("/"))  # no hidden parts: a temp file is never referenced
        path = bucket / key
        if key.endswith("/"):
            children = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
            assert children, f"{key} is referenced but empty"
            for child in children:
                _check_file(child)
                files += 1
        else:
            assert path.is_file(), f"{key} is referenced but missing"
            _check_file(path)
            files += 1
    return {"manifests": manifests, "keys": len(keys), "files": files}


# ------------------------------------------------------------------------------------------ outputs
def decoded_frames(path: Path) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values


__all__ = ["FULL", "check_bucket_integrity", "decoded_frames", "fd_count", "full", "job_manifests", "proc_status",
           "read_log", "record", "start_fault_up", "wait_exit"]
