"""Loading what an InfiniteTalk render or training needs, once per process.

- `tiny` (`InfiniteTalkOptions.base_model`): random tiny versions of every component and a tiny wav2vec2,
  built offline with matching audio sizes (CPU tests; the output is noise).
- real weights: the transformer from the original-format Wan2.1-I2V-14B-480P plus `infinitetalk.safetensors`
  (`infinitetalk_keys.load_infinitetalk_transformer`, strict), the VAE / UMT5 / CLIP from a diffusers-format
  repo or folder (`components`), and chinese-wav2vec2-base. Any of them may be a local path, so a machine with
  no network loads from disk (or a Modal Volume).

Loaded models are cached per (what, device, dtype): a worker or a Modal container that renders many briefs
loads the 14B transformer once (`@modal.enter` calls `load_models` before the first request).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch

from functions.infinitetalk_audio import SpeechEncoder, tiny_speech_encoder
from functions.infinitetalk_pipeline import InfiniteTalkComponents, tiny_infinitetalk_components
from schemas.brief import InfiniteTalkOptions
from schemas.errors import VideostudioError

TINY = "tiny"


@dataclass
class InfiniteTalkModels:
    components: InfiniteTalkComponents
    speech: SpeechEncoder
    random_weights: bool
    dtype: torch.dtype
    quantization: dict[str, Any] | None = None  # what quantizing did (method, backend, layers, weight bytes)


_cache: dict[tuple, InfiniteTalkModels] = {}
_lock = threading.Lock()


def load_models(options: InfiniteTalkOptions, *, device: str, dtype: torch.dtype | None = None,
                method: str = "none") -> InfiniteTalkModels:
    """The models `options` name, on `device` (bf16 on CUDA, fp32 on a CPU unless `dtype` says otherwise).
    `method`: a quantization method (functions/quantization) for the transformer and the text encoder, by
    INFINITETALK_QUANTIZATION's rules; "none" leaves them in `dtype`. Each method is its own cached copy."""
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    key = (options.base_model, options.weights, options.components, options.audio_encoder, device, dtype, method)
    with _lock:
        if key not in _cache:
            models = _tiny(device, dtype) if options.base_model == TINY else _real(options, device, dtype)
            if method != "none":
                models.quantization = _quantize(models.components, method, device)
            _cache[key] = models
        return _cache[key]


def _quantize(components: InfiniteTalkComponents, method: str, device: str) -> dict[str, Any]:
    from functions.quantization.infinitetalk import INFINITETALK_QUANTIZATION as rules

    reports = {}
    for name in ("transformer", "text_encoder"):
        module = getattr(components, name)
        reports[name] = rules.quantize_module(module, rules.method_for(name, method), device=device)
    primary = reports["transformer"]
    return {"method": method, "backend": primary.backend, "layers": primary.layers,
            "weight_bytes": sum(r.weight_bytes for r in reports.values())}


def fresh_transformer(options: InfiniteTalkOptions, *, device: str, dtype: torch.dtype | None = None):
    """A transformer of its own (not the cached one): training adds a LoRA to it, renders must not see that."""
    models = load_models(options, device=device, dtype=dtype)
    if options.base_model == TINY:
        return _tiny(device, models.dtype).components.transformer
    return _real_transformer(options, device, models.dtype)


def _tiny(device: str, dtype: torch.dtype) -> InfiniteTalkModels:
    speech = tiny_speech_encoder(seed=0)
    # The tiny transformer's audio input is the tiny encoder's: every hidden layer of its width.
    components = tiny_infinitetalk_components(seed=0, audio_layers=speech.layers, audio_dim=speech.dim)
    _place(components, device, dtype)
    return InfiniteTalkModels(components=components, speech=speech, random_weights=True, dtype=dtype)


def _place(components: InfiniteTalkComponents, device: str, dtype: torch.dtype, *, transformer: bool = True) -> None:
    """Every model on `device`; cast only where the dtype changes (the VAE stays fp32: it decodes with fewer
    colour bands; the loaders put real weights in their dtype already)."""
    modules = [components.text_encoder, components.image_encoder] + ([components.transformer] if transformer else [])
    for module in modules + [components.vae]:
        parameter = next(module.parameters())
        if module is not components.vae and parameter.dtype != dtype:
            module.to(device=device, dtype=dtype)
        elif parameter.device.type != torch.device(device).type:
            module.to(device)


def _real_transformer(options: InfiniteTalkOptions, device: str, dtype: torch.dtype):
    from functions.models.infinitetalk_keys import load_infinitetalk_transformer

    return load_infinitetalk_transformer(options.base_model, options.weights, dtype=dtype, device=device)


def _real(options: InfiniteTalkOptions, device: str, dtype: torch.dtype) -> InfiniteTalkModels:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, UMT5EncoderModel

    from functions.infinitetalk_pipeline import DEFAULT_SHIFT_480P

    transformer = _real_transformer(options, device, dtype)
    where = options.components
    try:
        parts: dict[str, Any] = dict(
            vae=AutoencoderKLWan.from_pretrained(where, subfolder="vae", torch_dtype=torch.float32),
            text_encoder=UMT5EncoderModel.from_pretrained(where, subfolder="text_encoder", torch_dtype=dtype),
            tokenizer=AutoTokenizer.from_pretrained(where, subfolder="tokenizer"),
            image_encoder=CLIPVisionModel.from_pretrained(where, subfolder="image_encoder", torch_dtype=dtype),
            image_processor=CLIPImageProcessor.from_pretrained(where, subfolder="image_processor"),
        )
        parts["vae"].enable_tiling()  # 8 → 1.8 GiB for a 480p chunk's decode (the planner counts it tiled)
        speech = SpeechEncoder.from_pretrained(options.audio_encoder, device=device)
    except (OSError, ValueError) as exc:
        raise VideostudioError("model_unavailable", f"could not load the InfiniteTalk components ({where}, "
                               f"{options.audio_encoder}): {exc}") from None
    components = InfiniteTalkComponents(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(
        shift=DEFAULT_SHIFT_480P), **parts)
    _place(components, device, dtype, transformer=False)
    return InfiniteTalkModels(components=components, speech=speech, random_weights=False, dtype=dtype)


CPU_AUTO = "auto on a CPU: float32, unquantized (quantized formats save GPU memory; on a CPU they only cost time)"


@dataclass(frozen=True)
class QuantizationChoice:
    method: str  # a functions/quantization method, or "none" (the models' own dtype)
    reason: str
    offload_advised: bool = False


def resolve_quantization(requested: str, device: str, *, height: int, width: int, chunk_frames: int,
                         text_guidance: float, audio_guidance: float, speech_s: float) -> QuantizationChoice:
    """What a render quantizes with, and why. CPU: `auto` is float32; a method named in the brief runs if the
    CPU can run it. CUDA: `auto` asks the planner (functions/quantization/infinitetalk.py) with the free memory
    and the card's capability (INFINITETALK-009); a named method is used as is."""
    from core.device import usable_cuda_bytes
    from functions.quantization.infinitetalk import InfiniteTalkJob, choose_quantization
    from functions.quantization.methods import check_supported

    if requested != "auto":
        check_supported(requested, device)
        return QuantizationChoice("none" if requested == "bf16" and device == "cuda" else requested,
                                  f"{requested}: named in the brief")
    if device != "cuda":
        return QuantizationChoice("none", CPU_AUTO)
    job = InfiniteTalkJob(width=width, height=height, num_frames=chunk_frames, guidance_scale=text_guidance,
                          audio_guidance_scale=audio_guidance, audio_seconds=speech_s)
    # The renderer keeps its models resident (no CPU offload yet): only plans without offload count.
    choice = choose_quantization(job, free_bytes=usable_cuda_bytes(), capability=torch.cuda.get_device_capability(),
                                 device_name=torch.cuda.get_device_name(), resident_only=True)
    return QuantizationChoice("none" if choice.method == "bf16" else choice.method, choice.reason, choice.offload)
