"""A render's determinism key: everything that changes its pixels, hashed. Same key, same bytes.

It is computed from the final plan (functions/render.py), so one function covers Mochi text-to-video, Mochi LoRA
avatars and every talking backend:
- always: the key's version, the packages that compute pixels (torch, diffusers, …), the device (kind and GPU);
- a Mochi plan: every plan field that reaches the pipeline (prompt, negative prompt, seed, steps, frames, size,
  fps, guidance), the model's weights identity, the quantization method the render resolves to (and the modules
  it skips), the scheduler and its config, and the avatar's weights and strength;
- a talking plan: the avatar's weights and assets (content hashes), the prepared speech's bytes (synthesis is
  seeded, so the same script, voice and seed give the same bytes), frames, fps, seed, quantization, GPUs,
  the talking precision setting, and whatever the avatar's backend adds (`AvatarBackend.cache_identity`).
None means "not cacheable" (weights of unknown identity, an avatar that is gone): the render then runs as always.
"""

from __future__ import annotations

from typing import Any

import torch

from core.avatars import avatar_prefix
from core.device import pick_device
from core.stage import StageContext
from functions.model_identity import digest, package_versions, source_identity
from functions.models.mochi import resolve_quantization
from functions.models.mochi_configs import (TINY_MODEL, TINY_TEXT_ENCODER_CONFIG, TINY_TRANSFORMER_CONFIG,
                                            TINY_VAE_CONFIG)
from functions.quantization.jobs import RenderJob
from functions.quantization.rules import quantization_skip_patterns
from schemas.avatar import AvatarManifest
from schemas.plan import Plan, RenderPlan, TalkingPlan

KEY_VERSION = 1
# Plan fields that do not reach the pixels (the preset is already resolved into steps and frames; the avatar's
# weights are keyed by their hash, not by where they are stored).
_MOCHI_IGNORED = {"preset", "frames_requested", "frames_snapped", "duration_s", "random_weights", "weights_key",
                  "backend"}
_TALKING_IGNORED = {"avatar_key", "speech"}


def tiny_mochi_identity() -> dict[str, Any]:
    """What the tiny Mochi is built from (functions/models/mochi.py build_tiny_pipeline, seed 0)."""
    return {"transformer": TINY_TRANSFORMER_CONFIG, "vae": TINY_VAE_CONFIG, "text_encoder": TINY_TEXT_ENCODER_CONFIG,
            "seed": 0}


def mochi_identity(model_id: str) -> str | None:
    return source_identity(model_id, tiny=tiny_mochi_identity() if model_id == TINY_MODEL else None)


def device_identity(ctx: StageContext) -> dict[str, str]:
    device = pick_device(ctx.settings.device)
    return {"kind": device, "name": torch.cuda.get_device_name() if device == "cuda" else "cpu"}


def avatar_identity(ctx: StageContext, manifest_key: str) -> dict[str, Any] | None:
    """The avatar's weights and every asset it renders with, by content; None when it is not there."""
    storage = ctx.storage
    if storage.stat(manifest_key) is None:
        return None
    avatar = AvatarManifest.model_validate_json(storage.get_bytes(manifest_key))
    keys = {"weights": avatar.weights_key, **avatar.assets}
    if any(storage.stat(key) is None for key in keys.values()):
        return None
    hashes = {name: storage.content_hash(key) for name, key in sorted(keys.items())}
    if avatar.weights_sha256:
        hashes["weights"] = avatar.weights_sha256
    return {"avatar": avatar.avatar_id, "backend": avatar.backend, "base_model": avatar.base_model,
            "trigger_token": avatar.trigger_token, "lora_rank": avatar.lora_rank, "lora_alpha": avatar.lora_alpha,
            "target_modules": avatar.target_modules, "files": hashes}


def _scheduler(model_id: str) -> dict[str, Any] | str:
    if model_id == TINY_MODEL:  # built in code with its defaults (mochi.py)
        from diffusers import FlowMatchEulerDiscreteScheduler

        config = dict(FlowMatchEulerDiscreteScheduler().config)
        return {"class": "FlowMatchEulerDiscreteScheduler",
                **{k: v for k, v in config.items() if not k.startswith("_")}}
    return "the model's scheduler/ config (part of its weights identity)"


def _mochi_parts(ctx: StageContext, plan: RenderPlan) -> dict[str, Any] | None:
    model = mochi_identity(plan.model)
    if model is None:
        return None
    device = pick_device(ctx.settings.device)
    skip = quantization_skip_patterns(ctx.settings)
    job = RenderJob(width=plan.width, height=plan.height, num_frames=plan.num_frames,
                    guidance_scale=plan.guidance_scale)
    choice = resolve_quantization(plan.model, plan.quantization, device, job, skip=skip)
    avatar = None
    if plan.avatar is not None:
        avatar = avatar_identity(ctx, avatar_prefix(plan.avatar) + "manifest.json")
        if avatar is None:
            return None
    return {"plan": plan.model_dump(exclude=_MOCHI_IGNORED), "model": model, "scheduler": _scheduler(plan.model),
            "quantization": {"method": choice.method, "skip": list(skip)}, "avatar": avatar}


def _talking_parts(ctx: StageContext, plan: TalkingPlan) -> dict[str, Any] | None:
    avatar = avatar_identity(ctx, plan.avatar_key)
    if avatar is None or ctx.storage.stat(plan.speech.key) is None:
        return None
    from functions.backends import get_backend  # here: the backends import the Mochi renderer, which imports this

    backend = get_backend(plan.backend).cache_identity(ctx, plan=plan)
    if backend is None:
        return None
    return {"plan": plan.model_dump(exclude=_TALKING_IGNORED), "speech": ctx.storage.content_hash(plan.speech.key),
            "avatar": avatar, "talking_precision": ctx.settings.talking_precision, "backend": backend}


def render_key(ctx: StageContext, plan: Plan) -> str | None:
    """sha256 of the plan's determinism key; None when the render cannot be keyed."""
    parts = _mochi_parts(ctx, plan) if isinstance(plan, RenderPlan) else _talking_parts(ctx, plan)
    if parts is None:
        return None
    return digest({"version": KEY_VERSION, "kind": type(plan).__name__, "packages": package_versions(),
                   "device": device_identity(ctx), **parts})
