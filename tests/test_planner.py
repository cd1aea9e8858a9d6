"""The VRAM planner: configs only (meta device), monotone estimates, a fitting pick per GPU, the CLI."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from functions.models.mochi import build_tiny_pipeline, resolve_quantization
from functions.models.mochi_configs import MOCHI_1_PREVIEW, ModelConfigs, model_configs
from functions.models.mochi_spec import (
    TEXT_ENCODER_METHOD,
    model_spec,
    quantize_module,
    quantize_pipeline,
    vae_decode_bytes,
)
from functions.quantization.gpus import KNOWN_GPUS, GiB, parse_gpu
from functions.quantization.jobs import RenderJob, TrainJob
from functions.quantization.methods import METHODS
from functions.quantization.planner import QUALITY_ORDER, choose_for_device, estimate_render, estimate_train, plan_render
from functions.quantization.targets import storage_bytes
from functions.presets import PRESETS, snap_frames
from schemas.errors import VideostudioError

LISTED_GPUS = ("L4", "A10G", "A100-40GB", "A100-80GB", "H100")
CPU_METHODS = ("bf16", "fp8", "fp8-per-channel", "fp8-static", "int8", "nf4")
BALANCED = RenderJob(num_frames=snap_frames(round(PRESETS["balanced"].duration_s * 30)))


@pytest.fixture(scope="module")
def mochi():
    return model_spec(model_configs(MOCHI_1_PREVIEW))


def test_real_mochi_is_counted_from_its_config_without_weights(mochi):
    assert 9.9e9 < mochi.transformer.params < 10.1e9  # Mochi 1: 10 B parameters
    assert 4.7e9 < mochi.text_encoder.params < 4.8e9  # T5 v1.1 XXL encoder
    assert mochi.hidden == 3072 and mochi.num_layers == 48 and BALANCED.num_frames == 181
    bf16 = estimate_render(mochi, BALANCED, "bf16")
    assert bf16.weights["transformer"] == pytest.approx(2 * mochi.transformer.params, rel=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_estimates_grow_with_frames_and_resolution(mochi, method):
    for offload in ("none", "model"):
        by_frames = [estimate_render(mochi, RenderJob(num_frames=f), method, offload=offload).peak_bytes
                     for f in (7, 31, 61, 91, 163, 181, 241)]
        assert by_frames == sorted(by_frames) and by_frames[0] < by_frames[-1]
        by_size = [estimate_render(mochi, RenderJob(width=w, height=h), method, offload=offload).peak_bytes
                   for w, h in ((256, 144), (480, 272), (640, 368), (848, 480), (1280, 720))]
        assert by_size == sorted(by_size) and by_size[0] < by_size[-1]
    train = [estimate_train(mochi, TrainJob(clip_frames=f), method).peak_bytes for f in (7, 13, 25, 49)]
    assert train == sorted(train) and train[0] < train[-1]


def test_offload_tiling_and_quantization_lower_the_peak(mochi):
    resident = estimate_render(mochi, BALANCED, "bf16", offload="none")
    offloaded = estimate_render(mochi, BALANCED, "bf16", offload="model")
    assert offloaded.peak_bytes < resident.peak_bytes
    assert vae_decode_bytes(mochi, BALANCED, tiling=True) < vae_decode_bytes(mochi, BALANCED, tiling=False) / 3
    peaks = {m: estimate_render(mochi, BALANCED, m, offload="model").peak_bytes for m in ("bf16", "fp8", "nf4")}
    assert peaks["nf4"] < peaks["fp8"] < peaks["bf16"]


@pytest.mark.parametrize("gpu", LISTED_GPUS)
def test_balanced_real_mochi_gets_a_method_that_fits_or_a_clear_no(mochi, gpu):
    spec = KNOWN_GPUS[gpu]
    plan = plan_render(mochi, BALANCED, spec)
    assert len(plan.rows) == len(METHODS)
    if plan.recommended is None:
        assert plan.reason.startswith("no method fits")
        assert all(row.best_fit(spec.memory_bytes) is None for row in plan.rows)
        return
    estimate = plan.recommended_estimate
    assert estimate.fits(spec.memory_bytes) and plan.recommended.note is None
    better = QUALITY_ORDER[:QUALITY_ORDER.index(plan.recommended.method)]
    assert all(row.best_fit(spec.memory_bytes) is None for row in plan.rows if row.method in better)


def test_recommendations_on_known_gpus(mochi):
    picks = {g: plan_render(mochi, BALANCED, KNOWN_GPUS[g]).recommended for g in LISTED_GPUS}
    assert picks["H100"].method == picks["A100-80GB"].method == "bf16"
    assert picks["L4"] is not None and picks["L4"].method != "bf16"  # 10 B bf16 weights + activations > 22.5 GiB
    tiny_gpu = plan_render(mochi, BALANCED, parse_gpu("4"))
    assert tiny_gpu.recommended is None and "no method fits" in tiny_gpu.reason


def test_fp8_dynamic_needs_compute_capability_8_9(mochi):
    for gpu, allowed in (("L4", True), ("H100", True), ("A10G", False), ("A100-80GB", False)):
        row = next(r for r in plan_render(mochi, BALANCED, KNOWN_GPUS[gpu]).rows if r.method == "fp8-dynamic")
        assert (row.note is None) == allowed, gpu


def test_parse_gpu():
    assert parse_gpu("l4").name == "L4" and parse_gpu("A100").name == "A100-40GB"
    assert parse_gpu("24").memory_bytes == 24 * GiB and parse_gpu("40GiB").memory_bytes == 40 * GiB
    with pytest.raises(VideostudioError) as info:
        parse_gpu("Z9")
    assert info.value.code == "unknown_gpu"


def test_auto_on_a_gpu_follows_the_free_memory(mochi):
    roomy = choose_for_device(mochi, BALANCED, free_bytes=79 * GiB, capability=(9, 0))
    assert roomy.method == "bf16" and not roomy.offload
    tight = choose_for_device(mochi, BALANCED, free_bytes=20 * GiB, capability=(8, 6))
    assert tight.method not in ("bf16", "fp8-dynamic") and tight.estimated_peak_bytes < 19 * GiB
    hopeless = choose_for_device(mochi, BALANCED, free_bytes=2 * GiB, capability=(8, 9))
    assert hopeless.offload and "no method is estimated to fit" in hopeless.reason


def test_auto_on_cpu_resolves_to_float32_and_named_methods_are_checked():
    assert resolve_quantization("tiny", "auto", "cpu").method == "fp32"
    assert resolve_quantization("tiny", "nf4", "cpu").method == "nf4"
    with pytest.raises(VideostudioError) as info:
        resolve_quantization("tiny", "fp8-dynamic", "cpu")
    assert info.value.code == "quantization_unsupported"


# -- the weight estimate against measured bytes (bench/quantization.py does it at real widths) ------
def small_configs() -> ModelConfigs:
    transformer = dict(num_layers=2, num_attention_heads=4, attention_head_dim=64, pooled_projection_dim=256,
                       text_embed_dim=512, time_embed_dim=64, max_sequence_length=16)
    return ModelConfigs("small", transformer, dict(vocab_size=64, d_model=256, d_kv=32, d_ff=512, num_layers=2,
                                                   num_heads=8), {}, 16)


@pytest.mark.parametrize("method", CPU_METHODS)
def test_weight_estimate_within_5_percent_of_measured(method):
    from diffusers import MochiTransformer3DModel

    configs = small_configs()
    spec = model_spec(configs)
    torch.manual_seed(0)
    model = MochiTransformer3DModel(**configs.transformer).eval()
    calibrate = None
    if method == "fp8-static":
        g = torch.Generator().manual_seed(0)
        x = dict(hidden_states=torch.randn(1, 12, 2, 8, 8, generator=g).to(torch.bfloat16),
                 encoder_hidden_states=torch.randn(1, 16, 512, generator=g).to(torch.bfloat16),
                 timestep=torch.tensor([500.0]), encoder_attention_mask=torch.ones(1, 16, dtype=torch.bool))
        calibrate = lambda: model(**x)  # noqa: E731
    quantize_module(model, method, calibrate=calibrate)
    estimate = spec.transformer.weight_bytes(method, int8_backend="torchao")
    assert estimate == pytest.approx(storage_bytes(model), rel=0.05)


@pytest.mark.parametrize("method", ["fp8", "int8", "nf4"])
def test_tiny_pipeline_weight_estimate_matches(method):
    spec = model_spec(model_configs("tiny"))
    pipe = build_tiny_pipeline()
    result = quantize_pipeline(pipe, method)
    assert spec.transformer.weight_bytes(method, int8_backend="torchao") == pytest.approx(
        result.transformer.weight_bytes, rel=0.05)
    assert spec.text_encoder.weight_bytes(TEXT_ENCODER_METHOD[method], int8_backend="torchao") == pytest.approx(
        result.text_encoder.weight_bytes, rel=0.05)


# -- videostudio plan ---------------------------------------------------------------------------------------
def test_plan_cli_prints_the_table_and_the_recommendation():
    from triggers.cli import app

    result = CliRunner().invoke(app, ["plan", "--gpu", "L4", "--preset", "balanced"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for method in METHODS:
        assert method in result.output
    assert "recommended" in result.output and "181 frames" in result.output and "L4" in result.output

    one = CliRunner().invoke(app, ["plan", "--gpu", "8", "--method", "bf16", "--preset", "fast"],
                             env={"COLUMNS": "200"})
    assert one.exit_code == 0 and "none fits" in one.output and "nf4" not in one.output

    tiny = CliRunner().invoke(app, ["plan", "--gpu", "A10G", "--model", "tiny", "--width", "64", "--height", "48",
                                    "--frames", "13"], env={"COLUMNS": "200"})
    assert tiny.exit_code == 0 and "bf16 ★" in tiny.output

    bad = CliRunner().invoke(app, ["plan", "--gpu", "Z9"])
    assert bad.exit_code == 2 and "unknown_gpu" in bad.output
