"""Multi-GPU InfiniteTalk renders: diffusers' context parallelism over N local processes (one Modal container).

InfiniteTalk's chunks are sequential (each chunk starts from the previous one's last frames), so more GPUs cannot
render chunks side by side; they split each chunk's denoising instead. Every rank runs the same pipeline with the
same seed and holds the whole transformer; only the transformer's token sequence (21 latent frames × 1560 tokens
at 480p) is split along the sequence, and diffusers' attention dispatcher runs the self-attention as Ulysses
(an all-to-all over heads) or ring attention (an all-gather of K/V) across ranks. The model's `_cp_plan`
(`functions/models/infinitetalk.py`) shards the tokens, the RoPE tables and each token's global index, keeps the
text/image/audio context whole on every rank, and gathers the output, so every rank ends with the full prediction.

API:
* `pick_gpus(duration_s, requested)` — how many GPUs a render gets (the rule is on the function).
* `context_parallel_config(...)` / `check_context_parallel(...)` — the diffusers config, and the shape checks
  diffusers leaves to an `assert` (tokens divisible by the world size) or to a reshape error (heads by the
  Ulysses degree), as `ValueError`s before anything runs.
* `enable_context_parallel(transformer, world_size=..., ulysses_degree=... | ring_degree=...)` — inside a rank.
* `launch(fn, world_size, *args)` — `fn(rank, world_size, *args)` in `world_size` local processes under
  `torch.distributed` (`nccl` on CUDA, `gloo` on CPU); returns rank 0's result. `init_from_env()` is the same
  set-up for processes started by `torchrun`.

What runs where (diffusers 0.42.1, torch 2.14):
* Ulysses (`ulysses_degree`) with the default `native` attention backend runs on CPU over gloo (gloo has
  `all_to_all_single` for CPU tensors): `tests/test_infinitetalk_parallel.py` checks it equals one process.
* Ring (`ring_degree`) needs an attention backend that returns the log-sum-exp to merge the per-chunk results:
  `native` does not (`_native_attention_forward_op` raises "Native attention does not support
  return_lse=True"), and every backend that does is CUDA-only (`_native_flash`: aten's
  `_scaled_dot_product_flash_attention` has no CPU kernel; `_native_cudnn`, `flash`, `sage`). So ring is
  refused here unless the model's attention backend is one of those (`RING_BACKENDS`).
* `ModelMixin.enable_parallelism` places rank r on `torch.device(accelerator, r % torch.accelerator.device_count())`,
  a ZeroDivisionError on a machine without an accelerator; the device is only recorded (CP never reads it), so on
  such a machine `enable_context_parallel` presents one device for the length of that call.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

import torch
import torch.distributed as dist

# pick_gpus: one GPU renders up to CHUNKS_PER_GPU chunks (4 × 72 new frames ≈ 11.5 s of speech at 25 fps); longer
# speech gets one more GPU per CHUNKS_PER_GPU chunks, rounded down to a power of two (the Ulysses degree must divide
# Wan's 40 heads, and 1/2/4/8 also divide the 480p token count), capped at the container's GPUs.
CHUNKS_PER_GPU = 4
MAX_GPUS = 8  # Modal's largest `gpu="H100:N"`
FPS = 25

# Attention backends whose context-parallel path supports ring attention (they return the log-sum-exp); all CUDA.
RING_BACKENDS = frozenset({"flash", "flash_hub", "flash_varlen_hub", "_flash_3_hub", "_flash_3_varlen_hub",
                           "_native_cudnn", "_native_flash", "sage", "sage_hub"})


def pick_gpus(duration_s: float, requested: int | None = None, *, max_gpus: int = MAX_GPUS,
              chunks_per_gpu: int = CHUNKS_PER_GPU, fps: float = FPS, chunk_frames: int = 81,
              motion_frames: int = 9) -> int:
    """GPUs for an InfiniteTalk render of `duration_s` seconds of speech.

    `requested` (the brief's `gpus:`) wins when given (1 … max_gpus). Otherwise: the speech's chunk count
    (`plan_chunks` at `fps`), one GPU per `chunks_per_gpu` chunks (so 1 GPU up to 4 chunks ≈ 11.5 s),
    rounded down to a power of two, at most `max_gpus`.
    """
    from functions.infinitetalk_chunks import plan_chunks

    if max_gpus < 1:
        raise ValueError(f"max_gpus must be ≥ 1, got {max_gpus}")
    if requested is not None:
        if not 1 <= requested <= max_gpus:
            raise ValueError(f"gpus must be 1 … {max_gpus}, got {requested}")
        return requested
    if duration_s <= 0 or not math.isfinite(duration_s):
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    chunks = len(plan_chunks(max(1, math.ceil(duration_s * fps)), chunk_frames=chunk_frames,
                             motion_frames=motion_frames))
    wanted = min(max_gpus, math.ceil(chunks / chunks_per_gpu))
    return 1 << (wanted.bit_length() - 1)


def tokens_for(config: Any, latent_frames: int, latent_height: int, latent_width: int) -> int:
    """Tokens the transformer's blocks see for latents [·, ·, F, H, W] (after its (1, 2, 2) patching)."""
    p_t, p_h, p_w = config.patch_size
    if latent_frames % p_t or latent_height % p_h or latent_width % p_w:
        raise ValueError(f"latents {latent_frames}×{latent_height}×{latent_width} do not patch by {tuple(config.patch_size)}")
    return (latent_frames // p_t) * (latent_height // p_h) * (latent_width // p_w)


def check_context_parallel(config: Any, *, world_size: int, ring_degree: int = 1, ulysses_degree: int = 1,
                           latent_shape: tuple[int, int, int] | None = None, attention_backend: str | None = None
                           ) -> None:
    """Refuse (ValueError) a split diffusers would fail on later, with the reason.

    `config` is the transformer's config; `latent_shape` (F, H, W) the latents it will be called on."""
    if world_size < 2:
        raise ValueError(f"context parallelism needs at least 2 processes, got world_size={world_size}")
    if ring_degree < 1 or ulysses_degree < 1 or ring_degree * ulysses_degree != world_size:
        raise ValueError(f"ring_degree ({ring_degree}) × ulysses_degree ({ulysses_degree}) must equal the world size "
                         f"({world_size})")
    if ring_degree > 1 and ulysses_degree > 1:
        raise ValueError("give ring_degree or ulysses_degree, not both")
    heads = config.num_attention_heads
    if heads % ulysses_degree:
        raise ValueError(f"Ulysses attention splits the {heads} heads over {ulysses_degree} ranks: they must divide")
    if ring_degree > 1:
        backend = attention_backend or _active_backend()
        if backend not in RING_BACKENDS:
            raise ValueError(
                f"ring attention needs an attention backend that returns the log-sum-exp ({sorted(RING_BACKENDS)}, "
                f"all CUDA); the model uses {backend!r} (diffusers' native backend raises 'Native attention does not "
                f"support return_lse=True'). Use ulysses_degree, or set_attention_backend('_native_cudnn') / 'flash'.")
    if latent_shape is not None:
        tokens = tokens_for(config, *latent_shape)
        if tokens % world_size:
            raise ValueError(f"{tokens} tokens (latents {latent_shape[0]}×{latent_shape[1]}×{latent_shape[2]}) do not "
                             f"split evenly over {world_size} ranks")


def _active_backend() -> str:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    backend, _ = _AttentionBackendRegistry.get_active_backend()
    return getattr(backend, "value", str(backend))


def _model_backend(transformer: torch.nn.Module) -> str:
    """The attention backend the transformer's Wan attention processors use (set_attention_backend, or the active one)."""
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            backend = processor._attention_backend
            if backend is not None:
                return getattr(backend, "value", str(backend))
            break
    return _active_backend()


def context_parallel_config(*, world_size: int, ring_degree: int | None = None, ulysses_degree: int | None = None):
    """diffusers' `ContextParallelConfig` for `world_size` ranks: `ulysses_degree` or `ring_degree` (default:
    Ulysses over all ranks)."""
    from diffusers import ContextParallelConfig

    if ring_degree is None and ulysses_degree is None:
        ulysses_degree = world_size
    return ContextParallelConfig(ring_degree=ring_degree, ulysses_degree=ulysses_degree)


@contextmanager
def _a_device_if_none() -> Iterator[None]:
    """`ModelMixin.enable_parallelism` computes `rank % torch.accelerator.device_count()`: 0 on a CPU-only machine."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    with mock.patch.object(torch.accelerator, "device_count", lambda: 1):
        yield


def enable_context_parallel(transformer: torch.nn.Module, *, world_size: int | None = None,
                            ring_degree: int | None = None, ulysses_degree: int | None = None,
                            latent_shape: tuple[int, int, int] | None = None):
    """Shard `transformer` (an `InfiniteTalkTransformer`, already on this rank's device) over the process group.

    Call inside every rank after `init_process_group` (see `launch`), before the first forward. `world_size`
    defaults to the group's; `latent_shape` (F, H, W), when given, is checked to split evenly. Returns the
    `ContextParallelConfig`. Every rank must then call the model with the same inputs; each gets the whole output.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: run inside `launch` (or after `init_from_env`)")
    group_size = dist.get_world_size()
    world_size = group_size if world_size is None else world_size
    if world_size != group_size:
        raise ValueError(f"world_size {world_size} is not the process group's {group_size}")
    cp = context_parallel_config(world_size=world_size, ring_degree=ring_degree, ulysses_degree=ulysses_degree)
    check_context_parallel(transformer.config, world_size=world_size, ring_degree=cp.ring_degree,
                           ulysses_degree=cp.ulysses_degree, latent_shape=latent_shape,
                           attention_backend=_model_backend(transformer))
    with _a_device_if_none():
        transformer.enable_parallelism(config=cp)
    return cp


# --- processes ---------------------------------------------------------------------------------------

def distributed_backend() -> str:
    """`nccl` where CUDA is available, else `gloo`."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group a launcher described in the environment (torchrun: RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); on CUDA, select GPU LOCAL_RANK. Returns (rank, world_size)."""
    backend = backend or distributed_backend()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    return rank, world_size


def _rank_main(rank: int, fn: Callable[..., Any], world_size: int, args: tuple, backend: str, port: int,
               result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    init_from_env(backend)
    try:
        out = fn(rank, world_size, *args)
        if rank == 0:
            torch.save(out, result)
    finally:
        dist.destroy_process_group()


def launch(fn: Callable[..., Any], world_size: int, *args: Any, backend: str | None = None,
           port: int | None = None) -> Any:
    """Run `fn(rank, world_size, *args)` in `world_size` fresh local processes (spawned) that form a process group
    (`backend`: nccl on CUDA, else gloo; rank r uses GPU r), and return rank 0's return value.

    `fn` and `args` must be picklable (`fn` a module-level function); the result goes back through `torch.save`.
    A rank's exception is raised here (`torch.multiprocessing.ProcessRaisedException`, with its traceback). For one
    Modal container with `gpu="H100:N"`: `launch(render_rank, N, ...)` where each rank builds the pipeline on
    cuda:rank, calls `enable_context_parallel` on its transformer, and renders; rank 0's frames are the render.
    """
    import torch.multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be ≥ 1, got {world_size}")
    backend = backend or distributed_backend()
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"{world_size} ranks need {world_size} GPUs, {torch.cuda.device_count()} visible")
    with tempfile.TemporaryDirectory(prefix="infinitetalk-cp-") as tmp:
        result = str(Path(tmp) / "rank0.pt")
        mp.start_processes(_rank_main, args=(fn, world_size, args, backend, port or _free_port(), result),
                           nprocs=world_size, join=True, start_method="spawn")
        return torch.load(result, weights_only=False)
