"""`backend: infinitetalk` on tiny random weights: a train stage killed after a checkpoint resumes to the
same LoRA, bit for bit; a cancel stops training at the next step and a render at the next denoising step or
chunk (nothing left running, no video).

`ctx.progress` looks at the cancel marker at most every 0.5 s (core/stage.py `check_cancelled`); where a
cancel is requested below, the test waits that long once, so that "the next progress report" honours it
whatever the speed of the machine.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

import functions.backends.infinitetalk as infinitetalk_module
from core.stage import StageContext
from functions.infinitetalk_chunks import plan_chunks
from functions.infinitetalk_pipeline import Sampler
from functions.lora_training import _TrainingLoop
from functions.models.infinitetalk_loading import load_models
from schemas.brief import InfiniteTalkOptions
from tests import pipeline_jobs
from tests.pipeline_jobs import SimulatedKill, dies_after_checkpoint, drain, submit
from tests.infinitetalk_jobs import LONG_LINE, tiny_train_brief
from tests.real_media import looped_talking_video

pytestmark = pytest.mark.slow

THROTTLE_S = 0.55  # > StageContext.check_cancelled's every_s
STEPS = 6
TRAIN = tiny_train_brief(epochs=2, max_steps=STEPS, checkpoint_every=2, seed=4)
SCRIPT = f"avatar: ann\nscript: {LONG_LINE}\n"


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    # the prepare stage wants 30 s or more: 32 s of one real clip, looped, small
    return looped_talking_video(tmp_path_factory.mktemp("media") / "ann.mp4", clip="talking-3.mp4", seconds=32,
                                side=160)


def make_runner(bucket: Path, video: Path, **settings):
    return pipeline_jobs.make_runner(bucket, {"uploads/ann.mp4": video}, **settings)


@pytest.fixture(scope="module")
def straight(video, tmp_path_factory):
    """An uninterrupted run: the reference LoRA, and the avatar the render tests speak with."""
    runner = make_runner(tmp_path_factory.mktemp("straight"), video)
    job = drain(runner, submit(runner, "ann.yaml", TRAIN))
    assert job.status.value == "succeeded", job.error
    return runner, job


def count_steps(monkeypatch) -> list[int]:
    """The optimizer steps the LoRA loop runs from now on (their 1-based numbers), in order."""
    steps, original = [], _TrainingLoop._step

    def counted(self, state, order):
        steps.append(state.global_step + 1)
        return original(self, state, order)
    monkeypatch.setattr(_TrainingLoop, "_step", counted)
    return steps


def cancel_at(runner, job_id: str) -> None:
    runner.cancel(job_id)  # the marker a dashboard's cancel writes; the running stage sees it at its next report
    time.sleep(THROTTLE_S)


# --- kill and resume ----------------------------------------------------------------------------

def test_a_killed_train_stage_resumes_to_the_same_lora_bit_for_bit(straight, video, tmp_path, monkeypatch):
    reference_runner, reference = straight
    runner = make_runner(tmp_path / "killed", video, lease_s=0.5)
    job_id = submit(runner, "ann.yaml", TRAIN)
    with dies_after_checkpoint(monkeypatch, infinitetalk_module, "run_training", 2), pytest.raises(SimulatedKill):
        drain(runner, job_id)  # killed right after the checkpoint of step 4
    killed = runner.store.load(job_id)
    assert killed.stages["train"].status.value == "running"
    assert runner.storage.exists(f"jobs/{job_id}/train/checkpoints/step-0000004.pt")
    assert not runner.storage.exists(f"jobs/{job_id}/train/lora.safetensors")
    time.sleep(0.6)  # the dead worker's lease expires; the message comes back
    steps_run = count_steps(monkeypatch)
    resumed = drain(runner, job_id)
    assert steps_run == [5, 6]  # the retry went on from the checkpoint: it did not start over
    assert resumed.status.value == "succeeded", resumed.error
    train, expected = resumed.stages["train"].metrics, reference.stages["train"].metrics
    assert resumed.stages["train"].attempts == 2 and train["resumed"] is True and expected["resumed"] is False
    assert train["steps"] == expected["steps"] == STEPS
    assert train["train_loss"] == expected["train_loss"] and train["test_loss"] == expected["test_loss"]
    lora = runner.storage.get_bytes(resumed.outputs["lora"])
    assert lora == runner.storage.get_bytes("avatars/ann/lora.safetensors")  # what was deployed
    # Bit for bit: every tensor's bytes. (Not the file's: safetensors writes its __metadata__ keys in an order
    # that changes from one save to the next, so equal adapters may differ in the header.)
    (meta, tensors), (ref_meta, ref_tensors) = lora_file(lora), lora_file(
        reference_runner.storage.get_bytes(reference.outputs["lora"]))
    assert meta == ref_meta and tensors.keys() == ref_tensors.keys() and len(tensors) > 0
    for key, tensor in tensors.items():
        assert tensor.dtype == ref_tensors[key].dtype and tensor.shape == ref_tensors[key].shape, key
        assert torch.equal(bits(tensor), bits(ref_tensors[key])), key


def lora_file(data: bytes) -> tuple[dict, dict[str, torch.Tensor]]:
    header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])
    return header.get("__metadata__") or {}, safetensors.torch.load(data)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(torch.uint8)


# --- cancel -------------------------------------------------------------------------------------

def test_cancel_stops_the_train_stage_at_the_next_step(video, tmp_path, monkeypatch):
    runner = make_runner(tmp_path / "bucket", video)
    steps_run = count_steps(monkeypatch)
    original_progress = StageContext.progress

    def progress(self, fraction, message="", *, step=None, total=None):
        original_progress(self, fraction, message, step=step, total=total)
        if self.stage == "train" and message == "training" and step == 2:
            cancel_at(runner, self.job_id)  # after step 2's report: step 3's report must stop it

    monkeypatch.setattr(StageContext, "progress", progress)
    job_id = submit(runner, "ann.yaml", TRAIN)
    job = drain(runner, job_id)
    assert job.status.value == "cancelled" and job.error.code == "cancelled"
    assert job.stages["train"].status.value == "cancelled" and job.stages["render"].status.value == "cancelled"
    assert steps_run == [1, 2, 3]  # step 3 ran (it was under way), no step after it
    recorded = job.stages["train"].metrics
    assert recorded["total_steps"] == STEPS and recorded["step"] < STEPS
    assert not runner.storage.exists(f"jobs/{job_id}/train/lora.safetensors")
    assert not runner.storage.exists("avatars/ann/manifest.json")


class ForwardCounter:
    """Counts the forward passes of the cached transformer (the one renders share); `on_call(n)` sees each."""

    def __init__(self, transformer) -> None:
        self.calls = 0
        self.on_call = lambda n: None
        self._handle = transformer.register_forward_pre_hook(self._pre)

    def _pre(self, module, args) -> None:
        self.calls += 1
        self.on_call(self.calls)

    def remove(self) -> None:
        self._handle.remove()


@pytest.mark.parametrize("where", ["between_steps", "between_chunks"])
def test_cancel_stops_a_render_inside_its_first_chunk(straight, monkeypatch, where):
    runner, _ = straight
    avatar = json.loads(runner.storage.get_bytes("avatars/ann/manifest.json"))
    options = InfiniteTalkOptions.model_validate_json(runner.storage.get_bytes(avatar["assets"]["options"]))
    assert options.text_guidance != 1 and options.audio_guidance != 1
    passes = 3  # text and audio guidance: three transformer passes per denoising step
    steps = options.steps
    counter = ForwardCounter(load_models(options, device="cpu").components.transformer)
    state: dict = {}
    if where == "between_steps":  # requested while the first step of chunk 1 runs: honoured when it ends
        counter.on_call = lambda n: n == 1 and cancel_at(runner, state["job_id"])
        expected_calls = passes
    else:  # requested once chunk 1 is denoised and decoded: honoured before chunk 2's first step
        original_decode = Sampler.vae_decode

        def decode(self, latent):
            video = original_decode(self, latent)
            if "decoded" not in state:
                state["decoded"] = counter.calls
                cancel_at(runner, state["job_id"])
            return video
        monkeypatch.setattr(Sampler, "vae_decode", decode)
        expected_calls = passes * steps
    try:
        state["job_id"] = job_id = submit(runner, f"{where}.yaml", SCRIPT)
        job = drain(runner, job_id)
    finally:
        counter.remove()
    assert job.status.value == "cancelled" and job.error.code == "cancelled", job.error
    assert job.stages["render"].status.value == "cancelled"
    plan = job.stages["prepare"].handoff["plan"]
    chunks = plan_chunks(plan["num_frames"], chunk_frames=options.chunk_frames, motion_frames=options.motion_frames)
    assert len(chunks) >= 3
    assert counter.calls == expected_calls < passes * steps * len(chunks)
    if where == "between_chunks":
        assert state["decoded"] == passes * steps  # chunk 1 was whole; chunk 2 never ran a step
    assert "video" not in job.outputs and "poster" not in job.outputs
    assert not [k for k in runner.storage.list_keys(f"jobs/{job_id}/") if k.endswith((".mp4", ".jpg"))]
