"""The VRAM planner for InfiniteTalk (Wan2.1-I2V-14B + audio): counts checked against the library classes on the
meta device, resolution and guidance effects, `quantization: auto`, published figures, and `videostudio plan`."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from typer.testing import CliRunner

from functions.quantization.gpus import KNOWN_GPUS, GiB
from functions.quantization.infinitetalk import (
    INFINITETALK_QUANTIZATION,
    RESOLUTIONS,
    InfiniteTalkJob,
    choose_quantization,
    count_transformer,
    infinitetalk_spec,
    snap_chunk_frames,
    tile_coverage,
    transformer_activation_bytes,
    vae_decode_bytes,
    vae_encode_bytes,
)
from functions.quantization.methods import METHODS
from functions.quantization.planner import QUALITY_ORDER, estimate_render, plan_render

GB = 10**9  # the published figures are in (decimal) GB
P480 = InfiniteTalkJob()
P720 = InfiniteTalkJob(width=RESOLUTIONS["720p"][0], height=RESOLUTIONS["720p"][1])
WAN_I2V_14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36,
                   out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                   qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280, added_kv_proj_dim=5120)


@pytest.fixture(scope="module")
def spec():
    return infinitetalk_spec()


@pytest.fixture(scope="module")
def wan_on_meta():
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        return WanTransformer3DModel(**WAN_I2V_14B)


# -- counts ---------------------------------------------------------------------------------------------------
def test_transformer_backbone_matches_diffusers_on_meta(spec, wan_on_meta):
    diffusers_params = sum(p.numel() for p in wan_on_meta.parameters())
    backbone = spec.transformer.params - spec.audio_params
    assert backbone == pytest.approx(diffusers_params, rel=1e-3)
    assert backbone == diffusers_params == 16_394_878_784  # the same formula, exactly
    # every Linear of the backbone, by shape, and the same layers quantized under diffusers' names
    ours = [t for t in count_transformer().linears if "audio" not in t.name]
    theirs = [m for m in wan_on_meta.modules() if type(m) is torch.nn.Linear]
    assert Counter((t.in_features, t.out_features, t.bias) for t in ours) == Counter(
        (m.in_features, m.out_features, m.bias is not None) for m in theirs)
    ours_targets = [t for t in spec.transformer.targets if "audio" not in t.name]
    assert len(INFINITETALK_QUANTIZATION.targets(wan_on_meta)) == len(ours_targets) == 40 * 12


def test_audio_modules_and_whole_transformer(spec):
    # per block: q_linear 5120², kv_linear 768 → 10240, proj 5120² (biases), norm_x;
    # AudioProjModel: 46080 (and 73728) → 512 → 512 → 32 × 768, a LayerNorm(768)
    per_block = 2 * (5120 * 5120 + 5120) + 768 * 10240 + 10240 + 2 * 5120
    audio_proj = (46080 * 512 + 512) + (73728 * 512 + 512) + (512 * 512 + 512) + (512 * 24576 + 24576) + 2 * 768
    assert spec.audio_params == 40 * per_block + audio_proj == 2_487_168_000
    assert spec.transformer.params == 18_882_046_784
    assert len(spec.transformer.targets) == 40 * 15  # self 4, cross 6, ffn 2, audio 3; embedders, head, audio_proj kept
    assert spec.transformer.largest_target.out_features == 13824
    bf16 = estimate_render(spec, P480, "bf16")
    assert bf16.weights["transformer"] == 2 * spec.transformer.params
    assert bf16.weights["vae"] == 4 * spec.components["vae"].params  # fp32
    fp8 = estimate_render(spec, P480, "fp8").weights["transformer"]
    nf4 = estimate_render(spec, P480, "nf4").weights["transformer"]
    assert 0.50 < fp8 / bf16.weights["transformer"] < 0.52 and nf4 < 0.28 * bf16.weights["transformer"]


def test_encoders_match_library_classes_on_meta(spec):
    from diffusers import AutoencoderKLWan
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        UMT5Config,
        UMT5EncoderModel,
        Wav2Vec2Config,
        Wav2Vec2Model,
    )

    with torch.device("meta"):
        t5 = UMT5EncoderModel(UMT5Config(
            vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
            tie_word_embeddings=False))
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14,
            image_size=224, projection_dim=1024))
        wav2vec = Wav2Vec2Model(Wav2Vec2Config())  # wav2vec2-base, as chinese-wav2vec2-base's config
        vae = AutoencoderKLWan()                    # diffusers' defaults are Wan2.1's VAE
    for name, module, expected in (("text_encoder", t5, 5_680_910_336), ("image_encoder", clip, 632_076_800),
                                   ("audio_encoder", wav2vec, 94_371_712), ("vae", vae, 126_892_531)):
        assert spec.components[name].params == sum(p.numel() for p in module.parameters()) == expected, name
    # the quantizer's own rule on the real module picks the same T5 layers (wo stays: _keep_in_fp32_modules)
    names = sorted(n for n, _ in INFINITETALK_QUANTIZATION.targets(t5))
    assert names == sorted(t.name for t in spec.components["text_encoder"].targets) and len(names) == 24 * 6
    assert 10.5 < spec.components["text_encoder"].weight_bytes("bf16") / GiB < 10.7  # ≈ 11.4 GB in bf16


# -- activations ------------------------------------------------------------------------------------------------
def test_tokens_frames_and_resolutions(spec):
    assert spec.tokens(81, 448, 896) == 21 * 28 * 56 == 32_928
    assert spec.tokens(81, 704, 1280) == 21 * 44 * 80 == 73_920
    assert spec.tokens(81, 480, 832) == 21 * 30 * 52  # Wan's own 480p size
    assert [snap_chunk_frames(n) for n in (1, 80, 81, 100, 120)] == [1, 81, 81, 101, 121]


@pytest.mark.parametrize("method", METHODS)
def test_720p_needs_more_than_480p(spec, method):
    for offload in ("none", "model"):
        low, high = (estimate_render(spec, job, method, offload=offload).peak_bytes for job in (P480, P720))
        assert high > low
        frames = [estimate_render(spec, InfiniteTalkJob(num_frames=f), method, offload=offload).peak_bytes
                  for f in (21, 41, 81, 121)]
        assert frames == sorted(frames) and frames[0] < frames[-1]


def test_three_guidance_passes_sequential_or_batched(spec):
    batched = InfiniteTalkJob(cfg_batched=True)
    assert P480.passes == batched.passes == 3 and P480.batch == 1 and batched.batch == 3
    assert not P480.cfg_batched  # the reference runs the passes one after another
    assert InfiniteTalkJob(guidance_scale=1.0).passes == 2  # cond and no audio
    tokens = spec.tokens(81, P480.height, P480.width)
    one, three = (transformer_activation_bytes(spec, job, tokens) for job in (P480, batched))
    assert 2.9 * one < three < 3.1 * one
    for method in ("bf16", "fp8", "nf4"):
        assert (estimate_render(spec, batched, method, offload="model").peak_bytes
                > estimate_render(spec, P480, method, offload="model").peak_bytes)
    # int8 on CUDA (LLM.int8's int32 output) grows with the rows a Linear sees
    gap = {job.batch: estimate_render(spec, job, "int8", offload="model").peak_bytes
           - estimate_render(spec, job, "fp8-per-channel", offload="model").peak_bytes for job in (P480, batched)}
    assert gap[3] > 2.5 * gap[1] > 0


def test_reference_attention_map_and_vae_tiling(spec):
    tokens = spec.tokens(81, P480.height, P480.width)
    with_map = transformer_activation_bytes(spec, P480, tokens)
    without = transformer_activation_bytes(spec, InfiniteTalkJob(ref_attention_map=False), tokens)
    assert 1.4 * without < with_map  # the map (every token × the first frame's 1,568, 20 heads at a time) dominates
    for job in (P480, P720):
        assert vae_decode_bytes(spec, job, tiling=True) < vae_decode_bytes(spec, job, tiling=False) / 2
        assert vae_encode_bytes(spec, job, tiling=True) < vae_encode_bytes(spec, job, tiling=False) / 2
        assert tile_coverage(job.height, job.width) > 1  # tiles overlap
    phases = estimate_render(spec, P480, "bf16", offload="model").phases
    assert set(phases) == {"audio_encode", "text_encode", "image_encode", "vae_encode", "denoise", "vae_decode"}
    assert max(phases, key=phases.get) == "denoise"


# -- quantization: auto (INFINITETALK-009) -------------------------------------------------------------------------
def test_auto_picks_by_the_cards_memory(spec):
    h100 = KNOWN_GPUS["H100"]
    roomy = choose_quantization(P480, free_bytes=h100.memory_bytes, capability=h100.capability)
    assert roomy.method == "bf16" and not roomy.offload
    l4 = KNOWN_GPUS["L4"]
    tight = choose_quantization(P480, free_bytes=l4.memory_bytes, capability=l4.capability)
    # fp8 (17.9 GiB of transformer) + 7 GiB of activations does not fit 22.5 GiB even with offload: nf4 does
    assert tight.method == "nf4" and tight.offload and tight.estimated_peak_bytes < 21.5 * GiB
    plan = plan_render(spec, P480, l4)
    assert plan.recommended.method == tight.method
    better = QUALITY_ORDER[:QUALITY_ORDER.index(tight.method)]
    assert all(row.best_fit(l4.memory_bytes) is None for row in plan.rows if row.method in better)
    a100 = KNOWN_GPUS["A100-40GB"]
    assert choose_quantization(P480, free_bytes=a100.memory_bytes, capability=a100.capability).method == "int8"
    hopeless = choose_quantization(P720, free_bytes=16 * GiB, capability=(8, 9))
    assert hopeless.offload and "no method is estimated to fit" in hopeless.reason


# -- published figures ------------------------------------------------------------------------------------------------
def _peak(spec, job, method, offload):
    return estimate_render(spec, job, method, offload=offload)


def test_the_seed_reference_table(spec):
    """The product roadmap's claims, as the planner sees them (480p, 81 frames, sequential guidance)."""
    a100_80, a100_40 = KNOWN_GPUS["A100-80GB"], KNOWN_GPUS["A100-40GB"]
    # "FP16 on an A100 80 GB": bf16 with every model resident fits 80 GB, and not 40 GB even with offload
    assert _peak(spec, P480, "bf16", "none").fits(a100_80.memory_bytes)
    assert not _peak(spec, P480, "bf16", "model").fits(a100_40.memory_bytes)
    # "about 45 GB at FP8": the planner says 36.8 GB resident (25.1 GiB with offload): within 35–55 GB, under 45
    fp8 = _peak(spec, P480, "fp8", "none").peak_bytes
    assert 35 * GB < fp8 < 45 * GB
    # "A10G/L4 24 GB made usable with FP8": does NOT hold under the planner; fp8 with model offload needs
    # ~25 GiB (+1 reserve). nf4 with offload fits; so would layer streaming, which the planner does not model.
    for card in ("L4", "A10G"):
        memory = KNOWN_GPUS[card].memory_bytes
        assert not _peak(spec, P480, "fp8", "model").fits(memory)
        assert _peak(spec, P480, "nf4", "model").fits(memory)


def test_multitalks_published_figures(spec):
    """MultiTalk (the same Wan I2V backbone and audio modules), README 'Computational Efficiency', one A100:
    480p 35 s/step at 48 GB, 720p 115 s/step at 66 GB; int8 (quanto) 30 / 51 GB; num_persistent_param_in_dit=0
    13 / 36 GB. Its script keeps CLIP and the VAE on the GPU and moves T5 off before denoising."""
    def denoise(job, method):
        e = _peak(spec, job, method, "model")
        activations = e.phases["denoise"] - e.weights["transformer"]
        if method == "int8":  # quanto's int8 is weight-only: no LLM.int8 output buffer
            activations = _peak(spec, job, "fp8-per-channel", "model").phases["denoise"] - \
                _peak(spec, job, "fp8-per-channel", "model").weights["transformer"]
        return e.weights["transformer"], activations, e.weights["image_encoder"] + e.weights["vae"]

    for job, published_bf16, published_int8, published_streamed in ((P480, 48, 30, 13), (P720, 66, 51, 36)):
        weights, activations, others = denoise(job, "bf16")
        assert (weights + activations + others) / GB == pytest.approx(published_bf16, rel=0.15)
        weights, activations, others = denoise(job, "int8")
        assert (weights + activations + others) / GB == pytest.approx(published_int8, rel=0.15)
        # streamed weights: the planner's activations plus CLIP and the VAE are a lower bound (buffers not modelled)
        assert 0.6 * published_streamed < (activations + others) / GB < published_streamed


# -- videostudio plan --backend infinitetalk ---------------------------------------------------------------------------
def test_plan_cli_for_infinitetalk():
    from triggers.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["plan", "--backend", "infinitetalk", "--gpu", "L4"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for method in METHODS:
        assert method in result.output
    assert "896×448 (480p)" in result.output and "32,928 tokens" in result.output and "nf4 ★" in result.output
    assert "3 guidance passes one after another" in result.output and "recommended" in result.output

    big = runner.invoke(app, ["plan", "--backend", "infinitetalk", "--gpu", "H100", "--resolution", "720p",
                              "--frames", "40", "--method", "bf16", "--cfg-batched"], env={"COLUMNS": "200"})
    assert big.exit_code == 0, big.output
    assert "1280×704 (720p)" in big.output and "41-frame" in big.output and "in one batch" in big.output
    assert "nf4" not in big.output

    mochi = runner.invoke(app, ["plan", "--gpu", "L4"], env={"COLUMNS": "200"})
    same = runner.invoke(app, ["plan", "--gpu", "L4", "--backend", "mochi-lora"], env={"COLUMNS": "200"})
    assert mochi.exit_code == same.exit_code == 0 and mochi.output == same.output and "181 frames" in mochi.output

    for args, code in ((["--resolution", "1080p"], "invalid_resolution"), (["--job", "train"], "unsupported_job")):
        bad = runner.invoke(app, ["plan", "--backend", "infinitetalk", "--gpu", "L4", *args])
        assert bad.exit_code == 2 and code in bad.output
    other = runner.invoke(app, ["plan", "--backend", "wav2lip", "--gpu", "L4"])
    assert other.exit_code == 2 and "unknown_backend" in other.output
