"""The seam through which core/ reads batch files without knowing their formats (functions/batch_file.py)."""

from __future__ import annotations

from typing import Protocol

from schemas.batch import BatchPlan


class BatchFormat(Protocol):
    """Which inbox keys are batch files, and how one reads into a `BatchPlan`."""

    def matches(self, key: str) -> bool: ...

    def parse(self, data: bytes, key: str) -> BatchPlan: ...
