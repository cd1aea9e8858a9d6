"""InfiniteTalk under the CPU quantization methods (issue 14): the tiny transformer quantized by
INFINITETALK_QUANTIZATION's rules still runs, stays close to float32, and takes an avatar's LoRA; and how a
render picks its method (`quantization:` in the brief; `auto` on a CPU is float32)."""

from __future__ import annotations

import copy

import pytest
import torch

from functions.backends.infinitetalk import TARGET_MODULES
from functions.lora_training import add_lora
from functions.models.infinitetalk_loading import CPU_AUTO, load_models, resolve_quantization
from schemas.brief import InfiniteTalkOptions
from schemas.errors import VideostudioError

TINY = InfiniteTalkOptions(base_model="tiny")
# Relative error of the output against float32 each method may have on the tiny model (measured: bf16 0.007,
# fp8 0.027, fp8-per-channel 0.021, int8 ~0.01, nf4 0.075); the bounds leave room, not slack for a broken method.
BOUNDS = {"bf16": 0.03, "fp8": 0.08, "fp8-per-channel": 0.06, "int8": 0.05, "nf4": 0.2}


def inputs(config, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, config.in_channels, 2, 4, 4, generator=g).to(dtype),
                timestep=torch.tensor([500.0]),
                encoder_hidden_states=torch.randn(1, 512, config.text_dim, generator=g).to(dtype),
                encoder_hidden_states_image=torch.randn(1, 3, config.image_dim, generator=g).to(dtype),
                audio_embeds=torch.randn(1, 5, 5, config.audio_layers, config.audio_dim, generator=g).to(dtype),
                return_dict=False)


@pytest.fixture(scope="module")
def reference():
    transformer = load_models(TINY, device="cpu").components.transformer
    with torch.no_grad():
        return transformer(**inputs(transformer.config))[0]


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory):
    """A LoRA of the avatar kind (every attention, the audio one included), with non-zero weights."""
    transformer = copy.deepcopy(load_models(TINY, device="cpu").components.transformer)
    add_lora(transformer, 4, 4.0, seed=0, target_modules=TARGET_MODULES)
    with torch.no_grad():
        for parameter in transformer.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.05)
    folder = tmp_path_factory.mktemp("lora")
    transformer.save_lora_adapter(str(folder), adapter_name="default", weight_name="lora.safetensors")
    return folder


@pytest.mark.parametrize("method", sorted(BOUNDS))
def test_each_cpu_method_runs_close_to_float32_and_takes_the_lora(method, reference, lora_folder):
    models = load_models(TINY, device="cpu", method=method)
    transformer = models.components.transformer
    assert models.quantization["method"] == method
    if method != "bf16":
        # every attention and feed-forward Linear of both blocks, the audio cross-attention's too
        assert models.quantization["layers"] >= 2 * 3 * 4, models.quantization
    dtype = next(transformer.parameters()).dtype
    x = inputs(transformer.config, torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)
    with torch.no_grad():
        out = transformer(**x)[0].float()
    error = ((out - reference).norm() / reference.norm()).item()
    assert torch.isfinite(out).all() and error < BOUNDS[method], error
    transformer.load_lora_adapter(str(lora_folder), weight_name="lora.safetensors", adapter_name="avatar", prefix=None)
    try:
        with torch.no_grad():
            adapted = transformer(**x)[0].float()
    finally:
        transformer.delete_adapters("avatar")
    assert not torch.allclose(adapted, out)


def test_quantized_models_are_cached_apart_from_the_unquantized_ones():
    assert load_models(TINY, device="cpu", method="int8") is load_models(TINY, device="cpu", method="int8")
    assert load_models(TINY, device="cpu", method="int8") is not load_models(TINY, device="cpu")


def test_how_a_render_picks_its_method_on_a_cpu():
    sizes = dict(height=32, width=32, chunk_frames=81, text_guidance=5.0, audio_guidance=4.0, speech_s=3.0)
    auto = resolve_quantization("auto", "cpu", **sizes)
    assert auto.method == "none" and auto.reason == CPU_AUTO
    assert resolve_quantization("int8", "cpu", **sizes).method == "int8"
    with pytest.raises(VideostudioError) as refused:
        resolve_quantization("fp8-dynamic", "cpu", **sizes)  # needs fp8 tensor cores
    assert refused.value.code == "quantization_unsupported"
