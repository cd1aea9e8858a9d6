"""Mochi 1 through diffusers: the tiny random-weights pipeline built in code, or real weights.

`model: tiny` is the offline default. Its weights are random, so its output is noise;
the manifest says so. Any other value is a diffusers Mochi repo id (e.g.
`genmo/mochi-1-preview`) or a local folder saved with `save_pretrained`.
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass

import torch

from schemas.errors import VideostudioError

TINY_MODEL = "tiny"
TINY_MAX_SEQUENCE_LENGTH = 16
REAL_MAX_SEQUENCE_LENGTH = 256
# Real Mochi in bf16 needs ~22 GB with offload + VAE tiling; below this, offload.
FULL_GPU_BYTES = 60 * 1024**3


@dataclass
class LoadedPipeline:
    pipe: "MochiPipeline"  # noqa: F821 - imported lazily
    model_id: str
    device: str
    dtype: torch.dtype
    max_sequence_length: int
    random_weights: bool


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
        transformer = MochiTransformer3DModel(
            patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
            in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4,
            activation_fn="swiglu", max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
        )
        vae = AutoencoderKLMochi(
            latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
            decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
        )
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=64, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        ))
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


def _load_real(model_id: str, device: str, *, offload: bool = True):
    from diffusers import MochiPipeline

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    try:
        try:
            pipe = MochiPipeline.from_pretrained(model_id, variant="bf16", torch_dtype=dtype)
        except (OSError, ValueError):
            pipe = MochiPipeline.from_pretrained(model_id, torch_dtype=dtype)
    except Exception as exc:  # hub offline, missing files, wrong repo
        raise VideostudioError(
            "model_unavailable", f"cannot load Mochi weights from {model_id!r}: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    if device == "cuda":
        if offload and torch.cuda.get_device_properties(0).total_memory < FULL_GPU_BYTES:
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(device)
        pipe.enable_vae_tiling()
    pipe.set_progress_bar_config(disable=True)
    return pipe, dtype


def quiet_library_logs() -> None:
    """Silence chatter that is expected here (bitsandbytes' optional CPU kernels, prompt truncation)."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
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


_cache: dict[tuple[str, str], LoadedPipeline] = {}
_cache_lock = threading.Lock()


def load_pipeline(model_id: str, *, device_setting: str = "auto") -> LoadedPipeline:
    """Load (once per process) the pipeline for `model_id`."""
    device = pick_device(device_setting)
    quiet_library_logs()
    with _cache_lock:
        cached = _cache.get((model_id, device))
        if cached is not None:
            return cached
        if model_id == TINY_MODEL:
            pipe = build_tiny_pipeline().to(device)
            loaded = LoadedPipeline(pipe, model_id, device, torch.float32, TINY_MAX_SEQUENCE_LENGTH, True)
        else:
            pipe, dtype = _load_real(model_id, device)
            loaded = LoadedPipeline(pipe, model_id, device, dtype, REAL_MAX_SEQUENCE_LENGTH, False)
        _cache[(model_id, device)] = loaded
        return loaded
