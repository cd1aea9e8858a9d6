"""train: the aligned face dataset → an avatar, by the brief's backend; written, deployed and previewed.

1. the backend trains on the dataset align handed on (functions/backends);
2. the trained avatar's manifest is written beside its weights in the job (`avatar.json`);
3. by default it is deployed to `avatars/<id>/` (weights first, with their sha256, manifest last);
4. the backend's preview plan is handed on to the job's render stage.
"""

from __future__ import annotations

from core.avatars import AvatarRegistry, avatar_prefix
from core.stage import StageContext, StageResult
from functions.backends import get_backend
from schemas.brief import TrainBrief
from schemas.handoff import AlignOutput, TrainOutput


def train(ctx: StageContext) -> StageResult:
    brief = ctx.brief(TrainBrief)
    backend = get_backend(brief.backend)
    trained = backend.train(ctx, brief=brief, dataset=ctx.handoff(AlignOutput))
    avatar = trained.avatar
    avatar_key = ctx.put_output_bytes("avatar.json", avatar.model_dump_json(indent=2).encode(),
                                      content_type="application/json")
    manifest_key = avatar_key
    if brief.deploy:
        avatar = AvatarRegistry(ctx.storage).deploy(avatar, avatar.weights_key)
        manifest_key = avatar_prefix(avatar.avatar_id) + "manifest.json"
    preview = backend.preview(ctx, brief=brief, avatar=avatar, avatar_key=manifest_key)
    ctx.progress(1.0, "done")
    return StageResult(
        outputs={**trained.outputs, "avatar": avatar_key},
        job_outputs=trained.job_outputs,
        metrics={**trained.metrics, "deployed": brief.deploy},
        warnings=trained.warnings,
        model_id=trained.model_id,
        handoff=TrainOutput(avatar_id=avatar.avatar_id, avatar_key=avatar_key, weights_key=trained.avatar.weights_key,
                            deployed=brief.deploy, preview=preview),
    )
