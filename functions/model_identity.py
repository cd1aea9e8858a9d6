"""What identifies a model's weights in a cache key, without loading them.

- `tiny` (built in code with a fixed seed): its component configs and the package versions that build it;
- a local file or folder: the sha256 of its files' bytes, computed once per worker per (path, size, mtime);
- a hub id (`owner/repo`, or `owner/repo:file`): the commit its local cache resolves `main` to.
Anything else (a hub id this machine has never downloaded) has no known identity: the caller then does not
cache, rather than risk reusing a render of other weights. Identities are digests: no machine path or hub
token ever goes into a key, an index entry or a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

from core.storage.base import file_sha256

_file_hashes: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def digest(value: Any) -> str:
    """sha256 of a JSON-able value in canonical form (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def package_versions() -> dict[str, str | None]:
    """Versions whose change can change pixels (kernels, schedulers, random initialisation of tiny models)."""
    versions: dict[str, str | None] = {}
    for name in ("videostudio", "torch", "diffusers", "transformers", "peft", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _file_identity(path: Path) -> str:
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _lock:
        known = _file_hashes.get(memo)
    if known is None:
        known = file_sha256(path)  # real weights: once per worker, ~1 GB/s
        with _lock:
            _file_hashes[memo] = known
    return known


def _path_identity(path: Path) -> str:
    if path.is_file():
        return _file_identity(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return digest([[str(p.relative_to(path)), _file_identity(p)] for p in files])


def _hub_commit(repo: str) -> str | None:
    """The commit `main` resolves to in this machine's hub cache, or None if the repo was never downloaded."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def source_identity(ref: str, *, tiny: dict[str, Any] | None = None) -> str | None:
    """The identity of the weights `ref` names (see the module docstring); `tiny`: the configs `tiny` builds from."""
    if ref == "tiny":
        return "tiny:" + digest({"configs": tiny or {}, "versions": package_versions()})
    path = Path(os.path.expanduser(ref))
    if path.exists():
        return "path:" + _path_identity(path)
    repo, _, filename = ref.partition(":")
    if repo.count("/") == 1:
        commit = _hub_commit(repo)
        return None if commit is None else "hub:" + digest([repo, filename, commit])
    return None
