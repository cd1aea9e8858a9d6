"""Which Linear layers a method replaces, and how many bytes a model really stores.

Targets are the plain `nn.Linear` modules whose qualified name matches no skip pattern. The
patterns here hold for any model; a model family adds its own (its embeddings, its output
layers) through `rules.QuantizationRules`, and a user can list more. Norm layers, embeddings
and convolutions are never touched, because they are not Linear layers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

# Matched with re.search against each module's qualified name (diffusers' layerwise casting does the same).
GENERIC_SKIP_PATTERNS: tuple[str, ...] = (
    r"(^|\.)pos_embed(\.|$)",
    r"(^|\.)lm_head$",
    r"(^|\.)lora_",               # peft adapter layers
)


def quantization_targets(module: nn.Module, skip: Iterable[str] = ()) -> list[tuple[str, nn.Linear]]:
    """The plain `nn.Linear` layers a method replaces: not skipped by name (`GENERIC_SKIP_PATTERNS`
    and `skip`), not already quantized, and not in the model's `_keep_in_fp32_modules` (T5's `wo`:
    transformers casts its input to `wo`'s weight dtype, which would turn activations into fp8 or uint8)."""
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    patterns = [re.compile(p) for p in (*GENERIC_SKIP_PATTERNS, *skip,
                                        *(rf"(^|\.){re.escape(name)}$" for name in keep))]
    targets = []
    for name, sub in module.named_modules():
        if type(sub) is not nn.Linear:  # exact type: quantized subclasses and adapters are left alone
            continue
        if any(p.search(name) for p in patterns):
            continue
        targets.append((name, sub))
    return targets


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _leaves(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors behind a tensor (a torchao tensor subclass stores several)."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        if names:
            out: list[torch.Tensor] = []
            for name in names:
                out.extend(_leaves(getattr(tensor, name)))
            return out
    return [tensor]


def _extra_state(tensor: torch.Tensor) -> list[torch.Tensor]:
    """bitsandbytes keeps scales outside the parameter's data: 4-bit quant_state, 8-bit SCB."""
    extra = []
    state = getattr(tensor, "quant_state", None)
    while state is not None:
        extra.extend(t for t in (getattr(state, "absmax", None), getattr(state, "code", None),
                                 getattr(state, "offset", None)) if isinstance(t, torch.Tensor))
        state = getattr(state, "state2", None)
    scb = getattr(tensor, "SCB", None)
    if isinstance(scb, torch.Tensor):
        extra.append(scb)
    return extra


def storage_bytes(module: nn.Module) -> int:
    """Bytes a module really stores: parameters and buffers, unpacked from tensor subclasses,
    plus bitsandbytes' quantization state. Shared tensors count once."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        for leaf in [*_leaves(tensor), *_extra_state(tensor)]:
            if id(leaf) in seen:
                continue
            seen.add(id(leaf))
            total += leaf.numel() * leaf.element_size()
    return total


def floating_point_elems(module: nn.Module) -> int:
    """Floating-point parameter and buffer elements (what a model holds before quantization)."""
    return sum(t.numel() for t in [*module.parameters(), *module.buffers()] if t.is_floating_point())


def bf16_bytes(module: nn.Module) -> int:
    """What the module's floating-point parameters and buffers take in bf16 (the baseline)."""
    return floating_point_elems(module) * 2
