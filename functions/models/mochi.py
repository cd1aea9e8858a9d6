"""Mochi 1 through diffusers: the tiny random-weights pipeline built in code, or real weights.

`model: tiny` is the offline default. Its weights are random, so its output is noise;
the manifest says so. Any other value is a diffusers Mochi repo id (e.g.
`genmo/mochi-1-preview`) or a local folder saved with `save_pretrained`.
"""

from __future__ import annotations

import gc
import logging
import threading
import warnings
from dataclasses import dataclass

import torch

from core.device import pick_device, usable_cuda_bytes
from functions.models.mochi_configs import (
    TINY_MAX_SEQUENCE_LENGTH,
    TINY_MODEL,
    TINY_TEXT_ENCODER_CONFIG,
    TINY_TRANSFORMER_CONFIG,
    TINY_VAE_CONFIG,
    max_sequence_length,
    model_configs,
)
from functions.models.mochi_spec import model_spec, quantize_pipeline
from functions.quantization.gpus import GiB
from functions.quantization.jobs import RenderJob
from functions.quantization.methods import check_supported
from functions.quantization.planner import AutoChoice, choose_for_device, choose_offload
from functions.quantization.targets import storage_bytes
from schemas.defaults import DEFAULT_GUIDANCE_SCALE, DEFAULT_HEIGHT, DEFAULT_WIDTH
from schemas.errors import VideostudioError

# Real Mochi in bf16 needs ~22 GB with offload + VAE tiling; below this, offload.
FULL_GPU_BYTES = 60 * GiB


@dataclass
class LoadedPipeline:
    pipe: "MochiPipeline"  # noqa: F821 - imported lazily
    model_id: str
    device: str
    dtype: torch.dtype
    max_sequence_length: int
    random_weights: bool
    quantization: dict | None = None  # what quantizing did (method, backend, bytes)
    offload: bool = False


def _tiny_tokenizer():
    """A character-level tokenizer built in process (nothing to download)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[ch] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=TINY_MAX_SEQUENCE_LENGTH)


def build_tiny_pipeline(seed: int = 0):
    """The shapes diffusers' own Mochi tests use: runs in well under a second on a CPU."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = MochiTransformer3DModel(**TINY_TRANSFORMER_CONFIG)
        vae = AutoencoderKLMochi(**TINY_VAE_CONFIG)
        text_encoder = T5EncoderModel(T5Config(**TINY_TEXT_ENCODER_CONFIG))
    for module in (transformer, vae, text_encoder):
        module.eval()  # modules built from a config start in training mode: dropout would break determinism
    pipe = MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                         tokenizer=_tiny_tokenizer(), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_real(model_id: str, device: str, *, offload: bool = True, dtype: torch.dtype | None = None,
               place: bool = True):
    """Real Mochi weights. With `place`, on `device` (CUDA: model CPU offload below FULL_GPU_BYTES, or
    when `offload` is forced by the planner; VAE tiling always)."""
    from diffusers import MochiPipeline

    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    try:
        try:
            pipe = MochiPipeline.from_pretrained(model_id, variant="bf16", torch_dtype=dtype)
        except (OSError, ValueError):
            pipe = MochiPipeline.from_pretrained(model_id, torch_dtype=dtype)
    except Exception as exc:  # hub offline, missing files, wrong repo
        raise VideostudioError(
            "model_unavailable", f"cannot load Mochi weights from {model_id!r}: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    if place:
        offload = offload and (device != "cuda" or torch.cuda.get_device_properties(0).total_memory < FULL_GPU_BYTES)
        _place(pipe, device, offload=offload, tiling=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, dtype


def _unquantized(model_id: str, device: str, *, offload: bool):
    """The pipeline as built (tiny: float32) or as loaded (real weights: bf16 on CUDA, placed)."""
    if model_id == TINY_MODEL:
        return build_tiny_pipeline().to(device), torch.float32
    return _load_real(model_id, device, offload=offload)


def _place(pipe, device: str, *, offload: bool, tiling: bool) -> None:
    if device == "cuda":
        if offload:
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(device)
        if tiling:
            pipe.enable_vae_tiling()
    else:
        pipe.to(device)


def quiet_library_logs() -> None:
    """Silence chatter that is expected here (bitsandbytes' optional CPU kernels, prompt truncation,
    torchao's pytree registrations, diffusers' torchao-checkpoint import note)."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")


def load_training_pipeline(model_id: str, *, device_setting: str = "auto") -> LoadedPipeline:
    """A fresh, uncached pipeline: training adds an adapter to its transformer, which must not leak into renders."""
    device = pick_device(device_setting)
    quiet_library_logs()
    pipe, dtype = _unquantized(model_id, device, offload=False)
    return LoadedPipeline(pipe=pipe, model_id=model_id, device=device, dtype=dtype,
                          max_sequence_length=max_sequence_length(model_id), random_weights=model_id == TINY_MODEL)


# -- which quantization a render runs with ---------------------------------------------------------------
CPU_AUTO_REASON = ("auto on CPU: the unquantised float32 pipeline (quantized formats save GPU memory; on a CPU "
                   "they only add casts). Name a method in the brief to use one here")


def resolve_quantization(model_id: str, requested: str, device: str, job: RenderJob | None = None,
                         *, skip: tuple[str, ...] = ()) -> AutoChoice:
    """The method (and offload) a render uses, and why. CPU: `auto` is float32; a named method runs
    if the CPU can run it. CUDA: `auto` asks the planner with the free memory; a named method is
    used as is, with model CPU offload when the planner says it does not fit otherwise."""
    if device != "cuda":
        if requested == "auto":
            return AutoChoice("fp32", False, CPU_AUTO_REASON)
        check_supported(requested, device)
        return AutoChoice(requested, False, f"{requested}: named in the brief")
    job = job or RenderJob()
    try:
        spec = model_spec(model_configs(model_id), skip)
    except VideostudioError as exc:  # no configs: the pre-planner rule (offload below FULL_GPU_BYTES)
        if requested != "auto":
            check_supported(requested, device)
        method = "bf16" if requested == "auto" else requested
        offload = torch.cuda.get_device_properties(0).total_memory < FULL_GPU_BYTES
        return AutoChoice(method, offload, f"{method}: the planner could not read the model's configs "
                          f"({exc.message}); {'model CPU offload' if offload else 'no offload'} by GPU size")
    free = usable_cuda_bytes()
    capability = torch.cuda.get_device_capability()
    if requested == "auto":
        return choose_for_device(spec, job, free_bytes=free, capability=capability,
                                 device_name=torch.cuda.get_device_name())
    check_supported(requested, device)
    return choose_offload(spec, job, requested, free_bytes=free)


CALIBRATION_PROMPTS = ("A serene mountain landscape at dawn", "A person talking to the camera in a bright room",
                       "Waves crashing on a rocky shore at night, slow motion")


def _calibration(pipe, model_id: str):
    """fp8-static's calibration: two denoising steps of three prompts, latents only (no VAE)."""
    height, width = (64, 64) if model_id == TINY_MODEL else (DEFAULT_HEIGHT, DEFAULT_WIDTH)

    def run() -> None:
        pipe(prompt=list(CALIBRATION_PROMPTS), num_inference_steps=2, height=height, width=width, num_frames=7,
             guidance_scale=DEFAULT_GUIDANCE_SCALE, output_type="latent",
             generator=torch.Generator("cpu").manual_seed(0), max_sequence_length=max_sequence_length(model_id))

    return run


def _build(model_id: str, device: str, *, method: str, offload: bool, skip: tuple[str, ...]) -> LoadedPipeline:
    tiny = model_id == TINY_MODEL
    msl = max_sequence_length(model_id)
    if method == "fp32":
        pipe, dtype = _unquantized(model_id, device, offload=True)
        return LoadedPipeline(pipe=pipe, model_id=model_id, device=device, dtype=dtype, max_sequence_length=msl,
                              random_weights=tiny, quantization={"method": "fp32", "backend": "torch float32",
                                                                 "weight_bytes": _weight_bytes(pipe)})
    # Quantize where the weights are: on the device for tiny, on the CPU for real weights (then place them).
    if tiny:
        pipe = build_tiny_pipeline().to(device)
        where = device
    else:
        pipe, _ = _load_real(model_id, device, dtype=torch.bfloat16, place=False)
        where = "cpu"
        if method == "fp8-static":  # calibration runs the bf16 pipeline where it will render
            _place(pipe, device, offload=offload, tiling=True)
            where = device
    calibrate = _calibration(pipe, model_id) if method == "fp8-static" else None
    result = quantize_pipeline(pipe, method, device=where, target_device=device, skip=skip, calibrate=calibrate)
    if not tiny and method != "fp8-static":
        _place(pipe, device, offload=offload, tiling=True)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe=pipe, model_id=model_id, device=device, dtype=torch.bfloat16, max_sequence_length=msl,
                          random_weights=tiny, quantization=result.metrics(), offload=offload)


def _weight_bytes(pipe) -> int:
    return sum(storage_bytes(m) for m in (pipe.transformer, pipe.text_encoder) if m is not None)


_cache: dict[tuple, LoadedPipeline] = {}
_cache_lock = threading.Lock()


def load_pipeline(model_id: str, *, device_setting: str = "auto", method: str = "fp32", offload: bool = False,
                  skip: tuple[str, ...] = ()) -> LoadedPipeline:
    """Load (once per process) the pipeline for `model_id`, quantized with `method` ("fp32": as built).

    Cached by (model, device, method, offload, skip patterns). Real weights are large: loading a
    different real variant drops the cached ones first."""
    device = pick_device(device_setting)
    quiet_library_logs()
    key = (model_id, device, method, offload, tuple(skip))
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        if model_id != TINY_MODEL:
            for other in [k for k in _cache if k[0] != TINY_MODEL]:
                del _cache[other]
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        loaded = _build(model_id, device, method=method, offload=offload, skip=tuple(skip))
        _cache[key] = loaded
        return loaded
