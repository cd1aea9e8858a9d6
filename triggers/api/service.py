"""The API's work, kept apart from HTTP: `JobsService`, plain synchronous methods on a runner.

The app holds one `JobsService` in `app.state.service`; routes get it through the `Service` dependency.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Depends, Request

from core.avatars import AvatarRegistry
from core.jobs import manifest_key
from core.runner import INBOX, Runner
from core.storage import PreconditionFailed, Storage, validate_key
from functions.backends import get_backend
from schemas.api import JobSummary, SubmittedJob
from schemas.background import ImageBackground, background_keys
from schemas.brief import ComposeBrief, RenderBrief, TrainBrief
from schemas.errors import VideostudioError
from schemas.events import StorageEvent
from schemas.manifest import JobManifest, JobStatus
from triggers.api.errors import HttpError
from triggers.api.live import LiveManifests
from triggers.api.params import VIDEO_SUFFIXES
from triggers.api.uploads import UploadedForm


class JobsService:
    """What the handlers do, as plain synchronous methods on a runner (run in FastAPI's thread pool)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.storage: Storage = runner.storage
        self.avatars = AvatarRegistry(runner.storage)
        self.live = LiveManifests(runner.store)

    # -- inputs
    def check_brief_refs(self, brief: RenderBrief | TrainBrief | ComposeBrief) -> None:
        """Catch what prepare would fail on at once, while the client is still here."""
        self.check_background_keys(brief)
        if isinstance(brief, ComposeBrief):
            self.check_video_key(brief.video)
        elif isinstance(brief, TrainBrief):
            if brief.video is None:
                raise HttpError(422, "missing_video", "a train brief needs `video:` (a bucket key outside inbox/)")
            self.check_video_key(brief.video)
            try:
                get_backend(brief.backend)
            except VideostudioError as exc:
                raise HttpError(422, exc.code, exc.message) from None
        else:
            self.check_render_avatar(brief)
            if brief.audio is not None:
                self.check_audio_key(brief.audio)

    def check_background_keys(self, brief: RenderBrief | TrainBrief | ComposeBrief) -> None:
        """A background image or clip the brief names is in the bucket (prepare also checks that it decodes)."""
        background = getattr(brief, "background", None)
        for key in background_keys(background):
            if self.storage.stat(key) is None:
                message = f"the background {key!r} is not in the bucket"
                shape = "image" if isinstance(background, ImageBackground) else "video"
                raise HttpError(422, "background_not_found", message, details=[
                    {"loc": ["background", shape], "msg": message, "type": "background_not_found"}])

    def check_render_avatar(self, brief: RenderBrief) -> None:
        """The avatar a render brief names is deployed, and speaks if (and only if) the brief gives it speech."""
        if brief.avatar is None:
            return
        avatar = self.avatars.get(brief.avatar)
        if avatar is None:
            raise HttpError(422, "avatar_not_found", f"no deployed avatar {brief.avatar!r}")
        try:
            backend = get_backend(avatar.backend)
        except VideostudioError as exc:
            raise HttpError(422, exc.code, exc.message) from None
        # The same refusals as the backend's plan_render in prepare, while the client is still here.
        if brief.talking and not backend.talks:
            raise HttpError(422, "avatar_cannot_talk", f"avatar {avatar.avatar_id!r} ({backend.name}) cannot speak a "
                            "script or a recording; train a talking avatar (backend: wav2lip) for that")
        if backend.talks and not brief.talking:
            raise HttpError(422, "missing_speech", f"avatar {avatar.avatar_id!r} ({backend.name}) speaks: give "
                            "script: (text) or audio: (a recording's bucket key)")

    def check_audio_key(self, key: str) -> None:
        try:
            validate_key(key)
        except VideostudioError as exc:
            raise HttpError(422, "invalid_audio_key", exc.message) from None
        if self.storage.stat(key) is None:
            raise HttpError(422, "audio_not_found", f"no recording at {key!r} in the bucket")

    def check_video_key(self, key: str) -> None:
        try:
            validate_key(key)
        except VideostudioError as exc:
            raise HttpError(422, "invalid_video_key", exc.message) from None
        if key.startswith(INBOX):
            raise HttpError(422, "invalid_video_key", f"{key!r} is in inbox/ (a video there trains by itself); "
                            f"use a key outside inbox/")
        if not key.lower().endswith(VIDEO_SUFFIXES):
            raise HttpError(422, "unsupported_video", f"{key!r} is not a {'/'.join(VIDEO_SUFFIXES)} video")
        if self.storage.stat(key) is None:
            raise HttpError(422, "video_not_found", f"no object at {key!r}")

    def submit_brief(self, stem: str, suffix: str, body: bytes, *, kind: str, video_key: str | None) -> SubmittedJob:
        """Write the brief to inbox/ (never over different bytes) and create its job (`created`: it is new)."""
        key = f"{INBOX}{stem}{suffix}"
        digest = hashlib.sha256(body).hexdigest()
        content_type = "application/json" if suffix == ".json" else "application/yaml"
        try:
            self.storage.put_bytes(key, body, if_none_match=True, content_type=content_type)
        except PreconditionFailed:
            if self.storage.content_hash(key) != digest:
                raise HttpError(409, "name_taken", f"{key!r} already holds a different brief; pick another name") from None
        job_id, created = self.runner.submit(StorageEvent(bucket=self.storage.name, key=key, size=len(body),
                                                          content_hash=digest, source="http"))
        return SubmittedJob(job_id=job_id, created=created, manifest_key=manifest_key(job_id), brief_key=key,
                            kind=kind, video_key=video_key)

    def store_upload(self, key: str, form: UploadedForm) -> None:
        info = self.storage.stat(key)
        if info is not None:
            if info.size == form.size and self.storage.content_hash(key) == form.sha256:
                return  # the same file again: keep it
            raise HttpError(409, "upload_exists", f"{key!r} already holds a different file; rename the file")
        assert form.file_path is not None
        self.storage.put_file(key, form.file_path, content_type=form.content_type or "application/octet-stream")

    # -- jobs
    def load(self, job_id: str) -> JobManifest:
        manifest = self.runner.store.load(job_id)
        if manifest is None:
            raise HttpError(404, "job_not_found", f"no job {job_id!r}")
        return manifest

    def summaries(self, status: JobStatus | None, kind: str | None, limit: int, *, live: bool = False) -> list[JobSummary]:
        """Jobs newest first; `live`: from the snapshot every live page shares (at most half a second old)."""
        source = self.live.manifests() if live else self.runner.store.all()
        manifests = [m for m in source if (status is None or m.status == status) and (kind is None or m.kind == kind)]
        manifests.sort(key=lambda m: m.created_at, reverse=True)
        return [JobSummary(job_id=m.job_id, kind=m.kind, status=m.status.value, stage=m.current_stage(),
                           input_key=m.input.key, created_at=m.created_at, updated_at=m.updated_at, error=m.error,
                           progress=_progress(m))
                for m in manifests[:limit]]


def _progress(manifest: JobManifest) -> float | None:
    stage = manifest.current_stage()
    record = manifest.stages.get(stage) if stage is not None else None
    return record.progress.fraction if record is not None and record.progress is not None else None


def _service(request: Request) -> JobsService:
    return request.app.state.service


Service = Annotated[JobsService, Depends(_service)]
