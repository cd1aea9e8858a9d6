"""Render-cache and encoder-cache benchmark, side by side in one run, through the real runner (in process, a temp
folder bucket, the tiny Mochi with random weights on the CPU):

1. **Repeated brief.** R briefs with distinct prompts are rendered (first), then each is dropped again under
   another name (repeat: a render-cache hit that copies the first job's outputs). Wall time of `run_job`
   (submit → prepare → render → commit) per brief, median / min / max. The pipeline is loaded before the clock
   starts (a warm worker), so "first" is the render itself, not the model load.
2. **Encoder cache on 100 briefs with 10 distinct prompts** (10 seeds each, shuffled, all render-cache misses:
   `cache` stays on but every seed is a new key). The render stage's `encoder_cache` metrics give the hit rate
   (over the prompt and the negative prompt of each render) and the time inside the encoder. Time saved = hits ×
   the mean encode time of a miss − all the time the cache itself took (lookups, bucket reads and stores). The
   same 100 briefs are then run with the encoder cache off (memory and bucket limits 0) for the end-to-end
   difference.
3. **What one T5 encode costs at a larger shape** (t5-v1_1-large encoder, 24 layers, d_model 1024, random
   weights, 256 tokens, CPU): encode vs memory hit vs bucket hit (a 1 MB safetensors read), through EncoderCache.
   The tiny model's T5 takes a millisecond, so (2) understates what the cache saves on real weights.

This is a benchmark, not a test: it asserts nothing about timings.

    .venv/bin/python bench/render_cache.py                 # R=5, 100 briefs, 10 prompts, 64×64, 13 frames, 20 steps
    .venv/bin/python bench/render_cache.py --repeats 3 --briefs 50 --prompts 5 --steps 10
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from core.settings import Settings  # noqa: E402
from core.storage import LocalStorage  # noqa: E402
from functions.encoder_cache import MEMORY, EncoderCache, MemoryLRU, encoder_key  # noqa: E402
from functions.models.mochi import load_pipeline  # noqa: E402
from pipeline_jobs import make_runner, run_job  # noqa: E402

PROMPTS = ["red kite over a field", "waves on rocks at night", "city street in rain", "forest path at dawn",
           "desert dunes at noon", "snowy mountain ridge", "candle on a table", "a cat on a sofa",
           "busy harbour at dusk", "paper boat in a puddle", "neon sign flickering", "wheat field in wind"]


def brief(prompt: str, seed: int, *, size: int, frames: int, steps: int) -> str:
    return (f"prompt: {prompt}\nmodel: tiny\nwidth: {size}\nheight: {size}\nnum_frames: {frames}\n"
            f"steps: {steps}\nseed: {seed}\n")


def stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "n": len(values)}


def timed(runner, name: str, text: str):
    clock = time.perf_counter()
    job = run_job(runner, name, text)
    seconds = time.perf_counter() - clock
    if job.status.value != "succeeded":
        raise SystemExit(f"{name} did not succeed: {job.error}")
    return job, seconds


def repeated_brief(root: Path, *, repeats: int, size: int, frames: int, steps: int) -> dict:
    runner = make_runner(root / "repeat")
    first, repeat, identical = [], [], []
    for n in range(repeats):
        text = brief(PROMPTS[n % len(PROMPTS)], n, size=size, frames=frames, steps=steps)
        job, seconds = timed(runner, f"first-{n}.yaml", text)
        first.append(seconds)
        again, seconds = timed(runner, f"repeat-{n}.yaml", text)
        assert again.cache.hit and again.cache.source_job == job.job_id, again.cache
        repeat.append(seconds)
        identical.append(runner.storage.get_bytes(again.outputs["video"]) ==
                         runner.storage.get_bytes(job.outputs["video"]))
    return {"first_s": stats(first), "repeat_s": stats(repeat), "identical_bytes": all(identical),
            "speedup_median": round(statistics.median(first) / statistics.median(repeat), 1)}


def encoder_briefs(root: Path, *, briefs: int, prompts: int, size: int, frames: int, steps: int,
                   cache_on: bool) -> dict:
    settings = {} if cache_on else {"encoder_cache_memory_bytes": 0, "encoder_cache_max_bytes": 0}
    runner = make_runner(root / ("encoders-on" if cache_on else "encoders-off"), **settings)
    MEMORY.clear()  # a fresh worker
    order = [(PROMPTS[i % prompts], i) for i in range(briefs)]  # seed i: every render is a render-cache miss
    random.Random(0).shuffle(order)
    memory_hits = bucket_hits = misses = 0
    encode_s = cache_s = wall = 0.0
    for n, (prompt, seed) in enumerate(order):
        job, seconds = timed(runner, f"b{n}.yaml", brief(prompt, seed, size=size, frames=frames, steps=steps))
        wall += seconds
        cache = job.stages["render"].metrics["encoder_cache"]
        memory_hits += cache["memory_hits"]
        bucket_hits += cache["bucket_hits"]
        misses += cache["misses"]
        encode_s += cache["encode_s"]
        cache_s += cache["cache_s"]
    hits = memory_hits + bucket_hits
    mean_miss = encode_s / misses if misses else 0.0
    return {"renders": briefs, "distinct_prompts": prompts, "encodes": hits + misses, "hits": hits,
            "memory_hits": memory_hits, "bucket_hits": bucket_hits, "misses": misses,
            "hit_rate": round(hits / (hits + misses), 3) if hits + misses else None,
            "encoder_s": round(encode_s, 4), "mean_encode_ms": round(1000 * mean_miss, 3),
            "cache_overhead_s": round(cache_s, 4),
            # what the hits would have cost encoded, less everything the cache itself took (stores included)
            "encode_time_saved_s": round(hits * mean_miss - cache_s, 4), "wall_s": round(wall, 2),
            "bucket_cache_bytes": sum(i.size for i in runner.storage.list("cache/encoders/"))}


def large_t5(root: Path, *, rounds: int) -> dict:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    model = T5EncoderModel(config).eval()
    ids = torch.randint(0, 32128, (1, 256))
    mask = torch.ones_like(ids)
    settings = Settings(bucket=str(root))
    storage = LocalStorage(root / "t5")

    def encode():
        with torch.inference_mode():
            return {"embeds": model(ids, attention_mask=mask)[0]}

    encode()  # warm-up
    encode_s, memory_s, bucket_s = [], [], []
    for n in range(rounds):
        key = encoder_key({"encoder": "bench-t5-large"}, {"round": n})
        cache = EncoderCache(storage, settings, memory=MemoryLRU())
        clock = time.perf_counter()
        cache.get_or_encode(key, encode)
        encode_s.append(time.perf_counter() - clock)
        clock = time.perf_counter()
        cache.get_or_encode(key, encode)
        memory_s.append(time.perf_counter() - clock)
        cold = EncoderCache(storage, settings, memory=MemoryLRU())  # another worker: the bucket
        clock = time.perf_counter()
        cold.get_or_encode(key, encode)
        bucket_s.append(time.perf_counter() - clock)
    params = sum(p.numel() for p in model.parameters())
    return {"params_m": round(params / 1e6, 1), "tokens": 256,
            "miss_ms": stats([1000 * s for s in encode_s]),  # encoding, plus storing the entry in the bucket
            "memory_hit_ms": stats([1000 * s for s in memory_s]), "bucket_hit_ms": stats([1000 * s for s in bucket_s])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--briefs", type=int, default=100)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=13)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--t5-rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.prompts > len(PROMPTS):
        raise SystemExit(f"at most {len(PROMPTS)} distinct prompts")
    load_pipeline("tiny", device_setting="cpu")  # a warm worker: the clock starts after the model load
    shape = dict(size=args.size, frames=args.frames, steps=args.steps)
    with tempfile.TemporaryDirectory(prefix="bench-render-cache-") as tmp:
        root = Path(tmp)
        results = {
            "machine": {"python": platform.python_version(), "torch": torch.__version__,
                        "cpus": torch.get_num_threads(), "processor": platform.processor() or platform.machine()},
            "shape": {**shape, "model": "tiny"},
            "repeated_brief": repeated_brief(root, repeats=args.repeats, **shape),
            "encoder_cache_on": encoder_briefs(root, briefs=args.briefs, prompts=args.prompts, cache_on=True,
                                               **shape),
            "encoder_cache_off": encoder_briefs(root, briefs=args.briefs, prompts=args.prompts, cache_on=False,
                                                **shape),
            "t5_large": large_t5(root, rounds=args.t5_rounds),
        }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
