"""Upgrades of stored manifests to the current schema: old jobs stay readable, listable and retryable.

Schema 1 (before typed stage records) kept the facts stages derived inside the job's
`request`, beside the brief: `plan` (a render's resolved plan, or a train job's preview),
`video_sha256` and `video_info` (train jobs). Schema 2 keeps the brief alone in `request`
and moves each fact into the `handoff` of the stage that derived it, as that stage would
write it today. The upgrade is a pure function of the manifest, so reading never writes;
the next update of the job writes it back at the new version.
"""

from __future__ import annotations

from typing import Any

from schemas import SCHEMA_VERSION

LEGACY_BACKEND = "mochi-lora"  # the only avatar backend of schema 1
DERIVED_REQUEST_KEYS = ("plan", "video_sha256", "video_info")


def upgrade_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 render plan: `lora_key` became `weights_key`, and an avatar's plan names its backend."""
    plan = dict(plan)
    weights = plan.pop("lora_key", None)
    plan.setdefault("weights_key", weights)
    if plan.get("avatar"):
        plan.setdefault("backend", LEGACY_BACKEND)
    return plan


def _succeeded(stage: dict[str, Any] | None) -> bool:
    return bool(stage) and stage.get("status") == "succeeded"


def _train_handoffs(request: dict[str, Any], facts: dict[str, Any], stages: dict[str, Any]) -> None:
    prepare, align, train = stages.get("prepare"), stages.get("align"), stages.get("train")
    if _succeeded(prepare) and facts.get("video_sha256") and facts.get("video_info"):
        probe = {k: v for k, v in facts["video_info"].items()
                 if k in ("width", "height", "fps", "duration_s", "codec", "rotation", "variable_frame_rate",
                          "bit_depth")}
        prepare.setdefault("handoff", {
            "video_key": request.get("video"), "video_sha256": facts["video_sha256"], "video": probe,
            "frames_key": prepare.get("outputs", {}).get("frames"), "sample_fps": request.get("extract_fps", 25),
            "backend": request.get("backend", LEGACY_BACKEND)})
    if _succeeded(align):
        outputs = align.get("outputs", {})
        align.setdefault("handoff", {
            "faces_prefix": outputs.get("faces_prefix"), "metadata_key": outputs.get("metadata"),
            "dataset_key": outputs.get("dataset"), "contact_sheet_key": outputs.get("contact_sheet"),
            "splits": align.get("metrics", {}).get("splits", {})})
    if _succeeded(train) and facts.get("plan"):
        outputs = train.get("outputs", {})
        train.setdefault("handoff", {
            "avatar_id": request.get("avatar"), "avatar_key": outputs.get("avatar"), "weights_key": outputs.get("lora"),
            "deployed": bool(train.get("metrics", {}).get("deployed", False)), "preview": upgrade_plan(facts["plan"])})


def upgrade_job_manifest(data: dict[str, Any]) -> dict[str, Any]:
    """The manifest `data` at the current schema version (unchanged if it is already current)."""
    if int(data.get("schema_version", 1)) >= 2:
        return data
    data = dict(data)
    request = data.get("request")
    stages = {name: dict(record) for name, record in (data.get("stages") or {}).items()}
    if isinstance(request, dict):
        facts = {k: request[k] for k in DERIVED_REQUEST_KEYS if k in request}
        request = {k: v for k, v in request.items() if k not in DERIVED_REQUEST_KEYS}
        if request.get("kind") == "train":
            _train_handoffs(request, facts, stages)
        elif _succeeded(stages.get("prepare")) and facts.get("plan"):
            stages["prepare"].setdefault("handoff", {"plan": upgrade_plan(facts["plan"])})
        data["request"] = request
    data["stages"] = stages
    data["schema_version"] = SCHEMA_VERSION
    return data
