"""A local folder as the bucket: the embedded default.

Atomicity comes from the file system: every write goes to a hidden temp file in the
same directory and is renamed into place (`os.replace`), so a reader or a crash never
sees half an object. Create-if-absent uses `os.link`, which fails if the target exists
and publishes a complete file in one step. Compare-and-swap (`if_match`) holds an
`flock` on one lock file so concurrent processes serialize their check-then-rename.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from core.storage.base import ObjectInfo, ObjectNotFound, PreconditionFailed, Storage, file_sha256, validate_key

STATE_DIR = ".videostudio"  # hidden: never listed, never part of the bucket's objects


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.root / STATE_DIR
        self.state_dir.mkdir(exist_ok=True)
        self.name = self.root.name or "bucket"
        self._lock_path = self.state_dir / "storage.lock"

    # -- paths -----------------------------------------------------------------
    def path(self, key: str) -> Path:
        """The file behind `key` (for local-only callers such as the folder watcher)."""
        return self.root.joinpath(*validate_key(key).split("/"))

    def key_for(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def _temp_beside(self, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"

    @staticmethod
    def _info(key: str, st: os.stat_result) -> ObjectInfo:
        # Every write is a new file renamed into place, so inode + mtime + size changes on each write.
        etag = f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"
        return ObjectInfo(key=key, size=st.st_size, etag=etag,
                          modified=datetime.fromtimestamp(st.st_mtime, tz=timezone.utc))

    @contextmanager
    def _cas_lock(self) -> Iterator[None]:
        with open(self._lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- interface -------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def put_bytes(self, key, data, *, if_none_match=False, if_match=None, content_type=None) -> ObjectInfo:
        target = self.path(key)
        tmp = self._temp_beside(target)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return self._publish(key, tmp, target, if_none_match=if_none_match, if_match=if_match)

    def put_file(self, key, path, *, content_type=None) -> ObjectInfo:
        target = self.path(key)
        tmp = self._temp_beside(target)
        shutil.copyfile(path, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        return self._publish(key, tmp, target)

    def _publish(self, key: str, tmp: Path, target: Path, *, if_none_match: bool = False,
                 if_match: str | None = None) -> ObjectInfo:
        try:
            if if_none_match:
                try:
                    os.link(tmp, target)  # atomic, fails if the key exists
                except FileExistsError:
                    raise PreconditionFailed(key) from None
            elif if_match is not None:
                with self._cas_lock():
                    current = self.stat(key)
                    if current is None or current.etag != if_match:
                        raise PreconditionFailed(key)
                    os.replace(tmp, target)
            else:
                os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return self._info(key, target.stat())

    def download(self, key: str, path: Path) -> Path:
        source = self.path(key)
        if not source.is_file():
            raise ObjectNotFound(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        return path

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self.path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not os.path.isfile(self.path(key)):
            return None
        return self._info(key, st)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the directory that can hold the prefix, skipping hidden files (temp files, state).
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*base_dir.split("/")) if base_dir else self.root
        if not start.is_dir():
            return
        found: list[tuple[str, os.stat_result]] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for filename in filenames:
                if _is_hidden(filename):
                    continue
                key = filename if rel_dir == "." else f"{rel_dir}/{filename}"
                if key.startswith(prefix):
                    try:
                        found.append((key, os.stat(os.path.join(dirpath, filename))))
                    except FileNotFoundError:
                        continue  # deleted while listing
        for key, st in sorted(found):
            yield self._info(key, st)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def url(self, key: str, *, expires_s: int = 3600) -> str:
        return self.path(key).as_uri()

    def content_hash(self, key: str) -> str:
        try:
            return file_sha256(self.path(key))
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
