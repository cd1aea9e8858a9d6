"""Mochi's T5 prompt embeddings through the encoder cache (functions/encoder_cache.py).

The pipeline is always called with embeddings (computed here or cached), never with the prompt text, so a cache
hit and a miss feed the transformer the same tensors and give the same pixels. The prompt and the negative prompt
are cached apart: the empty negative prompt most briefs share is encoded once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from functions.encoder_cache import EncoderCache, encoder_key
from functions.models.mochi import LoadedPipeline
from functions.render_key import mochi_identity


@dataclass(frozen=True)
class PromptEmbeds:
    prompt_embeds: torch.Tensor
    prompt_attention_mask: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    negative_prompt_attention_mask: torch.Tensor | None

    def pipeline_kwargs(self) -> dict[str, torch.Tensor | None]:
        return {"prompt_embeds": self.prompt_embeds, "prompt_attention_mask": self.prompt_attention_mask,
                "negative_prompt_embeds": self.negative_prompt_embeds,
                "negative_prompt_attention_mask": self.negative_prompt_attention_mask}

    def pooled(self) -> torch.Tensor:
        """The prompt's mean T5 state over its tokens: what approximate caching compares prompts by."""
        mask = self.prompt_attention_mask.to(self.prompt_embeds.dtype)[..., None]
        return ((self.prompt_embeds * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).float()[0]


def t5_identity(loaded: LoadedPipeline) -> dict:
    """The text encoder as the cache key sees it: the model's weights identity, how it was quantized, where."""
    encoder = loaded.pipe.text_encoder
    return {"encoder": "mochi-t5", "model": mochi_identity(loaded.model_id),
            "quantization": (loaded.quantization or {}).get("method"), "device": str(loaded.device),
            "dtype": str(encoder.dtype), "max_sequence_length": loaded.max_sequence_length,
            "force_zeros_for_empty_prompt": bool(loaded.pipe.config.get("force_zeros_for_empty_prompt", False))}


def encode_prompts(loaded: LoadedPipeline, cache: EncoderCache, *, prompt: str, negative_prompt: str,
                   guidance_scale: float) -> PromptEmbeds:
    pipe = loaded.pipe
    identity = t5_identity(loaded)
    device = pipe._execution_device

    def one(text: str) -> tuple[torch.Tensor, torch.Tensor]:
        def encode() -> dict[str, torch.Tensor]:
            with torch.inference_mode():
                embeds, mask = pipe._get_t5_prompt_embeds(prompt=text, num_videos_per_prompt=1,
                                                          max_sequence_length=loaded.max_sequence_length,
                                                          device=device)
            return {"embeds": embeds, "mask": mask}

        key = encoder_key(identity, {"text": text}) if identity["model"] is not None else None
        out = cache.get_or_encode(key, encode, device=device)
        return out["embeds"], out["mask"]

    embeds, mask = one(prompt)
    if guidance_scale > 1.0:  # the pipeline's do_classifier_free_guidance; it encodes "" for no negative prompt
        negative, negative_mask = one(negative_prompt or "")
        return PromptEmbeds(embeds, mask, negative, negative_mask)
    return PromptEmbeds(embeds, mask, None, None)
