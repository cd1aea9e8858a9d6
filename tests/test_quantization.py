"""Quantization methods on CPU: bytes against theory, error bounds, shapes and dtypes, and renders.

A small Mochi transformer (real structure, reduced widths, random weights) stands in for the real
one; bench/quantization.py measures the same things at Mochi's real widths. Methods that need CUDA
are skipped only where CUDA is absent, with the reason in the skip message.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import TINY_BRIEF
from functions.models.mochi import build_tiny_pipeline, quiet_library_logs
from functions.models.mochi_spec import quantization_targets, quantize_module, quantize_pipeline
from functions.quantization.layers import FP8_MAX, Fp8PerChannelLinear, Fp8StaticLinear, fp8_per_channel, fp8_per_tensor
from functions.quantization.targets import storage_bytes
from schemas.errors import VideostudioError

CPU_METHODS = ("bf16", "fp8", "fp8-per-channel", "fp8-static", "int8", "nf4")
HAS_CUDA = torch.cuda.is_available()
HAS_FP8_GPU = HAS_CUDA and torch.cuda.get_device_capability() >= (8, 9)
NO_CUDA = "needs CUDA: no CUDA device here (bitsandbytes/torchao GPU kernels)"
NO_FP8_GPU = "needs a CUDA GPU with compute capability ≥ 8.9 (fp8 tensor cores); none here"

# Theory, per quantized Linear, as a fraction of its bf16 bytes (weights of 256..1024 inputs):
# fp8/int8 store 1 byte per weight (0.5) plus a scale per row; nf4 4 bits (0.25) plus an 8-bit
# absmax per 64 weights (~0.008) and per-layer code tables. Tolerances cover the per-row scales.
THEORY = {"fp8": (0.5, 0.52), "fp8-per-channel": (0.5, 0.52), "fp8-static": (0.5, 0.52), "int8": (0.5, 0.52),
          "nf4": (0.25, 0.30), "bf16": (1.0, 1.0)}
# Relative output error against bf16 on the same inputs (random weights; bench numbers at real widths
# are similar). This model measures fp8 0.8 %, fp8-per-channel 0.8 %, fp8-static 1.1 %, int8 0.4 %,
# nf4 2.5 %; the bounds leave 2-4× headroom (fp8-per-channel: the 3 % target).
ERROR_BOUND = {"bf16": 0.0, "fp8": 0.03, "fp8-per-channel": 0.03, "fp8-static": 0.03, "int8": 0.01, "nf4": 0.05}


def small_mochi():
    from diffusers import MochiTransformer3DModel

    torch.manual_seed(0)
    model = MochiTransformer3DModel(num_layers=1, num_attention_heads=4, attention_head_dim=64,
                                    pooled_projection_dim=256, text_embed_dim=512, time_embed_dim=64,
                                    max_sequence_length=16).eval()
    return model.to(torch.bfloat16)


@pytest.fixture(scope="module")
def base():
    quiet_library_logs()
    return small_mochi()


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 12, 2, 8, 8, generator=g).to(torch.bfloat16),
                encoder_hidden_states=torch.randn(2, 16, 512, generator=g).to(torch.bfloat16),
                timestep=torch.tensor([250.0, 750.0]), encoder_attention_mask=torch.ones(2, 16, dtype=torch.bool),
                return_dict=False)


def run(model, seed=1):
    with torch.inference_mode():
        return model(**batch(seed))[0]


@pytest.fixture(scope="module")
def quantized(base):
    out = {}
    for method in CPU_METHODS:
        model = copy.deepcopy(base)
        calibrate = (lambda m=model: [run(m, s) for s in (10, 11, 12)]) if method == "fp8-static" else None
        report = quantize_module(model, method, calibrate=calibrate)
        out[method] = (model, report)
    return out


def target_bytes(model, names):
    return sum(storage_bytes(model.get_submodule(n)) for n in names)


@pytest.mark.parametrize("method", CPU_METHODS)
def test_weight_bytes_match_theory(base, quantized, method):
    model, report = quantized[method]
    names = [n for n, _ in quantization_targets(base)]
    low, high = THEORY[method]
    ratio = target_bytes(model, names) / target_bytes(base, names)
    assert low <= ratio <= high, f"{method}: quantized linears are {ratio:.3f} of bf16, theory {low}..{high}"
    assert report.weight_bytes == storage_bytes(model) and report.bf16_weight_bytes == storage_bytes(base)
    assert report.layers == (0 if method == "bf16" else len(names))


@pytest.mark.parametrize("method", CPU_METHODS)
def test_error_shape_and_dtype(base, quantized, method):
    reference = run(base).float()
    output = run(quantized[method][0])
    assert output.shape == reference.shape and output.dtype == torch.bfloat16
    error = float((output.float() - reference).norm() / reference.norm())
    assert error <= ERROR_BOUND[method], f"{method}: relative error {error:.4f} > {ERROR_BOUND[method]}"
    if method != "bf16":
        assert error > 0  # it really quantized


def test_norms_embeddings_and_listed_layers_are_left_alone(base):
    model = copy.deepcopy(base)
    quantize_module(model, "fp8-per-channel", skip=[r"attn1\.to_out"])
    assert type(model.transformer_blocks[0].attn1.to_out[0]) is nn.Linear
    assert model.transformer_blocks[0].attn1.to_out[0].weight.dtype == torch.bfloat16
    assert type(model.time_embed.timestep_embedder.linear_1) is nn.Linear  # embedding
    assert type(model.proj_out) is nn.Linear and type(model.norm_out.linear) is nn.Linear
    assert model.patch_embed.proj.weight.dtype == torch.bfloat16
    assert model.transformer_blocks[0].attn1.norm_q.weight.dtype == torch.bfloat16
    assert isinstance(model.transformer_blocks[0].attn1.to_q, Fp8PerChannelLinear)
    assert isinstance(model.transformer_blocks[0].norm1.linear, Fp8PerChannelLinear)  # adaLN modulation: a Linear


def test_t5_wo_is_left_alone_so_its_input_is_not_cast_to_fp8():
    pipe = build_tiny_pipeline()
    quantize_pipeline(pipe, "fp8")
    t5 = pipe.text_encoder
    ff = t5.encoder.block[0].layer[-1].DenseReluDense
    assert ff.wo.weight.dtype == torch.bfloat16 and ff.wi.weight.dtype == torch.float8_e4m3fn
    assert t5.shared.weight.dtype == torch.bfloat16  # embedding


def test_per_channel_scales_beat_one_scale_when_row_magnitudes_differ():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(512, 512, generator=g) * 0.02 * torch.logspace(0, -8, 512).unsqueeze(1)
    x = torch.randn(32, 512, generator=g)
    ref = x @ w.t()

    def p90_row_error(deq):
        return float(((x @ deq.t() - ref).norm(dim=0) / ref.norm(dim=0)).quantile(0.9))

    q_c, s_c = fp8_per_channel(w)
    q_t, s_t = fp8_per_tensor(w)
    channel = p90_row_error(q_c.float() * s_c)
    tensor = p90_row_error(q_t.float() * s_t)
    plain = p90_row_error(w.to(torch.float8_e4m3fn).float())
    assert channel < 0.04
    assert tensor > 3 * channel and plain > 10 * channel


def test_fp8_static_stores_calibrated_activation_scales_as_buffers(base):
    model = copy.deepcopy(base)
    seen = {}
    targets = dict(quantization_targets(model))
    hooks = [lin.register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, max(seen.get(n, 0.0),
                                                                                     float(a[0].abs().amax()))))
             for n, lin in targets.items()]
    run(model, 10)
    for h in hooks:
        h.remove()
    quantize_module(model, "fp8-static", calibrate=lambda: run(model, 10))
    layer = model.transformer_blocks[0].attn1.to_q
    assert isinstance(layer, Fp8StaticLinear)
    name = "transformer_blocks.0.attn1.to_q"
    assert float(layer.input_scale) == pytest.approx(seen[name] / FP8_MAX, rel=1e-6)
    state = model.state_dict()
    assert f"{name}.input_scale" in state and f"{name}.weight_scale" in state
    assert state[f"{name}.weight"].dtype == torch.float8_e4m3fn


def test_fp8_static_without_calibration_is_refused(base):
    with pytest.raises(VideostudioError) as info:
        quantize_module(copy.deepcopy(base), "fp8-static")
    assert info.value.code == "quantization_unsupported"


@pytest.mark.skipif(HAS_FP8_GPU, reason="this machine can run fp8-dynamic")
def test_fp8_dynamic_is_refused_clearly_without_an_fp8_gpu(base):
    with pytest.raises(VideostudioError) as info:
        quantize_module(copy.deepcopy(base), "fp8-dynamic")
    assert info.value.code == "quantization_unsupported"
    assert "compute capability ≥ 8.9" in info.value.message


def test_int8_bitsandbytes_backend_runs_here_too(base):
    """The CUDA int8 path (bitsandbytes Linear8bitLt), exercised on the CPU."""
    model = copy.deepcopy(base)
    report = quantize_module(model, "int8", int8_backend="bitsandbytes")
    assert "bitsandbytes" in report.backend
    reference = run(base).float()
    error = float((run(model).float() - reference).norm() / reference.norm())
    assert 0 < error < ERROR_BOUND["int8"]


@pytest.mark.skipif(not HAS_FP8_GPU, reason=NO_FP8_GPU)
def test_fp8_dynamic_on_an_fp8_gpu(base):  # pragma: no cover - needs CUDA
    model = copy.deepcopy(base).cuda()
    report = quantize_module(model, "fp8-dynamic", device="cuda")
    reference = run(base.cuda()).float()
    error = float((run(model).float() - reference).norm() / reference.norm())
    assert report.weight_bytes < 0.7 * report.bf16_weight_bytes and error < 0.05


@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
@pytest.mark.parametrize("method", ["int8", "nf4", "fp8-per-channel"])
def test_methods_on_cuda(base, method):  # pragma: no cover - needs CUDA
    model = copy.deepcopy(base).cuda()
    quantize_module(model, method, device="cuda")
    with torch.inference_mode():
        output = model(**{k: v.cuda() if torch.is_tensor(v) else v for k, v in batch(1).items()})[0]
    reference = run(base).float()
    error = float((output.float().cpu() - reference).norm() / reference.norm())
    assert error <= ERROR_BOUND[method]


@pytest.mark.skipif(not HAS_FP8_GPU, reason=NO_FP8_GPU)
def test_fp8_static_fused_matmul_matches_the_dequantised_path():  # pragma: no cover - needs CUDA
    linear = nn.Linear(256, 512).to(torch.bfloat16).cuda()
    layer = Fp8StaticLinear.from_linear(linear, input_amax=4.0)
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    fused = layer(x)
    assert layer._fused is True
    layer._fused = False
    assert float((fused.float() - layer(x).float()).norm() / layer(x).float().norm()) < 0.01


def test_pipeline_cache_is_keyed_by_method():
    from functions.models.mochi import load_pipeline

    int8 = load_pipeline("tiny", device_setting="cpu", method="int8")
    assert load_pipeline("tiny", device_setting="cpu", method="int8") is int8
    nf4 = load_pipeline("tiny", device_setting="cpu", method="nf4")
    plain = load_pipeline("tiny", device_setting="cpu")
    assert len({id(int8), id(nf4), id(plain)}) == 3
    assert int8.quantization["method"] == "int8" and nf4.quantization["method"] == "nf4"
    assert plain.quantization["method"] == "fp32" and plain.dtype == torch.float32


# -- the tiny pipeline renders with every CPU-capable method ---------------------------------------
def render_with(tmp_path, method: str):
    from test_render import render_in

    brief = TINY_BRIEF.format(steps=2, seed=3) + f"quantization: {method}\n"
    return render_in(tmp_path / method, brief)


@pytest.mark.parametrize("method", CPU_METHODS)
def test_tiny_pipeline_renders_with_each_cpu_method(tmp_path, method):
    manifest, storage = render_with(tmp_path, method)
    assert manifest.status.value == "succeeded", manifest.error
    metrics = manifest.stages["render"].metrics
    q = metrics["quantization"]
    assert q["requested"] == method and q["method"] == method and q["reason"]
    assert q["weight_bytes"] > 0 and metrics["dtype"] == "bfloat16"
    if method != "bf16":
        assert q["weight_bytes"] < q["bf16_weight_bytes"] * (0.8 if method != "nf4" else 1.1)
    assert storage.stat(manifest.outputs["video"]).size > 0


def test_auto_on_cpu_is_the_unquantised_float32_pipeline_and_says_why(tmp_path):
    manifest, _ = render_with(tmp_path, "auto")
    assert manifest.status.value == "succeeded"
    q = manifest.stages["render"].metrics["quantization"]
    assert q["requested"] == "auto" and q["method"] == "fp32" and "CPU" in q["reason"]
    assert manifest.stages["render"].metrics["dtype"] == "float32"


@pytest.mark.skipif(HAS_FP8_GPU, reason="this machine can run fp8-dynamic")
def test_render_with_fp8_dynamic_fails_clearly_on_cpu(tmp_path):
    manifest, _ = render_with(tmp_path, "fp8-dynamic")
    assert manifest.status.value == "failed"
    assert manifest.error.code == "quantization_unsupported" and "8.9" in manifest.error.message
    assert manifest.stages["render"].attempts == 1  # a user error: not retried
