"""The avatar registry under `avatars/<id>/`: deploy a trained avatar of any backend, list, look up, delete.

The manifest is the commit marker: deploy copies the weights first and writes the
manifest last; delete removes the manifest first, so a half-deleted avatar is never
rendered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import PurePosixPath

from core.render_cache import RenderCacheIndex
from core.storage import Storage
from schemas.avatar import AvatarManifest
from schemas.errors import VideostudioError
from schemas.handoff import TrainOutput
from schemas.manifest import JobManifest, StageStatus

AVATARS_PREFIX = "avatars/"


def avatar_prefix(avatar_id: str) -> str:
    return f"{AVATARS_PREFIX}{avatar_id}/"


class AvatarRegistry:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def get(self, avatar_id: str) -> AvatarManifest | None:
        key = avatar_prefix(avatar_id) + "manifest.json"
        if self.storage.stat(key) is None:
            return None
        return AvatarManifest.model_validate_json(self.storage.get_bytes(key))

    def require(self, avatar_id: str) -> AvatarManifest:
        manifest = self.get(avatar_id)
        if manifest is None:
            raise VideostudioError("avatar_not_found", f"no deployed avatar {avatar_id!r}")
        return manifest

    def list(self) -> Iterator[AvatarManifest]:
        for info in self.storage.list(AVATARS_PREFIX):
            parts = info.key.split("/")
            if len(parts) == 3 and parts[2] == "manifest.json":
                manifest = self.get(parts[1])
                if manifest is not None:
                    yield manifest

    def deploy(self, manifest: AvatarManifest, weights_source_key: str) -> AvatarManifest:
        """Publish the weights (copied from the train job's output, sha256 recorded) and the backend's other
        files, and then the manifest."""
        weights = self.storage.get_bytes(weights_source_key)
        weights_key = avatar_prefix(manifest.avatar_id) + PurePosixPath(weights_source_key).name
        self.storage.put_bytes(weights_key, weights, content_type="application/octet-stream")
        assets = {}
        for name, source_key in manifest.assets.items():
            assets[name] = avatar_prefix(manifest.avatar_id) + PurePosixPath(source_key).name
            if assets[name] != source_key:
                self.storage.put_bytes(assets[name], self.storage.get_bytes(source_key))
        update = {"weights_key": weights_key, "weights_sha256": hashlib.sha256(weights).hexdigest(), "assets": assets}
        if manifest.lora_key is not None:  # mochi-lora names its weights `lora_key` too (schema 1)
            update["lora_key"] = weights_key
        manifest = manifest.model_copy(update=update)
        self.storage.put_bytes(avatar_prefix(manifest.avatar_id) + "manifest.json",
                               manifest.model_dump_json(indent=2).encode(), content_type="application/json")
        return manifest

    def delete(self, avatar_id: str) -> None:
        self.require(avatar_id)
        prefix = avatar_prefix(avatar_id)
        self.storage.delete(prefix + "manifest.json")
        for key in self.storage.list_keys(prefix):
            self.storage.delete(key)
        # Renders (and latents) made with it must not be reused: a new avatar of the same id is another person.
        RenderCacheIndex(self.storage).invalidate_avatar(avatar_id)


def deploy_from_job(registry: AvatarRegistry, job: JobManifest) -> AvatarManifest:
    """Deploy the avatar a succeeded train job produced (its train stage hands on the avatar and its weights)."""
    train = job.stages.get("train")
    if job.kind != "train" or train is None:
        raise VideostudioError("not_a_train_job", f"job {job.job_id} is a {job.kind} job; only train jobs make avatars")
    if train.status != StageStatus.succeeded or train.handoff is None:
        raise VideostudioError("training_not_finished", f"job {job.job_id} has no trained avatar yet")
    trained = TrainOutput.model_validate(train.handoff)
    manifest = AvatarManifest.model_validate_json(registry.storage.get_bytes(trained.avatar_key))
    return registry.deploy(manifest, trained.weights_key)
