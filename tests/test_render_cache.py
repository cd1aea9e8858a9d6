"""The render cache, the encoder cache and approximate caching, end to end through the real runner with the tiny
Mochi (random weights, 32×32, 7 frames): what each render's manifest says, the bytes it wrote, and the bucket's
cache/ prefix. Nothing here times anything: the cache path is asserted on the manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.avatars import AvatarRegistry
from core.cache_store import BucketLRU
from functions.encoder_cache import MEMORY
from functions.latent_cache import steps_to_skip, store_steps
from functions.lora_training import TARGET_MODULES, add_lora
from functions.models.mochi import build_tiny_pipeline
from pipeline_jobs import make_runner, run_job
from schemas.avatar import AvatarManifest
from schemas.brief import parse_brief
from schemas.errors import VideostudioError

BRIEF = "prompt: {prompt}\nmodel: tiny\nwidth: 32\nheight: 32\nnum_frames: 7\nsteps: 10\nseed: {seed}\n"


def brief(prompt: str = "a red kite over a field", seed: int = 1, extra: str = "") -> str:
    return BRIEF.format(prompt=prompt, seed=seed) + extra


@pytest.fixture(autouse=True)
def fresh_memory_cache():
    MEMORY.clear()  # each test starts with a cold worker
    yield
    MEMORY.clear()


@pytest.fixture
def runner(tmp_path):
    return make_runner(tmp_path / "bucket")


def video_bytes(runner, job) -> bytes:
    return runner.storage.get_bytes(job.outputs["video"])


def test_a_repeated_brief_under_another_name_reuses_the_first_render(runner):
    first = run_job(runner, "first.yaml", brief())
    assert first.status.value == "succeeded", first.error
    assert first.cache.hit is False and first.cache.reason == "miss" and first.cache.recorded
    again = run_job(runner, "again.yaml", brief())
    assert again.status.value == "succeeded", again.error
    assert again.job_id != first.job_id
    assert again.cache.hit is True and again.cache.source_job == first.job_id
    assert again.cache.key == first.cache.key
    # its own copies, byte for byte the first job's
    assert again.outputs["video"] == f"jobs/{again.job_id}/render/video.mp4"
    assert video_bytes(runner, again) == video_bytes(runner, first)
    assert runner.storage.get_bytes(again.outputs["poster"]) == runner.storage.get_bytes(first.outputs["poster"])
    metrics = again.stages["render"].metrics
    assert "reuse_s" in metrics and "denoise_s" not in metrics and "encoder_cache" not in metrics
    assert metrics["frames"] == 7 and metrics["random_weights"] is True
    # the manifest on disk says so too (typed, top level)
    raw = runner.store.load(again.job_id).model_dump(mode="json")
    assert raw["cache"]["hit"] is True and raw["cache"]["source_job"] == first.job_id


def test_a_changed_seed_is_a_render_miss_but_an_encoder_hit(runner):
    first = run_job(runner, "a.yaml", brief(seed=1))
    assert first.stages["render"].metrics["encoder_cache"]["misses"] == 2  # prompt and the empty negative prompt
    other = run_job(runner, "b.yaml", brief(seed=2))
    assert other.status.value == "succeeded", other.error
    assert other.cache.hit is False and other.cache.key != first.cache.key
    encoders = other.stages["render"].metrics["encoder_cache"]
    assert encoders["misses"] == 0 and encoders["memory_hits"] == 2
    assert video_bytes(runner, other) != video_bytes(runner, first)
    # a fresh worker (no memory cache) finds the embeddings in the bucket
    MEMORY.clear()
    third = run_job(runner, "c.yaml", brief(seed=3))
    assert third.stages["render"].metrics["encoder_cache"]["bucket_hits"] == 2
    assert runner.storage.list_keys("cache/encoders/")


def test_an_encoder_hit_renders_the_same_bytes_as_a_miss(tmp_path):
    cold = make_runner(tmp_path / "cold")
    job = run_job(cold, "a.yaml", brief(seed=5))
    warm = make_runner(tmp_path / "warm")
    run_job(warm, "warmup.yaml", brief(seed=6))  # puts the prompt's embeddings into the memory cache
    hit = run_job(warm, "a.yaml", brief(seed=5))
    assert hit.stages["render"].metrics["encoder_cache"]["misses"] == 0
    assert video_bytes(warm, hit) == video_bytes(cold, job)


def test_cache_false_renders_afresh(runner):
    first = run_job(runner, "a.yaml", brief())
    fresh = run_job(runner, "b.yaml", brief(extra="cache: false\n"))
    assert fresh.status.value == "succeeded", fresh.error
    assert fresh.cache.hit is False and fresh.cache.reason == "disabled" and fresh.cache.key is None
    assert "denoise_s" in fresh.stages["render"].metrics
    assert video_bytes(runner, fresh) == video_bytes(runner, first)  # rendered again, deterministically
    assert runner.storage.list_keys("cache/renders/") == [f"cache/renders/{first.cache.key}.json"]


def test_the_setting_turns_the_render_cache_off(tmp_path):
    runner = make_runner(tmp_path / "bucket", render_cache=False)
    run_job(runner, "a.yaml", brief())
    again = run_job(runner, "b.yaml", brief())
    assert again.cache.reason == "disabled" and not runner.storage.list_keys("cache/renders/")


def test_a_cached_entry_whose_outputs_vanished_is_a_miss(runner):
    first = run_job(runner, "a.yaml", brief())
    runner.storage.delete(first.outputs["video"])
    again = run_job(runner, "b.yaml", brief())
    assert again.status.value == "succeeded", again.error
    assert again.cache.hit is False and again.cache.reason == "source_missing" and again.cache.recorded
    third = run_job(runner, "c.yaml", brief())  # the entry now names the second job
    assert third.cache.hit is True and third.cache.source_job == again.job_id


def test_a_cache_entry_of_a_job_that_did_not_succeed_is_not_reused(runner):
    first = run_job(runner, "a.yaml", brief())

    def failed(m):
        m.status = type(m.status).failed
    runner.store.update(first.job_id, failed)
    again = run_job(runner, "b.yaml", brief())
    assert again.cache.hit is False and again.cache.reason == "source_missing"


def test_the_brief_validates_cache_options():
    assert parse_brief(brief(extra="cache: false\n").encode()).cache_options is None
    assert parse_brief(brief(extra="cache: {approximate: true}\n").encode()).cache_options.approximate
    assert parse_brief(brief().encode()).cache_options.approximate is False
    with pytest.raises(VideostudioError) as err:
        parse_brief(brief(extra="cache: {approximat: true}\n").encode())
    assert err.value.code == "unknown_field"


# ------------------------------------------------------------------------------------------- avatars
def deploy_lora_avatar(runner, avatar_id: str = "kim", seed: int = 0) -> AvatarManifest:
    """A mochi-lora avatar on the tiny model: a real LoRA file (non-zero B, so it changes the render)."""
    from diffusers import MochiPipeline
    from peft.utils import get_peft_model_state_dict

    pipe = build_tiny_pipeline()
    add_lora(pipe.transformer, 4, 4.0, seed=seed)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, parameter in pipe.transformer.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    folder = Path(runner.storage.root).parent / f"lora-{avatar_id}-{seed}"  # beside the bucket, not in it
    MochiPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
                                    weight_name="lora.safetensors")
    job_id = f"train-{avatar_id}-0000000000000000"
    key = f"jobs/{job_id}/train/lora.safetensors"
    runner.storage.put_file(key, folder / "lora.safetensors")
    manifest = AvatarManifest(avatar_id=avatar_id, job_id=job_id, backend="mochi-lora", base_model="tiny",
                              weights_key=key, lora_key=key, trigger_token=f"vs_{avatar_id}", lora_rank=4,
                              lora_alpha=4.0, target_modules=TARGET_MODULES)
    return AvatarRegistry(runner.storage).deploy(manifest, key)


def test_a_deleted_avatars_entries_are_not_reused(runner):
    deploy_lora_avatar(runner)
    with_avatar = brief(extra="avatar: kim\n")
    first = run_job(runner, "a.yaml", with_avatar)
    assert first.status.value == "succeeded", first.error
    assert run_job(runner, "b.yaml", with_avatar).cache.source_job == first.job_id
    plain = run_job(runner, "plain.yaml", brief())
    assert runner.storage.list_keys("cache/by-avatar/kim/")
    AvatarRegistry(runner.storage).delete("kim")
    assert not runner.storage.list_keys("cache/by-avatar/kim/")
    assert runner.storage.list_keys("cache/renders/") == [f"cache/renders/{plain.cache.key}.json"]
    assert all(".safetensors" not in k or first.job_id not in k for k in runner.storage.list_keys("cache/latents/"))
    # the same id deployed again (the same weights): its render is rendered, not reused
    deploy_lora_avatar(runner)
    after = run_job(runner, "c.yaml", with_avatar)
    assert after.status.value == "succeeded", after.error
    assert after.cache.hit is False and after.cache.reason == "miss"
    assert "denoise_s" in after.stages["render"].metrics


def test_other_avatar_weights_are_another_key(runner):
    deploy_lora_avatar(runner, seed=0)
    first = run_job(runner, "a.yaml", brief(extra="avatar: kim\n"))
    deploy_lora_avatar(runner, seed=1)  # re-deployed over it with other weights
    second = run_job(runner, "b.yaml", brief(extra="avatar: kim\n"))
    assert second.cache.hit is False and second.cache.key != first.cache.key
    assert video_bytes(runner, second) != video_bytes(runner, first)


# ------------------------------------------------------------------------------------------- approximate
def test_approximate_starts_from_a_similar_prompts_latent(runner):
    # The tiny T5 reads 16 characters: "red kite" and "red kites" embed at cosine ~0.96, "waves on rocks" at ~0.76.
    source = run_job(runner, "a.yaml", brief("red kite", seed=1))
    assert runner.storage.list_keys("cache/latents/")  # every cached render keeps its latents
    # off by default: a similar prompt renders all its steps
    plain = run_job(runner, "b.yaml", brief("red kites", seed=2))
    assert plain.cache.approximate is None and plain.stages["render"].metrics["steps_run"] == 10
    near = run_job(runner, "c.yaml", brief("red kites", seed=3, extra="cache: {approximate: true}\n"))
    assert near.status.value == "succeeded", near.error
    approx = near.cache.approximate
    # the most similar earlier render: the same prompt (seed 2) beats "red kite"
    assert approx is not None and approx.source_job == plain.job_id and approx.similarity > 0.999
    assert approx.steps_saved == 5 and approx.steps_total == 10
    metrics = near.stages["render"].metrics
    assert metrics["steps_run"] == 5 and metrics["approximate"]["source_job"] == plain.job_id
    assert near.cache.recorded is False  # not what its key promises: never reused as an exact render
    assert not runner.storage.exists(f"cache/renders/{near.cache.key}.json")
    # the same prompt from its own latent after 5 steps: the last 5 Euler steps (no noise) are exactly the
    # source's, so the bytes are too; proof that the skipped schedule continues the full one step for step
    assert video_bytes(runner, near) == video_bytes(runner, plain)
    # only "red kite" to start from: less similar, fewer steps skipped
    other = make_runner(Path(runner.storage.root).parent / "other")
    first = run_job(other, "a.yaml", brief("red kite", seed=1))
    assert video_bytes(other, first) == video_bytes(runner, source)
    kin = run_job(other, "b.yaml", brief("red kites", seed=3, extra="cache: {approximate: true}\n"))
    assert kin.cache.approximate.source_job == first.job_id
    assert 0.95 <= kin.cache.approximate.similarity < 0.99 and kin.cache.approximate.steps_saved == 3
    assert kin.stages["render"].metrics["steps_run"] == 7


def test_approximate_needs_the_similarity_threshold(runner):
    run_job(runner, "a.yaml", brief("red kite", seed=1))
    far = run_job(runner, "b.yaml", brief("waves on rocks", seed=3, extra="cache: {approximate: true}\n"))
    assert far.cache.approximate is None and far.stages["render"].metrics["steps_run"] == 10
    assert far.cache.recorded  # a full render: recorded as any other
    strict = run_job(runner, "c.yaml", brief("red kites", seed=3,
                                             extra="cache: {approximate: true, min_similarity: 0.99}\n"))
    assert strict.cache.approximate is None and strict.stages["render"].metrics["steps_run"] == 10


def test_the_skip_schedule():
    assert store_steps(10) == [2, 3, 4, 5]
    assert steps_to_skip(0.995, 10, threshold=0.9) == 5
    assert steps_to_skip(0.975, 10, threshold=0.9) == 4
    assert steps_to_skip(0.955, 10, threshold=0.9) == 3
    assert steps_to_skip(0.91, 10, threshold=0.9) == 2
    assert steps_to_skip(0.89, 10, threshold=0.9) == 0
    assert steps_to_skip(0.995, 2, threshold=0.9) == 1  # the one latent two steps keep


# ------------------------------------------------------------------------------------------- eviction
def test_the_bucket_store_evicts_the_least_recently_used_first(tmp_path):
    from core.storage import LocalStorage

    store = BucketLRU(LocalStorage(tmp_path / "bucket"), prefix="cache/encoders/", max_bytes=3_000)
    for name in "abc":
        assert store.put(name, bytes(900))
    assert store.get("a") is not None  # a is now the most recently used
    store.put("d", bytes(900))
    names = {e.name for e in store.entries()}
    assert names == {"a", "c", "d"} and store.total_bytes() <= 3_000
    assert store.put("huge", bytes(4_000)) is False and "huge" not in {e.name for e in store.entries()}


def test_encoder_eviction_keeps_the_bucket_cache_under_its_limit(tmp_path):
    limit = 6_000  # a tiny embedding entry is ~2 KB: room for two prompts and the empty negative prompt
    runner = make_runner(tmp_path / "bucket", encoder_cache_max_bytes=limit)
    for n in range(5):
        job = run_job(runner, f"p{n}.yaml", brief(f"prompt number {n} of five", seed=n))
        assert job.status.value == "succeeded", job.error
        store = BucketLRU(runner.storage, prefix="cache/encoders/", max_bytes=limit)
        assert store.total_bytes() <= limit
    assert 1 <= len(list(store.entries())) < 6  # five prompts and one negative prompt did not all fit


def test_latent_eviction_keeps_its_limit(tmp_path):
    limit = 40_000
    runner = make_runner(tmp_path / "bucket", latent_cache_max_bytes=limit)
    for n in range(4):
        run_job(runner, f"p{n}.yaml", brief(f"prompt {n}", seed=n))
        assert BucketLRU(runner.storage, prefix="cache/latents/", max_bytes=limit).total_bytes() <= limit
