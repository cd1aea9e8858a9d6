"""`wav2lip`: a talking avatar that moves the mouth of its own footage with any speech; trains and renders on a CPU.

Training (on the audio-visual dataset prepare and align made: every frame at 25 fps, the track at 16 kHz):
1. the reference footage: the longest clean run of the video, face track smoothed (functions/wav2lip_avatar.py);
2. the 5-frame windows of each split with their mel windows, faces at 96 px (functions/wav2lip_dataset.py);
3. the lip-sync expert on the person's own windows, unless `wav2lip.expert_weights` gives one;
4. the generator: L1, plus the expert's sync loss (0.03) once the expert has converged, plus an optional GAN
   loss (functions/wav2lip_training.py), from scratch or from `wav2lip.base_weights`;
5. held-out (test split) metrics: the quality score of `evaluate_generator` and the LSE-style lip-sync
   metrics of generated and of real frames; a loss-curve PNG; the avatar's files.
Both loops checkpoint into the job (`checkpoints/expert/`, `checkpoints/generator/`) and resume bit for
bit; a finished expert is kept (`expert/`), so a crash during the generator's loop does not retrain it.

Rendering: the speech's mel → a mouth per frame on the ping-pong reference footage, pasted back feathered
(functions/talking_render.py) → H.264, then the speech muxed in as AAC (the video lasts as long as the
speech, to the frame), a poster, and the render's lip-sync metrics scored by the avatar's expert.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.device import pick_device
from core.stage import StageContext, StageResult
from core.video import mux_audio, write_mp4, write_poster
from functions.align import fetch_video
from functions.backends.base import AvatarBackend, DatasetPolicy, TrainedAvatar
from functions.lip_sync_expert import (
    add_render_lip_sync,
    epoch_curves,
    expert_summary,
    latest_loop_checkpoint,
    load_window_sets,
    loop_hooks,
    rounded,
    standard_scorer,
    state_bytes,
    train_person_expert,
)
from functions.lipsync_metrics import DEFAULT_VSHIFT, lip_sync_metrics, lower_half
from functions.lora_dataset import load_face_records
from functions.loss_curve import write_talking_loss_curves
from functions.models.syncnet import SYNC_FRAMES, LipSyncExpert, load_expert
from functions.models.wav2lip import Wav2LipGenerator, load_generator, masked_input
from functions.models.wav2lip_audio import load_wav, mel_window, melspectrogram, window_start
from functions.models.wav2lip_disc import VisualQualityDiscriminator
from functions.reference_footage import ping_pong, reference_segment
from functions.standard_lse import syncnet_crop
from functions.talking_render import TalkingFrames, lip_synced_frames, use_bf16
from functions.wav2lip_avatar import (EXPERT_FILE, GENERATOR_FILE, REFERENCE_FILE, TRACK_FILE, Wav2LipAvatarFiles,
                                      quietest_frame, read_reference, write_reference)
from functions.wav2lip_dataset import ChannelOrder, load_face
from functions.wav2lip_training import (
    GAN_WEIGHT,
    ExpertConfig,
    ExpertReport,
    GeneratorConfig,
    WindowSet,
    evaluate_generator,
    train_generator,
)
from schemas.avatar import AvatarManifest
from schemas.brief import TrainBrief
from schemas.dataset import FaceRecord, FrameRecord
from schemas.errors import VideostudioError
from schemas.handoff import AlignOutput, DatasetPrepared
from schemas.plan import Plan, TalkingPlan

FPS = 25
MIN_REFERENCE_FRAMES = 2 * FPS  # two seconds of clean footage at least: shorter ping-pong looks like a stutter
MODEL_ID = "wav2lip"


class Wav2LipBackend(AvatarBackend):
    name = "wav2lip"
    dataset = DatasetPolicy(fps=FPS, drop_duplicates=False, audio=True)
    talks = True
    summary = "A talking avatar: lip-syncs the person's own footage to a script or a recording (trains on a CPU)."
    brief_options = ("wav2lip",)

    # -------------------------------------------------------------------------------- train
    def train(self, ctx: StageContext, *, brief: TrainBrief, dataset: AlignOutput) -> TrainedAvatar:
        options = brief.wav2lip
        prepared = ctx.handoff(DatasetPrepared)
        if prepared.audio is None:
            raise VideostudioError("no_audio_stream", "the dataset has no audio track: prepare it for backend wav2lip")
        if options.base_weights and options.width != 1.0:
            raise VideostudioError("avatar_weights_incompatible", "base_weights are the public layout: width must be 1.0")
        records = load_face_records(ctx.storage, dataset.metadata_key)
        fps = prepared.sample_fps
        # The public checkpoints were trained on OpenCV's BGR crops; networks trained here use RGB.
        channel_order: ChannelOrder = "bgr" if options.base_weights or options.expert_weights else "rgb"
        device = pick_device(ctx.settings.device)
        warnings: list[str] = []

        # 1. reference footage (a video without a clean run fails before any training)
        ctx.progress(0.0, "cutting the reference footage")
        files, asset_keys = self._reference(ctx, prepared, records, width=options.width, channel_order=channel_order)

        # 2. windows and mels; the reference's quietest moment becomes every render's identity reference
        audio_path = ctx.storage.download(prepared.audio.key, ctx.scratch / "audio.wav")
        wav = load_wav(audio_path)
        mel = melspectrogram(wav)
        files = files.model_copy(update={"neutral_frame": quietest_frame(
            wav, prepared.audio.sample_rate, files.source_first_frame, len(files.track), fps)})
        asset_keys["track"] = ctx.put_output_bytes(TRACK_FILE, files.model_dump_json().encode(),
                                                   content_type="application/json")
        sets = load_window_sets(ctx, records, mel, fps=fps, seed=brief.seed, channel_order=channel_order)
        if len(sets["train"]) == 0:
            raise VideostudioError("too_few_windows", "no run of 5 consecutive aligned faces in the train split")

        # 3. expert, 4. generator
        loop = dict(batch_size=brief.batch_size, grad_accumulation=brief.grad_accumulation,
                    mixed_precision=self._mixed_precision(brief, device, warnings), seed=brief.seed,
                    checkpoint_every=brief.checkpoint_every, device=device, learning_rate=options.learning_rate,
                    freeze_batchnorm=options.freeze_batchnorm)
        expert, expert_report = self._expert(ctx, brief, sets, loop)
        if not expert_report.converged:
            warnings.append(f"the lip-sync expert's validation loss {expert_report.val_loss} did not reach "
                            f"{expert_report.converged_loss}: the generator trained on L1 only (more footage or "
                            "epochs help)")
        clock = time.perf_counter()
        generator, generator_report = self._generator(ctx, brief, sets, loop, expert, expert_report.converged)
        train_s = time.perf_counter() - clock

        # 5. held-out metrics, curve, files
        ctx.progress(0.92, "evaluating on the test split")
        config = GeneratorConfig(**loop)
        quality = evaluate_generator(generator, sets["test"] if len(sets["test"]) else sets["val"], expert=expert,
                                     expert_converged=expert_report.converged, config=config)
        sync = self._test_sync(ctx, generator, expert, records, mel, fps=fps, channel_order=channel_order,
                               warnings=warnings)
        curve = write_talking_loss_curves(expert_report.history, generator_report.history,
                                          ctx.scratch / "loss_curve.png",
                                          title=f"avatar {brief.avatar}: Wav2Lip width {options.width}")
        curve_key = ctx.put_output_file("loss_curve.png", curve, content_type="image/png")
        weights_key = ctx.put_output_bytes(GENERATOR_FILE, state_bytes(generator),
                                           content_type="application/octet-stream")
        asset_keys["expert"] = ctx.put_output_bytes(EXPERT_FILE, state_bytes(expert),
                                                    content_type="application/octet-stream")

        metrics = {
            "windows": {s: len(w) for s, w in sets.items()},
            "expert": {**expert_summary(expert_report), "trained": options.expert_weights is None},
            "generator": {"steps": generator_report.steps, "val_l1": rounded(generator_report.val_l1),
                          "val_sync": rounded(generator_report.val_sync),
                          "sync_on_step": generator_report.sync_on_step, "gan": generator_report.gan,
                          "fine_tuned": options.base_weights is not None},
            "expert_history": epoch_curves(expert_report.history),
            "generator_history": epoch_curves(generator_report.history),
            "test": quality.model_dump(),
            "quality_score": round(100 * quality.quality),
            "lip_sync_test": sync,
            "reference_frames": len(files.track), "reference_size": [files.frame_width, files.frame_height],
            "train_s": round(train_s, 3), "device": device, "mixed_precision": loop["mixed_precision"],
            "width": options.width, "channel_order": channel_order,
        }
        avatar = AvatarManifest(
            avatar_id=brief.avatar, job_id=ctx.job_id, backend=self.name, base_model=options.base_weights or MODEL_ID,
            weights_key=weights_key, assets=asset_keys, talks=True,
            dataset={**dataset.splits, "windows": metrics["windows"]},
            metrics={"quality_score": metrics["quality_score"], "test": metrics["test"], "lip_sync_test": sync,
                     "expert_val_loss": metrics["expert"]["val_loss"], "steps": generator_report.steps})
        outputs = {"weights": weights_key, "loss_curve": curve_key, **asset_keys}
        return TrainedAvatar(avatar=avatar, outputs=outputs, job_outputs={"weights": weights_key, "loss_curve": curve_key},
                             metrics=metrics, warnings=warnings, model_id=avatar.base_model)

    @staticmethod
    def _mixed_precision(brief: TrainBrief, device: str, warnings: list[str]) -> str:
        if brief.mixed_precision == "fp16" and device != "cuda":
            warnings.append("fp16 mixed precision needs CUDA; trained in fp32 on the CPU")
            return "no"
        return brief.mixed_precision

    def _reference(self, ctx: StageContext, prepared: DatasetPrepared, records: list[FaceRecord], *, width: float,
                   channel_order: ChannelOrder) -> tuple[Wav2LipAvatarFiles, dict[str, str]]:
        lines = ctx.storage.get_bytes(prepared.frames_key).splitlines()
        frames = [FrameRecord.model_validate_json(line) for line in lines if line]
        segment = reference_segment(records, frames=frames, min_frames=MIN_REFERENCE_FRAMES)
        video = fetch_video(ctx, prepared)
        files = write_reference(video, segment, ctx.scratch / REFERENCE_FILE, fps=prepared.sample_fps, width=width,
                                channel_order=channel_order)
        keys = {"reference": ctx.put_output_file(REFERENCE_FILE, ctx.scratch / REFERENCE_FILE, content_type="video/mp4")}
        return files, keys

    # ----- the two loops
    def _expert(self, ctx: StageContext, brief: TrainBrief, sets: dict[str, WindowSet],
                loop: dict[str, Any]) -> tuple[LipSyncExpert, ExpertReport]:
        options = brief.wav2lip
        config = ExpertConfig(**loop, epochs=options.expert_epochs or brief.epochs,
                              max_steps=options.expert_max_steps or brief.max_steps)
        return train_person_expert(ctx, sets, width=options.width, config=config, seed=brief.seed,
                                   expert_weights=options.expert_weights, share=(0.1, 0.4))

    def _generator(self, ctx: StageContext, brief: TrainBrief, sets: dict[str, WindowSet], loop: dict[str, Any],
                   expert: LipSyncExpert, expert_converged: bool):
        options = brief.wav2lip
        config = GeneratorConfig(**loop, epochs=brief.epochs, max_steps=brief.max_steps,
                                 gan_weight=GAN_WEIGHT if options.gan else 0.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(brief.seed + 1)
            generator = (load_generator(options.base_weights) if options.base_weights
                         else Wav2LipGenerator(options.width))
            discriminator = VisualQualityDiscriminator(options.width) if options.gan else None
        report = train_generator(generator, sets["train"], sets["val"], expert=expert,
                                 expert_converged=expert_converged, discriminator=discriminator, config=config,
                                 resume=latest_loop_checkpoint(ctx, "generator"),
                                 hooks=loop_hooks(ctx, "generator", share=(0.4, 0.9)))
        return generator, report

    @staticmethod
    @torch.no_grad()
    def _test_sync(ctx: StageContext, generator: Wav2LipGenerator, expert: LipSyncExpert, records: list[FaceRecord],
                   mel: np.ndarray, *, fps: float, channel_order: ChannelOrder, warnings: list[str]) -> dict | None:
        """LSE-style metrics of the test split's longest run: generated (as a render makes it) and real frames."""
        run = _longest_test_run(records)
        # a run from a multiple of 5 frames: its mel windows are exactly the clip's (int(80·i/25) is then exact)
        skip = (-run[0].frame_index) % SYNC_FRAMES if run else 0
        run = run[skip:]
        if len(run) < DEFAULT_VSHIFT + 2 * SYNC_FRAMES:
            warnings.append(f"the test split's longest run is {len(run)} frames: too short for lip-sync metrics "
                            f"(±{DEFAULT_VSHIFT} frames of offset need {DEFAULT_VSHIFT + 2 * SYNC_FRAMES})")
            return None
        faces = np.stack([load_face(ctx.storage, r.face_key) for r in run])
        if channel_order == "bgr":
            faces = faces[..., ::-1]
        real = torch.from_numpy(np.ascontiguousarray(faces.transpose(0, 3, 1, 2)))
        clip_mel = mel[:, window_start(run[0].frame_index, fps):]
        device = next(generator.parameters()).device
        generated = []
        for start in range(0, len(real), 32):
            batch = real[start:start + 32].to(device)
            mels = torch.from_numpy(np.stack([mel_window(clip_mel, t, fps) for t in range(start, start + len(batch))]))
            generated.append(generator(mels.unsqueeze(1).to(device), masked_input(batch, batch)).float().cpu())
        scores = {}
        for name, crops in (("generated", torch.cat(generated)), ("real", real)):
            try:
                scores[name] = lip_sync_metrics(expert, lower_half(crops), clip_mel, fps=fps).model_dump(
                    exclude={"distances"})
            except VideostudioError as exc:  # video_too_short: the usable audio ends first
                warnings.append(f"no lip-sync metrics on the test split: {exc}")
                return None
        return scores

    # -------------------------------------------------------------------------------- render
    def render(self, ctx: StageContext, *, plan: Plan) -> StageResult:
        if not isinstance(plan, TalkingPlan):
            raise VideostudioError("missing_speech", f"backend {self.name} renders speech: the plan has none")
        if ctx.storage.stat(plan.avatar_key) is None:
            raise VideostudioError("avatar_not_found", f"avatar {plan.avatar!r} is no longer deployed")
        avatar = AvatarManifest.model_validate_json(ctx.storage.get_bytes(plan.avatar_key))
        local = self._fetch_avatar(ctx, avatar)
        files = Wav2LipAvatarFiles.model_validate_json(local["track"].read_bytes())
        device = pick_device(ctx.settings.device)
        generator = load_generator(local["weights"], width=files.width).to(device)
        expert = load_expert(local["expert"], width=files.width).to(device)
        ctx.progress(0.05, "reading the reference footage")
        reference = read_reference(local["reference"], files)
        speech = ctx.storage.download(plan.speech.key, ctx.scratch / "speech.wav")
        mel = melspectrogram(load_wav(speech))

        result = TalkingFrames()
        silent = ctx.scratch / "video.mp4"

        def on_batch(done: int, total: int) -> None:
            ctx.progress(0.1 + 0.8 * done / total, "lip-syncing", step=done, total=total)

        clock = time.perf_counter()
        bf16 = use_bf16(ctx.settings.talking_precision, device)
        frames = lip_synced_frames(generator, reference, files, mel, plan.num_frames, result=result, on_batch=on_batch,
                                   bf16=bf16)
        poster: list[np.ndarray] = []
        warnings: list[str] = []
        syncnet = standard_scorer(warnings)
        syncnet_crops: list[np.ndarray] = []  # 224-px crops for the standard LSE: 150 KB a frame, only when asked
        positions = ping_pong(plan.num_frames, min(len(reference), len(files.track)))

        def keep_poster(stream):
            for n, frame in enumerate(stream):
                if n == min(plan.num_frames - 1, plan.num_frames // 3):
                    poster.append(frame)
                if syncnet is not None:
                    syncnet_crops.append(syncnet_crop(frame, files.track[positions[n]].box))
                yield frame

        write_mp4(keep_poster(frames), silent, fps=plan.fps)
        render_s = time.perf_counter() - clock
        ctx.progress(0.92, "muxing the speech")
        video_key = ctx.put_output_file("video.mp4", mux_audio(silent, speech, ctx.scratch / "talking.mp4"),
                                        content_type="video/mp4")
        poster_key = ctx.put_output_file("poster.jpg", write_poster(poster[0], ctx.scratch / "poster.jpg"),
                                         content_type="image/jpeg")
        metrics: dict[str, Any] = {
            "frames": plan.num_frames, "fps": plan.fps, "duration_s": plan.duration_s,
            "speech_duration_s": plan.speech.duration_s, "width": files.frame_width, "height": files.frame_height,
            "render_s": round(render_s, 3), "frames_per_s": round(plan.num_frames / render_s, 3) if render_s else None,
            "realtime_factor": round(plan.duration_s / render_s, 3) if render_s else None,
            "paste_s": round(result.timings.paste_s, 3), "generate_s": round(result.timings.generate_s, 3),
            "device": device, "precision": "bf16" if bf16 else "fp32",
        }
        add_render_lip_sync(metrics, warnings, expert=expert, lower_halves=result.lower_half_tensor(), mel=mel,
                            fps=plan.fps, syncnet=syncnet, syncnet_crops=syncnet_crops, speech=speech)
        return StageResult(outputs={"video": video_key, "poster": poster_key},
                           job_outputs={"video": video_key, "poster": poster_key}, metrics=metrics,
                           warnings=warnings, model_id=avatar.base_model)

    @staticmethod
    def _fetch_avatar(ctx: StageContext, avatar: AvatarManifest) -> dict[str, Path]:
        wanted = {"weights": avatar.weights_key, **{k: avatar.assets.get(k) for k in ("reference", "track", "expert")}}
        local = {}
        for name, key in wanted.items():
            if not key or ctx.storage.stat(key) is None:
                raise VideostudioError("avatar_not_found", f"avatar {avatar.avatar_id!r} is missing its {name} file")
            local[name] = ctx.storage.download(key, ctx.scratch / "avatar" / Path(key).name)
        return local


def _longest_test_run(records: list[FaceRecord]) -> list[FaceRecord]:
    faces = sorted((r for r in records if r.split == "test" and r.face_key), key=lambda r: r.frame_index)
    best: list[FaceRecord] = []
    run: list[FaceRecord] = []
    for record in faces:
        run = run + [record] if run and record.frame_index == run[-1].frame_index + 1 else [record]
        if len(run) > len(best):
            best = run
    return best

