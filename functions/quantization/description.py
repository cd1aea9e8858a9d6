"""What a model family tells the planner: its components' shapes and its activation formulas.

A family (Mochi today; a Wan transformer later) writes one module under `functions/models/`
with a subclass of `ModelDescription`:

- class attributes, the same for every checkpoint of the family: its `QuantizationRules`
  (skip patterns, the method per component, the denoiser), which components each phase of a
  render or a train step needs on the GPU, which denoiser layers a LoRA trains, table labels;
- fields read from one set of configs: `model_id`, `components` (counted by `meta_components`
  from modules built on the meta device), and whatever widths its formulas need;
- three formulas: `tokens` (the denoiser's sequence length for a clip), and the activation
  bytes of each render phase and each train phase.

The planner adds weights (per method, from the Linear shapes), offload, the denoiser's method
temporaries and LoRA state; the family only says what its activations take.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from functions.quantization.jobs import RenderJob, TrainJob
from functions.quantization.rules import QuantizationRules
from functions.quantization.shapes import ComponentShape


@dataclass(frozen=True, kw_only=True)
class ModelDescription(ABC):
    """One model (one set of configs) as the planner sees it; each family subclasses it once."""

    model_id: str
    components: Mapping[str, ComponentShape]          # pipeline attribute → its parameters and targets

    quantization: ClassVar[QuantizationRules]
    render_phases: ClassVar[Mapping[str, tuple[str, ...]]]  # phase → the components it needs resident
    train_phases: ClassVar[Mapping[str, tuple[str, ...]]]
    lora_targets: ClassVar[str]                        # re.search'd against the denoiser's target names
    labels: ClassVar[Mapping[str, str]]                # short component names for tables

    @property
    def denoiser(self) -> str:
        return self.quantization.denoiser

    @abstractmethod
    def tokens(self, frames: int, height: int, width: int) -> int:
        """The denoiser's sequence length for one clip of `frames` × `height` × `width` pixels."""

    @abstractmethod
    def render_activation_bytes(self, job: RenderJob, *, tokens: int, vae_tiling: bool) -> dict[str, int]:
        """Peak activation bytes of each render phase (keys: `render_phases`) for `job`, whose clip is
        `tokens` long; weights and the quantization method's temporaries excluded."""

    @abstractmethod
    def train_activation_bytes(self, job: TrainJob, *, tokens: int) -> dict[str, int]:
        """Peak activation bytes of each train phase (keys: `train_phases`) for a step of `tokens`
        tokens (all clips): what it keeps for backward, and the encoders' activations; weights, LoRA
        state and method temporaries excluded."""


def meta_components(build: Callable[[], Mapping[str, nn.Module]], rules: QuantizationRules,
                    skip: Iterable[str] = ()) -> tuple[dict[str, nn.Module], dict[str, ComponentShape]]:
    """Build a model's components on the meta device (shapes, no storage) and count them: parameters,
    and the Linear layers `rules` quantize (with the user's `skip`); a component no method touches
    has no targets. The modules come back too, for the widths a description reads from them."""
    with torch.device("meta"):
        modules = dict(build())
    skip = tuple(skip)
    shapes = {name: ComponentShape.of(module, rules.targets(module, skip) if name in rules.component_methods else [])
              for name, module in modules.items()}
    return modules, shapes
