"""What a stage sees and returns. A stage is a plain function `(StageContext) -> StageResult`.

It knows nothing of queues, leases, retries or Modal: the runner does all of that.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from core.batch_format import BatchFormat
from core.settings import Settings
from core.storage import Storage
from schemas.brief import ComposeBrief, RenderBrief, TrainBrief
from schemas.cache import CacheRecord
from schemas.errors import VideostudioError
from schemas.handoff import StageHandoff
from schemas.manifest import InputRecord, JobManifest

HandoffT = TypeVar("HandoffT", bound=StageHandoff)
BriefT = TypeVar("BriefT", RenderBrief, TrainBrief, ComposeBrief)


class JobCancelled(VideostudioError):
    def __init__(self, job_id: str) -> None:
        super().__init__("cancelled", f"job {job_id} was cancelled")


@dataclass
class StageResult:
    outputs: dict[str, str] = field(default_factory=dict, metadata={"doc": "name → bucket key of this stage's outputs"})
    metrics: dict[str, Any] = field(default_factory=dict)
    request: RenderBrief | TrainBrief | ComposeBrief | None = None  # the validated brief (prepare sets it): the manifest's `request`
    handoff: StageHandoff | None = None  # what this stage hands on; later stages read it with ctx.handoff()
    job_outputs: dict[str, str] = field(default_factory=dict)  # promoted to the job manifest's `outputs`
    warnings: list[str] = field(default_factory=list)
    model_id: str | None = None  # recorded in the manifest's `versions.model`
    cache: CacheRecord | None = None  # the render's use of the render cache: the manifest's `cache`


ProgressFn = Callable[[float, str, int | None, int | None], None]
MetricsFn = Callable[[dict[str, Any]], None]


@dataclass
class StageContext:
    job_id: str
    stage: str
    attempt: int
    manifest: JobManifest  # a snapshot taken when the stage started
    storage: Storage
    settings: Settings
    scratch: Path  # a private temp folder, removed after the stage
    _progress: ProgressFn
    _cancel_requested: Callable[[], bool]
    _metrics: MetricsFn | None = None
    _last_cancel_check: float = 0.0

    @property
    def request(self) -> RenderBrief | TrainBrief | ComposeBrief | None:
        return self.manifest.request

    def brief(self, kind: type[BriefT]) -> BriefT:
        """The job's validated brief as `kind`, or `missing_request` (prepare has not run, or another kind)."""
        request = self.manifest.request
        if not isinstance(request, kind):
            raise VideostudioError("missing_request", f"stage {self.stage!r} needs the job's {kind.__name__}, "
                                   f"which prepare records; the job has {type(request).__name__}")
        return request

    def handoff(self, record: type[HandoffT]) -> HandoffT:
        """The typed record an earlier stage handed on (`record.stage` says which stage wrote it)."""
        stage = self.manifest.stages.get(record.stage)
        data = stage.handoff if stage is not None else None
        if data is None:
            raise VideostudioError("missing_stage_output", f"stage {self.stage!r} needs the {record.__name__} "
                                   f"that stage {record.stage!r} hands on, and the job has none")
        try:
            return record.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or record.__name__
            raise VideostudioError("invalid_stage_output", f"the {record.__name__} of stage {record.stage!r} is "
                                   f"malformed ({where}: {first['msg']})") from None

    @property
    def input(self) -> InputRecord:
        return self.manifest.input

    def output_key(self, name: str) -> str:
        return f"jobs/{self.job_id}/{self.stage}/{name}"

    def put_output_file(self, name: str, path: Path, *, content_type: str | None = None) -> str:
        key = self.output_key(name)
        self.storage.put_file(key, path, content_type=content_type)
        return key

    def put_output_bytes(self, name: str, data: bytes, *, content_type: str | None = None) -> str:
        key = self.output_key(name)
        self.storage.put_bytes(key, data, content_type=content_type)
        return key

    def progress(self, fraction: float, message: str = "", *, step: int | None = None, total: int | None = None) -> None:
        """Report progress (throttled into the manifest by the runner) and honour a cancel request."""
        self._progress(max(0.0, min(1.0, fraction)), message, step, total)
        self.check_cancelled()

    def update_metrics(self, **values: Any) -> None:
        """Publish interim metrics (losses, ETA) into the running stage's manifest record (throttled)."""
        if self._metrics is not None:
            self._metrics(values)

    def check_cancelled(self, *, every_s: float = 0.5) -> None:
        now = time.monotonic()
        if now - self._last_cancel_check < every_s:
            return
        self._last_cancel_check = now
        if self._cancel_requested():
            raise JobCancelled(self.job_id)


StageFn = Callable[[StageContext], StageResult]


@dataclass(frozen=True)
class Pipeline:
    """The routing table handed to the runner: which stages each job kind runs, and the stage functions."""

    routes: Mapping[str, Sequence[str]]
    stages: Mapping[str, StageFn]
    classify: Callable[[Storage, str], str]  # (storage, input key) → job kind
    batches: BatchFormat | None = None  # batch files (`*.batch.csv` …): one batch, a job per item (core/batches.py)
    # (storage, input key, kind) → the job's stages where the input itself decides (a render brief with
    # `background:` adds compose); None: the kind's route as it is.
    plan_route: Callable[[Storage, str, str], Sequence[str]] | None = None

    def route(self, kind: str) -> list[str]:
        return list(self.routes.get(kind) or self.routes[self.default_kind])

    def route_for(self, storage: Storage, key: str, kind: str) -> list[str]:
        """The stages a new job for the input `key` runs."""
        return list(self.plan_route(storage, key, kind)) if self.plan_route is not None else self.route(kind)

    @property
    def default_kind(self) -> str:
        return next(iter(self.routes))
