"""The render cache and the encoder cache on talking renders, through the real runner: a tiny Wav2Lip avatar
trained on real footage (width 1/8, two steps) and a tiny InfiniteTalk one. The key covers the prepared speech's
bytes (synthesis is seeded: the same script, voice and seed give the same WAV), so a repeated script is a hit
with the first render's bytes, another seed is a miss, and deleting the avatar drops its entries."""

from __future__ import annotations

import pytest

from core.avatars import AvatarRegistry, deploy_from_job
from functions.encoder_cache import MEMORY
from tests import pipeline_jobs
from tests.infinitetalk_jobs import tiny_train_brief
from tests.pipeline_jobs import TINY_WAV2LIP_TRAIN, drain, run_job, submit
from tests.real_media import looped_talking_video

pytestmark = pytest.mark.slow

SCRIPT = "avatar: {avatar}\nscript: Hello there, this line is rendered once.\nseed: {seed}\n"


def trained_runner(tmp_path_factory, train: str, *, side: int, clip: str | None = None):
    kwargs = {"clip": clip} if clip else {}
    video = looped_talking_video(tmp_path_factory.mktemp("media") / "ann.mp4", seconds=32, side=side, **kwargs)
    runner = pipeline_jobs.make_runner(tmp_path_factory.mktemp("bucket"), {"uploads/ann.mp4": video})
    job = drain(runner, submit(runner, "ann.yaml", train))
    assert job.status.value == "succeeded", job.error
    return runner, job


def check_talking_cache(runner, train_job, avatar: str) -> list:
    first = run_job(runner, "one.yaml", SCRIPT.format(avatar=avatar, seed=0))
    assert first.status.value == "succeeded", first.error
    assert first.cache.hit is False and first.cache.recorded
    again = run_job(runner, "two.yaml", SCRIPT.format(avatar=avatar, seed=0))
    assert again.cache.hit is True and again.cache.source_job == first.job_id
    assert runner.storage.get_bytes(again.outputs["video"]) == runner.storage.get_bytes(first.outputs["video"])
    # the speech of another seed is other bytes: another key
    other = run_job(runner, "three.yaml", SCRIPT.format(avatar=avatar, seed=1))
    assert other.cache.hit is False and other.cache.key != first.cache.key
    # deleting the avatar drops its entries; deployed again, its render renders
    registry = AvatarRegistry(runner.storage)
    registry.delete(avatar)
    assert not runner.storage.list_keys("cache/renders/") and not runner.storage.list_keys(f"cache/by-avatar/{avatar}/")
    deploy_from_job(registry, train_job)
    after = run_job(runner, "four.yaml", SCRIPT.format(avatar=avatar, seed=0))
    assert after.status.value == "succeeded", after.error
    assert after.cache.hit is False and after.cache.reason == "miss"
    return [first, other, after]


def test_wav2lip_renders_are_cached_by_speech_and_avatar(tmp_path_factory):
    runner, train_job = trained_runner(tmp_path_factory, TINY_WAV2LIP_TRAIN, side=360)
    check_talking_cache(runner, train_job, "ann")


def test_infinitetalk_renders_are_cached_and_reuse_their_encoders(tmp_path_factory):
    MEMORY.clear()
    runner, train_job = trained_runner(tmp_path_factory, tiny_train_brief(avatar="ann", epochs=1), side=160,
                                       clip="talking-3.mp4")
    first, other, after = check_talking_cache(runner, train_job, "ann")
    # UMT5 (prompt and negative prompt: the avatar's, the same every render) and wav2vec2 (the take)
    assert first.stages["render"].metrics["encoder_cache"]["misses"] >= 1
    encoders = other.stages["render"].metrics["encoder_cache"]
    assert encoders["hits"] >= 2 and encoders["misses"] == 1  # new speech: only wav2vec2 runs
    assert after.stages["render"].metrics["encoder_cache"]["misses"] == 0  # the first take's features again
