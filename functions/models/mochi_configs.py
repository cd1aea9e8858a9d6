"""Mochi's component configs, without weights: the tiny model built in code, genmo/mochi-1-preview,
and any diffusers Mochi folder or hub repo (its config files only).

The pipeline builder (`mochi.py`) and the planner's description (`mochi_spec.py`) both read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import VideostudioError

TINY_MODEL = "tiny"
TEMPORAL_COMPRESSION = 6  # Mochi's VAE: frame counts are 6k+1 (6 decoded frames per latent frame after the first)
TINY_MAX_SEQUENCE_LENGTH = 16
REAL_MAX_SEQUENCE_LENGTH = 256

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
CONFIG_FILES = {"transformer": "transformer/config.json", "text_encoder": "text_encoder/config.json",
                "vae": "vae/config.json"}


def max_sequence_length(model_id: str) -> int:
    """The prompt length (T5 tokens) a model is run with."""
    return TINY_MAX_SEQUENCE_LENGTH if model_id == TINY_MODEL else REAL_MAX_SEQUENCE_LENGTH


@dataclass
class ModelConfigs:
    """The three component configs of a Mochi pipeline (diffusers / transformers kwargs)."""

    model_id: str
    transformer: dict
    text_encoder: dict
    vae: dict
    max_sequence_length: int = REAL_MAX_SEQUENCE_LENGTH

    def key(self) -> tuple:
        return (self.model_id, repr(sorted(self.transformer.items())), repr(sorted(self.text_encoder.items())),
                repr(sorted(self.vae.items())), self.max_sequence_length)


def _read_configs(model_id: str) -> dict[str, dict]:
    """The config files of a local diffusers folder or (configs only) of a hub repo."""
    folder = Path(model_id)
    try:
        if folder.is_dir():
            return {k: json.loads((folder / v).read_text()) for k, v in CONFIG_FILES.items()}
        from huggingface_hub import hf_hub_download

        return {k: json.loads(Path(hf_hub_download(model_id, v)).read_text()) for k, v in CONFIG_FILES.items()}
    except Exception as exc:  # offline, missing files, not a Mochi folder
        raise VideostudioError("model_config_unavailable", f"cannot read the configs of {model_id!r}: "
                               f"{type(exc).__name__}: {str(exc)[:200]}") from None


def model_configs(model_id: str) -> ModelConfigs:
    """The component configs of `model_id`: built in for tiny and genmo/mochi-1-preview, read from a
    local diffusers folder, or fetched (configs only) from the hub."""
    if model_id == TINY_MODEL:
        return ModelConfigs(TINY_MODEL, dict(TINY_TRANSFORMER_CONFIG), dict(TINY_TEXT_ENCODER_CONFIG),
                            dict(TINY_VAE_CONFIG), TINY_MAX_SEQUENCE_LENGTH)
    if model_id == MOCHI_1_PREVIEW and not Path(model_id).is_dir():
        return ModelConfigs(MOCHI_1_PREVIEW, {}, dict(REAL_TEXT_ENCODER_CONFIG), {}, REAL_MAX_SEQUENCE_LENGTH)
    loaded = _read_configs(model_id)
    clean = {k: {key: v for key, v in cfg.items() if not key.startswith("_")} for k, cfg in loaded.items()}
    text = {k: v for k, v in clean["text_encoder"].items() if k not in ("architectures", "model_type")}
    return ModelConfigs(model_id, clean["transformer"], text, clean["vae"],
                        clean["transformer"].get("max_sequence_length", REAL_MAX_SEQUENCE_LENGTH))
