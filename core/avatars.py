"""The avatar registry under `avatars/<id>/`: deploy a trained LoRA, list, look up, delete.

The manifest is the commit marker: deploy copies the weights first and writes the
manifest last; delete removes the manifest first, so a half-deleted avatar is never
rendered.
"""

from __future__ import annotations

from collections.abc import Iterator

from core.storage import Storage
from schemas.avatar import AvatarManifest
from schemas.errors import VideostudioError

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

    def deploy(self, manifest: AvatarManifest, lora_source_key: str) -> AvatarManifest:
        """Publish weights (copied from the train job's output) and then the manifest."""
        lora_key = avatar_prefix(manifest.avatar_id) + "lora.safetensors"
        self.storage.put_bytes(lora_key, self.storage.get_bytes(lora_source_key),
                               content_type="application/octet-stream")
        manifest = manifest.model_copy(update={"lora_key": lora_key})
        self.storage.put_bytes(avatar_prefix(manifest.avatar_id) + "manifest.json",
                               manifest.model_dump_json(indent=2).encode(), content_type="application/json")
        return manifest

    def delete(self, avatar_id: str) -> None:
        self.require(avatar_id)
        prefix = avatar_prefix(avatar_id)
        self.storage.delete(prefix + "manifest.json")
        for key in self.storage.list_keys(prefix):
            self.storage.delete(key)


def deploy_from_job(registry: AvatarRegistry, job) -> AvatarManifest:
    """Deploy the avatar a succeeded train job produced (its train stage wrote `avatar.json` and the LoRA)."""
    train = job.stages.get("train")
    if job.kind != "train" or train is None:
        raise VideostudioError("not_a_train_job", f"job {job.job_id} is a {job.kind} job; only train jobs make avatars")
    if train.status.value != "succeeded" or "avatar" not in train.outputs or "lora" not in train.outputs:
        raise VideostudioError("training_not_finished", f"job {job.job_id} has no trained LoRA yet")
    manifest = AvatarManifest.model_validate_json(registry.storage.get_bytes(train.outputs["avatar"]))
    return registry.deploy(manifest, train.outputs["lora"])
