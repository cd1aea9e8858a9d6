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

from core.quantization import check_supported, quantize_pipeline, storage_bytes
from core.vram_planner import GiB, AutoChoice, ModelConfigs, RenderJob, choose_for_device, estimate_render, model_spec
from schemas.errors import VideostudioError

TINY_MODEL = "tiny"
TINY_MAX_SEQUENCE_LENGTH = 16
REAL_MAX_SEQUENCE_LENGTH = 256
# Real Mochi in bf16 needs ~22 GB with offload + VAE tiling; below this, offload.
FULL_GPU_BYTES = 60 * 1024**3


TINY_TRANSFORMER_CONFIG = dict(
    patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
    in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4,
    activation_fn="swiglu", max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
)
TINY_VAE_CONFIG = dict(
    latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
    decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
)
TINY_TEXT_ENCODER_CONFIG = dict(
    vocab_size=64, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
    relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)
# genmo/mochi-1-preview: diffusers' defaults for the transformer and VAE are Mochi 1's shapes; its
# text encoder is the T5 v1.1 XXL encoder. Known here so the planner needs no download.
MOCHI_1_PREVIEW = "genmo/mochi-1-preview"
REAL_TEXT_ENCODER_CONFIG = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    is_encoder_decoder=False, tie_word_embeddings=False,
)


@dataclass
class LoadedPipeline:
    pipe: "MochiPipeline"  # noqa: F821 - imported lazily
    model_id: str
    device: str
    dtype: torch.dtype
    max_sequence_length: int
    random_weights: bool
    quantization: dict | None = None  # what core.quantization did (method, backend, bytes)
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


def pick_device(setting: str = "auto") -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise VideostudioError("device_unavailable", "VIDEOSTUDIO_DEVICE=cuda but no CUDA device is visible")
    return setting


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
    if model_id == TINY_MODEL:
        return LoadedPipeline(build_tiny_pipeline().to(device), model_id, device, torch.float32,
                              TINY_MAX_SEQUENCE_LENGTH, True)
    pipe, dtype = _load_real(model_id, device, offload=False)
    return LoadedPipeline(pipe, model_id, device, dtype, REAL_MAX_SEQUENCE_LENGTH, False)


# -- configs for the VRAM planner (no weights) --------------------------------------------------------
def model_configs(model_id: str) -> ModelConfigs:
    """The component configs of `model_id`: built in for tiny and genmo/mochi-1-preview, read from a
    local diffusers folder, or fetched (configs only) from the hub."""
    import json
    from pathlib import Path

    if model_id == TINY_MODEL:
        return ModelConfigs(TINY_MODEL, dict(TINY_TRANSFORMER_CONFIG), dict(TINY_TEXT_ENCODER_CONFIG),
                            dict(TINY_VAE_CONFIG), TINY_MAX_SEQUENCE_LENGTH)
    names = {"transformer": "transformer/config.json", "text_encoder": "text_encoder/config.json",
             "vae": "vae/config.json"}
    folder = Path(model_id)
    loaded: dict[str, dict] = {}
    try:
        if folder.is_dir():
            loaded = {k: json.loads((folder / v).read_text()) for k, v in names.items()}
        elif model_id != MOCHI_1_PREVIEW:
            from huggingface_hub import hf_hub_download

            loaded = {k: json.loads(Path(hf_hub_download(model_id, v)).read_text()) for k, v in names.items()}
    except Exception as exc:  # offline, missing files, not a Mochi folder
        raise VideostudioError("model_config_unavailable",
                               f"cannot read the configs of {model_id!r}: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not loaded:
        return ModelConfigs(MOCHI_1_PREVIEW, {}, dict(REAL_TEXT_ENCODER_CONFIG), {}, REAL_MAX_SEQUENCE_LENGTH)
    clean = {k: {key: v for key, v in cfg.items() if not key.startswith("_")} for k, cfg in loaded.items()}
    text = {k: v for k, v in clean["text_encoder"].items() if k not in ("architectures", "model_type")}
    return ModelConfigs(model_id, clean["transformer"], text, clean["vae"],
                        clean["transformer"].get("max_sequence_length", REAL_MAX_SEQUENCE_LENGTH))


# -- which quantization a render runs with ---------------------------------------------------------------
CPU_AUTO_REASON = ("auto on CPU: the unquantised float32 pipeline (quantized formats save GPU memory; on a CPU "
                   "they only add casts). Name a method in the brief to use one here")


def usable_cuda_bytes() -> int:
    """Free device memory plus what this process's allocator already holds (a cached pipeline we can drop)."""
    free, _total = torch.cuda.mem_get_info()
    return free + torch.cuda.memory_reserved()


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
    resident = estimate_render(spec, job, requested, offload="none")
    if resident.fits(free):
        return AutoChoice(requested, False, f"{requested}: named in the brief; fits without offload "
                          f"({resident.peak_bytes / GiB:.1f} GiB estimated)", resident.peak_bytes)
    offloaded = estimate_render(spec, job, requested, offload="model")
    return AutoChoice(requested, True, f"{requested}: named in the brief; model CPU offload "
                      f"({offloaded.peak_bytes / GiB:.1f} GiB estimated, {free / GiB:.1f} GiB free)", offloaded.peak_bytes)


def quantization_skip_patterns(settings) -> tuple[str, ...]:
    """User-listed module-name patterns (VIDEOSTUDIO_QUANTIZATION_SKIP, comma-separated) left in bf16."""
    return tuple(p.strip() for p in (getattr(settings, "quantization_skip", "") or "").split(",") if p.strip())


CALIBRATION_PROMPTS = ("A serene mountain landscape at dawn", "A person talking to the camera in a bright room",
                       "Waves crashing on a rocky shore at night, slow motion")


def _calibration(pipe, model_id: str):
    """fp8-static's calibration: two denoising steps of three prompts, latents only (no VAE)."""
    tiny = model_id == TINY_MODEL
    height, width = (64, 64) if tiny else (480, 848)

    def run() -> None:
        pipe(prompt=list(CALIBRATION_PROMPTS), num_inference_steps=2, height=height, width=width, num_frames=7,
             guidance_scale=4.5, output_type="latent", generator=torch.Generator("cpu").manual_seed(0),
             max_sequence_length=TINY_MAX_SEQUENCE_LENGTH if tiny else REAL_MAX_SEQUENCE_LENGTH)

    return run


def _build(model_id: str, device: str, method: str, offload: bool, skip: tuple[str, ...]) -> LoadedPipeline:
    tiny = model_id == TINY_MODEL
    msl = TINY_MAX_SEQUENCE_LENGTH if tiny else REAL_MAX_SEQUENCE_LENGTH
    if method == "fp32":
        if tiny:
            pipe, dtype = build_tiny_pipeline().to(device), torch.float32
        else:
            pipe, dtype = _load_real(model_id, device)
        return LoadedPipeline(pipe, model_id, device, dtype, msl, tiny,
                              {"method": "fp32", "backend": "torch float32", "weight_bytes": _weight_bytes(pipe)})
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
    return LoadedPipeline(pipe, model_id, device, torch.bfloat16, msl, tiny, result.metrics(), offload)


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
        loaded = _build(model_id, device, method, offload, tuple(skip))
        _cache[key] = loaded
        return loaded
