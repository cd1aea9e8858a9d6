"""InfiniteTalk under diffusers' context parallelism (functions/infinitetalk_parallel.py and the model's `_cp_plan`).

On CPU: Ulysses attention over gloo with 2 processes equals one process; the shard-to-frame logic of the audio
attention is checked on simulated shards in one process. Ring attention needs a CUDA attention backend (see the
skip reason) and runs only where 2 GPUs are visible."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

from functions import infinitetalk_parallel as cp
from functions.models.infinitetalk import (
    InfiniteTalkAudioAttention,
    InfiniteTalkTransformer,
    tiny_infinitetalk_config,
    video_frames_for,
)

# 3 latent frames of 2×3 tokens = 18 tokens: 2 ranks get 9 each, so the split falls inside frame 1.
LATENT = (3, 4, 6)


def tiny_model(seed: int = 0) -> InfiniteTalkTransformer:
    torch.manual_seed(seed)
    model = InfiniteTalkTransformer(**tiny_infinitetalk_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def tiny_inputs(seed: int = 1, batch: int = 2) -> dict[str, torch.Tensor]:
    cfg = tiny_infinitetalk_config()
    g = torch.Generator().manual_seed(seed)
    frames, height, width = LATENT
    return dict(
        hidden_states=torch.randn(batch, cfg["in_channels"], frames, height, width, generator=g),
        timestep=torch.tensor([700.0, 30.0][:batch]),
        encoder_hidden_states=torch.randn(batch, 512, cfg["text_dim"], generator=g),
        encoder_hidden_states_image=torch.randn(batch, 5, cfg["image_dim"], generator=g),
        audio_embeds=torch.randn(batch, video_frames_for(frames), cfg["audio_window"], cfg["audio_layers"],
                                 cfg["audio_dim"], generator=g),
    )


# --- one process -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes", [[12, 12], [8, 8, 8], [5, 7, 1, 11], [6, 6, 6, 6], [1] * 24])
def test_audio_attention_on_shards_equals_the_whole_sequence(sizes: list[int]) -> None:
    """Shards that start and end inside frames (or are smaller than one) give the unsharded rows."""
    torch.manual_seed(0)
    attn = InfiniteTalkAudioAttention(dim=16, context_dim=10, heads=2).eval()
    frames, per_frame = 4, 6
    hidden = torch.randn(2, frames * per_frame, 16)
    context = torch.randn(2, frames, 3, 10)
    with torch.no_grad():
        whole = attn(hidden, context)
        assert torch.equal(attn(hidden, context, token_offset=0, tokens_per_frame=per_frame), whole)
        parts, offset = [], 0
        for size in sizes:
            parts.append(attn(hidden[:, offset:offset + size], context, token_offset=offset,
                              tokens_per_frame=per_frame))
            offset += size
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-6, atol=1e-6)


def test_audio_attention_refuses_a_shard_past_the_audio() -> None:
    attn = InfiniteTalkAudioAttention(dim=16, context_dim=10, heads=2)
    with pytest.raises(ValueError, match="do not fit audio"):
        attn(torch.zeros(1, 7, 16), torch.zeros(1, 4, 3, 10), token_offset=18, tokens_per_frame=6)
    with pytest.raises(ValueError, match="do not split over audio"):
        attn(torch.zeros(1, 7, 16), torch.zeros(1, 4, 3, 10))


def test_cp_plan_is_wans_plus_token_positions() -> None:
    plan, wan = InfiniteTalkTransformer._cp_plan, WanTransformer3DModel._cp_plan
    for key in ("rope", "blocks.0", "proj_out"):
        assert plan[key] == wan[key], key
    assert "" not in plan  # Wan2.2's per-token timestep: InfiniteTalk takes one timestep per sample
    assert plan["token_positions"] == {0: ContextParallelInput(split_dim=1, expected_dims=2, split_output=True)}
    assert isinstance(plan["proj_out"], ContextParallelOutput)
    # no parameters of its own: checkpoints and key maps are unchanged
    model = tiny_model()
    assert not any(name.startswith("token_positions") for name in model.state_dict())
    with torch.no_grad():
        assert torch.equal(model.token_positions(torch.zeros(2, 18, 16)), torch.arange(18)[None])


def test_shape_checks() -> None:
    config = tiny_model().config  # 2 heads; LATENT → 18 tokens
    cp.check_context_parallel(config, world_size=2, ulysses_degree=2, latent_shape=LATENT)
    with pytest.raises(ValueError, match="heads"):
        cp.check_context_parallel(config, world_size=4, ulysses_degree=4)
    with pytest.raises(ValueError, match="3 tokens"):
        cp.check_context_parallel(config, world_size=2, ulysses_degree=2, latent_shape=(3, 2, 2))
    with pytest.raises(ValueError, match="must equal the world size"):
        cp.check_context_parallel(config, world_size=4, ulysses_degree=2)
    with pytest.raises(ValueError, match="return_lse"):  # native attention cannot merge ring chunks
        cp.check_context_parallel(config, world_size=2, ring_degree=2, attention_backend="native")
    cp.check_context_parallel(config, world_size=2, ring_degree=2, attention_backend="_native_cudnn")
    assert cp.tokens_for(config, 21, 60, 104) == 21 * 1560  # 480×832
    with pytest.raises(RuntimeError, match="not initialised"):
        cp.enable_context_parallel(tiny_model(), world_size=2, ulysses_degree=2)


def test_pick_gpus() -> None:
    assert cp.pick_gpus(3.0) == 1 and cp.pick_gpus(5.0) == 1  # 1 and 2 chunks
    assert cp.pick_gpus(11.0) == 1  # 4 chunks (81 + 3 × 72 = 297 frames ≈ 11.9 s)
    assert cp.pick_gpus(13.0) == 2  # 5 chunks
    assert cp.pick_gpus(30.0) == 2  # 11 chunks → 3 wanted, rounded down to a power of two
    assert cp.pick_gpus(40.0) == 4  # 14 chunks
    assert cp.pick_gpus(600.0) == 8 and cp.pick_gpus(600.0, max_gpus=4) == 4
    assert cp.pick_gpus(600.0, requested=1) == 1 and cp.pick_gpus(2.0, requested=3) == 3
    with pytest.raises(ValueError):
        cp.pick_gpus(2.0, requested=9)
    with pytest.raises(ValueError):
        cp.pick_gpus(0.0)


# --- processes -------------------------------------------------------------------------------------

def _compare_worker(rank: int, world_size: int, mode: str) -> dict:
    """Each rank: the single-process output first, then the same model under CP; rank 0 returns everything."""
    model, x = tiny_model(), tiny_inputs()
    if mode == "ring":
        model = model.to(device=f"cuda:{rank}", dtype=torch.bfloat16)
        model.set_attention_backend("_native_cudnn")
        x = {k: v.to(device=f"cuda:{rank}", dtype=torch.bfloat16 if v.is_floating_point() else v.dtype)
             for k, v in x.items()}
    with torch.no_grad():
        single = model(**x, return_dict=False)[0]
        single_null = model(**dict(x, audio_embeds=None), return_dict=False)[0]
    cp.enable_context_parallel(model, world_size=world_size, latent_shape=LATENT, **{f"{mode}_degree": world_size})
    seen: list = []
    model.blocks[1].audio_cross_attn.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((tuple(args[0].shape), kwargs["token_offset"])), with_kwargs=True)
    with torch.no_grad():
        parallel = model(**x, return_dict=False)[0]
        parallel_null = model(**dict(x, audio_embeds=None), return_dict=False)[0]
    per_rank: list = [None] * world_size
    dist.all_gather_object(per_rank, (seen, parallel.float().cpu()))
    return dict(single=single.float().cpu(), parallel=parallel.float().cpu(), single_null=single_null.float().cpu(),
                parallel_null=parallel_null.float().cpu(), per_rank=per_rank)


def _check(result: dict, atol: float) -> None:
    torch.testing.assert_close(result["parallel"], result["single"], rtol=atol, atol=atol)
    torch.testing.assert_close(result["parallel_null"], result["single_null"], rtol=atol, atol=atol)
    assert (result["single"] - result["single_null"]).abs().max() > 1e-3  # the audio path is exercised
    # the blocks saw half the tokens each; rank 1's shard starts inside latent frame 1 (tokens 6 … 11)
    assert [seen[0] for seen, _ in result["per_rank"]] == [((2, 9, 16), 0), ((2, 9, 16), 9)]
    for _, out in result["per_rank"]:  # every rank holds the gathered output
        assert torch.equal(out, result["parallel"])


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed without gloo")
def test_ulysses_over_gloo_two_processes_equals_one_process() -> None:
    result = cp.launch(_compare_worker, 2, "ulysses", backend="gloo")
    _check(result, atol=1e-5)


RING_ON_CPU = ("ring attention needs an attention backend that returns the log-sum-exp, all CUDA: on CPU diffusers' "
               "native backend raises 'ValueError: Native attention does not support return_lse=True' "
               "(_native_attention_forward_op) and _native_flash raises NotImplementedError: Could not run "
               "'aten::_scaled_dot_product_flash_attention' with arguments from the 'CPU' backend; needs 2 GPUs")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=RING_ON_CPU)
def test_ring_over_nccl_two_gpus_equals_one_gpu() -> None:  # pragma: no cover - needs 2 GPUs
    result = cp.launch(_compare_worker, 2, "ring", backend="nccl")
    _check(result, atol=3e-2)  # bf16 (cuDNN attention has no fp32 path)
