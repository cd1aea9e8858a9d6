"""`backend: infinitetalk`: a talking avatar on InfiniteTalk (Wan2.1-I2V-14B + audio cross-attention).

Where Wav2Lip regenerates a 96-px mouth, InfiniteTalk generates whole frames: head, face and body move
with the speech, at 480p (or 720p), for any length (rendered in 81-frame chunks that overlap by 9 motion
frames; `functions/infinitetalk_pipeline.py`).

Train: a LoRA on the transformer's attention (self, cross and audio), learned with the flow-matching
objective on clips of the person's own footage and speech (`functions/infinitetalk_dataset.py`), by the
same loop, checkpoints, resume and loss curve as the mochi-lora backend (`functions/lora_training.py`).
The avatar keeps a reference image (the sharpest frontal frame) for image-to-video renders and up to
10 s of reference footage for video-to-video ones.

The train stage also trains the person's lip-sync expert (Wav2Lip's SyncNet, small: width EXPERT_WIDTH) on the
aligned faces and the speech, as the wav2lip backend does (functions/lip_sync_expert.py), after the LoRA (0.9–0.95
of the stage's progress); it scores renders, not training.

Render: the speech's wav2vec2 features → chunked sampling with the avatar's LoRA → MP4 at 25 fps with the
speech muxed, its frame count = round(speech duration × 25). While the frames stream to the encoder, the face
in each is found and cut as the training faces were (functions/infinitetalk_lipsync.py): the render's
`lip_sync` metrics on the avatar's expert and, with SyncNet v2 weights, `lip_sync_standard` (LSE-D / LSE-C).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.device import pick_device
from core.stage import StageContext, StageResult
from core.video import mux_audio, write_mp4, write_poster
from functions.align import fetch_video
from functions.backends.base import AvatarBackend, DatasetPolicy, TrainedAvatar
from functions.infinitetalk_audio import prepare_wave
from functions.infinitetalk_dataset import (
    InfiniteTalkCondition,
    clip_spans,
    encode_clips,
    read_frames,
    reference_frame,
    render_size,
)
from functions.infinitetalk_lipsync import EXPERT_INFO_FILE, ExpertInfo, RenderLipSync
from functions.infinitetalk_pipeline import Sampler
from functions.infinitetalk_render import (
    SpeechRender,
    read_video_frames,
    render_speech,
    render_speech_distributed,
    shift_for,
)
from functions.lip_sync_expert import (
    ExpertKeys,
    epoch_curves,
    expert_summary,
    load_expert_windows,
    state_bytes,
    train_person_expert,
)
from functions.lora_dataset import load_face_records
from functions.lora_stage import latest_checkpoint, lora_hooks, quality_score, rounded, run_metrics
from functions.lora_training import Precision, TrainConfig, add_lora, evaluate, run_training, steps_per_epoch
from functions.loss_curve import write_loss_curve
from functions.models.infinitetalk_loading import (
    fresh_transformer,
    load_models,
    resolve_quantization,
)
from functions.encoder_cache import EncoderCache
from functions.model_identity import source_identity
from functions.models.wav2lip_audio import load_wav, melspectrogram
from functions.reference_footage import reference_segment
from functions.wav2lip_avatar import EXPERT_FILE
from functions.wav2lip_training import DEFAULT_LEARNING_RATE, ExpertConfig
from schemas.avatar import AvatarManifest
from schemas.brief import InfiniteTalkOptions, TrainBrief
from schemas.dataset import FaceRecord, FrameRecord
from schemas.errors import VideostudioError
from schemas.handoff import AlignOutput, DatasetPrepared
from schemas.plan import Plan, TalkingPlan

FPS = 25
# LoRA on every attention of every block: self-attention, the text/image cross-attention, the audio one.
TARGET_MODULES = (r".*blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)"
                  r"|.*blocks\.\d+\.audio_cross_attn\.(q_linear|kv_linear|proj)")
LORA_FILE = "lora.safetensors"
OPTIONS_FILE = "infinitetalk.json"
REFERENCE_IMAGE = "reference.png"
REFERENCE_FOOTAGE = "reference.mp4"
MAX_FOOTAGE_S = 10.0
# The lip-sync expert: the width the wav2lip backend trains on a CPU (tests/test_talking_sync.py's); its epochs and
# max_steps are the brief's, its batch the brief's (at least 2: BatchNorm). `infinitetalk.expert_width`,
# `expert_epochs` and `expert_max_steps`, once InfiniteTalkOptions has them, override these.
EXPERT_WIDTH = 0.125
EXPERT_CHECKPOINT_EVERY = 100  # at least: the brief's checkpoint_every is sized for the LoRA's far slower steps
EXPERT_SHARE = (0.9, 0.95)  # of the train stage's progress: loading faces, then the loop (after the LoRA's 0.1–0.9)
EXPERT_KEYS = ExpertKeys(checkpoints="lip_sync_expert/checkpoints/", finished="lip_sync_expert/")


class InfiniteTalkBackend(AvatarBackend):
    name = "infinitetalk"
    dataset = DatasetPolicy(fps=FPS, drop_duplicates=False, audio=True)
    talks = True
    summary = ("A talking avatar on InfiniteTalk (Wan 14B): head, face and body move with the speech, at 480p, "
               "any length (a GPU with 24 GB or more; `tiny` runs on a CPU).")
    brief_options = ("infinitetalk",)

    # -------------------------------------------------------------------------------- train
    def train(self, ctx: StageContext, *, brief: TrainBrief, dataset: AlignOutput) -> TrainedAvatar:
        options = brief.infinitetalk
        prepared = ctx.handoff(DatasetPrepared)
        if prepared.audio is None:
            raise VideostudioError("no_audio_stream", "the dataset has no audio track: prepare it for infinitetalk")
        records = load_face_records(ctx.storage, dataset.metadata_key)
        frame_records = [FrameRecord.model_validate_json(line)
                         for line in ctx.storage.get_bytes(prepared.frames_key).splitlines() if line]
        height, width = self._size(options, prepared)
        spans = clip_spans(records, options.clip_frames)
        if not spans["train"]:
            raise VideostudioError("too_few_clips", f"no run of {options.clip_frames} consecutive frames with the "
                                   "subject's face in the train split (a longer or steadier video helps)")
        warnings: list[str] = []
        device = pick_device(ctx.settings.device)
        ctx.progress(0.0, f"loading {options.base_model}")
        models = load_models(options, device=device)
        sampler = Sampler(models.components, prompt=options.prompt, negative_prompt=options.negative_prompt,
                          height=height, width=width, shift=shift_for(options, height, width))

        # 1. the avatar's reference image and footage; 2. the clips, encoded once
        video = fetch_video(ctx, prepared)
        source = (prepared.video.width, prepared.video.height)
        reference_index = reference_frame(records, frame_records)
        segment = reference_segment(records, frames=frame_records, min_frames=options.clip_frames)
        footage = [r.frame_index for r in segment.records][:int(MAX_FOOTAGE_S * FPS)]
        wanted = {i for split in spans.values() for span in split for i in range(span.start, span.start + span.frames)}
        ctx.progress(0.02, "reading frames")
        frames = read_frames(video, wanted | set(footage) | {reference_index}, source_size=source, height=height,
                             width=width)
        assets = self._write_reference(ctx, frames, reference_index, footage)
        ctx.progress(0.04, "encoding the speech")
        audio_path = ctx.storage.download(prepared.audio.key, ctx.scratch / "audio.wav")
        wave = prepare_wave(audio_path)
        total_frames = max(frames) + 1 if frames else 1
        features = models.speech.features(wave, frames=max(total_frames, round(len(wave) / 16000 * FPS)))
        encoded = {}
        shares = {"train": (0.05, 0.08), "val": (0.08, 0.09), "test": (0.09, 0.1)}
        for split, (lo, hi) in shares.items():
            encoded[split] = encode_clips(sampler, spans[split], frames, features, on_clip=lambda done, total, lo=lo, hi=hi:
                                          ctx.progress(lo + (hi - lo) * done / total, "encoding clips"))
        del frames
        conditions = {s: InfiniteTalkCondition(text=sampler.text, encoded=e) for s, e in encoded.items()}

        # 3. the LoRA, on a transformer of its own (the cached one keeps serving renders)
        transformer = fresh_transformer(options, device=device)
        mixed = brief.mixed_precision if device == "cuda" or brief.mixed_precision != "fp16" else "no"
        if mixed != brief.mixed_precision:
            warnings.append("fp16 mixed precision needs CUDA; trained in fp32 on the CPU")
        precision = Precision(device=device, dtype=models.dtype, mixed_precision=mixed)
        alpha = options.lora_alpha or float(options.lora_rank)
        add_lora(transformer, options.lora_rank, alpha, seed=brief.seed, target_modules=TARGET_MODULES)
        if options.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        config = TrainConfig(
            epochs=brief.epochs, batch_size=brief.batch_size, learning_rate=options.learning_rate,
            grad_accumulation=brief.grad_accumulation, mixed_precision=mixed, lora_rank=options.lora_rank,
            lora_alpha=alpha, seed=brief.seed, checkpoint_every=brief.checkpoint_every, max_steps=brief.max_steps,
            optimizer="auto" if device == "cuda" else "adamw")

        def held_out(split: str) -> float | None:
            e = encoded[split] if len(encoded[split]) else encoded["val"]
            return evaluate(transformer, e.latents, text=conditions[split if len(encoded[split]) else "val"],
                            seed=brief.seed, batch_size=brief.batch_size, precision=precision)

        base_test = held_out("test")  # a fresh LoRA is an identity: the base model's held-out loss
        resume = latest_checkpoint(ctx)
        clock = time.perf_counter()
        state, optimizer_name = run_training(
            transformer, encoded["train"].latents, encoded["val"].latents, text=conditions["train"],
            val_text=conditions["val"], config=config, precision=precision, resume=resume, hooks=lora_hooks(ctx))
        train_s = time.perf_counter() - clock
        expert_metrics = self._lip_sync_expert(ctx, brief, records, audio_path, fps=prepared.sample_fps, device=device,
                                               mixed_precision=mixed, assets=assets, warnings=warnings)
        ctx.progress(0.95, "evaluating")
        test = held_out("test")
        curve = write_loss_curve(state.history, steps_per_epoch(len(encoded["train"]), config),
                                 ctx.scratch / "loss_curve.png",
                                 title=f"avatar {brief.avatar}: InfiniteTalk LoRA rank {options.lora_rank}")
        curve_key = ctx.put_output_file("loss_curve.png", curve, content_type="image/png")
        lora_key = self._export_lora(ctx, transformer)
        assets["options"] = ctx.put_output_bytes(OPTIONS_FILE, options.model_dump_json().encode(),
                                                 content_type="application/json")
        metrics: dict[str, Any] = {
            "train_loss": state.history["train_loss"], "val_loss": state.history["val_loss"],
            "test_loss": rounded(test), "base_test_loss": rounded(base_test),
            "quality_score": quality_score(base_test, test),
            **run_metrics(state, resume=resume is not None, train_s=train_s), "optimizer": optimizer_name,
            "mixed_precision": mixed, "clips": {s: len(e) for s, e in encoded.items()},
            "clip_frames": options.clip_frames, "size": [width, height], "device": device,
            "reference_frame": reference_index, "reference_footage_frames": len(footage),
            "random_weights": models.random_weights, "lip_sync_expert": expert_metrics,
        }
        avatar = AvatarManifest(
            avatar_id=brief.avatar, job_id=ctx.job_id, backend=self.name, base_model=options.base_model,
            weights_key=lora_key, lora_key=lora_key, lora_rank=options.lora_rank, lora_alpha=alpha,
            target_modules=TARGET_MODULES, assets=assets, talks=True,
            dataset={**dataset.splits, "clips": metrics["clips"]},
            metrics={**{k: metrics[k] for k in ("test_loss", "base_test_loss", "quality_score", "steps")},
                     "expert_val_loss": expert_metrics["val_loss"] if expert_metrics else None})
        outputs = {"lora": lora_key, "loss_curve": curve_key, **assets}
        return TrainedAvatar(avatar=avatar, outputs=outputs, job_outputs={"lora": lora_key, "loss_curve": curve_key},
                             metrics=metrics, warnings=warnings, model_id=options.base_model)

    @staticmethod
    def _lip_sync_expert(ctx: StageContext, brief: TrainBrief, records: list[FaceRecord], audio: Path, *, fps: float,
                         device: str, mixed_precision: str, assets: dict[str, str],
                         warnings: list[str]) -> dict[str, Any] | None:
        """The person's lip-sync expert (the `expert` asset, with `expert_info`: how renders cut its crops) and
        its metrics; None, with a warning, when the footage has no 5-frame run of aligned faces to train it on."""
        options = brief.infinitetalk
        width = getattr(options, "expert_width", None) or EXPERT_WIDTH
        lo, hi = EXPERT_SHARE
        mel = melspectrogram(load_wav(audio))
        clock = time.perf_counter()
        sets = load_expert_windows(ctx, records, mel, fps=fps, seed=brief.seed, share=(lo, lo + (hi - lo) / 5))
        if len(sets["train"]) == 0:
            warnings.append("no lip-sync expert (renders get no lip_sync metrics): no run of 5 consecutive aligned "
                            "faces in the train split")
            return None
        config = ExpertConfig(
            epochs=getattr(options, "expert_epochs", None) or brief.epochs,
            max_steps=getattr(options, "expert_max_steps", None) or brief.max_steps,
            batch_size=max(2, brief.batch_size), learning_rate=DEFAULT_LEARNING_RATE,
            mixed_precision=mixed_precision, seed=brief.seed,
            checkpoint_every=max(brief.checkpoint_every, EXPERT_CHECKPOINT_EVERY), device=device)
        with torch.random.fork_rng(devices=[]):  # the LoRA's numbers never depend on whether the expert ran here
            expert, report = train_person_expert(
                ctx, sets, width=width, config=config, seed=brief.seed, share=(lo + (hi - lo) / 5, hi),
                keys=EXPERT_KEYS, phase="lip_sync_expert", prefixed=True, message="training the lip-sync expert")
        assets["expert"] = ctx.put_output_bytes(EXPERT_FILE, state_bytes(expert.cpu()),
                                                content_type="application/octet-stream")
        info = ExpertInfo(width=width, face_padding=brief.face_padding, fps=fps)
        assets["expert_info"] = ctx.put_output_bytes(EXPERT_INFO_FILE, info.model_dump_json().encode(),
                                                     content_type="application/json")
        if not report.converged:
            warnings.append(f"the lip-sync expert's validation loss {report.val_loss} did not reach "
                            f"{report.converged_loss}: the lip_sync metrics of this avatar's renders are rough (more "
                            "footage or epochs help)")
        return {**expert_summary(report), "epochs": report.epochs, "width": width,
                "windows": {s: len(w) for s, w in sets.items()}, "history": epoch_curves(report.history),
                "train_s": round(time.perf_counter() - clock, 3)}

    @staticmethod
    def _size(options: InfiniteTalkOptions, prepared: DatasetPrepared) -> tuple[int, int]:
        if options.height is not None and options.width is not None:
            return options.height, options.width
        return render_size(prepared.video.width, prepared.video.height)

    @staticmethod
    def _write_reference(ctx: StageContext, frames: dict[int, np.ndarray], reference_index: int,
                         footage: list[int]) -> dict[str, str]:
        image = ctx.scratch / REFERENCE_IMAGE
        Image.fromarray(frames[reference_index]).save(image)
        clip = write_mp4(np.stack([frames[i] for i in footage]), ctx.scratch / REFERENCE_FOOTAGE, fps=FPS, crf=12)
        return {"reference_image": ctx.put_output_file(REFERENCE_IMAGE, image, content_type="image/png"),
                "reference": ctx.put_output_file(REFERENCE_FOOTAGE, clip, content_type="video/mp4")}

    @staticmethod
    def _export_lora(ctx: StageContext, transformer) -> str:
        folder = ctx.scratch / "lora"
        transformer.save_lora_adapter(str(folder), adapter_name="default", weight_name=LORA_FILE)
        return ctx.put_output_file(LORA_FILE, folder / LORA_FILE, content_type="application/octet-stream")

    # -------------------------------------------------------------------------------- render
    def cache_identity(self, ctx: StageContext, *, plan: Plan) -> dict[str, Any] | None:
        """The base weights it renders on (transformer, audio weights, VAE/UMT5/CLIP, wav2vec2) and the
        quantization method the render resolves to."""
        avatar = AvatarManifest.model_validate_json(ctx.storage.get_bytes(plan.avatar_key))
        if "options" not in avatar.assets:
            return None
        options = InfiniteTalkOptions.model_validate_json(ctx.storage.get_bytes(avatar.assets["options"]))
        sources = {name: source_identity(getattr(options, name))
                   for name in ("base_model", "weights", "components", "audio_encoder")}
        if options.base_model == "tiny":  # tiny builds every part in code; the others are not read
            sources = {"base_model": source_identity("tiny")}
        if any(identity is None for identity in sources.values()):
            return None
        return {"backend": self.name, "sources": sources}

    def render(self, ctx: StageContext, *, plan: Plan) -> StageResult:
        if not isinstance(plan, TalkingPlan):
            raise VideostudioError("missing_speech", f"backend {self.name} renders speech: the plan has none")
        if ctx.storage.stat(plan.avatar_key) is None:
            raise VideostudioError("avatar_not_found", f"avatar {plan.avatar!r} is no longer deployed")
        avatar = AvatarManifest.model_validate_json(ctx.storage.get_bytes(plan.avatar_key))
        local = self._fetch_avatar(ctx, avatar)
        options = InfiniteTalkOptions.model_validate_json(local["options"].read_bytes())
        reference = np.asarray(Image.open(local["reference_image"]).convert("RGB"))
        height, width = reference.shape[:2]
        device = pick_device(ctx.settings.device)
        warnings: list[str] = []
        lip_sync = RenderLipSync.for_avatar(local.get("expert"), local.get("expert_info"), device=device,
                                            warnings=warnings)
        quantization = resolve_quantization(
            plan.quantization, device, height=height, width=width, chunk_frames=options.chunk_frames,
            text_guidance=options.text_guidance, audio_guidance=options.audio_guidance, speech_s=plan.duration_s)
        if quantization.offload_advised:
            warnings.append(f"{quantization.reason}; model CPU offload is not implemented for infinitetalk yet, so "
                            "the models run resident (a smaller method or a larger GPU if this runs out of memory)")
        speech = ctx.storage.download(plan.speech.key, ctx.scratch / "speech.wav")
        job = SpeechRender(
            options_json=options.model_dump_json(), lora=str(local["weights"]),
            reference_image=str(local["reference_image"]), reference_footage=str(local["reference"]),
            speech=str(speech), num_frames=plan.num_frames, seed=plan.seed, device=device, method=quantization.method,
            output=str(ctx.scratch / "video.mp4"), progress_file=str(ctx.scratch / "ranks-progress.jsonl"),
            cancel_file=str(ctx.scratch / "ranks-cancel"))
        chunks = job.chunks()
        ranks = self._ranks(plan, device, options, warnings)

        def report(done: int, total: int, chunk: int) -> None:
            ctx.progress(0.05 + 0.85 * done / total, f"chunk {chunk + 1} of {len(chunks)}", step=done, total=total)

        ctx.progress(0.0, f"loading {options.base_model}")
        encoders = EncoderCache(ctx.storage, ctx.settings)
        if ranks == 1:
            result = render_speech(job, on_frame=lambda index, frame: lip_sync.add(frame),
                                   on_step=lambda chunk, step, steps: report(chunk.index * steps + step,
                                                                             len(chunks) * steps, chunk.index),
                                   encoders=encoders)
        else:
            result = render_speech_distributed(job, ranks, on_progress=report)
            for frame in read_video_frames(Path(job.output)):  # rank 0 wrote them in its own process
                lip_sync.add(frame)
        render_s = result.render_s
        ctx.progress(0.92, "muxing the speech")
        silent = Path(job.output)
        video_key = ctx.put_output_file("video.mp4", mux_audio(silent, speech, ctx.scratch / "talking.mp4"),
                                        content_type="video/mp4")
        poster_key = ctx.put_output_file("poster.jpg", write_poster(result.poster, ctx.scratch / "poster.jpg"),
                                         content_type="image/jpeg")
        metrics = {
            "frames": plan.num_frames, "fps": plan.fps, "duration_s": plan.duration_s, "chunks": len(chunks),
            "steps": options.steps, "width": width, "height": height, "mode": options.mode, "device": device,
            "render_s": round(render_s, 3), "s_per_chunk": round(render_s / len(chunks), 3),
            "realtime_factor": round(plan.duration_s / render_s, 4) if render_s else None,
            "random_weights": result.random_weights, "ranks": ranks, "encoder_cache": encoders.stats.summary(),
            "quantization": {**(result.quantization or {"method": quantization.method}), "reason": quantization.reason},
        }
        ctx.progress(0.95, "scoring the lip sync")
        lip_sync.finish(metrics, speech=speech, fps=plan.fps)
        return StageResult(outputs={"video": video_key, "poster": poster_key},
                           job_outputs={"video": video_key, "poster": poster_key}, metrics=metrics,
                           warnings=warnings, model_id=avatar.base_model)

    @staticmethod
    def _ranks(plan: TalkingPlan, device: str, options: InfiniteTalkOptions, warnings: list[str]) -> int:
        """Processes the render spreads over: the brief's `gpus:`, else more for long speech where there are GPUs."""
        import torch

        from functions.infinitetalk_parallel import pick_gpus

        available = torch.cuda.device_count() if device == "cuda" else None
        if plan.gpus is not None and available is not None and plan.gpus > available:
            warnings.append(f"gpus: {plan.gpus} asked for, {available} visible: rendering on {available}")
            return max(1, available)
        if plan.gpus is not None:
            return plan.gpus  # on a CPU: that many gloo processes (the same code path, as the tests run it)
        if not available or available < 2:
            return 1
        return pick_gpus(plan.duration_s, None, max_gpus=available, chunk_frames=options.chunk_frames,
                         motion_frames=options.motion_frames)

    @staticmethod
    def _fetch_avatar(ctx: StageContext, avatar: AvatarManifest) -> dict[str, Path]:
        """The avatar's files; its lip-sync expert only if it has one (avatars trained before it came have none)."""
        wanted = {"weights": avatar.weights_key,
                  **{k: avatar.assets.get(k) for k in ("reference_image", "reference", "options")}}
        local = {}
        for name, key in wanted.items():
            if not key or ctx.storage.stat(key) is None:
                raise VideostudioError("avatar_not_found", f"avatar {avatar.avatar_id!r} is missing its {name} file")
            local[name] = ctx.storage.download(key, ctx.scratch / "avatar" / Path(key).name)
        for name in ("expert", "expert_info"):
            key = avatar.assets.get(name)
            if key and ctx.storage.stat(key) is not None:
                local[name] = ctx.storage.download(key, ctx.scratch / "avatar" / Path(key).name)
        return local


